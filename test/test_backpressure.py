"""A reader that stops reading never makes the server buffer more than a bounded
number of frames per request — against a real server process.

The server answers with the built-in offline model at full speed
(``RAGSOCKET_OFFLINE_TOKEN_DELAY=0``) from a dataset made of three long passages with
no sentence end, each one chunk (``chunk_token_num`` 8192), so the offline answer to
QUESTION is those three passages: ~24 000 words, one frame each, produced in a second
or two when nothing holds the producer back.

Each client asks QUESTION, reads the first frame and then stops reading. Its socket has
a small receive buffer and a small MSS (so the server's kernel send buffer, which
autotunes with the MSS, stays ~200 KB instead of growing to megabytes and swallowing
the whole answer), and the websockets client queues one message at most. While the
clients stall, nothing moves: the frames that left the server process sit in the two
kernel socket queues of each connection, which ``/proc/net/tcp`` reports.

What is asserted, for a stalled reader:

* **Frames held by the server process are bounded.** After the stall the client drops
  the connection; the server stops the answer and saves the partial text, whose word
  count is what the producer had made (one word per frame). Held by the server =
  produced − frames the client took off its socket − frames in the kernel queues. With
  the bridge's bound that is at most the bridge buffer (``stream_queue_frames``), the
  item in the consumer's hands, and what hypercorn's transport may buffer before
  ``drain()`` blocks (64 KiB): a few hundred frames. An unbounded bridge would hold
  everything the producer made: ~23 000 frames. A second test runs the same
  measurement on a server configured with a 10 000-frame buffer and checks that it
  reports thousands of frames held, so the measurement does see a large buffer when
  there is one.
* **The producer is paused, not just slow to send.** During the stall the answer is
  not saved (the service saves it when the generator ends); once the client reads
  again, the answer completes, and the concatenated deltas equal the saved answer.

Server RSS is not asserted: with passages this long, each request's fixed cost (the
retrieved passages, the prompt, a new worker thread's allocator arena: ~3–4 MB) is of
the same size as what buffering this answer without bound would add (~140 bytes per
event), so a memory threshold could not tell the two apart reliably on a busy machine;
the frame count can, by a factor of 20 or more. ``test.benchmark.ws_protocol`` reports
RSS over time for 200 stalled readers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    make_chat,
    ok,
    saved_session_sync,
    sync_api_client,
    variant_env,
    wait_parsed,
)
from test.support.ws import (
    chat_url,
    content_frames,
    joined_answer,
    read_answer,
    recv_json,
)

pytestmark = pytest.mark.timeout(240)

#: The bridge's bound under test (the default of ``RAGSOCKET_STREAM_QUEUE_FRAMES``).
STREAM_QUEUE_FRAMES = 32
#: The control: a bridge buffer far larger than what the kernel queues can take.
LARGE_QUEUE_FRAMES = 10_000
#: Readers stalled at once; the first half reads again after the stall, the others leave.
READERS = 4
#: How long the readers stop reading, seconds. Unbounded, the producer makes the whole
#: answer in 1–2 s; bounded, it is blocked after a fraction of a second.
STALL_SECONDS = 6.0
#: Words per passage (each passage is one chunk and one offline "sentence").
PASSAGE_WORDS = 8000
QUESTION = "How does the lumen glow?"
#: asyncio's default write-buffer high-water mark: hypercorn's ``drain()`` returns once
#: the transport holds no more than this.
TRANSPORT_HIGH_WATER = 64 * 1024
#: Client socket: receive buffer (the kernel doubles it) and MSS advertised to the server.
CLIENT_RCVBUF = 4096
CLIENT_MSS = 536
#: Seconds to wait for a dropped answer's partial text to be saved.
SAVE_TIMEOUT = 30.0


def passage(index: int) -> str:
    """One long sentence holding both question words, then distinct words."""
    return "lumen glow " + " ".join(f"beam{index}x{i:05d}" for i in range(PASSAGE_WORDS))


DOCUMENT = "\n\n".join(passage(index) for index in range(3))


# -- fixtures ------------------------------------------------------------------------


def backpressure_env(server_env: dict, tmp_path_factory, name: str, queue_frames: int) -> dict:
    return variant_env(
        server_env, tmp_path_factory, name,
        RAGSOCKET_STREAM_QUEUE_FRAMES=str(queue_frames),
        RAGSOCKET_OFFLINE_TOKEN_DELAY="0",
        # a stalled client cannot answer pings; keep them out of the test's window
        RAGSOCKET_WS_PING_INTERVAL="600",
        RAGSOCKET_ACCESS_LOG="",
    )


@pytest.fixture(scope="module")
def bounded_server(server_env: dict, tmp_path_factory) -> ServerProcess:
    with ServerProcess(backpressure_env(server_env, tmp_path_factory, "backpressure", STREAM_QUEUE_FRAMES)) as process:
        yield process


@pytest.fixture(scope="module")
async def long_chat(bounded_server: ServerProcess, tenant: Tenant) -> str:
    """A chat whose offline answer to QUESTION is the three passages (~24 000 frames)."""
    async with api_client(bounded_server, tenant) as api:
        body = {"name": f"backpressure-{time.monotonic_ns()}", "parser_config": {"chunk_token_num": 8192}}
        dataset_id = ok(await api.post("/datasets", json=body))["id"]
        docs = ok(await api.post(f"/datasets/{dataset_id}/documents", files=[("file", ("lumen.txt", DOCUMENT.encode()))]))
        ok(await api.post(f"/datasets/{dataset_id}/chunks", json={"document_ids": [d["id"] for d in docs]}))
        (doc,) = await wait_parsed(api, dataset_id)
        assert doc["run"] == "DONE" and doc["chunk_count"] == 3, doc
        return (await make_chat(api, [dataset_id]))["id"]


# -- measurement ---------------------------------------------------------------------


def tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) → (tx_queue, rx_queue) bytes of established IPv4 TCP sockets."""
    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "01":  # ESTABLISHED
            continue
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        tx, rx = (int(value, 16) for value in fields[4].split(":"))
        queues[(local, remote)] = (tx, rx)
    return queues


def wire_bytes(text: str) -> int:
    """Size on the wire of a server-to-client text frame (unmasked, no compression)."""
    size = len(text.encode())
    return size + (2 if size < 126 else 4 if size < 65536 else 10)


@dataclass
class Reader:
    """One client that asked QUESTION, read the first frame and stopped reading."""

    ws: ClientConnection
    first: dict
    rcvbuf: int
    port: int

    @property
    def session_id(self) -> str:
        return self.first["data"]["session_id"]

    @property
    def message_id(self) -> str:
        return self.first["data"]["id"]


async def open_reader(server: ServerProcess, tenant: Tenant, chat_id: str) -> Reader:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, CLIENT_MSS)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(
        chat_url(server, chat_id), sock=sock, additional_headers=auth(tenant),
        max_queue=1, compression=None, ping_interval=None, max_size=None, close_timeout=1,
    )
    await ws.send(json.dumps({"question": QUESTION}))
    first = await recv_json(ws)
    assert first["code"] == 0 and first["data"]["seq"] == 1, first
    return Reader(ws, first, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), sock.getsockname()[1])


def assistant_message(http: httpx.Client, chat_id: str, reader: Reader) -> dict | None:
    messages = saved_session_sync(http, chat_id, reader.session_id)["messages"]
    found = [m for m in messages if m["role"] == "assistant" and m.get("id") == reader.message_id]
    return found[0] if found else None


def wait_assistant_message(server: ServerProcess, tenant: Tenant, chat_id: str, reader: Reader) -> dict:
    with sync_api_client(server, tenant) as http:
        deadline = time.monotonic() + SAVE_TIMEOUT
        while time.monotonic() < deadline:
            if (message := assistant_message(http, chat_id, reader)) is not None:
                return message
            time.sleep(0.1)
    raise AssertionError(f"the answer {reader.message_id} was never saved")


@dataclass
class Held:
    """Where a dropped reader's frames were when it left (frames, estimated from bytes)."""

    produced: int
    read: int
    kernel: float
    server: float


async def stall(server: ServerProcess, tenant: Tenant, chat_id: str) -> tuple[list[Reader], dict, list[dict]]:
    """Warm up with one full answer, open READERS stalled readers, wait STALL_SECONDS.

    Returns:
        (the readers, their kernel queues by client port as (server tx, client rx)
        bytes, the warm-up answer's frames).
    """
    async with connect(chat_url(server, chat_id), additional_headers=auth(tenant), max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"question": QUESTION}))
        reference = await read_answer(ws)
    readers = [await open_reader(server, tenant, chat_id) for _ in range(READERS)]
    await asyncio.sleep(STALL_SECONDS)
    queues = tcp_queues()
    kernel = {r.port: (queues[(server.port, r.port)][0], queues[(r.port, server.port)][1]) for r in readers}
    return readers, kernel, reference


async def drop_and_count(
    server: ServerProcess, tenant: Tenant, chat_id: str, readers: list[Reader], kernel: dict, frame_bytes: float
) -> list[Held]:
    """Drop the readers' connections and count, from the saved partial answers, what
    each producer had made and where those frames were."""
    for reader in readers:
        reader.ws.transport.abort()
    held = []
    for reader in readers:
        message = await asyncio.to_thread(wait_assistant_message, server, tenant, chat_id, reader)
        produced = len(message["content"].split())
        in_kernel = sum(kernel[reader.port]) / frame_bytes
        held.append(Held(produced, 1, in_kernel, produced - 1 - in_kernel))
    return held


def mean_frame_bytes(frames: list[dict]) -> float:
    """Mean wire size of a delta frame, as the server sends it (compact JSON)."""
    deltas = [f for f in content_frames(frames) if not f["data"].get("final")]
    return statistics.mean(wire_bytes(json.dumps(f, separators=(",", ":"), ensure_ascii=False)) for f in deltas)


def server_bound(reader: Reader, frame_bytes: float) -> float:
    """Most frames a bounded server may hold for one stalled reader, counted generously:
    the bridge buffer, the generator's item waiting for room and the consumer's item
    being sent, what the transport buffers before drain() blocks (64 KiB + a frame),
    plus what the client library took in one read (its receive buffer) and queued —
    then doubled."""
    expected = STREAM_QUEUE_FRAMES + 2 + (TRANSPORT_HIGH_WATER + reader.rcvbuf) / frame_bytes + 2
    return 2 * expected


# -- tests ---------------------------------------------------------------------------


async def test_stalled_readers_hold_a_bounded_number_of_frames_in_the_server(bounded_server, tenant, long_chat):
    readers, kernel, reference = await stall(bounded_server, tenant, long_chat)
    expected_answer = joined_answer(reference)
    total = len(content_frames(reference)) - 1  # deltas, without the final frame
    assert total > 20_000, f"the answer is too short to test back-pressure: {total} frames"
    frame_bytes = mean_frame_bytes(reference)

    # Paused: after STALL_SECONDS of a full-speed producer, no answer has ended.
    with sync_api_client(bounded_server, tenant) as http:
        saved = [assistant_message(http, long_chat, r) for r in readers]
    ended_words = [len(m["content"].split()) for m in saved if m is not None]
    assert ended_words == [], (
        f"{len(ended_words)} of {READERS} answers ended (words: {ended_words}) while their readers "
        f"were stalled after 1 frame: the producer was not held back"
    )

    half = READERS // 2
    held = await drop_and_count(bounded_server, tenant, long_chat, readers[half:], kernel, frame_bytes)
    bound = server_bound(readers[half], frame_bytes)
    details = "; ".join(
        f"produced {h.produced}, read {h.read}, in kernel queues ~{h.kernel:.0f}, held by the server ~{h.server:.0f}"
        for h in held
    )
    for h in held:
        assert h.produced < total, f"the producer made the whole answer while its reader was stalled ({details})"
        assert h.server <= bound, f"server held more than {bound:.0f} frames for a stalled reader ({details})"

    # Resumed: the rest of the answer arrives, complete, and is what the server saved.
    for reader in readers[:half]:
        frames = [reader.first, *await read_answer(reader.ws)]
        await reader.ws.close()
        final = content_frames(frames)[-1]["data"]
        assert final["final"] is True and not final.get("interrupted"), final
        assert len(content_frames(frames)) - 1 == total
        answer = joined_answer(frames)
        assert answer == expected_answer
        message = await asyncio.to_thread(wait_assistant_message, bounded_server, tenant, long_chat, reader)
        assert message["content"] == answer


async def test_the_measurement_sees_a_large_buffer(server_env, tmp_path_factory, tenant, long_chat):
    """The same measurement on a server whose bridge buffers 10 000 frames per stream:
    it must report thousands of frames held, far above the bound asserted above."""
    env = backpressure_env(server_env, tmp_path_factory, "backpressure-large", LARGE_QUEUE_FRAMES)
    with ServerProcess(env) as large:
        readers, kernel, reference = await stall(large, tenant, long_chat)
        frame_bytes = mean_frame_bytes(reference)
        held = await drop_and_count(large, tenant, long_chat, readers, kernel, frame_bytes)
    bound = server_bound(readers[0], frame_bytes)
    servers = [round(h.server) for h in held]
    assert all(h.server > 5 * bound for h in held), (
        f"a {LARGE_QUEUE_FRAMES}-frame buffer showed as {servers} frames held (bound {bound:.0f})"
    )
