"""Property-based tests of the answer WebSocket: whatever a client sends, the server
answers with well-formed frames and documented codes, and other connections go on.

Hypothesis generates random text, random JSON values, protocol-shaped messages with
fields of random types, and random bytes; each is sent on one connection of the shared
``server`` (a fresh one after a legitimate close) while a second connection asks
questions in a background thread and must get every answer complete. Synchronous
``websockets.sync.client`` connections keep hypothesis' synchronous test functions
simple.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Self

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from test.support.server import (
    ServerProcess,
    auth,
    corpus_files,
    create_tenant,
    make_chat_over,
    run_cli,
)
from test.support.ws import chat_url

RETURNS_Q = "How many days do I have to return a purchase?"
QUESTIONS = [RETURNS_Q, "How long does standard shipping take?", "退货政策是什么？", "What does the warranty cover?"]
#: Codes an error frame may carry here: the offline model cannot fail (no 500).
ALLOWED_CODES = {0, 101, 102, 429}
FRAME_TIMEOUT = 10.0
MAX_REQ_ID_CHARS = 64
#: Signs of an exception leaking into a client-facing message.
LEAK = re.compile(r"Traceback|Error\(|\b[A-Z]\w*(?:Error|Exception|Warning)\b|\bFile \"")
FUZZ = settings(
    deadline=None,
    database=None,  # write no .hypothesis folder into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- set-up ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
async def fuzz_target(server: ServerProcess, corpus_dir: Path) -> dict:
    """A dedicated tenant (its own rate-limit buckets), a second key for the background
    stream, and a chat over the shipped documents."""
    fuzzer = create_tenant(server.env, "fuzzer")
    issued = run_cli(server.env, "--json", "create-key", fuzzer.tenant_id)
    assert issued.returncode == 0, issued.stderr
    chat_id = await make_chat_over(server, fuzzer, corpus_files(corpus_dir))
    return {
        "url": chat_url(server, chat_id),
        "key": fuzzer.api_key,
        "stream_key": json.loads(issued.stdout)["api_key"],
        "log": server.log_path,
    }


def open_ws(url: str, key: str) -> ClientConnection:
    """An open connection (``connect`` is a context manager; ``close()`` ends it)."""
    return connect(
        url, additional_headers=auth(key), open_timeout=10, max_size=None
    ).__enter__()


def expected_req_id(payload: Any) -> str | None:
    """The req_id every frame answering ``payload`` must echo (None: no req_id key)."""
    if isinstance(payload, dict):
        value = payload.get("req_id")
        if isinstance(value, str) and 0 < len(value) <= MAX_REQ_ID_CHARS:
            return value
    return None


class Fuzzer:
    """One connection receiving the generated messages (reopened after a close)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ws: ClientConnection | None = None
        self.exchanges = 0
        self.answers = 0

    def connection(self) -> ClientConnection:
        if self.ws is None:
            self.ws = open_ws(self.url, self.key)
        return self.ws

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def exchange(self, text: str, timeout: float = FRAME_TIMEOUT) -> list[dict]:
        """Send one text message; every frame up to the marker (or the pong)."""
        ws = self.connection()
        ws.send(text)
        frames = []
        try:
            while True:
                raw = ws.recv(timeout=timeout)
                assert isinstance(raw, str), f"binary frame from the server: {raw!r}"
                try:
                    frame = json.loads(raw)
                except ValueError:
                    pytest.fail(f"a frame is not JSON: {raw[:300]!r}")
                frames.append(frame)
                if not isinstance(frame, dict) or frame.get("data") is True or frame.get("type") == "pong":
                    break
        except ConnectionClosed:
            self.ws = None
            pytest.fail(f"the server closed the connection ({ws.close_code} {ws.close_reason!r}) after {text[:200]!r}")
        except TimeoutError:
            self.close()
            pytest.fail(f"no end marker within {timeout} s for {text[:200]!r}; frames: {frames}")
        self.exchanges += 1
        return frames

    def check_text(self, text: str) -> None:
        """Send ``text`` and check the answer against the protocol."""
        try:
            payload: Any = json.loads(text)
        except (ValueError, RecursionError):
            payload = ValueError  # not JSON: an argument error is due
        frames = self.exchange(text)
        check_frames(payload, frames, text)
        if any(f.get("code") == 0 and isinstance(f.get("data"), dict) for f in frames):
            self.answers += 1

    def check_bytes(self, data: bytes) -> None:
        """A binary message closes the connection with 1003, and nothing else comes."""
        ws = self.connection()
        ws.send(data)
        try:
            frame = ws.recv(timeout=FRAME_TIMEOUT)
            pytest.fail(f"a frame instead of close 1003: {frame!r}")
        except ConnectionClosed:
            pass
        finally:
            self.ws = None
        assert ws.close_code == 1003, (ws.close_code, ws.close_reason)
        assert "binary" in (ws.close_reason or "")

    def assert_alive(self) -> None:
        frames = self.exchange(json.dumps({"type": "ping", "req_id": "alive"}))
        assert frames[0]["type"] == "pong" and frames[0]["req_id"] == "alive"


def check_frames(payload: Any, frames: list[dict], text: str) -> None:
    """The protocol's promises for the frames answering one text message."""
    context = f"message {text[:200]!r} → frames {json.dumps(frames, ensure_ascii=False)[:1500]}"
    assert all(isinstance(f, dict) for f in frames), context
    req_id = expected_req_id(payload)
    last = frames[-1]
    if last.get("type") == "pong":
        assert len(frames) == 1, context
        assert isinstance(payload, dict) and payload.get("type") == "ping", context
        assert set(last) <= {"type", "ts", "req_id"} and isinstance(last["ts"], int), context
        assert abs(last["ts"] - time.time() * 1000) < 60_000, context
        assert last.get("req_id") == req_id, context
        return
    marker = {"code": 0, "message": "", "data": True}
    if req_id is not None:
        marker["req_id"] = req_id
    assert last == marker, context
    body = frames[:-1]
    assert body, f"a marker alone: {context}"
    for frame in body:
        assert frame.get("req_id") == req_id, context
        assert set(frame) <= {"code", "message", "data", "req_id"}, context
        assert frame["code"] in ALLOWED_CODES, context
        assert isinstance(frame["data"], dict), context
        if frame["code"] != 0:
            message = frame["message"]
            assert isinstance(message, str) and message, context
            echoed = repr(str(payload.get("type"))[:32]) if isinstance(payload, dict) else ""
            assert not LEAK.search(message.replace(echoed, "")), context
            assert frame["data"]["answer"] == f"**ERROR**: {message}", context
    errors = [f for f in body if f["code"] != 0]
    content = [f for f in body if f["code"] == 0]
    if errors:
        assert len(errors) == 1 and not content, f"an error ends a request before any answer: {context}"
        if not isinstance(payload, dict):
            assert errors[0]["code"] == 101, context
        return
    assert content, context
    assert [f["data"]["seq"] for f in content] == list(range(1, len(content) + 1)), context
    assert [f["data"]["final"] for f in content] == [False] * (len(content) - 1) + [True], context
    assert len({(f["data"]["id"], f["data"]["session_id"]) for f in content}) == 1, context
    assert isinstance(payload, dict) and isinstance(payload.get("question"), str), context


class BackgroundStream:
    """Another connection asking questions in a thread while the fuzzing goes on."""

    #: Questions asked by all background streams of the run (they share one key).
    total = 0

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        try:
            with open_ws(self.url, self.key) as ws:
                while not self.stop.is_set():
                    ws.send(json.dumps({"question": RETURNS_Q, "req_id": f"bg{self.answers}"}))
                    frames = []
                    while not frames or frames[-1].get("data") is not True:
                        frames.append(json.loads(ws.recv(timeout=FRAME_TIMEOUT)))
                    content = [f for f in frames if f["code"] == 0 and isinstance(f["data"], dict)]
                    text = "".join(f["data"]["answer"] for f in content)
                    complete = len(content) >= 3 and content[-1]["data"]["final"] is True
                    if [f["code"] for f in frames] != [0] * len(frames) or "30 days" not in text or not complete:
                        self.failures.append(json.dumps(frames)[:1000])
                    self.answers += 1
                    BackgroundStream.total += 1
                    # fast at first, then slower than the per-key refill (2 questions/s)
                    self.stop.wait(0.1 if BackgroundStream.total < 60 else 0.7)
        except Exception as error:  # noqa: BLE001 - reported by assert_healthy
            self.failures.append(f"{type(error).__name__}: {error}")

    def assert_healthy(self) -> None:
        assert not self.thread.is_alive()
        assert not self.failures, self.failures[:3]
        assert self.answers >= 1, "the background stream must have run during the fuzzing"


def server_log_since(path: Path, offset: int) -> str:
    with path.open("rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")


def fuzz_run(target: dict, check: Any, strategy: st.SearchStrategy, max_examples: int) -> Fuzzer:
    """Run ``check(fuzzer, example)`` over ``strategy`` with a background stream; then
    the fuzz connection must still answer and the server must have logged no error."""
    fuzzer = Fuzzer(target["url"], target["key"])
    offset = target["log"].stat().st_size
    try:
        with BackgroundStream(target["url"], target["stream_key"]) as background:

            @settings(FUZZ, max_examples=max_examples)
            @given(strategy)
            def prop(example: Any) -> None:
                check(fuzzer, example)

            prop()
        background.assert_healthy()
        fuzzer.assert_alive()
    finally:
        fuzzer.close()
    log = server_log_since(target["log"], offset)
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    return fuzzer


# -- strategies -----------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
short_text = st.text(max_size=70)
protocol_messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["question", "chat", "stop", "ping", "resume"]) | json_values,
        "question": st.sampled_from(QUESTIONS) | st.text(max_size=300) | json_values,
        "req_id": short_text | json_values,
        "session_id": short_text | json_values,
        "message_id": short_text | json_values,
        "last_seq": st.integers() | json_values,
        "stream": st.booleans() | json_values,
        "legacy": st.booleans() | json_values,
        "resumable": st.booleans() | json_values,
        "kb_ids": st.lists(short_text, max_size=3) | json_values,
        "doc_ids": st.lists(short_text, max_size=3) | json_values,
        "chat_id": short_text | json_values,
    },
)


def send_json(fuzzer: Fuzzer, example: tuple[Any, bool]) -> None:
    value, ascii_only = example
    fuzzer.check_text(json.dumps(value, ensure_ascii=ascii_only))


# -- properties -----------------------------------------------------------------------
def test_random_text_gets_well_formed_frames(fuzz_target):
    fuzz_run(fuzz_target, Fuzzer.check_text, st.text(max_size=300), max_examples=100)


def test_random_json_values_get_well_formed_frames(fuzz_target):
    fuzz_run(fuzz_target, send_json, st.tuples(json_values, st.booleans()), max_examples=100)


def test_protocol_shaped_messages_get_well_formed_frames(fuzz_target):
    fuzzer = fuzz_run(fuzz_target, send_json, st.tuples(protocol_messages, st.booleans()), max_examples=150)
    assert fuzzer.answers > 0, "some generated questions must have been answered"


def test_random_bytes_close_with_1003(fuzz_target):
    fuzz_run(fuzz_target, Fuzzer.check_bytes, st.binary(min_size=1, max_size=200), max_examples=40)


def test_empty_binary_message_closes_with_1003(fuzz_target):
    fuzzer = Fuzzer(fuzz_target["url"], fuzz_target["key"])
    try:
        fuzzer.check_bytes(b"")
    finally:
        fuzzer.close()


# -- inputs found while fuzzing ---------------------------------------------------------
def test_deeply_nested_json_is_an_argument_error(fuzz_target):
    fuzzer = Fuzzer(fuzz_target["url"], fuzz_target["key"])
    try:
        for text in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
            frames = fuzzer.exchange(text)
            assert frames[0]["code"] == 101 and frames[0]["message"] == "invalid JSON: nested too deeply"
            assert frames[1] == {"code": 0, "message": "", "data": True}
        fuzzer.assert_alive()
    finally:
        fuzzer.close()


def test_integer_with_too_many_digits_is_an_argument_error(fuzz_target):
    fuzzer = Fuzzer(fuzz_target["url"], fuzz_target["key"])
    try:
        frames = fuzzer.exchange('{"question": "hi", "last_seq": ' + "1" * 5000 + "}")
        assert frames[0]["code"] == 101 and frames[1]["data"] is True
        fuzzer.assert_alive()
    finally:
        fuzzer.close()


@pytest.mark.parametrize(
    "message",
    [
        {"question": RETURNS_Q, "req_id": "\ud800"},
        {"type": "ping", "req_id": "\udfff"},
        {"question": RETURNS_Q, "kb_ids": ["\ud800"]},
        {"question": "hi \ud800"},
        {"question": RETURNS_Q, "session_id": "\ud800"},
    ],
    ids=["req_id", "ping-req_id", "kb_ids", "question", "session_id"],
)
def test_lone_surrogates_get_an_argument_error(fuzz_target, message):
    fuzzer = Fuzzer(fuzz_target["url"], fuzz_target["key"])
    try:
        frames = fuzzer.exchange(json.dumps(message), timeout=3)  # ASCII JSON with \\u escapes
        assert frames[-1].get("data") is True or frames[-1].get("type") == "pong", frames
        assert all(f.get("code", 0) in ALLOWED_CODES for f in frames), frames
        fuzzer.assert_alive()
    finally:
        fuzzer.close()
