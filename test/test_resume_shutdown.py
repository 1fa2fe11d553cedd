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

from api.streaming.eventlog import EXPIRED, LogOwner, RedisEventLog
from common.errors import DataError
from test.support.documents import LAMP_QUESTION, LAMP_STORY
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    free_port,
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

MARKER = {"code": 0, "message": "", "data": True}

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


async def resume_and_stop(process: ServerProcess, tenant: Tenant, chat_id: str, first: dict, last_seq: int, req_id: str | None) -> list[dict]:
    """Resume an answer, read one frame, send "stop" (with the resume's req_id, or none),
    and read up to the resume's marker."""
    async with connect(chat_url(process, chat_id), additional_headers=auth(tenant)) as ws:
        message = {"type": "resume", "session_id": first["data"]["session_id"], "message_id": first["data"]["id"], "last_seq": last_seq}
        await ws.send(json.dumps({**message, **({"req_id": req_id} if req_id else {})}))
        frames = [await recv_json(ws)]
        await ws.send(json.dumps({"type": "stop", **({"req_id": req_id} if req_id else {})}))
        while frames[-1].get("data") is not True:
            frames.append(await recv_json(ws))
    return frames


async def check_stopped(process: ServerProcess, tenant: Tenant, chat_id: str, before: list[dict], after: list[dict]) -> None:
    """The followed answer ended interrupted, early, and was saved so."""
    assert [f["code"] for f in after] == [0] * len(after), after
    final = content_frames(after)[-1]["data"]
    assert final["final"] is True and final["interrupted"] is True, "the stop reached the generating answer"
    check_continuation(before, after)
    saved = await saved_message(process, tenant, chat_id, before[0]["data"]["session_id"], before[0]["data"]["id"])
    assert saved["interrupted"] is True
    assert joined_answer(before) + joined_answer(after) == saved["content"]
    assert not saved["content"].endswith("after a power cut."), "stopped before the end"


async def test_stop_reaches_an_answer_followed_after_a_resume(memory_server, tenant, lamp_chat):
    for req_id in ("r1", None):
        before = await start_and_drop(memory_server, tenant, lamp_chat, 2, resumable=True)
        after = await resume_and_stop(memory_server, tenant, lamp_chat, before[0], 2, req_id)
        assert all(f.get("req_id") == req_id for f in after) and after[-1] == {**MARKER, **({"req_id": req_id} if req_id else {})}
        await check_stopped(memory_server, tenant, lamp_chat, before, after)


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


async def test_stop_reaches_an_answer_generated_by_another_process(redis_pair, tenant, lamp_chat):
    a, b = redis_pair
    before = await start_and_drop(a, tenant, lamp_chat, 3, resumable=True)
    after = await resume_and_stop(b, tenant, lamp_chat, before[0], 3, "r")
    await check_stopped(b, tenant, lamp_chat, before, after)


async def test_next_question_right_after_the_marker_is_never_busy(redis_pair, tenant):
    """The request ends its (Redis) event log and gives its place back before its marker."""
    a, _ = redis_pair
    async with api_client(a, tenant) as api:
        chat = await make_chat(api, [])  # no datasets: a short answer
    async with connect(chat_url(a, chat["id"]), additional_headers=auth(tenant)) as ws:
        for _ in range(10):
            await ws.send(json.dumps({"question": "Anything?"}))
            frames = await read_answer(ws)
            assert [f["code"] for f in frames] == [0] * len(frames), frames


async def test_redis_log_stop_record_and_expiry_while_following():
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    log = RedisEventLog(REDIS_URL, ttl=0.5)
    message_id = f"test-{time.monotonic_ns()}"
    try:
        await log.open(message_id, LogOwner("t", "s"))
        assert await log.append(message_id, 1, {"data": {"seq": 1}}) is False
        await log.request_stop(message_id)
        assert await log.append(message_id, 2, {"data": {"seq": 2}}) is True, "a follower's stop is seen at the next frame"
        seen = []
        with pytest.raises(DataError) as caught:
            async for frame in log.follow(message_id, 0):  # the stream expires before its end entry
                seen.append(frame)
        assert caught.value.message == EXPIRED and [f["data"]["seq"] for f in seen] == [1, 2]
    finally:
        await log.close()


def one_word_env(server_env: dict, tmp_path_factory, name: str, **extra: str) -> dict:
    return variant_env(server_env, tmp_path_factory, name, RAGSOCKET_WS_SHUTDOWN_GRACE="0", **extra)


async def test_detached_answers_are_limited_per_key(server_env, tmp_path_factory, tenant, lamp_chat):
    env = one_word_env(server_env, tmp_path_factory, "detached", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.08", RAGSOCKET_WS_MAX_DETACHED_PER_KEY="1")
    with ServerProcess(env) as process:
        url = chat_url(process, lamp_chat)
        async with connect(url, additional_headers=auth(tenant)) as ws:
            for req_id in ("a", "b"):
                await ws.send(json.dumps({"question": LAMP_QUESTION, "resumable": True, "req_id": req_id}))
            first: dict[str, dict] = {}
            while len(first) < 2:
                frame = await recv_json(ws)
                first.setdefault(frame["req_id"], frame)
        deadline = time.monotonic() + 5
        while ok(httpx.get(f"{process.api_url}/health"))["websocket_connections"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with connect(url, additional_headers=auth(tenant)) as ws:
            await ws.send(json.dumps({"question": LAMP_QUESTION, "resumable": True, "req_id": "c"}))
            refused = await read_answer(ws)
            message = (
                "too many resumable answers of this API key are still running after their clients left (limit 1); "
                'resume one (and stop it), wait for one to end, or ask without "resumable"'
            )
            assert refused == [
                {"code": 102, "message": message, "data": {"answer": f"**ERROR**: {message}", "reference": []}, "req_id": "c"},
                {**MARKER, "req_id": "c"},
            ]
            await ws.send(json.dumps({"question": LAMP_QUESTION, "req_id": "d"}))  # not resumable: served
            served = [frame for frame in await read_answer(ws) if frame.get("req_id") == "d"]
            assert served[-1] == {**MARKER, "req_id": "d"} and all(f["code"] == 0 for f in served)
        kept = await resume(process, tenant, lamp_chat, first["a"], last_seq=1)
        stopped = await resume(process, tenant, lamp_chat, first["b"], last_seq=1)
        assert "interrupted" not in content_frames(kept)[-1]["data"], "the first detached answer went on"
        assert content_frames(stopped)[-1]["data"]["interrupted"] is True, "the one past the limit was stopped"
        async with connect(url, additional_headers=auth(tenant)) as ws:  # a's end freed the place
            await ws.send(json.dumps({"question": LAMP_QUESTION, "resumable": True}))
            assert (await recv_json(ws))["code"] == 0


async def test_resume_while_redis_is_down_is_a_precise_error(server_env, tmp_path_factory, tenant, lamp_chat):
    env = one_word_env(server_env, tmp_path_factory, "redis_down", RAGSOCKET_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with ServerProcess(env) as process:
        before = await start_and_drop(process, tenant, lamp_chat, 1, resumable=True)
        after = await resume(process, tenant, lamp_chat, before[0], last_seq=1, req_id="r")
        del after[0]["_latency"]
        message = "resume is unavailable right now"
        assert after == [
            {"code": 500, "message": message, "data": {"answer": f"**ERROR**: {message}", "reference": []}, "req_id": "r"},
            {**MARKER, "req_id": "r"},
        ]
        log = process.log_tail(200)
    assert "Traceback" not in log and " ERROR " not in log, log


async def test_resume_ends_with_an_error_when_the_log_expires_meanwhile(server_env, tmp_path_factory, tenant):
    env = one_word_env(server_env, tmp_path_factory, "expiry", RAGSOCKET_EVENT_LOG_TTL="1", RAGSOCKET_OFFLINE_TOKEN_DELAY="3")
    with ServerProcess(env) as process:
        chat_id = await make_chat_over(process, tenant, {"lamp.txt": LAMP_STORY.encode()})
        before = await start_and_drop(process, tenant, chat_id, 1, resumable=True)  # the next word comes 3 s later
        dropped = time.monotonic()
        async with connect(chat_url(process, chat_id), additional_headers=auth(tenant)) as follower:
            await follower.send(json.dumps({
                "type": "resume", "session_id": before[0]["data"]["session_id"], "message_id": before[0]["data"]["id"], "last_seq": 1,
            }))
            await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - dropped)))  # the log's 1 s ran out
            unknown = {"data": {"session_id": before[0]["data"]["session_id"], "id": "0" * 32}}
            await resume(process, tenant, chat_id, unknown, last_seq=0)  # any lookup drops expired logs
            frames = await read_answer(follower, timeout=1.0)
    assert frames == [
        {"code": 102, "message": EXPIRED, "data": {"answer": f"**ERROR**: {EXPIRED}", "reference": []}},
        MARKER,
    ], "the follower learns why the answer stopped short"


async def test_sigterm_lets_answers_finish_then_closes_with_1001(server_env, tmp_path_factory, tenant, lamp_chat):
    env = slow_env(server_env, tmp_path_factory, "shutdown", RAGSOCKET_WS_SHUTDOWN_GRACE="1.5", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.1")
    process = ServerProcess(env).start()
    try:
        url = chat_url(process, lamp_chat)
        idle = await connect(url, additional_headers=auth(tenant))
        health = await connect(f"{process.ws_root}/v1/ws/health")
        assert (await recv_json(health))["status"] == "healthy"
        busy = await connect(url, additional_headers=auth(tenant))
        await busy.send(json.dumps({"question": LAMP_QUESTION}))
        first = await recv_json(busy)
        process.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for socket in (idle, health):
            with pytest.raises(ConnectionClosed):
                await recv_json(socket, timeout=5)
            assert socket.close_code == 1001 and time.monotonic() - signalled < 1.0, "idle sockets close at once"
        assert health.close_reason == "server shutting down"
        rest = await read_answer(busy, timeout=10)
        elapsed = time.monotonic() - signalled
        final = content_frames(rest)[-1]["data"]
        assert final["interrupted"] is True, "an answer longer than the grace period is stopped"
        assert 1.2 < elapsed < 6, elapsed
        with pytest.raises(ConnectionClosed):
            await recv_json(busy, timeout=5)
        assert busy.close_code == 1001
        assert process.process.wait(15) == 0
        assert "Traceback" not in process.log_tail(200), process.log_tail(200)
        # the partial answer was saved: check through a fresh server on the same database
        with ServerProcess({**env, "RAGSOCKET_PORT": ""}) as again:
            saved = await saved_message(again, tenant, lamp_chat, first["data"]["session_id"], first["data"]["id"])
        assert saved["interrupted"] is True
        assert saved["content"] == joined_answer([first] + rest)
    finally:
        process.stop()
