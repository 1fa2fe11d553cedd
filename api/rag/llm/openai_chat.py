"""Chat through an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama ...).

Uses the official ``openai`` package (v3, whose transport is ``httpx2``). Streaming
follows the Chat Completions API: server-sent events carrying
``chat.completion.chunk`` objects, ended by ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Iterator

import httpx
import openai

from api.rag.llm.base import ChatModelError, ChatRequest

try:  # openai v3 talks through httpx2; older versions through httpx.
    import httpx2
except ImportError:  # pragma: no cover - depends on the installed openai version
    httpx2 = None

logger = logging.getLogger(__name__)

_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError,) + ((httpx2.HTTPError,) if httpx2 else ())
#: Exceptions the openai client raises for an unreachable, failing or malformed model;
#: shared with the agent loop so that both classify model failures alike.
CLIENT_ERRORS = (openai.OpenAIError, json.JSONDecodeError) + _TRANSPORT_ERRORS

MID_ANSWER = "the chat model stopped mid-answer"


def describe_error(error: Exception, started: bool) -> str:
    """A client-safe sentence for an upstream failure (no exception text).

    Args:
        error: an ``openai``, ``httpx``/``httpx2`` or JSON decoding error.
        started: True when part of the answer was already streamed.
    """
    if isinstance(error, openai.APIStatusError):
        return f"the chat model failed: upstream answered {error.status_code}"
    if isinstance(error, openai.APITimeoutError) or isinstance(error, _timeout_errors()):
        return "the chat model did not answer in time"
    if started:
        return MID_ANSWER
    if isinstance(error, openai.APIConnectionError) or isinstance(error, _TRANSPORT_ERRORS):
        return "the chat model is unreachable"
    if isinstance(error, json.JSONDecodeError):
        return "the chat model sent a malformed answer"
    return "the chat model failed"


def _timeout_errors() -> tuple[type[Exception], ...]:
    return (httpx.TimeoutException,) + ((httpx2.TimeoutException,) if httpx2 else ())


def _sampling_arguments(request: ChatRequest) -> dict[str, Any]:
    """``temperature``/``top_p``/``max_tokens`` of the request that are set."""
    values = {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens}
    return {key: value for key, value in values.items() if value is not None}


class OpenAIChatModel:
    """A model served by an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: sent as ``Authorization: Bearer <api_key>``.
        model: the model name at the endpoint (also this object's ``name``).
        timeout: seconds allowed for connecting and between received bytes.

    No retries (``max_retries=0``): a failure is reported at once.
    """

    def __init__(self, base_url: str, api_key: str, model: str, timeout: float) -> None:
        self.name = model
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[str]:
        """Yield the non-empty ``choices[0].delta.content`` of each streamed chunk.

        Blocking. ``cancel`` is checked before the request and after every received
        chunk; once set, the upstream response is closed and the iterator returns.

        Raises:
            ChatModelError: the request failed (message names the HTTP status if
                any), or the stream broke or ended without a ``finish_reason``
                (``"the chat model stopped mid-answer"``).
        """
        if cancel.is_set():
            return
        upstream = self._open(request)
        with upstream:
            yield from self._deltas(upstream, cancel)

    def _open(self, request: ChatRequest) -> openai.Stream:
        """Send the request; the returned stream has its HTTP status already checked."""
        try:
            return self._client.chat.completions.create(
                model=self.name, messages=request.messages, stream=True, **_sampling_arguments(request)
            )
        except CLIENT_ERRORS as error:
            raise self._failure(error, started=False) from error

    def _deltas(self, upstream: openai.Stream, cancel: threading.Event) -> Iterator[str]:
        """Text deltas of an open stream, stopping early on ``cancel``."""
        started = finished = False
        try:
            for chunk in upstream:
                if cancel.is_set():
                    return
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finished = finished or bool(choice.finish_reason)
                if choice.delta and choice.delta.content:
                    started = True
                    yield choice.delta.content
        except CLIENT_ERRORS as error:
            raise self._failure(error, started=started) from error
        if not finished and not cancel.is_set():
            logger.warning("chat model %s: stream ended without a finish_reason", self.name)
            raise ChatModelError(MID_ANSWER)

    def _failure(self, error: Exception, started: bool) -> ChatModelError:
        """Log the upstream error for the operator and wrap it for the client."""
        logger.warning("chat model %s failed: %s: %s", self.name, type(error).__name__, error)
        return ChatModelError(describe_error(error, started))
