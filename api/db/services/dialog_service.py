"""Chats (RAGFlow "dialogs"): datasets to search, model settings, prompt settings.

Stored with RAGFlow's internal names (``prompt_config.system``, ``prologue``) and shown
with its SDK names (``prompt.prompt``, ``prompt.opener``), as RAGFlow's HTTP API
reference ("Create chat assistant") describes.
"""

from __future__ import annotations

from typing import Any

from api.db.db_models import Conversation, Dialog, Message, db_session
from api.db.services.common_service import (
    check_unique,
    get_or_raise,
    owned_page,
)
from api.db.services.dataset_service import check_datasets, write_transaction
from common.constants import (
    DEFAULT_EMPTY_RESPONSE,
    DEFAULT_PROLOGUE,
    DEFAULT_SIMILARITY_THRESHOLD,
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_TOP_N,
    OFFLINE_MODEL_NAME,
)

DEFAULT_LLM = {
    "model_name": OFFLINE_MODEL_NAME,
    "temperature": 0.1,
    "top_p": 0.3,
    "presence_penalty": 0.4,
    "frequency_penalty": 0.7,
    "max_tokens": 512,
}
DEFAULT_PROMPT = {
    "system": DEFAULT_SYSTEM_PROMPT,
    "prologue": DEFAULT_PROLOGUE,
    "empty_response": DEFAULT_EMPTY_RESPONSE,
    "top_n": DEFAULT_TOP_N,
    "similarity_threshold": DEFAULT_SIMILARITY_THRESHOLD,
    "keywords_similarity_weight": 1.0,
    "show_quote": True,
    "refine_multiturn": True,
}
#: SDK name → stored name, for the fields whose names differ.
PROMPT_SDK_NAMES = {"prompt": "system", "opener": "prologue"}


def _prompt_to_sdk(config: dict) -> dict:
    reverse = {stored: sdk for sdk, stored in PROMPT_SDK_NAMES.items()}
    shown = {reverse.get(key, key): value for key, value in config.items()}
    shown.setdefault("variables", [{"key": "knowledge", "optional": True}])
    shown.setdefault("rerank_model", "")
    return shown


def prompt_from_sdk(prompt: dict[str, Any]) -> dict[str, Any]:
    """Translate SDK prompt field names to stored ones (``prompt`` → ``system`` …)."""
    return {PROMPT_SDK_NAMES.get(key, key): value for key, value in prompt.items()}


def chat_to_dict(dialog: Dialog) -> dict:
    """RAGFlow's chat assistant object."""
    return {
        "id": dialog.id,
        "name": dialog.name,
        "description": dialog.description,
        "avatar": "",
        "tenant_id": dialog.tenant_id,
        "dataset_ids": dialog.kb_ids,
        "llm": dialog.llm_setting,
        "prompt": _prompt_to_sdk(dialog.prompt_config),
        "similarity_threshold": dialog.prompt_config.get("similarity_threshold"),
        "top_n": dialog.prompt_config.get("top_n"),
        "language": "English",
        "status": "1",
        "create_time": dialog.create_time,
        "update_time": dialog.update_time,
    }


@db_session()
def get_chat(tenant_id: str, chat_id: str) -> Dialog:
    """The tenant's chat.

    Raises:
        DataError: no such chat for this tenant.
    """
    return get_or_raise(Dialog, f"You don't own the chat {chat_id}", id=chat_id, tenant_id=tenant_id)


def _check_name(tenant_id: str, name: str, exclude_id: str | None = None) -> None:
    check_unique(Dialog, f"Duplicated chat name in creating chat: {name}", exclude_id, tenant_id=tenant_id, name=name)


@db_session()
def create_chat(tenant_id: str, fields: dict[str, Any]) -> dict:
    """Create a chat from validated fields: ``name``, ``description``, ``dataset_ids``,
    ``llm`` (model settings) and ``prompt`` (SDK names)."""
    _check_name(tenant_id, fields["name"])
    dataset_ids = list(dict.fromkeys(fields.get("dataset_ids") or []))
    check_datasets(tenant_id, dataset_ids)
    dialog = Dialog.create(
        tenant_id=tenant_id,
        name=fields["name"],
        description=fields.get("description") or "",
        kb_ids=dataset_ids,
        llm_setting={**DEFAULT_LLM, **(fields.get("llm") or {})},
        prompt_config={**DEFAULT_PROMPT, **prompt_from_sdk(fields.get("prompt") or {})},
    )
    return chat_to_dict(dialog)


@db_session()
def list_chats(
    tenant_id: str, page: int, page_size: int, orderby: str, desc: bool, name: str | None, chat_id: str | None
) -> list[dict]:
    """One page of the tenant's chats, optionally filtered by exact name or id."""
    dialogs = owned_page(Dialog, Dialog.tenant_id == tenant_id, page, page_size, orderby, desc, name=name, id=chat_id)
    return [chat_to_dict(dialog) for dialog in dialogs]


@db_session()
def update_chat(tenant_id: str, chat_id: str, fields: dict[str, Any]) -> dict:
    """Update a chat; ``llm`` and ``prompt`` are merged into the current settings."""
    dialog = get_chat(tenant_id, chat_id)
    if "name" in fields and fields["name"] != dialog.name:
        _check_name(tenant_id, fields["name"], exclude_id=dialog.id)
        dialog.name = fields["name"]
    if "description" in fields:
        dialog.description = fields["description"] or ""
    if "dataset_ids" in fields:
        dataset_ids = list(dict.fromkeys(fields["dataset_ids"] or []))
        check_datasets(tenant_id, dataset_ids)
        dialog.kb_ids = dataset_ids
    if fields.get("llm"):
        dialog.llm_setting = {**dialog.llm_setting, **fields["llm"]}
    if fields.get("prompt"):
        dialog.prompt_config = {**dialog.prompt_config, **prompt_from_sdk(fields["prompt"])}
    dialog.save()
    return chat_to_dict(dialog)


@db_session()
def delete_chats(tenant_id: str, chat_ids: list[str] | None) -> int:
    """Delete chats (all of the tenant's when ``None``) with their sessions and messages."""
    if chat_ids is None:
        ids = [d.id for d in Dialog.select(Dialog.id).where(Dialog.tenant_id == tenant_id)]
    else:
        ids = [get_chat(tenant_id, chat_id).id for chat_id in chat_ids]
    if not ids:
        return 0
    with write_transaction():
        session_ids = [c.id for c in Conversation.select(Conversation.id).where(Conversation.dialog_id.in_(ids))]
        if session_ids:
            Message.delete().where(Message.conversation_id.in_(session_ids)).execute()
        Conversation.delete().where(Conversation.dialog_id.in_(ids)).execute()
        Dialog.delete().where(Dialog.id.in_(ids)).execute()
    return len(ids)
