"""Helpers for the tests of RAGFlow's own Python SDK (``ragflow-sdk``) against the server.

The ``rag`` fixture (the SDK client) and ``http`` (a plain client, to read what the
server saved) are in ``test/conftest.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ragflow_sdk import RAGFlow
from ragflow_sdk.modules.dataset import DataSet
from ragflow_sdk.modules.document import Document

PARSE_TIMEOUT = 60.0


def wait_done(dataset: DataSet, document_ids: list[str]) -> list[Document]:
    """Poll ``list_documents`` (the SDK's own call) until every document is DONE."""
    deadline = time.monotonic() + PARSE_TIMEOUT
    while time.monotonic() < deadline:
        docs = [d for d in dataset.list_documents(page_size=100) if d.id in document_ids]
        if docs and all(d.run == "DONE" for d in docs):
            return docs
        assert not any(d.run in ("FAIL", "CANCEL") for d in docs), [(d.name, d.run, d.progress_msg) for d in docs]
        time.sleep(0.1)
    raise AssertionError(f"documents not parsed after {PARSE_TIMEOUT} s")


def sdk_corpus(rag: RAGFlow, corpus_dir: Path, name: str, **fields: str) -> tuple[DataSet, list[Document]]:
    """A dataset made, filled with the files of ``corpus_dir`` and parsed through the SDK;
    returns it and its parsed documents."""
    dataset = rag.create_dataset(name=name, **fields)
    docs = dataset.upload_documents([{"display_name": p.name, "blob": p.read_bytes()} for p in sorted(corpus_dir.iterdir())])
    dataset.async_parse_documents([d.id for d in docs])
    return dataset, wait_done(dataset, [d.id for d in docs])
