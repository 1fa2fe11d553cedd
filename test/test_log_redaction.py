"""Credentials never reach any log line of the process, and hypercorn's lines are written once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from test.support.server import (
    ROOT,
    ServerProcess,
    _child_env,
    api_client,
    auth,
    make_chat,
    ok,
    variant_env,
)
from test.support.ws import chat_url, recv_json

#: Emits through hypercorn's logger exactly as ``python -m api`` configures it.
HYPERCORN_LINES = textwrap.dedent(
    """
    import asyncio, sys
    from api.__main__ import configure_logging, hypercorn_config
    from common.settings import load_settings

    key = sys.argv[1]
    settings = load_settings()
    configure_logging(settings)
    log = hypercorn_config(settings).log

    async def main():
        await log.info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
        await log.warning("odd request GET /api/v1/ws/chats/c/completions?token=%s&ticket=abc.def", key)
        try:
            raise ValueError(f"bad header Authorization: Bearer {key}")
        except ValueError:
            await log.exception("Error in ASGI Framework")

    asyncio.run(main())
    """
)


def test_hypercorn_error_log_is_redacted_and_written_once(tmp_path):
    key = "ragsocket-" + "k" * 40
    env = {"RAGSOCKET_DATA_DIR": str(tmp_path), "RAGSOCKET_LOG_LEVEL": "INFO"}
    result = subprocess.run(
        [sys.executable, "-c", HYPERCORN_LINES, key], cwd=ROOT, env=_child_env(env), capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert key not in output and "k" * 20 not in output, output
    assert output.count("Running on http://127.0.0.1:1") == 1, output
    assert output.count("odd request") == 1 and "token=REDACTED&ticket=REDACTED" in output, output
    assert output.count("Error in ASGI Framework") == 1 and output.count("ValueError: bad header") == 1, output
    assert "Authorization: Bearer REDACTED" in output, output


@pytest.fixture(scope="module")
def verbose(server_env, tmp_path_factory):
    """A server logging at INFO with the access log on stdout."""
    env = variant_env(server_env, tmp_path_factory, "verbose-log", RAGSOCKET_LOG_LEVEL="INFO", RAGSOCKET_ACCESS_LOG="-")
    with ServerProcess(env) as process:
        yield process


async def issue_ticket(server: ServerProcess, key: str) -> str:
    async with api_client(server, key) as api:
        return ok(await api.post("/ws/tickets"))["ticket"]


async def test_server_log_never_holds_keys_or_tickets(verbose, tenant):
    key = tenant.api_key
    async with api_client(verbose, key) as api:
        chat_id = (await make_chat(api, []))["id"]
    url = chat_url(verbose, chat_id)
    async with connect(f"{url}?token={key}") as ws:
        await ws.send('{"type": "ping", "req_id": "p"}')
        assert (await recv_json(ws))["type"] == "pong"
    ticket = await issue_ticket(verbose, key)
    async with connect(f"{url}?ticket={ticket}") as ws:
        await ws.send('{"type": "ping", "req_id": "p"}')
        assert (await recv_json(ws))["type"] == "pong"
    async with httpx.AsyncClient(timeout=10) as http:
        # a key misplaced in the path and in several query parameters, and in a header
        await http.get(f"{verbose.api_url}/datasets/{key}", headers=auth(key))
        await http.get(f"{verbose.api_url}/health?api_key={key}&x={key}")
    deadline = time.monotonic() + 5
    while True:
        log = verbose.log_path.read_text(errors="replace")
        if log.count("ticket=REDACTED") and "/health" in log or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert "ticket=REDACTED" in log and "token=REDACTED" in log, log[-3000:]
    assert "/datasets/REDACTED" in log, log[-3000:]
    assert key not in log and key[len("ragsocket-"):] not in log, log[-3000:]
    assert ticket not in log and ticket.split(".")[-1] not in log
    running = [line for line in log.splitlines() if "Running on http://" in line]
    assert len(running) == 1, running  # hypercorn's lines are not written twice
