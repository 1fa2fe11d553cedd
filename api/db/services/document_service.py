"""Documents of a dataset: upload, list, delete, download, and their chunks.

Files are kept under ``<data_dir>/files/<dataset_id>/<document_id><suffix>``. The JSON
shapes follow RAGFlow's HTTP API reference ("Upload documents", "List documents",
"List chunks").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peewee import fn

from api.db.db_models import DB, Chunk, Document, db_session, get_uuid
from api.db.services.common_service import (
    get_or_raise,
    ordered_page,
    where_equal,
)
from api.db.services.dataset_service import get_dataset
from common.errors import ArgumentError

#: Longest accepted file name, characters (RAGFlow's limit).
MAX_FILENAME_CHARS = 255


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its client-side name and content."""

    filename: str
    data: bytes


def document_to_dict(doc: Document) -> dict:
    """RAGFlow's document object."""
    return {
        "id": doc.id,
        "name": doc.name,
        "dataset_id": doc.kb_id,
        "knowledgebase_id": doc.kb_id,
        "type": doc.suffix.lstrip("."),
        "size": doc.size,
        "location": doc.name,
        "run": doc.run,
        "status": "1",
        "progress": round(doc.progress, 4),
        "progress_msg": doc.progress_msg,
        "chunk_count": doc.chunk_num,
        "token_count": doc.token_num,
        "chunk_method": "naive",
        "parser_config": {},
        "process_begin_at": doc.process_begin_time,
        "process_duration": doc.process_duration,
        "thumbnail": None,
        "create_time": doc.create_time,
        "update_time": doc.update_time,
    }


def chunk_to_dict(chunk: Chunk, document_name: str = "") -> dict:
    """RAGFlow's chunk object as listed under a document."""
    return {
        "id": chunk.id,
        "content": chunk.content,
        "document_id": chunk.doc_id,
        "docnm_kwd": document_name,
        "dataset_id": chunk.kb_id,
        "important_keywords": [],
        "positions": [],
        "available": True,
        "image_id": "",
    }


def files_dir(data_dir: Path, dataset_id: str) -> Path:
    """Folder holding the files of one dataset."""
    return data_dir / "files" / dataset_id


def _validate_filename(filename: str) -> str:
    name = Path(filename.replace("\\", "/")).name.strip()
    if not name:
        raise ArgumentError("No file selected!")
    if len(name) > MAX_FILENAME_CHARS:
        raise ArgumentError(f"File name must be {MAX_FILENAME_CHARS} characters or fewer: {name[:40]}…")
    return name


@db_session()
def upload_documents(tenant_id: str, dataset_id: str, uploads: list[Upload], data_dir: Path) -> list[dict]:
    """Store files and create UNSTART documents; all or none are added.

    Raises:
        ArgumentError: no file, an empty name, or an empty file.
        DataError: the dataset is not the tenant's.
    """
    get_dataset(tenant_id, dataset_id)
    if not uploads:
        raise ArgumentError("No file part!")
    names = [_validate_filename(upload.filename) for upload in uploads]
    for name, upload in zip(names, uploads):
        if not upload.data:
            raise ArgumentError(f"File '{name}' is empty")
    folder = files_dir(data_dir, dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    created = []
    with DB.atomic():
        for name, upload in zip(names, uploads):
            doc_id = get_uuid()
            suffix = Path(name).suffix.lower()
            location = folder / f"{doc_id}{suffix}"
            location.write_bytes(upload.data)
            created.append(
                Document.create(
                    id=doc_id,
                    kb_id=dataset_id,
                    tenant_id=tenant_id,
                    name=name,
                    suffix=suffix,
                    size=len(upload.data),
                    location=str(location),
                )
            )
    return [document_to_dict(doc) for doc in created]


@db_session()
def get_document(tenant_id: str, dataset_id: str, document_id: str) -> Document:
    """The document, checked to belong to the tenant's dataset.

    Raises:
        DataError: unknown dataset or document.
    """
    get_dataset(tenant_id, dataset_id)
    return get_or_raise(Document, f"You don't own the document {document_id}.", id=document_id, kb_id=dataset_id)


@db_session()
def list_documents(
    tenant_id: str,
    dataset_id: str,
    page: int,
    page_size: int,
    orderby: str,
    desc: bool,
    keywords: str = "",
    document_id: str | None = None,
    name: str | None = None,
) -> dict:
    """``{"docs": [...], "total": n}`` for one page of the dataset's documents."""
    get_dataset(tenant_id, dataset_id)
    query = Document.select().where(Document.kb_id == dataset_id)
    if keywords:
        query = query.where(Document.name.contains(keywords))
    query = where_equal(query, Document, id=document_id, name=name)
    total = query.count()
    rows = ordered_page(query, Document, orderby, desc, page, page_size)
    return {"docs": [document_to_dict(doc) for doc in rows], "total": total}


@db_session()
def delete_documents(tenant_id: str, dataset_id: str, document_ids: list[str] | None) -> list[str]:
    """Delete documents and their chunks; returns their file locations.

    ``None`` deletes every document of the dataset.
    """
    get_dataset(tenant_id, dataset_id)
    if document_ids is None:
        docs = list(Document.select().where(Document.kb_id == dataset_id))
    else:
        docs = [get_document(tenant_id, dataset_id, doc_id) for doc_id in document_ids]
    ids = [doc.id for doc in docs]
    if ids:
        with DB.atomic():
            Chunk.delete().where(Chunk.doc_id.in_(ids)).execute()
            Document.delete().where(Document.id.in_(ids)).execute()
    return [doc.location for doc in docs]


def remove_files(locations: list[str]) -> None:
    """Delete stored files; a file already gone is not an error."""
    for location in locations:
        Path(location).unlink(missing_ok=True)


@db_session()
def list_chunks(
    tenant_id: str,
    dataset_id: str,
    document_id: str,
    page: int,
    page_size: int,
    keywords: str = "",
    chunk_id: str | None = None,
) -> dict:
    """``{"chunks": [...], "doc": {...}, "total": n}`` for one page of a document's chunks."""
    doc = get_document(tenant_id, dataset_id, document_id)
    query = Chunk.select().where(Chunk.doc_id == document_id)
    if keywords:
        query = query.where(Chunk.content.contains(keywords))
    query = where_equal(query, Chunk, id=chunk_id)
    total = query.count()
    rows = query.order_by(Chunk.position).paginate(page, page_size)
    return {
        "chunks": [chunk_to_dict(chunk, doc.name) for chunk in rows],
        "doc": document_to_dict(doc),
        "total": total,
    }


@db_session()
def document_names(document_ids: list[str]) -> dict[str, str]:
    """Map document id → name."""
    if not document_ids:
        return {}
    rows = Document.select(Document.id, Document.name).where(Document.id.in_(document_ids)).tuples()
    return dict(rows)


@db_session()
def chunk_fingerprint(dataset_id: str) -> tuple[int, int]:
    """(number of chunks, newest chunk time) of a dataset: changes whenever its
    chunks change, in any server process sharing the database."""
    count, newest = (
        Chunk.select(fn.COUNT(Chunk.id), fn.MAX(Chunk.create_time)).where(Chunk.kb_id == dataset_id).tuples().get()
    )
    return int(count or 0), int(newest or 0)
