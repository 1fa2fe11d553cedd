"""Peewee models of agents, their sessions and messages (RAGFlow: ``user_canvas``,
``api_4_conversation``), registered with :func:`api.db.db_models.register_models` so
their tables are created at start-up with the others.
"""

from __future__ import annotations

from peewee import CharField, TextField

from api.db.db_models import (
    JSONField,
    MessageModel,
    SessionModel,
    TenantModel,
    ref_field,
    register_models,
)


class Agent(TenantModel):
    """An agent: ``dsl`` is the validated agent definition (``api.agent.dsl``)."""

    title = CharField(max_length=255)
    description = TextField(default="")
    dsl = JSONField(default=dict)


class AgentSession(SessionModel):
    """A conversation with an agent."""

    agent_id = ref_field()

    class Meta:
        table_name = "agent_session"


class AgentMessage(MessageModel):
    """One message of an agent session.

    Assistant messages keep their ``reference`` and ``tool_calls``: a list of
    ``{"call_id", "tool_name", "arguments", "result", "status", "elapsed_ms"}`` in call
    order; ``interrupted`` marks an answer stopped before its end.
    """

    session_id = ref_field()
    tool_calls = JSONField(null=True)

    class Meta:
        table_name = "agent_message"


register_models(Agent, AgentSession, AgentMessage)
