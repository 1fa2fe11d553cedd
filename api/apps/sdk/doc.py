"""Document, parsing, chunk and retrieval routes (RAGFlow HTTP API reference):

* ``POST/GET/DELETE /api/v1/datasets/<dataset_id>/documents`` and download
  ``GET /api/v1/datasets/<dataset_id>/documents/<document_id>``;
* ``POST/DELETE /api/v1/datasets/<dataset_id>/chunks`` start / stop parsing;
* ``GET /api/v1/datasets/<dataset_id>/documents/<document_id>/chunks``;
* ``POST /api/v1/retrieval``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from quart import Blueprint, Response, request
from quart.datastructures import FileStorage

from api.db.services import dataset_service, document_service, retrieval_service
from api.runtime import get_runtime
from api.utils.api_utils import (
    ListQuery,
    StrictModel,
    delete_result,
    get_result,
    json_body,
    list_result,
    query_args,
    run_blocking,
    token_required,
    validate,
)
from api.utils.file_response import StoredFile, attachment_response, open_stored_file
from common.errors import DataError

manager = Blueprint("doc", __name__)


class DocumentQuery(ListQuery):
    """List parameters of documents."""

    keywords: str = ""


class ChunkQuery(StrictModel):
    """List parameters of chunks."""

    model_config = {"extra": "ignore"}
    page: int = Field(1, ge=1)
    page_size: int = Field(30, ge=1, le=1000)
    keywords: str = ""
    id: str | None = None


class DocumentIds(StrictModel):
    """``{"document_ids": [...]}`` (non-empty)."""

    document_ids: list[str] = Field(..., min_length=1)


class RetrievalBody(StrictModel):
    """``POST /api/v1/retrieval``; vector and rerank fields are accepted and ignored."""

    model_config = {"extra": "ignore", "str_strip_whitespace": True}
    question: str = Field(..., min_length=1, max_length=8000)
    dataset_ids: list[str] = Field(..., min_length=1)
    document_ids: list[str] | None = None
    top_k: int = Field(1024, ge=1, le=1024)
    similarity_threshold: float = Field(0.2, ge=0.0, le=1.0)
    page: int = Field(1, ge=1)
    page_size: int = Field(30, ge=1, le=1000)


def delete_with_files(delete_fn: Callable[..., list[str]], *args: Any) -> None:
    """(blocking) ``delete_fn(*args)``, then remove the stored files whose locations it
    returns (datasets and documents are deleted this way).

    Raises:
        whatever ``delete_fn`` raises (then no file is removed).
    """
    document_service.remove_files(delete_fn(*args))


def _store_uploads(tenant_id: str, dataset_id: str, storages: list[FileStorage], data_dir: Path) -> list[dict]:
    """(blocking) Read each uploaded file (spooled by the form parser, in memory or on
    disk) and store them all as new documents (:func:`document_service.upload_documents`).

    Raises:
        ArgumentError: no file, an empty or too long name, or an empty file.
        DataError: the dataset is not the tenant's.
    """
    uploads = [document_service.Upload(storage.filename or "", storage.read()) for storage in storages]
    return document_service.upload_documents(tenant_id, dataset_id, uploads, data_dir)


def _document_file(tenant_id: str, dataset_id: str, document_id: str) -> StoredFile:
    """(blocking) The stored file of a document, to be sent under its uploaded name.

    Raises:
        DataError: an unknown document or dataset, or a file missing on the server.
    """
    doc = document_service.get_document(tenant_id, dataset_id, document_id)
    try:
        return open_stored_file(doc.location, doc.name)
    except FileNotFoundError:
        raise DataError(f"The file of document {document_id} is missing on the server") from None


async def _parser_action(action: Callable[[str, str, list[str]], Any], tenant_id: str, dataset_id: str) -> Response:
    """``action(tenant_id, dataset_id, document_ids)`` (the parser's start or cancel) in
    the worker pool, with the body's ids in order and without repeats."""
    body = validate(DocumentIds, await json_body())
    await run_blocking(action, tenant_id, dataset_id, list(dict.fromkeys(body.document_ids)))
    return get_result()


@manager.route("/datasets/<dataset_id>/documents", methods=["POST"])
@token_required
async def upload(tenant_id: str, dataset_id: str):
    """Upload one or more files (multipart field ``file``)."""
    files = await request.files  # the form parser answers 413 past max_upload_bytes
    data_dir = get_runtime().settings.data_dir
    return get_result(await run_blocking(_store_uploads, tenant_id, dataset_id, files.getlist("file"), data_dir))


@manager.route("/datasets/<dataset_id>/documents", methods=["GET"])
@token_required
async def list_documents(tenant_id: str, dataset_id: str):
    """List documents with their parsing status (``run``, ``progress``, ``progress_msg``)."""
    filters = ("keywords", "id", "name")
    return await list_result(document_service.list_documents, (tenant_id, dataset_id), DocumentQuery, filters)


@manager.route("/datasets/<dataset_id>/documents", methods=["DELETE"])
@token_required
async def delete(tenant_id: str, dataset_id: str):
    """Delete documents (``{"ids": null}``: all) with their chunks and files."""
    return await delete_result(delete_with_files, document_service.delete_documents, tenant_id, dataset_id)


@manager.route("/datasets/<dataset_id>/documents/<document_id>", methods=["GET"])
@token_required
async def download(tenant_id: str, dataset_id: str, document_id: str):
    """The stored file, under its uploaded name."""
    return attachment_response(await run_blocking(_document_file, tenant_id, dataset_id, document_id))


@manager.route("/datasets/<dataset_id>/chunks", methods=["POST"])
@token_required
async def parse(tenant_id: str, dataset_id: str):
    """Parse documents in the background (status UNSTART → RUNNING → DONE | FAIL)."""
    return await _parser_action(get_runtime().parser.start, tenant_id, dataset_id)


@manager.route("/datasets/<dataset_id>/chunks", methods=["DELETE"])
@token_required
async def stop_parsing(tenant_id: str, dataset_id: str):
    """Stop parsing documents (status CANCEL)."""
    return await _parser_action(get_runtime().parser.cancel, tenant_id, dataset_id)


@manager.route("/datasets/<dataset_id>/documents/<document_id>/chunks", methods=["GET"])
@token_required
async def list_chunks(tenant_id: str, dataset_id: str, document_id: str):
    """One page of a document's chunks (``keywords``, ``page``, ``page_size``, ``id``)."""
    args = query_args(ChunkQuery)
    data = await run_blocking(
        document_service.list_chunks, tenant_id, dataset_id, document_id, args.page, args.page_size, args.keywords, args.id
    )
    return get_result(data)


@manager.route("/retrieval", methods=["POST"])
@token_required
async def retrieval(tenant_id: str):
    """Rank the chunks of the caller's datasets for a question (BM25, scores 0..1)."""
    body = validate(RetrievalBody, await json_body())
    await run_blocking(dataset_service.check_datasets, tenant_id, body.dataset_ids)
    # ``document_ids: []`` means no filter, as in RAGFlow: its SDK's ``retrieve()``
    # always sends the list, empty when the caller names no document.
    data = await run_blocking(
        retrieval_service.retrieve,
        body.question,
        body.dataset_ids,
        body.document_ids or None,
        body.similarity_threshold,
        body.top_k,
        body.page,
        body.page_size,
    )
    return get_result(data)
