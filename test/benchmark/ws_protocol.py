"""WebSocket costs of the real service: idle connections, slow readers, resume latency.

Run from the repository root::

    python -m test.benchmark.ws_protocol [--idle 2000] [--slow 200] [--slow-seconds 10]
                                         [--chunks 5000] [--long-chunks 20000]
                                         [--fast-chunks 1000] [--trials 30]

Every figure comes from real servers (``python -m api`` started by
:class:`test.support.server.ServerProcess`: hypercorn + Quart, SQLite in a temporary
folder shared by all of them, log level WARNING, no access log, connection and rate
limits raised far above the load). The client is this process (websockets asyncio
client). Three measurements, one table (or two) each:

1. **Idle connections** — the server's RSS (``/proc/<pid>/status`` VmRSS) before and
   after ``--idle`` authenticated WebSockets are opened on a chat's completions route
   (each proves it is served with a ``{"type": "ping"}`` → pong), 2 s and 7 s after
   they are all closed, and with as many opened again (reused or leaked?). A warm-up
   of 256 connections comes first. The soft ``RLIMIT_NOFILE`` is raised to the hard
   limit before any server starts, so the servers inherit it.
2. **Slow readers** — a server whose chats use the OpenAI-compatible test server
   (model ``long-<n>``: n chunks as fast as they are read; run in its own process)
   and ``RAGSOCKET_STREAM_QUEUE_FRAMES=32``. ``--slow`` clients ask one question each
   and read one frame every 50 ms for ``--slow-seconds``; RSS is sampled every
   second. Repeated with a 4x longer answer (``--long-chunks``, 0 skips) and, when
   Redis answers, with the event log in Redis (control: frames not kept in the
   process). Then the same number of clients read ``long-<--fast-chunks>`` answers as
   fast as they can, to the end. Each run has a fresh server. After a slow run the
   clients leave; the partial answers the server saved (interrupted) tell how far
   each stream's producer got; the loopback sockets' queues (``/proc/net/tcp``) tell
   what the kernel held at the end.
3. **Resume latency** — offline model at ``RAGSOCKET_OFFLINE_TOKEN_DELAY=0.02`` (an
   answer of 50 frames, ~1 s): ask with ``"resumable": true``, read 3 frames,
   close, reconnect at once and send ``{"type": "resume", …, "last_seq": 3}``; the
   time to the first resumed frame (which must be seq 4) is taken from the resume
   message sent and from the start of the reconnect (handshake included). Then, on
   another connection, a replay with ``last_seq=0``: frame 1 is in the log already,
   so that figure is the resume path alone, without waiting for the model's next
   token. (a) memory event log, one server; (b) Redis event log
   (``redis://127.0.0.1:6379/0``), answer started on server A and resumed on server
   B. The answers go on without their client (they are resumable) and end ~1 s later.

Figures only, no pass/fail. Not collected by pytest (the file name does not start with
``test_``). Other helpers come from :mod:`test.benchmark.ws_streams`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from test.benchmark.ws_streams import ROOT, _ms, percentile
from test.support import openai_server
from test.support.openai_server import OpenAITestServer
from test.support.server import (
    ServerProcess,
    Tenant,
    create_tenant,
    make_chat,
    make_dataset,
    ok,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
STREAM_QUEUE_FRAMES = 32
SLOW_READ_INTERVAL = 0.05
OFFLINE_TOKEN_DELAY = 0.02
RESUME_AFTER_FRAMES = 3
#: Seconds between resume trials (earlier answers, ~1 s long, still run meanwhile).
TRIAL_PAUSE = 0.2
#: Connections being opened at once (hypercorn's listen backlog is 100); low enough
#: that the server's worker pool (authentication, chat lookup) does not grow meanwhile.
OPEN_CONCURRENCY = 16
#: Connections opened at once by the warm-up before the idle baseline.
WARM_CONCURRENCY = 64
#: Longest a fast-reader run may last, seconds (cut and reported beyond).
FAST_TIMEOUT = 150.0
CLIENT_OPTIONS = {"ping_interval": None, "open_timeout": 60, "close_timeout": 2, "max_size": None}
LIMITS = {
    "RAGSOCKET_WS_MAX_CONNECTIONS": "20000",
    "RAGSOCKET_WS_MAX_CONNECTIONS_PER_KEY": "20000",
    "RAGSOCKET_RATE_LIMIT_PER_MINUTE": "100000",
}
#: The offline model answers QUESTION with all three sentences: 50 frames (~1 s at 20 ms).
DOCUMENT = (
    "The Lumen lamp is assembled by hand in Porto and tested for eight hours before shipping. "
    "The lamp is powered by a five watt LED bulb and dimmed with a small wheel. "
    "The lamp is dimmed smoothly to full brightness and powered again at its last setting."
)
#: Also the long-<n> chats' question: with no relevant chunk the service answers
#: "not found" without calling the model.
QUESTION = "How is the Lumen lamp assembled, tested, dimmed and powered?"


# -- process and socket figures ------------------------------------------------------


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (inherited by servers started later)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and Threads of a process."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "Threads"):
            values[name] = int(rest.split()[0])
    return values


def rss_mb(pid: int) -> float:
    return proc_status(pid)["VmRSS"] / 1024


def socket_queues(port: int) -> tuple[int, int, int]:
    """From /proc/net/tcp, over established loopback TCP sockets of ``port``:
    (bytes in the server's send queues, bytes in the clients' receive queues, server sockets)."""
    server_tx = client_rx = count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, state, queues = parts[1], parts[2], parts[3], parts[4]
        if state != "01":  # ESTABLISHED
            continue
        tx, rx = (int(value, 16) for value in queues.split(":"))
        if int(local.split(":")[1], 16) == port:
            server_tx += tx
            count += 1
        elif int(remote.split(":")[1], 16) == port:
            client_rx += rx
    return server_tx, client_rx, count


# -- servers -------------------------------------------------------------------------


def serve_llm() -> None:
    """Internal (``--llm-server``): run the OpenAI test server, print its base URL,
    serve until stdin closes."""
    # socketserver's default listen backlog (5) would refuse part of --slow model
    # requests arriving at once (the service then answers "the chat model is unreachable").
    openai_server._Server.request_queue_size = 1024
    with OpenAITestServer(api_key="sk-test") as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


class LLMProcess:
    """The OpenAI test server in its own process: in this one, its threads (one per
    streaming answer) would compete for the GIL with the benchmark's clients."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "test.benchmark.ws_protocol", "--llm-server"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the OpenAI test server did not start")

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Bench:
    """Shared state: the data folder, the tenant, the test LLM server, started servers."""

    root: Path
    llm: LLMProcess
    tenant: Tenant | None = None
    dataset_id: str = ""
    offline_chat: str = ""
    servers: list[tuple[str, ServerProcess]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        assert self.tenant is not None
        return {"Authorization": f"Bearer {self.tenant.api_key}"}

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return {
            "RAGSOCKET_DATABASE_URL": f"sqlite:///{self.root / 'ragsocket.db'}",
            "RAGSOCKET_DATA_DIR": str(self.root / name),
            "RAGSOCKET_LOG_LEVEL": "WARNING",
            "RAGSOCKET_ACCESS_LOG": "",
            "RAGSOCKET_OFFLINE_TOKEN_DELAY": str(OFFLINE_TOKEN_DELAY),
            "RAGSOCKET_STREAM_QUEUE_FRAMES": str(STREAM_QUEUE_FRAMES),
            "RAGSOCKET_LLM_BASE_URL": self.llm.base_url,
            "RAGSOCKET_LLM_API_KEY": "sk-test",
            "RAGSOCKET_LLM_MODEL": "echo",
            **LIMITS,
            **extra,
        }

    def start(self, name: str, **extra: str) -> ServerProcess:
        server = ServerProcess(self.env(name, **extra)).start()
        self.servers.append((name, server))
        return server

    def api(self, server: ServerProcess) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=server.api_url, headers=self.headers, timeout=60)

    def chat_url(self, server: ServerProcess, chat_id: str) -> str:
        return f"{server.ws_url}/ws/chats/{chat_id}/completions"

    async def setup(self, server: ServerProcess) -> None:
        """Tenant (CLI), a parsed dataset and an offline chat over it."""
        self.tenant = create_tenant(server.env, "bench")
        async with self.api(server) as api:
            self.dataset_id, docs = await make_dataset(api, {"lumen.txt": DOCUMENT.encode()})
            assert docs[0]["run"] == "DONE", docs
            self.offline_chat = (await make_chat(api, [self.dataset_id]))["id"]

    async def long_chat(self, server: ServerProcess, model: str) -> str:
        """A chat answered by the test server's ``model``; ``server`` must have it as
        RAGSOCKET_LLM_MODEL (the service only accepts listed or configured models)."""
        async with self.api(server) as api:
            return (await make_chat(api, [self.dataset_id], llm={"model_name": model}))["id"]


async def connect_many(url: str, headers: dict[str, str], count: int, concurrency: int = OPEN_CONCURRENCY):
    """``count`` connections, ``concurrency`` at a time."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            return await connect(url, additional_headers=headers, **CLIENT_OPTIONS)

    return await asyncio.gather(*(one() for _ in range(count)))


async def close_all(sockets) -> None:
    await asyncio.wait([asyncio.create_task(ws.close()) for ws in sockets], timeout=30)


# -- 1. idle connections -------------------------------------------------------------


@dataclass
class IdleResult:
    count: int
    before: dict[str, int]
    opened: dict[str, int]
    after_close: dict[str, int]
    after_close_later: dict[str, int]
    reopened: dict[str, int]
    open_seconds: float
    pongs: int


async def measure_idle(bench: Bench, server: ServerProcess, count: int) -> IdleResult:
    pid = server.process.pid
    url = bench.chat_url(server, bench.offline_chat)

    async def ping(ws) -> bool:
        await ws.send('{"type":"ping"}')
        return json.loads(await asyncio.wait_for(ws.recv(), 30)).get("type") == "pong"

    # Warm-up, not charged: lazy imports, and the worker pool growing to the threads
    # that OPEN_CONCURRENCY authentications at once start.
    warm = await connect_many(url, bench.headers, 4 * WARM_CONCURRENCY, WARM_CONCURRENCY)
    await asyncio.gather(*(ping(ws) for ws in warm))
    await close_all(warm)
    await asyncio.sleep(1.0)
    before = proc_status(pid)
    started = time.perf_counter()
    sockets = await connect_many(url, bench.headers, count)
    pongs = sum(await asyncio.gather(*(ping(ws) for ws in sockets)))
    open_seconds = time.perf_counter() - started
    await asyncio.sleep(1.0)
    opened = proc_status(pid)
    await close_all(sockets)
    await asyncio.sleep(2.0)
    after_close = proc_status(pid)
    await asyncio.sleep(5.0)
    after_close_later = proc_status(pid)
    # Kept by the allocator for reuse, or leaked? Open the same number again.
    sockets = await connect_many(url, bench.headers, count)
    await asyncio.gather(*(ping(ws) for ws in sockets))
    await asyncio.sleep(1.0)
    reopened = proc_status(pid)
    await close_all(sockets)
    return IdleResult(count, before, opened, after_close, after_close_later, reopened, open_seconds, pongs)


def idle_table(result: IdleResult) -> str:
    mb = lambda status: status["VmRSS"] / 1024
    delta = mb(result.opened) - mb(result.before)
    rows = [
        ("server RSS before (MB)", f"{mb(result.before):.1f}"),
        (f"server RSS with {result.count} open (MB)", f"{mb(result.opened):.1f}"),
        ("RSS delta (MB)", f"{delta:.1f}"),
        ("RSS per connection (KB)", f"{delta * 1024 / result.count:.1f}"),
        ("server threads before / open", f"{result.before['Threads']} / {result.opened['Threads']}"),
        ("connections answering a ping", f"{result.pongs}/{result.count}"),
        ("open + ping time (s)", f"{result.open_seconds:.1f} ({result.count / result.open_seconds:.0f}/s)"),
        ("server RSS 2 s after closing all (MB)", f"{mb(result.after_close):.1f}"),
        ("server RSS 7 s after closing all (MB)", f"{mb(result.after_close_later):.1f}"),
        ("of the delta still held 7 s after close", f"{(mb(result.after_close_later) - mb(result.before)) / delta * 100:.0f} %"
         if delta > 0 else "n/a"),
        (f"server RSS with {result.count} opened again (MB)", f"{mb(result.reopened):.1f}"),
    ]
    lines = [f"| {result.count} idle connections | value |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)]
    return "\n".join(lines)


# -- 2. slow and fast readers --------------------------------------------------------


@dataclass
class ReaderResult:
    label: str
    clients: int
    chunks: int
    samples: list[tuple[float, float, int]]  # (t, RSS MB, threads)
    baseline: float
    peak: float  # VmHWM, MB
    frames_read: list[int]
    produced: list[int] = field(default_factory=list)  # tokens in the saved (partial) answers
    server_send_q: int = 0
    client_recv_q: int = 0
    wall: float = 0.0
    completed: int = 0
    after_close: float = 0.0
    timed_out: bool = False


async def sampler(pid: int, started: float, samples: list, stop: asyncio.Event) -> None:
    while True:
        status = proc_status(pid)
        samples.append((time.perf_counter() - started, status["VmRSS"] / 1024, status["Threads"]))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return
        except TimeoutError:
            pass


async def saved_token_counts(bench: Bench, server: ServerProcess, chat_id: str, ids: list[tuple[str, str]]) -> list[int]:
    """Words in each saved assistant message (one ``token<i> `` per chunk)."""
    gate = asyncio.Semaphore(16)
    async with bench.api(server) as api:

        async def one(session_id: str, message_id: str) -> int:
            async with gate:
                for _ in range(100):
                    sessions = ok(await api.get(f"/chats/{chat_id}/sessions", params={"id": session_id}))
                    found = [m for m in sessions[0]["messages"] if m.get("id") == message_id]
                    if found:
                        return len(found[0]["content"].split())
                    await asyncio.sleep(0.1)
                return -1

        return list(await asyncio.gather(*(one(s, m) for s, m in ids)))


async def measure_readers(
    bench: Bench, server: ServerProcess, chat_id: str, label: str, clients: int, chunks: int, slow: bool, seconds: float
) -> ReaderResult:
    pid = server.process.pid
    sockets = await connect_many(bench.chat_url(server, chat_id), bench.headers, clients)
    await asyncio.sleep(1.0)
    baseline = rss_mb(pid)
    frames_read = [0] * clients
    ids: list[tuple[str, str] | None] = [None] * clients
    done = [False] * clients
    samples: list[tuple[float, float, int]] = []
    stop = asyncio.Event()

    async def read(index: int, ws) -> None:
        await ws.send(json.dumps({"question": QUESTION}))
        first = json.loads(await ws.recv())
        if not isinstance(first.get("data"), dict) or "session_id" not in first["data"]:
            raise RuntimeError(f"unexpected first frame: {first}")
        ids[index] = (first["data"]["session_id"], first["data"]["id"])
        frames_read[index] = 1
        while True:
            if slow:
                await asyncio.sleep(SLOW_READ_INTERVAL)
            message = await ws.recv()
            frames_read[index] += 1
            if message.endswith('"data":true}'):
                done[index] = True
                return

    started = time.perf_counter()
    sampling = asyncio.create_task(sampler(pid, started, samples, stop))
    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    finished, unfinished = await asyncio.wait(tasks, timeout=seconds if slow else FAST_TIMEOUT)
    wall = time.perf_counter() - started
    for task in finished:
        task.result()
    server_send_q, client_recv_q, _ = socket_queues(server.port)
    stop.set()
    await sampling
    peak = proc_status(pid)["VmHWM"] / 1024
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    await close_all(sockets)
    result = ReaderResult(
        label, clients, chunks, samples, baseline, peak, frames_read,
        server_send_q=server_send_q, client_recv_q=client_recv_q, wall=wall, completed=sum(done),
        timed_out=bool(unfinished) and not slow,
    )
    if slow:
        result.produced = await saved_token_counts(bench, server, chat_id, [i for i in ids if i is not None])
    await asyncio.sleep(2.0)
    result.after_close = rss_mb(pid)
    return result


def readers_tables(results: list[ReaderResult]) -> str:
    header = "| t (s) | " + " | ".join(f"{r.label}: RSS MB (threads)" for r in results) + " |"
    lines = [header, "|---:|" + "---:|" * len(results)]
    longest = max(len(r.samples) for r in results)
    for second in range(longest):
        cells = []
        for r in results:
            if second < len(r.samples):
                _, rss, threads = r.samples[second]
                cells.append(f"{rss:.0f} ({threads})")
            else:
                cells.append("")
        lines.append(f"| {second} | " + " | ".join(cells) + " |")

    def growth(r: ReaderResult) -> str:
        late = [s for s in r.samples if s[0] >= 3.0]
        if len(late) < 2:
            return "n/a"
        span = late[-1][0] - late[0][0]
        return f"{late[-1][1] - late[0][1]:+.1f} MB in {span:.0f} s"

    def produced(r: ReaderResult) -> str:
        if not r.produced:
            return f"{r.chunks} (all)" if r.completed == r.clients else "n/a"
        return f"{statistics.mean(r.produced):.0f} / {max(r.produced)}"

    def ahead(r: ReaderResult) -> str:
        if not r.produced:
            return "n/a"
        return f"{statistics.mean(r.produced) - statistics.mean(r.frames_read):.0f}"

    rows = [
        ("clients", lambda r: str(r.clients)),
        ("answer length (chunks)", lambda r: str(r.chunks)),
        ("run time (s)", lambda r: f"{r.wall:.1f}" + (" (cut)" if r.timed_out else "")),
        ("answers completed", lambda r: f"{r.completed}/{r.clients}"),
        ("frames read per client (mean)", lambda r: f"{statistics.mean(r.frames_read):.0f}"),
        ("chunks produced per stream (mean / max)", produced),
        ("producer ahead of reader (frames, mean)", ahead),
        ("server socket send queues at end (KB total)", lambda r: f"{r.server_send_q / 1024:.0f}"),
        ("client socket receive queues at end (KB total)", lambda r: f"{r.client_recv_q / 1024:.0f}"),
        ("RSS baseline, clients connected (MB)", lambda r: f"{r.baseline:.0f}"),
        ("RSS peak, VmHWM (MB)", lambda r: f"{r.peak:.0f}"),
        ("peak - baseline (MB)", lambda r: f"{r.peak - r.baseline:.0f}"),
        ("peak - baseline per stream (KB)", lambda r: f"{(r.peak - r.baseline) * 1024 / r.clients:.0f}"),
        ("RSS growth from t=3 s to the end", growth),
        ("RSS 2 s after the clients left (MB)", lambda r: f"{r.after_close:.0f}"),
    ]
    summary = [
        "| | " + " | ".join(r.label for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {name} | " + " | ".join(cell(r) for r in results) + " |" for name, cell in rows),
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(summary)


# -- 3. resume latency ---------------------------------------------------------------


@dataclass
class ResumeResult:
    label: str
    from_send: list[float] = field(default_factory=list)
    from_reconnect: list[float] = field(default_factory=list)
    handshake: list[float] = field(default_factory=list)
    replay: list[float] = field(default_factory=list)
    broken: int = 0
    errors: list[str] = field(default_factory=list)


async def resume_trial(bench: Bench, first: ServerProcess, second: ServerProcess, result: ResumeResult) -> None:
    from websockets.asyncio.client import connect

    async with connect(bench.chat_url(first, bench.offline_chat), additional_headers=bench.headers, **CLIENT_OPTIONS) as ws:
        await ws.send(json.dumps({"question": QUESTION, "resumable": True}))
        before = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(RESUME_AFTER_FRAMES)]
    data = before[0]["data"]
    reconnect = time.perf_counter()
    async with connect(bench.chat_url(second, bench.offline_chat), additional_headers=bench.headers, **CLIENT_OPTIONS) as ws:
        opened = time.perf_counter()
        await ws.send(json.dumps({
            "type": "resume", "session_id": data["session_id"], "message_id": data["id"], "last_seq": RESUME_AFTER_FRAMES,
        }))
        sent = time.perf_counter()
        resumed = json.loads(await asyncio.wait_for(ws.recv(), 20))
        received = time.perf_counter()
    # The answer goes on without a client (resumable) and ends ~1 s later.
    if resumed.get("code") != 0 or not isinstance(resumed.get("data"), dict):
        result.errors.append(str(resumed)[:200])
        return
    result.from_send.append(received - sent)
    result.from_reconnect.append(received - reconnect)
    result.handshake.append(opened - reconnect)
    seqs = [f["data"]["seq"] for f in before] + [resumed["data"]["seq"]]
    if seqs != list(range(1, RESUME_AFTER_FRAMES + 2)):
        result.broken += 1
    # Replay from the start (frame 1 is in the log for sure): the resume path alone,
    # without waiting for the model's next token.
    async with connect(bench.chat_url(second, bench.offline_chat), additional_headers=bench.headers, **CLIENT_OPTIONS) as ws:
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "resume", "session_id": data["session_id"], "message_id": data["id"], "last_seq": 0}))
        replayed = json.loads(await asyncio.wait_for(ws.recv(), 20))
        received = time.perf_counter()
    if replayed.get("code") == 0 and isinstance(replayed.get("data"), dict) and replayed["data"]["seq"] == 1:
        result.replay.append(received - sent)
    else:
        result.errors.append(str(replayed)[:200])


async def measure_resume(bench: Bench, first: ServerProcess, second: ServerProcess, label: str, trials: int) -> ResumeResult:
    result = ResumeResult(label)
    for _ in range(2):  # warm-up, not counted
        await resume_trial(bench, first, second, ResumeResult(label))
    for _ in range(trials):
        await resume_trial(bench, first, second, result)
        await asyncio.sleep(TRIAL_PAUSE)
    return result


def resume_table(results: list[ResumeResult]) -> str:
    rows = [
        ("resume sent → first resumed frame p50 (ms)", lambda r: _ms(percentile(r.from_send, 0.5))),
        ("resume sent → first resumed frame p99 (ms)", lambda r: _ms(percentile(r.from_send, 0.99))),
        ("reconnect start → first resumed frame p50 (ms)", lambda r: _ms(percentile(r.from_reconnect, 0.5))),
        ("reconnect start → first resumed frame p99 (ms)", lambda r: _ms(percentile(r.from_reconnect, 0.99))),
        ("of which handshake p50 (ms)", lambda r: _ms(percentile(r.handshake, 0.5))),
        ("replay, last_seq=0: resume sent → frame 1 p50 (ms)", lambda r: _ms(percentile(r.replay, 0.5))),
        ("replay, last_seq=0: resume sent → frame 1 p99 (ms)", lambda r: _ms(percentile(r.replay, 0.99))),
        ("trials resumed / errors", lambda r: f"{len(r.from_send)} / {len(r.errors)}"),
        (f"first resumed frame not seq {RESUME_AFTER_FRAMES + 1}", lambda r: str(r.broken)),
    ]
    lines = [
        "| | " + " | ".join(r.label for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {name} | " + " | ".join(cell(r) for r in results) + " |" for name, cell in rows),
    ]
    return "\n".join(lines)


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


# -- main ----------------------------------------------------------------------------


def error_lines(bench: Bench) -> list[str]:
    found = []
    for name, server in bench.servers:
        if server.log_path.exists():
            for line in server.log_path.read_text(errors="replace").splitlines():
                if "ERROR" in line or "Traceback" in line:
                    found.append(f"{name}: {line[:240]}")
    return found


def stage(text: str, begun: float) -> None:
    print(f"# {text}: {time.monotonic() - begun:.1f} s", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, bench: Bench) -> None:
    overall = time.monotonic()
    setup = bench.start("setup")
    await bench.setup(setup)
    setup.stop()
    stage("setup", overall)

    if args.idle:
        begun = time.monotonic()
        server = bench.start("idle")
        idle = await measure_idle(bench, server, args.idle)
        server.stop()
        print(f"\n## 1. Memory per idle connection\n\n{idle_table(idle)}", flush=True)
        stage("idle connections", begun)

    if args.slow:
        begun = time.monotonic()
        results = []
        runs: list[tuple[str, int, bool, dict[str, str]]] = [(f"slow, long-{args.chunks}", args.chunks, True, {})]
        if args.long_chunks:
            runs.append((f"slow, long-{args.long_chunks}", args.long_chunks, True, {}))
        if redis_available():  # control: the same run with the event log out of the process
            runs.append((f"slow, long-{args.chunks}, Redis log", args.chunks, True, {"RAGSOCKET_REDIS_URL": REDIS_URL}))
        if args.fast_chunks:
            runs.append((f"fast, long-{args.fast_chunks}", args.fast_chunks, False, {}))
        for label, chunks, slow, extra in runs:
            model = f"long-{chunks}"
            server = bench.start(label.replace(", ", "-").replace(" ", "-"), RAGSOCKET_LLM_MODEL=model, **extra)
            chat_id = await bench.long_chat(server, model)
            results.append(await measure_readers(bench, server, chat_id, label, args.slow, chunks, slow, args.slow_seconds))
            server.stop()
            stage(label, begun)
        print(
            f"\n## 2. Slow readers ({args.slow} clients; slow: one frame per {SLOW_READ_INTERVAL * 1000:g} ms "
            f"for {args.slow_seconds:g} s; fast: read until the end)\n\n"
            f"# per-stream bound in the bridge: RAGSOCKET_STREAM_QUEUE_FRAMES={STREAM_QUEUE_FRAMES} frames\n\n"
            f"{readers_tables(results)}",
            flush=True,
        )

    if args.trials:
        begun = time.monotonic()
        results = []
        server = bench.start("resume-memory")
        results.append(await measure_resume(bench, server, server, "memory log, one server", args.trials))
        server.stop()
        stage("resume, memory", begun)
        if redis_available():
            a = bench.start("resume-redis-a", RAGSOCKET_REDIS_URL=REDIS_URL)
            b = bench.start("resume-redis-b", RAGSOCKET_REDIS_URL=REDIS_URL)
            results.append(await measure_resume(bench, a, b, "Redis log, A → B", args.trials))
            a.stop()
            b.stop()
            stage("resume, Redis", begun)
        else:
            print(f"# Redis not reachable at {REDIS_URL}: (b) skipped", flush=True)
        print(
            f"\n## 3. Resume latency ({args.trials} trials each; offline model, {OFFLINE_TOKEN_DELAY * 1000:g} ms/token, "
            f"drop after {RESUME_AFTER_FRAMES} frames, resume with last_seq={RESUME_AFTER_FRAMES})\n\n{resume_table(results)}",
            flush=True,
        )
        for result in results:
            for error in result.errors[:3]:
                print(f"# {result.label} error: {error}")

    errors = error_lines(bench)
    print(f"\n# server logs: {len(errors)} ERROR/Traceback lines")
    for line in errors[:20]:
        print(f"#   {line}")
    print(f"# total {time.monotonic() - overall:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=2000, help="idle connections (default 2000; 0 skips)")
    parser.add_argument("--slow", type=int, default=200, help="reader clients (default 200; 0 skips)")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="length of a slow-reader run, s (default 10)")
    parser.add_argument("--chunks", type=int, default=5000, help="answer length of the long-<n> model (default 5000)")
    parser.add_argument(
        "--fast-chunks", type=int, default=1000,
        help="answer length of the fast-reader run (default 1000: 200 x 5000 frames would take ~5 min here; 0 skips)",
    )
    parser.add_argument("--long-chunks", type=int, default=20000, help="second slow run's answer length (default 20000; 0 skips)")
    parser.add_argument("--trials", type=int, default=30, help="resume trials per event log (default 30; 0 skips)")
    parser.add_argument("--llm-server", action="store_true", help="internal: run the OpenAI test server")
    args = parser.parse_args(argv)
    if args.llm_server:
        serve_llm()
        return

    soft, hard = raise_nofile()
    needed = 2 * max(args.idle, args.slow) + 200  # client and server sockets, both sides of loopback
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"RLIMIT_NOFILE soft/hard {soft}/{hard} (servers inherit it)")
    if soft < needed:
        print(f"# warning: RLIMIT_NOFILE {soft} < {needed} descriptors this run may need", flush=True)
    with tempfile.TemporaryDirectory(prefix="ragsocket-bench-") as folder:
        llm = LLMProcess()
        bench = Bench(Path(folder), llm)
        try:
            asyncio.run(run(args, bench))
        finally:
            for _, server in bench.servers:
                server.stop()
            llm.stop()


if __name__ == "__main__":
    main()
