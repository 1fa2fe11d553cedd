"""The built-in offline chat model: an extractive answer from the retrieved chunks.

It needs no weights and no network, so the service answers out of the box. It picks
the sentences of the retrieved chunks that share the most words with the question
(or, for a follow-up whose own words match nothing, with the earlier questions too),
cites each with its chunk's ``[ID:i]`` marker (RAGFlow's citation format) and streams
the answer word by word.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from api.rag.llm.base import ChatRequest
from api.rag.tokenizer import tokenize
from common.constants import OFFLINE_MODEL_NAME

#: Most sentences put in one answer.
MAX_SENTENCES = 3
#: Longest run of CJK characters sent as one delta.
CJK_GROUP_CHARS = 3

# A sentence ends at . ! ? followed by whitespace, at 。！？ (closing quotes and
# brackets stay with the sentence), or at a blank line.
_ENGLISH_END = re.compile(r"([.!?][\"'”’)\]]*)\s+")
_CHINESE_END = re.compile(r"([。！？][”’」』）)]*)")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")
# One word and the whitespace after it; a leading whitespace run stands alone.
_WORD = re.compile(r"\S+\s*|\s+")
# Inside a word: ASCII runs stay whole, other characters go in small groups.
_PIECE = re.compile(rf"[\x00-\x7f]+|[^\x00-\x7f]{{1,{CJK_GROUP_CHARS}}}")


@dataclass(frozen=True)
class _Sentence:
    """A candidate sentence: its chunk index, position in the chunk, text, overlap score."""

    chunk: int
    position: int
    text: str
    score: int


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at English ``.!?``, Chinese ``。！？`` and blank lines.

    Whitespace inside a sentence is collapsed to single spaces; empty pieces dropped.
    """
    marked = _CHINESE_END.sub(r"\1\n\n", _ENGLISH_END.sub(r"\1\n\n", text))
    pieces = (_WHITESPACE.sub(" ", piece).strip() for piece in _PARAGRAPH_BREAK.split(marked))
    return [piece for piece in pieces if piece]


def _score(sentence: str, question_tokens: set[str]) -> int:
    """Number of distinct question tokens found in the sentence."""
    return len(question_tokens.intersection(tokenize(sentence)))


def _candidates(chunks: list[dict], question_tokens: set[str]) -> list[_Sentence]:
    """All sentences of all chunks that share at least one token with the question."""
    found = []
    for index, chunk in enumerate(chunks):
        for position, text in enumerate(split_sentences(str(chunk.get("content") or ""))):
            score = _score(text, question_tokens)
            if score > 0:
                found.append(_Sentence(index, position, text, score))
    return found


def select_sentences(chunks: list[dict], question: str, limit: int = MAX_SENTENCES) -> list[_Sentence]:
    """Pick the best-matching sentences, returned in chunk order.

    The best ``limit`` sentences by score (ties: earlier chunk, then earlier
    sentence) are kept when they score at least half the best score, so one
    shared common word does not drag in an unrelated sentence.
    """
    question_tokens = set(tokenize(question))
    if not question_tokens:
        return []
    ranked = sorted(_candidates(chunks, question_tokens), key=lambda s: (-s.score, s.chunk, s.position))
    if not ranked:
        return []
    floor = (ranked[0].score + 1) // 2
    best = [sentence for sentence in ranked[:limit] if sentence.score >= floor]
    return sorted(best, key=lambda s: (s.chunk, s.position))


def compose_answer(request: ChatRequest) -> str:
    """The full offline answer: cited sentences, or ``request.empty_response``.

    Sentences are picked by the question's own words; only when none matches (a
    follow-up such as "how long does it last?") are they picked by the retrieval
    question, which carries the earlier questions of the session.
    """
    sentences = select_sentences(request.chunks, request.question)
    if not sentences and request.retrieval_question:
        sentences = select_sentences(request.chunks, request.retrieval_question)
    if not sentences:
        return request.empty_response
    return " ".join(f"{sentence.text} [ID:{sentence.chunk}]" for sentence in sentences)


def split_deltas(text: str) -> list[str]:
    """Cut an answer into stream deltas; ``"".join(split_deltas(t)) == t``.

    Each delta is one word with the whitespace after it; a word with non-ASCII
    characters (Chinese has no spaces) is cut further into ASCII runs and groups of
    at most :data:`CJK_GROUP_CHARS` characters, the whitespace staying on the last.
    """
    deltas: list[str] = []
    for word in _WORD.findall(text):
        if word.isascii() or word.isspace():
            deltas.append(word)
            continue
        core = word.rstrip()
        pieces = _PIECE.findall(core)
        pieces[-1] += word[len(core):]
        deltas.extend(pieces)
    return deltas


class OfflineChatModel:
    """Extractive answers from the retrieved chunks; no weights, no network.

    Args:
        token_delay: seconds to wait between deltas (0: none), to look like a model.
    """

    name = OFFLINE_MODEL_NAME

    def __init__(self, token_delay: float = 0.0) -> None:
        self.token_delay = token_delay

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[str]:
        """Yield the answer word by word (see :func:`split_deltas`).

        Blocking, like a model client reading its network stream: between deltas it
        sleeps ``token_delay`` seconds in ``time.sleep``, which is why it must run in a
        worker thread. ``cancel`` is checked before every delta; once set, the
        iterator returns, so a stop takes effect within one ``token_delay``.
        """
        for index, delta in enumerate(split_deltas(compose_answer(request))):
            if index and self.token_delay > 0:
                time.sleep(self.token_delay)
            if cancel.is_set():
                return
            yield delta
