"""Event logs: the numbered frames of each answer, kept for a while for resume.

An answer's log holds its content and error frames in ``seq`` order (1, 2, 3 …) and
ends with an end record once the answer is over. A client that lost its connection
sends ``{"type": "resume", "session_id", "message_id", "last_seq"}`` and receives,
from :meth:`EventLog.follow`, every frame after ``last_seq`` and then — if the answer
is still being generated — the next frames as they come.

Two backends with one interface:

* :class:`MemoryEventLog` (default): per process; logs expire after ``ttl`` seconds,
  frames are kept as compact JSON text, and at most :data:`MAX_MEMORY_LOGS` logs and
  :data:`MAX_MEMORY_BYTES` bytes are kept (oldest logs dropped first);
* :class:`RedisEventLog` (``RAGSOCKET_REDIS_URL``): one Redis Stream per answer
  (``ragsocket:answer:<message_id>``, https://redis.io/docs/latest/develop/data-types/streams/)
  with a time to live, so that a client may resume on *another* server process.

A client following an answer may stop it: :meth:`EventLog.request_stop` leaves a stop
record (Redis: the key ``ragsocket:stop:<message_id>``, with the log's time to live)
that the process generating the answer finds when it appends its next frame
(:meth:`EventLog.append` returns True), so a stop reaches an answer on another process
within one frame. Within one process the connection loop stops the answer directly.

A log that expires or is evicted while a client follows it ends the follow with
:class:`~common.errors.DataError` (:data:`EXPIRED`), never silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import asyncio as redis_asyncio
from redis.exceptions import RedisError

from common.errors import DataError

#: Most answer logs kept by one process's memory backend.
MAX_MEMORY_LOGS = 2000
#: Most bytes of frames (as JSON) kept by one process's memory backend; the oldest
#: logs are dropped first past it.
MAX_MEMORY_BYTES = 64 * 1024 * 1024
#: Milliseconds one Redis XREAD blocks before the follower checks again.
REDIS_BLOCK_MS = 1000
KEY_PREFIX = "ragsocket:answer:"
STOP_KEY_PREFIX = "ragsocket:stop:"


class EventLogError(Exception):
    """The log backend failed (Redis unreachable); the answer goes on without resume."""


@dataclass(frozen=True)
class LogOwner:
    """Who may resume an answer."""

    tenant_id: str
    session_id: str


class EventLog(Protocol):
    """Storage of answer frames for resume (see the module docstring)."""

    async def open(self, message_id: str, owner: LogOwner) -> None:
        """Start the log of an answer."""

    async def append(self, message_id: str, seq: int, frame: dict[str, Any]) -> bool:
        """Add frame number ``seq`` (frames arrive in order).

        Returns:
            True when a client following the answer asked to stop it
            (:meth:`request_stop`): the caller stops the answer.
        """

    async def finish(self, message_id: str) -> None:
        """Mark the answer over: followers stop after the last frame."""

    async def owner(self, message_id: str) -> LogOwner | None:
        """Who owns a log; None when unknown or expired."""

    def follow(self, message_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """Frames after ``after_seq``, then live ones until the end record.

        Raises:
            DataError: the log is unknown or expired (:data:`NOT_FOUND`), or it expired
                or was evicted before its end record (:data:`EXPIRED`).
        """

    async def request_stop(self, message_id: str) -> None:
        """Leave a stop record for the answer; its generating process stops it at its
        next :meth:`append`."""

    async def close(self) -> None:
        """Release connections."""


NOT_FOUND = "nothing to resume: the answer is unknown or its frames expired; list the session's messages instead"
EXPIRED = (
    "the rest of this answer is no longer available: its frames expired or were evicted while resuming; "
    "list the session's messages instead"
)


@dataclass
class _MemoryLog:
    owner: LogOwner
    expires: float
    frames: list[tuple[int, str]] = field(default_factory=list)
    size: int = 0
    finished: bool = False
    stop_requested: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryEventLog:
    """In-process event log with a time to live of ``ttl`` seconds."""

    def __init__(self, ttl: float, max_logs: int = MAX_MEMORY_LOGS, max_bytes: int = MAX_MEMORY_BYTES) -> None:
        self.ttl = ttl
        self.max_logs = max_logs
        self.max_bytes = max_bytes
        self.size = 0
        self._logs: OrderedDict[str, _MemoryLog] = OrderedDict()

    def _purge(self) -> None:
        """Drop expired logs, then the oldest past the limits (``_logs`` is kept in
        expiry order: a log moves to the end when a frame renews it), waking their
        followers."""
        now = time.monotonic()
        while self._logs:
            message_id, log = next(iter(self._logs.items()))
            if log.expires > now and len(self._logs) <= self.max_logs and self.size <= self.max_bytes:
                break
            del self._logs[message_id]
            self.size -= log.size
            log.notify()

    def _get(self, message_id: str) -> _MemoryLog | None:
        self._purge()
        return self._logs.get(message_id)

    async def open(self, message_id: str, owner: LogOwner) -> None:
        """Start the log of an answer (dropping expired and the oldest logs past the limits)."""
        self._logs[message_id] = _MemoryLog(owner, time.monotonic() + self.ttl)
        self._purge()

    async def append(self, message_id: str, seq: int, frame: dict[str, Any]) -> bool:
        """Add frame number ``seq`` and renew the log's time to live; returns whether a
        stop was requested (False for an unknown log)."""
        log = self._logs.get(message_id)
        if log is None:
            return False
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        log.frames.append((seq, text))
        log.size += len(text)
        self.size += len(text)
        log.expires = time.monotonic() + self.ttl
        self._logs.move_to_end(message_id)  # keep the logs in expiry order for _purge
        log.notify()
        if self.size > self.max_bytes:
            self._purge()
        return log.stop_requested

    async def finish(self, message_id: str) -> None:
        """Mark the answer over; followers end after its last frame."""
        log = self._logs.get(message_id)
        if log is not None:
            log.finished = True
            log.notify()

    async def owner(self, message_id: str) -> LogOwner | None:
        """Who owns a log; None when unknown or expired."""
        log = self._get(message_id)
        return log.owner if log else None

    async def request_stop(self, message_id: str) -> None:
        """Mark the answer to be stopped at its next frame (no effect on an unknown log)."""
        log = self._get(message_id)
        if log is not None:
            log.stop_requested = True

    async def follow(self, message_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """Frames after ``after_seq``, then live ones until the answer is finished.

        Raises:
            DataError: :data:`NOT_FOUND` for an unknown or expired log; :data:`EXPIRED`
                when the log is dropped (time to live, or the memory limits) before
                the answer finished.
        """
        log = self._get(message_id)
        if log is None:
            raise DataError(NOT_FOUND)
        position = 0
        while True:
            waiter = log.changed
            while position < len(log.frames):
                seq, text = log.frames[position]
                position += 1
                if seq > after_seq:
                    yield json.loads(text)
            if log.finished:
                return
            if self._logs.get(message_id) is not log:
                raise DataError(EXPIRED)
            await waiter.wait()

    async def close(self) -> None:
        """Drop every log."""
        self._logs.clear()
        self.size = 0


class RedisEventLog:
    """Event log in Redis Streams, shared by every process using the same Redis.

    Each answer is a stream ``ragsocket:answer:<message_id>`` whose first entry holds
    the owner, then one entry per frame (``seq``, ``frame`` as JSON), then an entry
    ``end``. Each write renews the key's time to live (``ttl`` seconds).
    """

    def __init__(self, url: str, ttl: float) -> None:
        self.ttl_ms = int(ttl * 1000)
        self._redis = redis_asyncio.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)

    @staticmethod
    def _key(message_id: str) -> str:
        return KEY_PREFIX + message_id

    @staticmethod
    def _stop_key(message_id: str) -> str:
        return STOP_KEY_PREFIX + message_id

    async def _add(self, message_id: str, fields: dict[str, str]) -> bool:
        """XADD an entry and renew the key's time to live, in one round trip; returns
        whether the answer's stop record exists (checked in the same round trip)."""
        key = self._key(message_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields)
                pipe.pexpire(key, self.ttl_ms)
                pipe.exists(self._stop_key(message_id))
                *_, stop = await pipe.execute()
        except RedisError as error:
            raise EventLogError(f"redis: {type(error).__name__}") from error
        return bool(stop)

    async def open(self, message_id: str, owner: LogOwner) -> None:
        """Start the stream of an answer with its owner entry.

        Raises:
            EventLogError: Redis failed.
        """
        await self._add(message_id, {"kind": "owner", "tenant_id": owner.tenant_id, "session_id": owner.session_id})

    async def append(self, message_id: str, seq: int, frame: dict[str, Any]) -> bool:
        """Add frame number ``seq``; returns whether a follower left a stop record.

        Raises:
            EventLogError: Redis failed.
        """
        return await self._add(message_id, {"kind": "frame", "seq": str(seq), "frame": json.dumps(frame, ensure_ascii=False)})

    async def finish(self, message_id: str) -> None:
        """Add the end entry; followers end after it.

        Raises:
            EventLogError: Redis failed.
        """
        await self._add(message_id, {"kind": "end"})

    async def owner(self, message_id: str) -> LogOwner | None:
        """Who owns a stream (its first entry); None when unknown or expired.

        Raises:
            EventLogError: Redis failed.
        """
        try:
            entries = await self._redis.xrange(self._key(message_id), count=1)
        except RedisError as error:
            raise EventLogError(f"redis: {type(error).__name__}") from error
        if not entries or entries[0][1].get("kind") != "owner":
            return None
        fields = entries[0][1]
        return LogOwner(fields["tenant_id"], fields["session_id"])

    async def request_stop(self, message_id: str) -> None:
        """Set ``ragsocket:stop:<message_id>`` (expiring with the log) for the generating
        process to find at its next frame.

        Raises:
            EventLogError: Redis failed.
        """
        try:
            await self._redis.set(self._stop_key(message_id), "1", px=self.ttl_ms)
        except RedisError as error:
            raise EventLogError(f"redis: {type(error).__name__}") from error

    async def follow(self, message_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        """Frames after ``after_seq``, then live ones (blocking XREAD) until the end entry.

        Raises:
            DataError: :data:`NOT_FOUND` for an unknown or expired stream;
                :data:`EXPIRED` when it expires before its end entry.
            EventLogError: Redis failed.
        """
        try:
            async for frame in self._follow(message_id, after_seq):
                yield frame
        except RedisError as error:
            raise EventLogError(f"redis: {type(error).__name__}") from error

    async def _follow(self, message_id: str, after_seq: int) -> AsyncIterator[dict[str, Any]]:
        key = self._key(message_id)
        entries = await self._redis.xrange(key)
        if not entries:
            raise DataError(NOT_FOUND)
        while True:
            for _, fields in entries:
                kind = fields.get("kind")
                if kind == "end":
                    return
                if kind == "frame" and int(fields["seq"]) > after_seq:
                    yield json.loads(fields["frame"])
            last_id = entries[-1][0]
            entries = []
            while not entries:
                if not await self._redis.exists(key):
                    raise DataError(EXPIRED)
                reply = await self._redis.xread({key: last_id}, block=REDIS_BLOCK_MS)
                entries = reply[0][1] if reply else []

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self._redis.ping())

    async def close(self) -> None:
        """Close the Redis connections."""
        await self._redis.aclose()


def make_event_log(redis_url: str, ttl: float) -> MemoryEventLog | RedisEventLog:
    """The Redis backend when ``redis_url`` is set, else the memory one."""
    if redis_url:
        return RedisEventLog(redis_url, ttl)
    return MemoryEventLog(ttl)
