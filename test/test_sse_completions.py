"""``POST /api/v1/chats/<chat_id>/completions`` over HTTP: SSE frames and one-envelope answers."""

from __future__ import annotations

import itertools
import json
import re

import httpx
import pytest

from common.constants import RetCode
from test.support.openai_server import ERROR_500_MESSAGE, echo_answer
from test.support.server import (
    ROOT,
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


# -- what docs/http_api.md says about these routes -------------------------------------
HTTP_API_DOC = ROOT / "docs" / "http_api.md"


def documented_block(heading: str) -> str:
    """The first fenced block after ``heading`` in docs/http_api.md."""
    return HTTP_API_DOC.read_text(encoding="utf-8").split(heading, 1)[1].split("```", 2)[1]


async def test_documented_sse_example_has_the_fields_of_real_frames(api, corpus):
    _, frames = await sse(api, corpus["chat_id"], {"question": "How many days do I have to return a purchase?"})
    real = content_frames(frames)
    documented = [line[len("data:"):] for line in documented_block("### SSE format").splitlines() if line.startswith("data:")]
    assert json.loads(documented[-1]) == END == frames[-1]
    *deltas, final = documented[:-1]
    for line in deltas:
        frame = json.loads(line)
        assert set(frame) == set(real[0]) and set(frame["data"]) == set(real[0]["data"]), line
        assert frame["data"]["final"] is False
    assert [json.loads(line)["data"]["seq"] for line in deltas[:2]] == [1, 2]
    assert '"final":true' in final
    for key in real[-1]["data"]:  # the final frame is abridged (…), so not JSON
        assert f'"{key}":' in final, key

    whole = (await api.post(f"/chats/{corpus['chat_id']}/completions", json={"question": "refund?", "stream": False})).json()
    example = documented_block("### `stream: false`")
    for key in whole["data"]:
        assert f'"{key}":' in example, key


async def test_unknown_fields_are_refused_or_ignored_as_documented(api, corpus):
    conventions = HTTP_API_DOC.read_text(encoding="utf-8").split("## Conventions", 1)[1].split("###", 1)[0]
    assert "ignore the fields they do not" in conventions, conventions
    refused, ignored = conventions.split("ignore the fields they do not", 1)
    assert "completions" in ignored and "completions" not in refused and "`POST /retrieval`" in ignored
    assert "sessions" in refused and "datasets" in refused and "chats" in refused

    chat_id = corpus["chat_id"]
    body = (await api.post(f"/chats/{chat_id}/completions", json={"question": "refund?", "stream": False, "bogus": 1})).json()
    assert body["code"] == 0
    body = (await api.post("/retrieval", json={"question": "refund", "dataset_ids": [corpus["dataset_id"]], "bogus": 1})).json()
    assert body["code"] == 0
    body = (await api.post(f"/chats/{chat_id}/sessions", json={"name": "s", "bogus": 1})).json()
    assert body == {"code": 101, "message": "`bogus`: Extra inputs are not permitted", "data": None}


def test_error_code_table_lists_every_code_of_the_http_api():
    table = HTTP_API_DOC.read_text(encoding="utf-8").split("### Error codes", 1)[1].split("```", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    returned = {RetCode.SUCCESS, RetCode.ARGUMENT_ERROR, RetCode.DATA_ERROR, RetCode.AUTHENTICATION_ERROR,
                RetCode.TOO_MANY_REQUESTS, RetCode.SERVER_ERROR}
    assert {int(code) for code in returned} <= documented
    assert int(RetCode.TOO_MANY_REQUESTS) == 429


async def test_health_fields_are_the_documented_ones(server):
    from api.apps.sdk.system import health

    async with httpx.AsyncClient(timeout=10) as http:
        data = ok(await http.get(f"{server.api_url}/health"))
    row = next(line for line in HTTP_API_DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| `GET /health`"))
    for field in data:
        assert f'"{field}"' in health.__doc__, field
        assert f'"{field}"' in row, field
