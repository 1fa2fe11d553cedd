"""The connection loop, the memory event log, the registry and the health socket,
without a network: a fake transport (an inbox queue and a list of sent frames) and
answer generators the tests hold and release.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.db.services.conversation_service import AnswerDelta, AnswerDone
from api.streaming.bridge import WorkerPool
from api.streaming.connection import AnswerConnection, ConnectionContext
from api.streaming.eventlog import (
    EXPIRED,
    NOT_FOUND,
    EventLogError,
    LogOwner,
    MemoryEventLog,
)
from api.streaming.health import EchoConnection, greeting_frame
from api.streaming.limits import ConnectionRegistry, RateLimiter
from api.streaming.protocol import CHAT_DIALECT, CompletionRequest, Dialect, error_frame
from common.errors import DataError

OWNER = LogOwner("t1", "s1")
TIMEOUT = 5.0


class FakeTransport:
    """Messages to the connection go through ``inbox``; what it sends lands in ``sent``."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.sent: list[Any] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def receive(self) -> str | bytes:
        return await self.inbox.get()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def put(self, **message: Any) -> None:
        self.inbox.put_nowait(json.dumps(message))


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def held_answer(gate: threading.Event, message_id: str = "m1") -> Callable[[threading.Event], Iterator[Any]]:
    """An answer that sends one delta, then waits for ``gate`` (or a stop) before its end."""

    def factory(cancel: threading.Event) -> Iterator[Any]:
        yield AnswerDelta("Hello ", message_id, "s1")
        while not gate.is_set() and not cancel.is_set():
            time.sleep(0.01)
        yield AnswerDone("Hello world" if gate.is_set() else "Hello ", {}, message_id, "s1", interrupted=cancel.is_set())

    return factory


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(16, 4)
    yield pool
    pool.shutdown()


def make_connection(pool: WorkerPool, factory_for: Callable[[CompletionRequest], Any], dialect: Dialect = CHAT_DIALECT,
                    registry: ConnectionRegistry | None = None, **limits: Any) -> tuple[AnswerConnection, FakeTransport]:
    transport = FakeTransport()

    async def answerer(request: CompletionRequest) -> Any:
        return factory_for(request)

    ctx = ConnectionContext(
        tenant_id="t1", principal="key:1", pool=pool, event_log=MemoryEventLog(60), limiter=RateLimiter(1000),
        registry=registry or ConnectionRegistry(10, 10), max_question_chars=100, max_requests=4,
        idle_timeout=limits.pop("idle_timeout", 30.0), max_message_bytes=4096, **limits,
    )
    return AnswerConnection(transport, ctx, answerer, dialect), transport


def markers(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f.get("data") is True]


# -- refusals while an untagged answer runs ------------------------------------------
async def test_refusals_during_an_untagged_answer_send_no_marker(pool):
    gate = threading.Event()
    connection, transport = make_connection(pool, lambda request: held_answer(gate))
    runner = asyncio.create_task(connection.run())
    try:
        transport.put(question="first")
        await until(lambda: len(transport.sent) == 1)
        transport.put(question="second")  # busy
        transport.inbox.put_nowait("not json")  # invalid
        transport.put(type="stop", req_id="x")  # tagged: its marker cannot be mistaken
        await until(lambda: len(transport.sent) == 5)
        assert markers(transport.sent) == [{"code": 0, "message": "", "data": True, "req_id": "x"}]
        gate.set()
        await until(lambda: len(markers(transport.sent)) == 2)
    finally:
        runner.cancel()
    busy, invalid, stop_error, stop_marker = transport.sent[1:5]
    assert busy["code"] == 102 and busy["message"].startswith("busy: a request is already running") and "req_id" not in busy
    assert invalid["code"] == 101 and invalid["message"].startswith("invalid JSON")
    assert stop_error == {**error_frame(102, "no running request with req_id 'x' to stop"), "req_id": "x"}
    final, marker = transport.sent[-2:]
    assert final["data"]["final"] is True and marker == {"code": 0, "message": "", "data": True}


async def test_a_refusal_when_nothing_runs_keeps_its_marker(pool):
    connection, transport = make_connection(pool, lambda request: held_answer(threading.Event()))
    await connection.handle(json.dumps({"type": "stop"}))
    assert transport.sent == [error_frame(102, "no running request to stop"), {"code": 0, "message": "", "data": True}]


# -- detached answers ------------------------------------------------------------------
async def test_detached_answers_are_capped_per_key(pool):
    gate = threading.Event()
    registry = ConnectionRegistry(10, 10)
    factory = {"a": held_answer(gate, "ma"), "b": held_answer(gate, "mb")}
    connection, transport = make_connection(pool, lambda request: factory[request.req_id], registry=registry,
                                            max_detached_per_key=1)
    runner = asyncio.create_task(connection.run())
    transport.put(question="q", req_id="a", resumable=True)
    transport.put(question="q", req_id="b", resumable=True)
    await until(lambda: len(transport.sent) == 2)
    running = dict(connection._running)
    runner.cancel()  # the client leaves
    await asyncio.gather(runner, return_exceptions=True)
    assert registry.detached_count("key:1") == 1, "one answer goes on, the other is stopped"
    assert running["b"].stop_requested and not running["a"].stop_requested

    again, transport2 = make_connection(pool, lambda request: held_answer(gate), registry=registry, max_detached_per_key=1)
    await again.handle(json.dumps({"question": "q", "resumable": True}))
    refused, marker = transport2.sent
    assert refused["code"] == 102 and "too many resumable answers" in refused["message"] and "(limit 1)" in refused["message"]
    gate.set()
    await until(lambda: registry.detached_count("key:1") == 0)


# -- stopping a followed answer ----------------------------------------------------------
class StopFailingLog(MemoryEventLog):
    """A memory log whose stop records cannot be written (as Redis down)."""

    async def request_stop(self, message_id: str) -> None:
        raise EventLogError("redis: ConnectionError")


async def test_stop_of_a_followed_answer_reaches_the_registry_or_the_log(pool):
    connection, transport = make_connection(pool, lambda request: held_answer(threading.Event()))
    log = connection.ctx.event_log = StopFailingLog(60)
    stopped: list[str] = []
    for message_id in ("here", "elsewhere"):
        await log.open(message_id, OWNER)
        await log.append(message_id, 1, {"code": 0, "message": "", "data": {"seq": 1}})
    connection.ctx.registry.register_answer("here", lambda: stopped.append("here"))  # generated by this process
    runner = asyncio.create_task(connection.run())
    try:
        for req_id in ("here", "elsewhere"):
            transport.put(type="resume", session_id="s1", message_id=req_id, last_seq=0, req_id=req_id)
        await until(lambda: len(transport.sent) == 2)
        transport.put(type="stop", req_id="here")
        transport.put(type="stop", req_id="elsewhere")
        await until(lambda: len(transport.sent) == 3)
        assert stopped == ["here"], "an answer of this process is stopped directly"
        message = "the answer cannot be stopped right now: the event log is unavailable"
        assert transport.sent[2] == {**error_frame(500, message), "req_id": "elsewhere"}
        await log.finish("here")
        await log.finish("elsewhere")
        await until(lambda: len(markers(transport.sent)) == 2)
    finally:
        runner.cancel()


# -- heartbeat -------------------------------------------------------------------------
async def test_heartbeat_only_while_a_request_runs_and_nothing_was_sent(pool):
    gate = threading.Event()
    dialect = Dialect(heartbeat={"event": "ping"}, heartbeat_interval=0.1)
    connection, transport = make_connection(pool, lambda request: held_answer(gate), dialect)
    runner = asyncio.create_task(connection.run())
    try:
        await asyncio.sleep(0.35)
        assert transport.sent == [], "no heartbeat while idle"
        transport.put(question="q")
        await until(lambda: transport.sent.count({"event": "ping"}) >= 2)
        gate.set()
        await until(lambda: len(markers(transport.sent)) == 1)
        count = transport.sent.count({"event": "ping"})
        await asyncio.sleep(0.35)
        assert transport.sent.count({"event": "ping"}) == count, "no heartbeat after the request"
    finally:
        runner.cancel()


# -- the memory event log ----------------------------------------------------------------
async def test_follow_fails_when_the_log_is_evicted_before_its_end():
    log = MemoryEventLog(60, max_logs=1)
    await log.open("m1", OWNER)
    await log.append("m1", 1, {"data": {"seq": 1}})
    seen: list[dict] = []

    async def follow() -> None:
        async for frame in log.follow("m1", 0):
            seen.append(frame)

    follower = asyncio.create_task(follow())
    await until(lambda: seen)
    await log.open("m2", OWNER)  # past max_logs: m1 is evicted
    with pytest.raises(DataError) as caught:
        await asyncio.wait_for(follower, TIMEOUT)
    assert caught.value.message == EXPIRED and seen == [{"data": {"seq": 1}}]
    with pytest.raises(DataError, match="nothing to resume") as unknown:
        await anext(aiter(log.follow("m1", 0)))
    assert unknown.value.message == NOT_FOUND


async def test_a_renewed_log_outlives_older_expired_ones():
    log = MemoryEventLog(0.2)
    await log.open("old", OWNER)
    await log.open("young", OWNER)
    await asyncio.sleep(0.15)
    await log.append("old", 1, {})  # renewed: now the younger of the two
    await asyncio.sleep(0.1)
    assert await log.owner("young") is None and await log.owner("old") == OWNER


async def test_stop_record_is_seen_at_the_next_append():
    log = MemoryEventLog(60)
    await log.open("m1", OWNER)
    assert await log.append("m1", 1, {}) is False
    await log.request_stop("m1")
    assert await log.append("m1", 2, {}) is True
    assert await log.append("unknown", 1, {}) is False


# -- the registry --------------------------------------------------------------------------
def test_registry_stops_answers_by_message_id():
    registry = ConnectionRegistry(10, 10)
    stopped: list[str] = []
    registry.register_answer("m1", lambda: stopped.append("m1"))
    assert registry.stop_answer("m1") and stopped == ["m1"]
    registry.unregister_answer("m1")
    assert not registry.stop_answer("m1")


# -- the health socket ---------------------------------------------------------------------
async def test_health_socket_echoes_then_closes_when_idle():
    transport = FakeTransport()
    connection = EchoConnection(transport, greeting_frame("svc", "1.0"), idle_timeout=0.2, clock=lambda: 42)
    runner = asyncio.create_task(connection.run())
    transport.inbox.put_nowait('{"a": 1}')
    transport.inbox.put_nowait("plain")
    await asyncio.wait_for(runner, TIMEOUT)
    assert transport.sent == [
        {"status": "healthy", "message": "svc WebSocket is up", "version": "1.0"},
        {"type": "echo", "data": {"a": 1}, "timestamp": 42},
        {"type": "echo", "data": "plain", "timestamp": 42},
    ]
    assert transport.closed == (1000, "idle timeout") and not connection.busy


async def test_health_socket_closes_on_binary_and_on_shutdown():
    transport = FakeTransport()
    connection = EchoConnection(transport, greeting_frame("svc", "1.0"), idle_timeout=30)
    runner = asyncio.create_task(connection.run())
    transport.inbox.put_nowait(b"\x00")
    await asyncio.wait_for(runner, TIMEOUT)
    assert transport.closed == (1003, "binary messages are not supported; send JSON text")

    transport = FakeTransport()
    connection = EchoConnection(transport, greeting_frame("svc", "1.0"), idle_timeout=30)
    registry = ConnectionRegistry(10, 10)
    registry.admit("anonymous:127.0.0.1", connection, "client address")
    runner = asyncio.create_task(connection.run())
    await until(lambda: transport.sent)
    await registry.shutdown(grace=5)
    await asyncio.wait_for(runner, TIMEOUT)
    assert transport.closed == (1001, "server shutting down")
