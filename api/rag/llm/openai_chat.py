"""Chat through an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama ...).

Uses the official ``openai`` package (v3, whose transport is ``httpx2``). Streaming
follows the Chat Completions API: server-sent events carrying
``chat.completion.chunk`` objects, ended by ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import httpx
import openai

from api.rag.llm.base import ChatModelError, ChatRequest
from api.rag.llm.cancel_watch import WATCHER

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
        chunk, and watched while waiting for the next one (:data:`WATCHER`): once it
        is set, the upstream connection is shut down from the watcher thread, so the
        blocked read returns within a fraction of a second even when the model has
        gone quiet, and the iterator returns without an error. (A stop while the
        request waits for the response headers is noticed when they arrive.)

        Raises:
            ChatModelError: the request failed (message names the HTTP status if
                any), or the stream broke or ended without a ``finish_reason``
                (``"the chat model stopped mid-answer"``).
        """
        if cancel.is_set():
            return
        upstream = self._open(request)
        with upstream, closing_on_cancel(upstream, cancel):
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
            if cancel.is_set():
                return  # the watcher shut the connection down: a stop, not a failure
            raise self._failure(error, started=started) from error
        if not finished and not cancel.is_set():
            logger.warning("chat model %s: stream ended without a finish_reason", self.name)
            raise ChatModelError(MID_ANSWER)

    def _failure(self, error: Exception, started: bool) -> ChatModelError:
        """Log the upstream error for the operator and wrap it for the client."""
        logger.warning("chat model %s failed: %s: %s", self.name, type(error).__name__, error)
        return ChatModelError(describe_error(error, started))


@contextmanager
def closing_on_cancel(upstream: openai.Stream, cancel: threading.Event) -> Iterator[None]:
    """Inside the block, setting ``cancel`` ends a read blocked on ``upstream`` at once.

    The shared :data:`WATCHER` shuts the response's connection down within
    ``WATCHER.interval`` seconds of ``cancel`` being set; the reading thread then gets
    one of :data:`CLIENT_ERRORS` (or the end of the stream) and should treat it as
    the stop when ``cancel.is_set()``. Use inside ``with upstream:``, so that the
    watch ends before the stream is closed::

        with upstream, closing_on_cancel(upstream, cancel):
            for chunk in upstream: ...
    """
    closer = _UpstreamCloser(upstream.response)
    with WATCHER.watch(cancel, closer.abort):
        yield


class _UpstreamCloser:
    """Shuts a streamed response's connection down from another thread.

    ``Response.close()`` alone does not wake a thread blocked in ``recv`` on the
    socket; ``shutdown(SHUT_RDWR)`` does (the read sees end-of-file). The socket is
    only shut down while the response still owns its connection: once the response
    is released (its ``close()`` ran, e.g. after ``[DONE]``) the connection may be
    back in the shared pool, serving another request, and is left alone.
    """

    def __init__(self, response: Any) -> None:
        self._lock = threading.Lock()
        self._released = False
        self._socket = _socket_of(response)
        release = response.close

        def close() -> None:
            with self._lock:
                self._released = True
            release()

        response.close = close  # the stream and the response call it on every path

    def abort(self) -> None:
        """Make the reading thread's blocked read return now (watcher thread)."""
        with self._lock:
            # No socket (HTTP/2, unknown transport): closing from this thread could
            # block the shared watcher; the read timeout still bounds the wait.
            if self._released or self._socket is None:
                return
            try:  # the plain socket's shutdown, also under TLS (SSLSocket's would unwrap)
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


def _socket_of(response: Any) -> socket.socket | None:
    """The socket of an HTTP/1.1 response of httpx/httpx2 (None for HTTP/2 or unknown).

    An HTTP/2 connection multiplexes other requests: it is never shut down here.
    """
    if getattr(response, "http_version", None) != "HTTP/1.1":
        return None
    stream = (getattr(response, "extensions", None) or {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None
