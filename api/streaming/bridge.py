"""The one place where synchronous work meets asyncio.

:class:`WorkerPool` owns the process's single bounded thread pool. Everything that
blocks — peewee, parsing, retrieval, the chat model — runs there:

* :meth:`WorkerPool.run` awaits one blocking call;
* :meth:`WorkerPool.stream` runs a synchronous generator in a worker thread and hands
  its items to the event loop through a bounded buffer of ``capacity`` items: when the
  consumer (a socket) is slow the worker blocks instead of memory growing; when the
  consumer stops (client gone, task cancelled) the worker sees a stop flag, closes the
  generator in its own thread — so the generator's ``finally`` runs (saving a partial
  answer) — and releases its thread.

A cancelled ``await`` cannot stop a thread, hence the explicit :class:`threading.Event`
given to every generator factory; generators pass it down to the chat model, which
checks it between tokens (see ``api.rag.llm.base.ChatModel``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Worker threads kept free of streams so that plain calls (auth, DB) never starve.
RESERVED_THREADS = 8
#: Seconds :meth:`ThreadedStream.aclose` waits for the worker to finish its cleanup.
CLOSE_WAIT_SECONDS = 5.0


class _End:
    """Marker: the generator is exhausted."""


class _Failure:
    """Carrier of an exception raised by the generator, re-raised in the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


class ThreadedStream(Generic[T]):
    """Async iterator over a synchronous generator running in a worker thread.

    Args:
        factory: called in the worker thread with the stop flag; returns the iterator.
        executor: the pool running the worker.
        capacity: most items buffered between the worker and the consumer (>= 1).

    Two ways to end a stream early:

    * :meth:`stop` (a client's "stop"): sets the stop flag; the generator is expected
      to wind up promptly and may still yield its last items (e.g. a final
      "interrupted" event), which are delivered;
    * :meth:`aclose` (the consumer is gone): sets the stop flag, drops whatever the
      generator yields next and closes it in its own thread.

    Use as ``async with pool.stream(factory) as items: async for item in items: …``.
    Exceptions raised by the generator are re-raised by ``__anext__``.
    """

    def __init__(
        self,
        factory: Callable[[threading.Event], Iterator[T]],
        executor: ThreadPoolExecutor,
        capacity: int,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.stop_flag = threading.Event()
        self.capacity = capacity
        self._factory = factory
        self._executor = executor
        self._space = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._future: Future[None] | None = None
        self._finished = False

    # -- worker side ---------------------------------------------------------------
    def _deliver(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the process is shutting down
            with self._space:
                self._closed = True
            self.stop_flag.set()

    def _offer(self, item: T) -> bool:
        """Wait for buffer space and hand ``item`` over; False once the consumer is gone."""
        with self._space:
            while self._in_flight >= self.capacity and not self._closed:
                self._space.wait()
            if self._closed:
                return False
            self._in_flight += 1
        self._deliver(item)
        return True

    def _produce(self) -> None:
        iterator: Iterator[T] | None = None
        try:
            iterator = self._factory(self.stop_flag)
            for item in iterator:
                if not self._offer(item):
                    break
        except BaseException as error:  # forwarded to and re-raised by the consumer
            self._deliver(_Failure(error))
        finally:
            self._close_iterator(iterator)
            self._deliver(_END)

    def _close_iterator(self, iterator: Iterator[T] | None) -> None:
        """Run the generator's cleanup here, in its own thread; a failing cleanup is
        logged and forwarded, never raised out of the worker (where it would replace a
        consumer's cancellation)."""
        close = getattr(iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except BaseException as error:  # forwarded to the consumer, if still there
            logger.error("stream generator failed while closing", exc_info=error)
            self._deliver(_Failure(error))

    # -- consumer side -------------------------------------------------------------
    def start(self) -> None:
        """Submit the worker; called by ``__aenter__``."""
        ctx = contextvars.copy_context()
        self._future = self._executor.submit(ctx.run, self._produce)

    async def __aenter__(self) -> ThreadedStream[T]:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END or isinstance(item, _Failure):
            self._finished = True
            if isinstance(item, _Failure):
                raise item.error
            raise StopAsyncIteration
        with self._space:
            self._in_flight -= 1
            self._space.notify()
        return item

    @property
    def buffered(self) -> int:
        """Items produced and not yet consumed (never more than ``capacity``)."""
        return self._in_flight

    def stop(self) -> None:
        """Ask the generator to wind up (its remaining items are still delivered)."""
        self.stop_flag.set()

    async def aclose(self) -> None:
        """Stop the worker, drop further items, and wait (at most
        :data:`CLOSE_WAIT_SECONDS`) for the generator's cleanup in its thread.

        Safe to call from a ``finally`` of a cancelled task and more than once.
        """
        self.stop_flag.set()
        with self._space:
            self._closed = True
            self._space.notify_all()
        if self._future is None:
            return
        waiter = asyncio.wrap_future(self._future)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), CLOSE_WAIT_SECONDS)
        except TimeoutError:
            logger.warning("stream worker still busy %.0fs after stop; it will finish alone", CLOSE_WAIT_SECONDS)


class WorkerPool:
    """The process's single bounded thread pool for blocking work.

    Args:
        max_workers: threads in the pool.
        stream_capacity: items buffered per stream (see :class:`ThreadedStream`).

    Streams hold a thread for their whole life, so at most
    ``max_workers - RESERVED_THREADS`` run at once; further streams wait (without a
    thread) until one ends.
    """

    def __init__(self, max_workers: int, stream_capacity: int) -> None:
        self.max_workers = max_workers
        self.stream_capacity = stream_capacity
        self.max_streams = max(1, max_workers - RESERVED_THREADS)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ragsocket-worker")
        self._stream_slots: asyncio.Semaphore | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The underlying executor (for background jobs submitted from threads)."""
        return self._executor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker thread and return its result."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def stream(self, factory: Callable[[threading.Event], Iterator[T]]) -> _StreamSlot[T]:
        """An async context manager yielding a started :class:`ThreadedStream`."""
        if self._stream_slots is None:
            self._stream_slots = asyncio.Semaphore(self.max_streams)
        return _StreamSlot(self, factory, self._stream_slots)

    def shutdown(self) -> None:
        """Stop accepting work; running work finishes in its threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class _StreamSlot(Generic[T]):
    """Holds one of the pool's stream slots for the life of a :class:`ThreadedStream`."""

    def __init__(
        self,
        pool: WorkerPool,
        factory: Callable[[threading.Event], Iterator[T]],
        slots: asyncio.Semaphore,
    ) -> None:
        self._pool = pool
        self._factory = factory
        self._slots = slots
        self._stream: ThreadedStream[T] | None = None

    async def __aenter__(self) -> ThreadedStream[T]:
        await self._slots.acquire()
        try:
            self._stream = ThreadedStream(self._factory, self._pool.executor, self._pool.stream_capacity)
            self._stream.start()
        except BaseException:
            self._slots.release()
            raise
        return self._stream

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._stream is not None:
                await self._stream.aclose()
        finally:
            self._slots.release()
