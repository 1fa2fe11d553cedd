"""Agents, their sessions, and ``run_agent()``, the synchronous agent loop.

``run_agent()`` follows ``conversation_service.completion()``: a synchronous generator
run in a worker thread by the bridge (``api.streaming.bridge``), whose ``cancel`` event
is the stop flag. It saves the user message first and the assistant message — with
its tool calls (arguments, results, timings) and references — before the last event;
when stopped it saves what was done marked ``interrupted``, also when the consumer
closes it (client gone).

Two engines (``docs/agents.md``):

* an OpenAI-compatible model: native function calling (``tools`` / ``tool_calls``),
  streamed; each step is one model request, then the tool calls it asked for;
* the built-in offline model: a fixed plan — ``retrieval`` when configured,
  ``calculator`` when the question holds arithmetic, ``current_time`` when it asks for
  the time or date — then an extractive answer from the results.

``cancel`` is checked before every model request and tool call and between streamed
pieces; the loop ends at ``max_iterations`` steps or ``time_limit`` seconds with a
clear final sentence.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import httpx
import httpx2
import openai

from api.agent.dsl import AgentDefinition, parse_definition
from api.agent.tools import (
    MODEL_RESULT_CHARS,
    ToolConfig,
    ToolResult,
    Toolset,
    check_mcp_commands,
)
from api.db.agent_models import Agent, AgentMessage, AgentSession
from api.db.db_models import DB, db_session, get_uuid
from api.db.services.common_service import check_unique, get_or_raise, owned_page
from api.db.services.dataset_service import check_datasets
from api.db.services.retrieval_service import retrieve
from api.db.services.session_store import SessionStore
from api.rag.llm import ChatModelError, ChatRequest
from api.rag.llm.offline import compose_answer, split_deltas
from api.rag.llm.openai_chat import (
    CLIENT_ERRORS,
    MID_ANSWER,
    closing_on_cancel,
    describe_error,
)
from api.runtime import get_runtime
from common.constants import OFFLINE_MODEL_NAME

#: Longest tool result in events and saved tool calls, characters (the model gets up
#: to ``api.agent.tools.MODEL_RESULT_CHARS``).
RESULT_PREVIEW_CHARS = 2000
HISTORY_MESSAGES = 20
ITERATION_LIMIT_MESSAGE = "I stopped here: this agent may take at most {n} steps and had no final answer yet."
TIME_LIMIT_MESSAGE = "I stopped here: this agent's time limit of {s:g} seconds was reached."
NO_ANSWER_MESSAGE = "I could not find an answer to this with my tools."


# -- events ------------------------------------------------------------------------
@dataclass(frozen=True)
class Thinking:
    """A step starts (a model request, or a tool of the offline plan)."""

    step: int
    message_id: str
    session_id: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool is called."""

    call_id: str
    tool_name: str
    arguments: Any
    message_id: str
    session_id: str


@dataclass(frozen=True)
class ToolCallEnd:
    """A tool call ended; ``result`` is cut at :data:`RESULT_PREVIEW_CHARS`."""

    call_id: str
    tool_name: str
    result: str
    status: str
    elapsed_ms: int
    message_id: str
    session_id: str


@dataclass(frozen=True)
class MessageDelta:
    """New answer text (never cumulative)."""

    text: str
    message_id: str
    session_id: str


@dataclass(frozen=True)
class MessageEnd:
    """The whole answer as saved, its references and tool calls; the last event."""

    content: str
    reference: dict
    tool_calls: list[dict]
    message_id: str
    session_id: str
    interrupted: bool = False


AgentEvent = Thinking | ToolCallStart | ToolCallEnd | MessageDelta | MessageEnd


# -- agents ------------------------------------------------------------------------
def agent_to_dict(agent: Agent) -> dict:
    """The agent object of the API (RAGFlow's fields ``id``, ``title``, ``description``, ``dsl``)."""
    return {
        "id": agent.id,
        "title": agent.title,
        "description": agent.description,
        "dsl": agent.dsl,
        "create_time": agent.create_time,
        "update_time": agent.update_time,
    }


def _check_tool_datasets(tenant_id: str, definition: AgentDefinition) -> None:
    """Raise DataError unless every dataset of the retrieval tools is the tenant's."""
    for tool in definition.tools:
        if tool.type == "retrieval":
            check_datasets(tenant_id, list(dict.fromkeys(tool.dataset_ids)))


def _validated_dsl(tenant_id: str, dsl: Any) -> dict:
    """The definition to store: valid, every stdio MCP server's command line allowed by
    the operator (``RAGSOCKET_AGENT_MCP_COMMANDS``), every dataset the tenant's.

    Raises:
        ArgumentError: invalid, or an MCP command line not allowed. DataError: datasets.
    """
    definition = parse_definition(dsl)
    check_mcp_commands(definition, get_runtime().settings.agent_mcp_command_lines)
    _check_tool_datasets(tenant_id, definition)
    return definition.model_dump(mode="json")


def _check_title(tenant_id: str, title: str, exclude_id: str | None = None) -> None:
    check_unique(Agent, f"Agent with title {title} already exists.", exclude_id, tenant_id=tenant_id, title=title)


@db_session()
def get_agent(tenant_id: str, agent_id: str) -> Agent:
    """The tenant's agent.

    Raises:
        DataError: no such agent for this tenant (another tenant's agent included).
    """
    return get_or_raise(Agent, f"You don't own the agent {agent_id}", id=agent_id, tenant_id=tenant_id)


@db_session()
def create_agent(tenant_id: str, title: str, description: str, dsl: Any) -> dict:
    """Create an agent; ``dsl`` is validated (ours or a RAGFlow canvas) and stored as ours.

    Raises:
        ArgumentError: invalid ``dsl``, or a stdio MCP server whose command line
            ``RAGSOCKET_AGENT_MCP_COMMANDS`` does not allow. DataError: duplicate
            title, datasets not the tenant's.
    """
    stored = _validated_dsl(tenant_id, dsl)
    _check_title(tenant_id, title)
    return agent_to_dict(Agent.create(tenant_id=tenant_id, title=title, description=description, dsl=stored))


@db_session()
def update_agent(tenant_id: str, agent_id: str, fields: dict) -> dict:
    """Change ``title``, ``description`` and/or ``dsl`` (validated as on create)."""
    agent = get_agent(tenant_id, agent_id)
    if fields.get("dsl") is not None:
        agent.dsl = _validated_dsl(tenant_id, fields["dsl"])
    if fields.get("title") is not None:
        _check_title(tenant_id, fields["title"], agent_id)
        agent.title = fields["title"]
    if fields.get("description") is not None:
        agent.description = fields["description"]
    agent.save()
    return agent_to_dict(agent)


@db_session()
def list_agents(
    tenant_id: str, page: int, page_size: int, orderby: str, desc: bool, title: str | None, agent_id: str | None
) -> list[dict]:
    """One page of the tenant's agents, optionally filtered by exact title or id."""
    agents = owned_page(Agent, Agent.tenant_id == tenant_id, page, page_size, orderby, desc, title=title, id=agent_id)
    return [agent_to_dict(agent) for agent in agents]


@db_session()
def delete_agent(tenant_id: str, agent_id: str) -> None:
    """Delete an agent with its sessions and messages."""
    agent = get_agent(tenant_id, agent_id)
    session_ids = SESSIONS.session_ids_of(agent.id)
    with DB.atomic():
        SESSIONS.purge(session_ids)
        agent.delete_instance()


# -- sessions ----------------------------------------------------------------------
def _prologue(agent: Agent) -> str | None:
    return (agent.dsl or {}).get("prologue")


#: An agent's sessions (``agent_session``) and messages (``agent_message``).
SESSIONS = SessionStore(
    sessions=AgentSession,
    messages=AgentMessage,
    parent_column="agent_id",
    session_column="session_id",
    parent_key="agent_id",
    parent_noun="agent",
    get_parent=get_agent,
    prologue=_prologue,
    assistant_lists=("tool_calls",),
)
#: A stored message; assistant messages with references, tool calls and ``interrupted``.
message_to_dict = SESSIONS.message_to_dict
#: An agent session with its messages.
session_to_dict = SESSIONS.session_to_dict


@db_session()
def create_session(tenant_id: str, agent_id: str, name: str = "New session", user_id: str = "") -> dict:
    """Create a session of the tenant's agent, opened by the agent's prologue.

    Raises:
        DataError: unknown agent.
    """
    return SESSIONS.create_session(tenant_id, agent_id, name, user_id)


@db_session()
def get_session(tenant_id: str, agent_id: str, session_id: str) -> AgentSession:
    """The session, checked to belong to the tenant's agent.

    Raises:
        DataError: unknown agent or session.
    """
    return SESSIONS.get_session(tenant_id, agent_id, session_id)


@db_session()
def list_sessions(
    tenant_id: str, agent_id: str, page: int, page_size: int, orderby: str, desc: bool,
    session_id: str | None = None, user_id: str | None = None,
) -> list[dict]:
    """One page of an agent's sessions with their messages (filters: exact values).

    Raises:
        DataError: unknown agent.
    """
    return SESSIONS.list_sessions(tenant_id, agent_id, page, page_size, orderby, desc, id=session_id, user_id=user_id)


@db_session()
def delete_sessions(tenant_id: str, agent_id: str, session_ids: list[str] | None) -> int:
    """Delete sessions (all of the agent's when ``None``) and their messages.

    Raises:
        DataError: unknown agent or session.
    """
    return SESSIONS.delete_sessions(tenant_id, agent_id, session_ids)


# -- the offline plan (pure) -------------------------------------------------------
_ARITHMETIC = re.compile(r"[-+*/^%().\d\s×÷]+")
_OPERATOR_BETWEEN = re.compile(r"\d[\s)]*[-+*/^%×÷][\s(]*[-+(]?\d")
_TIME_WORDS = re.compile(r"\b(time|date|today|clock|what day)\b|几点|时间|日期|今天|星期几", re.IGNORECASE)
_ZONE = re.compile(r"\b([A-Z][A-Za-z_]+/[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_]+)?|UTC)\b")


def extract_expression(question: str) -> str | None:
    """The longest arithmetic expression in ``question`` (two numbers and an operator
    at least), ``×``/``÷`` written as ``*``/``/``; None when there is none."""
    best = None
    for match in _ARITHMETIC.finditer(question):
        candidate = match.group().strip().rstrip(".").strip()
        while candidate.count("(") < candidate.count(")") and candidate.endswith(")"):
            candidate = candidate[:-1].rstrip()
        while candidate.count("(") > candidate.count(")") and candidate.startswith("("):
            candidate = candidate[1:].lstrip()
        if _OPERATOR_BETWEEN.search(candidate) and (best is None or len(candidate) > len(best)):
            best = candidate
    return best.replace("×", "*").replace("÷", "/") if best else None


def offline_plan(definition: AgentDefinition, question: str) -> list[tuple[str, dict]]:
    """The tool calls of the offline model, in order: ``(tool name, arguments)``."""
    plan: list[tuple[str, dict]] = []
    if definition.tool("retrieval"):
        plan.append(("retrieval", {"question": question}))
    expression = extract_expression(question)
    if expression and definition.tool("calculator"):
        plan.append(("calculator", {"expression": expression}))
    if _TIME_WORDS.search(question) and definition.tool("current_time"):
        zone = _ZONE.search(question)
        plan.append(("current_time", {"timezone": zone.group(1) if zone else "UTC"}))
    return plan


def offline_answer(question: str, results: list[tuple[str, dict, ToolResult]], chunks: list[dict]) -> str:
    """The extractive answer from the plan's results (retrieved sentences cite ``[ID:n]``)."""
    sentences = []
    for name, arguments, result in results:
        if name == "calculator":
            if result.status == "completed":
                sentences.append(f"{arguments['expression']} = {result.content}.")
            else:
                sentences.append(f"I could not calculate {arguments['expression']}: {result.content.removeprefix('error: ')}.")
        elif name == "current_time" and result.status == "completed":
            sentences.append(f"The current time in {arguments['timezone']} is {result.content.split(' ', 1)[0]}.")
    if chunks:
        extract = compose_answer(ChatRequest(question=question, messages=[], chunks=chunks, empty_response=""))
        if extract:
            sentences.insert(0, extract)
    return " ".join(sentences) or NO_ANSWER_MESSAGE


# -- the run -----------------------------------------------------------------------
@dataclass
class _Turn:
    agent_id: str
    definition: AgentDefinition
    session_id: str
    question: str
    history: list[dict]
    message_id: str = field(default_factory=get_uuid)


@db_session()
def _begin_turn(tenant_id: str, agent_id: str, question: str, session_id: str | None) -> _Turn:
    """Load the agent and session (creating it), read history, save the question."""
    agent = get_agent(tenant_id, agent_id)
    definition = parse_definition(agent.dsl)  # ArgumentError: stored before a rule was added
    _check_tool_datasets(tenant_id, definition)
    session_id, history = SESSIONS.begin_turn(tenant_id, agent, question, session_id, HISTORY_MESSAGES)
    return _Turn(agent.id, definition, session_id, question, history)


@db_session()
def _save_answer(turn: _Turn, answer: str, reference: dict, tool_calls: list[dict], interrupted: bool) -> None:
    SESSIONS.save_answer(turn.session_id, turn.message_id, answer, reference, interrupted, tool_calls=tool_calls)


@lru_cache(maxsize=16)
def _openai_client(base_url: str, api_key: str, timeout: float) -> openai.OpenAI:
    """One shared client (and connection pool) per endpoint, key and timeout."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)


@dataclass
class _PendingCall:
    call_id: str = ""
    name: str = ""
    arguments: str = ""


class _Run:
    """The state of one run: answer so far, tool calls made, deadline, stop flag."""

    def __init__(self, turn: _Turn, toolset: Toolset, cancel: threading.Event, settings: Any) -> None:
        self.turn = turn
        self.definition = turn.definition
        self.toolset = toolset
        self.cancel = cancel
        self.settings = settings
        self.deadline = time.monotonic() + turn.definition.time_limit
        self.parts: list[str] = []
        self.tool_calls: list[dict] = []

    @property
    def ids(self) -> tuple[str, str]:
        return self.turn.message_id, self.turn.session_id

    @property
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def answer(self) -> str:
        return "".join(self.parts)

    def delta(self, text: str) -> MessageDelta:
        self.parts.append(text)
        return MessageDelta(text, *self.ids)

    def say(self, sentence: str) -> Iterator[AgentEvent]:
        """Append a sentence of ours (a limit reached) to the answer."""
        yield self.delta(("\n\n" if self.parts else "") + sentence)

    def call_tool(self, call_id: str, name: str, arguments: Any) -> Iterator[AgentEvent]:
        """Run one tool call: its start and end events; returns the result (``yield from``)."""
        parsed = arguments
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                parsed = None
        yield ToolCallStart(call_id, name, parsed if parsed is not None else arguments, *self.ids)
        started = time.monotonic()
        if parsed is None:
            result = ToolResult("error: the arguments are not valid JSON", "error")
        else:
            result = self.toolset.call(name, parsed, timeout=self.remaining)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        preview = result.content[:RESULT_PREVIEW_CHARS]
        self.tool_calls.append({
            "call_id": call_id, "tool_name": name, "arguments": parsed if parsed is not None else arguments,
            "result": preview, "status": result.status, "elapsed_ms": elapsed_ms,
        })
        yield ToolCallEnd(call_id, name, preview, result.status, elapsed_ms, *self.ids)
        return result


def _offline_engine(run: _Run) -> Iterator[AgentEvent]:
    """The fixed plan: at most ``max_iterations`` tool calls, then the answer from the
    results gathered; when the plan was longer, the iteration-limit sentence follows
    the answer."""
    plan = offline_plan(run.definition, run.turn.question)
    limit = run.definition.max_iterations
    results: list[tuple[str, dict, ToolResult]] = []
    for step, (name, arguments) in enumerate(plan[:limit], start=1):
        if run.cancel.is_set():
            return
        if run.remaining <= 0:
            yield from run.say(TIME_LIMIT_MESSAGE.format(s=run.definition.time_limit))
            return
        yield Thinking(step, *run.ids)
        result = yield from run.call_tool(f"call_{step}", name, arguments)
        results.append((name, arguments, result))
    if run.cancel.is_set():
        return
    yield Thinking(len(results) + 1, *run.ids)
    answer = offline_answer(run.turn.question, results, run.toolset.references.chunks)
    delay = run.settings.offline_token_delay
    for index, piece in enumerate(split_deltas(answer)):
        if index and delay > 0:
            run.cancel.wait(delay)
        if run.cancel.is_set():
            return
        yield run.delta(piece)
    if len(plan) > limit:
        yield from run.say(ITERATION_LIMIT_MESSAGE.format(n=limit))


#: Errors of a model request that timed out (the openai client's and its transports').
_MODEL_TIMEOUTS = (openai.APITimeoutError, httpx.TimeoutException, httpx2.TimeoutException)


@dataclass
class _StepResult:
    """What one model request gave: its text, the tool calls it asked for, and whether
    the run's time limit cut it short (the stream was then closed)."""

    text: str
    calls: list[_PendingCall]
    expired: bool = False


def _model_step(run: _Run, client: openai.OpenAI, messages: list[dict], tools: list[dict]) -> Iterator[AgentEvent]:
    """One streamed model request; yields text deltas, returns a :class:`_StepResult`.

    The run's deadline is checked before each streamed chunk: past it, the stream is
    closed and the result is ``expired`` (the text so far, no tool calls). A read that
    times out after the deadline counts as expired too (each read waits at most the
    time left when the request was sent).
    """
    llm = run.definition.llm
    sampling = {k: v for k, v in (("temperature", llm.temperature), ("top_p", llm.top_p), ("max_tokens", llm.max_tokens)) if v is not None}
    if tools:
        sampling["tools"] = tools
    timeout = max(0.5, min(run.settings.llm_timeout, run.remaining))
    try:
        upstream = client.chat.completions.create(
            model=llm.model_name, messages=messages, stream=True, timeout=timeout, **sampling
        )
    except CLIENT_ERRORS as error:
        if isinstance(error, _MODEL_TIMEOUTS) and run.remaining <= 0:
            return _StepResult("", [], expired=True)
        raise ChatModelError(describe_error(error, started=False)) from error
    text: list[str] = []
    calls: dict[int, _PendingCall] = {}
    finished = False
    # Leaving the block closes the stream (and its connection) early; a stop shuts the
    # connection down at once, even while a read waits on a silent model.
    with upstream, closing_on_cancel(upstream, run.cancel):
        try:
            for chunk in upstream:
                if run.cancel.is_set():
                    return _StepResult("".join(text), [])
                if run.remaining <= 0:
                    return _StepResult("".join(text), [], expired=True)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finished = finished or bool(choice.finish_reason)
                delta = choice.delta
                if delta is None:
                    continue
                if delta.content:
                    text.append(delta.content)
                    yield run.delta(delta.content)
                for piece in delta.tool_calls or []:
                    pending = calls.setdefault(piece.index, _PendingCall())
                    pending.call_id = piece.id or pending.call_id
                    if piece.function is not None:
                        pending.name += piece.function.name or ""
                        pending.arguments += piece.function.arguments or ""
        except CLIENT_ERRORS as error:
            if run.cancel.is_set():
                return _StepResult("".join(text), [])  # the stop shut the connection down
            if isinstance(error, _MODEL_TIMEOUTS) and run.remaining <= 0:
                return _StepResult("".join(text), [], expired=True)
            raise ChatModelError(describe_error(error, started=bool(text or calls))) from error
    if not finished and not run.cancel.is_set():
        raise ChatModelError(MID_ANSWER)
    ordered = [calls[index] for index in sorted(calls)]
    for number, call in enumerate(ordered):
        call.call_id = call.call_id or f"call_{run.turn.message_id[:8]}_{number}"
    return _StepResult("".join(text), ordered)


def _function_calling_engine(run: _Run) -> Iterator[AgentEvent]:
    settings = run.settings
    if not settings.llm_configured:
        raise ChatModelError(f"model '{run.definition.llm.model_name}' is not available: set RAGSOCKET_LLM_BASE_URL and RAGSOCKET_LLM_MODEL")
    client = _openai_client(settings.llm_base_url, settings.llm_api_key or "none", settings.llm_timeout)
    tools = run.toolset.schemas()
    messages: list[dict] = [
        {"role": "system", "content": run.definition.system_prompt},
        *run.turn.history,
        {"role": "user", "content": run.turn.question},
    ]
    for step in range(1, run.definition.max_iterations + 1):
        if run.cancel.is_set():
            return
        if run.remaining <= 0:
            yield from run.say(TIME_LIMIT_MESSAGE.format(s=run.definition.time_limit))
            return
        yield Thinking(step, *run.ids)
        answered = yield from _model_step(run, client, messages, tools)
        if answered.expired:
            yield from run.say(TIME_LIMIT_MESSAGE.format(s=run.definition.time_limit))
            return
        calls = answered.calls
        if not calls or run.cancel.is_set():
            return
        messages.append({
            "role": "assistant", "content": answered.text or None,
            "tool_calls": [{"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls],
        })
        for call in calls:
            if run.cancel.is_set():
                return
            if run.remaining <= 0:
                yield from run.say(TIME_LIMIT_MESSAGE.format(s=run.definition.time_limit))
                return
            result = yield from run.call_tool(call.call_id, call.name, call.arguments)
            messages.append({"role": "tool", "tool_call_id": call.call_id, "content": result.content[:MODEL_RESULT_CHARS]})
    yield from run.say(ITERATION_LIMIT_MESSAGE.format(n=run.definition.max_iterations))


def run_agent(
    tenant_id: str,
    agent_id: str,
    question: str,
    session_id: str | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[AgentEvent]:
    """Answer ``question`` with the agent, streaming its steps.

    Args:
        tenant_id: the caller; the agent and session must be the tenant's.
        agent_id: the agent.
        question: the user's question (validated as non-empty).
        session_id: the session to continue; ``None`` creates one.
        cancel: stop flag, checked before every model request and tool call.

    Yields:
        :class:`Thinking`, :class:`ToolCallStart` / :class:`ToolCallEnd`,
        :class:`MessageDelta` events, then one :class:`MessageEnd` (saved before it is
        yielded; ``interrupted`` when ``cancel`` was set). Closed early, the generator
        saves what was done with ``interrupted=True``.

    Raises:
        DataError: unknown agent or session. ChatModelError: the model failed (what
        was done is saved).
    """
    stop = cancel if cancel is not None else threading.Event()
    turn = _begin_turn(tenant_id, agent_id, question, session_id)
    settings = get_runtime().settings
    toolset = Toolset(turn.definition, ToolConfig(settings.agent_allow_private_urls, settings.agent_mcp_command_lines), retrieve)
    run = _Run(turn, toolset, stop, settings)
    offline = turn.definition.llm.model_name in ("", OFFLINE_MODEL_NAME)
    saved = False
    try:
        yield from (_offline_engine(run) if offline else _function_calling_engine(run))
        toolset.close()  # before the last event: MCP servers may take a moment to exit
        reference = toolset.references.as_reference()
        _save_answer(turn, run.answer, reference, run.tool_calls, interrupted=stop.is_set())
        saved = True
        yield MessageEnd(run.answer, reference, run.tool_calls, *run.ids, interrupted=stop.is_set())
    finally:
        toolset.close()
        if not saved:
            _save_answer(turn, run.answer, toolset.references.as_reference(), run.tool_calls, interrupted=True)
