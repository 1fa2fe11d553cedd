"""Turn uploaded document bytes into plain text for chunking.

:func:`parse_document` returns paragraphs separated by one blank line
(``"\\n\\n"``); lines inside a paragraph are kept. Every failure a user can cause
(unsupported type, damaged file, no text) raises :class:`ParseError`, whose
message is safe to show to the user.

Sources / libraries:

* HTML: BeautifulSoup 4 with the standard-library ``html.parser``; bytes are
  decoded by BeautifulSoup's ``UnicodeDammit`` (BOM, ``<meta charset>``, guessing).
* PDF: pypdf ``PdfReader`` / ``PageObject.extract_text``; its errors derive from
  ``pypdf.errors.PyPdfError`` (https://pypdf.readthedocs.io/en/stable/modules/errors.html).
* DOCX: python-docx ``Document`` / ``Document.iter_inner_content`` (body paragraphs
  and tables in document order); a non-ZIP file raises ``zipfile.BadZipFile``, a
  ZIP without the Word parts raises ``KeyError`` or ``ValueError`` and a damaged
  XML part ``lxml.etree.XMLSyntaxError``.
* Plain text / Markdown: decoded as UTF-8 (BOM tolerated), then GB18030, then
  Latin-1; Markdown markup is stripped with a few regular expressions
  (CommonMark syntax, https://spec.commonmark.org/).
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import PurePath

import docx
import pypdf
from bs4 import BeautifulSoup, NavigableString
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml.etree import XMLSyntaxError
from markdown_it import MarkdownIt
from pypdf.errors import FileNotDecryptedError, PyPdfError

from common.constants import SUPPORTED_SUFFIXES

__all__ = ["ParseError", "parse_document"]


class ParseError(ValueError):
    """A document could not be turned into text; ``str(err)`` is user-facing."""


_BLANK_LINES_RE = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def _join_paragraphs(paragraphs: list[str]) -> str:
    """Strip each paragraph, drop empty ones, join with one blank line."""
    return "\n\n".join(p.strip() for p in paragraphs if p.strip())


def _split_paragraphs(text: str) -> list[str]:
    """Split text on blank lines after normalising line endings and trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return _BLANK_LINES_RE.split(text)


# --------------------------------------------------------------------------- text


def _decode_text(data: bytes) -> str:
    """Decode text bytes: UTF-16 with BOM, UTF-8 (BOM optional), GB18030, else Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # never fails: every byte is a code point


#: CommonMark with GFM tables; raw HTML is shown as text, so placeholders such as
#: ``<dataset_id>`` survive (markdown-it-py, https://markdown-it-py.readthedocs.io).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def _parse_text(data: bytes, markdown: bool) -> str:
    """Plain text or Markdown bytes -> paragraphs.

    Markdown is rendered to HTML by markdown-it-py and read like an HTML document,
    so headings, list items and table rows become paragraphs of plain text.
    """
    text = _decode_text(data).replace("\r\n", "\n").replace("\r", "\n")
    if markdown:
        return _parse_html(_MARKDOWN.render(text).encode("utf-8"))
    return _join_paragraphs(_split_paragraphs(text))


# --------------------------------------------------------------------------- HTML

_DROP_TAGS = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
_BLOCK_TAGS = (
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "dialog",
    "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2",
    "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "summary", "table", "tr", "ul", "body",
)


_HTML_SPACE_RE = re.compile(r"[ \t\n\r\f]+")  # HTML's ASCII whitespace


def _parse_html(data: bytes) -> str:
    """HTML bytes -> paragraphs: scripts/styles dropped, block elements split.

    The ``<title>`` is kept as the first paragraph. Whitespace runs become one
    space, as a browser renders them (``<pre>`` keeps its line breaks);
    ``<br>`` becomes a line break; a table row becomes ``cell | cell``.
    """
    soup = BeautifulSoup(data, "html.parser")
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for node in soup.find_all(string=True):
        # Source line breaks are plain spaces, except inside <pre>.
        if type(node) is NavigableString and node.find_parent("pre") is None:
            node.replace_with(_HTML_SPACE_RE.sub(" ", node))
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for image in soup.find_all("img"):
        image.replace_with(image.get("alt") or "")
    for cell in soup.find_all(["td", "th"]):
        if cell.find_previous_sibling(["td", "th"]) is not None:
            cell.insert_before(" | ")  # one table row per paragraph, like DOCX
    for tag in soup.find_all(_BLOCK_TAGS):
        if tag.find_parent(["td", "th"]) is not None:
            continue  # a cell's inner blocks stay on the row's line
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    paragraphs = [
        "\n".join(" ".join(line.split()) for line in block.split("\n"))
        for block in _split_paragraphs(soup.get_text())
    ]
    if title:
        paragraphs.insert(0, title)
    return _join_paragraphs(paragraphs)


# --------------------------------------------------------------------------- PDF


def _parse_pdf(data: bytes) -> str:
    """PDF bytes -> text of every page; a page's blank lines split paragraphs.

    Raises ParseError for damaged, non-PDF or password-protected files.
    """
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("could not read PDF: it is password-protected")
        paragraphs: list[str] = []
        for page in reader.pages:
            paragraphs.extend(_split_paragraphs(page.extract_text() or ""))
    except FileNotDecryptedError as err:
        raise ParseError("could not read PDF: it is password-protected") from err
    except PyPdfError as err:  # PdfReadError, PdfStreamError, EmptyFileError, DependencyError ...
        raise ParseError("could not read PDF: file is damaged or not a PDF") from err
    return _join_paragraphs(paragraphs)


# --------------------------------------------------------------------------- DOCX


def _table_rows(table: Table) -> list[str]:
    """One line per table row: the distinct cell texts joined by `` | ``.

    Merged cells appear several times in python-docx's row; consecutive
    repeats are dropped.
    """
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return rows


def _parse_docx(data: bytes) -> str:
    """DOCX bytes -> body paragraphs and table rows, in document order.

    Raises ParseError for damaged or non-DOCX files.
    """
    try:
        document = docx.Document(io.BytesIO(data))
        paragraphs: list[str] = []
        for item in document.iter_inner_content():
            if isinstance(item, Paragraph):
                paragraphs.append(item.text)
            elif isinstance(item, Table):
                paragraphs.extend(_table_rows(item))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError, XMLSyntaxError) as err:
        raise ParseError("could not read DOCX: file is damaged or not a Word document") from err
    return _join_paragraphs(paragraphs)


# --------------------------------------------------------------------------- entry


def parse_document(data: bytes, filename: str) -> str:
    """Extract plain text from a document's bytes, chosen by ``filename``'s suffix.

    Args:
        data: the file's raw bytes.
        filename: the original file name; only its (case-insensitive) suffix is used,
            one of :data:`common.constants.SUPPORTED_SUFFIXES`.

    Returns:
        The text, paragraphs separated by one blank line, no leading/trailing space.

    Raises:
        ParseError: unsupported suffix, damaged file, or no extractable text
            (e.g. a scanned PDF, which would need OCR).
    """
    suffix = PurePath(filename).suffix.lower()
    if suffix in (".txt",):
        text = _parse_text(data, markdown=False)
    elif suffix in (".md", ".markdown"):
        text = _parse_text(data, markdown=True)
    elif suffix in (".html", ".htm"):
        text = _parse_html(data)
    elif suffix == ".pdf":
        text = _parse_pdf(data)
    elif suffix == ".docx":
        text = _parse_docx(data)
    else:
        shown = suffix or "(none)"
        raise ParseError(
            f"unsupported file type '{shown}'; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not text:
        raise ParseError(f"no text found in '{PurePath(filename).name}'")
    return text
