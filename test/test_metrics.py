"""``GET /metrics``: Prometheus metrics after real WebSocket, SSE and failed requests.

The server is shared with other modules, so every check compares two scrapes taken
around the requests of the test.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    auth,
    corpus_files,
    make_chat,
    make_chat_over,
)
from test.support.ws import agent_url, ask, chat_url

QUESTION = "How many days do I have to return a purchase?"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
async def chat_id(server: ServerProcess, tenant: Tenant, corpus_dir) -> str:
    return await make_chat_over(server, tenant, corpus_files(corpus_dir))


async def scrape(server: ServerProcess) -> Samples:
    """Every sample of ``/metrics``, keyed by (name, sorted labels)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_count_answers_frames_requests_and_errors(server, tenant, chat_id):
    before = await scrape(server)

    async with connect(chat_url(server, chat_id), additional_headers=auth(tenant)) as ws:
        during = await scrape(server)
        ws_frames = await ask(ws, QUESTION)
    assert delta(before, during, "ragsocket_websocket_connections") == 1

    async with api_client(server, tenant) as api:
        async with api.stream("POST", f"/chats/{chat_id}/completions", json={"question": QUESTION}) as response:
            raw = (await response.aread()).decode()
        sse_events = raw.strip().split("\n\n")
        assert json.loads(sse_events[-1][len("data:"):]) == {"code": 0, "message": "", "data": True}
        refused = (await api.post(f"/chats/{chat_id}/completions", json={})).json()
        assert refused["code"] == 101
    async with httpx.AsyncClient(base_url=server.api_url, timeout=30) as anonymous:
        denied = (await anonymous.get("/datasets", headers={"Authorization": "Bearer ragsocket-wrong"})).json()
        assert denied["code"] == 109

    after = await scrape(server)
    for _ in range(50):  # the server handles the WebSocket close after the client returns
        if delta(before, after, "ragsocket_websocket_connections") == 0:
            break
        await asyncio.sleep(0.1)
        after = await scrape(server)
    assert delta(before, after, "ragsocket_websocket_connections") == 0

    assert delta(before, after, "ragsocket_frames_sent_total", transport="websocket") == len(ws_frames)
    assert delta(before, after, "ragsocket_frames_sent_total", transport="sse") == len(sse_events)

    route = "/api/v1/chats/<chat_id>/completions"
    assert delta(before, after, "ragsocket_http_requests_total", route=route, method="POST", outcome="success") == 1
    assert delta(before, after, "ragsocket_http_requests_total", route=route, method="POST", outcome="error") == 1
    assert delta(before, after, "ragsocket_http_requests_total", route="/api/v1/datasets", method="GET", outcome="error") == 1
    assert delta(before, after, "ragsocket_errors_total", code="101") == 1
    assert delta(before, after, "ragsocket_errors_total", code="109") == 1

    assert delta(before, after, "ragsocket_time_to_first_token_seconds_count") == 2
    assert delta(before, after, "ragsocket_stream_duration_seconds_count", outcome="completed") == 2
    first_token = delta(before, after, "ragsocket_time_to_first_token_seconds_sum")
    duration = delta(before, after, "ragsocket_stream_duration_seconds_sum", outcome="completed")
    assert 0 < first_token < duration < 20, (first_token, duration)
    assert delta(before, after, "ragsocket_time_to_first_token_seconds_bucket", le="+Inf") == 2
    answers = "ragsocket_answers_total"
    assert delta(before, after, answers, transport="websocket", kind="chat", outcome="completed") == 1
    assert delta(before, after, answers, transport="sse", kind="chat", outcome="completed") == 1


async def test_websocket_agent_answers_are_counted_by_kind(server, tenant):
    async with api_client(server, tenant) as api:
        body = {"title": f"metrics-agent-{asyncio.get_running_loop().time()}", "dsl": {"tools": [{"type": "calculator"}]}}
        agent_id = (await api.post("/agents", json=body)).json()["data"]["id"]
    before = await scrape(server)
    async with connect(agent_url(server, agent_id), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, "What is 12 * 7?")
    assert any("84" in (f.get("data") or {}).get("content", "") for f in frames if isinstance(f.get("data"), dict))
    after = await scrape(server)
    assert delta(before, after, "ragsocket_answers_total", transport="websocket", kind="agent", outcome="completed") == 1
    assert delta(before, after, "ragsocket_answers_total", transport="websocket", kind="chat", outcome="completed") == 0
    assert delta(before, after, "ragsocket_time_to_first_token_seconds_count") == 1


async def test_stream_error_frame_counts_its_code(server, tenant, openai_server):
    async with api_client(server, tenant) as api:
        chat = await make_chat(api, [], llm={"model_name": "error-500"})
        before = await scrape(server)
        async with api.stream("POST", f"/chats/{chat['id']}/completions", json={"question": "hi"}) as response:
            raw = (await response.aread()).decode()
    frames = [json.loads(event[len("data:"):]) for event in raw.strip().split("\n\n")]
    assert [f["code"] for f in frames] == [500, 0]
    after = await scrape(server)
    assert delta(before, after, "ragsocket_errors_total", code="500") == 1
    assert delta(before, after, "ragsocket_stream_duration_seconds_count", outcome="error") == 1
    assert delta(before, after, "ragsocket_answers_total", transport="sse", kind="chat", outcome="error") == 1
    # the model failed before any text: no time to first token
    assert delta(before, after, "ragsocket_time_to_first_token_seconds_count") == 0


async def test_unknown_path_is_counted_as_unmatched(server):
    before = await scrape(server)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/api/v1/no-such-route")
    assert response.status_code == 404
    after = await scrape(server)
    assert delta(before, after, "ragsocket_http_requests_total", route="unmatched", method="GET", outcome="error") == 1
    assert delta(before, after, "ragsocket_errors_total", code="404") == 1
