"""What the chat routes (``session.py``) and the agent routes (``agent.py``, and the
WebSocket routes of ``websocket.py``) share: the session request schemas, session
creation, the checks before a completion, the non-streamed answer and the agent's
answer factory.

A chat and an agent are both an *owner* of sessions; the helpers take the owner's
service functions, so that one piece of code serves both.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pydantic import Field
from quart import Response

from api.db.services import agent_service
from api.runtime import get_runtime
from api.streaming.protocol import CompletionRequest, parse_request_payload
from api.utils.api_utils import (
    ListQuery,
    StrictModel,
    current_identity,
    get_result,
    json_body,
    run_blocking,
    validate,
)
from common.errors import RagSocketError


class SessionFields(StrictModel):
    """A new session: ``name`` and an optional application ``user_id``."""

    name: str = Field("New session", min_length=1, max_length=255)
    user_id: str = Field("", max_length=255)


class SessionQuery(ListQuery):
    """List parameters of sessions."""

    user_id: str | None = None


async def create_session_result(create_fn: Callable[..., Any], tenant_id: str, owner_id: str) -> Response:
    """A session-creating route: validates the optional :class:`SessionFields` body,
    runs ``create_fn(tenant_id, owner_id, name, user_id)`` in the worker pool and
    answers its session object in a success envelope.

    Raises:
        ArgumentError: a bad body; whatever ``create_fn`` raises (e.g. DataError).
    """
    body = validate(SessionFields, await json_body(required=False))
    return get_result(await run_blocking(create_fn, tenant_id, owner_id, body.name, body.user_id))


def _check_owner_and_session(
    get_owner: Callable[[str, str], Any],
    get_session: Callable[[str, str, str], Any],
    tenant_id: str,
    owner_id: str,
    session_id: str | None,
) -> None:
    """(blocking) The owner is the tenant's, and so is the session if one is named."""
    get_owner(tenant_id, owner_id)
    if session_id:
        get_session(tenant_id, owner_id, session_id)


async def completion_request(
    get_owner: Callable[[str, str], Any],
    get_session: Callable[[str, str, str], Any],
    tenant_id: str,
    owner_id: str,
) -> CompletionRequest:
    """The checked request of an HTTP completion route, in this order: the body
    parsed (:func:`parse_request_payload`), the caller's rate limit charged, then the
    owner (``get_owner(tenant_id, owner_id)``) and the named session
    (``get_session(tenant_id, owner_id, session_id)``) looked up in the worker pool.

    Raises:
        ArgumentError: a bad body or question; RagSocketError: over the rate limit;
        DataError: an owner or session that is unknown or another tenant's.
    """
    runtime = get_runtime()
    req = parse_request_payload(await json_body(), runtime.settings.max_question_chars)
    runtime.limiter.check(current_identity().principal)
    await run_blocking(_check_owner_and_session, get_owner, get_session, tenant_id, owner_id, req.session_id)
    return req


async def whole_answer(frames: AsyncIterator[dict[str, Any]]) -> Any:
    """The ``data`` of the first frame of a non-streamed answer, read to its end.

    Raises:
        RagSocketError: the answer failed; its code and message are the error
            frame's (the error handler answers them in an envelope).
    """
    collected = [frame async for frame in frames]
    first = collected[0]
    if first["code"] != 0:
        raise RagSocketError(first["message"], first["code"])
    return first["data"]


def agent_answer_factory(
    tenant_id: str, agent_id: str, request: CompletionRequest
) -> Callable[[threading.Event], Iterator[Any]]:
    """The generator factory that :meth:`WorkerPool.stream` runs for an agent request."""

    def factory(cancel: threading.Event) -> Iterator[Any]:
        return agent_service.run_agent(tenant_id, agent_id, request.question, request.session_id, cancel)

    return factory
