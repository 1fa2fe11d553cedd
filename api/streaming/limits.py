"""Per-process limits on WebSockets, the per-key rate limit, and graceful shutdown.

* :class:`RateLimiter`: a token bucket per API key (capacity and refill of
  ``rate_per_minute`` questions per minute), shared by WebSocket messages and HTTP
  completions so that neither path bypasses it.
* :class:`ConnectionRegistry`: counts open connections in total and per key,
  refusing past the limits (close 1013 / 1008); counts the answers that go on after
  their client left (``"resumable": true``) per key, refusing past a limit; knows the
  answers generated in this process by message id (so that a client following one
  with resume can stop it); and drives graceful shutdown: idle connections close at
  once with 1001, running answers get a grace period, then are stopped (their partial
  answers saved) and their connections closed with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from common.constants import CloseCode, RetCode
from common.errors import RagSocketError

logger = logging.getLogger(__name__)

#: Seconds to wait for stopped answers to send their last frame at shutdown.
STOP_WAIT_SECONDS = 5.0


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second."""

    capacity: float
    rate: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 on success, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Token buckets keyed by API key (or session identity)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """0.0 when ``key`` may ask now, else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()  # bound memory; at worst a few keys get a fresh bucket
            bucket = self._buckets[key] = TokenBucket(self.per_minute, self.per_minute / 60.0)
        return bucket.take()

    def check(self, key: str) -> None:
        """Take one question's token for ``key``.

        Raises:
            RagSocketError: code 429 (TOO_MANY_REQUESTS) with the seconds to wait.
        """
        wait = self.take(key)
        if wait:
            raise RagSocketError(
                f"rate limit: at most {self.per_minute} questions per minute per API key; retry in {wait:.1f} s",
                RetCode.TOO_MANY_REQUESTS,
            )


class Closable(Protocol):
    """What the registry needs of a connection."""

    @property
    def busy(self) -> bool:
        """True while an answer runs."""

    async def close(self, code: int, reason: str) -> None:
        """Stop its answers (saving them) and close the socket."""

    async def wait_idle(self) -> None:
        """Return once no answer runs."""


class Refused(Exception):
    """A connection refused at admission: ``code`` and ``reason`` for the close frame."""

    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConnectionRegistry:
    """Open WebSockets of this process.

    Args:
        max_total: connections at once (past it: :class:`Refused` with 1013).
        max_per_key: connections at once per key (past it: 1008).
    """

    def __init__(self, max_total: int, max_per_key: int) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        self.shutting_down = False
        self._per_key: dict[str, int] = {}
        self._connections: set[Closable] = set()
        self._detached: set[asyncio.Task] = set()
        self._detached_per_key: dict[str, int] = {}
        self._answers: dict[str, Callable[[], None]] = {}

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet released."""
        return sum(self._per_key.values())

    def check_capacity(self) -> None:
        """Refuse a new connection before authentication when the process is full.

        Raises:
            Refused: 1001 while shutting down, 1013 at the process limit.
        """
        if self.shutting_down:
            raise Refused(CloseCode.GOING_AWAY, "server shutting down")
        if self.open_connections >= self.max_total:
            raise Refused(CloseCode.TRY_AGAIN_LATER, f"server busy: {self.max_total} connections open; retry later")

    def admit(self, key: str, connection: Closable, holder: str = "API key") -> None:
        """Count an authenticated connection.

        Args:
            key: what the per-key limit counts (an API key id; ``anonymous:<address>``
                for sockets without authentication).
            holder: how the refusal names ``key`` ("API key", "client address").

        Raises:
            Refused: see :meth:`check_capacity`; 1008 past the per-key limit.
        """
        self.check_capacity()
        if self._per_key.get(key, 0) >= self.max_per_key:
            raise Refused(
                CloseCode.POLICY_VIOLATION, f"too many connections for this {holder} (limit {self.max_per_key})"
            )
        self._per_key[key] = self._per_key.get(key, 0) + 1
        self._connections.add(connection)

    def release(self, key: str, connection: Closable) -> None:
        """Forget a closed connection."""
        if connection in self._connections:
            self._connections.discard(connection)
            remaining = self._per_key.get(key, 1) - 1
            if remaining > 0:
                self._per_key[key] = remaining
            else:
                self._per_key.pop(key, None)

    def detach(self, task: asyncio.Task, key: str, limit: int) -> bool:
        """Let an answer go on after its client left (for resume), unless ``key``
        already has ``limit`` such answers running.

        Returns:
            True when the answer was detached; False when the caller must stop it.
        """
        if self._detached_per_key.get(key, 0) >= limit:
            return False
        self._detached.add(task)
        self._detached_per_key[key] = self._detached_per_key.get(key, 0) + 1
        task.add_done_callback(lambda done: self._forget_detached(done, key))
        return True

    def _forget_detached(self, task: asyncio.Task, key: str) -> None:
        self._detached.discard(task)
        remaining = self._detached_per_key.get(key, 1) - 1
        if remaining > 0:
            self._detached_per_key[key] = remaining
        else:
            self._detached_per_key.pop(key, None)

    def detached_count(self, key: str) -> int:
        """Answers of ``key`` running without a client."""
        return self._detached_per_key.get(key, 0)

    def register_answer(self, message_id: str, stop: Callable[[], None]) -> None:
        """Note an answer generated in this process, and how to stop it."""
        self._answers[message_id] = stop

    def unregister_answer(self, message_id: str) -> None:
        """Forget an answer that ended."""
        self._answers.pop(message_id, None)

    def stop_answer(self, message_id: str) -> bool:
        """Stop an answer generated in this process; False when none has that id
        (it ended, or another process generates it)."""
        stop = self._answers.get(message_id)
        if stop is None:
            return False
        stop()
        return True

    def detached(self) -> Iterator[asyncio.Task]:
        """Answers running without a client."""
        return iter(tuple(self._detached))

    async def shutdown(self, grace: float) -> None:
        """Close every connection with 1001, letting running answers finish first.

        Idle connections close at once; the others after their answers end or
        ``grace`` seconds pass, whichever comes first; then remaining answers are
        stopped (saved as interrupted) and their connections closed.
        """
        self.shutting_down = True
        connections = list(self._connections)
        idle = [c for c in connections if not c.busy]
        busy = [c for c in connections if c.busy]
        await asyncio.gather(*(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in idle))
        waiters = [asyncio.ensure_future(c.wait_idle()) for c in busy]
        waiters += [asyncio.ensure_future(asyncio.wait({t})) for t in self.detached()]
        if waiters:
            _, pending = await asyncio.wait(waiters, timeout=grace)
            for waiter in pending:
                waiter.cancel()
            if pending:
                logger.info("grace period over: stopping %d running answers", len(pending))
        await asyncio.gather(*(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in list(self._connections)))
        for task in self.detached():
            task.cancel()
        if self._detached:
            await asyncio.wait(set(self._detached), timeout=STOP_WAIT_SECONDS)
