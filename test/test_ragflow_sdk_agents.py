"""Agents and agent sessions through RAGFlow's own Python SDK (``ragflow-sdk`` 0.22.1,
unchanged) against the real server.

The SDK's agent calls (``ragflow_sdk/ragflow.py`` and ``modules/agent.py``):
``create_agent(title, dsl, description)`` (returns nothing), ``list_agents(page,
page_size, orderby="update_time", desc, id, title)``, ``update_agent(agent_id, …)``,
``delete_agent(agent_id)``; ``Agent.create_session(**kwargs)``, ``list_sessions``,
``delete_sessions(ids)``; and ``Session.ask`` (``modules/session.py``), which for an
agent session posts ``{"question", "stream", "session_id"}`` to
``/agents/<id>/completions`` and reads ``data.content`` of every SSE event up to
``message_end`` (exclusive), or, with ``stream=False``, ``data.data.content`` and
``data.reference.chunks`` of the envelope. The plain HTTP client is used only to read
what the server saved.
"""

from __future__ import annotations

import httpx
import pytest
from ragflow_sdk import RAGFlow
from ragflow_sdk.modules.agent import Agent
from ragflow_sdk.modules.dataset import DataSet
from ragflow_sdk.modules.session import Message, Session

from test.support.agents import ragflow_canvas, retrieval_agent
from test.support.sdk import sdk_corpus
from test.support.server import saved_session_sync, unique

QUESTION = "How many days do I have to return a purchase, and what is 30 * 2?"


@pytest.fixture(scope="module")
def dataset(rag: RAGFlow, corpus_dir) -> DataSet:
    """The shipped documents, uploaded and parsed through the SDK."""
    dataset, _ = sdk_corpus(rag, corpus_dir, unique("sdk-agent-corpus"))
    return dataset


def our_dsl(dataset_id: str) -> dict:
    """Our agent definition: the offline model with retrieval and calculator."""
    return {"prologue": "Hello from the SDK agent.", "tools": [{"type": "retrieval", "dataset_ids": [dataset_id]}, {"type": "calculator"}]}


def canvas_dsl(dataset_id: str, extra: dict | None = None) -> dict:
    """A RAGFlow canvas of the template Begin → Agent (Retrieval tool) → Message."""
    return ragflow_canvas(retrieval_agent(dataset_id, max_rounds=3), extra)


def create(rag: RAGFlow, title: str, dsl: dict, description: str | None = None) -> Agent:
    """``create_agent`` returns nothing: find the agent by title, as SDK users do."""
    assert rag.create_agent(title, dsl, description=description) is None
    (agent,) = rag.list_agents(title=title)
    return agent


@pytest.fixture(scope="module")
def agent(rag: RAGFlow, dataset: DataSet) -> Agent:
    return create(rag, unique("sdk-agent"), our_dsl(dataset.id), description="retrieval and calculator")


def saved_messages(http: httpx.Client, agent_id: str, session_id: str) -> list[dict]:
    return saved_session_sync(http, agent_id, session_id, kind="agents")["messages"]


# -- agents -----------------------------------------------------------------------------
def test_agent_create_list_update_delete(rag: RAGFlow, dataset: DataSet):
    title = unique("sdk-crud")
    agent = create(rag, title, our_dsl(dataset.id), description="first")
    assert isinstance(agent, Agent) and agent.id and agent.title == title and agent.description == "first"
    assert agent.dsl.llm.model_name == "ragsocket-offline" and agent.dsl.max_iterations == 5
    assert [t["type"] for t in agent.dsl.tools] == ["retrieval", "calculator"]
    assert agent.id in {a.id for a in rag.list_agents()}
    assert [a.id for a in rag.list_agents(id=agent.id)] == [agent.id]
    assert [a.id for a in rag.list_agents(page=1, page_size=1, orderby="create_time", desc=False, id=agent.id)] == [agent.id]

    assert rag.update_agent(agent.id, title=title + "-renamed", description="second", dsl={**our_dsl(dataset.id), "max_iterations": 3}) is None
    (updated,) = rag.list_agents(id=agent.id)
    assert (updated.title, updated.description, updated.dsl.max_iterations) == (title + "-renamed", "second", 3)

    assert rag.delete_agent(agent.id) is None
    assert rag.list_agents(id=agent.id) == []
    with pytest.raises(Exception, match=f"You don't own the agent {agent.id}"):
        rag.delete_agent(agent.id)


def test_agent_errors_raise_with_the_server_message(rag: RAGFlow, dataset: DataSet):
    with pytest.raises(Exception, match="`dsl.max_iterations`: Input should be less than or equal to 20"):
        rag.create_agent(unique("sdk-bad"), {"max_iterations": 50})
    title = unique("sdk-dup")
    create(rag, title, {})
    with pytest.raises(Exception, match=f"Agent with title {title} already exists."):
        rag.create_agent(title, {})
    refused = {"Categorize:C": {"obj": {"component_name": "Categorize", "params": {}}, "downstream": [], "upstream": []}}
    with pytest.raises(Exception, match=r"unsupported canvas components: Categorize:C \(Categorize\)"):
        rag.create_agent(unique("sdk-canvas-bad"), canvas_dsl(dataset.id, refused))


def test_canvas_agent_created_through_the_sdk_answers(rag: RAGFlow, dataset: DataSet):
    agent = create(rag, unique("sdk-canvas"), canvas_dsl(dataset.id))
    assert agent.dsl.prologue == "Canvas says hi" and agent.dsl.max_iterations == 3
    assert agent.dsl.tools == [{"type": "retrieval", "dataset_ids": [dataset.id], "top_n": 3, "similarity_threshold": 0.2}]
    session = agent.create_session()
    assert session.messages[0]["content"] == "Canvas says hi"
    (message,) = list(session.ask("How many days do I have to return a purchase?", stream=False))
    assert "30 days" in message.content and message.reference[0]["document_name"] == "returns.md"


# -- agent sessions ------------------------------------------------------------------------
def test_agent_session_create_list_delete(agent: Agent):
    session = agent.create_session()
    assert isinstance(session, Session) and session.agent_id == agent.id and session.name == "New session"
    assert session.messages == [{"id": session.messages[0]["id"], "role": "assistant", "content": "Hello from the SDK agent.",
                                 "reference": {}, "tool_calls": [], "interrupted": False}]
    named = agent.create_session(name="named", user_id="u1")
    assert (named.name, named.user_id) == ("named", "u1")
    listed = agent.list_sessions()
    assert {session.id, named.id} <= {s.id for s in listed} and all(isinstance(s, Session) for s in listed)
    assert [s.id for s in agent.list_sessions(id=named.id)] == [named.id]
    agent.delete_sessions(ids=[session.id])
    assert agent.list_sessions(id=session.id) == []
    with pytest.raises(Exception, match="The agent doesn't own the session nope"):
        agent.delete_sessions(ids=["nope"])
    agent.delete_sessions()
    assert agent.list_sessions() == []


# -- asking ---------------------------------------------------------------------------------
def test_ask_stream(agent: Agent, http: httpx.Client):
    session = agent.create_session(name="stream")
    messages = list(session.ask(QUESTION, stream=True))
    assert messages and all(isinstance(m, Message) and m.role == "assistant" for m in messages)
    answer = "".join(m.content for m in messages)
    assert "30 days" in answer and "[ID:0]" in answer and answer.endswith("30 * 2 = 60.")
    assert len([m for m in messages if m.content]) > 3, "the answer streams in pieces"
    saved = saved_messages(http, agent.id, session.id)
    assert [m["role"] for m in saved] == ["assistant", "user", "assistant"]
    assert saved[1]["content"] == QUESTION and saved[2]["content"] == answer
    assert [c["tool_name"] for c in saved[2]["tool_calls"]] == ["retrieval", "calculator"]
    assert saved[2]["reference"]["chunks"][0]["document_name"] == "returns.md"


def test_ask_non_stream(agent: Agent, http: httpx.Client):
    session = agent.create_session(name="whole")
    (message,) = list(session.ask(QUESTION, stream=False))
    assert isinstance(message, Message)
    assert "30 days" in message.content and message.content.endswith("30 * 2 = 60.")
    assert message.reference[0]["document_name"] == "returns.md"
    saved = saved_messages(http, agent.id, session.id)
    assert saved[-1]["content"] == message.content and saved[-1]["reference"]["chunks"] == message.reference


def test_ask_continues_the_session(agent: Agent, http: httpx.Client):
    session = agent.create_session(name="two turns")
    first = "".join(m.content for m in session.ask(QUESTION, stream=True))
    (second,) = list(session.ask("What does the warranty cover, and what is 12 * 12?", stream=False))
    assert "manufacturing defects" in second.content and second.content.endswith("12 * 12 = 144.")
    saved = saved_messages(http, agent.id, session.id)
    assert [m["role"] for m in saved] == ["assistant", "user", "assistant", "user", "assistant"]
    assert saved[2]["content"] == first and saved[4]["content"] == second.content


def test_deleted_agent_raises_with_the_server_message(rag: RAGFlow, dataset: DataSet):
    agent = create(rag, unique("sdk-gone"), our_dsl(dataset.id))
    session = agent.create_session()
    rag.delete_agent(agent.id)
    with pytest.raises(Exception, match=f"You don't own the agent {agent.id}"):
        agent.create_session()
    with pytest.raises(Exception, match=agent.id):
        agent.list_sessions()
    # ask() does not look at ``code``: our error envelope has ``data: null``, which it cannot index
    with pytest.raises(TypeError):
        list(session.ask(QUESTION, stream=False))
