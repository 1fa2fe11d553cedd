"""The production WebSocket protocol against real servers (``docs/websocket_api.md``).

req_id multiplexing, seq numbers, stop, application ping, idle timeout, keepalive
pings, size/type limits and close codes, connection and rate limits, browser-safe
authentication (tickets, subprotocol, Origin), log redaction, and the seed routes.

Servers: the shared ``server`` (seed routes, health), a module-scoped "strict" server
(slow-ish model, small message and question limits, fast keepalive, an Origin allow
list) and a "tight" server (1 s idle timeout, 3 connections per process, 2 per key,
3 questions per minute). All share the run's database, so the corpus made on
``server`` is asked on all three.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    corpus_files,
    create_tenant,
    make_chat,
    make_corpus,
    ok,
    run_cli,
    session_messages,
    variant_env,
)
from test.support.ws import (
    agent_url,
    chat_url,
    content_frames,
    joined_answer,
    read_answer,
    recv_json,
)

RETURNS_Q = "How many days do I have to return a purchase?"
SHIPPING_Q = "How long does standard shipping take?"
ALLOWED_ORIGIN = "https://app.example.com"
TICKET_SALT = "ragsocket-ws-ticket"
FRAME_TIMEOUT = 10.0


# -- servers and data ------------------------------------------------------------------
@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir: Path) -> dict:
    """alice's parsed dataset of the shipped documents and an offline-model chat over it
    (made before the extra servers start: a starting server re-queues documents that
    are still parsing)."""
    dataset_id, _, (chat_id,) = await make_corpus(server, tenant, corpus_files(corpus_dir), {})
    return {"dataset_id": dataset_id, "chat_id": chat_id}


@pytest.fixture(scope="module")
def extra_tenants(server: ServerProcess) -> dict[str, Tenant]:
    """bob and carol: tenants used on the tight server (own keys, own limits)."""
    with ThreadPoolExecutor(2) as pool:
        bob, carol = pool.map(lambda name: create_tenant(server.env, name), ["bob", "carol"])
    return {"bob": bob, "carol": carol}


@pytest.fixture(scope="module")
async def extra_chats(server: ServerProcess, extra_tenants: dict[str, Tenant]) -> dict[str, str]:
    """A chat without datasets for bob and for carol (answers: the empty response)."""
    chats = {}
    for name, who in extra_tenants.items():
        async with api_client(server, who.api_key) as api:
            chats[name] = (await make_chat(api, []))["id"]
    return chats


@pytest.fixture(scope="module")
def servers(server_env: dict, tmp_path_factory: pytest.TempPathFactory, corpus: dict):
    """The strict and tight servers, started in parallel."""
    strict = ServerProcess(variant_env(
        server_env, tmp_path_factory, "strict",
        RAGSOCKET_OFFLINE_TOKEN_DELAY="0.02",
        RAGSOCKET_WS_MAX_MESSAGE_BYTES="4096",
        RAGSOCKET_MAX_QUESTION_CHARS="1000",
        RAGSOCKET_WS_PING_INTERVAL="0.5",
        RAGSOCKET_WS_PONG_TIMEOUT="1",
        RAGSOCKET_WS_ALLOWED_ORIGINS=ALLOWED_ORIGIN,
        RAGSOCKET_ACCESS_LOG="-",
        RAGSOCKET_RATE_LIMIT_PER_MINUTE="1000",
    ))
    tight = ServerProcess(variant_env(
        server_env, tmp_path_factory, "tight",
        RAGSOCKET_OFFLINE_TOKEN_DELAY="0.15",
        RAGSOCKET_WS_IDLE_TIMEOUT="1",
        RAGSOCKET_WS_MAX_CONNECTIONS="3",
        RAGSOCKET_WS_MAX_CONNECTIONS_PER_KEY="2",
        RAGSOCKET_RATE_LIMIT_PER_MINUTE="3",
    ))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(ServerProcess.start, [strict, tight]))
    try:
        yield {"strict": strict, "tight": tight}
    finally:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServerProcess.stop, [strict, tight]))


@pytest.fixture(scope="module")
def strict(servers) -> ServerProcess:
    return servers["strict"]


@pytest.fixture(scope="module")
def tight(servers) -> ServerProcess:
    return servers["tight"]


# -- helpers --------------------------------------------------------------------------
def seed_url(srv: ServerProcess, path: str) -> str:
    return f"{srv.ws_root}/v1/ws/{path}"


def now_ms() -> int:
    return int(time.time() * 1000)


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def read_until_markers(ws: ClientConnection, req_ids: list[str], timeout: float = FRAME_TIMEOUT) -> list[dict]:
    """Frames until the completion marker of each req_id (a list: repeats count)."""
    waiting = list(req_ids)
    frames = []
    while waiting:
        frame = await recv_json(ws, timeout)
        frames.append(frame)
        if frame.get("data") is True and frame.get("req_id") in waiting:
            waiting.remove(frame["req_id"])
    return frames


def of(frames: list[dict], req_id: str | None) -> list[dict]:
    """The frames of one request (None: frames without req_id)."""
    return [f for f in frames if f.get("req_id") == req_id]


async def closed_with(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> tuple[int | None, str | None, list]:
    """Read until the server closes; returns (code, reason, frames read before)."""
    frames = []
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return ws.close_code, ws.close_reason, frames


async def pong_ok(ws: ClientConnection) -> None:
    """The connection is open and served: an application ping gets its pong."""
    await send(ws, type="ping", req_id="alive")
    frame = await recv_json(ws)
    assert frame["type"] == "pong" and frame["req_id"] == "alive", frame


async def saved_messages(srv: ServerProcess, key: str, chat_id: str, session_id: str) -> list[dict]:
    async with api_client(srv, key) as api:
        return await session_messages(api, chat_id, session_id)


def error(code: int, message: str, req_id: str | None = None) -> dict:
    frame = {"code": code, "message": message, "data": {"answer": f"**ERROR**: {message}", "reference": []}}
    if req_id is not None:
        frame["req_id"] = req_id
    return frame


def marker(req_id: str | None = None) -> dict:
    frame = {"code": 0, "message": "", "data": True}
    if req_id is not None:
        frame["req_id"] = req_id
    return frame


def assert_complete_answer(frames: list[dict], req_id: str | None) -> list[dict]:
    """One request's frames: numbered deltas, one final frame, then the marker."""
    content = content_frames(frames)
    assert frames[-1] == marker(req_id)
    assert [f["code"] for f in frames] == [0] * len(frames), frames
    assert [f["data"]["seq"] for f in content] == list(range(1, len(content) + 1))
    assert [f["data"]["final"] for f in content] == [False] * (len(content) - 1) + [True]
    assert all(f.get("req_id") == req_id for f in frames)
    assert "interrupted" not in content[-1]["data"]
    return content


async def wait_no_connections(srv: ServerProcess, timeout: float = 5.0) -> None:
    """Until the server counts no open WebSocket (GET /health)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            count = (await client.get(f"{srv.api_url}/health")).json()["data"]["websocket_connections"]
            if count == 0:
                return
            assert time.monotonic() < deadline, f"{count} connections still open"
            await asyncio.sleep(0.05)


class RawWebSocket:
    """A WebSocket client on a plain TCP stream: it never answers pings by itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    head: bytes = b""

    @classmethod
    async def open(cls, srv: ServerProcess, path: str, headers: dict[str, str]) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{srv.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), FRAME_TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        raw = cls(reader, writer)
        raw.head = head
        return raw

    async def read_frame(self, timeout: float = FRAME_TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; server frames are unmasked."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        assert not second & 0x80, "server frames must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def send_frame(self, opcode: int, payload: bytes, rsv1: bool = False) -> None:
        """One final, masked frame (``rsv1``: the permessage-deflate bit, RFC 7692)."""
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)], "big")).to_bytes(len(payload), "big")
        if len(payload) < 126:
            length = bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            length = bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            length = bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        self.writer.write(bytes([0x80 | (0x40 if rsv1 else 0) | opcode]) + length + mask + masked)
        await self.writer.drain()

    async def read_until_close(self, timeout: float) -> tuple[list[tuple[float, int, bytes]], int | None, str]:
        """Every frame until a close frame: ([(time, opcode, payload)], code, reason);
        code None when the server dropped the TCP connection without a close frame."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                opcode, payload = await self.read_frame(max(deadline - time.monotonic(), 0.01))
            except asyncio.IncompleteReadError:
                return frames, None, ""
            frames.append((time.monotonic(), opcode, payload))
            if opcode == 0x8:
                (code,) = struct.unpack("!H", payload[:2])
                return frames, code, payload[2:].decode()

    def close(self) -> None:
        self.writer.close()


# == 1. req_id ===========================================================================
async def test_req_id_requests_run_concurrently_and_echo_their_req_id(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q, req_id="a")
        await send(ws, question=SHIPPING_Q, req_id="b")
        frames = await read_until_markers(ws, ["a", "b"])
    assert {f.get("req_id") for f in frames} == {"a", "b"}, "every frame echoes its req_id"
    order = [f["req_id"] for f in frames]
    assert order.index("b") < len(order) - 1 - order[::-1].index("a"), f"frames do not interleave: {order}"
    assert order.index("a") < len(order) - 1 - order[::-1].index("b"), f"frames do not interleave: {order}"
    answers = {}
    for req_id, expected in (("a", "30 days"), ("b", "3 to 5 business days")):
        content = assert_complete_answer(of(frames, req_id), req_id)
        answers[req_id] = joined_answer(of(frames, req_id))
        assert expected in answers[req_id]
        final = content[-1]["data"]
        saved = await saved_messages(strict, tenant.api_key, corpus["chat_id"], final["session_id"])
        assert saved[-1]["id"] == final["id"] and saved[-1]["content"] == answers[req_id]
    assert answers["a"] != answers["b"]


async def test_fifth_concurrent_request_is_refused(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        for req_id in "abcd":
            await send(ws, question=RETURNS_Q, req_id=req_id)
        await send(ws, question=RETURNS_Q, req_id="e")
        frames = await read_until_markers(ws, list("abcde"))
    assert of(frames, "e") == [
        error(102, "too many requests running on this connection (limit 4)", "e"),
        marker("e"),
    ]
    for req_id in "abcd":
        assert_complete_answer(of(frames, req_id), req_id)
        assert "30 days" in joined_answer(of(frames, req_id))


async def test_busy_without_req_id_and_duplicate_req_id(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        # a request without req_id while one with req_id runs
        await send(ws, question=RETURNS_Q, req_id="a")
        await send(ws, question=SHIPPING_Q)
        # the same req_id again while it runs: refused with an error frame echoing "a" and
        # no completion marker (the running request "a" owns the marker)
        await send(ws, question=SHIPPING_Q, req_id="a")
        frames = await read_until_markers(ws, ["a"])
        plain = of(frames, None)
        if not plain or plain[-1] != marker():
            plain += await read_answer(ws)
        assert len(plain) == 2 and plain[1] == marker()
        assert plain[0]["code"] == 102 and plain[0]["message"].startswith("busy: a request is already running")
        refusals = [f for f in of(frames, "a") if f["code"] != 0]
        assert refusals == [error(101, "req_id 'a' is already running on this connection", "a")]
        answer = [f for f in of(frames, "a") if f not in refusals]
        assert answer.count(marker("a")) == 1
        assert_complete_answer(answer, "a")
        assert "30 days" in joined_answer(answer)

        # a request with req_id while one without req_id runs
        await send(ws, question=RETURNS_Q)
        await send(ws, question=SHIPPING_Q, req_id="b")
        frames = await read_until_markers(ws, ["b"])
        assert of(frames, "b") == [error(102, "busy: a request without req_id is running on this connection", "b"), marker("b")]
        rest = of(frames, None)
        if not rest or rest[-1] != marker():
            rest += await read_answer(ws)
        assert_complete_answer(rest, None)


async def test_refusals_while_an_untagged_answer_runs_have_no_marker(strict, tenant, corpus):
    """A client that sends only question/session_id/stream and reads until the marker
    must get the running answer whole: a message refused meanwhile gets its error
    frame, but no marker that would read as that answer's end."""
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q, session_id=None, stream=True)
        first = await recv_json(ws)
        await send(ws, question=SHIPPING_Q, session_id=None, stream=True)  # busy
        await ws.send("not json")  # invalid, no req_id
        await send(ws, type="resume", session_id="s", message_id="m")  # busy as well
        frames = [first] + await read_answer(ws)
        errors = [f for f in frames if f["code"] != 0]
        assert [(f["code"], f["message"][:5]) for f in errors] == [(102, "busy:"), (101, "inval"), (102, "busy:")], errors
        assert frames.count(marker()) == 1 and frames[-1] == marker()
        answer = [f for f in frames if f not in errors]
        assert_complete_answer(answer, None)
        assert "30 days" in joined_answer(answer)
        # nothing runs: a refusal ends with its marker again, and the next question is served
        await ws.send("not json")
        refused = await read_answer(ws)
        assert len(refused) == 2 and refused[0]["code"] == 101 and refused[1] == marker()
        assert_complete_answer(await read_first_answer(ws, {"question": SHIPPING_Q}), None)


async def test_req_id_longer_than_64_chars_is_refused(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q, req_id="x" * 65)
        assert await read_answer(ws) == [error(101, "`req_id` must be a string of at most 64 characters"), marker()]
        await send(ws, question=RETURNS_Q, req_id="y" * 64)
        frames = await read_until_markers(ws, ["y" * 64])
        assert_complete_answer(frames, "y" * 64)


async def test_client_without_new_fields_gets_the_old_frame_shapes(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        first = await read_first_answer(ws, {"question": RETURNS_Q, "stream": True})
        session_id = content_frames(first)[0]["data"]["session_id"]
        await send(ws, question=SHIPPING_Q, session_id=session_id, stream=True)
        frames = await read_answer(ws)
    for frame in first + frames:
        assert "req_id" not in frame
        assert set(frame) == {"code", "message", "data"}
    assert frames[-1] == marker()
    for frame in content_frames(frames):
        assert set(frame["data"]) == {"answer", "reference", "id", "session_id", "final", "seq"}
        assert frame["data"]["session_id"] == session_id
    assert_complete_answer(frames, None)
    assert "3 to 5 business days" in joined_answer(frames)


async def read_first_answer(ws: ClientConnection, message: dict) -> list[dict]:
    await ws.send(json.dumps(message))
    return await read_answer(ws)


# == 2. seq ==============================================================================
async def test_seq_numbers_content_frames_per_message(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        streamed = await read_first_answer(ws, {"question": RETURNS_Q})
        second = await read_first_answer(ws, {"question": RETURNS_Q, "legacy": True})
        whole = await read_first_answer(ws, {"question": RETURNS_Q, "stream": False})
    for frames in (streamed, second):
        content = assert_complete_answer(frames, None)
        assert len(content) > 3
        assert [f["data"]["seq"] for f in content] == list(range(1, len(content) + 1)), "restarts at 1 per message"
    assert content_frames(streamed)[0]["data"]["id"] != content_frames(second)[0]["data"]["id"]
    assert len(whole) == 2 and whole[0]["data"]["seq"] == 1 and whole[0]["data"]["final"] is True


# == 3. stop =============================================================================
async def test_stop_by_req_id_interrupts_saves_partial_and_connection_goes_on(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q, req_id="a")
        first = await recv_json(ws)
        assert first["req_id"] == "a" and first["data"]["seq"] == 1
        await send(ws, type="stop", req_id="a")
        frames = [first] + await read_until_markers(ws, ["a"])
        content = content_frames(frames)
        assert frames[-1] == marker("a") and frames[-2] is content[-1]
        last = content[-1]["data"]
        assert last["final"] is True and last["interrupted"] is True and last["answer"] == ""
        assert [f["data"]["seq"] for f in content] == list(range(1, len(content) + 1))
        partial = joined_answer(frames)
        saved = await saved_messages(strict, tenant.api_key, corpus["chat_id"], last["session_id"])
        assert saved[-1]["id"] == last["id"] and saved[-1]["interrupted"] is True
        assert saved[-1]["content"] == partial
        assert "30 days of delivery for a full refund." not in partial, "stopped before the end"

        await send(ws, question=RETURNS_Q, req_id="b")
        again = await read_until_markers(ws, ["b"])
        assert_complete_answer(again, "b")
        assert "30 days" in joined_answer(again)


async def test_stop_without_req_id_stops_the_running_request(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q)
        first = await recv_json(ws)
        await send(ws, type="stop")
        frames = [first] + await read_answer(ws)
        content = content_frames(frames)
        assert frames[-1] == marker() and frames[-2] is content[-1]
        assert content[-1]["data"]["final"] is True and content[-1]["data"]["interrupted"] is True
        again = await read_first_answer(ws, {"question": SHIPPING_Q})
        assert_complete_answer(again, None)


async def test_stop_of_unknown_request_is_an_error(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, type="stop", req_id="nope")
        assert await read_until_markers(ws, ["nope"]) == [
            error(102, "no running request with req_id 'nope' to stop", "nope"),
            marker("nope"),
        ]
        await send(ws, type="stop")
        assert await read_answer(ws) == [error(102, "no running request to stop"), marker()]


# == 4. ping =============================================================================
async def test_application_ping_gets_pong(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, type="ping")
        pong = await recv_json(ws)
        assert set(pong) == {"type", "ts"} and pong["type"] == "pong"
        assert isinstance(pong["ts"], int) and abs(pong["ts"] - now_ms()) < 2000
        await send(ws, type="ping", req_id="p1")
        pong = await recv_json(ws)
        assert pong == {"type": "pong", "ts": pong["ts"], "req_id": "p1"} and abs(pong["ts"] - now_ms()) < 2000

        # while an answer streams
        await send(ws, question=RETURNS_Q, req_id="a")
        first = await recv_json(ws)
        await send(ws, type="ping", req_id="p2")
        frames = [first] + await read_until_markers(ws, ["a"])
        pongs = [f for f in frames if f.get("type") == "pong"]
        assert len(pongs) == 1 and pongs[0]["req_id"] == "p2"
        assert frames.index(pongs[0]) < frames.index(marker("a"))
        frames.remove(pongs[0])
        assert_complete_answer(frames, "a")


# == 5. idle timeout (tight server: 1 s) =================================================
async def test_idle_connection_is_closed_with_1000(tight, tenant, corpus):
    await wait_no_connections(tight)
    async with connect(chat_url(tight, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        started = time.monotonic()
        code, reason, frames = await closed_with(ws)
        elapsed = time.monotonic() - started
    assert (code, reason, frames) == (1000, "idle timeout", [])
    assert 0.8 <= elapsed <= 2.5, elapsed


async def test_idle_timeout_does_not_cut_a_running_answer(tight, tenant, corpus):
    await wait_no_connections(tight)
    async with connect(chat_url(tight, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        started = time.monotonic()
        frames = await read_first_answer(ws, {"question": RETURNS_Q})
        answered = time.monotonic()
        code, reason, after = await closed_with(ws)
        closed = time.monotonic()
    assert answered - started > 1.5, "the answer must outlast the idle timeout"
    assert_complete_answer(frames, None)
    assert "30 days" in joined_answer(frames)
    assert (code, reason, after) == (1000, "idle timeout", [])
    assert closed - answered <= 2.5


async def test_idle_timer_restarts_when_the_answer_ends(tight, tenant, corpus):
    await wait_no_connections(tight)
    async with connect(chat_url(tight, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question=RETURNS_Q)
        await asyncio.sleep(1.6)  # 0.6 s into the server's second idle wait
        await send(ws, type="stop")
        frames = await read_answer(ws)
        ended = time.monotonic()
        code, reason, _ = await closed_with(ws)
        gap = time.monotonic() - ended
    assert content_frames(frames)[-1]["data"]["interrupted"] is True
    assert (code, reason) == (1000, "idle timeout")
    assert gap >= 0.8, f"closed {gap:.2f} s after the answer ended; the idle timeout is 1 s"


# == 6. keepalive (strict server: ping every 0.5 s, pong timeout 1 s) ====================
async def test_keepalive_pings_keep_clients_and_drop_silent_ones(strict, tenant, corpus):
    async def polite() -> None:
        async with connect(
            chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key), ping_interval=None
        ) as ws:
            await asyncio.sleep(3)
            await pong_ok(ws)

    async def silent() -> tuple[list, int, str, float]:
        raw = await RawWebSocket.open(strict, f"/api/v1/ws/chats/{corpus['chat_id']}/completions", auth(tenant.api_key))
        opened = time.monotonic()
        try:
            frames, code, reason = await raw.read_until_close(timeout=6)
        finally:
            raw.close()
        return frames, code, reason, opened

    _, (frames, code, reason, opened) = await asyncio.gather(polite(), silent())
    assert (code, reason) == (1011, "keepalive ping timeout")
    opcodes = [opcode for _, opcode, _ in frames]
    assert opcodes[0] == 0x9 and set(opcodes[:-1]) == {0x9}, opcodes
    first_ping = frames[0][0]
    closed = frames[-1][0]
    assert 0.8 <= closed - first_ping <= 3.0
    assert closed - opened <= 4.0


# == 7. limits and close codes ===========================================================
async def test_message_larger_than_limit_closes_with_1009(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await pong_ok(ws)
        await send(ws, question="lamp " * 1000)  # 5000 bytes > 4096
        code, _, frames = await closed_with(ws)
    assert code == 1009 and frames == []


async def test_message_limit_counts_bytes_not_characters(strict, tenant, corpus):
    message = json.dumps({"question": RETURNS_Q, "note": "中" * 2000}, ensure_ascii=False)
    assert len(message.encode()) > 4096 > len(message)
    # the client offers permessage-deflate (the websockets default); the server declines it
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        await ws.send(message)
        with pytest.raises(ConnectionClosed):
            frame = await recv_json(ws, 5)
            pytest.fail(f"the server accepted the message and answered: {frame}")
    assert ws.close_code == 1009


def peak_memory_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


async def test_permessage_deflate_is_declined_so_a_deflate_bomb_cannot_inflate(strict, tenant, corpus):
    """A 50 MB message compressed to ~50 KB: hypercorn would inflate it whole before
    its size check. The server declines permessage-deflate (RFC 7692), so the frame's
    compression bit is a protocol error (1002) and nothing is inflated."""
    before = peak_memory_kib(strict.process.pid)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(json.dumps({"question": "a" * 50_000_000}).encode()) + deflate.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]  # RFC 7692 section 7.2.1: drop the 00 00 ff ff tail
    assert len(bomb) < 65536
    headers = {**auth(tenant.api_key), "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    raw = await RawWebSocket.open(strict, f"/api/v1/ws/chats/{corpus['chat_id']}/completions", headers)
    try:
        assert b"sec-websocket-extensions" not in raw.head.lower(), raw.head
        await raw.send_frame(0x1, bomb, rsv1=True)
        frames, code, _ = await raw.read_until_close(timeout=5)
    finally:
        raw.close()
    assert [opcode for _, opcode, _ in frames if opcode != 0x9] == [0x8]
    assert code == 1002
    grown = peak_memory_kib(strict.process.pid) - before
    assert grown < 20_000, f"the server's peak memory grew by {grown} KiB"


async def test_question_longer_than_limit_is_an_error_frame(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), additional_headers=auth(tenant.api_key)) as ws:
        await send(ws, question="q" * 1001, req_id="long")
        assert await read_until_markers(ws, ["long"]) == [
            error(101, "`question` is too long: 1001 characters, at most 1000", "long"),
            marker("long"),
        ]
        await send(ws, question="q" * 1000)  # exactly the limit
        frames = await read_answer(ws)
        assert frames[-1] == marker() and all(f["code"] == 0 for f in frames), frames[0]


async def test_invalid_utf8_closes_with_1007(strict, tenant, corpus):
    raw = await RawWebSocket.open(strict, f"/api/v1/ws/chats/{corpus['chat_id']}/completions", auth(tenant.api_key))
    try:
        await raw.send_frame(0x1, json.dumps({"type": "ping"}).encode())
        opcode, payload = await raw.read_frame()
        while opcode == 0x9:  # keepalive pings of the strict server
            opcode, payload = await raw.read_frame()
        assert opcode == 0x1 and json.loads(payload)["type"] == "pong"
        await raw.send_frame(0x1, b"\xff\xfe")  # a text frame that is not UTF-8
        frames, code, _ = await raw.read_until_close(timeout=5)
    finally:
        raw.close()
    assert [opcode for _, opcode, _ in frames if opcode != 0x9] == [0x8]
    assert code == 1007


async def test_binary_message_closes_with_1003_on_seed_routes(server, tenant):
    for path, headers in (("chat", auth(tenant.api_key)), ("health", {})):
        async with connect(seed_url(server, path), additional_headers=headers) as ws:
            if path == "health":
                await recv_json(ws)  # greeting
            await ws.send(b"\x00\x01")
            code, reason, frames = await closed_with(ws)
        assert (code, frames) == (1003, []), path
        assert "binary" in reason


async def test_connections_per_key_limit(tight, extra_tenants, extra_chats):
    await wait_no_connections(tight)
    bob, carol = extra_tenants["bob"], extra_tenants["carol"]
    url = chat_url(tight, extra_chats["bob"])
    async with connect(url, additional_headers=auth(bob.api_key)) as one, connect(url, additional_headers=auth(bob.api_key)) as two:
        await pong_ok(one)
        await pong_ok(two)
        async with connect(url, additional_headers=auth(bob.api_key)) as three:
            code, reason, frames = await closed_with(three)
        assert frames == [{"code": 108, "message": "too many connections for this API key (limit 2)", "data": None}]
        assert code == 1008 and "too many connections" in reason
        async with connect(chat_url(tight, extra_chats["carol"]), additional_headers=auth(carol.api_key)) as other:
            await pong_ok(other)
        await pong_ok(one)
    await wait_no_connections(tight)
    async with connect(url, additional_headers=auth(bob.api_key)) as again:
        await pong_ok(again)


async def test_connections_per_process_limit_closes_with_1013_before_auth(tight, extra_tenants, extra_chats):
    await wait_no_connections(tight)
    bob, carol = extra_tenants["bob"], extra_tenants["carol"]
    bob_url, carol_url = chat_url(tight, extra_chats["bob"]), chat_url(tight, extra_chats["carol"])
    async with (
        connect(bob_url, additional_headers=auth(bob.api_key)) as one,
        connect(bob_url, additional_headers=auth(bob.api_key)) as two,
        connect(carol_url, additional_headers=auth(carol.api_key)) as three,
    ):
        for ws in (one, two, three):
            await pong_ok(ws)
        async with connect(carol_url, additional_headers=auth(carol.api_key)) as fourth:
            code, reason, frames = await closed_with(fourth)
        assert (code, frames) == (1013, []) and "busy" in reason
        async with connect(carol_url) as anonymous:  # no credentials: refused before auth
            code, _, frames = await closed_with(anonymous)
        assert (code, frames) == (1013, [])
    await wait_no_connections(tight)
    async with connect(carol_url, additional_headers=auth(carol.api_key)) as later:
        await pong_ok(later)
    await wait_no_connections(tight)

    # a burst of 4 handshakes at once (2 per key): exactly 3 are admitted
    async def attempt(url: str, key: str) -> tuple[int | None, list[dict]]:
        async with connect(url, additional_headers=auth(key)) as ws:
            frames = []
            try:
                await send(ws, type="ping")
                while not frames or frames[-1].get("type") != "pong":
                    frames.append(await recv_json(ws))
            except ConnectionClosed:
                return ws.close_code, frames
            await asyncio.sleep(0.3)  # stay open while the others arrive
            return None, frames

    results = await asyncio.gather(
        attempt(bob_url, bob.api_key), attempt(bob_url, bob.api_key),
        attempt(carol_url, carol.api_key), attempt(carol_url, carol.api_key),
    )
    refused = [(code, frames) for code, frames in results if code is not None]
    assert len(refused) == 1, results
    code, frames = refused[0]
    # refused before authentication (no frame) or at admission (an error frame)
    assert code == 1013 and (frames == [] or (len(frames) == 1 and "busy" in frames[0]["message"])), results


async def open_count(srv: ServerProcess) -> int:
    """WebSockets the server counts (GET /health)."""
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{srv.api_url}/health")).json()["data"]["websocket_connections"]


async def echo_ok(ws: ClientConnection) -> None:
    """A health socket is open and served (and its idle timer restarts)."""
    await ws.send("alive")
    assert (await recv_json(ws))["data"] == "alive"


async def test_health_socket_is_admitted_counted_and_closed_like_the_others(tight, extra_tenants, extra_chats):
    await wait_no_connections(tight)
    url = seed_url(tight, "health")
    bob = extra_tenants["bob"]
    async with connect(url) as one, connect(url) as two:
        assert (await recv_json(one))["status"] == (await recv_json(two))["status"] == "healthy"
        assert await open_count(tight) == 2, "health sockets count as connections"
        async with connect(url) as third:  # the per-key limit (2) applies per client address
            code, reason, frames = await closed_with(third)
        assert frames == [{"code": 108, "message": "too many connections for this client address (limit 2)", "data": None}]
        assert code == 1008 and reason == "too many connections for this client address (limit 2)"
        await echo_ok(one)
        await echo_ok(two)
        async with connect(chat_url(tight, extra_chats["bob"]), additional_headers=auth(bob.api_key)) as chat:
            await pong_ok(chat)  # the process's third connection
            async with connect(url) as full:
                code, _, frames = await closed_with(full)
            assert (code, frames) == (1013, []), "a full process refuses health sockets too"
    await wait_no_connections(tight)
    async with connect(url) as idle:
        await recv_json(idle)
        started = time.monotonic()
        code, reason, frames = await closed_with(idle)
    assert (code, reason, frames) == (1000, "idle timeout", [])
    assert 0.8 <= time.monotonic() - started <= 2.5


async def test_rate_limit_per_key(tight, extra_tenants, extra_chats):
    await wait_no_connections(tight)
    carol = extra_tenants["carol"]
    async with connect(chat_url(tight, extra_chats["carol"]), additional_headers=auth(carol.api_key)) as ws:
        for req_id in ("q1", "q2", "q3", "q4"):
            await send(ws, question="Is there a lamp?", req_id=req_id)
        refused = await read_until_markers(ws, ["q4"])
        limited = of(refused, "q4")
        assert len(limited) == 2 and limited[1] == marker("q4")
        assert limited[0]["code"] == 429
        match = re.fullmatch(
            r"rate limit: at most 3 questions per minute per API key; retry in (\d+\.\d) s", limited[0]["message"]
        )
        assert match, limited[0]["message"]
        assert 15.0 <= float(match.group(1)) <= 20.0
        assert limited[0]["data"] == {"answer": f"**ERROR**: {limited[0]['message']}", "reference": []}
        await send(ws, type="stop")
        rest = refused + await read_until_markers(ws, [r for r in ("q1", "q2", "q3") if marker(r) not in refused])
        for req_id in ("q1", "q2", "q3"):
            assert all(f["code"] == 0 for f in of(rest, req_id)), "the first three were admitted"
        await send(ws, question="Is there a lamp?", req_id="q5")
        again = await read_until_markers(ws, ["q5"])
        assert again[0]["code"] == 429

    # HTTP completions draw from the same bucket, both ways
    async with api_client(tight, carol.api_key) as api:
        response = await api.post(f"/chats/{extra_chats['carol']}/completions", json={"question": "Is there a lamp?"})
    body = response.json()
    assert body["code"] == 429 and body["data"] is None and "retry in" in body["message"]
    bob = extra_tenants["bob"]
    async with api_client(tight, bob.api_key) as api:
        for _ in range(3):
            body = {"question": "Is there a lamp?", "stream": True}
            async with api.stream("POST", f"/chats/{extra_chats['bob']}/completions", json=body) as response:
                first = await anext(response.aiter_lines())
                assert first.startswith("data:") and json.loads(first[5:])["code"] == 0, first
    async with connect(chat_url(tight, extra_chats["bob"]), additional_headers=auth(bob.api_key)) as ws:
        frames = await read_first_answer(ws, {"question": "Is there a lamp?"})
    assert len(frames) == 2 and frames[0]["code"] == 429 and frames[1] == marker()


# == 8. browser-safe authentication and redaction ========================================
async def issue_ticket(srv: ServerProcess, key: str) -> str:
    async with api_client(srv, key) as api:
        data = ok(await api.post("/ws/tickets"))
    assert set(data) == {"ticket", "expires_in"} and data["expires_in"] == 60
    assert isinstance(data["ticket"], str) and data["ticket"]
    return data["ticket"]


async def refused_109(url: str, fragment: str, **kwargs: Any) -> None:
    async with connect(url, **kwargs) as ws:
        code, _, frames = await closed_with(ws)
    assert len(frames) == 1 and frames[0]["code"] == 109 and frames[0]["data"] is None, frames
    assert fragment in frames[0]["message"], frames[0]["message"]
    assert code == 1008


async def test_ticket_is_single_use(strict, tenant, corpus):
    ticket = await issue_ticket(strict, tenant.api_key)
    url = chat_url(strict, corpus["chat_id"]) + f"?ticket={ticket}"
    async with connect(url) as ws:
        await pong_ok(ws)
        frames = await read_first_answer(ws, {"question": RETURNS_Q})
        assert "30 days" in joined_answer(frames)
    await refused_109(url, "already used")


async def test_tampered_ticket_is_refused(strict, tenant, corpus):
    ticket = await issue_ticket(strict, tenant.api_key)
    # Change the first character of the signature, never the last: base64's last
    # character carries padding bits, so "...A" and "...B" can decode to the same
    # signature bytes, and the "tampered" ticket would be (rightly) accepted.
    start = ticket.rindex(".") + 1
    tampered = ticket[:start] + ("A" if ticket[start] != "A" else "B") + ticket[start + 1 :]
    await refused_109(chat_url(strict, corpus["chat_id"]) + f"?ticket={tampered}", "invalid ticket")
    await refused_109(chat_url(strict, corpus["chat_id"]) + f"?ticket=x{ticket}", "invalid ticket")
    # the untouched ticket still works once
    async with connect(chat_url(strict, corpus["chat_id"]) + f"?ticket={ticket}") as ws:
        await pong_ok(ws)


def forge_ticket(srv: ServerProcess, tenant: Tenant, age: float) -> str:
    """A ticket signed with the server's key, dated ``age`` seconds ago."""
    secret = (Path(srv.env["RAGSOCKET_DATA_DIR"]) / "secret_key").read_text().strip()

    class Backdated(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age)

    serializer = URLSafeTimedSerializer(secret, salt=TICKET_SALT, signer=Backdated)
    return serializer.dumps({"t": tenant.tenant_id, "p": f"key:{tenant.key_id}", "n": os.urandom(8).hex()})


async def test_expired_ticket_is_refused(strict, tenant, corpus):
    url = chat_url(strict, corpus["chat_id"])
    await refused_109(url + f"?ticket={forge_ticket(strict, tenant, age=120)}", "expired")
    async with connect(url + f"?ticket={forge_ticket(strict, tenant, age=5)}") as ws:  # the forgery is sound
        await pong_ok(ws)


async def test_api_key_as_subprotocol(strict, tenant, corpus):
    async with connect(chat_url(strict, corpus["chat_id"]), subprotocols=["ragsocket", tenant.api_key]) as ws:
        assert ws.subprotocol == "ragsocket"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "ragsocket"
        await pong_ok(ws)


async def test_api_key_alone_as_subprotocol_is_refused(strict, tenant, corpus):
    """A browser fails a handshake whose answer names no subprotocol (1006): a key
    offered without "ragsocket" is refused with 109 and 1008 instead, before
    authentication, and never echoed."""
    async with connect(chat_url(strict, corpus["chat_id"]), subprotocols=[tenant.api_key]) as ws:
        assert ws.subprotocol is None and "Sec-WebSocket-Protocol" not in ws.response.headers
        code, reason, frames = await closed_with(ws)
    assert frames == [{
        "code": 109, "data": None,
        "message": 'Authentication error: an API key offered as a WebSocket subprotocol must come with the '
                   '"ragsocket" subprotocol: new WebSocket(url, ["ragsocket", key])',
    }]
    assert (code, reason) == (1008, "authentication failed")
    async with connect(chat_url(strict, corpus["chat_id"]), subprotocols=[tenant.api_key, "ragsocket"]) as ws:
        assert ws.subprotocol == "ragsocket"  # the order does not matter
        await pong_ok(ws)


async def test_login_session_only_from_allowed_origins(strict, tenant, corpus):
    result = run_cli(strict.env, "--json", "session-token", tenant.tenant_id)
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["session_token"]
    url = chat_url(strict, corpus["chat_id"])
    await refused_109(url + f"?token={token}", "origin", origin="https://evil.example.com")
    await refused_109(url, "origin", origin="https://evil.example.com", additional_headers=auth(token))
    async with connect(url + f"?token={token}", origin=ALLOWED_ORIGIN) as ws:
        await pong_ok(ws)
    async with connect(url, additional_headers=auth(token)) as ws:  # no Origin: not a browser
        await pong_ok(ws)
    async with connect(url + f"?token={tenant.api_key}", origin="https://evil.example.com") as ws:
        await pong_ok(ws)  # an API key is accepted from any Origin


async def test_credentials_in_urls_are_redacted_in_the_log(strict, tenant, corpus):
    """Runs last on the strict server: its whole log must be free of credentials."""
    url = chat_url(strict, corpus["chat_id"])
    async with connect(url + f"?token={tenant.api_key}") as ws:
        await pong_ok(ws)
    ticket = await issue_ticket(strict, tenant.api_key)
    async with connect(url + f"?ticket={ticket}") as ws:
        await pong_ok(ws)
    async with connect(url + f"?ticket={ticket}") as ws:  # refused: logged too
        await closed_with(ws)
    deadline = time.monotonic() + 5
    while True:
        log = strict.log_path.read_text(errors="replace")
        if ("token=REDACTED" in log and "ticket=REDACTED" in log) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert "token=REDACTED" in log and "ticket=REDACTED" in log, log[-3000:]
    assert tenant.api_key not in log
    assert ticket not in log and ticket.split(".")[-1] not in log


# == 9. seed routes and HTTP health ======================================================
async def test_seed_health_greets_and_echoes(server):
    async with connect(seed_url(server, "health")) as ws:
        greeting = await recv_json(ws)
        assert set(greeting) == {"status", "message", "version"} and greeting["status"] == "healthy"
        assert isinstance(greeting["message"], str) and greeting["message"]
        assert isinstance(greeting["version"], str) and greeting["version"]
        await ws.send("hello")
        echo = await recv_json(ws)
        assert echo == {"type": "echo", "data": "hello", "timestamp": echo["timestamp"]}
        assert isinstance(echo["timestamp"], int) and abs(echo["timestamp"] - now_ms()) < 2000
        await send(ws, a=[1, 2], b="中文")
        echo = await recv_json(ws)
        assert echo == {"type": "echo", "data": {"a": [1, 2], "b": "中文"}, "timestamp": echo["timestamp"]}


async def test_seed_chat_streams_answers_and_checks_chat_id(server, tenant, other_tenant, corpus):
    async with connect(seed_url(server, "chat"), additional_headers=auth(tenant.api_key)) as ws:
        frames = await read_first_answer(ws, {"type": "chat", "chat_id": corpus["chat_id"], "question": RETURNS_Q})
        assert_complete_answer(frames, None)
        assert "30 days" in joined_answer(frames)
        assert await read_first_answer(ws, {"type": "chat", "question": RETURNS_Q}) == [
            error(101, "`chat_id` is required on /v1/ws/chat"),
            marker(),
        ]
    async with connect(seed_url(server, "chat"), additional_headers=auth(other_tenant.api_key)) as ws:
        frames = await read_first_answer(ws, {"type": "chat", "chat_id": corpus["chat_id"], "question": RETURNS_Q})
        assert len(frames) == 2 and frames[1] == marker()
        assert frames[0]["code"] == 102 and "chat" in frames[0]["message"]
        await pong_ok(ws)  # still open


async def test_every_agent_error_frame_carries_the_error_event(server, tenant, corpus):
    async with api_client(server, tenant.api_key) as api:
        agent = ok(await api.post("/agents", json={"title": f"refusals-{time.monotonic_ns()}", "dsl": {"tools": [{"type": "calculator"}]}}))
    url = agent_url(server, agent["id"])

    def agent_error(code: int, message: str, req_id: str | None = None) -> dict:
        return {**error(code, message, req_id), "event": "error"}

    async with connect(url, additional_headers=auth(tenant.api_key)) as ws:
        assert await read_first_answer(ws, {"question": ""}) == [
            agent_error(101, "`question` is required and must be a non-empty string"), marker(),
        ]
        assert await read_first_answer(ws, {"question": "What is 6*7?", "session_id": "nope", "req_id": "s"}) == [
            agent_error(102, "The agent doesn't own the session nope", "s"), marker("s"),
        ]
        await send(ws, question="What is 6*7?")
        await send(ws, question="What is 6*8?")  # busy: an error frame, no marker
        frames = await read_answer(ws)
        busy = [f for f in frames if f["code"] != 0]
        assert len(busy) == 1 and busy[0]["event"] == "error" and busy[0]["message"].startswith("busy:")
        assert frames.count(marker()) == 1 and frames[-2]["event"] == "message_end"
    for kwargs, code in (({"additional_headers": auth("ragsocket-nope")}, 109), ({"subprotocols": [tenant.api_key]}, 109)):
        async with connect(url, **kwargs) as ws:
            closed = await closed_with(ws)
        assert closed[0] == 1008 and [(f["code"], f["event"], f["data"]) for f in closed[2]] == [(code, "error", None)]
    async with connect(agent_url(server, "0" * 32), additional_headers=auth(tenant.api_key)) as ws:
        code, reason, frames = await closed_with(ws)
    assert (code, reason) == (1008, "agent not found")
    assert frames == [agent_error(102, f"You don't own the agent {'0' * 32}")]


async def test_http_health(server):
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.api_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0
    assert body["data"]["status"] == "ok"
    assert body["data"]["database"] == "ok" and body["data"]["redis"] == "disabled"
