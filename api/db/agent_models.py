"""Peewee models of agents, their sessions and messages (RAGFlow: ``user_canvas``,
``api_4_conversation``), registered with :func:`api.db.db_models.register_models` so
their tables are created at start-up with the others.
"""

from __future__ import annotations

import time

from peewee import BigIntegerField, BooleanField, CharField, TextField

from api.db.db_models import (
    BaseModel,
    JSONField,
    LongTextField,
    get_uuid,
    register_models,
)


class Agent(BaseModel):
    """An agent: ``dsl`` is the validated agent definition (``api.agent.dsl``)."""

    id = CharField(max_length=32, primary_key=True, default=get_uuid)
    tenant_id = CharField(max_length=32, index=True)
    title = CharField(max_length=255)
    description = TextField(default="")
    dsl = JSONField(default=dict)


class AgentSession(BaseModel):
    """A conversation with an agent."""

    id = CharField(max_length=32, primary_key=True, default=get_uuid)
    agent_id = CharField(max_length=32, index=True)
    tenant_id = CharField(max_length=32, index=True)
    name = CharField(max_length=255, default="New session")
    user_id = CharField(max_length=255, default="")

    class Meta:
        table_name = "agent_session"


class AgentMessage(BaseModel):
    """One message of an agent session.

    Assistant messages keep their ``reference`` and ``tool_calls``: a list of
    ``{"call_id", "tool_name", "arguments", "result", "status", "elapsed_ms"}`` in call
    order; ``interrupted`` marks an answer stopped before its end.
    """

    id = CharField(max_length=32, primary_key=True, default=get_uuid)
    session_id = CharField(max_length=32, index=True)
    role = CharField(max_length=16)
    content = LongTextField(default="")
    reference = JSONField(null=True)
    tool_calls = JSONField(null=True)
    interrupted = BooleanField(default=False)
    position = BigIntegerField(default=time.time_ns, index=True)

    class Meta:
        table_name = "agent_message"


register_models(Agent, AgentSession, AgentMessage)
