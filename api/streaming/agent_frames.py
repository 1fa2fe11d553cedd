"""Frames of an agent run, without I/O (the :class:`~api.streaming.protocol.Framer`
protocol), for WebSocket and SSE. Formats in ``docs/agents.md``.

WebSocket (:class:`AgentFramer`)::

    {"code": 0, "message": "", "event": E, "data": {…, "session_id", "id", "seq"}, "req_id"?}

with E one of ``thinking``, ``tool_call_start``, ``tool_call_end``, ``message``,
``message_end`` or ``error``, then the completion marker ``{"code": 0, "message": "",
"data": true}``. ``seq`` numbers the frames of one answer from 1 (for resume). A
refusal (empty question, unknown session, busy, rate limit; a refused key or unknown
agent before the close) is an error frame with ``"event": "error"`` too
(:data:`AGENT_DIALECT`), without ``seq``.

SSE (:class:`AgentSSEFramer`, RAGFlow's agent completion format)::

    data:{"event": E, "message_id", "session_id", "created_at", "data": {…}}

then ``data:[DONE]`` (:func:`agent_sse_event` turns the marker into it).
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from api.db.services.agent_service import (
    AgentEvent,
    MessageDelta,
    MessageEnd,
    Thinking,
    ToolCallEnd,
    ToolCallStart,
)
from api.streaming.protocol import (
    CompletionRequest,
    Dialect,
    NumberedFramer,
    StreamState,
    end_frame,
    error_frame_for,
    sse_event,
    tagged,
)
from common.constants import RetCode

#: The SSE end of an agent stream (RAGFlow).
SSE_DONE = "data:[DONE]\n\n"


class AgentEventName(str, Enum):
    """``event`` of an agent frame."""

    THINKING = "thinking"
    TOOL_CALL_START = "tool_call_start"
    TOOL_CALL_END = "tool_call_end"
    MESSAGE = "message"
    MESSAGE_END = "message_end"
    ERROR = "error"


def event_payload(event: AgentEvent) -> tuple[AgentEventName, dict[str, Any]]:
    """The event name and the event-specific fields of ``data``."""
    if isinstance(event, Thinking):
        return AgentEventName.THINKING, {"step": event.step}
    if isinstance(event, ToolCallStart):
        return AgentEventName.TOOL_CALL_START, {"call_id": event.call_id, "tool_name": event.tool_name, "arguments": event.arguments}
    if isinstance(event, ToolCallEnd):
        return AgentEventName.TOOL_CALL_END, {
            "call_id": event.call_id, "tool_name": event.tool_name, "result": event.result,
            "status": event.status, "elapsed_ms": event.elapsed_ms,
        }
    if isinstance(event, MessageDelta):
        return AgentEventName.MESSAGE, {"content": event.text}
    data = {"content": event.content, "reference": event.reference, "tool_calls": event.tool_calls}
    if event.interrupted:
        data["interrupted"] = True
    return AgentEventName.MESSAGE_END, data


class AgentFramer(NumberedFramer):
    """Turns one agent request's events into WebSocket frames.

    Args:
        stream: send every event (True), or only ``message_end`` (False).
        req_id: echoed at the top level of every frame when given.
    """

    error_event = AgentEventName.ERROR.value

    def __init__(self, stream: bool = True, req_id: str | None = None) -> None:
        super().__init__(req_id)
        self.stream = stream

    def _frame(self, name: AgentEventName, data: dict[str, Any]) -> dict[str, Any]:
        body = {**data, "session_id": self.session_id, "id": self.message_id, "seq": self._next_seq()}
        return tagged({"code": RetCode.SUCCESS.value, "message": "", "event": name.value, "data": body}, self.req_id)

    def feed(self, event: AgentEvent) -> list[dict[str, Any]]:
        """Frames for one event.

        Raises:
            IllegalTransition: an event after ``message_end``.
        """
        self._begin(event)
        name, data = event_payload(event)
        if isinstance(event, MessageEnd):
            self.state = StreamState.FINISHED
        elif not self.stream:
            return []
        return [self._frame(name, data)]


def agent_framer(request: CompletionRequest) -> AgentFramer:
    """The framer of an agent request on a WebSocket."""
    return AgentFramer(stream=request.stream, req_id=request.req_id)


#: The agent route's dialect: agent frames, and every error frame — refusals of a
#: message (empty question, busy, rate limit …) and of the connection (bad key,
#: unknown agent, too many connections) included — carries ``"event": "error"``.
AGENT_DIALECT = Dialect(name="agent", framer=agent_framer, error_event=AgentEventName.ERROR.value)


class AgentSSEFramer(NumberedFramer):
    """Turns one agent request's events into RAGFlow-style SSE payloads.

    Args:
        clock: seconds since the epoch (``created_at``), for tests.
    """

    def __init__(self, clock: Any = time.time) -> None:
        super().__init__()
        self._clock = clock

    def _payload(self, name: AgentEventName, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "event": name.value,
            "message_id": self.message_id,
            "session_id": self.session_id,
            "created_at": int(self._clock()),
            "data": data,
        }

    def feed(self, event: AgentEvent) -> list[dict[str, Any]]:
        """One payload per event."""
        self._begin(event)
        if isinstance(event, MessageEnd):
            self.state = StreamState.FINISHED
        self.seq += 1
        return [self._payload(*event_payload(event))]

    def fail(self, error: BaseException) -> dict[str, Any]:
        """An ``error`` event with the code and a client-safe message."""
        self.state = StreamState.FINISHED
        frame = error_frame_for(error)
        return self._payload(AgentEventName.ERROR, {"code": frame["code"], "message": frame["message"]})

    def end(self) -> dict[str, Any]:
        """The marker; :func:`agent_sse_event` writes it as ``data:[DONE]``."""
        return end_frame()


def agent_sse_event(frame: dict[str, Any]) -> str:
    """One SSE event for an :class:`AgentSSEFramer` payload; the marker is ``data:[DONE]``."""
    if frame.get("data") is True and "event" not in frame:
        return SSE_DONE
    return sse_event(frame)


__all__ = [
    "AGENT_DIALECT",
    "SSE_DONE",
    "AgentEventName",
    "AgentFramer",
    "AgentSSEFramer",
    "agent_framer",
    "agent_sse_event",
    "event_payload",
]
