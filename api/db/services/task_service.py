"""Background parsing: file → text → chunks → tokens → stored chunks.

A document moves UNSTART → RUNNING → DONE | FAIL | CANCEL (RAGFlow's ``run`` values)
with ``progress`` in 0..1 and a ``progress_msg``. At most ``parse_workers`` documents
are parsed at a time, in threads of the process's worker pool. New chunks replace the
old ones in one transaction at the end, so retrieval never sees a half-parsed document.

After a restart, :meth:`ParseScheduler.resume_interrupted` puts every document left
RUNNING back in the queue (or fails it when its file is gone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peewee import OperationalError

from api.db.db_models import Chunk, Document, db_session, now_ms
from api.db.services.dataset_service import get_dataset, write_transaction
from api.rag.chunker import chunk_text
from api.rag.parsers import ParseError, parse_document
from api.rag.tokenizer import count_tokens, tokenize
from common.constants import DEFAULT_CHUNK_TOKENS, TaskStatus
from common.errors import DataError
from common.settings import Settings

logger = logging.getLogger(__name__)

#: Attempts at the transaction storing a document's chunks (lock conflicts are retried).
STORE_ATTEMPTS = 3


class ParseCancelled(Exception):
    """Raised inside a parse job when its document was cancelled."""


def _set_progress(doc_id: str, **fields: object) -> None:
    with db_session():
        Document.update(**fields, update_time=now_ms()).where(Document.id == doc_id).execute()


def _step(doc_id: str, progress: float, message: str) -> None:
    """Report an intermediate step, unless the document was cancelled meanwhile."""
    with db_session():
        Document.update(progress=progress, progress_msg=message, update_time=now_ms()).where(
            (Document.id == doc_id) & (Document.run == TaskStatus.RUNNING.value)
        ).execute()


class ParseScheduler:
    """Queue of documents to parse, drained by at most ``settings.parse_workers`` jobs.

    Args:
        executor: the process's worker pool executor.
        settings: supplies ``parse_workers`` and the default ``chunk_tokens``.
    """

    def __init__(self, executor: ThreadPoolExecutor, settings: Settings) -> None:
        self._executor = executor
        self._max_jobs = settings.parse_workers
        self._default_chunk_tokens = settings.chunk_tokens
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._jobs = 0
        self._cancelled: set[str] = set()
        self._resumed: set[str] = set()
        self.idle = threading.Event()
        self.idle.set()

    # -- public API (synchronous; called from worker threads) -----------------------
    @db_session()
    def start(self, tenant_id: str, dataset_id: str, document_ids: list[str]) -> None:
        """Queue documents for parsing (re-parsing replaces their chunks).

        Raises:
            DataError: a document is not in the tenant's dataset, or is already RUNNING.
        """
        get_dataset(tenant_id, dataset_id)
        docs = self._documents(dataset_id, document_ids)
        running = [doc.name for doc in docs if doc.run == TaskStatus.RUNNING.value]
        if running:
            raise DataError(f"Can't parse a document that is being parsed: {', '.join(running)}")
        ids = [doc.id for doc in docs]
        Document.update(
            run=TaskStatus.RUNNING.value, progress=0.0, progress_msg="Queued", process_begin_time=now_ms()
        ).where(Document.id.in_(ids)).execute()
        self._enqueue(ids)

    @db_session()
    def cancel(self, tenant_id: str, dataset_id: str, document_ids: list[str]) -> None:
        """Stop parsing documents; their previous chunks stay.

        Raises:
            DataError: a document is unknown or not being parsed.
        """
        get_dataset(tenant_id, dataset_id)
        docs = self._documents(dataset_id, document_ids)
        idle = [doc.name for doc in docs if doc.run != TaskStatus.RUNNING.value]
        if idle:
            raise DataError(f"Can't stop parsing a document that is not being parsed: {', '.join(idle)}")
        with self._lock:
            self._cancelled.update(doc.id for doc in docs)
        Document.update(run=TaskStatus.CANCEL.value, progress_msg="Cancelled").where(
            Document.id.in_([doc.id for doc in docs])
        ).execute()

    @db_session()
    def resume_interrupted(self) -> int:
        """Re-queue documents left RUNNING by a previous process; returns how many."""
        ids = []
        for doc in Document.select().where(Document.run == TaskStatus.RUNNING.value):
            if Path(doc.location).exists():
                ids.append(doc.id)
            else:
                self._fail(doc.id, "The server restarted during parsing and the file is gone")
        if ids:
            Document.update(progress=0.0, progress_msg="Resumed after a server restart").where(
                Document.id.in_(ids)
            ).execute()
            with self._lock:
                self._resumed.update(ids)
            self._enqueue(ids)
        return len(ids)

    # -- queue ----------------------------------------------------------------------
    @staticmethod
    def _documents(dataset_id: str, document_ids: list[str]) -> list[Document]:
        docs = list(Document.select().where((Document.kb_id == dataset_id) & (Document.id.in_(document_ids))))
        missing = set(document_ids) - {doc.id for doc in docs}
        if missing:
            raise DataError(f"You don't own the document {sorted(missing)[0]}.")
        return docs

    def _enqueue(self, doc_ids: list[str]) -> None:
        with self._lock:
            self._cancelled.difference_update(doc_ids)
            self._queue.extend(doc_ids)
            new_jobs = min(self._max_jobs - self._jobs, len(self._queue))
            self._jobs += max(0, new_jobs)
            if self._jobs:
                self.idle.clear()
        for _ in range(max(0, new_jobs)):
            self._executor.submit(self._drain)

    def _next(self) -> str | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            self._jobs -= 1
            if self._jobs == 0:
                self.idle.set()
            return None

    def _drain(self) -> None:
        while (doc_id := self._next()) is not None:
            try:
                with db_session():
                    self._parse(doc_id)
            except Exception:  # a job must never die silently, leaving its document RUNNING
                logger.exception("parsing document %s failed", doc_id)
                try:
                    self._fail(doc_id, "Parsing failed: internal error (see the server log)")
                except Exception:
                    logger.exception("cannot mark document %s as failed", doc_id)

    # -- one document ---------------------------------------------------------------
    def _check_cancel(self, doc_id: str) -> None:
        with self._lock:
            cancelled = doc_id in self._cancelled
        if cancelled:
            raise ParseCancelled()

    def _fail(self, doc_id: str, message: str) -> None:
        _set_progress(doc_id, run=TaskStatus.FAIL.value, progress=-1.0, progress_msg=message)

    def _parse(self, doc_id: str) -> None:
        doc = Document.get_or_none(Document.id == doc_id)
        if doc is None:  # deleted while queued
            return
        started = time.monotonic()
        try:
            count, tokens = self._index_document(doc)
        except ParseCancelled:
            return
        except ParseError as error:
            self._fail(doc_id, f"Parsing failed: {error}")
            return
        except OSError as error:
            logger.warning("cannot read %s: %s", doc.location, error)
            self._fail(doc_id, "Parsing failed: the stored file cannot be read")
            return
        elapsed = time.monotonic() - started
        message = f"Done: {count} chunks, {tokens} tokens in {elapsed:.2f} s"
        with self._lock:
            if doc_id in self._resumed:
                self._resumed.discard(doc_id)
                message = f"Resumed after a server restart. {message}"
        _set_progress(
            doc_id,
            run=TaskStatus.DONE.value,
            progress=1.0,
            progress_msg=message,
            chunk_num=count,
            token_num=tokens,
            process_duration=round(elapsed, 3),
        )

    def _index_document(self, doc: Document) -> tuple[int, int]:
        """Parse, chunk and store a document's chunks; returns (chunks, tokens)."""
        kb = get_dataset(doc.tenant_id, doc.kb_id)
        budget = int(kb.parser_config.get("chunk_token_num") or self._default_chunk_tokens or DEFAULT_CHUNK_TOKENS)
        self._check_cancel(doc.id)
        _step(doc.id, 0.1, "Reading the file")
        data = Path(doc.location).read_bytes()
        self._check_cancel(doc.id)
        _step(doc.id, 0.3, "Extracting text")
        text = parse_document(data, doc.name)
        self._check_cancel(doc.id)
        _step(doc.id, 0.6, "Splitting into chunks")
        passages = chunk_text(text, budget)
        rows = []
        for position, passage in enumerate(passages):
            rows.append(
                {
                    "doc_id": doc.id,
                    "kb_id": doc.kb_id,
                    "position": position,
                    "content": passage,
                    "tokens": " ".join(tokenize(passage)),
                    "token_num": count_tokens(passage),
                }
            )
        self._check_cancel(doc.id)
        _step(doc.id, 0.8, f"Indexing {len(rows)} chunks")
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                self._store_chunks(doc.id, rows)
                break
            except OperationalError as error:  # SQLite busy, InnoDB deadlock (1213) or lock wait timeout
                if attempt == STORE_ATTEMPTS:
                    raise
                logger.info("storing the chunks of %s failed (%s); retrying", doc.id, error)
                time.sleep(0.05 * attempt)
        return len(rows), sum(row["token_num"] for row in rows)

    def _store_chunks(self, doc_id: str, rows: list[dict]) -> None:
        """Replace the document's chunks in one transaction.

        Old chunks are deleted by primary key: a ``DELETE … WHERE doc_id = …`` takes
        InnoDB gap locks on the ``doc_id`` index that deadlock with the inserts of a
        document parsed at the same time.
        """
        with write_transaction():
            self._check_cancel(doc_id)
            if not Document.select().where(Document.id == doc_id).exists():
                raise ParseCancelled()  # deleted meanwhile
            old_ids = [chunk_id for (chunk_id,) in Chunk.select(Chunk.id).where(Chunk.doc_id == doc_id).tuples()]
            for start in range(0, len(old_ids), 500):
                Chunk.delete().where(Chunk.id.in_(old_ids[start:start + 500])).execute()
            stamp = now_ms()
            for row in rows:
                row["create_time"] = stamp
                row["update_time"] = stamp
                row["id"] = Chunk.id.default()
            for start in range(0, len(rows), 200):
                Chunk.insert_many(rows[start:start + 200]).execute()
