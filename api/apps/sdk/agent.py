"""Agent routes (RAGFlow HTTP API reference, "Agent management" and "Converse with agent"):

* ``POST/GET /api/v1/agents``, ``PUT/DELETE /api/v1/agents/<agent_id>``;
* ``POST/GET/DELETE /api/v1/agents/<agent_id>/sessions``;
* ``POST /api/v1/agents/<agent_id>/completions``: SSE in RAGFlow's agent format when
  ``stream`` is true (the default), else one envelope with the whole answer.

RAGFlow's Python SDK (``ragflow_sdk.modules.session.Session.ask``) reads
``data.content`` of every SSE event before ``message_end``, and ``data.data.content``
of the non-streamed envelope (RAGFlow answers it with the final event): hence the
``content`` of our other SSE events and the ``data`` field of the envelope.

The WebSocket route is in ``websocket.py``; formats in ``docs/agents.md``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint

from api.apps.sdk.conversation import (
    SessionQuery,
    agent_answer_factory,
    completion_request,
    create_session_result,
    whole_answer,
)
from api.db.services import agent_service
from api.runtime import get_runtime
from api.streaming.agent_frames import AgentFramer, AgentSSEFramer, agent_sse_event
from api.streaming.answer import answer_frames
from api.utils.api_utils import (
    ListQuery,
    StrictModel,
    delete_result,
    get_result,
    json_body,
    list_result,
    run_blocking,
    sse_response,
    token_required,
    validate,
)

manager = Blueprint("agent", __name__)


class AgentCreate(StrictModel):
    """``{"title", "description", "dsl"}``; ``dsl`` is validated by the service."""

    title: str = Field(..., min_length=1, max_length=255)
    description: str = Field("", max_length=65535)
    dsl: dict[str, Any]


class AgentUpdate(StrictModel):
    """Any of ``title``, ``description``, ``dsl``."""

    title: str | None = Field(None, min_length=1, max_length=255)
    description: str | None = Field(None, max_length=65535)
    dsl: dict[str, Any] | None = None


class AgentQuery(ListQuery):
    """List parameters of agents (RAGFlow: ``title`` and ``id`` filters)."""

    title: str | None = None


@manager.route("/agents", methods=["POST"])
@token_required
async def create(tenant_id: str):
    """Create an agent from our definition or a RAGFlow canvas."""
    body = validate(AgentCreate, await json_body())
    return get_result(await run_blocking(agent_service.create_agent, tenant_id, body.title, body.description, body.dsl))


@manager.route("/agents", methods=["GET"])
@token_required
async def list_agents(tenant_id: str):
    """One page of the tenant's agents."""
    return await list_result(agent_service.list_agents, (tenant_id,), AgentQuery, ("title", "id"))


@manager.route("/agents/<agent_id>", methods=["PUT"])
@token_required
async def update(tenant_id: str, agent_id: str):
    """Change an agent's title, description or definition."""
    body = validate(AgentUpdate, await json_body())
    return get_result(await run_blocking(agent_service.update_agent, tenant_id, agent_id, body.model_dump(exclude_none=True)))


@manager.route("/agents/<agent_id>", methods=["DELETE"])
@token_required
async def delete(tenant_id: str, agent_id: str):
    """Delete an agent with its sessions."""
    await run_blocking(agent_service.delete_agent, tenant_id, agent_id)
    return get_result(True)


@manager.route("/agents/<agent_id>/sessions", methods=["POST"])
@token_required
async def create_session(tenant_id: str, agent_id: str):
    """Create a session, opened by the agent's prologue."""
    return await create_session_result(agent_service.create_session, tenant_id, agent_id)


@manager.route("/agents/<agent_id>/sessions", methods=["GET"])
@token_required
async def list_sessions(tenant_id: str, agent_id: str):
    """List sessions with their messages, references and tool calls."""
    return await list_result(agent_service.list_sessions, (tenant_id, agent_id), SessionQuery, ("id", "user_id"))


@manager.route("/agents/<agent_id>/sessions", methods=["DELETE"])
@token_required
async def delete_sessions(tenant_id: str, agent_id: str):
    """Delete sessions by id (``{"ids": null}`` deletes all of the agent's)."""
    return await delete_result(agent_service.delete_sessions, tenant_id, agent_id)


def _sdk_sse_event(frame: dict[str, Any]) -> str:
    """:func:`agent_sse_event`, with ``data.content`` on every event, which RAGFlow's SDK
    reads of each event before ``message_end``: ``""`` for ``thinking`` and the tool
    events, ``**ERROR**: <message>`` for ``error``."""
    data = frame.get("data")
    if isinstance(data, dict) and "content" not in data:
        content = f"**ERROR**: {data.get('message', '')}" if frame.get("event") == "error" else ""
        frame = {**frame, "data": {**data, "content": content}}
    return agent_sse_event(frame)


def _envelope_data(data: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed answer as RAGFlow shapes it, read by its SDK: our fields, and
    the answer again under ``data`` (as in its final event)."""
    fields = ("id", "session_id", "content", "reference", "tool_calls")
    whole = {key: data[key] for key in fields} | {"interrupted": bool(data.get("interrupted"))}
    whole["data"] = {"content": data["content"], "reference": data["reference"]}
    return whole


@manager.route("/agents/<agent_id>/completions", methods=["POST"])
@token_required
async def completions(tenant_id: str, agent_id: str):
    """Run the agent: SSE events (``stream: true``) or one envelope with the answer."""
    req = await completion_request(agent_service.get_agent, agent_service.get_session, tenant_id, agent_id)
    pool, factory = get_runtime().pool, agent_answer_factory(tenant_id, agent_id, req)
    if not req.stream:
        data = await whole_answer(answer_frames(pool, factory, AgentFramer(stream=False), transport="http", kind="agent"))
        return get_result(_envelope_data(data))

    return sse_response(answer_frames(pool, factory, AgentSSEFramer(), transport="sse", kind="agent"), _sdk_sse_event)
