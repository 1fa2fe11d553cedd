"""Document, parsing, chunk and retrieval routes (RAGFlow HTTP API reference):

* ``POST/GET/DELETE /api/v1/datasets/<dataset_id>/documents`` and download
  ``GET /api/v1/datasets/<dataset_id>/documents/<document_id>``;
* ``POST/DELETE /api/v1/datasets/<dataset_id>/chunks`` start / stop parsing;
* ``GET /api/v1/datasets/<dataset_id>/documents/<document_id>/chunks``;
* ``POST /api/v1/retrieval``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from pydantic import Field
from quart import Blueprint, request, send_file

from api.db.services import dataset_service, document_service, retrieval_service
from api.runtime import get_runtime
from api.utils.api_utils import (
    IdsBody,
    ListQuery,
    StrictModel,
    get_result,
    json_body,
    query_args,
    run_blocking,
    token_required,
    validate,
)
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


def _content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, for other names, RFC 6266 /
    RFC 8187 ``filename*=UTF-8''…`` (HTTP header values are not UTF-8)."""
    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _uploads() -> list[document_service.Upload]:
    files = await request.files
    uploads = []
    for storage in files.getlist("file"):
        uploads.append(document_service.Upload(storage.filename or "", storage.read()))
    return uploads


@manager.route("/datasets/<dataset_id>/documents", methods=["POST"])
@token_required
async def upload(tenant_id: str, dataset_id: str):
    """Upload one or more files (multipart field ``file``)."""
    uploads = await _uploads()
    data_dir = get_runtime().settings.data_dir
    return get_result(await run_blocking(document_service.upload_documents, tenant_id, dataset_id, uploads, data_dir))


@manager.route("/datasets/<dataset_id>/documents", methods=["GET"])
@token_required
async def list_documents(tenant_id: str, dataset_id: str):
    """List documents with their parsing status (``run``, ``progress``, ``progress_msg``)."""
    args = query_args(DocumentQuery)
    data = await run_blocking(
        document_service.list_documents,
        tenant_id,
        dataset_id,
        args.page,
        args.page_size,
        args.orderby,
        args.desc,
        args.keywords,
        args.id,
        args.name,
    )
    return get_result(data)


@manager.route("/datasets/<dataset_id>/documents", methods=["DELETE"])
@token_required
async def delete(tenant_id: str, dataset_id: str):
    """Delete documents (``{"ids": null}``: all) with their chunks and files."""
    body = validate(IdsBody, await json_body(required=False))
    locations = await run_blocking(document_service.delete_documents, tenant_id, dataset_id, body.ids)
    await run_blocking(document_service.remove_files, locations)
    return get_result()


@manager.route("/datasets/<dataset_id>/documents/<document_id>", methods=["GET"])
@token_required
async def download(tenant_id: str, dataset_id: str, document_id: str):
    """The stored file, under its uploaded name."""
    doc = await run_blocking(document_service.get_document, tenant_id, dataset_id, document_id)
    if not Path(doc.location).exists():
        raise DataError(f"The file of document {document_id} is missing on the server")
    response = await send_file(doc.location, as_attachment=True, attachment_filename=doc.name)
    response.headers["Content-Disposition"] = _content_disposition(doc.name)
    return response


@manager.route("/datasets/<dataset_id>/chunks", methods=["POST"])
@token_required
async def parse(tenant_id: str, dataset_id: str):
    """Parse documents in the background (status UNSTART → RUNNING → DONE | FAIL)."""
    body = validate(DocumentIds, await json_body())
    await run_blocking(get_runtime().parser.start, tenant_id, dataset_id, list(dict.fromkeys(body.document_ids)))
    return get_result()


@manager.route("/datasets/<dataset_id>/chunks", methods=["DELETE"])
@token_required
async def stop_parsing(tenant_id: str, dataset_id: str):
    """Stop parsing documents (status CANCEL)."""
    body = validate(DocumentIds, await json_body())
    await run_blocking(get_runtime().parser.cancel, tenant_id, dataset_id, list(dict.fromkeys(body.document_ids)))
    return get_result()


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
