"""Retrieval: BM25 over the chunks of one or more datasets.

One :class:`~api.rag.index.BM25Index` per dataset is cached in memory and rebuilt
when the dataset's chunk fingerprint (count, newest chunk time) changes, so a deleted
or re-parsed document never leaves a stale hit — also when another process sharing
the database made the change.

Result shape (RAGFlow's HTTP API reference, "Retrieve chunks")::

    {"total": int,
     "chunks": [{"id", "content", "document_id", "document_keyword", "document_name",
                 "dataset_id", "kb_id", "similarity", "term_similarity",
                 "vector_similarity", "highlight", "positions", "important_keywords",
                 "image_id"}],
     "doc_aggs": [{"doc_id", "doc_name", "count"}]}
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from api.db.db_models import Chunk, db_session
from api.db.services.document_service import chunk_fingerprint, document_names
from api.rag.index import BM25Index
from api.rag.tokenizer import tokenize

#: Most candidates considered before pagination, whatever ``top_k`` asks.
MAX_TOP_K = 1024


@dataclass(frozen=True)
class _CachedIndex:
    fingerprint: tuple[int, int]
    index: BM25Index
    doc_of_chunk: dict[str, str]


class IndexCache:
    """Per-dataset BM25 indexes, rebuilt when the dataset's chunks change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, _CachedIndex] = {}

    def get(self, dataset_id: str) -> _CachedIndex:
        """The current index of a dataset (built or rebuilt as needed)."""
        fingerprint = chunk_fingerprint(dataset_id)
        with self._lock:
            cached = self._indexes.get(dataset_id)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
        rows = list(Chunk.select(Chunk.id, Chunk.doc_id, Chunk.tokens).where(Chunk.kb_id == dataset_id).tuples())
        built = _CachedIndex(
            fingerprint=fingerprint,
            index=BM25Index([(chunk_id, tokens.split()) for chunk_id, _, tokens in rows]),
            doc_of_chunk={chunk_id: doc_id for chunk_id, doc_id, _ in rows},
        )
        with self._lock:
            self._indexes[dataset_id] = built
        return built


INDEXES = IndexCache()


def _allowed_chunks(cached: _CachedIndex, document_ids: set[str] | None) -> set[str] | None:
    if document_ids is None:
        return None
    return {chunk_id for chunk_id, doc_id in cached.doc_of_chunk.items() if doc_id in document_ids}


def _chunk_dict(chunk: Chunk, similarity: float, names: dict[str, str]) -> dict:
    name = names.get(chunk.doc_id, "")
    score = round(similarity, 6)
    return {
        "id": chunk.id,
        "content": chunk.content,
        "document_id": chunk.doc_id,
        "document_keyword": name,
        "document_name": name,
        "dataset_id": chunk.kb_id,
        "kb_id": chunk.kb_id,
        "similarity": score,
        "term_similarity": score,
        "vector_similarity": 0.0,
        "highlight": chunk.content,
        "positions": [],
        "important_keywords": [],
        "image_id": "",
    }


def _doc_aggs(chunks: list[dict]) -> list[dict]:
    counts: dict[str, dict] = {}
    for chunk in chunks:
        entry = counts.setdefault(chunk["document_id"], {"doc_id": chunk["document_id"], "doc_name": chunk["document_name"], "count": 0})
        entry["count"] += 1
    return sorted(counts.values(), key=lambda entry: -entry["count"])


@db_session()
def retrieve(
    question: str,
    dataset_ids: list[str],
    document_ids: list[str] | None = None,
    similarity_threshold: float = 0.2,
    top_k: int = MAX_TOP_K,
    page: int = 1,
    page_size: int = 30,
) -> dict:
    """Rank the chunks of ``dataset_ids`` for ``question``.

    Args:
        question: free text, any language (CJK segmented by jieba).
        dataset_ids: datasets to search; the caller has checked the tenant owns them.
        document_ids: restrict hits to these documents.
        similarity_threshold: drop chunks scoring below this (0..1).
        top_k: candidates ranked before pagination.
        page, page_size: 1-based page of the ranked, filtered hits.

    Returns:
        The RAGFlow retrieval object described in the module docstring; ``total``
        counts all hits above the threshold.
    """
    query_tokens = tokenize(question)
    doc_filter = set(document_ids) if document_ids else None
    limit = max(1, min(top_k, MAX_TOP_K))
    scored: list[tuple[float, str]] = []
    for dataset_id in dict.fromkeys(dataset_ids):
        cached = INDEXES.get(dataset_id)
        allowed = _allowed_chunks(cached, doc_filter)
        for chunk_id, similarity in cached.index.search(query_tokens, limit, allowed):
            if similarity >= similarity_threshold:
                scored.append((similarity, chunk_id))
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    scored = scored[:limit]
    window = scored[(page - 1) * page_size: page * page_size]
    rows = {chunk.id: chunk for chunk in Chunk.select().where(Chunk.id.in_([cid for _, cid in window]))}
    names = document_names(list({chunk.doc_id for chunk in rows.values()}))
    chunks = [_chunk_dict(rows[cid], sim, names) for sim, cid in window if cid in rows]
    return {"total": len(scored), "chunks": chunks, "doc_aggs": _doc_aggs(chunks)}
