"""Chat assistant routes: ``POST/GET/PUT/DELETE /api/v1/chats`` (RAGFlow HTTP API reference)."""

from __future__ import annotations

import functools
import logging
import ssl
import time

import httpx
from pydantic import Field
from quart import Blueprint

from api.db.services import dialog_service
from api.rag.llm import ChatModelError, get_chat_model
from api.runtime import get_runtime
from api.utils.api_utils import (
    StrictModel,
    delete_result,
    get_result,
    json_body,
    list_result,
    run_blocking,
    token_required,
    validate,
)
from common.constants import OFFLINE_MODEL_NAME
from common.errors import ArgumentError

logger = logging.getLogger(__name__)

manager = Blueprint("chat", __name__)

#: Seconds the model list of the OpenAI-compatible endpoint is kept.
MODEL_LIST_TTL = 60.0
#: Seconds to wait for ``GET <base_url>/models``.
MODEL_LIST_TIMEOUT = 5.0
_model_list: tuple[float, frozenset[str] | None] = (0.0, None)


class LLMSettings(StrictModel):
    """``llm``: the chat model and its sampling settings."""

    model_name: str | None = Field(None, max_length=255)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=131072)


class PromptSettings(StrictModel):
    """``prompt``: system prompt (``prompt``), prologue (``opener``), retrieval settings."""

    model_config = {"extra": "ignore", "str_strip_whitespace": False}
    prompt: str | None = Field(None, max_length=65535)
    opener: str | None = Field(None, max_length=65535)
    empty_response: str | None = Field(None, max_length=65535)
    top_n: int | None = Field(None, ge=1, le=100)
    similarity_threshold: float | None = Field(None, ge=0.0, le=1.0)
    keywords_similarity_weight: float | None = Field(None, ge=0.0, le=1.0)
    show_quote: bool | None = None
    refine_multiturn: bool | None = None


class ChatFields(StrictModel):
    """A chat as RAGFlow's SDK sends it."""

    name: str = Field(..., min_length=1, max_length=255)
    description: str | None = None
    avatar: str | None = None
    dataset_ids: list[str] = Field(default_factory=list)
    llm: LLMSettings | None = None
    prompt: PromptSettings | None = None


class ChatUpdate(ChatFields):
    """All fields optional."""

    name: str | None = Field(None, min_length=1, max_length=255)  # type: ignore[assignment]
    dataset_ids: list[str] | None = None  # type: ignore[assignment]


def _fields(model: StrictModel) -> dict:
    fields = model.model_dump(exclude_unset=True)
    for nested in ("llm", "prompt"):
        if fields.get(nested):
            fields[nested] = {k: v for k, v in fields[nested].items() if v is not None}
    return fields


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """(blocking: reads the CA bundle) httpx's default TLS settings, made once."""
    return httpx.create_ssl_context()


async def _served_models() -> frozenset[str] | None:
    """Model ids listed by the endpoint's ``GET /models`` (cached), or None when it
    cannot tell (unreachable, or no model list)."""
    global _model_list
    fetched_at, names = _model_list
    if names is not None and time.monotonic() - fetched_at < MODEL_LIST_TTL:
        return names
    settings = get_runtime().settings
    url = settings.llm_base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
    tls = await run_blocking(_tls_context)
    try:
        async with httpx.AsyncClient(timeout=MODEL_LIST_TIMEOUT, verify=tls) as client:
            response = await client.get(url, headers=headers)
        response.raise_for_status()
        names = frozenset(str(item["id"]) for item in response.json()["data"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        logger.warning("cannot list the models of %s: %s", url, type(error).__name__)
        return None
    _model_list = (time.monotonic(), names)
    return names


async def _check_model(fields: dict) -> None:
    """Refuse a model this server cannot reach: RAGSOCKET_LLM_* not set, or a name
    the OpenAI-compatible endpoint does not list."""
    settings = get_runtime().settings
    try:  # in the pool: a new OpenAI client reads the CA bundle from disk
        await run_blocking(get_chat_model, fields.get("llm") or {}, settings)
    except ChatModelError as error:
        raise ArgumentError(str(error)) from None
    name = str((fields.get("llm") or {}).get("model_name") or "")
    if not name or name in (OFFLINE_MODEL_NAME, settings.llm_model):
        return
    served = await _served_models()
    if served is not None and name not in served:
        available = ", ".join(sorted({OFFLINE_MODEL_NAME, *served}))
        raise ArgumentError(f"model '{name}' is not available; available models: {available}")


@manager.route("/chats", methods=["POST"])
@token_required
async def create(tenant_id: str):
    """Create a chat over datasets."""
    fields = _fields(validate(ChatFields, await json_body()))
    await _check_model(fields)
    return get_result(await run_blocking(dialog_service.create_chat, tenant_id, fields))


@manager.route("/chats", methods=["GET"])
@token_required
async def list_chats(tenant_id: str):
    """List the caller's chats (``page``, ``page_size``, ``orderby``, ``desc``, ``name``, ``id``)."""
    return await list_result(dialog_service.list_chats, (tenant_id,))


@manager.route("/chats/<chat_id>", methods=["PUT"])
@token_required
async def update(tenant_id: str, chat_id: str):
    """Update a chat; ``llm`` and ``prompt`` are merged into the current settings."""
    fields = _fields(validate(ChatUpdate, await json_body()))
    if fields.get("llm"):
        await _check_model(fields)
    return get_result(await run_blocking(dialog_service.update_chat, tenant_id, chat_id, fields))


@manager.route("/chats", methods=["DELETE"])
@token_required
async def delete(tenant_id: str):
    """Delete chats by id (``{"ids": null}`` deletes all) with their sessions."""
    return await delete_result(dialog_service.delete_chats, tenant_id)
