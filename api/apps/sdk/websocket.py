"""WebSocket routes: answers streamed as JSON text frames (``docs/websocket_api.md``).

* ``/api/v1/ws/chats/<chat_id>/completions``: questions to one chat. A chat that does
  not exist or belongs to another tenant gets an error frame and close 1008.
* ``/api/v1/ws/agents/<agent_id>/completions``: questions to one agent, answered with
  agent frames (``thinking``, ``tool_call_start`` … ``message_end``, ``docs/agents.md``);
  an unknown agent is refused like an unknown chat, and every error frame of the
  route, refusals included, carries ``"event": "error"``.
* Seed API, for clients of RAGFlow PR #11704's first version: ``/v1/ws/chat`` (each
  question names its ``chat_id``, ``"type": "chat"``) and ``/v1/ws/health`` (a greeting,
  then an echo of each message with a timestamp; no authentication, but admitted,
  counted and closed like every other socket: :mod:`api.streaming.health`).

Routes only authenticate, check the chat and hand the socket to
:class:`~api.streaming.connection.AnswerConnection`. An API key offered as a
subprotocol without ``ragsocket`` is refused (109, then 1008): the server could only
answer with no subprotocol, which a browser treats as a failed handshake.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint, websocket

from api.apps.sdk.conversation import agent_answer_factory
from api.db.services import agent_service, dialog_service, tenant_service
from api.runtime import get_runtime
from api.streaming.agent_frames import AGENT_DIALECT
from api.streaming.answer import chat_answer_factory
from api.streaming.connection import (
    AnswerConnection,
    Answerer,
    ConnectionContext,
    Factory,
    Transport,
)
from api.streaming.health import EchoConnection, greeting_frame
from api.streaming.limits import Closable, Refused
from api.streaming.protocol import CHAT_DIALECT, CompletionRequest, Dialect, dumps
from api.utils import metrics
from api.utils.api_utils import (
    SUBPROTOCOL,
    auth_refusal,
    current_identity,
    run_blocking,
    ws_authenticated,
    ws_refuse,
)
from common.constants import SERVICE_NAME, CloseCode, RetCode
from common.errors import ArgumentError, AuthError, DataError

manager = Blueprint("websocket", __name__)
seed = Blueprint("websocket_seed", __name__)

VERSION = "0.1.0"
KEY_WITHOUT_SUBPROTOCOL = (
    "Authentication error: an API key offered as a WebSocket subprotocol must come with the "
    f'"{SUBPROTOCOL}" subprotocol: new WebSocket(url, ["{SUBPROTOCOL}", key])'
)
AUTH_FAILED_REASON = "authentication failed"

Handler = Callable[..., Awaitable[Any]]


class QuartTransport:
    """:class:`~api.streaming.connection.Transport` over the current Quart websocket.

    It holds the websocket object itself, not the context-local proxy, so that the
    shutdown task (another context) can close it.
    """

    def __init__(self) -> None:
        self._websocket = websocket._get_current_object()  # type: ignore[attr-defined]

    async def send(self, text: str) -> None:
        """Send one text message."""
        await self._websocket.send(text)

    async def receive(self) -> str | bytes:
        """The next message (``b""`` for an empty binary one, which Quart gives as None)."""
        message = await self._websocket.receive()
        return b"" if message is None else message

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame with ``code`` and ``reason``."""
        await self._websocket.close(code, reason)


def subprotocol_checked(refusal: Callable[[AuthError], dict] = auth_refusal) -> Callable[[Handler], Handler]:
    """Refuse a handshake that offers an API key as a subprotocol without ``ragsocket``:
    ``refusal(error)`` (code 109), then close 1008, before authentication."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            offered = websocket.requested_subprotocols
            if SUBPROTOCOL not in offered and any(tenant_service.looks_like_api_key(value) for value in offered):
                await ws_refuse(refusal(AuthError(KEY_WITHOUT_SUBPROTOCOL)), CloseCode.POLICY_VIOLATION, AUTH_FAILED_REASON)
                return None
            return await handler(*args, **kwargs)

        return wrapper

    return decorate


def authenticated(refusal: Callable[[AuthError], dict] = auth_refusal) -> Callable[[Handler], Handler]:
    """:func:`subprotocol_checked` and :func:`~api.utils.api_utils.ws_authenticated`
    (capacity, credentials, accept), both refusing with ``refusal``; the handler gets
    ``tenant_id``."""
    checked, authed = subprotocol_checked(refusal), ws_authenticated(refusal=refusal)
    return lambda handler: checked(authed(handler))


def _agent_refusal(error: AuthError) -> dict:
    return AGENT_DIALECT.rejection(error.code, error.message)


async def run_admitted(
    connection: Closable,
    run: Callable[[], Awaitable[None]],
    transport: Transport,
    key: str,
    rejection: Callable[[int, str], dict],
    holder: str = "API key",
) -> None:
    """Count ``connection`` in the registry under ``key`` and ``run`` it; a refusal
    (process or per-key limit) closes it instead: 1013, or ``rejection`` (code 108)
    then 1008.

    Args:
        holder: how a per-key refusal names ``key`` ("API key", "client address").
    """
    registry = get_runtime().registry
    try:
        registry.admit(key, connection, holder)
    except Refused as refused:
        if refused.code == CloseCode.POLICY_VIOLATION:  # a quota of this key: say which
            await transport.send(dumps(rejection(RetCode.PERMISSION_ERROR, refused.reason)))
        await transport.close(refused.code, refused.reason)
        return
    metrics.connection_opened()
    try:
        await run()
    finally:
        metrics.connection_closed()
        registry.release(key, connection)


async def serve_connection(
    answerer: Answerer,
    dialect: Dialect = CHAT_DIALECT,
    transport: Transport | None = None,
) -> None:
    """Run an :class:`AnswerConnection` on the current (accepted) WebSocket.

    Args:
        answerer: turns a question into the generator factory answering it.
        dialect: the route's frames (chat frames by default).
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
            max_detached_per_key=settings.ws_max_detached_per_key,
        ),
        answerer,
        dialect,
    )
    await run_admitted(connection, connection.run, transport, identity.principal, dialect.rejection)


async def owner_found(
    transport: Transport,
    lookup: Callable[[str, str], Any],
    tenant_id: str,
    owner_id: str,
    reason: str,
    dialect: Dialect = CHAT_DIALECT,
) -> bool:
    """Whether ``lookup(tenant_id, owner_id)`` (run in the worker pool) finds the chat
    or agent a connection is for. When it raises :class:`DataError` (unknown, or
    another tenant's), the client gets the dialect's error frame and close 1008 with
    ``reason``.
    """
    try:
        await run_blocking(lookup, tenant_id, owner_id)
    except DataError as error:
        await transport.send(dumps(dialect.error(error)))
        await transport.close(CloseCode.POLICY_VIOLATION, reason)
        return False
    return True


@manager.websocket("/ws/chats/<chat_id>/completions")
@authenticated()
async def chat_completions(tenant_id: str, chat_id: str) -> None:
    """Stream answers of one chat over a long-lived connection."""
    if not await owner_found(QuartTransport(), dialog_service.get_chat, tenant_id, chat_id, "chat not found"):
        return

    async def answerer(request: CompletionRequest) -> Factory:
        return chat_answer_factory(tenant_id, chat_id, request)

    await serve_connection(answerer)


@manager.websocket("/ws/agents/<agent_id>/completions")
@authenticated(_agent_refusal)
async def agent_completions(tenant_id: str, agent_id: str) -> None:
    """Stream agent runs (tool events, then the answer) over a long-lived connection."""
    found = await owner_found(QuartTransport(), agent_service.get_agent, tenant_id, agent_id, "agent not found", AGENT_DIALECT)
    if not found:
        return

    async def answerer(request: CompletionRequest) -> Factory:
        if request.session_id:
            await run_blocking(agent_service.get_session, tenant_id, agent_id, request.session_id)
        return agent_answer_factory(tenant_id, agent_id, request)

    await serve_connection(answerer, dialect=AGENT_DIALECT)


@seed.websocket("/ws/chat")
@authenticated()
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
    """Seed API: a greeting with status and version, then echoes with a timestamp.

    No authentication, but the limits of every socket: refused with 1013 (or 1001
    while shutting down) before the handshake when the process is full, counted per
    client address (108 then 1008 past ``RAGSOCKET_WS_MAX_CONNECTIONS_PER_KEY``),
    closed with 1000 when idle and with 1001 at shutdown.
    """
    runtime = get_runtime()
    try:
        runtime.registry.check_capacity()
    except Refused as refused:
        await ws_refuse(None, refused.code, refused.reason)
        return
    await websocket.accept()
    transport = QuartTransport()
    connection = EchoConnection(transport, greeting_frame(SERVICE_NAME, VERSION), runtime.settings.ws_idle_timeout)
    key = f"anonymous:{websocket.remote_addr or 'unknown'}"
    await run_admitted(connection, connection.run, transport, key, CHAT_DIALECT.rejection, holder="client address")
