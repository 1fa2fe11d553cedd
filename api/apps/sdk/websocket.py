"""WebSocket routes: answers streamed as JSON text frames (``docs/websocket_api.md``).

* ``/api/v1/ws/chats/<chat_id>/completions``: questions to one chat. A chat that does
  not exist or belongs to another tenant gets an error frame and close 1008.
* ``/api/v1/ws/agents/<agent_id>/completions``: questions to one agent, answered with
  agent frames (``thinking``, ``tool_call_start`` … ``message_end``, ``docs/agents.md``);
  an unknown agent is refused like an unknown chat.
* Seed API, for clients of RAGFlow PR #11704's first version: ``/v1/ws/chat`` (each
  question names its ``chat_id``, ``"type": "chat"``) and ``/v1/ws/health`` (a greeting,
  then an echo of each message with a timestamp; no authentication).

Routes only authenticate, check the chat and hand the socket to
:class:`~api.streaming.connection.AnswerConnection`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from quart import Blueprint, websocket

from api.apps.sdk.conversation import agent_answer_factory
from api.db.services import agent_service, dialog_service
from api.runtime import get_runtime
from api.streaming.agent_frames import agent_framer
from api.streaming.answer import chat_answer_factory
from api.streaming.connection import (
    AnswerConnection,
    Answerer,
    ConnectionContext,
    Factory,
    Framer,
    Transport,
)
from api.streaming.limits import Refused
from api.streaming.protocol import (
    CompletionRequest,
    chat_framer,
    decode_json,
    dumps,
    error_frame_for,
)
from api.utils import metrics
from api.utils.api_utils import (
    current_identity,
    run_blocking,
    ws_refuse,
    ws_token_required,
)
from common.constants import SERVICE_NAME, CloseCode, RetCode
from common.errors import ArgumentError, DataError

manager = Blueprint("websocket", __name__)
seed = Blueprint("websocket_seed", __name__)

VERSION = "0.1.0"


class QuartTransport:
    """:class:`~api.streaming.connection.Transport` over the current Quart websocket.

    It holds the websocket object itself, not the context-local proxy, so that the
    shutdown task (another context) can close it.
    """

    def __init__(self) -> None:
        self._websocket = websocket._get_current_object()  # type: ignore[attr-defined]

    async def send(self, text: str) -> None:
        await self._websocket.send(text)

    async def receive(self) -> str | bytes:
        message = await self._websocket.receive()
        return b"" if message is None else message  # Quart gives None for an empty binary message

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)


async def serve_connection(
    answerer: Answerer,
    make_framer: Callable[[CompletionRequest], Framer] = chat_framer,
    transport: Transport | None = None,
) -> None:
    """Run an :class:`AnswerConnection` on the current (accepted) WebSocket.

    Args:
        answerer: turns a question into the generator factory answering it.
        make_framer: the framer of each request (chat frames by default).
        transport: the socket as the loop sees it (default: the Quart websocket
            itself; a dialect such as Dify's wraps it).
    """
    transport = transport if transport is not None else QuartTransport()
    runtime = get_runtime()
    settings = runtime.settings
    identity = current_identity()
    connection = AnswerConnection(
        transport,
        ConnectionContext(
            tenant_id=identity.tenant_id,
            principal=identity.principal,
            pool=runtime.pool,
            event_log=runtime.event_log,
            limiter=runtime.limiter,
            registry=runtime.registry,
            max_question_chars=settings.max_question_chars,
            max_requests=settings.ws_max_requests_per_connection,
            idle_timeout=settings.ws_idle_timeout,
            max_message_bytes=settings.ws_max_message_bytes,
        ),
        answerer,
        make_framer,
    )
    try:
        runtime.registry.admit(identity.principal, connection)
    except Refused as refused:
        if refused.code == CloseCode.POLICY_VIOLATION:  # a quota of this key: say which
            await transport.send(dumps({"code": RetCode.PERMISSION_ERROR.value, "message": refused.reason, "data": None}))
        await transport.close(refused.code, refused.reason)
        return
    metrics.connection_opened()
    try:
        await connection.run()
    finally:
        metrics.connection_closed()
        runtime.registry.release(identity.principal, connection)


async def owner_found(
    transport: Transport, lookup: Callable[[str, str], Any], tenant_id: str, owner_id: str, reason: str
) -> bool:
    """Whether ``lookup(tenant_id, owner_id)`` (run in the worker pool) finds the chat
    or agent a connection is for. When it raises :class:`DataError` (unknown, or
    another tenant's), the client gets that error frame and close 1008 with ``reason``.
    """
    try:
        await run_blocking(lookup, tenant_id, owner_id)
    except DataError as error:
        await transport.send(dumps(error_frame_for(error)))
        await transport.close(CloseCode.POLICY_VIOLATION, reason)
        return False
    return True


@manager.websocket("/ws/chats/<chat_id>/completions")
@ws_token_required
async def chat_completions(tenant_id: str, chat_id: str) -> None:
    """Stream answers of one chat over a long-lived connection."""
    if not await owner_found(QuartTransport(), dialog_service.get_chat, tenant_id, chat_id, "chat not found"):
        return

    async def answerer(request: CompletionRequest) -> Factory:
        return chat_answer_factory(tenant_id, chat_id, request)

    await serve_connection(answerer)


@manager.websocket("/ws/agents/<agent_id>/completions")
@ws_token_required
async def agent_completions(tenant_id: str, agent_id: str) -> None:
    """Stream agent runs (tool events, then the answer) over a long-lived connection."""
    if not await owner_found(QuartTransport(), agent_service.get_agent, tenant_id, agent_id, "agent not found"):
        return

    async def answerer(request: CompletionRequest) -> Factory:
        if request.session_id:
            await run_blocking(agent_service.get_session, tenant_id, agent_id, request.session_id)
        return agent_answer_factory(tenant_id, agent_id, request)

    await serve_connection(answerer, make_framer=agent_framer)


@seed.websocket("/ws/chat")
@ws_token_required
async def seed_chat(tenant_id: str) -> None:
    """Seed API: each question carries ``"type": "chat"`` and its ``chat_id``."""

    async def answerer(request: CompletionRequest) -> Factory:
        if not request.chat_id:
            raise ArgumentError("`chat_id` is required on /v1/ws/chat")
        await run_blocking(dialog_service.get_chat, tenant_id, request.chat_id)
        return chat_answer_factory(tenant_id, request.chat_id, request)

    await serve_connection(answerer)


@seed.websocket("/ws/health")
async def seed_health() -> None:
    """Seed API: a greeting with status and version, then echoes with a timestamp."""
    await websocket.accept()
    await websocket.send(dumps({"status": "healthy", "message": f"{SERVICE_NAME} WebSocket is up", "version": VERSION}))
    while True:
        message = await websocket.receive()
        if isinstance(message, bytes):
            await ws_refuse(None, CloseCode.UNSUPPORTED_DATA, "binary messages are not supported; send JSON text")
            return
        try:
            echo = decode_json(message)
        except ArgumentError:
            echo = message
        await websocket.send(dumps({"type": "echo", "data": echo, "timestamp": int(time.time() * 1000)}))
