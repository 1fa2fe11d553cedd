"""docs/asyncapi.yaml: AsyncAPI 3.0 shape, and real frames of a live server validated
against its message schemas (JSON Schema Draft 2020-12, ``$ref``s resolved in the
document). Every frame must match exactly one of the server messages of its channel,
and that one must be the kind the test expects. Covered: the native chat and agent
routes, the seed routes, and the Dify-style routes (``docs/dify_compat.md``); every
WebSocket route the app registers must be a channel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from websockets.asyncio.client import connect

from test.support.apidocs import DocumentSchemas, load_yaml, registered_routes
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    api_client,
    auth,
    corpus_files,
    make_corpus,
    ok,
)
from test.support.ws import agent_url, chat_url, read_answer, recv_json

ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
URI = "urn:ragsocket:asyncapi"
#: The Dify-style routes (``docs/dify_compat.md``): Dify's events, no completion marker.
DIFY_ROUTES = {"difyChatMessages": "/v1/ws/chat-messages", "difyCompletionMessages": "/v1/ws/completion-messages"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_yaml(ASYNCAPI)


@pytest.fixture(scope="module")
def schemas(doc) -> DocumentSchemas:
    return DocumentSchemas(doc, URI)


def message_names(doc: dict, channel: str, action: str) -> dict[str, str]:
    """Channel message key → components.messages name, for the operations of ``channel``
    with ``action`` (send / receive)."""
    names: dict[str, str] = {}
    for operation in doc["operations"].values():
        if operation["channel"]["$ref"] != f"#/channels/{channel}" or operation["action"] != action:
            continue
        for ref in operation["messages"]:
            prefix = f"#/channels/{channel}/messages/"
            assert ref["$ref"].startswith(prefix), ref
            key = ref["$ref"].removeprefix(prefix)
            target = doc["channels"][channel]["messages"][key]["$ref"]
            names[key] = target.removeprefix("#/components/messages/")
    return names


def matching(schemas: DocumentSchemas, doc: dict, channel: str, action: str, instance: Any) -> list[str]:
    """Keys of the channel's messages (for ``action``) whose payload ``instance`` matches."""
    found = []
    for key, name in message_names(doc, channel, action).items():
        if schemas.validator(f"#/components/messages/{name}/payload").is_valid(instance):
            found.append(key)
    return found


def check(schemas, doc, channel: str, frames: list[dict], expected: list[str]) -> None:
    """Each frame matches exactly one server message of ``channel``: the expected one."""
    assert len(frames) == len(expected), (frames, expected)
    for frame, kind in zip(frames, expected):
        found = matching(schemas, doc, channel, "receive", frame)
        if found != [kind]:
            name = message_names(doc, channel, "receive").get(kind)
            detail = schemas.errors(f"#/components/messages/{name}/payload", frame) if name else "unknown kind"
            raise AssertionError(f"frame {frame} matched {found}, expected only {kind!r}: {detail}")


def check_sent(schemas, doc, channel: str, message: dict, kind: str) -> dict:
    """A client message matches exactly its documented kind; returns it."""
    assert matching(schemas, doc, channel, "send", message) == [kind], message
    return message


def kinds(frames: list[dict]) -> list[str]:
    """The kind each frame should be, read off the frame by its documented meaning."""
    result = []
    for frame in frames:
        if frame.get("type") == "pong":
            result.append("pong")
        elif frame["data"] is True:
            result.append("completionMarker")
        elif frame["code"] != 0:
            result.append("error")
        else:
            result.append("final" if frame["data"]["final"] else "delta")
    return result


# -- the document ------------------------------------------------------------------

def test_document_is_asyncapi_3(doc):
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses >= {
        "/api/v1/ws/chats/{chat_id}/completions",
        "/api/v1/ws/agents/{agent_id}/completions",
        "/v1/ws/chat",
        "/v1/ws/health",
        *DIFY_ROUTES.values(),
    }
    for key, address in DIFY_ROUTES.items():
        assert doc["channels"][key]["address"] == address
    for channel in doc["channels"].values():
        for parameter in ("chat_id", "agent_id"):
            if "{%s}" % parameter in channel["address"]:
                assert parameter in channel["parameters"]
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_key = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel_key in doc["channels"], name
        for ref in operation["messages"]:
            key = ref["$ref"].removeprefix(f"#/channels/{channel_key}/messages/")
            assert key in doc["channels"][channel_key]["messages"], (name, ref)
    for channel in doc["channels"].values():
        for message in channel["messages"].values():
            assert message["$ref"].removeprefix("#/components/messages/") in doc["components"]["messages"]
    schemes = doc["components"]["securitySchemes"]
    assert {schemes[n]["type"] for n in schemes} == {"http", "httpApiKey"}
    assert {(s.get("in"), s.get("name")) for s in schemes.values()} >= {
        ("query", "ticket"), ("query", "token"), ("header", "Sec-WebSocket-Protocol"),
    }
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)


def test_every_registered_websocket_route_is_a_channel(doc, tmp_path):
    addresses = {channel["address"] for channel in doc["channels"].values()}
    routes = [r for r in registered_routes(tmp_path) if r["websocket"]]
    assert routes, "the app registers WebSocket routes"
    rules = {route["rule"] for route in routes}
    assert rules >= set(DIFY_ROUTES.values()), "the Dify-style routes are registered (and so checked below)"
    undocumented = sorted(rule for rule in rules if rule.replace("<", "{").replace(">", "}") not in addresses)
    assert not undocumented, f"WebSocket routes missing from docs/asyncapi.yaml: {undocumented}"
    stale = sorted(address for address in addresses if address.replace("{", "<").replace("}", ">") not in rules)
    assert not stale, f"channels of docs/asyncapi.yaml that the app does not register: {stale}"


# -- real frames -------------------------------------------------------------------

@pytest.fixture(scope="module")
async def chats(server: ServerProcess, tenant: Tenant, corpus_dir: Path) -> dict:
    """An offline chat over the shipped documents, and a slow chat (openai test server)."""
    dataset_id, _, (offline, slow) = await make_corpus(server, tenant, corpus_files(corpus_dir), {}, {"llm": {"model_name": "slow"}})
    return {"offline": offline, "slow": slow, "dataset_id": dataset_id}


async def test_streamed_answer_frames_match(server, tenant, chats, doc, schemas):
    async with connect(chat_url(server, chats["offline"]), additional_headers=auth(tenant)) as ws:
        request = check_sent(schemas, doc, "chatCompletions", {
            "question": "How many days do I have to return a purchase?", "req_id": "q1",
            "kb_ids": [chats["dataset_id"]], "resumable": False, "stream": True,
        }, "question")
        await ws.send(json.dumps(request))
        frames = await read_answer(ws)
        legacy = check_sent(schemas, doc, "chatCompletions", {"question": "How long does shipping take?", "legacy": True}, "question")
        await ws.send(json.dumps(legacy))
        legacy_frames = await read_answer(ws)
        whole = check_sent(schemas, doc, "chatCompletions", {"question": "What does the warranty cover?", "stream": False}, "question")
        await ws.send(json.dumps(whole))
        whole_frames = await read_answer(ws)
    expected = kinds(frames)
    assert expected.count("delta") > 2 and expected[-2:] == ["final", "completionMarker"]
    assert frames[-2]["data"]["reference"]["chunks"], "the final frame carries references"
    check(schemas, doc, "chatCompletions", frames, expected)
    check(schemas, doc, "chatCompletions", legacy_frames, kinds(legacy_frames))
    check(schemas, doc, "chatCompletions", whole_frames, ["final", "completionMarker"])


async def test_error_frames_match(server, tenant, chats, doc, schemas):
    async with connect(chat_url(server, chats["offline"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"stream": True, "req_id": "bad"}))
        missing = await read_answer(ws)
        await ws.send("not json")
        invalid = await read_answer(ws)
        await ws.send(json.dumps({"type": "stop"}))
        nothing_to_stop = await read_answer(ws)
    for frames in (missing, invalid, nothing_to_stop):
        check(schemas, doc, "chatCompletions", frames, ["error", "completionMarker"])
    assert missing[0]["code"] == 101 and missing[0]["req_id"] == "bad"
    assert nothing_to_stop[0]["code"] == 102
    async with connect(chat_url(server, chats["offline"]) + "?token=ragsocket-wrong") as ws:
        refused = await recv_json(ws)
    assert refused["code"] == 109 and refused["data"] is None
    check(schemas, doc, "chatCompletions", [refused], ["error"])
    async with connect(chat_url(server, "0" * 32), additional_headers=auth(tenant)) as ws:
        unknown_chat = await recv_json(ws)
    check(schemas, doc, "chatCompletions", [unknown_chat], ["error"])


async def test_pong_matches(server, tenant, chats, doc, schemas):
    async with connect(chat_url(server, chats["offline"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps(check_sent(schemas, doc, "chatCompletions", {"type": "ping"}, "ping")))
        plain = await recv_json(ws)
        await ws.send(json.dumps(check_sent(schemas, doc, "chatCompletions", {"type": "ping", "req_id": "p"}, "ping")))
        tagged = await recv_json(ws)
    assert tagged["req_id"] == "p"
    check(schemas, doc, "chatCompletions", [plain, tagged], ["pong", "pong"])


async def test_stopped_answer_ends_with_interrupted_final(server, tenant, chats, doc, schemas):
    async with connect(chat_url(server, chats["slow"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "How many days do I have to return a purchase?", "req_id": "s"}))
        first = await recv_json(ws)
        await ws.send(json.dumps(check_sent(schemas, doc, "chatCompletions", {"type": "stop", "req_id": "s"}, "stop")))
        rest = await read_answer(ws)
    frames = [first, *rest]
    final = frames[-2]
    assert final["data"]["final"] is True and final["data"].get("interrupted") is True
    check(schemas, doc, "chatCompletions", frames, kinds(frames))


async def test_resume_replay_matches(server, tenant, chats, doc, schemas):
    async with connect(chat_url(server, chats["slow"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "How many days do I have to return a purchase?", "resumable": True}))
        before = [await recv_json(ws) for _ in range(2)]
    check(schemas, doc, "chatCompletions", before, ["delta", "delta"])
    resume = check_sent(schemas, doc, "chatCompletions", {
        "type": "resume", "session_id": before[0]["data"]["session_id"],
        "message_id": before[0]["data"]["id"], "last_seq": 1, "req_id": "r",
    }, "resume")
    async with connect(chat_url(server, chats["slow"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps(resume))
        after = await read_answer(ws, timeout=30)
    assert after[0]["data"]["seq"] == 2, "the replay starts right after last_seq"
    assert all(frame["req_id"] == "r" for frame in after)
    assert kinds(after)[-2:] == ["final", "completionMarker"]
    check(schemas, doc, "chatCompletions", after, kinds(after))


async def test_seed_chat_frames_match(server, tenant, chats, doc, schemas):
    async with connect(f"{server.ws_root}/v1/ws/chat", additional_headers=auth(tenant)) as ws:
        question = check_sent(schemas, doc, "seedChat", {
            "type": "chat", "chat_id": chats["offline"], "question": "How long does standard shipping take?",
        }, "chatQuestion")
        await ws.send(json.dumps(question))
        frames = await read_answer(ws)
        await ws.send(json.dumps({"type": "chat", "question": "no chat id"}))
        missing = await read_answer(ws)
    check(schemas, doc, "seedChat", frames, kinds(frames))
    check(schemas, doc, "seedChat", missing, ["error", "completionMarker"])


async def test_health_greeting_and_echo_match(server, doc, schemas):
    async with connect(f"{server.ws_root}/v1/ws/health") as ws:
        greeting = await recv_json(ws)
        await ws.send(json.dumps({"hello": "世界"}))
        echo_json = await recv_json(ws)
        await ws.send("plain text")
        echo_text = await recv_json(ws)
    assert echo_json["data"] == {"hello": "世界"} and echo_text["data"] == "plain text"
    check(schemas, doc, "seedHealth", [greeting, echo_json, echo_text], ["greeting", "echo", "echo"])


async def test_agent_frames_match(server, tenant, chats, doc, schemas):
    async with api_client(server, tenant) as api:
        agent = ok(await api.post("/agents", json={
            "title": "asyncapi-agent",
            "dsl": {"tools": [{"type": "calculator"}, {"type": "retrieval", "dataset_ids": [chats["dataset_id"]]}]},
        }))
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps(check_sent(schemas, doc, "agentCompletions", {"question": "What is 6*7?", "req_id": "a"}, "question")))
        frames = await read_answer(ws)
        await ws.send(json.dumps({"question": ""}))
        bad = await read_answer(ws)
    expected = []
    event_kind = {
        "thinking": "thinking", "tool_call_start": "toolCallStart", "tool_call_end": "toolCallEnd",
        "message": "message", "message_end": "messageEnd", "error": "agentError",
    }
    for frame in frames:
        expected.append("completionMarker" if frame["data"] is True else event_kind[frame["event"]])
    assert expected[-2:] == ["messageEnd", "completionMarker"], frames
    assert "toolCallEnd" in expected, "the agent used a tool"
    check(schemas, doc, "agentCompletions", frames, expected)
    check(schemas, doc, "agentCompletions", bad, ["error", "completionMarker"])


# -- Dify-style routes (docs/dify_compat.md) -----------------------------------------

def dify_kinds(events: list[dict]) -> list[str]:
    """The channel message each Dify event should be, read off the event."""
    result = []
    for event in events:
        name = event["event"]
        if name == "message":
            result.append("blockingMessage" if "metadata" in event else "message")
        else:
            result.append({"message_end": "messageEnd", "error": "error", "pong": "pong"}[name])
    return result


async def read_dify(ws) -> list[dict]:
    """Events of one Dify request, up to its terminal event (``message_end``, ``error``,
    or the blocking ``message``): these routes send no completion marker."""
    events = []
    while True:
        event = await recv_json(ws)
        events.append(event)
        if event["event"] in ("message_end", "error") or (event["event"] == "message" and "metadata" in event):
            return events


def dify_url(server: ServerProcess, channel: str, chat_id: str | None = None) -> str:
    query = f"?chat_id={chat_id}" if chat_id else ""
    return f"{server.ws_root}{DIFY_ROUTES[channel]}{query}"


def test_dify_schemas_reject_wrong_shapes(doc, schemas):
    """The Dify schemas are not vacuous: shapes the code never emits match nothing."""
    ids = {"task_id": "m", "id": "m", "message_id": "m", "created_at": 1, "seq": 1}
    metadata = {"retriever_resources": [], "usage": {
        "prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1, "total_price": "0", "currency": "USD", "latency": 0.1}}
    good_end = {"event": "message_end", **ids, "conversation_id": "c", "metadata": metadata}
    assert matching(schemas, doc, "difyChatMessages", "receive", good_end) == ["messageEnd"]
    assert matching(schemas, doc, "difyCompletionMessages", "receive", good_end) == [], "completion events have no conversation_id"
    wrong = [
        {**good_end, "metadata": {"usage": metadata["usage"]}},  # no retriever_resources
        {"event": "message", **ids, "conversation_id": "c"},  # streamed message without answer
        {"event": "message", **ids, "conversation_id": "c", "answer": "x", "metadata": metadata},  # blocking without mode
        {"event": "error", "status": 418, "code": "teapot", "message": "x"},
        {"code": 0, "message": "", "data": True},  # the native completion marker is never sent here
        {"type": "pong", "ts": 1},  # a native pong: Dify's has "event": "pong"
    ]
    for frame in wrong:
        assert matching(schemas, doc, "difyChatMessages", "receive", frame) == [], frame
    for message in ({"query": "  "}, {"query": "hi", "type": "question"}, {"query": "hi", "response_mode": "sse"}, {"query": "hi", "files": [1]}):
        assert matching(schemas, doc, "difyChatMessages", "send", message) == [], message
    assert matching(schemas, doc, "difyCompletionMessages", "send", {"inputs": {"topic": "x"}}) == []


async def test_dify_chat_messages_streamed_and_blocking_match(server, tenant, chats, doc, schemas):
    channel = "difyChatMessages"
    async with connect(dify_url(server, channel, chats["offline"]), additional_headers=auth(tenant)) as ws:
        streamed_request = check_sent(schemas, doc, channel, {
            "query": "How many days do I have to return a purchase?", "inputs": {}, "conversation_id": "",
            "user": "u-1", "response_mode": "streaming", "req_id": "d1",
        }, "request")
        await ws.send(json.dumps(streamed_request))
        streamed = await read_dify(ws)
        conversation_id = streamed[-1]["conversation_id"]
        blocking_request = check_sent(schemas, doc, channel, {
            "query": "And what does the warranty cover?", "inputs": {}, "user": "u-1",
            "conversation_id": conversation_id, "response_mode": "blocking",
        }, "request")
        await ws.send(json.dumps(blocking_request))
        blocking = await read_dify(ws)
        await ws.send(json.dumps(check_sent(schemas, doc, channel, {"query": "Shipping time?", "chat_id": chats["offline"]}, "request")))
        default_mode = await read_dify(ws)
    expected = dify_kinds(streamed)
    assert expected.count("message") > 2 and expected[-1] == "messageEnd", streamed
    assert all(event["req_id"] == "d1" for event in streamed)
    assert streamed[-1]["metadata"]["retriever_resources"], "message_end carries the references"
    check(schemas, doc, channel, streamed, expected)
    check(schemas, doc, channel, blocking, ["blockingMessage"])
    assert blocking[0]["conversation_id"] == conversation_id and blocking[0]["mode"] == "chat"
    check(schemas, doc, channel, default_mode, ["blockingMessage"])


async def test_dify_completion_messages_match(server, tenant, chats, doc, schemas):
    channel = "difyCompletionMessages"
    async with connect(dify_url(server, channel, chats["offline"]), additional_headers=auth(tenant)) as ws:
        from_inputs = check_sent(schemas, doc, channel, {
            "inputs": {"query": "How long does standard shipping take?"}, "response_mode": "streaming", "user": "u-2",
        }, "request")
        await ws.send(json.dumps(from_inputs))
        streamed = await read_dify(ws)
        blocking_request = check_sent(schemas, doc, channel, {
            "query": "What does the warranty cover?", "conversation_id": "ignored", "user": "u-2",
        }, "request")
        await ws.send(json.dumps(blocking_request))
        blocking = await read_dify(ws)
    expected = dify_kinds(streamed)
    assert expected.count("message") > 2 and expected[-1] == "messageEnd", streamed
    check(schemas, doc, channel, streamed, expected)
    check(schemas, doc, channel, blocking, ["blockingMessage"])
    assert blocking[0]["mode"] == "completion"
    # chat-messages events carry conversation_id, completion-messages events do not:
    # each channel's schemas tell them apart.
    assert matching(schemas, doc, "difyChatMessages", "receive", streamed[0]) == []
    assert matching(schemas, doc, "difyChatMessages", "receive", blocking[0]) == []


async def test_dify_error_events_match(server, tenant, chats, doc, schemas):
    channel = "difyChatMessages"
    async with connect(dify_url(server, channel, chats["offline"]), additional_headers=auth(tenant)) as ws:
        assert matching(schemas, doc, channel, "send", {"inputs": {}, "user": "u"}) == [], "query is required"
        await ws.send(json.dumps({"inputs": {}, "user": "u", "req_id": "bad"}))
        missing_query = await read_dify(ws)
        await ws.send("not json")
        invalid_json = await read_dify(ws)
        await ws.send(json.dumps({"query": "hi", "chat_id": "0" * 32, "req_id": "foreign"}))
        unknown_chat = await read_dify(ws)
        await ws.send(json.dumps({"query": "hi", "conversation_id": "0" * 32, "response_mode": "streaming"}))
        unknown_conversation = await read_dify(ws)
        await ws.send(json.dumps({"type": "stop"}))
        nothing_to_stop = await read_dify(ws)
    for events in (missing_query, invalid_json, unknown_chat, unknown_conversation, nothing_to_stop):
        check(schemas, doc, channel, events, ["error"])
    assert missing_query[0]["status"] == 400 and missing_query[0]["req_id"] == "bad"
    assert unknown_chat[0]["code"] == "not_found" and unknown_chat[0]["req_id"] == "foreign"
    assert unknown_conversation[0]["status"] == 404
    async with connect(dify_url(server, "difyCompletionMessages"), additional_headers=auth("ragsocket-wrong")) as ws:
        refused = await recv_json(ws)
    assert refused["status"] == 401 and refused["code"] == "unauthorized"
    check(schemas, doc, "difyCompletionMessages", [refused], ["error"])
    async with connect(dify_url(server, channel, "0" * 32), additional_headers=auth(tenant)) as ws:
        unknown_url_chat = await recv_json(ws)
    check(schemas, doc, channel, [unknown_url_chat], ["error"])


async def test_dify_pong_and_stopped_answer_match(server, tenant, chats, doc, schemas):
    channel = "difyChatMessages"
    async with connect(dify_url(server, channel, chats["slow"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps(check_sent(schemas, doc, channel, {"type": "ping", "req_id": "p"}, "ping")))
        native_ping = await recv_json(ws)
        await ws.send(json.dumps(check_sent(schemas, doc, channel, {"event": "ping"}, "eventPing")))
        dify_ping = await recv_json(ws)
        await ws.send(json.dumps({"query": "How many days do I have to return a purchase?", "response_mode": "streaming"}))
        first = await recv_json(ws)
        await ws.send(json.dumps(check_sent(schemas, doc, channel, {"type": "stop"}, "stop")))
        rest = await read_dify(ws)
    assert native_ping["req_id"] == "p"
    check(schemas, doc, channel, [native_ping, dify_ping], ["pong", "pong"])
    events = [first, *rest]
    assert events[-1]["event"] == "message_end" and events[-1].get("interrupted") is True, events
    check(schemas, doc, channel, events, dify_kinds(events))
    async with connect(dify_url(server, "difyCompletionMessages", chats["offline"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps(check_sent(schemas, doc, "difyCompletionMessages", {"type": "ping"}, "ping")))
        pong = await recv_json(ws)
    check(schemas, doc, "difyCompletionMessages", [pong], ["pong"])
