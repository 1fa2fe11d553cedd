"""The seed API's health socket (``/v1/ws/health``, RAGFlow PR #11704's first version),
independent of the web framework.

:class:`EchoConnection` greets with ``{"status": "healthy", "message", "version"}``,
then answers each text message with ``{"type": "echo", "data": <the message, decoded
when it is JSON>, "timestamp": <ms>}``. It needs no authentication but is no exception
to the limits: the route admits it in the :class:`~api.streaming.limits.ConnectionRegistry`
like any connection (it counts toward the process limit, 1013 past it, and toward a
per-client-address limit, 1008 past it), it closes with 1000 after ``idle_timeout``
seconds without a message, with 1003 on a binary message, and with 1001 at shutdown
(the registry calls :meth:`EchoConnection.close`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from api.streaming.connection import (
    BINARY_REASON,
    IDLE_REASON,
    ConnectionState,
    Transport,
    receive_until_closed,
)
from api.streaming.protocol import decode_json, dumps
from common.constants import CloseCode
from common.errors import ArgumentError


def greeting_frame(service: str, version: str) -> dict[str, Any]:
    """The first frame: ``{"status": "healthy", "message", "version"}``."""
    return {"status": "healthy", "message": f"{service} WebSocket is up", "version": version}


def echo_frame(message: str, now_ms: int) -> dict[str, Any]:
    """The answer to one text message: the message decoded when it is JSON, else as is."""
    try:
        data: Any = decode_json(message)
    except ArgumentError:
        data = message
    return {"type": "echo", "data": data, "timestamp": now_ms}


class EchoConnection:
    """Serve one health socket until the client leaves, it idles, or the server closes it.

    Args:
        transport: the socket.
        greeting: the first frame (:func:`greeting_frame`).
        idle_timeout: seconds without a message before the close with 1000.
        clock: milliseconds since the epoch, for the echoes' ``timestamp`` (tests).
    """

    def __init__(
        self,
        transport: Transport,
        greeting: dict[str, Any],
        idle_timeout: float,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.transport = transport
        self.greeting = greeting
        self.idle_timeout = idle_timeout
        self.state = ConnectionState.OPEN
        self._clock = clock
        self._closed = asyncio.Event()

    @property
    def busy(self) -> bool:
        """Always False: a health socket runs no answer (shutdown closes it at once)."""
        return False

    async def wait_idle(self) -> None:
        """Return at once (nothing runs)."""

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (once) and end :meth:`run`."""
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.CLOSING
        try:
            await self.transport.close(code, reason)
        finally:
            self.state = ConnectionState.CLOSED
            self._closed.set()

    async def run(self) -> None:
        """Greet, then echo each message until the client leaves (cancellation) or a close."""
        await self.transport.send(dumps(self.greeting))
        await receive_until_closed(
            self.transport,
            self._closed,
            lambda: self.state is ConnectionState.OPEN,
            lambda: self.idle_timeout,
            self._answer,
            lambda: self.close(CloseCode.NORMAL_CLOSURE, IDLE_REASON),
        )

    async def _answer(self, message: str | bytes) -> None:
        if not isinstance(message, str):
            await self.close(CloseCode.UNSUPPORTED_DATA, BINARY_REASON)
            return
        await self.transport.send(dumps(echo_frame(message, self._clock())))
