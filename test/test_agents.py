"""Agents against the real server: the API, the offline plan and function calling over
WebSocket and SSE, tools that fail or time out, limits, MCP, disconnects, tenants."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from test.support.agents import MCP_SERVER, ragflow_canvas, retrieval_agent, serve_http
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    corpus_files,
    make_corpus,
    ok,
    saved_session,
    variant_env,
)
from test.support.ws import agent_url, ask, recv_json

QUESTION = "How many days do I have to return a purchase, and what is 30 * 2?"
#: The echo MCP server's command line, as the open server's RAGSOCKET_AGENT_MCP_COMMANDS allows it.
ECHO_LINE = (sys.executable, MCP_SERVER)


# -- helpers -------------------------------------------------------------------------
async def make_agent(api: httpx.AsyncClient, dsl: dict, **fields) -> dict:
    body = {"title": f"agent-{time.monotonic_ns()}", "description": "test agent", "dsl": dsl, **fields}
    return ok(await api.post("/agents", json=body))


def events(frames: list[dict]) -> list[str]:
    """Event names, consecutive ``message`` frames counted once."""
    names: list[str] = []
    for frame in frames:
        name = frame.get("event", "marker" if frame.get("data") is True else "?")
        if not (name == "message" and names and names[-1] == "message"):
            names.append(name)
    return names


def of(frames: list[dict], event: str) -> list[dict]:
    return [f["data"] for f in frames if f.get("event") == event]


def streamed(frames: list[dict]) -> str:
    return "".join(d["content"] for d in of(frames, "message"))


def script(tool: str, **arguments) -> str:
    """A question for the ``agent-tool`` test model: call ``tool`` with ``arguments``."""
    return json.dumps({"tool": tool, "arguments": arguments})


def requests_of(openai_server, model: str) -> list[dict]:
    return [r for r in list(openai_server.requests) if r.get("model") == model]


async def last_session(api: httpx.AsyncClient, agent_id: str, session_id: str) -> dict:
    return await saved_session(api, agent_id, session_id, kind="agents")


@pytest.fixture(scope="module")
async def corpus(server: ServerProcess, tenant: Tenant, corpus_dir) -> dict:
    dataset_id, _, _ = await make_corpus(server, tenant, corpus_files(corpus_dir))
    return {"dataset_id": dataset_id}


# -- the offline plan over WebSocket (the "done when") -------------------------
async def test_offline_agent_with_retrieval_and_calculator_over_websocket(server, tenant, api, corpus):
    agent = await make_agent(api, {"tools": [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]]}, {"type": "calculator"}]})
    assert agent["dsl"]["llm"]["model_name"] == "ragsocket-offline" and agent["dsl"]["max_iterations"] == 5
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, QUESTION, req_id="q1")
    assert events(frames) == [
        "thinking", "tool_call_start", "tool_call_end",
        "thinking", "tool_call_start", "tool_call_end",
        "thinking", "message", "message_end", "marker",
    ]
    assert frames[-1] == {"code": 0, "message": "", "data": True, "req_id": "q1"}
    assert all(f["code"] == 0 and f["req_id"] == "q1" for f in frames)
    assert [f["data"]["seq"] for f in frames[:-1]] == list(range(1, len(frames)))
    assert [d["step"] for d in of(frames, "thinking")] == [1, 2, 3]
    starts, ends = of(frames, "tool_call_start"), of(frames, "tool_call_end")
    assert [(s["call_id"], s["tool_name"], s["arguments"]) for s in starts] == [
        ("call_1", "retrieval", {"question": QUESTION}), ("call_2", "calculator", {"expression": "30 * 2"}),
    ]
    assert [(e["call_id"], e["tool_name"], e["status"]) for e in ends] == [("call_1", "retrieval", "completed"), ("call_2", "calculator", "completed")]
    assert ends[0]["result"].startswith("[ID:0] (returns.md) ")
    assert ends[1]["result"] == "60"
    assert all(isinstance(e["elapsed_ms"], int) and e["elapsed_ms"] >= 0 for e in ends)
    end = of(frames, "message_end")[0]
    answer = streamed(frames)
    assert end["content"] == answer
    assert "30 days" in answer and "[ID:0]" in answer and answer.endswith("30 * 2 = 60.")
    assert end["reference"]["chunks"][0]["document_name"] == "returns.md"
    assert end["reference"]["total"] == len(end["reference"]["chunks"])
    assert [c["tool_name"] for c in end["tool_calls"]] == ["retrieval", "calculator"]
    assert end["tool_calls"][1] == {"call_id": "call_2", "tool_name": "calculator", "arguments": {"expression": "30 * 2"}, "result": "60", "status": "completed", "elapsed_ms": ends[1]["elapsed_ms"]}
    ids = {f["data"]["id"] for f in frames[:-1]}
    session_ids = {f["data"]["session_id"] for f in frames[:-1]}
    assert len(ids) == 1 and len(session_ids) == 1
    session = await last_session(api, agent["id"], session_ids.pop())
    messages = session["messages"]
    assert [m["role"] for m in messages] == ["assistant", "user", "assistant"]
    assert messages[0]["content"] == agent["dsl"]["prologue"]
    assert messages[1]["content"] == QUESTION
    assert messages[2] == {
        "id": ids.pop(), "role": "assistant", "content": answer, "reference": end["reference"],
        "tool_calls": end["tool_calls"], "interrupted": False,
    }


async def test_offline_agent_current_time_and_no_tool(server, tenant, api):
    agent = await make_agent(api, {"tools": [{"type": "current_time"}, {"type": "calculator"}]})
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "What time is it in Asia/Shanghai?")
        plain = await ask(ws, "Tell me a story")
    assert of(frames, "tool_call_start")[0]["arguments"] == {"timezone": "Asia/Shanghai"}
    assert of(frames, "tool_call_end")[0]["result"].endswith("(" + time.strftime("%A", time.gmtime(time.time() + 8 * 3600)) + ", Asia/Shanghai)")
    assert streamed(frames).startswith("The current time in Asia/Shanghai is ")
    assert events(plain) == ["thinking", "message", "message_end", "marker"]
    assert of(plain, "message_end")[0]["content"] == "I could not find an answer to this with my tools."


# -- function calling against the loopback OpenAI-compatible server -------------------
async def test_function_calling_calls_calculator_then_answers(server, tenant, api, openai_server):
    agent = await make_agent(api, {"llm": {"model_name": "agent-tool", "temperature": 0.2}, "tools": [{"type": "calculator"}], "system_prompt": "Use tools."})
    before = len(requests_of(openai_server, "agent-tool"))
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, script("calculator", expression="(2+3)*4"))
    assert events(frames) == ["thinking", "tool_call_start", "tool_call_end", "thinking", "message", "message_end", "marker"]
    assert of(frames, "tool_call_start")[0] | {"seq": 0} == {
        "call_id": "call_1", "tool_name": "calculator", "arguments": {"expression": "(2+3)*4"},
        "session_id": frames[0]["data"]["session_id"], "id": frames[0]["data"]["id"], "seq": 0,
    }
    assert of(frames, "tool_call_end")[0]["result"] == "20"
    assert streamed(frames) == "Tool result: 20" == of(frames, "message_end")[0]["content"]
    sent = requests_of(openai_server, "agent-tool")[before:]
    assert len(sent) == 2
    assert sent[0]["stream"] is True and sent[0]["temperature"] == 0.2
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["calculator"]
    assert sent[0]["messages"][0] == {"role": "system", "content": "Use tools."}
    assert sent[1]["messages"][-2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "(2+3)*4"}'}}],
    }
    assert sent[1]["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "20"}


@pytest.mark.parametrize(
    ("question", "result"),
    [
        (script("calculator", expression="1/0"), "error: division by zero"),
        (script("shell", command="rm -rf /"), "error: there is no tool named 'shell'"),
        (script("calculator", expression="__import__('os')"), "error: not an arithmetic expression: only numbers, operators, parentheses and math functions are allowed"),
    ],
)
async def test_a_failing_tool_is_a_result_the_model_sees(server, tenant, api, question, result):
    agent = await make_agent(api, {"llm": {"model_name": "agent-tool"}, "tools": [{"type": "calculator"}]})
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, question)
        again = await ask(ws, script("calculator", expression="2*21"))
    end = of(frames, "tool_call_end")[0]
    assert (end["status"], end["result"]) == ("error", result)
    assert of(frames, "message_end")[0]["content"] == f"Tool result: {result}"
    assert of(frames, "message_end")[0]["tool_calls"][0]["status"] == "error"
    assert streamed(again) == "Tool result: 42", "the connection serves the next question"


async def test_iteration_limit_stops_a_model_that_never_answers(server, tenant, api, openai_server):
    agent = await make_agent(api, {"llm": {"model_name": "agent-loop"}, "tools": [{"type": "calculator"}], "max_iterations": 3})
    before = len(requests_of(openai_server, "agent-loop"))
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "Loop forever")
    assert events(frames) == ["thinking", "tool_call_start", "tool_call_end"] * 3 + ["message", "message_end", "marker"]
    final = "I stopped here: this agent may take at most 3 steps and had no final answer yet."
    assert streamed(frames) == final == of(frames, "message_end")[0]["content"]
    assert len(requests_of(openai_server, "agent-loop")) - before == 3
    assert len(of(frames, "message_end")[0]["tool_calls"]) == 3


async def test_time_limit_stops_the_run(server, tenant, api):
    agent = await make_agent(api, {"llm": {"model_name": "agent-slow-loop"}, "tools": [{"type": "calculator"}], "time_limit": 1.2})
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "Work slowly")
    content = of(frames, "message_end")[0]["content"]
    assert content.endswith("\n\nI stopped here: this agent's time limit of 1.2 seconds was reached.")
    assert of(frames, "thinking")[-1]["step"] == 2


async def test_time_limit_cuts_a_streaming_answer(server, tenant, api, openai_server):
    """``slow`` streams 20 pieces 0.2 s apart (4 s): the 1 s limit closes the stream."""
    agent = await make_agent(api, {"llm": {"model_name": "slow"}, "time_limit": 1})
    started = time.monotonic()
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "Take your time")
        elapsed = time.monotonic() - started
        assert streamed(await ask(ws, "Take your time again")).startswith("tick0 "), "the connection serves the next question"
    assert elapsed < 2.5, f"answered after {elapsed:.1f} s"
    assert events(frames) == ["thinking", "message", "message_end", "marker"]
    end = of(frames, "message_end")[0]
    text, _, final = end["content"].partition("\n\n")
    assert final == "I stopped here: this agent's time limit of 1 seconds was reached."
    assert text.startswith("tick0 tick1 ") and "tick19" not in text
    assert streamed(frames) == end["content"]
    assert "interrupted" not in end
    saved = (await last_session(api, agent["id"], end["session_id"]))["messages"][-1]
    assert (saved["content"], saved["interrupted"]) == (end["content"], False)


async def test_model_not_configured_or_failing_is_an_error_frame(server, tenant, api):
    agent = await make_agent(api, {"llm": {"model_name": "error-500"}, "tools": [{"type": "calculator"}]})
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "Hello")
        assert events(frames) == ["thinking", "error", "marker"]
        error = frames[1]
        assert (error["code"], error["message"]) == (500, "the chat model failed: upstream answered 500")
        assert error["data"]["answer"] == "**ERROR**: the chat model failed: upstream answered 500"
        session = await last_session(api, agent["id"], error["data"]["session_id"])
        assert session["messages"][-1]["interrupted"] is True


# -- SSE and stream: false --------------------------------------------------------------
def sse_payloads(text: str) -> list:
    lines = [block for block in text.split("\n\n") if block]
    assert all(line.startswith("data:") for line in lines), lines
    return [line[len("data:"):] if line == "data:[DONE]" else json.loads(line[len("data:"):]) for line in lines]


async def test_sse_events_in_ragflow_agent_format(api, corpus):
    agent = await make_agent(api, {"tools": [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]]}, {"type": "calculator"}]})
    response = await api.post(f"/agents/{agent['id']}/completions", json={"question": QUESTION, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    names = [p["event"] for p in payloads[:-1]]
    assert names[:7] == ["thinking", "tool_call_start", "tool_call_end", "thinking", "tool_call_start", "tool_call_end", "thinking"]
    assert set(names[7:-1]) == {"message"} and names[-1] == "message_end"
    message_ids = {p["message_id"] for p in payloads[:-1]}
    assert len(message_ids) == 1 and all(p["session_id"] for p in payloads[:-1])
    assert all(set(p) == {"event", "message_id", "session_id", "created_at", "data"} for p in payloads[:-1])
    text = "".join(p["data"]["content"] for p in payloads if isinstance(p, dict) and p["event"] == "message")
    end = payloads[-2]["data"]
    assert end["content"] == text and end["reference"]["chunks"][0]["document_name"] == "returns.md"


async def test_stream_false_returns_the_whole_answer(api, corpus):
    agent = await make_agent(api, {"tools": [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]]}, {"type": "calculator"}]})
    session = ok(await api.post(f"/agents/{agent['id']}/sessions", json={"name": "s1", "user_id": "u1"}))
    assert [m["content"] for m in session["messages"]] == [agent["dsl"]["prologue"]]
    data = ok(await api.post(f"/agents/{agent['id']}/completions", json={"question": QUESTION, "stream": False, "session_id": session["id"]}))
    assert set(data) == {"id", "session_id", "content", "reference", "tool_calls", "interrupted", "data"}
    assert data["data"] == {"content": data["content"], "reference": data["reference"]}  # RAGFlow SDK reads data.data
    assert data["session_id"] == session["id"] and data["interrupted"] is False
    assert "30 days" in data["content"] and data["content"].endswith("30 * 2 = 60.")
    assert data["reference"]["chunks"][0]["document_name"] == "returns.md"
    assert [c["tool_name"] for c in data["tool_calls"]] == ["retrieval", "calculator"]
    listed = ok(await api.get(f"/agents/{agent['id']}/sessions", params={"user_id": "u1"}))
    assert [s["id"] for s in listed] == [session["id"]]
    assert [m["role"] for m in listed[0]["messages"]] == ["assistant", "user", "assistant"]
    ok(await api.request("DELETE", f"/agents/{agent['id']}/sessions", json={"ids": [session["id"]]}))
    assert ok(await api.get(f"/agents/{agent['id']}/sessions")) == []


# -- the agents API ---------------------------------------------------------------------
async def test_agent_crud(api):
    agent = await make_agent(api, {"tools": [{"type": "calculator"}]}, title="crud-agent")
    assert (agent["title"], agent["description"]) == ("crud-agent", "test agent")
    duplicate = (await api.post("/agents", json={"title": "crud-agent", "dsl": {}})).json()
    assert duplicate == {"code": 102, "message": "Agent with title crud-agent already exists.", "data": None}
    updated = ok(await api.put(f"/agents/{agent['id']}", json={"description": "new", "dsl": {"max_iterations": 2}}))
    assert (updated["description"], updated["dsl"]["max_iterations"], updated["dsl"]["tools"]) == ("new", 2, [])
    assert [a["id"] for a in ok(await api.get("/agents", params={"title": "crud-agent"}))] == [agent["id"]]
    bad = (await api.put(f"/agents/{agent['id']}", json={"dsl": {"max_iterations": 50}})).json()
    assert bad == {"code": 101, "message": "`dsl.max_iterations`: Input should be less than or equal to 20", "data": None}
    assert ok(await api.delete(f"/agents/{agent['id']}")) is True
    assert ok(await api.get("/agents", params={"id": agent["id"]})) == []
    gone = (await api.delete(f"/agents/{agent['id']}")).json()
    assert gone["code"] == 102 and gone["message"] == f"You don't own the agent {agent['id']}"


async def test_offline_iteration_limit_answers_from_the_results_so_far(server, tenant, api, corpus):
    dsl = {"tools": [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]]}, {"type": "calculator"}], "max_iterations": 1}
    agent = await make_agent(api, dsl)
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, QUESTION)
    assert events(frames) == ["thinking", "tool_call_start", "tool_call_end", "thinking", "message", "message_end", "marker"]
    assert [d["step"] for d in of(frames, "thinking")] == [1, 2]
    assert [s["tool_name"] for s in of(frames, "tool_call_start")] == ["retrieval"], "the calculator call is past the limit"
    end = of(frames, "message_end")[0]
    answer, _, final = end["content"].partition("\n\n")
    assert "30 days" in answer and "[ID:0]" in answer and "30 * 2" not in answer
    assert final == "I stopped here: this agent may take at most 1 steps and had no final answer yet."
    assert streamed(frames) == end["content"] and end["reference"]["chunks"][0]["document_name"] == "returns.md"
    saved = (await last_session(api, agent["id"], end["session_id"]))["messages"][-1]
    assert (saved["content"], saved["interrupted"], saved["reference"]) == (end["content"], False, end["reference"])


async def test_agent_validation_messages(api):
    missing = (await api.post("/agents", json={"title": "x"})).json()
    assert missing == {"code": 101, "message": "`dsl`: Field required", "data": None}
    wrong = (await api.post("/agents", json={"title": "x", "dsl": {"tools": [{"type": "retrieval", "dataset_ids": []}]}})).json()
    assert wrong["code"] == 101 and wrong["message"] == "`dsl.tools.0.retrieval.dataset_ids`: List should have at least 1 item after validation, not 0"
    foreign = (await api.post("/agents", json={"title": "x", "dsl": {"tools": [{"type": "retrieval", "dataset_ids": ["nope"]}]}})).json()
    assert foreign["code"] == 102 and "nope" in foreign["message"]


def canvas(dataset_id: str, extra: dict | None = None) -> dict:
    return ragflow_canvas(retrieval_agent(dataset_id, max_rounds=4), extra, globals={}, graph={})


async def test_ragflow_canvas_import(server, tenant, api, corpus):
    agent = await make_agent(api, canvas(corpus["dataset_id"]))
    assert agent["dsl"]["prologue"] == "Canvas says hi" and agent["dsl"]["max_iterations"] == 4
    assert agent["dsl"]["tools"] == [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]], "top_n": 3, "similarity_threshold": 0.2}]
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "How many days do I have to return a purchase?")
    assert "30 days" in of(frames, "message_end")[0]["content"]
    extra = {"Categorize:C": {"obj": {"component_name": "Categorize", "params": {}}, "downstream": [], "upstream": []}}
    refused = (await api.post("/agents", json={"title": "canvas-refused", "dsl": canvas(corpus["dataset_id"], extra)})).json()
    assert refused == {
        "code": 101, "data": None,
        "message": "unsupported canvas components: Categorize:C (Categorize); only the template Begin → Agent → Message can be imported",
    }


async def test_cross_tenant_access_refused(server, tenant, other_tenant, api, other_api):
    agent = await make_agent(api, {"tools": [{"type": "calculator"}]})
    session = ok(await api.post(f"/agents/{agent['id']}/sessions", json={}))
    expected = {"code": 102, "message": f"You don't own the agent {agent['id']}", "data": None}
    calls = [
        other_api.put(f"/agents/{agent['id']}", json={"title": "stolen"}),
        other_api.delete(f"/agents/{agent['id']}"),
        other_api.post(f"/agents/{agent['id']}/sessions", json={}),
        other_api.get(f"/agents/{agent['id']}/sessions"),
        other_api.request("DELETE", f"/agents/{agent['id']}/sessions", json={"ids": None}),
        other_api.post(f"/agents/{agent['id']}/completions", json={"question": "1+1", "stream": False}),
        other_api.post(f"/agents/{agent['id']}/completions", json={"question": "1+1"}),
    ]
    for response in await asyncio.gather(*calls):
        assert response.json() == expected
    assert ok(await other_api.get("/agents", params={"id": agent["id"]})) == []
    wrong_session = (await api.post(f"/agents/{agent['id']}/completions", json={"question": "1+1", "session_id": "nope"})).json()
    assert wrong_session == {"code": 102, "message": "The agent doesn't own the session nope", "data": None}
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(other_tenant)) as ws:
        frame = await recv_json(ws)
        assert frame["code"] == 102 and frame["message"] == expected["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 1008
    assert len(ok(await api.get(f"/agents/{agent['id']}/sessions", params={"id": session["id"]}))) == 1


# -- disconnect mid-run ------------------------------------------------------------------
async def test_disconnect_mid_run_stops_the_loop_and_saves_interrupted(server, tenant, api, openai_server):
    agent = await make_agent(api, {"llm": {"model_name": "agent-slow-loop"}, "tools": [{"type": "calculator"}], "max_iterations": 10})
    before = len(requests_of(openai_server, "agent-slow-loop"))
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        await ws.send(json.dumps({"question": "Work slowly"}))
        seen = []
        while True:
            frame = await recv_json(ws)
            seen.append(frame)
            if frame.get("event") == "message" and frame["data"]["content"] == "step2a ":
                break
    session_id = seen[0]["data"]["session_id"]
    assert len(requests_of(openai_server, "agent-slow-loop")) - before == 2
    await asyncio.sleep(2.0)  # step 2 would end after 0.8 s and step 3 begin right after
    assert len(requests_of(openai_server, "agent-slow-loop")) - before == 2, "no model request after the disconnect"
    deadline = time.monotonic() + 10
    while True:
        messages = (await last_session(api, agent["id"], session_id))["messages"]
        if messages[-1]["role"] == "assistant" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    answer = messages[-1]
    assert answer["interrupted"] is True
    assert answer["content"].startswith("step1a step1b step1c step1d step1e step2a ")
    assert "step3" not in answer["content"]
    assert [(c["tool_name"], c["arguments"], c["result"]) for c in answer["tool_calls"]] == [("calculator", {"expression": "1*10"}, "10")]


# -- a server whose operator allows private URLs and an MCP command ----------------------
class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path == "/api/slow":
            time.sleep(3)
        body = b"pong" if self.path == "/api/ping" else b"late"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def loopback_http() -> Iterator[str]:
    with serve_http(_Slow) as url:
        yield url


@pytest.fixture(scope="module")
def open_server(server_env, tmp_path_factory) -> Iterator[ServerProcess]:
    env = variant_env(
        server_env, tmp_path_factory, "open-data", RAGSOCKET_AGENT_ALLOW_PRIVATE_URLS="true",
        RAGSOCKET_AGENT_MCP_COMMANDS=f"{shlex.join([sys.executable, '-V'])}, {shlex.join(ECHO_LINE)}",
    )
    with ServerProcess(env) as process:
        yield process


async def test_http_request_tool_against_loopback(server, open_server, tenant, api, loopback_http):
    dsl = {"llm": {"model_name": "agent-tool"}, "tools": [{"type": "http_request", "allowed_url_prefixes": [f"{loopback_http}/api/"], "timeout": 0.5}]}
    agent = await make_agent(api, dsl)
    async with connect(agent_url(open_server, agent["id"]), additional_headers=auth(tenant)) as ws:
        fetched = await ask(ws, script("http_request", url=f"{loopback_http}/api/ping"))
        slow = await ask(ws, script("http_request", url=f"{loopback_http}/api/slow"))
        outside = await ask(ws, script("http_request", url=f"{loopback_http}/admin"))
    assert of(fetched, "tool_call_end")[0]["result"] == "HTTP 200\npong"
    assert streamed(fetched) == "Tool result: HTTP 200\npong"
    timed_out = of(slow, "tool_call_end")[0]
    assert (timed_out["status"], timed_out["result"]) == ("error", "error: the request timed out after 0.5 s")
    assert 400 <= timed_out["elapsed_ms"] < 2000
    assert streamed(slow) == "Tool result: error: the request timed out after 0.5 s"
    assert of(outside, "tool_call_end")[0]["result"] == f"error: refused: {loopback_http}/admin is not under an allowed URL prefix of this agent"
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        refused = await ask(ws, script("http_request", url=f"{loopback_http}/api/ping"))
    end = of(refused, "tool_call_end")[0]
    assert end["status"] == "error" and end["result"].startswith(
        "error: refused: 127.0.0.1 resolves to a private, loopback or link-local address (127.0.0.1)"
    ), "the shared server keeps RAGSOCKET_AGENT_ALLOW_PRIVATE_URLS=false"


async def test_mcp_tool_server_started_by_the_agent(server, open_server, tenant, openai_server):
    dsl = {"llm": {"model_name": "agent-tool"}, "tools": [{"type": "mcp", "command": sys.executable, "args": [MCP_SERVER], "timeout": 20}]}
    async with api_client(open_server, tenant) as open_api:
        agent = await make_agent(open_api, dsl)
    before = len(requests_of(openai_server, "agent-tool"))
    async with connect(agent_url(open_server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, script("echo", text="hello mcp"))
    assert of(frames, "tool_call_end")[0] | {"elapsed_ms": 0, "seq": 0} == {
        "call_id": "call_1", "tool_name": "echo", "result": "echo: hello mcp", "status": "completed", "elapsed_ms": 0,
        "session_id": frames[0]["data"]["session_id"], "id": frames[0]["data"]["id"], "seq": 0,
    }
    assert streamed(frames) == "Tool result: echo: hello mcp"
    offered = requests_of(openai_server, "agent-tool")[before]["tools"]
    assert sorted(t["function"]["name"] for t in offered) == ["add", "echo", "fail", "sleep"]
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        refused = await ask(ws, script("echo", text="hi"))
    assert of(refused, "tool_call_end")[0]["result"] == "error: there is no tool named 'echo'", "the shared server allows no MCP command"
    assert f"agent MCP server command line `{shlex.join(ECHO_LINE)}` is not allowed by RAGSOCKET_AGENT_MCP_COMMANDS" in server.log_tail(200)


def mcp_dsl(*line: str, **fields) -> dict:
    return {"tools": [{"type": "mcp", "command": line[0], "args": list(line[1:]), **fields}]}


async def test_mcp_command_line_not_allowed_is_refused_on_create_and_update(server, open_server, tenant, api):
    python_c = (sys.executable, "-c", "import os; os.system('touch /tmp/pwned')")
    quoted = shlex.join(python_c)
    expected = {
        "code": 101, "data": None,
        "message": f"`dsl.tools.0.mcp`: the command line `{quoted}` is not allowed by RAGSOCKET_AGENT_MCP_COMMANDS "
                   "(an entry must equal the command and all its arguments exactly)",
    }
    disabled = {
        "code": 101, "data": None,
        "message": f"`dsl.tools.0.mcp`: the command line `{shlex.join(ECHO_LINE)}` is not allowed by RAGSOCKET_AGENT_MCP_COMMANDS "
                   "(it is empty, so stdio MCP servers are disabled on this server)",
    }
    title = f"mcp-refused-{time.monotonic_ns()}"
    assert (await api.post("/agents", json={"title": title, "dsl": mcp_dsl(*ECHO_LINE)})).json() == disabled
    async with api_client(open_server, tenant) as open_api:
        assert (await open_api.post("/agents", json={"title": title, "dsl": mcp_dsl(*python_c)})).json() == expected
        assert (await open_api.post("/agents", json={"title": title, "dsl": mcp_dsl(sys.executable)})).json()["code"] == 101
        assert ok(await open_api.get("/agents", params={"title": title})) == []
        agent = await make_agent(open_api, mcp_dsl(sys.executable, "-V"), title=title)
        assert (await open_api.put(f"/agents/{agent['id']}", json={"dsl": mcp_dsl(*python_c)})).json() == expected
        env = mcp_dsl(sys.executable, "-V", env={"PYTHONSTARTUP": "/tmp/evil.py"})
        refused_env = (await open_api.put(f"/agents/{agent['id']}", json={"dsl": env})).json()
        assert refused_env["code"] == 101 and refused_env["message"].startswith(
            "`dsl.tools.0.mcp.env`: PYTHONSTARTUP may not be set: it changes how the server's program is loaded or run"
        )
        (stored,) = ok(await open_api.get("/agents", params={"id": agent["id"]}))
        assert stored["dsl"]["tools"][0]["args"] == ["-V"] and stored["dsl"]["tools"][0]["env"] == {}
        updated = ok(await open_api.put(f"/agents/{agent['id']}", json={"dsl": mcp_dsl(*ECHO_LINE, timeout=20)}))
        assert updated["dsl"]["tools"][0]["args"] == [MCP_SERVER]
    http = {"tools": [{"type": "mcp", "transport": "streamable_http", "url": "https://mcp.example.com/mcp"}]}
    assert ok(await api.put(f"/agents/{agent['id']}", json={"dsl": http}))["dsl"]["tools"][0]["url"] == "https://mcp.example.com/mcp"


# -- the example client ------------------------------------------------------------------
async def test_python_client_prints_tool_events(server, tenant, api, corpus):
    agent = await make_agent(api, {"tools": [{"type": "retrieval", "dataset_ids": [corpus["dataset_id"]]}, {"type": "calculator"}]})
    client = Path(__file__).resolve().parents[1] / "example" / "websocket" / "python_client.py"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(client), "--host", f"127.0.0.1:{server.port}", "--token", tenant.api_key,
        "--agent-id", agent["id"], "--question", QUESTION,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert lines[0] == f'[tool] retrieval({{"question": "{QUESTION}"}}) ...'
    assert lines[1].startswith("[tool] retrieval completed in ") and ": [ID:0] (returns.md) " in lines[1]
    assert lines[2] == '[tool] calculator({"expression": "30 * 2"}) ...'
    assert lines[3].startswith("[tool] calculator completed in ") and lines[3].endswith(" ms: 60")
    assert "30 days" in lines[4] and lines[4].endswith("30 * 2 = 60.")
    assert lines[5] == "Sources:" and lines[6].startswith("  - returns.md (similarity ")
