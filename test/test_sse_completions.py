"""``POST /api/v1/chats/<chat_id>/completions`` over HTTP: SSE frames and one-envelope answers."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from test.support.openai_server import ERROR_500_MESSAGE, echo_answer
from test.support.server import (
    ServerProcess,
    Tenant,
    corpus_files,
    make_chat,
    make_corpus,
    ok,
    session_messages,
    unique,
)
from test.support.ws import content_frames

END = {"code": 0, "message": "", "data": True}


@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    """The shipped documents, parsed, and an offline-model chat over them."""
    empty = {"prompt": {"empty_response": "Nothing relevant was found."}}
    dataset_id, _, (chat_id,) = await make_corpus(server, tenant, corpus_files(corpus_dir), empty, name=unique("sse"))
    return {"dataset_id": dataset_id, "chat_id": chat_id}


async def sse(api: httpx.AsyncClient, chat_id: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    """POST a completion and read every SSE event (asserting the ``data:`` framing)."""
    async with api.stream("POST", f"/chats/{chat_id}/completions", json=body) as response:
        raw = (await response.aread()).decode()
    assert raw.endswith("\n\n"), raw[-200:]
    events = raw[:-2].split("\n\n")
    frames = []
    for event in events:
        assert event.startswith("data:") and "\n" not in event, event
        frames.append(json.loads(event[len("data:"):]))
    return response, frames


async def test_sse_streams_deltas_then_final_then_end_marker(api, corpus):
    question = "How many days do I have to return a purchase?"
    response, frames = await sse(api, corpus["chat_id"], {"question": question})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert frames[-1] == END
    data = content_frames(frames)
    assert len(data) == len(frames) - 1 and len(data) > 3
    assert all(f["message"] == "" for f in data)
    assert all(f["data"]["final"] is False and f["data"]["reference"] == {} for f in data[:-1])
    final = data[-1]["data"]
    assert final["final"] is True and final["answer"] == ""
    assert final["reference"]["chunks"][0]["document_name"] == "returns.md"
    assert final["reference"]["total"] == len(final["reference"]["chunks"])
    assert final["reference"]["doc_aggs"][0]["doc_name"] == "returns.md"
    answer = "".join(f["data"]["answer"] for f in data)
    assert "30 days" in answer and "[ID:0]" in answer
    assert len({f["data"]["id"] for f in data}) == 1 and len({f["data"]["session_id"] for f in data}) == 1
    messages = await session_messages(api, corpus["chat_id"], final["session_id"])
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"], "a new session, opened by the prologue"
    assert messages[1]["content"] == question
    assert messages[2]["content"] == answer and messages[2]["id"] == final["id"]
    assert messages[2]["reference"] == final["reference"] and messages[2]["interrupted"] is False


async def test_given_session_is_continued(api, corpus):
    session = ok(await api.post(f"/chats/{corpus['chat_id']}/sessions", json={"name": "continued"}))
    _, first = await sse(api, corpus["chat_id"], {"question": "How long does standard shipping take?", "session_id": session["id"]})
    _, second = await sse(api, corpus["chat_id"], {"question": "What does the warranty cover?", "session_id": session["id"]})
    assert {f["data"]["session_id"] for f in content_frames(first) + content_frames(second)} == {session["id"]}
    messages = await session_messages(api, corpus["chat_id"], session["id"])
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant", "user", "assistant"]
    assert messages[3]["content"] == "What does the warranty cover?"
    assert messages[4]["content"] == "".join(f["data"]["answer"] for f in content_frames(second))
    assert "manufacturing defects" in messages[4]["content"]
    assert len(ok(await api.get(f"/chats/{corpus['chat_id']}/sessions", params={"name": "continued"}))) == 1


async def test_legacy_answers_are_cumulative(api, corpus):
    _, frames = await sse(api, corpus["chat_id"], {"question": "How long does standard shipping take?", "legacy": True})
    data = content_frames(frames)
    answers = [f["data"]["answer"] for f in data]
    assert len(answers) > 2
    for shorter, longer in itertools.pairwise(answers):
        assert longer.startswith(shorter)
    assert data[-1]["data"]["final"] is True and "3 to 5 business days" in answers[-1]
    messages = await session_messages(api, corpus["chat_id"], data[-1]["data"]["session_id"])
    assert messages[-1]["content"] == answers[-1]


async def test_stream_false_is_one_envelope(api, corpus):
    response = await api.post(
        f"/chats/{corpus['chat_id']}/completions", json={"question": "What does the warranty cover?", "stream": False}
    )
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == 0 and body["message"] == ""
    data = body["data"]
    assert {"answer", "reference", "id", "session_id", "final"} <= set(data)
    assert "manufacturing defects" in data["answer"] and data["final"] is True
    assert data["reference"]["chunks"][0]["document_name"] == "warranty.txt"
    messages = await session_messages(api, corpus["chat_id"], data["session_id"])
    assert messages[-1]["content"] == data["answer"] and messages[-1]["id"] == data["id"]


async def test_empty_response_when_nothing_is_relevant(api, corpus):
    _, frames = await sse(api, corpus["chat_id"], {"question": "zebra xylophone quasar"})
    data = content_frames(frames)
    assert "".join(f["data"]["answer"] for f in data) == "Nothing relevant was found."
    assert data[-1]["data"]["reference"] == {"total": 0, "chunks": [], "doc_aggs": []}
    assert frames[-1] == END
    body = (await api.post(f"/chats/{corpus['chat_id']}/completions", json={"question": "zebra xylophone quasar", "stream": False})).json()
    assert body["data"]["answer"] == "Nothing relevant was found."


async def test_openai_compatible_model_answers_through_sse(api, corpus, openai_server):
    chat = await make_chat(api, [corpus["dataset_id"]], llm={"model_name": "echo"})
    question = "What does the warranty cover?"
    _, frames = await sse(api, chat["id"], {"question": question})
    assert frames[-1] == END
    data = content_frames(frames)
    answer = "".join(f["data"]["answer"] for f in data)
    sent = openai_server.requests[-1]
    assert sent["model"] == "echo" and sent["stream"] is True
    assert sent["messages"][-1] == {"role": "user", "content": question}
    assert answer == echo_answer(sent["messages"])
    assert answer.startswith(f"You asked: {question}. The knowledge says: ")
    assert len(data) > 5, "the upstream stream is relayed piece by piece"
    assert data[-1]["data"]["reference"]["chunks"][0]["document_name"] == "warranty.txt"


async def test_model_error_is_an_error_frame_then_the_end_marker(api, corpus):
    chat = await make_chat(api, [corpus["dataset_id"]], llm={"model_name": "error-500"})
    response, frames = await sse(api, chat["id"], {"question": "What does the warranty cover?"})
    assert response.status_code == 200
    message = "the chat model failed: upstream answered 500"
    assert frames == [
        {"code": 500, "message": message, "data": {"answer": f"**ERROR**: {message}", "reference": []}},
        END,
    ]
    assert ERROR_500_MESSAGE not in json.dumps(frames) and "Traceback" not in json.dumps(frames)
    body = (await api.post(f"/chats/{chat['id']}/completions", json={"question": "What does the warranty cover?", "stream": False})).json()
    assert body == {"code": 500, "message": message, "data": None}
    sessions = ok(await api.get(f"/chats/{chat['id']}/sessions"))
    assert len(sessions) == 2
    for session in sessions:
        assert [m["role"] for m in session["messages"]] == ["assistant", "user", "assistant"]
        assert session["messages"][-1]["content"] == "" and session["messages"][-1]["interrupted"] is True


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({}, 101, "`question` is required and must be a non-empty string"),
        ({"question": "  "}, 101, "`question` is required and must be a non-empty string"),
        ({"question": 5}, 101, "`question` is required and must be a non-empty string"),
        ({"question": "hi", "stream": "yes"}, 101, "`stream` must be true or false"),
        ({"question": "hi", "session_id": "nope"}, 102, "The chat doesn't own the session nope"),
    ],
)
async def test_bad_requests_are_envelopes(api, corpus, body, code, message):
    response = await api.post(f"/chats/{corpus['chat_id']}/completions", json=body)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"code": code, "message": message, "data": None}


async def test_malformed_json_and_unknown_chat(api):
    response = await api.post("/chats/abc/completions", content=b"{", headers={"Content-Type": "application/json"})
    body = response.json()
    assert body["code"] == 101 and body["message"].startswith("invalid JSON")
    body = (await api.post(f"/chats/{'0' * 32}/completions", json={"question": "hi"})).json()
    assert body == {"code": 102, "message": f"You don't own the chat {'0' * 32}", "data": None}
