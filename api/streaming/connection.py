"""The message loop of an answer WebSocket, independent of the web framework.

:class:`AnswerConnection` reads JSON text messages and answers them (message types
in :mod:`api.streaming.protocol`):

* a question starts an answer; with ``req_id`` several run at once (up to
  ``max_requests``), without one a second question while the first runs is "busy";
* ``{"type": "stop"}`` stops the running answer(s): the client receives a final frame
  with ``"interrupted": true`` and the completion marker, and the partial answer is
  saved. A resume request is stopped by stopping the answer it follows, wherever it
  is generated (this process: directly; another one: through the event log);
* ``{"type": "ping"}`` gets ``{"type": "pong", "ts": …}``;
* ``{"type": "resume", …}`` replays an answer's frames from the event log.

A refused message gets an error frame and its completion marker, except when no
marker can be told apart from the running untagged request's (see
:meth:`~api.streaming.protocol.Dialect.refusal_has_marker`). A request ends its
event log and gives its place back *before* its marker is sent, so a client may send
its next question as soon as it reads the marker.

Every numbered frame of an answer is written to the event log before it is sent.
When the client disconnects, running answers are stopped (saved as interrupted) —
except those asked with ``"resumable": true``, which go on without a client so that
a reconnecting client can resume them, up to ``max_detached_per_key`` per key (the
registry counts them; past it they are stopped too, and new resumable questions are
refused).

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
    CHAT_DIALECT,
    CompletionRequest,
    Dialect,
    Framer,
    PingRequest,
    ResumeRequest,
    StopRequest,
    decode_json,
    dumps,
    end_frame,
    frame_seq,
    is_end_marker,
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
RESUME_UNAVAILABLE = "resume is unavailable right now"
STOP_UNAVAILABLE = "the answer cannot be stopped right now: the event log is unavailable"


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
        max_detached_per_key: resumable answers of ``principal`` that may go on
            after their clients left.
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
    max_detached_per_key: int = 16


async def receive_until_closed(
    transport: Transport,
    closed: asyncio.Event,
    is_open: Callable[[], bool],
    wait_seconds: Callable[[], float],
    on_message: Callable[[str | bytes], Awaitable[None]],
    on_timer: Callable[[], Awaitable[None]],
) -> None:
    """The receive loop of a WebSocket: ``on_message`` for each message, ``on_timer``
    when ``wait_seconds()`` (seconds, recomputed each turn) pass without one; returns
    when ``closed`` is set or ``is_open()`` turns false. The pending receive is
    cancelled on the way out, also when the caller is cancelled (client gone)."""
    receiver: asyncio.Future | None = None
    closing = asyncio.ensure_future(closed.wait())
    try:
        while is_open():
            if receiver is None:
                receiver = asyncio.ensure_future(transport.receive())
            done, _ = await asyncio.wait({receiver, closing}, timeout=wait_seconds(), return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                message, receiver = receiver.result(), None
                await on_message(message)
            elif closing in done:
                return
            else:
                await on_timer()
    finally:
        for future in (receiver, closing):
            if future is not None:
                future.cancel()


class ConnectionState(Enum):
    """Life of a connection."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass
class _Running:
    """One request in progress: a question's answer, or a resume following one.

    Attributes:
        message_id: the answer's id once its first numbered frame was logged
            (answers), or the followed answer's id once its owner was checked (resumes).
        released: the request gave its place on the connection back (its marker
            is being sent).
    """

    req_id: str | None
    resumable: bool = False
    is_resume: bool = False
    task: asyncio.Task | None = None
    stream: ThreadedStream | None = None
    stop_requested: bool = False
    detached: bool = False
    log_ok: bool = True
    message_id: str | None = None
    log_finished: bool = False
    released: bool = False

    def attach(self, stream: ThreadedStream) -> None:
        """The answer's stream started: apply a stop that came first."""
        self.stream = stream
        if self.stop_requested:
            stream.stop()

    def stop(self) -> None:
        """Stop the answer's generation (for a resume: only note it, see ``_stop_followed``)."""
        self.stop_requested = True
        if self.stream is not None:
            self.stream.stop()


@dataclass(eq=False)
class AnswerConnection:
    """Serve one WebSocket until the client leaves or the server closes it.

    Args:
        transport: the socket.
        ctx: limits and shared services.
        answerer: turns a question into the generator answering it.
        dialect: the route's frames (framers, refusals, heartbeat).
    """

    transport: Transport
    ctx: ConnectionContext
    answerer: Answerer
    dialect: Dialect = CHAT_DIALECT
    state: ConnectionState = ConnectionState.OPEN
    _running: dict[str | None, _Running] = field(default_factory=dict)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _last_activity: float = field(default_factory=time.monotonic)
    _last_sent: float = field(default_factory=time.monotonic)

    # -- registry interface ---------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a request runs (until its completion marker is sent)."""
        return bool(self._tasks)

    async def wait_idle(self) -> None:
        """Return once no request runs."""
        while self._tasks:
            self._idle.clear()
            await self._idle.wait()

    async def close(self, code: int, reason: str) -> None:
        """Stop running answers (they send their interrupted final frame), then close."""
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.CLOSING
        for running in list(self._running.values()):
            running.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT_SECONDS)
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
            self._last_sent = time.monotonic()
        metrics.frame_sent("websocket", frame)

    async def _refuse(self, error: RagSocketError, req_id: str | None) -> None:
        """Refuse one incoming message: an error frame, then its completion marker when
        the dialect allows one (never one that would read as the running untagged
        request's end)."""
        await self.send_frame(self.dialect.error(error, req_id))
        if self.dialect.refusal_has_marker(req_id, None in self._running):
            await self.send_frame(end_frame(req_id))

    async def _end_with_error(self, running: _Running, error: BaseException) -> None:
        """End a started request with an error frame and its marker."""
        await self.send_frame(self.dialect.error(error, running.req_id), running)
        await self._send_marker(running)

    async def _send_marker(self, running: _Running) -> None:
        """Give the request's place back, then send its completion marker."""
        self._release(running)
        await self.send_frame(end_frame(running.req_id), running)

    # -- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until the client disconnects (cancellation) or :meth:`close`."""
        try:
            await receive_until_closed(
                self.transport,
                self._closed,
                lambda: self.state is ConnectionState.OPEN,
                self._wait_seconds,
                self.handle,
                self._on_timer,
            )
        finally:
            self._leave()

    def _wait_seconds(self) -> float:
        """Seconds until the idle timeout, or the next heartbeat while a request runs."""
        now = time.monotonic()
        wait = self.ctx.idle_timeout - (now - self._last_activity)
        if self.busy and self.dialect.heartbeats:
            wait = min(wait, self.dialect.heartbeat_interval - (now - self._last_sent))
        return max(wait, 0.0)

    async def _on_timer(self) -> None:
        """A wait ran out: send a heartbeat or close an idle connection."""
        now = time.monotonic()
        if self.busy:
            self._last_activity = now
            if self.dialect.heartbeats and now - self._last_sent >= self.dialect.heartbeat_interval:
                await self.send_frame(self.dialect.heartbeat)
        elif now - self._last_activity >= self.ctx.idle_timeout:
            await self.close(CloseCode.NORMAL_CLOSURE, IDLE_REASON)

    def _leave(self) -> None:
        """The client is gone: detach the resumable answers (within the key's limit),
        stop the others, and drop the resumes (nobody reads them)."""
        for running in list(self._running.values()):
            running.detached = True
            if running.is_resume:
                if running.task is not None:
                    running.task.cancel()
                continue
            kept = running.resumable and running.task is not None and self.ctx.registry.detach(
                running.task, self.ctx.principal, self.ctx.max_detached_per_key
            )
            if not kept:
                running.stop()

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

    # -- stop -----------------------------------------------------------------------
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
            if running.is_resume and running.message_id is not None:
                await self._stop_followed(running, running.message_id)

    async def _stop_followed(self, running: _Running, message_id: str) -> None:
        """Stop the answer ``message_id`` that the resume ``running`` follows: directly
        when this process generates it, else through a stop record in the event log,
        which the generating process finds at its next frame. The follower then
        receives the interrupted end; when the log fails, an error frame says so."""
        if self.ctx.registry.stop_answer(message_id):
            return
        try:
            await self.ctx.event_log.request_stop(message_id)
        except EventLogError as error:
            logger.warning("event log unavailable, answer %s cannot be stopped: %s", message_id, error)
            frame = self.dialect.error(RagSocketError(STOP_UNAVAILABLE, RetCode.SERVER_ERROR), running.req_id)
            await self.send_frame(frame, running)

    # -- start ----------------------------------------------------------------------
    def _admission_error(self, request: CompletionRequest | ResumeRequest) -> RagSocketError | None:
        req_id = request.req_id
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
        if isinstance(request, CompletionRequest) and request.resumable:
            return self._detached_error()
        return None

    def _detached_error(self) -> RagSocketError | None:
        """The refusal of a resumable question while the key has its most answers
        going on without their clients (see ``max_detached_per_key``)."""
        limit = self.ctx.max_detached_per_key
        if self.ctx.registry.detached_count(self.ctx.principal) < limit:
            return None
        return DataError(
            f"too many resumable answers of this API key are still running after their clients left (limit {limit}); "
            'resume one (and stop it), wait for one to end, or ask without "resumable"'
        )

    async def _start(self, request: CompletionRequest | ResumeRequest) -> None:
        if request.req_id is not None and request.req_id in self._running:
            # no completion marker here: the running request with this id owns it
            error = ArgumentError(f"req_id {request.req_id!r} is already running on this connection")
            await self.send_frame(self.dialect.error(error, request.req_id))
            return
        error = self._admission_error(request)
        if error is None and isinstance(request, CompletionRequest):
            try:
                self.ctx.limiter.check(self.ctx.principal)
            except RagSocketError as limited:
                error = limited
        if error is not None:
            await self._refuse(error, request.req_id)
            return
        is_resume = isinstance(request, ResumeRequest)
        running = _Running(request.req_id, resumable=not is_resume and request.resumable, is_resume=is_resume)
        self._running[request.req_id] = running
        self._last_activity = time.monotonic()
        work = self._resume(running, request) if is_resume else self._answer(running, request)
        running.task = task = asyncio.create_task(self._guard(running, work))
        self._tasks.add(task)

    def _release(self, running: _Running) -> None:
        """The request gives its place on the connection back (once)."""
        if running.released:
            return
        running.released = True
        if self._running.get(running.req_id) is running:
            del self._running[running.req_id]
        self._last_activity = time.monotonic()

    async def _guard(self, running: _Running, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as error:  # noqa: BLE001 - a bug must not leave the client waiting
            if running.released:  # the marker is out: nothing more to tell the client
                logger.error("request failed after its completion marker", exc_info=error)
            else:
                try:
                    await self._end_with_error(running, error)  # logs the error (describe_error)
                except Exception:  # noqa: BLE001 - the socket itself failed
                    logger.warning("could not report a failed request to the client", exc_info=True)
        finally:
            self._release(running)
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._last_activity = time.monotonic()
            if not self._tasks:
                self._idle.set()

    # -- one answer -----------------------------------------------------------------
    async def _record(self, running: _Running, framer: Framer, frame: dict) -> None:
        """Write a numbered frame to the event log (opening the log, and noting the
        answer in the registry, at the first). A stop record found there (a client
        following this answer from another process sent "stop") stops the answer."""
        seq = frame_seq(frame)
        if seq is None or framer.message_id is None:
            return
        first = running.message_id is None
        if first:
            running.message_id = framer.message_id
            self.ctx.registry.register_answer(running.message_id, running.stop)
        if not running.log_ok:
            return
        try:
            if first:
                await self.ctx.event_log.open(running.message_id, LogOwner(self.ctx.tenant_id, framer.session_id or ""))
            stop = await self.ctx.event_log.append(running.message_id, seq, tagged(frame, None))
        except EventLogError as error:
            logger.warning("event log unavailable, answer %s cannot be resumed: %s", running.message_id, error)
            running.log_ok = False
            return
        if stop:
            running.stop()

    async def _finish_log(self, running: _Running) -> None:
        """The answer is over: forget it in the registry and end its log (once)."""
        if running.message_id is None or running.log_finished:
            return
        running.log_finished = True
        self.ctx.registry.unregister_answer(running.message_id)
        if not running.log_ok:
            return
        try:
            await self.ctx.event_log.finish(running.message_id)
        except EventLogError as error:
            logger.warning("event log unavailable at the end of %s: %s", running.message_id, error)

    async def _answer(self, running: _Running, request: CompletionRequest) -> None:
        framer = self.dialect.framer(request)
        try:
            factory = await self.answerer(request)
        except RagSocketError as error:
            await self._end_with_error(running, error)
            return
        frames = answer_frames(self.ctx.pool, factory, framer, on_start=running.attach, kind=self.dialect.name)
        try:
            async for frame in frames:
                if is_end_marker(frame):
                    await self._finish_log(running)
                    self._release(running)
                else:
                    await self._record(running, framer, frame)
                await self.send_frame(frame, running)
        finally:
            await frames.aclose()
            await self._finish_log(running)

    # -- resume ---------------------------------------------------------------------
    async def _resume(self, running: _Running, request: ResumeRequest) -> None:
        try:
            await self._follow(running, request)
        except RagSocketError as error:
            await self.send_frame(self.dialect.error(error, request.req_id), running)
        except EventLogError as error:
            logger.warning("event log unavailable while resuming %s: %s", request.message_id, error)
            unavailable = RagSocketError(RESUME_UNAVAILABLE, RetCode.SERVER_ERROR)
            await self.send_frame(self.dialect.error(unavailable, request.req_id), running)
        await self._send_marker(running)

    async def _follow(self, running: _Running, request: ResumeRequest) -> None:
        """Check the owner, then send the answer's frames after ``last_seq`` as the log
        gives them.

        Raises:
            DataError: unknown, expired or another's answer; its log expired meanwhile.
            EventLogError: the log backend failed.
        """
        owner = await self.ctx.event_log.owner(request.message_id)
        if owner != LogOwner(self.ctx.tenant_id, request.session_id):
            raise DataError(NOT_FOUND)
        running.message_id = request.message_id
        if running.stop_requested:  # a "stop" came while the owner was checked
            await self._stop_followed(running, request.message_id)
        async for frame in self.ctx.event_log.follow(request.message_id, request.last_seq):
            await self.send_frame(tagged(frame, request.req_id), running)
