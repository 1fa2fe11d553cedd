"""Sessions of a chat and ``completion()``, the synchronous answer generator.

``completion()`` has RAGFlow's shape (``api/db/services/conversation_service.py``
there): a synchronous generator that loads the chat and session, retrieves, builds the
prompt, streams from the chat model and yields answer events. It always saves the
user message and the assistant message with its references — also when the consumer
closes it early (the partial answer is saved with ``interrupted=True``) or the model
fails mid-answer.

It runs in a worker thread (see ``api.streaming.bridge``); the ``cancel`` event is its
stop flag, passed down to the chat model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from api.db.db_models import (
    DB,
    Conversation,
    Dialog,
    Message,
    db_session,
    get_uuid,
    now_ms,
)
from api.db.services.dialog_service import get_chat
from api.db.services.retrieval_service import retrieve
from api.rag.llm import ChatRequest, get_chat_model
from api.rag.prompt import build_messages
from api.runtime import get_runtime
from common.constants import MessageRole
from common.errors import ArgumentError, DataError

#: Earlier messages of a session put in the prompt (most recent ones).
HISTORY_MESSAGES = 20
EMPTY_REFERENCE: dict[str, Any] = {"total": 0, "chunks": [], "doc_aggs": []}


@dataclass(frozen=True)
class AnswerDelta:
    """New answer text (never cumulative)."""

    text: str
    message_id: str
    session_id: str


@dataclass(frozen=True)
class AnswerDone:
    """The whole answer (as saved) and its references; the last event of an answer.

    ``interrupted`` is True when the answer was stopped before the model finished.
    """

    answer: str
    reference: dict[str, Any]
    message_id: str
    session_id: str
    interrupted: bool = False


AnswerEvent = AnswerDelta | AnswerDone


@dataclass
class _Turn:
    dialog: Dialog
    session_id: str
    question: str
    history: list[dict]
    dataset_ids: list[str]
    document_ids: list[str] | None
    message_id: str = field(default_factory=get_uuid)


# -- sessions ----------------------------------------------------------------------
def message_to_dict(message: Message) -> dict:
    """A stored message as listed in a session."""
    item = {"id": message.id, "role": message.role, "content": message.content}
    if message.role == MessageRole.ASSISTANT.value:
        item["reference"] = message.reference or {}
        item["interrupted"] = message.interrupted
    return item


def session_to_dict(conversation: Conversation, messages: list[Message]) -> dict:
    """RAGFlow's session object, messages with their references."""
    return {
        "id": conversation.id,
        "chat_id": conversation.dialog_id,
        "name": conversation.name,
        "user_id": conversation.user_id,
        "messages": [message_to_dict(m) for m in messages],
        "create_time": conversation.create_time,
        "update_time": conversation.update_time,
    }


def _messages(session_ids: list[str]) -> dict[str, list[Message]]:
    grouped: dict[str, list[Message]] = {sid: [] for sid in session_ids}
    if session_ids:
        query = Message.select().where(Message.conversation_id.in_(session_ids)).order_by(Message.position)
        for message in query:
            grouped[message.conversation_id].append(message)
    return grouped


def _create_session(dialog: Dialog, name: str, user_id: str) -> Conversation:
    with DB.atomic():
        conversation = Conversation.create(
            dialog_id=dialog.id, tenant_id=dialog.tenant_id, name=name[:255], user_id=user_id
        )
        prologue = dialog.prompt_config.get("prologue")
        if prologue:
            Message.create(conversation_id=conversation.id, role=MessageRole.ASSISTANT.value, content=prologue)
    return conversation


@db_session()
def create_session(tenant_id: str, chat_id: str, name: str = "New session", user_id: str = "") -> dict:
    """Create a session of the tenant's chat, opened by the chat's prologue."""
    dialog = get_chat(tenant_id, chat_id)
    conversation = _create_session(dialog, name, user_id)
    return session_to_dict(conversation, _messages([conversation.id])[conversation.id])


@db_session()
def get_session(tenant_id: str, chat_id: str, session_id: str) -> Conversation:
    """The session, checked to belong to the tenant's chat.

    Raises:
        DataError: unknown chat or session.
    """
    get_chat(tenant_id, chat_id)
    conversation = Conversation.get_or_none((Conversation.id == session_id) & (Conversation.dialog_id == chat_id))
    if conversation is None:
        raise DataError(f"The chat doesn't own the session {session_id}")
    return conversation


@db_session()
def list_sessions(
    tenant_id: str,
    chat_id: str,
    page: int,
    page_size: int,
    orderby: str,
    desc: bool,
    name: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
) -> list[dict]:
    """One page of a chat's sessions with their messages."""
    get_chat(tenant_id, chat_id)
    query = Conversation.select().where(Conversation.dialog_id == chat_id)
    if name:
        query = query.where(Conversation.name == name)
    if session_id:
        query = query.where(Conversation.id == session_id)
    if user_id:
        query = query.where(Conversation.user_id == user_id)
    column = getattr(Conversation, orderby)
    conversations = list(query.order_by(column.desc() if desc else column.asc()).paginate(page, page_size))
    grouped = _messages([c.id for c in conversations])
    return [session_to_dict(c, grouped[c.id]) for c in conversations]


@db_session()
def rename_session(tenant_id: str, chat_id: str, session_id: str, name: str) -> dict:
    """Rename a session."""
    conversation = get_session(tenant_id, chat_id, session_id)
    conversation.name = name[:255]
    conversation.save()
    return session_to_dict(conversation, _messages([conversation.id])[conversation.id])


@db_session()
def delete_sessions(tenant_id: str, chat_id: str, session_ids: list[str] | None) -> int:
    """Delete sessions (all of the chat's when ``None``) and their messages."""
    get_chat(tenant_id, chat_id)
    if session_ids is None:
        ids = [c.id for c in Conversation.select(Conversation.id).where(Conversation.dialog_id == chat_id)]
    else:
        ids = [get_session(tenant_id, chat_id, sid).id for sid in session_ids]
    if ids:
        with DB.atomic():
            Message.delete().where(Message.conversation_id.in_(ids)).execute()
            Conversation.delete().where(Conversation.id.in_(ids)).execute()
    return len(ids)


# -- completion --------------------------------------------------------------------
def _history(session_id: str) -> list[dict]:
    messages = list(
        Message.select()
        .where(Message.conversation_id == session_id)
        .order_by(Message.position.desc())
        .limit(HISTORY_MESSAGES)
    )[::-1]
    while messages and messages[0].role != MessageRole.USER.value:
        messages.pop(0)  # the prologue, or a cut in the middle of a turn
    return [{"role": m.role, "content": m.content} for m in messages if m.content]


def _scope(dialog: Dialog, kb_ids: list[str] | None) -> list[str]:
    if not kb_ids:
        return list(dialog.kb_ids)
    foreign = [kb_id for kb_id in kb_ids if kb_id not in dialog.kb_ids]
    if foreign:
        raise ArgumentError(f"kb_ids must be datasets of this chat; not: {', '.join(foreign)}")
    return list(kb_ids)


@db_session()
def _begin_turn(
    tenant_id: str,
    chat_id: str,
    question: str,
    session_id: str | None,
    kb_ids: list[str] | None,
    doc_ids: list[str] | None,
    history: list[dict] | None = None,
) -> _Turn:
    """Load the chat and session (creating it, with ``history`` as its first
    messages), read history, save the question."""
    dialog = get_chat(tenant_id, chat_id)
    dataset_ids = _scope(dialog, kb_ids)
    if session_id:
        conversation = get_session(tenant_id, chat_id, session_id)
    else:
        conversation = _create_session(dialog, question[:255] or "New session", "")
        for earlier in history or ():
            Message.create(conversation_id=conversation.id, role=earlier["role"], content=earlier["content"])
    history = _history(conversation.id)
    Message.create(conversation_id=conversation.id, role=MessageRole.USER.value, content=question)
    return _Turn(dialog, conversation.id, question, history, dataset_ids, doc_ids or None)


@db_session()
def _save_answer(turn: _Turn, answer: str, reference: dict, interrupted: bool) -> None:
    Message.create(
        id=turn.message_id,
        conversation_id=turn.session_id,
        role=MessageRole.ASSISTANT.value,
        content=answer,
        reference=reference,
        interrupted=interrupted,
    )
    Conversation.update(update_time=now_ms()).where(
        Conversation.id == turn.session_id
    ).execute()


def _reference(turn: _Turn) -> dict:
    prompt = turn.dialog.prompt_config
    if not turn.dataset_ids:
        return dict(EMPTY_REFERENCE)
    found = retrieve(
        turn.question,
        turn.dataset_ids,
        turn.document_ids,
        similarity_threshold=float(prompt.get("similarity_threshold", 0.2)),
        page=1,
        page_size=int(prompt.get("top_n", 6)),
    )
    found["total"] = len(found["chunks"])
    return found


def _deltas(turn: _Turn, reference: dict, cancel: threading.Event) -> Iterator[str]:
    prompt = turn.dialog.prompt_config
    empty_response = prompt.get("empty_response") or ""
    if turn.dataset_ids and not reference["chunks"] and empty_response:
        yield empty_response
        return
    llm = turn.dialog.llm_setting
    model = get_chat_model(llm, get_runtime().settings)
    request = ChatRequest(
        question=turn.question,
        messages=build_messages(prompt.get("system", ""), reference["chunks"], turn.history, turn.question),
        chunks=reference["chunks"],
        empty_response=empty_response,
        temperature=llm.get("temperature"),
        top_p=llm.get("top_p"),
        max_tokens=llm.get("max_tokens"),
    )
    yield from model.stream(request, cancel)


def completion(
    tenant_id: str,
    chat_id: str,
    question: str,
    session_id: str | None = None,
    kb_ids: list[str] | None = None,
    doc_ids: list[str] | None = None,
    cancel: threading.Event | None = None,
    history: list[dict] | None = None,
) -> Iterator[AnswerEvent]:
    """Answer ``question`` in a session of the chat, streaming.

    Args:
        tenant_id: the caller; the chat and session must be the tenant's.
        chat_id: the chat (dialog) answering.
        question: the user's question (already validated as non-empty).
        session_id: the session to continue; ``None`` creates one and answers in it.
        kb_ids: restrict retrieval to these datasets of the chat.
        doc_ids: restrict retrieval to these documents.
        cancel: stop flag; when set, the model stream ends and the generator returns.
        history: earlier ``{"role": "user" | "assistant", "content"}`` messages of a
            conversation the client keeps itself (the OpenAI-compatible route); they
            open the new session, so they are saved and go into the prompt. Only
            used when ``session_id`` is None.

    Yields:
        :class:`AnswerDelta` per piece of new text, then one :class:`AnswerDone`
        (``interrupted=True`` when ``cancel`` was set), saved before it is yielded.
        When the consumer closes the generator instead, the partial answer is saved
        with ``interrupted=True``.

    Raises:
        DataError: unknown chat or session. ArgumentError: kb_ids not of the chat.
        api.rag.llm.ChatModelError: the model failed (the partial answer is saved).
    """
    stop = cancel if cancel is not None else threading.Event()
    turn = _begin_turn(tenant_id, chat_id, question, session_id, kb_ids, doc_ids, history)
    parts: list[str] = []
    reference: dict = dict(EMPTY_REFERENCE)
    saved = False
    try:
        reference = _reference(turn)
        for text in _deltas(turn, reference, stop):
            if stop.is_set():
                break  # text produced after the stop is dropped, not sent nor saved
            parts.append(text)
            yield AnswerDelta(text, turn.message_id, turn.session_id)
        interrupted = stop.is_set()
        answer = "".join(parts)
        _save_answer(turn, answer, reference, interrupted=interrupted)
        saved = True
        yield AnswerDone(answer, reference, turn.message_id, turn.session_id, interrupted)
    finally:
        if not saved:
            _save_answer(turn, "".join(parts), reference, interrupted=True)
