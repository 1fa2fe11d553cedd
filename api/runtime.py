"""Process-wide state: settings, worker pool, parse scheduler, event log, limits.

Built once by :func:`init_runtime` at start-up (``api.app.create_app``) and read by
routes and synchronous services through :func:`get_runtime`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.settings import Settings, ensure_secret_key

if TYPE_CHECKING:
    from api.db.services.task_service import ParseScheduler
    from api.streaming.bridge import WorkerPool
    from api.streaming.eventlog import MemoryEventLog, RedisEventLog
    from api.streaming.limits import ConnectionRegistry, RateLimiter
    from api.utils.tickets import TicketBook


@dataclass
class Runtime:
    """What one server process shares between its requests."""

    settings: Settings
    secret_key: str
    pool: WorkerPool
    parser: ParseScheduler
    event_log: MemoryEventLog | RedisEventLog
    limiter: RateLimiter
    registry: ConnectionRegistry
    tickets: TicketBook


_runtime: Runtime | None = None


def init_runtime(settings: Settings) -> Runtime:
    """Create the worker pool and parse scheduler for ``settings`` and keep them."""
    from api.db.services.task_service import ParseScheduler
    from api.streaming.bridge import WorkerPool
    from api.streaming.eventlog import make_event_log
    from api.streaming.limits import ConnectionRegistry, RateLimiter
    from api.utils.tickets import TicketBook

    global _runtime
    pool = WorkerPool(settings.worker_threads, settings.stream_queue_frames)
    secret_key = ensure_secret_key(settings)
    _runtime = Runtime(
        settings=settings,
        secret_key=secret_key,
        pool=pool,
        parser=ParseScheduler(pool.executor, settings),
        event_log=make_event_log(settings.redis_url, settings.event_log_ttl),
        limiter=RateLimiter(settings.rate_limit_per_minute),
        registry=ConnectionRegistry(settings.ws_max_connections, settings.ws_max_connections_per_key),
        tickets=TicketBook(secret_key, settings.redis_url),
    )
    return _runtime


def get_runtime() -> Runtime:
    """The runtime built by :func:`init_runtime`.

    Raises:
        RuntimeError: called before start-up.
    """
    if _runtime is None:
        raise RuntimeError("the runtime is not initialised; call init_runtime() first")
    return _runtime
