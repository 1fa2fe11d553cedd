"""WebSocket completions against the real server: frames, auth, errors, disconnects."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from test.support.server import (
    ServerProcess,
    Tenant,
    auth,
    corpus_files,
    make_chat,
    make_corpus,
    make_dataset,
    run_cli,
    session_messages,
    variant_env,
)
from test.support.ws import (
    ask,
    chat_url,
    content_frames,
    joined_answer,
    read_answer,
    recv_json,
)


@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    """A parsed dataset of the shipped documents and an offline-model chat over it."""
    dataset_id, docs, (chat_id,) = await make_corpus(server, tenant, corpus_files(corpus_dir), {})
    return {"dataset_id": dataset_id, "chat_id": chat_id, "docs": docs}


async def test_streams_cited_answer_in_deltas(server, tenant, corpus, api):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "How many days do I have to return a purchase?")
    assert frames[-1] == {"code": 0, "message": "", "data": True}
    content = content_frames(frames)
    assert len(content) > 3, "the answer must stream in several frames"
    assert all(not f["data"]["final"] for f in content[:-1])
    final = content[-1]["data"]
    assert final["final"] is True and final["answer"] == ""
    assert final["reference"]["chunks"], "the final frame carries the references"
    assert final["reference"]["chunks"][0]["document_name"] == "returns.md"
    answer = joined_answer(frames)
    assert "30 days" in answer and "[ID:0]" in answer
    ids = {f["data"]["id"] for f in content}
    sessions = {f["data"]["session_id"] for f in content}
    assert len(ids) == 1 and len(sessions) == 1
    messages = await session_messages(api, corpus["chat_id"], sessions.pop())
    assert messages[-1]["role"] == "assistant" and messages[-1]["id"] == ids.pop()
    assert messages[-1]["content"] == answer, "deltas concatenate to exactly the saved answer"
    assert messages[-1]["reference"]["chunks"][0]["document_name"] == "returns.md"
    assert messages[-1]["interrupted"] is False
    assert messages[-2] == {"id": messages[-2]["id"], "role": "user", "content": "How many days do I have to return a purchase?"}


async def test_chinese_question_retrieves_chinese_passage(server, tenant, corpus):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "退货政策是什么？")
    final = content_frames(frames)[-1]["data"]
    assert final["reference"]["chunks"][0]["document_name"] == "zh_policy.md"
    assert "三十天" in joined_answer(frames)


async def test_legacy_answers_are_cumulative(server, tenant, corpus):
    async with connect(chat_url(server, corpus["chat_id"]) + f"?token={tenant.api_key}") as ws:
        frames = await ask(ws, "How long does standard shipping take?", legacy=True)
    content = content_frames(frames)
    answers = [f["data"]["answer"] for f in content]
    assert len(answers) > 2
    for shorter, longer in zip(answers, answers[1:]):
        assert longer.startswith(shorter)
    assert "3 to 5 business days" in answers[-1]


async def test_stream_false_sends_one_frame(server, tenant, corpus):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "What does the warranty cover?", stream=False)
    assert len(frames) == 2 and frames[1]["data"] is True
    data = frames[0]["data"]
    assert "manufacturing defects" in data["answer"] and data["reference"]["chunks"]


async def test_multi_turn_on_one_connection_sends_history(server, tenant, api, openai_server):
    dataset_id, _ = await make_dataset(api, {"faq.txt": b"The Lumen lamp uses a 5 watt LED bulb.\n\nIt is made in Portugal."})
    chat = await make_chat(api, [dataset_id], llm={"model_name": "echo"})
    async with connect(chat_url(server, chat["id"]), additional_headers=auth(tenant)) as ws:
        first = await ask(ws, "Which bulb does the lamp use?")
        session_id = content_frames(first)[-1]["data"]["session_id"]
        second = await ask(ws, "Where is it made?", session_id=session_id)
    assert content_frames(second)[-1]["data"]["session_id"] == session_id
    sent = openai_server.requests[-1]["messages"]
    roles = [m["role"] for m in sent]
    assert roles == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "Which bulb does the lamp use?"
    assert sent[2]["content"] == joined_answer(first)
    assert sent[3]["content"] == "Where is it made?"
    assert "made in Portugal" in sent[0]["content"], "retrieved knowledge is in the system prompt"
    messages = await session_messages(api, chat["id"], session_id)
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("refine_multiturn", [True, False])
async def test_follow_up_retrieves_with_the_earlier_question(server, tenant, corpus, api, refine_multiturn):
    # "How long does it last?" shares no word with the documents: only the earlier
    # question of the session ("... lamp warranty?") can find the warranty passage.
    chat = await make_chat(api, [corpus["dataset_id"]], prompt={"refine_multiturn": refine_multiturn})
    assert chat["prompt"]["refine_multiturn"] is refine_multiturn
    async with connect(chat_url(server, chat["id"]), additional_headers=auth(tenant)) as ws:
        first = await ask(ws, "How long is the lamp warranty?")
        session_id = content_frames(first)[-1]["data"]["session_id"]
        second = await ask(ws, "How long does it last?", session_id=session_id)
    final = content_frames(second)[-1]["data"]
    names = {chunk["document_name"] for chunk in final["reference"]["chunks"]}
    if refine_multiturn:
        assert "two-year warranty" in joined_answer(second) and names == {"warranty.txt"}
    else:
        assert joined_answer(second) == chat["prompt"]["empty_response"] and not names


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        ("not json", 101, "invalid JSON"),
        ("[1, 2]", 101, "JSON object"),
        (json.dumps({"stream": True}), 101, "`question` is required"),
        (json.dumps({"question": "   "}), 101, "`question` is required"),
        (json.dumps({"question": "hi", "stream": "yes"}), 101, "`stream` must be true or false"),
        (json.dumps({"question": "hi", "session_id": "nope"}), 102, "doesn't own the session"),
        (json.dumps({"question": "hi", "kb_ids": ["other"]}), 101, "kb_ids must be datasets of this chat"),
    ],
)
async def test_bad_request_gets_error_frame_and_connection_stays_open(server, tenant, corpus, payload, code, fragment):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        await ws.send(payload)
        frames = await read_answer(ws)
        assert frames[0]["code"] == code
        assert fragment in frames[0]["message"]
        assert frames[0]["data"] == {"answer": f"**ERROR**: {frames[0]['message']}", "reference": []}
        assert "Traceback" not in frames[0]["message"]
        assert frames[-1]["data"] is True
        again = await ask(ws, "How many days do I have to return a purchase?")
        assert "30 days" in joined_answer(again)


async def test_model_failure_mid_stream_is_an_error_frame(server, tenant, api):
    dataset_id, _ = await make_dataset(api, {"a.txt": b"Lamps are bright."})
    chat = await make_chat(api, [dataset_id], llm={"model_name": "fail-midstream"}, prompt={"empty_response": ""})
    async with connect(chat_url(server, chat["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "Are lamps bright?")
        error = [f for f in frames if f["code"] != 0]
        assert len(error) == 1 and error[0]["code"] == 500
        assert error[0]["message"] == "the chat model stopped mid-answer"
        partial = joined_answer(frames)
        assert partial, "the text streamed before the failure was delivered"
        session_id = content_frames(frames)[0]["data"]["session_id"]
        messages = await session_messages(api, chat["id"], session_id)
        assert messages[-1]["content"] == partial and messages[-1]["interrupted"] is True
        await ws.send(json.dumps({"question": "still there?"}))
        assert (await recv_json(ws))["code"] in (0, 500)


async def test_chat_of_another_tenant_is_refused_with_1008(server, other_tenant, corpus):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(other_tenant)) as ws:
        frame = await recv_json(ws)
        assert frame["code"] == 102 and "chat" in frame["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"Authorization": "Bearer ragsocket-wrong"}, ""), ({}, "?token=not-a-token"), ({"Authorization": "Basic abc"}, "")],
)
async def test_bad_credentials_get_109_then_1008(server, corpus, headers, query):
    async with connect(chat_url(server, corpus["chat_id"]) + query, additional_headers=headers) as ws:
        frame = await recv_json(ws)
        assert frame["code"] == 109 and frame["data"] is None
        assert frame["message"].startswith(("Authentication error", "Authorization"))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008


async def test_session_token_and_revoked_key(server, tenant, corpus):
    token = json.loads(run_cli(server.env, "--json", "session-token", tenant.tenant_id).stdout)["session_token"]
    async with connect(chat_url(server, corpus["chat_id"]) + f"?token={token}") as ws:
        assert "30 days" in joined_answer(await ask(ws, "How many days do I have to return a purchase?"))
    issued = json.loads(run_cli(server.env, "--json", "create-key", tenant.tenant_id).stdout)
    assert run_cli(server.env, "revoke-key", issued["key_id"]).returncode == 0
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(issued["api_key"])) as ws:
        frame = await recv_json(ws)
        assert frame["code"] == 109 and "revoked" in frame["message"]


async def test_binary_frame_closes_with_1003(server, tenant, corpus):
    async with connect(chat_url(server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        await ws.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed):
            await recv_json(ws)
    assert ws.close_code == 1003
    assert "binary" in ws.close_reason


@pytest.fixture(scope="module")
def slow_server(server_env, tmp_path_factory):
    """A second server whose offline model blocks its thread 50 ms between words."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "slow", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.05")) as process:
        yield process


async def test_disconnect_mid_stream_saves_partial_answer(slow_server, tenant, corpus, api):
    async with connect(chat_url(slow_server, corpus["chat_id"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "How many days do I have to return a purchase?"}))
        received = [await recv_json(ws) for _ in range(3)]
    session_id = received[0]["data"]["session_id"]
    got = "".join(f["data"]["answer"] for f in received)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = await session_messages(api, corpus["chat_id"], session_id)
        if messages[-1]["role"] == "assistant":
            break
        await asyncio.sleep(0.05)
    saved = messages[-1]
    assert saved["role"] == "assistant" and saved["interrupted"] is True
    assert saved["content"].startswith(got)
    full = "You can return any purchase within 30 days of delivery for a full refund."
    assert len(saved["content"]) < len(full), "generation stopped soon after the disconnect"


async def test_event_loop_stays_responsive_during_20_blocking_streams(slow_server, tenant, corpus):
    """20 streams whose model blocks its worker thread in ``time.sleep`` between
    words: a WebSocket ping on another connection must still come back quickly."""
    url = chat_url(slow_server, corpus["chat_id"])

    async def stream() -> str:
        async with connect(url, additional_headers=auth(tenant)) as ws:
            return joined_answer(await ask(ws, "How many days do I have to return a purchase?"))

    async with connect(url, additional_headers=auth(tenant)) as probe:
        tasks = [asyncio.create_task(stream()) for _ in range(20)]
        await asyncio.sleep(0.3)
        round_trips = []
        while not all(t.done() for t in tasks):
            started = time.perf_counter()
            await asyncio.wait_for(await probe.ping(), 5)
            round_trips.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*tasks)
    assert all("30 days" in a for a in answers)
    assert len(round_trips) >= 5
    assert max(round_trips) < 0.1, f"ping round trips (s): {sorted(round_trips)[-5:]}"
