"""WebSocket keepalive: server pings, and a close when the pong does not come back.

ASGI gives applications no access to ping and pong frames, and hypercorn's
``websocket_ping_interval`` sends pings but never checks the answers. This module
installs a small subclass of hypercorn's ``WSStream`` (used for HTTP/1.1 and HTTP/2
WebSockets) that records each pong (RFC 6455 section 5.5.3) and closes the connection
with 1011 "keepalive ping timeout" — as the ``websockets`` library does — when no
pong arrived within ``pong_timeout`` seconds of a ping. Its ping loop also ends as
soon as the connection closes (hypercorn's sleeps a whole interval first, keeping
every closed connection's tasks alive that long).

The same subclass also answers a frame wsproto cannot parse (invalid UTF-8 in a text
message: 1007; bad framing: 1002) with a close frame carrying that code, where
hypercorn would drop the TCP connection without one.

It never negotiates permessage-deflate (RFC 7692), which hypercorn offers to every
client that asks: a compressed message is inflated whole before hypercorn compares
its size with ``websocket_max_message_size``, so a few kilobytes on the wire could
make megabytes of memory (a "deflate bomb"). Without the extension a message counts
as the bytes that arrive, and a frame with the compression bit set is a protocol
error (close 1002). Answer frames are small JSON text; they lose little.

Tested against hypercorn 0.17–0.18 (``test/test_ws_protocol.py``), whose
``WSStream._accept``, ``_send_pings`` and ``Handshake.extensions`` this relies on.
"""

from __future__ import annotations

import asyncio
import time

from hypercorn.protocol import h2, h11
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event, Ping, Pong

from common.constants import CloseCode

KEEPALIVE_REASON = "keepalive ping timeout"


class KeepaliveWSStream(WSStream):
    """hypercorn's WSStream plus pong tracking (see the module docstring)."""

    pong_timeout: float = 20.0
    #: Seconds to wait for the client's close frame after ours (the ``websockets``
    #: library's ``close_timeout`` is 10 s; a refusal need not hold a socket that long).
    close_timeout: float = 2.0

    async def handle(self, event) -> None:  # type: ignore[no-untyped-def]
        """hypercorn's handling of one connection event (handshake, data, close), then
        wake :meth:`_pause` when the stream closed."""
        await super().handle(event)
        if self.closed:
            self._stream_closed().set()

    async def app_send(self, message) -> None:  # type: ignore[no-untyped-def]
        """hypercorn's handling of the application's ASGI events; when the application
        ends after sending a close frame, first wait (at most :attr:`close_timeout`
        seconds) for the client's close frame.

        RFC 6455 section 7.1.1: the TCP connection closes after both close frames.
        hypercorn closes it as soon as the application ends; a frame the client sent
        meanwhile (a ping, a question) is then unread, the kernel answers with a
        reset, and the client may lose the error frame and the close frame before it
        (it then reports 1006 instead of, say, 1008).
        """
        if message is None and self._closing_handshake_pending():
            try:
                await asyncio.wait_for(self._stream_closed().wait(), self.close_timeout)
            except TimeoutError:
                pass
        await super().app_send(message)

    def _closing_handshake_pending(self) -> bool:
        """Our close frame is sent and the client's has not arrived yet."""
        connection = getattr(self, "connection", None)
        return not self.closed and connection is not None and connection.state is ConnectionState.LOCAL_CLOSING

    def _stream_closed(self) -> asyncio.Event:
        event = getattr(self, "_closed_event", None)
        if event is None:
            event = self._closed_event = asyncio.Event()
        return event

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake as soon as the stream closes (hypercorn's own ping loop
        sleeps through the close and keeps the connection's task group alive)."""
        try:
            await asyncio.wait_for(self._stream_closed().wait(), seconds)
        except TimeoutError:
            pass

    async def _accept(self, message) -> None:  # type: ignore[no-untyped-def]
        self.handshake.extensions = None  # no permessage-deflate (see the module docstring)
        self._last_pong = time.monotonic()
        self._batch: list[Event] = []
        await super()._accept(message)
        self._source_events = self.connection.events
        self.connection.events = lambda: iter(self._batch)  # type: ignore[method-assign]

    async def _handle_events(self) -> None:
        """Note pongs, and answer frames wsproto could not parse (invalid UTF-8: 1007,
        bad framing: 1002) with a close frame: wsproto reports them as a
        ``CloseConnection`` event without closing, and hypercorn then drops the TCP
        connection silently, so the client would only see 1006."""
        self._batch = []
        for event in self._source_events():
            if isinstance(event, Pong):
                self._last_pong = time.monotonic()
            elif isinstance(event, CloseConnection) and self.connection.state is ConnectionState.OPEN:
                await self._send_wsproto_event(CloseConnection(code=event.code, reason=(event.reason or "")[:120]))
            self._batch.append(event)
        await super()._handle_events()

    async def _send_pings(self) -> None:
        interval = float(self.config.websocket_ping_interval or 0)
        tick = min(interval, self.pong_timeout) / 2
        last_ping = float("-inf")
        outstanding: float | None = None  # when the oldest unanswered ping was sent
        while not self.closed:
            now = time.monotonic()
            if outstanding is not None and self._last_pong >= outstanding:
                outstanding = None
            if outstanding is not None and now - outstanding >= self.pong_timeout:
                await self._send_wsproto_event(
                    CloseConnection(code=CloseCode.INTERNAL_ERROR, reason=KEEPALIVE_REASON)
                )
                await self.send(StreamClosed(stream_id=self.stream_id))
                return
            if now - last_ping >= interval:
                await self._send_wsproto_event(Ping(payload=str(int(now * 1000)).encode()))
                last_ping = now
                outstanding = now if outstanding is None else outstanding
            await self._pause(tick)


def install(pong_timeout: float) -> None:
    """Make hypercorn serve WebSockets with :class:`KeepaliveWSStream`."""
    KeepaliveWSStream.pong_timeout = pong_timeout
    h11.WSStream = KeepaliveWSStream  # type: ignore[misc]
    h2.WSStream = KeepaliveWSStream  # type: ignore[misc]
