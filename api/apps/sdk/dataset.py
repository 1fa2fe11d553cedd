"""Dataset routes: ``POST/GET/PUT/DELETE /api/v1/datasets`` (RAGFlow HTTP API reference)."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint

from api.apps.sdk.doc import delete_with_files
from api.db.services import dataset_service
from api.utils.api_utils import (
    StrictModel,
    get_result,
    json_body,
    list_result,
    request_ids,
    run_blocking,
    token_required,
    validate,
)

manager = Blueprint("dataset", __name__)


class ParserConfig(StrictModel):
    """Chunking settings; ``chunk_token_num`` is the token budget of one chunk."""

    model_config = {"extra": "allow"}
    chunk_token_num: int = Field(512, ge=16, le=8192)


class DatasetFields(StrictModel):
    """Fields of a dataset, as RAGFlow's SDK sends them."""

    name: str = Field(..., min_length=1, max_length=128)
    description: str | None = Field(None, max_length=65535)
    avatar: str | None = None
    embedding_model: str | None = None
    permission: str = Field("me", pattern="^(me|team)$")
    chunk_method: str = Field("naive", pattern="^naive$")
    language: str | None = Field(None, max_length=32)
    parser_config: ParserConfig | None = None


class DatasetUpdate(DatasetFields):
    """All fields optional."""

    name: str | None = Field(None, min_length=1, max_length=128)  # type: ignore[assignment]
    permission: str | None = Field(None, pattern="^(me|team)$")  # type: ignore[assignment]
    chunk_method: str | None = Field(None, pattern="^naive$")  # type: ignore[assignment]


STORED_FIELDS = ("name", "description", "language", "chunk_method", "parser_config", "permission")


def _stored(model: StrictModel) -> dict:
    fields = model.model_dump(exclude_unset=True, exclude_none=True)
    return {key: value for key, value in fields.items() if key in STORED_FIELDS}


@manager.route("/datasets", methods=["POST"])
@token_required
async def create(tenant_id: str):
    """Create a dataset."""
    fields = validate(DatasetFields, await json_body())
    return get_result(await run_blocking(dataset_service.create_dataset, tenant_id, _stored(fields)))


@manager.route("/datasets", methods=["GET"])
@token_required
async def list_datasets(tenant_id: str):
    """List the caller's datasets (``page``, ``page_size``, ``orderby``, ``desc``, ``name``, ``id``)."""
    return await list_result(dataset_service.list_datasets, (tenant_id,))


@manager.route("/datasets/<dataset_id>", methods=["PUT"])
@token_required
async def update(tenant_id: str, dataset_id: str):
    """Update a dataset's name, description, language, permission or parser_config."""
    fields = validate(DatasetUpdate, await json_body())
    return get_result(await run_blocking(dataset_service.update_dataset, tenant_id, dataset_id, _stored(fields)))


@manager.route("/datasets", methods=["DELETE"])
@token_required
async def delete(tenant_id: str):
    """Delete datasets by id (``{"ids": null}`` deletes all), with documents and files."""
    ids = await request_ids()
    await run_blocking(delete_with_files, dataset_service.delete_datasets, tenant_id, ids)
    return get_result({"success_count": len(ids) if ids is not None else None})

