"""Resume after reconnect (memory and Redis event logs, across two processes) and
graceful shutdown, against real servers."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from test.support.documents import LAMP_QUESTION, LAMP_STORY
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    make_chat,
    make_chat_over,
    ok,
    variant_env,
    wait_saved_message,
)
from test.support.ws import (
    chat_url,
    content_frames,
    joined_answer,
    read_answer,
    recv_json,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def slow_env(server_env: dict, tmp_path_factory, name: str, **extra: str) -> dict:
    """A server's settings with an offline model writing a word every 40 ms (unless ``extra`` says otherwise)."""
    return variant_env(server_env, tmp_path_factory, name, **{"RAGSOCKET_OFFLINE_TOKEN_DELAY": "0.04", **extra})


@pytest.fixture(scope="module")
async def lamp_chat(server: ServerProcess, tenant: Tenant) -> str:
    """A chat whose offline answer to LAMP_QUESTION is long (dozens of frames)."""
    return await make_chat_over(server, tenant, {"lamp.txt": LAMP_STORY.encode()})


async def saved_message(process: ServerProcess, tenant: Tenant, chat_id: str, session_id: str, message_id: str) -> dict:
    return await asyncio.to_thread(wait_saved_message, process, tenant, chat_id, session_id, message_id)


async def start_and_drop(process: ServerProcess, tenant: Tenant, chat_id: str, frames: int, **fields) -> list[dict]:
    """Ask, read ``frames`` frames, and drop the connection."""
    async with connect(chat_url(process, chat_id), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": LAMP_QUESTION, **fields}))
        received = [await recv_json(ws) for _ in range(frames)]
    return received


async def resume(process: ServerProcess, tenant: Tenant, chat_id: str, first: dict, last_seq: int, **extra) -> list[dict]:
    async with connect(chat_url(process, chat_id), additional_headers=auth(tenant)) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({
            "type": "resume", "session_id": first["data"]["session_id"],
            "message_id": first["data"]["id"], "last_seq": last_seq, **extra,
        }))
        frames = await read_answer(ws)
        frames[0]["_latency"] = time.perf_counter() - started
        return frames


def check_continuation(before: list[dict], after: list[dict]) -> None:
    seqs = [f["data"]["seq"] for f in content_frames(before + after)]
    assert seqs == list(range(1, len(seqs) + 1)), "no frame lost or repeated across the reconnect"


@pytest.fixture(scope="module")
def memory_server(server_env, tmp_path_factory):
    with ServerProcess(slow_env(server_env, tmp_path_factory, "mem")) as process:
        yield process


async def test_resume_in_memory_gets_the_rest_live(memory_server, tenant, lamp_chat):
    before = await start_and_drop(memory_server, tenant, lamp_chat, 3, resumable=True)
    after = await resume(memory_server, tenant, lamp_chat, before[0], last_seq=3)
    check_continuation(before, after)
    assert after[-1] == {"code": 0, "message": "", "data": True}
    final = content_frames(after)[-1]["data"]
    assert final["final"] is True and "interrupted" not in final, "a resumable answer goes on without its client"
    saved = await saved_message(memory_server, tenant, lamp_chat, before[0]["data"]["session_id"], before[0]["data"]["id"])
    assert saved["interrupted"] is False
    assert joined_answer(before) + joined_answer(after) == saved["content"]


async def test_resume_after_a_plain_drop_gets_the_interrupted_end(memory_server, tenant, lamp_chat):
    before = await start_and_drop(memory_server, tenant, lamp_chat, 2)
    message = await saved_message(memory_server, tenant, lamp_chat, before[0]["data"]["session_id"], before[0]["data"]["id"])
    assert message["interrupted"] is True, "without resumable, a disconnect stops the answer"
    after = await resume(memory_server, tenant, lamp_chat, before[0], last_seq=1, req_id="r1")
    assert all(f.get("req_id") == "r1" for f in after), "resumed frames carry the resume's req_id"
    final = content_frames(after)[-1]["data"]
    assert final["interrupted"] is True
    check_continuation(before[:1], after)
    assert joined_answer(before[:1]) + joined_answer(after) == message["content"]


async def test_resume_of_unknown_or_foreign_answer_is_refused(memory_server, tenant, other_tenant, lamp_chat):
    before = await start_and_drop(memory_server, tenant, lamp_chat, 1)
    unknown = {"data": {"session_id": before[0]["data"]["session_id"], "id": "0" * 32}}
    frames = await resume(memory_server, tenant, lamp_chat, unknown, last_seq=0)
    assert frames[0]["code"] == 102 and "nothing to resume" in frames[0]["message"]
    wrong_session = {"data": {"session_id": "1" * 32, "id": before[0]["data"]["id"]}}
    frames = await resume(memory_server, tenant, lamp_chat, wrong_session, last_seq=0)
    assert frames[0]["code"] == 102
    async with api_client(memory_server, other_tenant) as api:
        own_chat = await make_chat(api, [])
    frames = await resume(memory_server, other_tenant, own_chat["id"], before[0], last_seq=0)
    assert frames[0]["code"] == 102, "another tenant cannot read the frames"


@pytest.fixture(scope="module")
def redis_pair(server_env, tmp_path_factory):
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    env_a = slow_env(server_env, tmp_path_factory, "redis_a", RAGSOCKET_REDIS_URL=REDIS_URL)
    env_b = slow_env(server_env, tmp_path_factory, "redis_b", RAGSOCKET_REDIS_URL=REDIS_URL)
    with ServerProcess(env_a) as a, ServerProcess(env_b) as b:
        yield a, b


async def test_resume_on_another_process_through_redis(redis_pair, tenant, lamp_chat):
    a, b = redis_pair
    before = await start_and_drop(a, tenant, lamp_chat, 4, resumable=True)
    after = await resume(b, tenant, lamp_chat, before[0], last_seq=4)
    check_continuation(before, after)
    assert after[-1]["data"] is True
    saved = await saved_message(b, tenant, lamp_chat, before[0]["data"]["session_id"], before[0]["data"]["id"])
    assert saved["interrupted"] is False
    assert joined_answer(before) + joined_answer(after) == saved["content"]
    again = await resume(b, tenant, lamp_chat, before[0], last_seq=0)
    assert joined_answer(again) == saved["content"], "a finished answer can be replayed whole"
    health = ok(httpx.get(f"{b.api_url}/health"))
    assert health["redis"] == "ok"


async def test_sigterm_lets_answers_finish_then_closes_with_1001(server_env, tmp_path_factory, tenant, lamp_chat):
    env = slow_env(server_env, tmp_path_factory, "shutdown", RAGSOCKET_WS_SHUTDOWN_GRACE="1.5", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.1")
    process = ServerProcess(env).start()
    try:
        url = chat_url(process, lamp_chat)
        idle = await connect(url, additional_headers=auth(tenant))
        busy = await connect(url, additional_headers=auth(tenant))
        await busy.send(json.dumps({"question": LAMP_QUESTION}))
        first = await recv_json(busy)
        process.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await recv_json(idle, timeout=5)
        assert idle.close_code == 1001 and time.monotonic() - signalled < 1.0, "idle sockets close at once"
        rest = await read_answer(busy, timeout=10)
        elapsed = time.monotonic() - signalled
        final = content_frames(rest)[-1]["data"]
        assert final["interrupted"] is True, "an answer longer than the grace period is stopped"
        assert 1.2 < elapsed < 6, elapsed
        with pytest.raises(ConnectionClosed):
            await recv_json(busy, timeout=5)
        assert busy.close_code == 1001
        assert process.process.wait(15) == 0
        # the partial answer was saved: check through a fresh server on the same database
        with ServerProcess({**env, "RAGSOCKET_PORT": ""}) as again:
            saved = await saved_message(again, tenant, lamp_chat, first["data"]["session_id"], first["data"]["id"])
        assert saved["interrupted"] is True
        assert saved["content"] == joined_answer([first] + rest)
    finally:
        process.stop()
