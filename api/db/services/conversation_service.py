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

from api.db.db_models import Conversation, Dialog, Message, db_session, get_uuid
from api.db.services.dialog_service import get_chat
from api.db.services.retrieval_service import retrieve
from api.db.services.session_store import SessionStore
from api.rag.llm import ChatRequest, get_chat_model
from api.rag.prompt import build_messages, retrieval_question
from api.runtime import get_runtime
from common.errors import ArgumentError

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

    @property
    def retrieval_question(self) -> str:
        """What to retrieve with: the question, after the earlier ones when the chat's
        ``refine_multiturn`` setting is on (the default)."""
        if not self.dialog.prompt_config.get("refine_multiturn", True):
            return self.question
        return retrieval_question(self.question, self.history)


# -- sessions ----------------------------------------------------------------------
def _prologue(dialog: Dialog) -> str | None:
    return dialog.prompt_config.get("prologue")


#: A chat's sessions (``conversation``) and messages (``message``).
SESSIONS = SessionStore(
    sessions=Conversation,
    messages=Message,
    parent_column="dialog_id",
    session_column="conversation_id",
    parent_key="chat_id",
    parent_noun="chat",
    get_parent=get_chat,
    prologue=_prologue,
)
#: A stored message as listed in a session (:meth:`SessionStore.message_to_dict`).
message_to_dict = SESSIONS.message_to_dict
#: RAGFlow's session object, messages with their references.
session_to_dict = SESSIONS.session_to_dict


@db_session()
def create_session(tenant_id: str, chat_id: str, name: str = "New session", user_id: str = "") -> dict:
    """Create a session of the tenant's chat, opened by the chat's prologue.

    Raises:
        DataError: unknown chat.
    """
    return SESSIONS.create_session(tenant_id, chat_id, name, user_id)


@db_session()
def get_session(tenant_id: str, chat_id: str, session_id: str) -> Conversation:
    """The session, checked to belong to the tenant's chat.

    Raises:
        DataError: unknown chat or session.
    """
    return SESSIONS.get_session(tenant_id, chat_id, session_id)


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
    """One page of a chat's sessions with their messages (filters: exact values).

    Raises:
        DataError: unknown chat.
    """
    return SESSIONS.list_sessions(
        tenant_id, chat_id, page, page_size, orderby, desc, name=name, id=session_id, user_id=user_id
    )


@db_session()
def rename_session(tenant_id: str, chat_id: str, session_id: str, name: str) -> dict:
    """Rename a session.

    Raises:
        DataError: unknown chat or session.
    """
    return SESSIONS.rename_session(tenant_id, chat_id, session_id, name)


@db_session()
def delete_sessions(tenant_id: str, chat_id: str, session_ids: list[str] | None) -> int:
    """Delete sessions (all of the chat's when ``None``) and their messages.

    Raises:
        DataError: unknown chat or session.
    """
    return SESSIONS.delete_sessions(tenant_id, chat_id, session_ids)


# -- completion --------------------------------------------------------------------
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
    session_id, earlier = SESSIONS.begin_turn(tenant_id, dialog, question, session_id, HISTORY_MESSAGES, history or ())
    return _Turn(dialog, session_id, question, earlier, dataset_ids, doc_ids or None)


@db_session()
def _save_answer(turn: _Turn, answer: str, reference: dict, interrupted: bool) -> None:
    SESSIONS.save_answer(turn.session_id, turn.message_id, answer, reference, interrupted)


def _reference(turn: _Turn) -> dict:
    prompt = turn.dialog.prompt_config
    if not turn.dataset_ids:
        return dict(EMPTY_REFERENCE)
    found = retrieve(
        turn.retrieval_question,
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
        retrieval_question=turn.retrieval_question,
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
