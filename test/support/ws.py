"""WebSocket helpers for tests: the answer URLs, and reading the frames of one request."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection

if TYPE_CHECKING:
    from test.support.server import ServerProcess

FRAME_TIMEOUT = 20.0


def chat_url(server: ServerProcess, chat_id: str) -> str:
    """The answer WebSocket of a chat."""
    return f"{server.ws_url}/ws/chats/{chat_id}/completions"


def agent_url(server: ServerProcess, agent_id: str) -> str:
    """The answer WebSocket of an agent."""
    return f"{server.ws_url}/ws/agents/{agent_id}/completions"


async def recv_json(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> Any:
    """The next text frame, decoded."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def read_answer(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> list[dict]:
    """Frames up to and including the completion marker ``{"data": true}``."""
    frames = []
    while True:
        frame = await recv_json(ws, timeout)
        frames.append(frame)
        if frame.get("data") is True:
            return frames


async def ask(ws: ClientConnection, question: str, **fields: Any) -> list[dict]:
    """Send a request and read its frames."""
    await ws.send(json.dumps({"question": question, **fields}))
    return await read_answer(ws)


def content_frames(frames: list[dict]) -> list[dict]:
    """The data frames carrying answer objects (not the marker, not errors)."""
    return [f for f in frames if f["code"] == 0 and isinstance(f["data"], dict)]


def joined_answer(frames: list[dict]) -> str:
    """Concatenation of the ``answer`` deltas."""
    return "".join(f["data"]["answer"] for f in content_frames(frames))
