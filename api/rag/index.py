"""In-memory BM25 index over chunks, with similarities in 0..1.

A chunk's similarity blends keyword coverage (the idf-weighted share of the
query's words found in the chunk) with its normalised BM25 score, half and
half; see :class:`BM25Index`.

Raw scores come from the ``bm25s`` library (https://github.com/xhluca/bm25s),
default ``method="lucene"``, ``k1=1.5``, ``b=0.75``. bm25s scores a document as

    score(q, d) = Σ_{t ∈ q ∩ d} idf(t) · tf / (tf + k1 · (1 - b + b · |d| / avgdl))

with the Lucene idf ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` (see
``bm25s/scoring.py``: ``_score_tfc_lucene``, ``_score_idf_lucene``; Kamphuis et
al., "Which BM25 Do You Mean?", ECIR 2020). Note that bm25s leaves out the
constant ``(k1 + 1)`` numerator of textbook BM25, so each term contributes less
than ``idf(t)``, not ``idf(t) · (k1 + 1)``.

bm25s does not keep its idf array after indexing, so :class:`BM25Index` counts
document frequencies itself and applies the same Lucene formula.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import bm25s
import numpy as np

# bm25s sets its own logger to DEBUG on import and logs every index build.
logging.getLogger("bm25s").setLevel(logging.WARNING)

__all__ = ["BM25Index"]

COVERAGE_WEIGHT = 0.5
"""Weight of keyword coverage in the similarity; BM25 gets ``1 - COVERAGE_WEIGHT``."""


def lucene_idf(df: int, n_docs: int) -> float:
    """Lucene BM25 idf, as bm25s' ``_score_idf_lucene``: ln(1 + (N - df + 0.5) / (df + 0.5)).

    Defined for ``df == 0`` too (a term absent from the corpus gets the largest idf).
    """
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class BM25Index:
    """BM25 over pre-tokenised chunks; immutable after construction.

    Similarity of chunk ``d`` to a query with distinct tokens ``T``::

        coverage  = Σ_{t ∈ T ∩ d} idf(t) / Σ_{t ∈ T} idf(t)
        bm25_norm = min(1, bm25(T, d) / Σ_{t ∈ T} idf(t))
        similarity = 0.5 · coverage + 0.5 · bm25_norm

    ``bm25`` is bm25s' raw score, which omits the ``(k1 + 1)`` factor, so
    ``bm25_norm`` is the textbook BM25 score over the best possible one
    (Σ idf(t)·(k1+1), reached only as every term's frequency tends to
    infinity). On its own it runs low: one occurrence of a term earns only
    about ``1 / (1 + k1)`` of that term's idf, so a passage that fully answers
    a question can stay below a typical similarity threshold of 0.2.
    ``coverage`` is the idf-weighted share of the query's words that the chunk
    contains at all, whatever their frequency. Blending the two follows
    RAGFlow, whose keyword similarity (``token_similarity`` in
    ``rag/nlp/query.py``) is likewise the weighted share of query terms found
    in the chunk, mixed with a second score (there, vector cosine) by
    ``keywords_similarity_weight`` / ``vector_similarity_weight``. With no
    vectors here, BM25 is the second score: coverage rewards matching every
    word, BM25 still ranks by frequency and document length among chunks
    with the same coverage.

    ``idf`` is the Lucene idf of the indexed corpus. A query token absent from
    the corpus weighs as a word found in half the chunks (``df = N/2``, idf
    ``ln 2``): it adds to both denominators but never to a numerator, so
    unmatched words lower the similarity — but a chatty question ("what does
    the completion marker look like?") is not sunk by its words the documents
    never use, as it would be if unseen words took the largest idf (``df = 0``). Repeated query tokens
    count once. The result lies in (0, 1] for matching chunks; chunks whose
    raw BM25 score is 0 (no query token) are never returned.

    Thread safety: all state is built in ``__init__`` and only read afterwards;
    :meth:`search` allocates its own arrays, so concurrent searches are safe.
    """

    def __init__(
        self,
        chunks: Iterable[tuple[str, Sequence[str]]],
        *,
        k1: float = 1.5,
        b: float = 0.75,
    ) -> None:
        """Index ``chunks``, pairs of (chunk_id, tokens from ``tokenize``).

        Raises:
            ValueError: a chunk id occurs twice.
        """
        self.k1 = k1
        self.b = b
        self._ids: list[str] = []
        corpus: list[list[str]] = []
        for chunk_id, tokens in chunks:
            self._ids.append(chunk_id)
            corpus.append([token for token in tokens if token])
        self._position = {chunk_id: i for i, chunk_id in enumerate(self._ids)}
        if len(self._position) != len(self._ids):
            duplicates = sorted(k for k, v in Counter(self._ids).items() if v > 1)
            raise ValueError(f"duplicate chunk ids: {duplicates[:5]}")
        # distinct tokens per chunk, for the coverage part of the similarity
        self._token_sets: list[frozenset[str]] = [frozenset(tokens) for tokens in corpus]
        self._doc_freq: Counter[str] = Counter()
        for token_set in self._token_sets:
            self._doc_freq.update(token_set)
        self._retriever: bm25s.BM25 | None = None
        if self._doc_freq:  # bm25s cannot index a corpus without any token
            self._retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
            self._retriever.index(corpus, show_progress=False)

    def __len__(self) -> int:
        """Number of indexed chunks."""
        return len(self._ids)

    def idf(self, token: str) -> float:
        """Lucene idf of ``token`` in this corpus; an unseen token counts as found
        in half the chunks (see the class docstring)."""
        n_docs = len(self._ids)
        df = self._doc_freq.get(token, 0)
        return lucene_idf(df if df else max(1, n_docs // 2), n_docs)

    def _candidates(self, allowed_ids: set[str] | None) -> np.ndarray:
        """Positions of the chunks a search may return, ascending."""
        if allowed_ids is None:
            return np.arange(len(self._ids))
        positions = [self._position[i] for i in allowed_ids if i in self._position]
        return np.array(sorted(positions), dtype=np.int64)

    def search(
        self,
        query_tokens: list[str],
        top_k: int,
        allowed_ids: set[str] | None = None,
    ) -> list[tuple[str, float]]:
        """Return up to ``top_k`` ``(chunk_id, similarity)`` pairs, best first.

        Args:
            query_tokens: tokens of the question (from ``tokenize``).
            top_k: maximum number of results; ``<= 0`` returns ``[]``.
            allowed_ids: if given, only these chunk ids are considered (applied
                before ``top_k``); unknown ids are ignored.

        Returns:
            Pairs with similarity in (0, 1] (see the class docstring), sorted by
            similarity descending, ties by chunk id. Chunks with a raw BM25
            score of 0 are left out, so an empty index or an unmatched query
            gives ``[]``.
        """
        distinct = list(dict.fromkeys(t for t in query_tokens if t))
        if top_k <= 0 or not distinct or self._retriever is None:
            return []
        token_ids = self._retriever.get_tokens_ids(distinct)
        if not token_ids:
            return []
        raw = self._retriever.get_scores_from_ids(token_ids)
        idf = [(token, self.idf(token)) for token in distinct]
        best_possible = sum(weight for _, weight in idf)
        candidates = self._candidates(allowed_ids)
        raw_scores = raw[candidates].astype(np.float64)
        keep = raw_scores > 0
        results: list[tuple[str, float]] = []
        for position, score in zip(candidates[keep].tolist(), raw_scores[keep].tolist()):
            tokens = self._token_sets[position]
            coverage = sum(weight for token, weight in idf if token in tokens) / best_possible
            bm25_norm = min(1.0, score / best_possible)
            similarity = COVERAGE_WEIGHT * coverage + (1.0 - COVERAGE_WEIGHT) * bm25_norm
            results.append((self._ids[position], min(1.0, similarity)))
        return heapq.nsmallest(top_k, results, key=lambda pair: (-pair[1], pair[0]))
