"""Tokenisation for BM25 retrieval and the chunker's token budget.

Two measures live here and they are deliberately different:

* :func:`tokenize` gives the *search terms* of a text (lower-cased words,
  jieba-segmented Chinese words, stopwords removed) for :mod:`api.rag.index`.
* :func:`count_tokens` gives the *size* of a text for :mod:`api.rag.chunker`:
  one per Latin/digit word plus one per CJK character. It needs no dictionary,
  is deterministic and roughly tracks LLM token counts (a CJK character is
  about one LLM token, an English word about 1.3).

Sources:

* Chinese segmentation: jieba (https://github.com/fxsjy/jieba), search mode
  (``jieba.lcut_for_search``), which also emits the sub-words of long words
  (``中华人民共和国`` -> ``中华 华人 人民 共和 共和国 中华人民共和国``) for recall.
* English stopwords: ``bm25s.stopwords.STOPWORDS_EN`` (the list bm25s applies with
  ``stopwords="en"``; an inline copy is the fallback) plus a few question words
  and pronouns.
* No stemming: no maintained stemmer is installed (PyStemmer is not a dependency),
  so words are matched exactly after lower-casing.
"""

from __future__ import annotations

import logging
import re
import threading

import jieba

try:
    from bm25s.stopwords import STOPWORDS_EN as _BM25S_STOPWORDS_EN
except ImportError:  # pragma: no cover - bm25s is a declared dependency
    _BM25S_STOPWORDS_EN = (
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in",
        "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the",
        "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
    )

__all__ = ["tokenize", "count_tokens", "token_spans", "STOPWORDS_EN", "STOPWORDS_ZH"]

#: English stopwords dropped by :func:`tokenize`: bm25s' list (Lucene's classic
#: 33 words) plus question words, auxiliaries and pronouns, the English
#: counterparts of the Chinese 什么 / 怎么 / 如何 / 我 below, so that the
#: wording of a question does not dilute its similarity.
STOPWORDS_EN: frozenset[str] = frozenset(_BM25S_STOPWORDS_EN) | {
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "do", "does", "did", "am", "been", "has", "have", "had", "can", "could",
    "would", "should", "i", "me", "my", "we", "our", "you", "your", "he", "she",
    "him", "her", "his", "its", "them",
}

#: Common Chinese function words and question words dropped by :func:`tokenize`.
STOPWORDS_ZH: frozenset[str] = frozenset(
    {
        "的", "了", "是", "吗", "呢", "吧", "啊", "呀", "么", "嘛", "着", "过",
        "和", "与", "及", "或", "也", "都", "就", "在", "把", "被", "对", "从",
        "这", "那", "这个", "那个", "这些", "那些", "我", "你", "他", "她", "它",
        "我们", "你们", "他们", "什么", "怎么", "怎样", "如何", "为什么", "哪", "哪些",
        "哪个", "请问", "一下",
    }
)

# CJK Unified Ideographs (+ extension A and compatibility ideographs).
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = rf"(?:(?![{_CJK}])[^\W_])+"
#: A search-term run: a CJK run (segmented later) or a word of letters/digits. Words
#: joined by underscores stay one term (``RAGSOCKET_WS_PING_INTERVAL``, ``top_n``):
#: an identifier is a name of its own, and splitting it would make every setting
#: name count as the word "ragsocket".
_TERM_RE = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>{_WORD}(?:_{_WORD})*)")
#: A budget unit: one CJK character or one word of letters/digits.
_COUNT_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")

_jieba_lock = threading.Lock()
_jieba_ready = False


def _ensure_jieba() -> None:
    """Load jieba's dictionary once, quietly; safe to call from many threads."""
    global _jieba_ready
    if _jieba_ready:
        return
    with _jieba_lock:
        if not _jieba_ready:
            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            _jieba_ready = True


def _segment_cjk(run: str) -> list[str]:
    """Segment a run of CJK characters with jieba's search mode."""
    _ensure_jieba()
    return [word for word in jieba.lcut_for_search(run) if word.strip()]


def tokenize(text: str) -> list[str]:
    """Return the BM25 search terms of ``text``, in order of appearance.

    Lower-cases, keeps words of letters/digits (``"GPT-4o"`` -> ``gpt``, ``4o``),
    segments Chinese runs with jieba (search mode, so a long word also yields its
    sub-words), and drops English (:data:`STOPWORDS_EN`) and Chinese
    (:data:`STOPWORDS_ZH`) stopwords. Punctuation and whitespace never become
    tokens. Duplicates are kept (term frequency matters to BM25).

    Example: ``tokenize("北京是中国的首都")`` -> ``["北京", "中国", "首都"]``.
    """
    tokens: list[str] = []
    for match in _TERM_RE.finditer(text.lower()):
        if match.lastgroup == "cjk":
            tokens.extend(w for w in _segment_cjk(match.group()) if w not in STOPWORDS_ZH)
        else:
            word = match.group()
            if word not in STOPWORDS_EN:
                tokens.append(word)
    return tokens


def count_tokens(text: str) -> int:
    """Return the size of ``text`` in budget tokens (used by the chunker).

    One token per word of letters/digits (Latin, Cyrillic, digits ...) plus one
    per CJK character; punctuation and whitespace count zero. Stopwords count.
    Example: ``count_tokens("Hello, 世界 2024!")`` -> ``4``.
    """
    return sum(1 for _ in _COUNT_RE.finditer(text))


def token_spans(text: str) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` character offsets of each budget token.

    The units are exactly those counted by :func:`count_tokens`, so
    ``len(token_spans(t)) == count_tokens(t)``; the chunker cuts text at these.
    """
    return [m.span() for m in _COUNT_RE.finditer(text)]
