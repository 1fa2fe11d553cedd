"""WebSocket costs of the real service: idle connections, slow readers, resume latency.

Run from the repository root::

    python -m test.benchmark.ws_protocol [--idle 2000] [--slow 200] [--slow-seconds 90]
                                         [--slow-interval 1.0] [--client-rcvbuf 4096]
                                         [--client-mss 536] [--passage-words 2000]
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
2. **Slow readers** — readers far slower than the server produces. The server answers
   with the built-in offline model at full speed (``RAGSOCKET_OFFLINE_TOKEN_DELAY=0``,
   ``RAGSOCKET_STREAM_QUEUE_FRAMES=32``) from a dataset of three long passages with no
   sentence end, one chunk each, so that one answer is 3 × ``--passage-words``
   one-word frames (6 009 by default), made in well under a second when nothing holds
   the producer back. ``--slow`` clients ask one question each, read the first frame,
   then either read one frame every ``--slow-interval`` seconds (default 1 s) or never
   read again, for ``--slow-seconds``. Their sockets have a small receive buffer
   (``--client-rcvbuf``) and advertise a small MSS (``--client-mss``): on loopback the
   server's kernel send buffer autotunes with the MSS (64 KiB) to ~3 MB per
   connection, which would take ~15 000 frames per stream and hide the server's own
   bound; with MSS 536 it stays ~150–250 KB (``0`` keeps the OS default). The
   websockets client queues one message at most (``max_queue=1``) and compression is
   off. Sampled every second: server RSS and threads, and the bytes in all the
   connections' kernel socket queues (server send + client receive, ``/proc/net/tcp``).
   At the end each connection's queues are read, then the clients drop their
   connections (RST) at once; the server stops the answers and saves the partial
   text, whose word count is the number of frames the producer made. Frames **held
   in the server process** = produced − read by the client − in the kernel queues
   (bytes / mean frame size), compared with the bound: the bridge buffer, the item
   waiting for room and the one being sent, and what hypercorn's transport buffers
   before ``drain()`` blocks (64 KiB). Runs: one frame per ``--slow-interval``; never
   reads; never reads with the event log in Redis (when Redis answers: frames sent
   are not kept in the process). Then, ``--fast-chunks`` > 0: the same number of
   clients read ``long-<--fast-chunks>`` answers (OpenAI-compatible test server, run
   in its own process) as fast as they can, to the end. Each run has a fresh server.
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
import socket
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
    wait_parsed,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
STREAM_QUEUE_FRAMES = 32
#: asyncio's default write-buffer high-water mark: hypercorn's ``drain()`` returns once
#: the transport holds no more than this.
TRANSPORT_HIGH_WATER = 64 * 1024
#: Frames in the server beyond the bridge buffer: the generator's item waiting for
#: room and the consumer's item being sent.
IN_HAND = 2
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
#: The slow readers' answer: three passages of ``--passage-words`` words, each one
#: sentence (no sentence end) holding both words of PASSAGE_QUESTION and one chunk
#: (chunk_token_num just above a passage), so the offline answer is all three: one
#: frame per word.
PASSAGE_QUESTION = "How does the lumen glow?"


def passage(index: int, words: int) -> str:
    return "lumen glow " + " ".join(f"beam{index}x{i:05d}" for i in range(words))


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


def tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) → (tx_queue, rx_queue) bytes of established IPv4 TCP sockets."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] != "01":  # ESTABLISHED
            continue
        local, remote = int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16)
        tx, rx = (int(value, 16) for value in parts[4].split(":"))
        queues[(local, remote)] = (tx, rx)
    return queues


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
    passage_words: int = 2000
    tenant: Tenant | None = None
    dataset_id: str = ""
    offline_chat: str = ""
    passage_chat: str = ""
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
        """Tenant (CLI), a parsed dataset and an offline chat over it, and the long
        passages' dataset and its offline chat (slow readers)."""
        self.tenant = create_tenant(server.env, "bench")
        async with self.api(server) as api:
            self.dataset_id, docs = await make_dataset(api, {"lumen.txt": DOCUMENT.encode()})
            assert docs[0]["run"] == "DONE", docs
            self.offline_chat = (await make_chat(api, [self.dataset_id]))["id"]
            # one passage (words + 2 tokens) per chunk
            body = {"name": "passages", "parser_config": {"chunk_token_num": min(self.passage_words + 16, 8192)}}
            passages_id = ok(await api.post("/datasets", json=body))["id"]
            text = "\n\n".join(passage(index, self.passage_words) for index in range(3))
            docs = ok(await api.post(f"/datasets/{passages_id}/documents", files=[("file", ("passages.txt", text.encode()))]))
            ok(await api.post(f"/datasets/{passages_id}/chunks", json={"document_ids": [d["id"] for d in docs]}))
            (doc,) = await wait_parsed(api, passages_id)
            assert doc["run"] == "DONE" and doc["chunk_count"] == 3, doc
            self.passage_chat = (await make_chat(api, [passages_id]))["id"]

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


async def sampler(pid: int, port: int, started: float, samples: list, stop: asyncio.Event) -> None:
    """Every second: (t, RSS MB, threads, bytes in the kernel queues of ``port``'s connections)."""
    while True:
        status = proc_status(pid)
        server_tx, client_rx, _ = socket_queues(port)
        samples.append((time.perf_counter() - started, status["VmRSS"] / 1024, status["Threads"], server_tx + client_rx))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return
        except TimeoutError:
            pass


async def saved_token_counts(bench: Bench, server: ServerProcess, chat_id: str, ids: list[tuple[str, str]]) -> list[int]:
    """Words in each saved assistant message (one word per frame), -1 if never saved."""
    gate = asyncio.Semaphore(16)
    async with bench.api(server) as api:

        async def one(session_id: str, message_id: str) -> int:
            async with gate:
                for _ in range(300):
                    sessions = ok(await api.get(f"/chats/{chat_id}/sessions", params={"id": session_id}))
                    found = [m for m in sessions[0]["messages"] if m.get("id") == message_id]
                    if found:
                        return len(found[0]["content"].split())
                    await asyncio.sleep(0.1)
                return -1

        return list(await asyncio.gather(*(one(s, m) for s, m in ids)))


def wire_bytes(text: str) -> int:
    """Size on the wire of a server-to-client text frame (unmasked, no compression)."""
    size = len(text.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


async def connect_clamped(url: str, headers: dict[str, str], count: int, rcvbuf: int, mss: int):
    """``count`` connections whose sockets have a ``rcvbuf`` receive buffer and advertise
    an MSS of ``mss`` (0: the OS default), one message queued at most, no compression."""
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    loop = asyncio.get_running_loop()
    port = int(url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    async def one():
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            options = {**CLIENT_OPTIONS, "max_queue": 1, "compression": None}
            return await connect(url, sock=sock, additional_headers=headers, **options)

    return await asyncio.gather(*(one() for _ in range(count)))


@dataclass
class StallResult:
    label: str
    clients: int
    interval: float | None  # seconds between reads; None: never reads after the first frame
    answer_frames: int  # delta frames of the whole answer
    frame_bytes: float  # mean wire size of a delta frame
    rcvbuf: int  # client socket receive buffer as the kernel reports it
    samples: list[tuple[float, float, int, int]]  # (t, RSS MB, threads, kernel queue bytes)
    baseline: float
    peak: float  # VmHWM, MB
    frames_read: list[int]
    produced: list[int] = field(default_factory=list)  # words in the saved partial answers
    kernel: list[int] = field(default_factory=list)  # bytes in each connection's queues at the end
    wall: float = 0.0
    completed: int = 0
    after_close: float = 0.0

    @property
    def transport_frames(self) -> float:
        return TRANSPORT_HIGH_WATER / self.frame_bytes

    @property
    def bound(self) -> float:
        """Frames a bounded server may hold per stream: bridge + in hand + transport."""
        return STREAM_QUEUE_FRAMES + IN_HAND + self.transport_frames

    @property
    def client_library(self) -> float:
        """Frames the client library may have taken off its socket in one read and kept."""
        return self.rcvbuf / self.frame_bytes + 1

    def held(self) -> list[float]:
        """Per stream: produced − read − in the kernel queues (frames)."""
        return [
            produced - read - kernel / self.frame_bytes
            for produced, read, kernel in zip(self.produced, self.frames_read, self.kernel)
            if produced >= 0
        ]


async def measure_stalled(
    bench: Bench, server: ServerProcess, label: str, clients: int, interval: float | None, seconds: float,
    rcvbuf: int, mss: int,
) -> StallResult:
    from websockets.asyncio.client import connect

    pid = server.process.pid
    url = bench.chat_url(server, bench.passage_chat)
    # Warm-up: the dataset's index, and the whole answer's frames (length, frame size).
    async with connect(url, additional_headers=bench.headers, **{**CLIENT_OPTIONS, "compression": None}) as ws:
        await ws.send(json.dumps({"question": PASSAGE_QUESTION}))
        sizes = []
        while True:
            message = await ws.recv()
            if message.endswith('"data":true}'):
                break
            if '"final":false' in message:
                sizes.append(wire_bytes(message))
    sockets = await connect_clamped(url, bench.headers, clients, rcvbuf, mss)
    reported_rcvbuf = sockets[0].transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    await asyncio.sleep(1.0)
    baseline = rss_mb(pid)
    frames_read = [0] * clients
    ids: list[tuple[str, str] | None] = [None] * clients
    done = [False] * clients
    samples: list[tuple[float, float, int, int]] = []
    stop = asyncio.Event()

    async def read(index: int, ws) -> None:
        await ws.send(json.dumps({"question": PASSAGE_QUESTION}))
        first = json.loads(await ws.recv())
        if not isinstance(first.get("data"), dict) or "session_id" not in first["data"]:
            raise RuntimeError(f"unexpected first frame: {first}")
        ids[index] = (first["data"]["session_id"], first["data"]["id"])
        frames_read[index] = 1
        if interval is None:
            await asyncio.Event().wait()  # never reads again
        while True:
            await asyncio.sleep(interval)
            message = await ws.recv()
            frames_read[index] += 1
            if message.endswith('"data":true}'):
                done[index] = True
                return

    started = time.perf_counter()
    sampling = asyncio.create_task(sampler(pid, server.port, started, samples, stop))
    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    finished, unfinished = await asyncio.wait(tasks, timeout=seconds)
    wall = time.perf_counter() - started
    for task in unfinished:
        task.cancel()
    # Each connection's queues, then drop them all at once (RST), so nothing moves between.
    queues = tcp_queues()
    for ws in sockets:
        ws.transport.abort()
    for task in finished:
        task.result()
    stop.set()
    await sampling
    peak = proc_status(pid)["VmHWM"] / 1024
    await asyncio.gather(*unfinished, return_exceptions=True)
    kernel = []
    for ws in sockets:
        port = ws.transport.get_extra_info("sockname")[1]
        kernel.append(queues.get((server.port, port), (0, 0))[0] + queues.get((port, server.port), (0, 0))[1])
    result = StallResult(
        label, clients, interval, len(sizes), statistics.mean(sizes), reported_rcvbuf, samples, baseline, peak,
        frames_read, wall=wall, completed=sum(done),
    )
    known = [(i, pair) for i, pair in enumerate(ids) if pair is not None]
    counts = await saved_token_counts(bench, server, bench.passage_chat, [pair for _, pair in known])
    result.frames_read = [frames_read[i] for i, _ in known]
    result.kernel = [kernel[i] for i, _ in known]
    result.produced = counts
    await asyncio.sleep(2.0)
    result.after_close = rss_mb(pid)
    return result


#: The steady-state window at the end of a slow-reader run, seconds.
LAST_SECONDS = 15


def stalled_tables(results: list[StallResult], every: int = 5) -> str:
    header = "| t (s) | " + " | ".join(f"{r.label}: RSS MB (threads) / kernel queues MB" for r in results) + " |"
    lines = [header, "|---:|" + "---:|" * len(results)]
    longest = max(len(r.samples) for r in results)
    for second in range(longest):
        if second % every and second != longest - 1:
            continue
        cells = []
        for r in results:
            if second < len(r.samples):
                _, rss, threads, queued = r.samples[second]
                cells.append(f"{rss:.0f} ({threads}) / {queued / 1e6:.1f}")
            else:
                cells.append("")
        lines.append(f"| {second} | " + " | ".join(cells) + " |")

    def mean_max(values: list[float]) -> str:
        return f"{statistics.mean(values):.0f} / {max(values):.0f}" if values else "n/a"

    def growth(r: StallResult, column: int, scale: float) -> str:
        late = [s for s in r.samples if s[0] >= r.samples[-1][0] - LAST_SECONDS]
        if len(late) < 2:
            return "n/a"
        return f"{(late[-1][column] - late[0][column]) / scale:+.1f} MB in {late[-1][0] - late[0][0]:.0f} s"

    rows = [
        ("clients", lambda r: str(r.clients)),
        ("reader", lambda r: "never reads after frame 1" if r.interval is None else f"1 frame / {r.interval:g} s"),
        ("answer length (frames)", lambda r: str(r.answer_frames)),
        ("mean frame size on the wire (bytes)", lambda r: f"{r.frame_bytes:.0f}"),
        ("client receive buffer (bytes, as reported)", lambda r: str(r.rcvbuf)),
        ("run time (s)", lambda r: f"{r.wall:.1f}"),
        ("answers completed", lambda r: f"{r.completed}/{r.clients}"),
        ("answers whose partial text was found", lambda r: f"{sum(p >= 0 for p in r.produced)}/{r.clients}"),
        ("frames read per client (mean / max)", lambda r: mean_max(r.frames_read)),
        ("frames produced per stream (mean / max)", lambda r: mean_max([p for p in r.produced if p >= 0])),
        ("in kernel socket queues per stream (frames, mean / max)", lambda r: mean_max([k / r.frame_bytes for k in r.kernel])),
        ("**held in the server process per stream (frames, mean / max)**", lambda r: mean_max(r.held())),
        ("server bound: bridge + in hand + 64 KiB transport (frames)",
         lambda r: f"{r.bound:.0f} = {STREAM_QUEUE_FRAMES} + {IN_HAND} + {r.transport_frames:.0f}"),
        ("+ taken off the socket by the client library, not yet read (≤ one read + 1)",
         lambda r: f"≤ {r.client_library:.0f}"),
        ("kernel socket queues at the end (MB total)", lambda r: f"{sum(r.kernel) / 1e6:.1f}"),
        ("RSS baseline, clients connected (MB)", lambda r: f"{r.baseline:.0f}"),
        ("RSS peak, VmHWM (MB)", lambda r: f"{r.peak:.0f}"),
        ("peak - baseline (MB)", lambda r: f"{r.peak - r.baseline:.0f}"),
        ("peak - baseline per stream (KB)", lambda r: f"{(r.peak - r.baseline) * 1024 / r.clients:.0f}"),
        (f"RSS growth over the last {LAST_SECONDS} s", lambda r: growth(r, 1, 1.0)),
        (f"kernel queues growth over the last {LAST_SECONDS} s", lambda r: growth(r, 3, 1e6)),
        ("RSS 2 s after the clients left (MB)", lambda r: f"{r.after_close:.0f}"),
    ]
    summary = [
        "| | " + " | ".join(r.label for r in results) + " |",
        "|---|" + "---:|" * len(results),
        *(f"| {name} | " + " | ".join(cell(r) for r in results) + " |" for name, cell in rows),
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(summary)


@dataclass
class FastResult:
    label: str
    clients: int
    chunks: int
    samples: list[tuple[float, float, int, int]]
    baseline: float
    peak: float
    frames_read: list[int]
    wall: float = 0.0
    completed: int = 0
    after_close: float = 0.0
    timed_out: bool = False


async def measure_fast(bench: Bench, server: ServerProcess, chat_id: str, label: str, clients: int, chunks: int) -> FastResult:
    pid = server.process.pid
    sockets = await connect_many(bench.chat_url(server, chat_id), bench.headers, clients)
    await asyncio.sleep(1.0)
    baseline = rss_mb(pid)
    frames_read = [0] * clients
    done = [False] * clients
    samples: list[tuple[float, float, int, int]] = []
    stop = asyncio.Event()

    async def read(index: int, ws) -> None:
        await ws.send(json.dumps({"question": QUESTION}))
        while True:
            message = await ws.recv()
            frames_read[index] += 1
            if message.endswith('"data":true}'):
                done[index] = True
                return

    started = time.perf_counter()
    sampling = asyncio.create_task(sampler(pid, server.port, started, samples, stop))
    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    finished, unfinished = await asyncio.wait(tasks, timeout=FAST_TIMEOUT)
    wall = time.perf_counter() - started
    for task in finished:
        task.result()
    stop.set()
    await sampling
    peak = proc_status(pid)["VmHWM"] / 1024
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    await close_all(sockets)
    result = FastResult(
        label, clients, chunks, samples, baseline, peak, frames_read, wall=wall, completed=sum(done),
        timed_out=bool(unfinished),
    )
    await asyncio.sleep(2.0)
    result.after_close = rss_mb(pid)
    return result


def fast_table(r: FastResult) -> str:
    rss = ", ".join(f"{s[1]:.0f}" for s in r.samples[::5])
    rows = [
        ("clients", str(r.clients)),
        ("answer length (chunks)", str(r.chunks)),
        ("run time (s)", f"{r.wall:.1f}" + (" (cut)" if r.timed_out else "")),
        ("answers completed", f"{r.completed}/{r.clients}"),
        ("frames read per client (mean)", f"{statistics.mean(r.frames_read):.0f}"),
        ("RSS every 5 s (MB)", rss),
        ("RSS baseline → peak, VmHWM (MB)", f"{r.baseline:.0f} → {r.peak:.0f}"),
        ("peak - baseline per stream (KB)", f"{(r.peak - r.baseline) * 1024 / r.clients:.0f}"),
        ("RSS 2 s after the clients left (MB)", f"{r.after_close:.0f}"),
    ]
    return "\n".join([f"| {r.label} | value |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)])


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
        stalled = []
        interval = f"1 frame / {args.slow_interval:g} s"
        runs: list[tuple[str, float | None, dict[str, str]]] = [(interval, args.slow_interval, {}), ("never reads", None, {})]
        if redis_available():  # control: frames sent are not kept in the process
            runs.append(("never reads, Redis log", None, {"RAGSOCKET_REDIS_URL": REDIS_URL}))
        for label, pace, extra in runs:
            name = "slow-" + label.replace(", ", "-").replace(" / ", "-per-").replace(" ", "-")
            # full-speed producer; clients that do not read cannot answer pings
            server = bench.start(name, RAGSOCKET_OFFLINE_TOKEN_DELAY="0", RAGSOCKET_WS_PING_INTERVAL="3600", **extra)
            stalled.append(await measure_stalled(
                bench, server, label, args.slow, pace, args.slow_seconds, args.client_rcvbuf, args.client_mss,
            ))
            server.stop()
            stage(label, begun)
        print(
            f"\n## 2. Slow readers ({args.slow} clients, {args.slow_seconds:g} s; offline model at full speed; "
            f"client sockets: SO_RCVBUF {args.client_rcvbuf or 'OS default'}, MSS {args.client_mss or 'OS default'})\n\n"
            f"# per-stream bound in the bridge: RAGSOCKET_STREAM_QUEUE_FRAMES={STREAM_QUEUE_FRAMES} frames\n\n"
            f"{stalled_tables(stalled)}",
            flush=True,
        )
        if args.fast_chunks:
            begun = time.monotonic()
            label = f"fast, long-{args.fast_chunks}"
            model = f"long-{args.fast_chunks}"
            server = bench.start("fast", RAGSOCKET_LLM_MODEL=model)
            chat_id = await bench.long_chat(server, model)
            fast = await measure_fast(bench, server, chat_id, label, args.slow, args.fast_chunks)
            server.stop()
            stage(label, begun)
            print(f"\n## 2b. Fast readers ({args.slow} clients, read to the end)\n\n{fast_table(fast)}", flush=True)

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
    parser.add_argument("--slow-seconds", type=float, default=90.0, help="length of a slow-reader run, s (default 90)")
    parser.add_argument(
        "--slow-interval", type=float, default=1.0, help="seconds between two reads of a slow reader (default 1.0)",
    )
    parser.add_argument(
        "--client-rcvbuf", type=int, default=4096, help="slow readers' SO_RCVBUF, bytes (default 4096; 0: OS default)",
    )
    parser.add_argument(
        "--client-mss", type=int, default=536, help="slow readers' TCP_MAXSEG, bytes (default 536; 0: OS default)",
    )
    parser.add_argument(
        "--passage-words", type=int, default=2000,
        help="words in each of the 3 passages the slow readers' answer is made of (default 2000: 6000 frames; max 8190)",
    )
    parser.add_argument(
        "--fast-chunks", type=int, default=1000,
        help="answer length of the fast-reader run (default 1000: 200 x 5000 frames would take ~5 min here; 0 skips)",
    )
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
        bench = Bench(Path(folder), llm, passage_words=args.passage_words)
        try:
            asyncio.run(run(args, bench))
        finally:
            for _, server in bench.servers:
                server.stop()
            llm.stop()


if __name__ == "__main__":
    main()
