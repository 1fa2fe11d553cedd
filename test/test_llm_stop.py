"""Stopping an answer whose OpenAI-compatible model has gone quiet ends it at once."""

from __future__ import annotations

import json
import time

from websockets.asyncio.client import connect

from test.support.openai_server import STALL, STALL_SECONDS
from test.support.server import api_client, auth, make_chat
from test.support.ws import agent_url, chat_url, content_frames, read_answer, recv_json


async def test_stop_while_the_model_is_silent_ends_the_answer_promptly(server, tenant):
    async with api_client(server, tenant) as api:
        chat_id = (await make_chat(api, [], llm={"model_name": STALL}))["id"]
    async with connect(chat_url(server, chat_id), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "hello?", "req_id": "a"}))
        first = await recv_json(ws)
        assert first["code"] == 0 and first["data"]["answer"] == "first ", first
        stopped = time.monotonic()
        await ws.send(json.dumps({"type": "stop", "req_id": "a"}))
        frames = await read_answer(ws, timeout=STALL_SECONDS)
        elapsed = time.monotonic() - stopped
        assert elapsed < 2, f"the answer ended {elapsed:.1f} s after the stop"
        last = content_frames(frames)[-1]["data"]
        assert last["final"] is True and last["interrupted"] is True
        assert all(frame["code"] == 0 for frame in frames), frames  # a stop is not a model failure

        # the connection (and the model's connection pool) serve the next question
        await ws.send(json.dumps({"type": "ping", "req_id": "p"}))
        assert (await recv_json(ws))["type"] == "pong"


async def test_stop_while_an_agent_model_is_silent_ends_the_run_promptly(server, tenant):
    async with api_client(server, tenant) as api:
        body = {"title": f"stall-{time.monotonic_ns()}", "dsl": {"llm": {"model_name": STALL}, "tools": [{"type": "calculator"}]}}
        response = await api.post("/agents", json=body)
        agent_id = response.json()["data"]["id"]
    async with connect(agent_url(server, agent_id), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "hello?", "req_id": "a"}))
        while (frame := await recv_json(ws)).get("event") != "message":
            assert frame["code"] == 0, frame
        assert frame["data"]["content"] == "first ", frame
        stopped = time.monotonic()
        await ws.send(json.dumps({"type": "stop", "req_id": "a"}))
        frames = await read_answer(ws, timeout=STALL_SECONDS)
        elapsed = time.monotonic() - stopped
    assert elapsed < 2, f"the run ended {elapsed:.1f} s after the stop"
    end = frames[-2]
    assert end["event"] == "message_end" and end["data"]["interrupted"] is True, frames
    assert end["data"]["content"] == "first "
