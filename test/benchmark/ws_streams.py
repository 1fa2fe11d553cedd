"""Concurrent WebSocket answer streams: the worker-thread bridge against a naive handler.

Run from the repository root::

    python -m test.benchmark.ws_streams [--streams 1,50,200] [--tokens 20] [--delay 0.01]
                                        [--timeout 60]

For every N in ``--streams`` and each route, the script starts a fresh server in a
subprocess (``--serve PORT``: hypercorn + a tiny Quart app, nothing else of RagSocket
but :mod:`api.streaming.bridge`), opens N client connections plus one ping connection,
sends the N requests at once and measures, on the client side:

* time to first frame of each stream (p50, p99), from the moment its request was sent;
* inter-frame gap p99, over the gaps between consecutive frames of all streams;
* wall time, from the first request sent to the last stream finished;
* ping RTT p99: a WebSocket ping (RFC 6455 section 5.5.2) every 20 ms on the separate
  connection, answered by the server's event loop; a ping left unanswered at the end of
  the run counts as ``end - sent``.

Both routes serve the same synchronous generator :func:`paced_tokens` (``tokens`` items,
a blocking ``time.sleep(delay)`` before each, as a blocking chat-model client does):

* ``/bridged`` — the production pattern, ``WorkerPool(max_workers=N + 16,
  stream_capacity=32).stream(...)``: the generator runs in a worker thread;
* ``/naive`` — iterates the generator directly inside the async handler, so every
  ``time.sleep`` blocks the event loop (the flaw fixed by RAGFlow PR #11704).

What this measures is the pattern, in a stripped app: not RagSocket's WebSocket route
(no authentication, database, ``completion()``, JSON frames, event log or connection
loop; each item is sent as a bare string). The real service is measured by
:mod:`test.benchmark.ws_protocol`.

The defaults (20 tokens, 10 ms each) keep the whole run under about 1.5 minutes: the
naive route serves its streams one after the other, so N=200 needs 200 × 20 × 10 ms =
40 s there. A run still going after ``--timeout`` seconds is stopped and reported with
what it reached (first frames not received count as the timeout).

Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROUTES = ("bridged", "naive")
#: Marker the server sends after the last token of a stream.
DONE = "__done__"
#: Seconds between two pings on the ping connection.
PING_INTERVAL = 0.02
#: Extra worker threads of the bridged pool, beyond one per stream.
EXTRA_WORKERS = 16
#: Items buffered per bridged stream.
STREAM_CAPACITY = 32
SERVER_START_TIMEOUT = 20.0


def paced_tokens(n: int, delay: float) -> Iterator[str]:
    """``n`` tokens, each after a blocking ``time.sleep(delay)`` (seconds)."""
    for index in range(n):
        time.sleep(delay)
        yield f"tok{index} "


# -- server side (subprocess) ------------------------------------------------------


def serve(port: int, workers: int) -> None:
    """Serve the two routes on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from quart import Quart, websocket

    from api.streaming.bridge import WorkerPool

    pool = WorkerPool(max_workers=workers, stream_capacity=STREAM_CAPACITY)
    app = Quart(__name__)

    async def read_request() -> tuple[int, float]:
        request = json.loads(await websocket.receive())
        return int(request["tokens"]), float(request["delay"])

    @app.websocket("/bridged")
    async def bridged() -> None:
        tokens, delay = await read_request()
        async with pool.stream(lambda stop: paced_tokens(tokens, delay)) as items:
            async for item in items:
                await websocket.send(item)
        await websocket.send(DONE)

    @app.websocket("/naive")
    async def naive() -> None:
        tokens, delay = await read_request()
        for item in paced_tokens(tokens, delay):  # blocks the event loop at each sleep
            await websocket.send(item)
        await websocket.send(DONE)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 2048
    config.accesslog = None
    config.loglevel = "WARNING"
    try:
        asyncio.run(hypercorn_serve(app, config))
    finally:
        pool.shutdown()


# -- client side -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The ``--serve`` subprocess for one run."""

    def __init__(self, workers: int) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "test.benchmark.ws_streams", "--serve", str(self.port), "--workers", str(workers)],
            cwd=ROOT,
            env=env,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"benchmark server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("benchmark server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:  # the naive route may still hold the loop
            self.process.kill()
            self.process.wait()


@dataclass
class StreamTimes:
    """Client-side times of one stream (``time.perf_counter`` seconds)."""

    sent: float = math.nan
    frames: list[float] = field(default_factory=list)
    done: bool = False


@dataclass
class RunResult:
    """Figures of one (N, route) run; times in seconds."""

    streams: int
    first_frames: list[float]
    gaps: list[float]
    wall: float
    pings: list[float]
    pings_sent: int
    completed: int
    timed_out: bool


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def run_stream(ws, request: str, times: StreamTimes) -> None:
    times.sent = time.perf_counter()
    await ws.send(request)
    while True:
        message = await ws.recv()
        now = time.perf_counter()
        if message == DONE:
            times.done = True
            return
        times.frames.append(now)


async def ping_loop(ws, stop: asyncio.Event, rtts: list[float], pending: dict[int, float]) -> None:
    """Ping every PING_INTERVAL until ``stop``; RTTs land in ``rtts``, unanswered in ``pending``."""

    async def one(number: int, waiter: asyncio.Future) -> None:
        await waiter
        rtts.append(time.perf_counter() - pending.pop(number))

    tasks = []
    number = 0
    while not stop.is_set():
        pending[number] = time.perf_counter()
        waiter = await ws.ping(number.to_bytes(4, "big"))
        tasks.append(asyncio.create_task(one(number, waiter)))
        number += 1
        try:
            await asyncio.wait_for(stop.wait(), PING_INTERVAL)
        except TimeoutError:
            pass
    # Pongs still on their way (the server's loop may just have come free).
    await asyncio.wait(tasks, timeout=2.0)
    for task in tasks:
        task.cancel()


async def measure(port: int, route: str, streams: int, tokens: int, delay: float, timeout: float) -> RunResult:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/{route}"
    options = {"ping_interval": None, "open_timeout": 60, "close_timeout": 1, "max_size": None}
    sockets = await asyncio.gather(*(connect(url, **options) for _ in range(streams)))
    pinger = await connect(url, **options)
    request = json.dumps({"tokens": tokens, "delay": delay})
    times = [StreamTimes() for _ in range(streams)]
    stop = asyncio.Event()
    rtts: list[float] = []
    pending: dict[int, float] = {}
    ping_task = asyncio.create_task(ping_loop(pinger, stop, rtts, pending))
    await asyncio.sleep(0.1)  # a few pings on the idle server first
    started = time.perf_counter()
    tasks = [asyncio.create_task(run_stream(ws, request, t)) for ws, t in zip(sockets, times)]
    finished, unfinished = await asyncio.wait(tasks, timeout=timeout)
    ended = time.perf_counter()
    for task in unfinished:
        task.cancel()
    for task in finished:
        task.result()  # a failed stream fails the benchmark
    stop.set()
    await ping_task
    pings_sent = len(rtts) + len(pending)
    rtts.extend(ended - sent for sent in pending.values())
    await asyncio.wait([asyncio.create_task(ws.close()) for ws in [*sockets, pinger]], timeout=5)

    first_frames = [(t.frames[0] if t.frames else ended) - t.sent for t in times]
    gaps = [later - earlier for t in times for earlier, later in zip(t.frames, t.frames[1:])]
    last = max((t.frames[-1] for t in times if t.frames), default=ended)
    return RunResult(
        streams=streams,
        first_frames=first_frames,
        gaps=gaps,
        wall=(ended if unfinished else last) - started,
        pings=rtts,
        pings_sent=pings_sent,
        completed=sum(t.done for t in times),
        timed_out=bool(unfinished),
    )


def run_one(route: str, streams: int, tokens: int, delay: float, timeout: float) -> RunResult:
    server = Server(workers=streams + EXTRA_WORKERS)
    try:
        server.wait_ready()
        return asyncio.run(measure(server.port, route, streams, tokens, delay, timeout))
    finally:
        server.stop()


# -- report ------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.1f}"


def _ratio(naive: float, bridged: float) -> str:
    if math.isnan(naive) or math.isnan(bridged) or bridged <= 0:
        return ""
    return f"{naive / bridged:.1f}x"


def table(streams: int, results: dict[str, RunResult], timeout: float) -> str:
    bridged, naive = results["bridged"], results["naive"]

    def first_frame(result: RunResult, fraction: float) -> str:
        text = _ms(percentile(result.first_frames, fraction))
        return (">" + text) if result.timed_out and percentile(result.first_frames, fraction) >= timeout * 0.99 else text

    rows = [
        ("first frame p50 (ms)", first_frame(bridged, 0.5), first_frame(naive, 0.5), ""),
        (
            "first frame p99 (ms)",
            first_frame(bridged, 0.99),
            first_frame(naive, 0.99),
            _ratio(percentile(naive.first_frames, 0.99), percentile(bridged.first_frames, 0.99)),
        ),
        ("inter-frame gap p99 (ms)", _ms(percentile(bridged.gaps, 0.99)), _ms(percentile(naive.gaps, 0.99)), ""),
        ("wall time (s)", f"{bridged.wall:.2f}", f"{naive.wall:.2f}", _ratio(naive.wall, bridged.wall)),
        (
            "ping RTT p99 (ms)",
            _ms(percentile(bridged.pings, 0.99)),
            _ms(percentile(naive.pings, 0.99)),
            _ratio(percentile(naive.pings, 0.99), percentile(bridged.pings, 0.99)),
        ),
        ("pings sent", str(bridged.pings_sent), str(naive.pings_sent), ""),
        (
            "streams completed",
            f"{bridged.completed}/{streams}",
            f"{naive.completed}/{streams}" + (" (timeout)" if naive.timed_out else ""),
            "",
        ),
    ]
    lines = [
        f"| N={streams:<4} | bridged | naive | naive/bridged |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {b} | {n} | {r} |" for name, b, n, r in rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,50,200", help="comma-separated N values (default 1,50,200)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per stream (default 20)")
    parser.add_argument("--delay", type=float, default=0.01, help="blocking sleep before each token, s (default 0.01)")
    parser.add_argument("--timeout", type=float, default=60.0, help="longest run of one (N, route), s (default 60)")
    parser.add_argument("--serve", type=int, metavar="PORT", help="internal: run the benchmark server")
    parser.add_argument("--workers", type=int, default=EXTRA_WORKERS + 1, help="internal: server pool size")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.workers)
        return

    counts = [int(part) for part in args.streams.split(",") if part.strip()]
    print(
        f"# {len(counts)} stream counts x {len(ROUTES)} routes, {args.tokens} tokens/stream, "
        f"{args.delay * 1000:g} ms blocking sleep/token, timeout {args.timeout:g} s/run"
    )
    print(
        f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"server in a subprocess, client (N streams + 1 ping connection) in this process"
    )
    overall = time.monotonic()
    for streams in counts:
        results = {}
        for route in ROUTES:
            begun = time.monotonic()
            results[route] = run_one(route, streams, args.tokens, args.delay, args.timeout)
            print(f"# N={streams} {route}: {time.monotonic() - begun:.1f} s", file=sys.stderr, flush=True)
        print()
        print(table(streams, results, args.timeout), flush=True)
    print(f"\n# total {time.monotonic() - overall:.0f} s")


if __name__ == "__main__":
    main()
