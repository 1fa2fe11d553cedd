"""Session and completion routes (RAGFlow HTTP API reference):

* ``POST/GET/PUT/DELETE /api/v1/chats/<chat_id>/sessions``;
* ``POST /api/v1/chats/<chat_id>/completions``: SSE when ``stream`` is true (the
  default), else one envelope with the whole answer.
"""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint

from api.apps.sdk.conversation import (
    SessionQuery,
    completion_request,
    create_session_result,
    whole_answer,
)
from api.db.services import conversation_service, dialog_service
from api.runtime import get_runtime
from api.streaming.answer import answer_frames, chat_answer_factory
from api.streaming.protocol import AnswerFramer, sse_event
from api.utils.api_utils import (
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

manager = Blueprint("session", __name__)


class SessionRename(StrictModel):
    """``{"name": ...}``."""

    name: str = Field(..., min_length=1, max_length=255)


@manager.route("/chats/<chat_id>/sessions", methods=["POST"])
@token_required
async def create(tenant_id: str, chat_id: str):
    """Create a session, opened by the chat's prologue."""
    return await create_session_result(conversation_service.create_session, tenant_id, chat_id)


@manager.route("/chats/<chat_id>/sessions", methods=["GET"])
@token_required
async def list_sessions(tenant_id: str, chat_id: str):
    """List sessions with their messages and references."""
    filters = ("name", "id", "user_id")
    return await list_result(conversation_service.list_sessions, (tenant_id, chat_id), SessionQuery, filters)


@manager.route("/chats/<chat_id>/sessions/<session_id>", methods=["PUT"])
@token_required
async def rename(tenant_id: str, chat_id: str, session_id: str):
    """Rename a session."""
    body = validate(SessionRename, await json_body())
    return get_result(await run_blocking(conversation_service.rename_session, tenant_id, chat_id, session_id, body.name))


@manager.route("/chats/<chat_id>/sessions", methods=["DELETE"])
@token_required
async def delete(tenant_id: str, chat_id: str):
    """Delete sessions by id (``{"ids": null}`` deletes all of the chat's)."""
    return await delete_result(conversation_service.delete_sessions, tenant_id, chat_id)


@manager.route("/chats/<chat_id>/completions", methods=["POST"])
@token_required
async def completions(tenant_id: str, chat_id: str):
    """Answer a question: SSE frames (``stream: true``) or one envelope."""
    req = await completion_request(dialog_service.get_chat, conversation_service.get_session, tenant_id, chat_id)
    framer = AnswerFramer(stream=req.stream, legacy=req.legacy)
    frames = answer_frames(get_runtime().pool, chat_answer_factory(tenant_id, chat_id, req), framer, transport="sse" if req.stream else "http")
    if not req.stream:
        return get_result(await whole_answer(frames))

    return sse_response(frames, sse_event)
