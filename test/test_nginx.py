"""docker/nginx.conf for real: Debian's nginx on loopback in front of the service,
streaming a WebSocket answer and an SSE answer through it (SSE events arrive while the
answer is still being written), and a quiet WebSocket that is not cut.

Install nginx with ``.ci/setup.d/nginx.sh``; without the binary the module is skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    auth,
    corpus_files,
    create_tenant,
    free_port,
    make_chat,
    make_parsed_dataset,
    variant_env,
)
from test.support.ws import ask, content_frames, joined_answer, recv_json

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (run .ci/setup.d/nginx.sh)")

CONF = ROOT / "docker" / "nginx.conf"
QUESTION = "How many days do I have to return a purchase?"


def render_conf(upstream: str, listen: str) -> str:
    """docker/nginx.conf with the ``# @upstream`` and ``# @listen`` lines replaced."""
    text = CONF.read_text()
    text, upstreams = re.subn(r"^(\s*)server\s+\S+;(\s*#\s*@upstream)", rf"\g<1>server {upstream};\2", text, flags=re.M)
    text, listens = re.subn(r"^(\s*)listen\s+\S+;(\s*#\s*@listen)", rf"\g<1>listen {listen};\2", text, flags=re.M)
    assert upstreams == 1 and listens == 1, "docker/nginx.conf must keep its @upstream and @listen lines"
    return text


@pytest.fixture(scope="module")
def slow_server(server_env: dict, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server whose offline answers take 50 ms per token."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "nginx_data", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.05")) as process:
        yield process


@pytest.fixture(scope="module")
def proxy(slow_server: ServerProcess, tmp_path_factory) -> Iterator[str]:
    """nginx with docker/nginx.conf on a free loopback port; yields ``127.0.0.1:PORT``."""
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render_conf(f"127.0.0.1:{slow_server.port}", f"127.0.0.1:{port}"))
    (prefix / "logs").mkdir()
    command = [NGINX, "-p", str(prefix), "-c", str(conf), "-g", f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    log = (prefix / "stdout.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def owner(slow_server: ServerProcess) -> Tenant:
    return create_tenant(slow_server.env, "nginx-tenant")


@pytest.fixture(scope="module")
async def chat_id(proxy: str, owner: Tenant, corpus_dir: Path) -> str:
    """A chat over the shipped documents, created through nginx (uploads included)."""
    async with httpx.AsyncClient(base_url=f"http://{proxy}/api/v1", headers=auth(owner), timeout=60) as api:
        dataset_id, _ = await make_parsed_dataset(api, corpus_files(corpus_dir))
        return (await make_chat(api, [dataset_id]))["id"]


def test_rendered_conf_is_valid_for_nginx(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_conf("127.0.0.1:9", f"127.0.0.1:{free_port()}"))
    (tmp_path / "logs").mkdir()
    result = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


async def test_websocket_answer_streams_through_nginx(proxy, owner, chat_id):
    url = f"ws://{proxy}/api/v1/ws/chats/{chat_id}/completions"
    async with connect(url, additional_headers=auth(owner)) as ws:
        frames = await ask(ws, QUESTION)
    assert frames[-1]["data"] is True
    content = content_frames(frames)
    assert len(content) > 3 and content[-1]["data"]["final"] is True
    assert "30 days" in joined_answer(frames)
    async with connect(f"ws://{proxy}/v1/ws/health") as ws:
        assert (await recv_json(ws))["status"] == "healthy"


async def test_sse_events_arrive_before_the_stream_ends(proxy, owner, chat_id):
    arrivals: list[float] = []
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.monotonic()
        async with client.stream(
            "POST",
            f"http://{proxy}/api/v1/chats/{chat_id}/completions",
            json={"question": QUESTION},
            headers={**auth(owner), "Accept-Encoding": "gzip"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in response.headers, "SSE must not be gzipped"
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    arrivals.append(time.monotonic() - started)
                    events.append(json.loads(line[5:]))
        ended = time.monotonic() - started
    assert events[-1]["data"] is True and len(events) > 5
    assert "30 days" in "".join(e["data"]["answer"] for e in events if isinstance(e["data"], dict))
    # 50 ms per token: the stream lasts about a second; buffering would deliver every
    # event at once at the end.
    assert ended > 0.5, f"the stream was too short ({ended:.2f} s) to tell buffering apart"
    assert arrivals[0] < ended - 0.4, f"first event at {arrivals[0]:.2f} s, stream ended at {ended:.2f} s"
    assert arrivals[len(arrivals) // 2] < ended - 0.2, "events arrive spread over the stream"


async def test_idle_websocket_is_not_cut(proxy, owner, chat_id):
    url = f"ws://{proxy}/api/v1/ws/chats/{chat_id}/completions"
    async with connect(url, additional_headers=auth(owner), ping_interval=None) as ws:
        await asyncio.sleep(6.0)  # no frames either way (client pings off; the server pings every 20 s)
        await ws.send(json.dumps({"type": "ping", "req_id": "after-idle"}))
        pong = await recv_json(ws)
        assert pong["type"] == "pong" and pong["req_id"] == "after-idle"
        frames = await ask(ws, QUESTION)
    assert frames[-1]["data"] is True and "30 days" in joined_answer(frames)


async def test_metrics_are_not_exposed_through_nginx(proxy, slow_server):
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"http://{proxy}/metrics")).status_code == 404
        assert (await client.get(f"http://{proxy}/api/v1/health")).status_code == 200
        direct = await client.get(f"http://127.0.0.1:{slow_server.port}/metrics")
    assert direct.status_code == 200 and "ragsocket_" in direct.text
