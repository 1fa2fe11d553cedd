"""Chat models of the RAG pipeline: the built-in offline model and OpenAI-compatible ones.

Use :func:`get_chat_model` to pick the model of an assistant's ``llm`` setting
(RAGFlow's ``llm.model_name``), and :func:`available_models` to list the names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from api.rag.llm.base import ChatModel, ChatModelError, ChatRequest
from api.rag.llm.offline import OfflineChatModel
from api.rag.llm.openai_chat import OpenAIChatModel
from common.constants import OFFLINE_MODEL_NAME

__all__ = [
    "ChatModel",
    "ChatModelError",
    "ChatRequest",
    "OfflineChatModel",
    "OpenAIChatModel",
    "available_models",
    "get_chat_model",
]


@lru_cache(maxsize=16)
def _openai_model(base_url: str, api_key: str, model: str, timeout: float) -> OpenAIChatModel:
    """One shared client (and connection pool) per endpoint, key, model and timeout."""
    return OpenAIChatModel(base_url, api_key, model, timeout)


def get_chat_model(llm_setting: dict | None, settings: Any) -> ChatModel:
    """The chat model named by an assistant's ``llm`` setting.

    Args:
        llm_setting: RAGFlow's ``llm`` object; only ``model_name`` is read here.
        settings: :class:`common.settings.Settings` (``llm_*`` and
            ``offline_token_delay`` fields, ``llm_configured`` property).

    Returns:
        :class:`OfflineChatModel` when ``model_name`` is empty or
        ``OFFLINE_MODEL_NAME``, else an :class:`OpenAIChatModel` for that name at
        ``settings.llm_base_url``.

    Raises:
        ChatModelError: another model is named but no endpoint is configured.
    """
    name = str((llm_setting or {}).get("model_name") or "")
    if not name or name == OFFLINE_MODEL_NAME:
        return OfflineChatModel(settings.offline_token_delay)
    if not settings.llm_configured:
        raise ChatModelError(
            f"model '{name}' is not available: set RAGSOCKET_LLM_BASE_URL and RAGSOCKET_LLM_MODEL"
        )
    return _openai_model(settings.llm_base_url, settings.llm_api_key or "none", name, settings.llm_timeout)


def available_models(settings: Any) -> list[str]:
    """Model names usable now: the offline model, then the configured endpoint's model."""
    names = [OFFLINE_MODEL_NAME]
    if settings.llm_configured and settings.llm_model != OFFLINE_MODEL_NAME:
        names.append(settings.llm_model)
    return names
