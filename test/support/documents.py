"""Documents and texts the tests upload: PDF and DOCX files built at run time, and the
Lumen lamp description whose offline answer is long (dozens of frames)."""

from __future__ import annotations

import io

import docx

#: Three sentences about a lamp: the offline model answers LAMP_QUESTION with all of them.
LAMP_STORY = (
    "The Lumen lamp is assembled by hand in Porto and every lamp is tested for eight hours before it ships. "
    "Its aluminium body is recycled and its LED bulb draws five watts while giving the light of a forty watt bulb. "
    "The lamp dims smoothly from one percent to full brightness and remembers its last setting after a power cut."
)
LAMP_QUESTION = "How is the Lumen lamp assembled, tested, dimmed and powered?"


def make_pdf(*lines: str) -> bytes:
    """A minimal valid one-page PDF showing ``lines`` in Helvetica 12pt (a hand-written
    text stream and an exact xref table)."""
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # each entry is exactly 20 bytes
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def docx_bytes(document: docx.document.Document) -> bytes:
    """A python-docx document, saved."""
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_docx(*paragraphs: str) -> bytes:
    """A DOCX of plain paragraphs."""
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    return docx_bytes(document)
