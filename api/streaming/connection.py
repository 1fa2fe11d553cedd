"""The message loop of an answer WebSocket, independent of the web framework.

:class:`AnswerConnection` reads JSON text messages and answers them (message types
in :mod:`api.streaming.protocol`):

* a question starts an answer; with ``req_id`` several run at once (up to
  ``max_requests``), without one a second question while the first runs is "busy";
* ``{"type": "stop"}`` stops the running answer(s): the client receives a final frame
  with ``"interrupted": true`` and the completion marker, and the partial answer is
  saved;
* ``{"type": "ping"}`` gets ``{"type": "pong", "ts": …}``;
* ``{"type": "resume", …}`` replays an answer's frames from the event log.

Every numbered frame of an answer is written to the event log before it is sent.
When the client disconnects, running answers are stopped (saved as interrupted) —
except those asked with ``"resumable": true``, which go on without a client so that
a reconnecting client can resume them.

The connection closes itself with 1003 on a binary message and 1000 after
``idle_timeout`` seconds without a request or a running answer; the registry closes
it with 1001 at shutdown. It touches the socket only through :class:`Transport`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from api.streaming.answer import answer_frames
from api.streaming.bridge import ThreadedStream, WorkerPool
from api.streaming.eventlog import NOT_FOUND, EventLog, EventLogError, LogOwner
from api.streaming.limits import (
    STOP_WAIT_SECONDS,
    ConnectionRegistry,
    RateLimiter,
)
from api.streaming.protocol import (
    CompletionRequest,
    Framer,
    PingRequest,
    ResumeRequest,
    StopRequest,
    chat_framer,
    decode_json,
    dumps,
    end_frame,
    error_frame,
    error_frame_for,
    parse_client_message,
    peek_req_id,
    pong_frame,
    tagged,
)
from api.utils import metrics
from common.constants import CloseCode, RetCode
from common.errors import ArgumentError, DataError, RagSocketError

logger = logging.getLogger(__name__)

Factory = Callable[[threading.Event], Iterator[Any]]
#: Turns a validated question into the generator factory answering it (may check
#: the chat, raising a RagSocketError).
Answerer = Callable[[CompletionRequest], Awaitable[Factory]]

BINARY_REASON = "binary messages are not supported; send JSON text"
IDLE_REASON = "idle timeout"
TOO_BIG_REASON = "message too big"


class Transport(Protocol):
    """The socket, as the connection sees it."""

    async def send(self, text: str) -> None:
        """Send one text message."""

    async def receive(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary."""

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame."""


@dataclass
class ConnectionContext:
    """What a connection shares with the rest of the process.

    Attributes:
        tenant_id: the authenticated tenant.
        principal: the rate-limit and connection-count key (API key id, or session).
        pool: worker pool running answers.
        event_log: where numbered frames are kept for resume.
        limiter: per-principal token buckets.
        registry: open connections and detached answers of the process.
        max_question_chars / max_requests / idle_timeout / max_message_bytes: limits
            (characters, requests with req_id at once, seconds, bytes).
    """

    tenant_id: str
    principal: str
    pool: WorkerPool
    event_log: EventLog
    limiter: RateLimiter
    registry: ConnectionRegistry
    max_question_chars: int
    max_requests: int
    idle_timeout: float
    max_message_bytes: int


class ConnectionState(Enum):
    """Life of a connection."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass
class _Running:
    """One request in progress."""

    req_id: str | None
    resumable: bool
    task: asyncio.Task | None = None
    stream: ThreadedStream | None = None
    stop_requested: bool = False
    detached: bool = False
    log_ok: bool = True

    def attach(self, stream: ThreadedStream) -> None:
        self.stream = stream
        if self.stop_requested:
            stream.stop()

    def stop(self) -> None:
        self.stop_requested = True
        if self.stream is not None:
            self.stream.stop()


@dataclass(eq=False)
class AnswerConnection:
    """Serve one WebSocket until the client leaves or the server closes it."""

    transport: Transport
    ctx: ConnectionContext
    answerer: Answerer
    make_framer: Callable[[CompletionRequest], Framer] = chat_framer
    state: ConnectionState = ConnectionState.OPEN
    _running: dict[str | None, _Running] = field(default_factory=dict)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _last_activity: float = field(default_factory=time.monotonic)

    # -- registry interface ---------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while an answer runs."""
        return bool(self._running)

    async def wait_idle(self) -> None:
        """Return once no answer runs."""
        while self._running:
            self._idle.clear()
            await self._idle.wait()

    async def close(self, code: int, reason: str) -> None:
        """Stop running answers (they send their interrupted final frame), then close."""
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.CLOSING
        for running in list(self._running.values()):
            running.stop()
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_SECONDS)
        await self.transport.close(code, reason)
        self.state = ConnectionState.CLOSED
        self._closed.set()

    # -- sending --------------------------------------------------------------------
    async def send_frame(self, frame: Any, running: _Running | None = None) -> None:
        """Send one frame, unless its request went on without a client."""
        if running is not None and running.detached:
            return
        async with self._send_lock:
            await self.transport.send(dumps(frame))
        metrics.frame_sent("websocket", frame)

    async def _refuse(self, error: RagSocketError, req_id: str | None) -> None:
        await self.send_frame(tagged(error_frame(error.code, error.message), req_id))
        await self.send_frame(end_frame(req_id))

    # -- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until the client disconnects (cancellation) or :meth:`close`."""
        receiver: asyncio.Future | None = None
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while self.state is ConnectionState.OPEN:
                if receiver is None:
                    receiver = asyncio.ensure_future(self.transport.receive())
                timeout = self.ctx.idle_timeout - (time.monotonic() - self._last_activity)
                done, _ = await asyncio.wait({receiver, closed}, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    message, receiver = receiver.result(), None
                    await self.handle(message)
                elif closed in done:
                    return
                elif self._running:
                    self._last_activity = time.monotonic()
                elif time.monotonic() - self._last_activity >= self.ctx.idle_timeout:
                    await self.close(CloseCode.NORMAL_CLOSURE, IDLE_REASON)
        finally:
            for future in (receiver, closed):
                if future is not None:
                    future.cancel()
            self._leave()

    def _leave(self) -> None:
        """The client is gone: stop or detach the running answers."""
        for running in list(self._running.values()):
            running.detached = True
            if not running.resumable:
                running.stop()
            if running.task is not None:
                self.ctx.registry.detach(running.task)

    async def handle(self, message: str | bytes) -> None:
        """Act on one incoming message."""
        if not isinstance(message, str):
            await self.close(CloseCode.UNSUPPORTED_DATA, BINARY_REASON)
            return
        if len(message.encode("utf-8")) > self.ctx.max_message_bytes:
            # hypercorn's own limit counts characters of a text message, not bytes
            await self.close(CloseCode.MESSAGE_TOO_BIG, TOO_BIG_REASON)
            return
        payload: Any = None
        try:
            payload = decode_json(message)
            request = parse_client_message(payload, self.ctx.max_question_chars)
        except ArgumentError as error:
            await self._refuse(error, peek_req_id(payload))
            return
        if isinstance(request, PingRequest):
            await self.send_frame(pong_frame(int(time.time() * 1000), request.req_id))
        elif isinstance(request, StopRequest):
            await self._stop(request)
        else:
            await self._start(request)

    async def _stop(self, request: StopRequest) -> None:
        targets = list(self._running.values()) if request.req_id is None else (
            [self._running[request.req_id]] if request.req_id in self._running else []
        )
        if not targets:
            wanted = f" with req_id {request.req_id!r}" if request.req_id else ""
            await self._refuse(DataError(f"no running request{wanted} to stop"), request.req_id)
            return
        for running in targets:
            running.stop()

    def _admission_error(self, req_id: str | None) -> RagSocketError | None:
        if self.ctx.registry.shutting_down:
            return RagSocketError("the server is shutting down; reconnect in a moment", RetCode.SERVER_ERROR)
        if req_id is None and self._running:
            return DataError(
                "busy: a request is already running on this connection; wait for its end marker, "
                'send {"type": "stop"}, or give each request a "req_id"'
            )
        if None in self._running:
            return DataError("busy: a request without req_id is running on this connection")
        if len(self._running) >= self.ctx.max_requests:
            return DataError(f"too many requests running on this connection (limit {self.ctx.max_requests})")
        return None

    async def _start(self, request: CompletionRequest | ResumeRequest) -> None:
        if request.req_id is not None and request.req_id in self._running:
            # no completion marker here: the running request with this id owns it
            error_text = f"req_id {request.req_id!r} is already running on this connection"
            await self.send_frame(tagged(error_frame(RetCode.ARGUMENT_ERROR, error_text), request.req_id))
            return
        error = self._admission_error(request.req_id)
        if error is None and isinstance(request, CompletionRequest):
            try:
                self.ctx.limiter.check(self.ctx.principal)
            except RagSocketError as limited:
                error = limited
        if error is not None:
            await self._refuse(error, request.req_id)
            return
        resumable = isinstance(request, CompletionRequest) and request.resumable
        running = _Running(request.req_id, resumable)
        self._running[request.req_id] = running
        self._last_activity = time.monotonic()
        work = self._answer(running, request) if isinstance(request, CompletionRequest) else self._resume(request)
        running.task = asyncio.create_task(self._guard(running, work))

    async def _guard(self, running: _Running, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as error:  # noqa: BLE001 - a bug must not leave the client waiting
            frame = tagged(error_frame_for(error), running.req_id)
            try:
                await self.send_frame(frame, running)
                await self.send_frame(end_frame(running.req_id), running)
            except Exception:  # noqa: BLE001 - the socket itself failed; already logged above
                logger.warning("could not report a failed request to the client")
        finally:
            self._running.pop(running.req_id, None)
            self._last_activity = time.monotonic()
            if not self._running:
                self._idle.set()

    # -- one answer -----------------------------------------------------------------
    async def _log(self, running: _Running, framer: Framer, frame: dict, opened: bool) -> bool:
        """Write a numbered frame to the event log; returns whether the log is open."""
        seq = frame.get("data", {}).get("seq") if isinstance(frame.get("data"), dict) else None
        if seq is None or framer.message_id is None or not running.log_ok:
            return opened
        try:
            if not opened:
                await self.ctx.event_log.open(framer.message_id, LogOwner(self.ctx.tenant_id, framer.session_id or ""))
            await self.ctx.event_log.append(framer.message_id, seq, tagged(frame, None))
        except EventLogError as error:
            logger.warning("event log unavailable, answer %s cannot be resumed: %s", framer.message_id, error)
            running.log_ok = False
        return True

    async def _answer(self, running: _Running, request: CompletionRequest) -> None:
        framer = self.make_framer(request)
        try:
            factory = await self.answerer(request)
        except RagSocketError as error:
            await self._refuse(error, request.req_id)
            return
        frames = answer_frames(self.ctx.pool, factory, framer, on_start=running.attach)
        opened = False
        try:
            async for frame in frames:
                opened = await self._log(running, framer, frame, opened)
                await self.send_frame(frame, running)
        finally:
            await frames.aclose()
            if opened and running.log_ok and framer.message_id is not None:
                try:
                    await self.ctx.event_log.finish(framer.message_id)
                except EventLogError as error:
                    logger.warning("event log unavailable at the end of %s: %s", framer.message_id, error)

    async def _resume(self, request: ResumeRequest) -> None:
        owner = await self.ctx.event_log.owner(request.message_id)
        if owner != LogOwner(self.ctx.tenant_id, request.session_id):
            await self._refuse(DataError(NOT_FOUND), request.req_id)
            return
        running = self._running.get(request.req_id)
        try:
            async for frame in self.ctx.event_log.follow(request.message_id, request.last_seq):
                await self.send_frame(tagged(frame, request.req_id), running)
        except RagSocketError as error:
            await self.send_frame(tagged(error_frame_for(error), request.req_id), running)
        except EventLogError as error:
            logger.warning("event log unavailable while resuming %s: %s", request.message_id, error)
            await self.send_frame(tagged(error_frame(RetCode.SERVER_ERROR, "resume is unavailable right now"), request.req_id), running)
        await self.send_frame(end_frame(request.req_id), running)
