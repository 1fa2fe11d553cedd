"""Session and completion routes (RAGFlow HTTP API reference):

* ``POST/GET/PUT/DELETE /api/v1/chats/<chat_id>/sessions``;
* ``POST /api/v1/chats/<chat_id>/completions``: SSE when ``stream`` is true (the
  default), else one envelope with the whole answer.
"""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint

from api.db.services import conversation_service, dialog_service
from api.runtime import get_runtime
from api.streaming.answer import answer_frames, chat_answer_factory
from api.streaming.protocol import AnswerFramer, parse_request_payload, sse_event
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

manager = Blueprint("session", __name__)



class SessionFields(StrictModel):
    """A new session: ``name`` and an optional application ``user_id``."""

    name: str = Field("New session", min_length=1, max_length=255)
    user_id: str = Field("", max_length=255)


class SessionRename(StrictModel):
    """``{"name": ...}``."""

    name: str = Field(..., min_length=1, max_length=255)


class SessionQuery(ListQuery):
    """List parameters of sessions."""

    user_id: str | None = None


@manager.route("/chats/<chat_id>/sessions", methods=["POST"])
@token_required
async def create(tenant_id: str, chat_id: str):
    """Create a session, opened by the chat's prologue."""
    body = validate(SessionFields, await json_body(required=False))
    return get_result(await run_blocking(conversation_service.create_session, tenant_id, chat_id, body.name, body.user_id))


@manager.route("/chats/<chat_id>/sessions", methods=["GET"])
@token_required
async def list_sessions(tenant_id: str, chat_id: str):
    """List sessions with their messages and references."""
    args = query_args(SessionQuery)
    data = await run_blocking(
        conversation_service.list_sessions,
        tenant_id,
        chat_id,
        args.page,
        args.page_size,
        args.orderby,
        args.desc,
        args.name,
        args.id,
        args.user_id,
    )
    return get_result(data)


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
    body = validate(IdsBody, await json_body(required=False))
    await run_blocking(conversation_service.delete_sessions, tenant_id, chat_id, body.ids)
    return get_result()


@manager.route("/chats/<chat_id>/completions", methods=["POST"])
@token_required
async def completions(tenant_id: str, chat_id: str):
    """Answer a question: SSE frames (``stream: true``) or one envelope."""
    runtime = get_runtime()
    req = parse_request_payload(await json_body(), runtime.settings.max_question_chars)
    runtime.limiter.check(current_identity().principal)
    await run_blocking(dialog_service.get_chat, tenant_id, chat_id)
    if req.session_id:
        await run_blocking(conversation_service.get_session, tenant_id, chat_id, req.session_id)
    framer = AnswerFramer(stream=req.stream, legacy=req.legacy)
    frames = answer_frames(runtime.pool, chat_answer_factory(tenant_id, chat_id, req), framer)
    if not req.stream:
        collected = [frame async for frame in frames]
        first = collected[0]
        if first["code"] != 0:
            return error_result(first["code"], first["message"])
        return get_result(first["data"])

    return sse_response(frames, sse_event)
