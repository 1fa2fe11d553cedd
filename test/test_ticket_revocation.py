"""A WebSocket ticket stops working as soon as the API key it was issued with is revoked."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from test.support.server import (
    api_client,
    create_tenant,
    make_chat,
    ok,
    run_cli,
    unique,
)
from test.support.ws import chat_url, recv_json


async def refusal(url: str) -> tuple[list[dict], int | None]:
    """The frames a refused connection gets before the server closes it, and the close code."""
    frames = []
    async with connect(url) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames, ws.close_code


async def test_ticket_issued_before_the_key_was_revoked_is_refused(server):
    owner = create_tenant(server.env, unique("ticket-revoked"))
    async with api_client(server, owner.api_key) as api:
        chat_id = (await make_chat(api, []))["id"]
        before, after = ok(await api.post("/ws/tickets"))["ticket"], ok(await api.post("/ws/tickets"))["ticket"]
    url = chat_url(server, chat_id)

    async with connect(f"{url}?ticket={before}") as ws:  # the key is valid: accepted
        await ws.send(json.dumps({"type": "ping", "req_id": "p"}))
        assert (await recv_json(ws))["type"] == "pong"

    revoked = run_cli(server.env, "revoke-key", owner.key_id)
    assert revoked.returncode == 0, revoked.stderr

    frames, close_code = await refusal(f"{url}?ticket={after}")
    assert close_code == 1008
    assert frames == [
        {"code": 109, "message": "Authentication error: the API key this ticket was issued with has been revoked", "data": None}
    ]
    # the ticket was not valid: it cannot be used later either
    frames, close_code = await refusal(f"{url}?ticket={after}")
    assert close_code == 1008 and frames[0]["code"] == 109


async def test_ticket_of_another_key_of_the_tenant_still_works(server):
    owner = create_tenant(server.env, unique("ticket-other-key"))
    second = run_cli(server.env, "--json", "create-key", owner.tenant_id, "--name", "second")
    assert second.returncode == 0, second.stderr
    second_key = json.loads(second.stdout)["api_key"]
    async with api_client(server, second_key) as api:
        chat_id = (await make_chat(api, []))["id"]
        ticket = ok(await api.post("/ws/tickets"))["ticket"]
    assert run_cli(server.env, "revoke-key", owner.key_id).returncode == 0  # the first key only

    async with connect(f"{chat_url(server, chat_id)}?ticket={ticket}") as ws:
        await ws.send(json.dumps({"type": "ping", "req_id": "p"}))
        assert (await recv_json(ws))["type"] == "pong"
