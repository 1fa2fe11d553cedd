"""Dify-style WebSocket routes against the real server (``docs/dify_compat.md``):
/v1/ws/chat-messages and /v1/ws/completion-messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.db.services.conversation_service import AnswerDelta, AnswerDone
from api.streaming.dify_format import (
    DifyFramer,
    DifyKind,
    error_event,
    parse_dify_request,
)
from api.streaming.protocol import CompletionRequest, dumps
from common.errors import ArgumentError
from test.support.apidocs import DocumentSchemas, load_yaml
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    api_client,
    auth,
    corpus_files,
    create_tenant,
    make_chat,
    make_corpus,
    make_dataset,
    ok,
    session_messages,
    variant_env,
)

TIMEOUT = 20.0
TERMINAL = {"message_end", "error"}


def base(server: ServerProcess) -> str:
    return f"{server.ws_root}/v1/ws"


async def recv_raw(ws, timeout: float = TIMEOUT) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_event(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(await recv_raw(ws, timeout))


async def read_streamed(ws) -> list[dict]:
    """Events up to and including message_end or error."""
    events = []
    while True:
        event = await recv_event(ws)
        events.append(event)
        if event["event"] in TERMINAL:
            return events


async def send(ws, **payload: Any) -> None:
    await ws.send(json.dumps(payload))


async def assert_silent(ws, seconds: float = 0.3) -> None:
    """Nothing more arrives (the Dify request ended with its terminal event)."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    dataset_id, _, (chat_id,) = await make_corpus(server, tenant, corpus_files(corpus_dir), {}, name="dify-corpus")
    return {"dataset_id": dataset_id, "chat_id": chat_id}


# -- chat-messages ---------------------------------------------------------------------
async def test_streaming_events_in_order(server, tenant, corpus, api):
    url = f"{base(server)}/chat-messages?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await send(ws, query="How many days do I have to return a purchase?", inputs={}, user="u-1",
                   conversation_id="", response_mode="streaming")
        events = await read_streamed(ws)
        await assert_silent(ws)
    *messages, end = events
    assert len(messages) > 3 and {e["event"] for e in messages} == {"message"}
    assert end["event"] == "message_end"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    message_id, conversation_id = end["message_id"], end["conversation_id"]
    for event in events:
        assert event["message_id"] == event["id"] == event["task_id"] == message_id
        assert event["conversation_id"] == conversation_id
        assert isinstance(event["created_at"], int)
    answer = "".join(e["answer"] for e in messages)
    assert "30 days" in answer
    resources = end["metadata"]["retriever_resources"]
    first = resources[0]
    assert first["position"] == 1 and first["document_name"] == "returns.md"
    assert first["dataset_id"] == corpus["dataset_id"] and first["dataset_name"] == "dify-corpus"
    assert first["segment_id"] and first["document_id"] and "30 days" in first["content"]
    assert 0 < first["score"] <= 1
    usage = end["metadata"]["usage"]
    assert usage["completion_tokens"] > 0 and usage["total_tokens"] >= usage["completion_tokens"]
    assert usage["latency"] >= 0 and usage["currency"] == "USD"
    saved = await session_messages(api, corpus["chat_id"], conversation_id)
    assert saved[-1]["id"] == message_id and saved[-1]["content"] == answer, "deltas concatenate to the saved answer"
    assert saved[-2]["content"] == "How many days do I have to return a purchase?"


async def test_blocking_is_one_message_with_metadata(server, tenant, corpus):
    url = f"{base(server)}/chat-messages?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await send(ws, query="What does the warranty cover?", inputs={}, user="u-1")  # Dify's default: blocking
        event = await recv_event(ws)
        await assert_silent(ws)
    assert event["event"] == "message" and event["mode"] == "chat"
    assert "manufacturing defects" in event["answer"]
    assert event["metadata"]["retriever_resources"][0]["document_name"] == "warranty.txt"
    assert "usage" in event["metadata"] and event["conversation_id"] and event["seq"] == 1


async def test_conversation_continues_and_connection_stays_open(server, tenant, api, openai_server):
    dataset_id, _ = await make_dataset(api, {"lamp.txt": b"The Lumen lamp uses a 5 watt LED bulb.\n\nIt is made in Portugal."})
    chat = await make_chat(api, [dataset_id], llm={"model_name": "echo"})
    url = f"{base(server)}/chat-messages"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await send(ws, query="Which bulb does the lamp use?", chat_id=chat["id"], response_mode="streaming", user="u-2")
        first = await read_streamed(ws)
        conversation_id = first[-1]["conversation_id"]
        await send(ws, query="Where is it made?", chat_id=chat["id"], conversation_id=conversation_id,
                   response_mode="streaming", user="u-2")
        second = await read_streamed(ws)
    assert first[-1]["event"] == second[-1]["event"] == "message_end", (first[-1], second[-1])
    assert {e["conversation_id"] for e in second} == {conversation_id}
    assert second[-1]["message_id"] != first[-1]["message_id"]
    sent = openai_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "Which bulb does the lamp use?"
    assert sent[2]["content"] == "".join(e["answer"] for e in first[:-1])
    messages = await session_messages(api, chat["id"], conversation_id)
    assert [m["role"] for m in messages][-4:] == ["user", "assistant", "user", "assistant"]


async def test_unknown_conversation_is_an_error_event(server, tenant, corpus):
    url = f"{base(server)}/chat-messages?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await send(ws, query="Hello?", conversation_id="0" * 32, response_mode="streaming")
        event = await recv_event(ws)
        assert event["event"] == "error" and event["status"] == 404 and event["code"] == "not_found"
        await send(ws, query="What does the warranty cover?")
        assert (await recv_event(ws))["event"] == "message"


# -- completion-messages ---------------------------------------------------------------
async def test_completion_messages_each_query_a_fresh_session(server, tenant, corpus, api):
    async def session_count() -> int:
        return len(ok(await api.get(f"/chats/{corpus['chat_id']}/sessions", params={"page_size": 1000})))

    before = await session_count()
    url = f"{base(server)}/completion-messages?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await send(ws, inputs={"query": "How long does standard shipping take?"}, response_mode="streaming", user="u-3")
        streamed = await read_streamed(ws)
        await send(ws, query="What does the warranty cover?", conversation_id="ignored", user="u-3")
        blocking = await recv_event(ws)
    assert streamed[-1]["event"] == "message_end"
    assert "3 to 5 business days" in "".join(e["answer"] for e in streamed[:-1])
    assert all("conversation_id" not in e for e in [*streamed, blocking])
    assert blocking["event"] == "message" and blocking["mode"] == "completion"
    assert "manufacturing defects" in blocking["answer"]
    assert blocking["metadata"]["retriever_resources"][0]["document_name"] == "warranty.txt"
    assert await session_count() == before + 2


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("route", "payload", "fragment"),
    [
        ("chat-messages", {"inputs": {}, "user": "u"}, "`query` is required"),
        ("completion-messages", {"inputs": {"topic": "x"}}, "`query` (or `inputs.query`) is required"),
        ("chat-messages", {"query": "hi", "response_mode": "sse"}, "`response_mode`"),
        ("chat-messages", {"query": "hi", "inputs": [1]}, "`inputs` must be an object"),
        ("chat-messages", "not json", "invalid JSON"),
    ],
)
async def test_invalid_request_is_an_error_event_and_the_connection_stays_open(server, tenant, corpus, route, payload, fragment):
    url = f"{base(server)}/{route}?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await ws.send(payload if isinstance(payload, str) else json.dumps(payload))
        raw = await recv_raw(ws)
        event = json.loads(raw)
        assert event["event"] == "error" and event["status"] == 400 and event["code"] == "invalid_param"
        assert fragment in event["message"] and "Traceback" not in raw
        await assert_silent(ws)
        await send(ws, query="What does the warranty cover?")
        assert (await recv_event(ws))["event"] == "message"


async def test_error_events_with_quotes_are_valid_json(server, tenant, corpus):
    url = f"{base(server)}/chat-messages?chat_id={corpus['chat_id']}"
    async with connect(url, additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"type": 'say "hi" \\ bye'}))
        unknown_type = json.loads(await recv_raw(ws))
        await send(ws, query="hi", chat_id='no"such\\chat', req_id="q1")
        raw = await recv_raw(ws)
    assert unknown_type["event"] == "error" and '"hi"' in unknown_type["message"]
    foreign = json.loads(raw)  # a refusal of the connection loop, translated
    assert foreign == {"event": "error", "status": 404, "code": "not_found",
                       "message": "You don't own the chat no\"such\\chat", "req_id": "q1"}


def test_error_event_builder_escapes_everything():
    message = 'a "quoted" \\ back\nslash </script> 中文'
    text = dumps(error_event(101, message, "r1", task_id="t"))
    assert json.loads(text) == {"event": "error", "task_id": "t", "status": 400, "code": "invalid_param",
                                "message": message, "req_id": "r1"}


async def test_another_tenants_chat_is_refused(server, tenant, other_tenant, api):
    async with api_client(server, other_tenant) as other_api:
        dataset_id, _ = await make_dataset(other_api, {"secret.txt": b"The vault code is 1234."})
        foreign = await make_chat(other_api, [dataset_id])
    async with connect(f"{base(server)}/chat-messages?chat_id={foreign['id']}", additional_headers=auth(tenant)) as ws:
        event = await recv_event(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert event["event"] == "error" and event["status"] == 404 and foreign["id"] in event["message"]
    assert closed.value.rcvd.code == 1008
    own = await make_chat(api, [])
    async with connect(f"{base(server)}/chat-messages?chat_id={own['id']}", additional_headers=auth(tenant)) as ws:
        await send(ws, query="What is the vault code?", chat_id=foreign["id"], response_mode="streaming")
        event = await recv_event(ws)
        assert event["event"] == "error" and event["code"] == "not_found" and "1234" not in json.dumps(event)
        await send(ws, query="ping?", response_mode="streaming")  # still open, the URL's chat answers
        assert (await read_streamed(ws))[-1]["event"] == "message_end"


async def test_bad_key_is_an_error_event_then_1008(server):
    async with connect(f"{base(server)}/chat-messages", additional_headers=auth("nope")) as ws:
        event = await recv_event(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert event["event"] == "error" and event["status"] == 401 and event["code"] == "unauthorized"
    assert closed.value.rcvd.code == 1008


async def test_the_app_is_the_tenants_only_chat(server):
    solo = create_tenant(server.env, "dify-solo")
    async with (
        api_client(server, solo) as api,
        connect(f"{base(server)}/chat-messages", additional_headers=auth(solo)) as ws,
    ):
        await send(ws, query="Anyone there?")
        none = await recv_event(ws)
        dataset_id, _ = await make_dataset(api, {"faq.txt": b"Opening hours are 9 to 5."})
        await make_chat(api, [dataset_id])
        await send(ws, query="What are the opening hours?", response_mode="streaming")
        answered = await read_streamed(ws)
        await make_chat(api, [dataset_id])
        await send(ws, query="What are the opening hours?")
        several = await recv_event(ws)
    assert none["event"] == "error" and "no chat" in none["message"]
    assert answered[-1]["event"] == "message_end"
    assert answered[-1]["metadata"]["retriever_resources"][0]["document_name"] == "faq.txt"
    assert several["event"] == "error" and several["status"] == 400 and "several chats" in several["message"]


async def test_ping_and_stop(server, tenant, api):
    dataset_id, _ = await make_dataset(api, {"t.txt": b"Ticks are small."})
    chat = await make_chat(api, [dataset_id], llm={"model_name": "slow"}, prompt={"empty_response": ""})
    async with connect(f"{base(server)}/chat-messages?chat_id={chat['id']}", additional_headers=auth(tenant)) as ws:
        await send(ws, type="ping")
        pong = await recv_event(ws)
        await send(ws, event="ping")
        dify_pong = await recv_event(ws)
        await send(ws, query="Tick?", response_mode="streaming")
        first = await recv_event(ws)
        await send(ws, type="stop")
        events = [first, *await read_streamed(ws)]
    assert pong["event"] == dify_pong["event"] == "pong" and isinstance(pong["ts"], int)
    assert events[0]["event"] == "message" and events[-1]["event"] == "message_end"
    assert events[-1]["interrupted"] is True and len(events) < 21


@pytest.fixture(scope="module")
def ping_server(server_env, tmp_path_factory, corpus):
    """A server sending Dify's ping after 0.5 s without a frame (the corpus is made first:
    a starting server re-queues documents still parsing)."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "dify_ping", RAGSOCKET_DIFY_PING_INTERVAL="0.5")) as process:
        yield process


async def test_ping_event_while_a_request_runs_and_nothing_else_is_sent(ping_server, tenant, api):
    dataset_id, _ = await make_dataset(api, {"t.txt": b"Ticks are small."})
    chat = await make_chat(api, [dataset_id], llm={"model_name": "slow"}, prompt={"empty_response": ""})
    async with connect(f"{base(ping_server)}/chat-messages?chat_id={chat['id']}", additional_headers=auth(tenant)) as ws:
        await assert_silent(ws, 1.2)  # no request: no ping
        await send(ws, query="Tick?")  # blocking: silent for 20 x 0.2 s, then one message
        events = []
        while not events or events[-1]["event"] != "message":
            events.append(await recv_event(ws))
        *pings, message = events
        assert len(pings) >= 4 and all(ping == {"event": "ping"} for ping in pings), events
        schemas = DocumentSchemas(load_yaml(ROOT / "docs" / "asyncapi.yaml"), "urn:ragsocket:asyncapi")
        assert schemas.errors("#/components/messages/DifyServerPing/payload", pings[0]) == []
        assert "tick19" in message["answer"]
        await assert_silent(ws, 1.2)  # the request is over: no ping
        await send(ws, query="Tick?", response_mode="streaming")  # a message every 0.2 s: no ping needed
        streamed = [await recv_event(ws)]
        while streamed[-1]["event"] == "ping":  # before the first word (retrieval, the model's start)
            streamed.append(await recv_event(ws))
        streamed += [await recv_event(ws) for _ in range(4)]
        assert [e["event"] for e in streamed if e["event"] != "ping"] == ["message"] * 5, streamed
        assert streamed[-5:] == [e for e in streamed if e["event"] == "message"], "no ping between the words"
        await send(ws, type="stop")
        rest = await read_streamed(ws)
        assert rest[-1]["event"] == "message_end" and {e["event"] for e in rest[:-1]} <= {"message"}


async def test_api_key_alone_as_subprotocol_is_an_error_event_then_1008(server, tenant):
    async with connect(f"{base(server)}/chat-messages", subprotocols=[tenant.api_key]) as ws:
        event = await recv_event(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert event["event"] == "error" and event["status"] == 401 and '"ragsocket" subprotocol' in event["message"]
    assert closed.value.rcvd.code == 1008


# -- the framer, without I/O -------------------------------------------------------------
def test_framer_streaming_and_blocking_shapes():
    reference = {"chunks": [{"id": "c1", "content": "text", "document_id": "d1", "document_name": "a.md",
                             "dataset_id": "k1", "dataset_name": "K", "similarity": 0.5}]}
    events = [AnswerDelta("Hello ", "m1", "s1"), AnswerDelta("world", "m1", "s1"), AnswerDone("Hello world", reference, "m1", "s1")]
    framer = DifyFramer(CompletionRequest("q", stream=True, req_id="r"), DifyKind.CHAT, clock=lambda: 100.0)
    frames = [f for e in events for f in framer.feed(e)]
    assert [f["event"] for f in frames] == ["message", "message", "message_end"]
    assert frames[0] == {"event": "message", "task_id": "m1", "id": "m1", "message_id": "m1", "conversation_id": "s1",
                         "answer": "Hello ", "created_at": 100, "seq": 1, "req_id": "r"}
    assert frames[2]["metadata"]["retriever_resources"] == [{
        "position": 1, "dataset_id": "k1", "dataset_name": "K", "document_id": "d1", "document_name": "a.md",
        "segment_id": "c1", "score": 0.5, "content": "text"}]
    blocking = DifyFramer(CompletionRequest("q", stream=False), DifyKind.COMPLETION, clock=lambda: 100.0)
    frames = [f for e in events for f in blocking.feed(e)]
    assert len(frames) == 1 and frames[0]["answer"] == "Hello world" and frames[0]["mode"] == "completion"
    assert "conversation_id" not in frames[0]


def test_parse_dify_request():
    request = parse_dify_request({"query": " hi ", "conversation_id": "", "user": "u", "response_mode": "streaming"},
                                 DifyKind.CHAT, 100)
    assert request.to_native() == {"question": "hi", "stream": True}
    with pytest.raises(ArgumentError, match="too long"):
        parse_dify_request({"query": "x" * 101}, DifyKind.CHAT, 100)
    with pytest.raises(ArgumentError, match="`files`"):
        parse_dify_request({"query": "x", "files": [{"type": "image"}]}, DifyKind.CHAT, 100)
    completion = parse_dify_request({"inputs": {"query": "from inputs"}, "conversation_id": "c"}, DifyKind.COMPLETION, 100)
    assert completion.query == "from inputs" and completion.conversation_id is None and completion.streaming is False
