"""Sessions and their messages, one implementation for chats and agents.

A chat's sessions (tables ``conversation`` and ``message``) and an agent's sessions
(``agent_session`` and ``agent_message``) have the same life: a session belongs to a
parent (a chat or an agent) of a tenant, opens with the parent's prologue, and keeps
its messages in ``position`` order; each turn saves the question, then the assistant
message with its references and whether it was ``interrupted``. :class:`SessionStore`
holds that logic once, parametrised by the two tables and the parent.

The services (``conversation_service``, ``agent_service``) keep their public functions
and wrap these methods in :func:`api.db.db_models.db_session`; the methods open none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from api.db.db_models import DB, MessageModel, SessionModel, now_ms
from api.db.services.common_service import get_or_raise, owned_page
from common.constants import MessageRole

NEW_SESSION_NAME = "New session"


@dataclass(frozen=True)
class SessionStore:
    """The sessions of one kind of parent, and their messages.

    Attributes:
        sessions: the session table (``Conversation`` or ``AgentSession``).
        messages: the message table (``Message`` or ``AgentMessage``).
        parent_column: the session's column holding its parent's id (``dialog_id``).
        session_column: the message's column holding its session's id (``conversation_id``).
        parent_key: the parent's id in session objects (``chat_id``).
        parent_noun: the parent in error messages (``chat``).
        get_parent: ``(tenant_id, parent_id) -> parent``; raises DataError when the
            tenant has no such parent.
        prologue: ``parent -> text`` opening a new session (nothing when empty).
        assistant_lists: list columns shown with assistant messages (``[]`` when
            unset), between ``reference`` and ``interrupted``.
    """

    sessions: type[SessionModel]
    messages: type[MessageModel]
    parent_column: str
    session_column: str
    parent_key: str
    parent_noun: str
    get_parent: Callable[[str, str], Any]
    prologue: Callable[[Any], str | None]
    assistant_lists: tuple[str, ...] = ()

    # -- shapes ------------------------------------------------------------------------
    def message_to_dict(self, message: MessageModel) -> dict:
        """``{"id", "role", "content"}``; assistant messages add ``reference`` (``{}``
        when unset), the :attr:`assistant_lists` and ``interrupted``."""
        item = {"id": message.id, "role": message.role, "content": message.content}
        if message.role == MessageRole.ASSISTANT.value:
            item["reference"] = message.reference or {}
            for name in self.assistant_lists:
                item[name] = getattr(message, name) or []
            item["interrupted"] = message.interrupted
        return item

    def session_to_dict(self, session: SessionModel, messages: list[MessageModel]) -> dict:
        """``{"id", <parent_key>, "name", "user_id", "messages", "create_time", "update_time"}``."""
        return {
            "id": session.id,
            self.parent_key: getattr(session, self.parent_column),
            "name": session.name,
            "user_id": session.user_id,
            "messages": [self.message_to_dict(m) for m in messages],
            "create_time": session.create_time,
            "update_time": session.update_time,
        }

    def _messages_of(self, session_ids: list[str]) -> dict[str, list[MessageModel]]:
        """Messages per session id, in ``position`` order (every id has a list)."""
        grouped: dict[str, list[MessageModel]] = {sid: [] for sid in session_ids}
        if session_ids:
            column = getattr(self.messages, self.session_column)
            for message in self.messages.select().where(column.in_(session_ids)).order_by(self.messages.position):
                grouped[getattr(message, self.session_column)].append(message)
        return grouped

    def _session_dict(self, session: SessionModel) -> dict:
        return self.session_to_dict(session, self._messages_of([session.id])[session.id])

    # -- sessions ----------------------------------------------------------------------
    def open_session(self, parent: Any, name: str, user_id: str) -> SessionModel:
        """Create a session of ``parent`` (name cut at 255 characters) and its prologue message."""
        with DB.atomic():
            session = self.sessions.create(
                **{self.parent_column: parent.id},
                tenant_id=parent.tenant_id,
                name=name[:255],
                user_id=user_id,
            )
            prologue = self.prologue(parent)
            if prologue:
                self.add_message(session.id, MessageRole.ASSISTANT.value, prologue)
        return session

    def create_session(self, tenant_id: str, parent_id: str, name: str, user_id: str) -> dict:
        """The new session object (see :meth:`session_to_dict`), opened by the prologue.

        Raises:
            DataError: the parent is not the tenant's.
        """
        session = self.open_session(self.get_parent(tenant_id, parent_id), name, user_id)
        return self._session_dict(session)

    def get_session(self, tenant_id: str, parent_id: str, session_id: str) -> SessionModel:
        """The session, checked to belong to the tenant's parent.

        Raises:
            DataError: unknown parent, or "The <noun> doesn't own the session <id>".
        """
        self.get_parent(tenant_id, parent_id)
        return get_or_raise(
            self.sessions,
            f"The {self.parent_noun} doesn't own the session {session_id}",
            id=session_id,
            **{self.parent_column: parent_id},
        )

    def list_sessions(
        self, tenant_id: str, parent_id: str, page: int, page_size: int, orderby: str, desc: bool, **filters: Any
    ) -> list[dict]:
        """One page of the parent's session objects with their messages; ``filters``
        are exact column values, skipped when unset.

        Raises:
            DataError: the parent is not the tenant's.
        """
        self.get_parent(tenant_id, parent_id)
        owner = getattr(self.sessions, self.parent_column) == parent_id
        sessions = owned_page(self.sessions, owner, page, page_size, orderby, desc, **filters)
        grouped = self._messages_of([s.id for s in sessions])
        return [self.session_to_dict(s, grouped[s.id]) for s in sessions]

    def rename_session(self, tenant_id: str, parent_id: str, session_id: str, name: str) -> dict:
        """Rename a session (cut at 255 characters); returns its session object.

        Raises:
            DataError: unknown parent or session.
        """
        session = self.get_session(tenant_id, parent_id, session_id)
        session.name = name[:255]
        session.save()
        return self._session_dict(session)

    def delete_sessions(self, tenant_id: str, parent_id: str, session_ids: list[str] | None) -> int:
        """Delete sessions (all of the parent's when ``None``) and their messages;
        returns how many.

        Raises:
            DataError: unknown parent, or a session not of the parent (nothing deleted).
        """
        self.get_parent(tenant_id, parent_id)
        if session_ids is None:
            ids = self.session_ids_of(parent_id)
        else:
            ids = [self.get_session(tenant_id, parent_id, sid).id for sid in session_ids]
        if ids:
            with DB.atomic():
                self.purge(ids)
        return len(ids)

    def session_ids_of(self, parent_id: str) -> list[str]:
        """Ids of the parent's sessions."""
        column = getattr(self.sessions, self.parent_column)
        return [s.id for s in self.sessions.select(self.sessions.id).where(column == parent_id)]

    def purge(self, session_ids: list[str]) -> None:
        """Delete these sessions and their messages (no transaction of its own)."""
        if session_ids:
            self.messages.delete().where(getattr(self.messages, self.session_column).in_(session_ids)).execute()
            self.sessions.delete().where(self.sessions.id.in_(session_ids)).execute()

    # -- turns -------------------------------------------------------------------------
    def add_message(self, session_id: str, role: str, content: str, **columns: Any) -> MessageModel:
        """Append a message to a session; ``columns`` are further message columns."""
        return self.messages.create(**{self.session_column: session_id}, role=role, content=content, **columns)

    def history(self, session_id: str, limit: int) -> list[dict]:
        """The last ``limit`` messages as ``{"role", "content"}``, oldest first, starting
        at a user message (the prologue or a cut turn is dropped), empty ones left out."""
        column = getattr(self.messages, self.session_column)
        messages = list(
            self.messages.select().where(column == session_id).order_by(self.messages.position.desc()).limit(limit)
        )[::-1]
        while messages and messages[0].role != MessageRole.USER.value:
            messages.pop(0)
        return [{"role": m.role, "content": m.content} for m in messages if m.content]

    def begin_turn(
        self,
        tenant_id: str,
        parent: Any,
        question: str,
        session_id: str | None,
        history_limit: int,
        opening: Iterable[dict] = (),
    ) -> tuple[str, list[dict]]:
        """Open the turn of ``question``: continue session ``session_id``, or create one
        named after the question whose first messages are ``opening``
        (``{"role", "content"}``); read its history, then save the question.

        Returns:
            ``(session id, history before the question)`` (see :meth:`history`).

        Raises:
            DataError: ``session_id`` is not a session of ``parent``.
        """
        if session_id:
            session = self.get_session(tenant_id, parent.id, session_id)
        else:
            session = self.open_session(parent, question[:255] or NEW_SESSION_NAME, "")
            for earlier in opening:
                self.add_message(session.id, earlier["role"], earlier["content"])
        history = self.history(session.id, history_limit)
        self.add_message(session.id, MessageRole.USER.value, question)
        return session.id, history

    def save_answer(
        self, session_id: str, message_id: str, content: str, reference: dict, interrupted: bool, **columns: Any
    ) -> None:
        """Save the assistant message ``message_id`` (``columns``: e.g. ``tool_calls``)
        and touch the session's ``update_time``."""
        self.add_message(
            session_id,
            MessageRole.ASSISTANT.value,
            content,
            id=message_id,
            reference=reference,
            interrupted=interrupted,
            **columns,
        )
        self.sessions.update(update_time=now_ms()).where(self.sessions.id == session_id).execute()
