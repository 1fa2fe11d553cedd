"""Datasets (RAGFlow "knowledge bases"): create, list, update, delete.

The JSON shape of a dataset follows RAGFlow's HTTP API reference ("Create dataset").
Every function checks the tenant: another tenant's dataset is reported as not found.
"""

from __future__ import annotations

from typing import Any

from peewee import SqliteDatabase, fn

from api.db.db_models import DB, Chunk, Document, Knowledgebase, db_session
from api.db.services.common_service import (
    check_unique,
    get_or_raise,
    owned_page,
)
from common.constants import DEFAULT_CHUNK_TOKENS


def write_transaction():
    """``DB.atomic()`` that takes the write lock at BEGIN on SQLite (``BEGIN IMMEDIATE``).

    A deferred SQLite transaction that reads first and writes later fails at once with
    "database is locked" (SQLITE_BUSY_SNAPSHOT, no busy wait) when another connection
    wrote in between; taking the lock up front makes it wait ``busy_timeout`` instead.
    """
    if isinstance(DB.obj, SqliteDatabase):
        return DB.atomic(lock_type="IMMEDIATE")
    return DB.atomic()


def dataset_to_dict(kb: Knowledgebase, document_count: int = 0, chunk_count: int = 0, token_num: int = 0) -> dict:
    """RAGFlow's dataset object."""
    return {
        "id": kb.id,
        "name": kb.name,
        "description": kb.description,
        "tenant_id": kb.tenant_id,
        "language": kb.language,
        "chunk_method": kb.chunk_method,
        "parser_config": kb.parser_config,
        "permission": kb.permission,
        "embedding_model": "",
        "avatar": "",
        "similarity_threshold": 0.2,
        "vector_similarity_weight": 0.0,
        "document_count": document_count,
        "chunk_count": chunk_count,
        "token_num": token_num,
        "status": "1",
        "create_time": kb.create_time,
        "update_time": kb.update_time,
    }


def _counts(kb_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """(documents, chunks, tokens) per dataset id."""
    if not kb_ids:
        return {}
    rows = (
        Document.select(Document.kb_id, fn.COUNT(Document.id), fn.SUM(Document.chunk_num), fn.SUM(Document.token_num))
        .where(Document.kb_id.in_(kb_ids))
        .group_by(Document.kb_id)
        .tuples()
    )
    return {kb_id: (int(n or 0), int(c or 0), int(t or 0)) for kb_id, n, c, t in rows}


def _with_counts(kbs: list[Knowledgebase]) -> list[dict]:
    counts = _counts([kb.id for kb in kbs])
    return [dataset_to_dict(kb, *counts.get(kb.id, (0, 0, 0))) for kb in kbs]


def _check_name(tenant_id: str, name: str, exclude_id: str | None = None) -> None:
    check_unique(Knowledgebase, f"Dataset name '{name}' already exists", exclude_id, tenant_id=tenant_id, name=name)


@db_session()
def get_dataset(tenant_id: str, dataset_id: str) -> Knowledgebase:
    """The tenant's dataset.

    Raises:
        DataError: no such dataset for this tenant.
    """
    return get_or_raise(Knowledgebase, f"You don't own the dataset {dataset_id}.", id=dataset_id, tenant_id=tenant_id)


@db_session()
def check_datasets(tenant_id: str, dataset_ids: list[str]) -> list[Knowledgebase]:
    """All of ``dataset_ids``, each owned by the tenant (raises DataError otherwise)."""
    return [get_dataset(tenant_id, dataset_id) for dataset_id in dataset_ids]


@db_session()
def create_dataset(tenant_id: str, fields: dict[str, Any]) -> dict:
    """Create a dataset from validated fields (``name``, ``description``, ``language``,
    ``chunk_method``, ``parser_config``)."""
    _check_name(tenant_id, fields["name"])
    parser_config = {"chunk_token_num": DEFAULT_CHUNK_TOKENS, **(fields.get("parser_config") or {})}
    kb = Knowledgebase.create(
        tenant_id=tenant_id,
        name=fields["name"],
        description=fields.get("description") or "",
        language=fields.get("language") or "English",
        chunk_method=fields.get("chunk_method") or "naive",
        parser_config=parser_config,
        permission=fields.get("permission") or "me",
    )
    return dataset_to_dict(kb)


@db_session()
def list_datasets(
    tenant_id: str,
    page: int,
    page_size: int,
    orderby: str,
    desc: bool,
    name: str | None = None,
    dataset_id: str | None = None,
) -> list[dict]:
    """One page of the tenant's datasets, optionally filtered by exact name or id."""
    owner = Knowledgebase.tenant_id == tenant_id
    return _with_counts(owned_page(Knowledgebase, owner, page, page_size, orderby, desc, name=name, id=dataset_id))


@db_session()
def update_dataset(tenant_id: str, dataset_id: str, fields: dict[str, Any]) -> dict:
    """Update name, description, language, chunk_method or parser_config."""
    kb = get_dataset(tenant_id, dataset_id)
    if "name" in fields and fields["name"] != kb.name:
        _check_name(tenant_id, fields["name"], exclude_id=kb.id)
    for key, value in fields.items():
        if key == "parser_config":
            value = {**kb.parser_config, **value}
        setattr(kb, key, value)
    kb.save()
    return _with_counts([kb])[0]


@db_session()
def delete_datasets(tenant_id: str, dataset_ids: list[str] | None) -> list[str]:
    """Delete the given datasets (all of the tenant's when ``None``) with their
    documents, chunks and files. Returns the file locations to remove from disk."""
    if dataset_ids is None:
        kbs = list(Knowledgebase.select().where(Knowledgebase.tenant_id == tenant_id))
    else:
        kbs = check_datasets(tenant_id, dataset_ids)
    ids = [kb.id for kb in kbs]
    if not ids:
        return []
    locations = [doc.location for doc in Document.select(Document.location).where(Document.kb_id.in_(ids))]
    with DB.atomic():
        Chunk.delete().where(Chunk.kb_id.in_(ids)).execute()
        Document.delete().where(Document.kb_id.in_(ids)).execute()
        Knowledgebase.delete().where(Knowledgebase.id.in_(ids)).execute()
    return locations
