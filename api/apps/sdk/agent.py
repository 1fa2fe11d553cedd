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

import threading
from typing import Any

from pydantic import Field
from quart import Blueprint

from api.db.services import agent_service
from api.runtime import get_runtime
from api.streaming.agent_frames import AgentFramer, AgentSSEFramer, agent_sse_event
from api.streaming.answer import answer_frames
from api.streaming.protocol import CompletionRequest, parse_request_payload
from api.utils.api_utils import (
    IdsBody,
    ListQuery,
    StrictModel,
    current_identity,
    error_result,
    get_result,
    json_body,
    query_args,
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


class SessionFields(StrictModel):
    """A new session: ``name`` and an optional application ``user_id``."""

    name: str = Field("New session", min_length=1, max_length=255)
    user_id: str = Field("", max_length=255)


class SessionQuery(ListQuery):
    """List parameters of sessions."""

    user_id: str | None = None


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
    args = query_args(AgentQuery)
    data = await run_blocking(
        agent_service.list_agents, tenant_id, args.page, args.page_size, args.orderby, args.desc, args.title, args.id
    )
    return get_result(data)


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
    body = validate(SessionFields, await json_body(required=False))
    return get_result(await run_blocking(agent_service.create_session, tenant_id, agent_id, body.name, body.user_id))


@manager.route("/agents/<agent_id>/sessions", methods=["GET"])
@token_required
async def list_sessions(tenant_id: str, agent_id: str):
    """List sessions with their messages, references and tool calls."""
    args = query_args(SessionQuery)
    data = await run_blocking(
        agent_service.list_sessions, tenant_id, agent_id, args.page, args.page_size, args.orderby, args.desc, args.id, args.user_id
    )
    return get_result(data)


@manager.route("/agents/<agent_id>/sessions", methods=["DELETE"])
@token_required
async def delete_sessions(tenant_id: str, agent_id: str):
    """Delete sessions by id (``{"ids": null}`` deletes all of the agent's)."""
    body = validate(IdsBody, await json_body(required=False))
    await run_blocking(agent_service.delete_sessions, tenant_id, agent_id, body.ids)
    return get_result()


def _sdk_sse_event(frame: dict[str, Any]) -> str:
    """:func:`agent_sse_event`, with ``data.content`` on every event, which RAGFlow's SDK
    reads of each event before ``message_end``: ``""`` for ``thinking`` and the tool
    events, ``**ERROR**: <message>`` for ``error``."""
    data = frame.get("data")
    if isinstance(data, dict) and "content" not in data:
        content = f"**ERROR**: {data.get('message', '')}" if frame.get("event") == "error" else ""
        frame = {**frame, "data": {**data, "content": content}}
    return agent_sse_event(frame)


def _factory(tenant_id: str, agent_id: str, req: CompletionRequest):
    def factory(cancel: threading.Event):
        return agent_service.run_agent(tenant_id, agent_id, req.question, req.session_id, cancel)

    return factory


@manager.route("/agents/<agent_id>/completions", methods=["POST"])
@token_required
async def completions(tenant_id: str, agent_id: str):
    """Run the agent: SSE events (``stream: true``) or one envelope with the answer."""
    runtime = get_runtime()
    req = parse_request_payload(await json_body(), runtime.settings.max_question_chars)
    runtime.limiter.check(current_identity().principal)
    await run_blocking(agent_service.get_agent, tenant_id, agent_id)
    if req.session_id:
        await run_blocking(agent_service.get_session, tenant_id, agent_id, req.session_id)
    factory = _factory(tenant_id, agent_id, req)
    if not req.stream:
        collected = [frame async for frame in answer_frames(runtime.pool, factory, AgentFramer(stream=False))]
        first = collected[0]
        if first["code"] != 0:
            return error_result(first["code"], first["message"])
        data = first["data"]
        fields = ("id", "session_id", "content", "reference", "tool_calls")
        whole = {key: data[key] for key in fields} | {"interrupted": bool(data.get("interrupted"))}
        # RAGFlow's shape, read by its SDK: the answer under ``data`` (as in its final event)
        whole["data"] = {"content": data["content"], "reference": data["reference"]}
        return get_result(whole)
    frames = answer_frames(runtime.pool, factory, AgentSSEFramer())

    return sse_response(frames, _sdk_sse_event)
