"""Dify-style WebSocket routes, for platform bridges written against Dify
(``docs/dify_compat.md``; the WebSocket variant of Dify PR #33543):

* ``/v1/ws/chat-messages``: Dify's chat-messages requests (``query``, ``inputs``,
  ``conversation_id``, ``user``, ``response_mode``) answered by a chat, with Dify's
  events (``message``, ``message_end``, ``error``); ``conversation_id`` is our
  session id;
* ``/v1/ws/completion-messages``: the same without conversations (each query is a
  fresh session; ``inputs.query`` stands in for a missing ``query``).

The Dify "app" is one of the tenant's chats: ``chat_id`` in the request, else
``?chat_id=`` on the URL, else the tenant's only chat. Authentication is
:func:`~api.apps.sdk.websocket.authenticated` (``Authorization: Bearer <API key>`` as in Dify, or the
other ways of ``docs/websocket_api.md``).

The connection is served by :func:`~api.apps.sdk.websocket.serve_connection` (the
native loop: limits, stop, ping, several requests with ``req_id``, idle timeout,
shutdown). :class:`DifySocket` puts Dify's dialect at the socket edge: it is the
loop's :class:`~api.streaming.connection.Transport`, wrapping the Quart websocket, and
translates each incoming Dify request into a native question and each frame the loop
itself writes (refusals, the completion marker, pongs) into a Dify event; answer
frames are already Dify events (:class:`~api.streaming.dify_format.DifyFramer`).
Authentication refusals are Dify ``error`` events too (:func:`authenticated`). While a
request runs, the loop sends Dify's ``{"event": "ping"}`` whenever nothing was sent for
``RAGSOCKET_DIFY_PING_INTERVAL`` seconds (:func:`~api.streaming.dify_format.dify_dialect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from quart import Blueprint, websocket

from api.apps.sdk.websocket import (
    QuartTransport,
    authenticated,
    owner_found,
    serve_connection,
)
from api.db.services import dataset_service, dialog_service
from api.runtime import get_runtime
from api.streaming.answer import chat_answer_factory
from api.streaming.connection import Factory, Transport
from api.streaming.dify_format import (
    DifyKind,
    client_message_to_native,
    dify_dialect,
    error_event,
    is_end_marker,
    is_terminal,
    native_frame_to_dify,
    with_dataset_names,
)
from api.streaming.protocol import (
    CompletionRequest,
    decode_json,
    dumps,
    peek_req_id,
)
from api.utils.api_utils import run_blocking
from common.errors import ArgumentError, AuthError, DataError

manager = Blueprint("dify", __name__)

#: Chats looked at when the request names none (two are enough to know it is ambiguous).
_ONLY_CHAT_PROBE = 2


class DifySocket:
    """The loop's transport on a Dify connection: the socket, seen through Dify's dialect.

    Args:
        inner: the transport of the real socket.
        kind: the route's Dify app type.
        max_question_chars / max_message_bytes: the service's limits.
    """

    def __init__(self, inner: Transport, kind: DifyKind, max_question_chars: int, max_message_bytes: int) -> None:
        self._inner = inner
        self._kind = kind
        self._max_question_chars = max_question_chars
        self._max_message_bytes = max_message_bytes
        self._lock = asyncio.Lock()
        self._held: dict[str | None, str] = {}

    async def receive(self) -> Any:
        """The next message as a native one. An invalid Dify request is answered here
        with an ``error`` event (the connection stays open) and the next message is read."""
        while True:
            message = await self._inner.receive()
            if not isinstance(message, str) or len(message.encode("utf-8")) > self._max_message_bytes:
                return message  # the loop closes with 1003 / 1009
            payload: Any = None
            try:
                payload = decode_json(message)
                return dumps(client_message_to_native(payload, self._kind, self._max_question_chars))
            except ArgumentError as error:
                await self._send_text(dumps(error_event(error.code, error.message, peek_req_id(payload))))

    async def send(self, data: Any) -> None:
        """Send a frame of the loop in Dify's dialect.

        A request's terminal event (``message_end``, the blocking ``message``, an
        ``error``) is held until the loop's completion marker of that request, and
        sent in its place: a Dify client may send its next query as soon as it sees
        the terminal event, and by then the loop has finished the request (no "busy").
        """
        frame = decode_json(data) if isinstance(data, str) else None
        if not isinstance(frame, dict):
            await self._send_text(data)
            return
        key = frame.get("req_id")
        if is_end_marker(frame):
            held = self._held.pop(key, None)
            if held is not None:
                await self._send_text(held)
            return
        translated = native_frame_to_dify(frame)
        if translated is None:
            return
        text = dumps(translated)
        if is_terminal(translated):
            earlier = self._held.pop(key, None)  # e.g. a duplicate req_id refused: no marker of its own
            if earlier is not None:
                await self._send_text(earlier)
            self._held[key] = text
            return
        await self._send_text(text)

    async def close(self, code: int, reason: str = "") -> None:
        """Send the held events, then close."""
        for key in list(self._held):
            await self._send_text(self._held.pop(key))
        await self._inner.close(code, reason)

    async def _send_text(self, data: Any) -> None:
        async with self._lock:
            await self._inner.send(data)


def _only_chat(tenant_id: str) -> str:
    """The tenant's chat when it has exactly one.

    Raises:
        ArgumentError: no chat, or several.
    """
    chats = dialog_service.list_chats(tenant_id, 1, _ONLY_CHAT_PROBE, "create_time", True, None, None)
    if len(chats) == 1:
        return chats[0]["id"]
    if not chats:
        raise ArgumentError("no chat to answer: create one with POST /api/v1/chats")
    raise ArgumentError("this API key's tenant has several chats: name one with ?chat_id= on the URL or `chat_id` in the request")


def _dataset_names(tenant_id: str, dataset_ids: list[str]) -> dict[str, str]:
    """Names of the chat's datasets (a deleted one is left out)."""
    names = {}
    for dataset_id in dataset_ids:
        with contextlib.suppress(DataError):
            names[dataset_id] = dataset_service.get_dataset(tenant_id, dataset_id).name
    return names


async def _serve(tenant_id: str, kind: DifyKind, url_chat_id: str | None, transport: DifySocket, ping_interval: float) -> None:
    async def answerer(request: CompletionRequest) -> Factory:
        chat_id = request.chat_id or url_chat_id or await run_blocking(_only_chat, tenant_id)
        dialog = await run_blocking(dialog_service.get_chat, tenant_id, chat_id)
        names = await run_blocking(_dataset_names, tenant_id, list(dialog.kb_ids))
        answer = chat_answer_factory(tenant_id, chat_id, request)

        def factory(cancel: threading.Event):
            return with_dataset_names(answer(cancel), names)

        return factory

    await serve_connection(answerer, dialect=dify_dialect(kind, ping_interval), transport=transport)


def _auth_refusal(error: AuthError) -> dict:
    return error_event(error.code, error.message)


def _route(kind: DifyKind):
    @authenticated(_auth_refusal)
    async def route(tenant_id: str) -> None:
        settings = get_runtime().settings
        transport = DifySocket(QuartTransport(), kind, settings.max_question_chars, settings.ws_max_message_bytes)
        url_chat_id = websocket.args.get("chat_id") or None
        if url_chat_id is not None:  # as the native route: an unknown chat gets an error event, then 1008
            if not await owner_found(transport, dialog_service.get_chat, tenant_id, url_chat_id, "chat not found"):
                return
        await _serve(tenant_id, kind, url_chat_id, transport, settings.dify_ping_interval)

    return route


manager.websocket("/ws/chat-messages", endpoint="chat_messages")(_route(DifyKind.CHAT))
manager.websocket("/ws/completion-messages", endpoint="completion_messages")(_route(DifyKind.COMPLETION))
