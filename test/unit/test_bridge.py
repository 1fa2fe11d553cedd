"""The sync → asyncio stream bridge, with real threads and a real event loop.

No network: each test drives :class:`api.streaming.bridge.WorkerPool` and
:class:`api.streaming.bridge.ThreadedStream` with small synchronous generators that
count what they produce and record, in their ``finally``, the thread they were closed
in and whether the stop flag was set.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from api.streaming.bridge import RESERVED_THREADS, ThreadedStream, WorkerPool

pytestmark = pytest.mark.timeout(30)

CAPACITY = 4
WORKER_PREFIX = "ragsocket-worker"
#: Longest time a stop may take to reach a generator's ``finally``, seconds.
PROMPT = 1.0


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    """A pool with room for a few streams and a buffer of ``CAPACITY`` items each."""
    worker_pool = WorkerPool(max_workers=RESERVED_THREADS + 4, stream_capacity=CAPACITY)
    yield worker_pool
    worker_pool.shutdown()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` every 5 ms; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


class Probe:
    """A generator factory: yields 0, 1, 2 … (``limit`` items, or forever).

    Attributes:
        produced: items the generator has produced so far (counted under a lock,
            before each ``yield``).
        cleaned: set by the generator's ``finally``.
        cleanup_thread: name of the thread that ran the ``finally``.
        stop_seen: whether the stop flag was set when the ``finally`` ran.
    """

    def __init__(
        self,
        limit: int | None = None,
        fail_after: int | None = None,
        park_after: int | None = None,
        cleanup_error: BaseException | None = None,
    ) -> None:
        self.limit = limit
        self.fail_after = fail_after
        self.park_after = park_after
        self.cleanup_error = cleanup_error
        self.produced = 0
        self._lock = threading.Lock()
        self.cleaned = threading.Event()
        self.cleanup_thread: str | None = None
        self.stop_seen: bool | None = None
        self.stop: threading.Event | None = None

    def __call__(self, stop: threading.Event) -> Iterator[int]:
        self.stop = stop
        return self._generate(stop)

    def _generate(self, stop: threading.Event) -> Iterator[int]:
        try:
            index = 0
            while self.limit is None or index < self.limit:
                if index == self.fail_after:
                    raise ValueError(f"failed after {index} items")
                if index == self.park_after:
                    # Like a chat model waiting for its next token: it checks the flag.
                    while not stop.wait(0.01):
                        pass
                    return
                with self._lock:
                    self.produced += 1
                yield index
                index += 1
        finally:
            self.cleanup_thread = threading.current_thread().name
            self.stop_seen = stop.is_set()
            self.cleaned.set()
            if self.cleanup_error is not None:
                raise self.cleanup_error

    def assert_cleaned_in_worker(self) -> None:
        assert self.cleaned.is_set(), "the generator's finally has not run"
        assert self.cleanup_thread is not None and self.cleanup_thread.startswith(WORKER_PREFIX)
        assert self.stop_seen is True


# -- items and errors --------------------------------------------------------------


async def test_items_arrive_in_order(pool):
    probe = Probe(limit=500)
    async with pool.stream(probe) as items:
        received = [item async for item in items]
    assert received == list(range(500))
    assert probe.cleaned.is_set() and probe.cleanup_thread.startswith(WORKER_PREFIX)


async def test_empty_generator(pool):
    async with pool.stream(lambda stop: iter(())) as items:
        assert [item async for item in items] == []


async def test_generator_exception_is_reraised_by_the_consumer(pool):
    probe = Probe(limit=10, fail_after=3)
    received = []
    async with pool.stream(probe) as items:
        with pytest.raises(ValueError, match="failed after 3 items"):
            async for item in items:
                received.append(item)
        with pytest.raises(StopAsyncIteration):
            await items.__anext__()
    assert received == [0, 1, 2]
    assert probe.cleaned.is_set()


async def test_factory_exception_is_reraised_by_the_consumer(pool):
    error = KeyError("no such chat")

    def factory(stop: threading.Event) -> Iterator[int]:
        raise error

    async with pool.stream(factory) as items:
        with pytest.raises(KeyError) as caught:
            await items.__anext__()
    assert caught.value is error


async def test_capacity_must_be_positive(pool):
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ThreadedStream(Probe(), pool.executor, 0)


# -- backpressure ------------------------------------------------------------------


async def test_backpressure_bounds_the_buffer(pool):
    probe = Probe()  # endless
    async with pool.stream(probe) as items:
        # The consumer reads nothing: CAPACITY items are buffered, one more is held by
        # the worker, blocked on the full buffer.
        await wait_until(lambda: probe.produced >= CAPACITY + 1)
        await asyncio.sleep(0.3)
        assert probe.produced == CAPACITY + 1
        assert await items.__anext__() == 0
        await wait_until(lambda: probe.produced >= CAPACITY + 2)
        await asyncio.sleep(0.2)
        assert probe.produced == CAPACITY + 2
    probe.assert_cleaned_in_worker()


async def test_slow_consumer_keeps_the_producer_at_most_capacity_plus_one_ahead(pool):
    probe = Probe(limit=60)
    ahead = []
    async with pool.stream(probe) as items:
        consumed = 0
        async for item in items:
            assert item == consumed
            consumed += 1
            await asyncio.sleep(0.002)
            ahead.append(probe.produced - consumed)
    assert consumed == 60
    assert max(ahead) <= CAPACITY + 1


# -- closing early -----------------------------------------------------------------


async def test_leaving_async_with_early_stops_the_worker(pool):
    probe = Probe()
    async with pool.stream(probe) as items:
        assert [await items.__anext__() for _ in range(3)] == [0, 1, 2]
        started = time.monotonic()
    assert time.monotonic() - started < PROMPT
    assert items.stop_flag.is_set()
    probe.assert_cleaned_in_worker()


async def test_aclose_stops_the_worker_and_is_idempotent(pool):
    probe = Probe()
    stream = ThreadedStream(probe, pool.executor, CAPACITY)
    stream.start()
    assert await stream.__anext__() == 0
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < PROMPT
    assert stream.stop_flag.is_set() and probe.stop is stream.stop_flag
    probe.assert_cleaned_in_worker()
    await stream.aclose()


async def test_aclose_before_start_is_harmless(pool):
    probe = Probe()
    stream = ThreadedStream(probe, pool.executor, CAPACITY)
    await stream.aclose()
    assert stream.stop_flag.is_set() and probe.produced == 0


async def test_close_wakes_a_worker_blocked_on_a_full_buffer(pool):
    probe = Probe()
    async with pool.stream(probe) as items:
        await wait_until(lambda: probe.produced == CAPACITY + 1)
        await asyncio.sleep(0.05)
        assert not probe.cleaned.is_set()
        started = time.monotonic()
    assert time.monotonic() - started < PROMPT
    probe.assert_cleaned_in_worker()
    assert probe.produced == CAPACITY + 1, "nothing is produced after the stop"
    assert items.stop_flag.is_set()


# -- cancellation ------------------------------------------------------------------


async def consume_forever(pool: WorkerPool, probe: Probe, received: list[int], read: int | None = None) -> None:
    """Read ``read`` items (or all of them), then wait for ever inside the stream."""
    async with pool.stream(probe) as items:
        async for item in items:
            received.append(item)
            if read is not None and len(received) == read:
                await asyncio.Event().wait()


async def cancel(task: asyncio.Task) -> float:
    """Cancel the consumer ``task``; it must end with CancelledError. Returns how long that took."""
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - started


async def test_cancelling_the_consumer_while_it_awaits_an_item(pool):
    probe = Probe(park_after=2)  # two items, then waits for the stop flag
    received: list[int] = []
    task = asyncio.create_task(consume_forever(pool, probe, received))
    await wait_until(lambda: len(received) == 2)
    await asyncio.sleep(0.05)
    assert await cancel(task) < PROMPT
    probe.assert_cleaned_in_worker()


async def test_cancelling_the_consumer_while_the_worker_is_blocked_on_a_full_buffer(pool):
    probe = Probe()
    received: list[int] = []
    task = asyncio.create_task(consume_forever(pool, probe, received, read=1))
    await wait_until(lambda: probe.produced == CAPACITY + 2)
    await asyncio.sleep(0.05)
    assert not probe.cleaned.is_set()
    assert await cancel(task) < PROMPT
    probe.assert_cleaned_in_worker()
    assert received == [0]


async def test_failing_cleanup_does_not_swallow_cancellation(pool):
    probe = Probe(cleanup_error=RuntimeError("could not save the partial answer"))
    received: list[int] = []
    task = asyncio.create_task(consume_forever(pool, probe, received, read=1))
    await wait_until(lambda: probe.produced == CAPACITY + 2)  # the worker waits on a full buffer
    await cancel(task)


# -- the event loop stays free -----------------------------------------------------


async def test_event_loop_stays_responsive_while_generators_sleep():
    streams, tokens, delay = 20, 15, 0.02
    pool = WorkerPool(max_workers=streams + RESERVED_THREADS, stream_capacity=CAPACITY)

    def paced(stop: threading.Event) -> Iterator[int]:
        for index in range(tokens):
            time.sleep(delay)  # blocking, as a chat model client is
            yield index

    async def consume() -> list[int]:
        async with pool.stream(paced) as items:
            return [item async for item in items]

    try:
        started = time.monotonic()
        tasks = [asyncio.create_task(consume()) for _ in range(streams)]
        latencies = []
        while not all(task.done() for task in tasks):
            tick = time.perf_counter()
            await asyncio.sleep(0.01)
            latencies.append(time.perf_counter() - tick)
        wall = time.monotonic() - started
        assert [task.result() for task in tasks] == [list(range(tokens))] * streams
    finally:
        pool.shutdown()
    assert len(latencies) >= 10
    assert max(latencies) < 0.05, f"asyncio.sleep(0.01) took up to {max(latencies) * 1000:.0f} ms"
    assert wall < streams * tokens * delay / 4, "the streams ran concurrently"


# -- plain calls -------------------------------------------------------------------


async def test_run_returns_values_in_a_worker_thread(pool):
    assert await pool.run(pow, 2, 10) == 1024
    assert await pool.run(int, "ff", base=16) == 255
    assert (await pool.run(lambda: threading.current_thread().name)).startswith(WORKER_PREFIX)


async def test_run_propagates_exceptions(pool):
    def fail() -> None:
        raise LookupError("missing row")

    with pytest.raises(LookupError, match="missing row"):
        await pool.run(fail)


async def test_run_and_stream_copy_the_context(pool):
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
    variable.set("req-42")
    assert await pool.run(variable.get) == "req-42"

    def factory(stop: threading.Event) -> Iterator[str]:
        yield variable.get()

    async with pool.stream(factory) as items:
        assert [item async for item in items] == ["req-42"]


# -- stream slots ------------------------------------------------------------------


def test_max_streams_leaves_reserved_threads():
    assert WorkerPool(max_workers=10, stream_capacity=1).max_streams == 10 - RESERVED_THREADS == 2
    assert WorkerPool(max_workers=RESERVED_THREADS, stream_capacity=1).max_streams == 1


async def test_stream_slots_limit_concurrent_streams():
    pool = WorkerPool(max_workers=10, stream_capacity=CAPACITY)
    assert pool.max_streams == 2
    releases = [threading.Event() for _ in range(3)]
    lock = threading.Lock()
    active = [0, 0]  # running generators, peak
    entered: list[int] = []

    def factory_for(index: int) -> Callable[[threading.Event], Iterator[int]]:
        def generate(stop: threading.Event) -> Iterator[int]:
            with lock:
                active[0] += 1
                active[1] = max(active)
            try:
                yield index
                while not releases[index].wait(0.01) and not stop.is_set():
                    pass
            finally:
                with lock:
                    active[0] -= 1

        return generate

    async def run_stream(index: int) -> list[int]:
        async with pool.stream(factory_for(index)) as items:
            entered.append(index)
            return [item async for item in items]

    try:
        first = [asyncio.create_task(run_stream(index)) for index in (0, 1)]
        await wait_until(lambda: len(entered) == 2)
        third = asyncio.create_task(run_stream(2))
        await asyncio.sleep(0.3)
        assert sorted(entered) == [0, 1] and not third.done(), "the third stream waits for a slot"
        assert active == [2, 2]
        releases[0].set()
        assert await first[0] == [0]
        await wait_until(lambda: 2 in entered)
        releases[1].set()
        releases[2].set()
        assert await asyncio.gather(first[1], third) == [[1], [2]]
        assert active == [0, 2]
    finally:
        for release in releases:
            release.set()
        pool.shutdown()


async def test_failed_and_closed_streams_give_their_slot_back():
    pool = WorkerPool(max_workers=10, stream_capacity=CAPACITY)
    try:
        for _ in range(3 * pool.max_streams):
            async with pool.stream(Probe(fail_after=0)) as items:
                with pytest.raises(ValueError):
                    await items.__anext__()
            async with pool.stream(Probe()) as items:
                await items.__anext__()
        async with asyncio.timeout(2):
            async with pool.stream(Probe(limit=3)) as items:
                assert [item async for item in items] == [0, 1, 2]
    finally:
        pool.shutdown()
