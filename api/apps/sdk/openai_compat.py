"""OpenAI-compatible route (RAGFlow's): ``POST /api/v1/chats_openai/<chat_id>/chat/completions``.

The official ``openai`` client, with ``base_url=http://HOST:PORT/api/v1/chats_openai/<chat_id>``
and one of our API keys, gets the chat's answers: streamed as ``chat.completion.chunk``
server-sent events ending with ``data: [DONE]``, or one ``chat.completion``. The answer
comes from the same ``completion()`` generator, in the worker pool, as every other
route; each request opens a new session holding the client's conversation and the
answer. Formats and the conversation rules are in :mod:`api.streaming.openai_format`.

Errors are OpenAI error objects with an HTTP status (401 bad key, 400 bad request,
404 unknown chat or another tenant's, 429 rate limit, 500 model failure), not
envelopes, so that OpenAI clients raise their usual exceptions.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from quart import Blueprint, Response, g, jsonify, request

from api.db.services import dialog_service
from api.db.services.conversation_service import AnswerEvent, completion
from api.runtime import get_runtime
from api.streaming.answer import answer_frames
from api.streaming.openai_format import (
    DONE,
    OpenAIFramer,
    OpenAIRequest,
    error_body,
    error_status,
    parse_openai_request,
)
from api.streaming.protocol import dumps
from api.utils.api_utils import authenticate, json_body, run_blocking, sse_response
from common.errors import AuthError, RagSocketError

manager = Blueprint("openai_compat", __name__)

def openai_error(code: int, message: str) -> Response:
    """An OpenAI error object with the HTTP status of ``code``."""
    response = jsonify(error_body(code, message))
    response.status_code = error_status(code)[0]
    return response


def openai_token_required(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``Authorization: Bearer <API key>`` as on every route, failing with HTTP 401
    and an OpenAI error object instead of the envelope."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        try:
            g.identity = await run_blocking(authenticate, token.strip() if scheme.lower() == "bearer" else None)
        except AuthError as error:
            response = openai_error(error.code, error.message)
            response.headers["Connection"] = "close"  # the body is left unread (see token_required)
            return response
        return await handler(g.identity.tenant_id, *args, **kwargs)

    return wrapper


def _factory(tenant_id: str, chat_id: str, req: OpenAIRequest) -> Callable[[threading.Event], Iterator[AnswerEvent]]:
    """The generator factory that :meth:`WorkerPool.stream` runs: ``completion()``
    in a new session opened by the request's history."""

    def factory(cancel: threading.Event) -> Iterator[AnswerEvent]:
        return completion(tenant_id, chat_id, req.question, cancel=cancel, history=[dict(m) for m in req.history])

    return factory


def _sse(obj: dict[str, Any]) -> str:
    return "data: [DONE]\n\n" if obj is DONE else f"data: {dumps(obj)}\n\n"


@manager.route("/chats_openai/<chat_id>/chat/completions", methods=["POST"])
@openai_token_required
async def chat_completions(tenant_id: str, chat_id: str):
    """Answer the last user message of ``messages`` with the chat (OpenAI's format)."""
    runtime = get_runtime()
    try:
        req = parse_openai_request(await json_body(), runtime.settings.max_question_chars)
        runtime.limiter.check(g.identity.principal)
        await run_blocking(dialog_service.get_chat, tenant_id, chat_id)
    except RagSocketError as error:
        return openai_error(error.code, error.message)
    framer = OpenAIFramer(req)
    frames = answer_frames(runtime.pool, _factory(tenant_id, chat_id, req), framer, transport="sse" if req.stream else "http", kind="openai")
    if not req.stream:
        collected: list[dict[str, Any]] = [frame async for frame in frames]
        response = jsonify(collected[0])
        response.status_code = framer.status
        return response

    return sse_response(frames, _sse)

