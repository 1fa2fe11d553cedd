"""Split document text into retrieval chunks of bounded size.

Sizes are measured with :func:`api.rag.tokenizer.count_tokens` (one per
Latin/digit word, one per CJK character). The strategy resembles RAGFlow's
"naive" chunker (``rag/nlp/__init__.py`` ``naive_merge``): pack paragraphs until
the token budget is reached; a paragraph over budget is cut at sentence ends;
a sentence over budget is cut hard at token boundaries.
"""

from __future__ import annotations

import re

from api.rag.tokenizer import count_tokens, token_spans
from common.constants import DEFAULT_CHUNK_TOKENS

__all__ = ["chunk_text"]

_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t\r\f\v]*\n\s*")
#: End of a sentence, terminator kept with the sentence: English . ! ? (plus closing
#: quotes/brackets) followed by whitespace; Chinese 。！？； (plus closing quotes);
#: or a line break inside the paragraph (list items, table rows).
_SENTENCE_END_RE = re.compile(
    r"(?:[.!?]+[\"'’”)\]]*(?=\s|$)|[。！？；]+[”’」』）)]*|\n)\s*"
)


def _hard_split(sentence: str, budget: int) -> list[str]:
    """Cut ``sentence`` into pieces of at most ``budget`` tokens, at token starts."""
    starts = [start for start, _ in token_spans(sentence)]
    cuts = [0] + starts[budget::budget] + [len(sentence)]
    return [sentence[a:b] for a, b in zip(cuts, cuts[1:])]


def _sentences(paragraph: str) -> list[str]:
    """Split a paragraph after each sentence end; pieces concatenate to the input."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(paragraph):
        if match.end() > start:
            pieces.append(paragraph[start : match.end()])
            start = match.end()
    if start < len(paragraph):
        pieces.append(paragraph[start:])
    return pieces


def _pack(pieces: list[str], budget: int, separator: str) -> list[str]:
    """Greedily join consecutive pieces (each within budget) into chunks within budget."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for piece in pieces:
        size = count_tokens(piece)
        if current and used + size > budget:
            chunks.append(separator.join(current).strip())
            current, used = [], 0
        current.append(piece)
        used += size
    if current:
        chunks.append(separator.join(current).strip())
    return [chunk for chunk in chunks if chunk]


def _split_long_paragraph(paragraph: str, budget: int) -> list[str]:
    """Chunks of a paragraph over budget: sentences packed, long sentences cut hard."""
    pieces: list[str] = []
    for sentence in _sentences(paragraph):
        if count_tokens(sentence) > budget:
            pieces.extend(_hard_split(sentence, budget))
        else:
            pieces.append(sentence)
    # Pieces are contiguous slices of the paragraph, so "" rebuilds the original text.
    return _pack(pieces, budget, separator="")


def chunk_text(text: str, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[str]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` tokens each.

    Args:
        text: plain text, paragraphs separated by blank lines (as returned by
            :func:`api.rag.parsers.parse_document`).
        chunk_tokens: budget per chunk, measured by ``count_tokens``.

    Returns:
        Non-empty chunks in document order. Each chunk is original text: whole
        paragraphs joined by a blank line, or consecutive sentences / slices of a
        paragraph that alone exceeds the budget. Pieces without any token (e.g. a
        lone "---") are carried along with their neighbours.

    Raises:
        ValueError: ``chunk_tokens`` is less than 1.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    chunks: list[str] = []
    pending: list[str] = []  # paragraphs within budget, waiting to be packed
    for paragraph in _PARAGRAPH_SPLIT_RE.split(text.strip()):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count_tokens(paragraph) <= chunk_tokens:
            pending.append(paragraph)
            continue
        chunks.extend(_pack(pending, chunk_tokens, separator="\n\n"))
        pending = []
        chunks.extend(_split_long_paragraph(paragraph, chunk_tokens))
    chunks.extend(_pack(pending, chunk_tokens, separator="\n\n"))
    return chunks
