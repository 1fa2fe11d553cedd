"""The answer-stream protocol, without I/O: request validation and frame building.

Used by the WebSocket routes and by the SSE completions route alike, and tested with
plain dicts. Formats (RAGFlow's HTTP API reference, "Converse with chat assistant"):

* data frame: ``{"code": 0, "message": "", "data": {"answer", "reference", "id",
  "session_id", "final"}}``; ``answer`` is the new text since the previous frame, or
  the whole answer so far when the request asked for ``"legacy": true``;
* the last content frame has ``"final": true`` and ``reference = {"total", "chunks",
  "doc_aggs"}``;
* end marker: ``{"code": 0, "message": "", "data": true}``;
* error frame: ``{"code": <RetCode>, "message": "...", "data": {"answer":
  "**ERROR**: ...", "reference": []}}``.

SSE wraps each frame as ``data:<json>\\n\\n`` (WHATWG HTML, "Server-sent events").

WebSocket additions (all optional for clients, see ``docs/websocket_api.md``):

* a request may carry ``req_id``; every frame of that request echoes it at the top
  level of the envelope;
* content and error frames of an answer carry ``data.seq`` (1, 2, 3 … per message),
  the position a client gives back in ``{"type": "resume", …, "last_seq"}``;
* other client messages: ``{"type": "stop"}``, ``{"type": "ping"}`` (answered by
  ``{"type": "pong", "ts": <ms>}``) and ``{"type": "resume"}``;
* a refused message gets an error frame and its completion marker, except a message
  refused while the request without ``req_id`` runs: no marker, which would read as
  that request's end (:meth:`Dialect.refusal_has_marker`).

What differs between the routes sharing the connection loop — the framer of each
request, the ``event`` of error frames, heartbeats — is a :class:`Dialect`
(:data:`CHAT_DIALECT`, ``agent_frames.AGENT_DIALECT``, ``dify_format.dify_dialect``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from api.db.services.conversation_service import AnswerDelta, AnswerEvent
from api.rag.llm import ChatModelError
from common.constants import RetCode
from common.errors import ArgumentError, RagSocketError

logger = logging.getLogger(__name__)

END_FRAME: dict[str, Any] = {"code": RetCode.SUCCESS.value, "message": "", "data": True}
INTERNAL_ERROR_MESSAGE = "internal server error; the request was logged"

#: Longest ``req_id``, characters.
MAX_REQ_ID_CHARS = 64


class MessageType(str, Enum):
    """``type`` of a client message; absent means a question."""

    QUESTION = "question"
    CHAT = "chat"  # the seed API's /v1/ws/chat: a question naming its chat_id
    STOP = "stop"
    PING = "ping"
    RESUME = "resume"


@dataclass(frozen=True)
class CompletionRequest:
    """A validated completion request (WebSocket message or HTTP body)."""

    question: str
    session_id: str | None = None
    stream: bool = True
    legacy: bool = False
    kb_ids: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()
    req_id: str | None = None
    resumable: bool = False
    chat_id: str | None = None


@dataclass(frozen=True)
class StopRequest:
    """Stop the request ``req_id``, or every running request when ``None``."""

    req_id: str | None = None


@dataclass(frozen=True)
class PingRequest:
    """An application-level ping (for clients that cannot send ping frames)."""

    req_id: str | None = None


@dataclass(frozen=True)
class ResumeRequest:
    """Send again the frames of ``message_id`` after ``last_seq``, then follow it."""

    session_id: str
    message_id: str
    last_seq: int
    req_id: str | None = None


ClientMessage = CompletionRequest | StopRequest | PingRequest | ResumeRequest


def dumps(frame: Any) -> str:
    """Compact JSON, UTF-8 kept as is (Chinese text stays readable)."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def sse_event(frame: Any) -> str:
    """One SSE event carrying ``frame`` as its data line."""
    return f"data:{dumps(frame)}\n\n"


def optional_str(payload: dict, name: str, limit: int = 64) -> str | None:
    """``payload[name]`` when it is a non-empty string of at most ``limit`` characters.

    Returns None when the field is absent, null or empty.

    Raises:
        ArgumentError: the field is not a string, or longer than ``limit``.
    """
    value = payload.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ArgumentError(f"`{name}` must be a string of at most {limit} characters")
    return value


def _required_str(payload: dict, name: str) -> str:
    value = optional_str(payload, name)
    if value is None:
        raise ArgumentError(f"`{name}` is required")
    return value


def _bool(payload: dict, name: str, default: bool) -> bool:
    value = payload.get(name, default)
    if not isinstance(value, bool):
        raise ArgumentError(f"`{name}` must be true or false")
    return value


def _id_list(payload: dict, name: str) -> tuple[str, ...]:
    value = payload.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ArgumentError(f"`{name}` must be a list of ids")
    return tuple(value)


def peek_req_id(payload: Any) -> str | None:
    """The ``req_id`` of a payload if it is a valid one, else None (for error frames)."""
    if isinstance(payload, dict):
        value = payload.get("req_id")
        if isinstance(value, str) and 0 < len(value) <= MAX_REQ_ID_CHARS:
            return value
    return None


def parse_request_payload(payload: Any, max_question_chars: int) -> CompletionRequest:
    """Validate a decoded completion request.

    Raises:
        ArgumentError: not an object, missing/empty/too long question, wrong types.
    """
    if not isinstance(payload, dict):
        raise ArgumentError("the request must be a JSON object")
    question = payload.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ArgumentError("`question` is required and must be a non-empty string")
    if len(question) > max_question_chars:
        raise ArgumentError(f"`question` is too long: {len(question)} characters, at most {max_question_chars}")
    return CompletionRequest(
        question=question.strip(),
        session_id=optional_str(payload, "session_id"),
        stream=_bool(payload, "stream", True),
        legacy=_bool(payload, "legacy", False),
        kb_ids=_id_list(payload, "kb_ids"),
        doc_ids=_id_list(payload, "doc_ids"),
        req_id=optional_str(payload, "req_id", MAX_REQ_ID_CHARS),
        resumable=_bool(payload, "resumable", False),
        chat_id=optional_str(payload, "chat_id"),
    )


def _parse_resume(payload: dict) -> ResumeRequest:
    last_seq = payload.get("last_seq", 0)
    if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
        raise ArgumentError("`last_seq` must be a non-negative integer")
    return ResumeRequest(
        session_id=_required_str(payload, "session_id"),
        message_id=_required_str(payload, "message_id"),
        last_seq=last_seq,
        req_id=optional_str(payload, "req_id", MAX_REQ_ID_CHARS),
    )


def decode_json(text: str) -> Any:
    """``json.loads`` with a client-facing error; the result re-encodes as UTF-8.

    Raises:
        ArgumentError: invalid JSON (with line and column), nesting too deep, a number
            too long, or a lone surrogate escape that no UTF-8 frame could echo.
    """
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArgumentError(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise ArgumentError("invalid JSON: nested too deeply") from None
    except ValueError:  # e.g. an integer beyond Python's int/str conversion limit
        raise ArgumentError("invalid JSON: a number is too long") from None
    try:
        dumps(payload).encode("utf-8")
    except UnicodeEncodeError:
        raise ArgumentError("invalid JSON: a string holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return payload


def parse_client_message(payload: Any, max_question_chars: int) -> ClientMessage:
    """Validate one decoded WebSocket message of any type.

    Raises:
        ArgumentError: unknown ``type`` or invalid fields for that type.
    """
    if not isinstance(payload, dict):
        raise ArgumentError("the request must be a JSON object")
    kind = payload.get("type", MessageType.QUESTION.value)
    if kind in (MessageType.QUESTION.value, MessageType.CHAT.value):
        return parse_request_payload(payload, max_question_chars)
    if kind == MessageType.STOP.value:
        return StopRequest(optional_str(payload, "req_id", MAX_REQ_ID_CHARS))
    if kind == MessageType.PING.value:
        return PingRequest(optional_str(payload, "req_id", MAX_REQ_ID_CHARS))
    if kind == MessageType.RESUME.value:
        return _parse_resume(payload)
    known = ", ".join(t.value for t in MessageType)
    raise ArgumentError(f"unknown message type {str(kind)[:32]!r}; expected one of: {known}")


def parse_request_text(text: str, max_question_chars: int) -> CompletionRequest:
    """Decode and validate one completion request message.

    Raises:
        ArgumentError: invalid JSON, or see :func:`parse_request_payload`.
    """
    return parse_request_payload(decode_json(text), max_question_chars)


def tagged(frame: dict[str, Any], req_id: str | None) -> dict[str, Any]:
    """``frame`` with ``req_id`` set at the top level (or removed when None)."""
    result = {key: value for key, value in frame.items() if key != "req_id"}
    if req_id is not None:
        result["req_id"] = req_id
    return result


def end_frame(req_id: str | None = None) -> dict[str, Any]:
    """The completion marker, echoing ``req_id``."""
    return tagged(END_FRAME, req_id)


def pong_frame(now_ms: int, req_id: str | None = None) -> dict[str, Any]:
    """Answer to ``{"type": "ping"}``: ``{"type": "pong", "ts": <server time, ms>}``."""
    return tagged({"type": "pong", "ts": now_ms}, req_id)


def chat_framer(request: CompletionRequest) -> AnswerFramer:
    """The framer of a chat request."""
    return AnswerFramer(stream=request.stream, legacy=request.legacy, req_id=request.req_id)


def error_frame(code: int, message: str) -> dict[str, Any]:
    """RAGFlow's error envelope for a failed request on a stream."""
    return {"code": int(code), "message": message, "data": {"answer": f"**ERROR**: {message}", "reference": []}}


def describe_error(error: BaseException) -> tuple[RetCode, str]:
    """The one mapping from an exception to (code, client-safe message).

    Unexpected exceptions are logged with their traceback and reported generically:
    their text may hold internals (paths, SQL) and never reaches a client.
    """
    if isinstance(error, RagSocketError):
        return error.code, error.message
    if isinstance(error, ChatModelError):
        return RetCode.SERVER_ERROR, str(error)
    logger.error("request failed", exc_info=error)
    return RetCode.SERVER_ERROR, INTERNAL_ERROR_MESSAGE


def error_frame_for(error: BaseException) -> dict[str, Any]:
    """:func:`error_frame` for an exception (see :func:`describe_error`)."""
    return error_frame(*describe_error(error))


def refusal_frame(error: BaseException, req_id: str | None = None, event: str | None = None) -> dict[str, Any]:
    """The error frame refusing (or ending) a request: :func:`error_frame_for`, with
    ``"event": event`` when given (agent frames carry ``"event": "error"``) and
    ``req_id`` echoed."""
    frame = error_frame_for(error)
    if event is not None:
        frame["event"] = event
    return tagged(frame, req_id)


def is_end_marker(frame: Any) -> bool:
    """True for the completion marker ``{"code": 0, "message": "", "data": true}``
    (``req_id`` aside); an agent or Dify event with ``data: true`` is not one."""
    return isinstance(frame, dict) and frame.get("data") is True and "event" not in frame


def frame_seq(frame: Any) -> int | None:
    """``data.seq`` of a numbered frame (content, or the error of a started answer), else None."""
    data = frame.get("data") if isinstance(frame, dict) else None
    seq = data.get("seq") if isinstance(data, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class Framer(Protocol):
    """Turns one request's events into frames (:class:`AnswerFramer` for chats).

    ``message_id`` / ``session_id`` are known once the first event arrived; ``seq`` is
    the number of the last numbered frame.
    """

    message_id: str | None
    session_id: str | None
    seq: int

    def feed(self, event: Any) -> list[dict[str, Any]]:
        """Frames for one event."""

    def fail(self, error: BaseException) -> dict[str, Any]:
        """The error frame ending the request."""

    def end(self) -> dict[str, Any]:
        """The completion marker."""


class StreamState(Enum):
    """Where an answer stream is."""

    STREAMING = "streaming"
    FINISHED = "finished"


class IllegalTransition(RuntimeError):
    """An event arrived that the stream's state does not allow (a bug, not bad input)."""


class NumberedFramer:
    """What every framer of an answer shares: ``req_id`` echo, ``seq`` numbering, the
    state (streaming, then finished), the error frame and the completion marker.

    Subclasses implement :meth:`feed` (the :class:`Framer` protocol); ``error_event``
    names an ``event`` field to add to error frames (agent frames have one).
    """

    error_event: str | None = None

    def __init__(self, req_id: str | None = None) -> None:
        self.req_id = req_id
        self.state = StreamState.STREAMING
        self.seq = 0
        self.message_id: str | None = None
        self.session_id: str | None = None

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _begin(self, event: Any) -> None:
        """Check the state and note the ids an event carries.

        Raises:
            IllegalTransition: an event after the final one.
        """
        if self.state is StreamState.FINISHED:
            raise IllegalTransition(f"{type(event).__name__} after the final frame")
        self.message_id, self.session_id = event.message_id, event.session_id

    def fail(self, error: BaseException) -> dict[str, Any]:
        """The error frame ending this request (numbered when an answer had begun)."""
        self.state = StreamState.FINISHED
        frame = refusal_frame(error, None, self.error_event)
        if self.message_id is not None:
            frame["data"].update(id=self.message_id, session_id=self.session_id, seq=self._next_seq())
        return tagged(frame, self.req_id)

    def end(self) -> dict[str, Any]:
        """The completion marker of this request."""
        return end_frame(self.req_id)

    @property
    def finished(self) -> bool:
        """True once the final (or error) frame was produced."""
        return self.state is StreamState.FINISHED


class AnswerFramer(NumberedFramer):
    """Turns the answer events of one chat request into frames.

    Args:
        stream: one frame per piece of text (True) or a single frame at the end.
        legacy: ``answer`` carries the whole answer so far instead of the new text.
        req_id: echoed at the top level of every frame when given.

    Content and error frames are numbered in ``data.seq`` from 1.
    """

    def __init__(self, stream: bool = True, legacy: bool = False, req_id: str | None = None) -> None:
        super().__init__(req_id)
        self.stream = stream
        self.legacy = legacy
        self.answer = ""

    def _data(self, answer: str, reference: Any, final: bool, interrupted: bool = False) -> dict[str, Any]:
        data = {
            "answer": answer,
            "reference": reference,
            "id": self.message_id,
            "session_id": self.session_id,
            "final": final,
            "seq": self._next_seq(),
        }
        if interrupted:
            data["interrupted"] = True
        return tagged({"code": RetCode.SUCCESS.value, "message": "", "data": data}, self.req_id)

    def feed(self, event: AnswerEvent) -> list[dict[str, Any]]:
        """Frames to send for one event (possibly none).

        Raises:
            IllegalTransition: an event after the final one.
        """
        self._begin(event)
        if isinstance(event, AnswerDelta):
            self.answer += event.text
            if not self.stream:
                return []
            return [self._data(self.answer if self.legacy else event.text, {}, False)]
        self.state = StreamState.FINISHED
        self.answer = event.answer
        whole = self.legacy or not self.stream
        return [self._data(event.answer if whole else "", event.reference, True, event.interrupted)]


@dataclass(frozen=True)
class Dialect:
    """What sets one WebSocket route's frames apart; the connection loop is shared.

    Attributes:
        name: the kind of answers, a label of the answers metric (``chat``, ``agent``,
            ``dify``).
        framer: makes the framer of each request (the frames of its answer).
        error_event: the ``event`` every error frame of the route carries (agent
            frames: ``"error"``), refusals included; None for chat frames.
        markers_visible: whether completion markers reach the client. When they do,
            a message refused while the request without ``req_id`` runs gets its
            error frame but no marker: a client reading until ``data === true`` would
            take that marker for the end of the running answer. The Dify routes drop
            markers at the socket edge (where they only release held events), so
            there every refusal keeps its marker.
        heartbeat: a frame sent while a request runs and nothing was sent for
            ``heartbeat_interval`` seconds (Dify's ``{"event": "ping"}``), or None.
        heartbeat_interval: seconds; 0 sends no heartbeat.
    """

    name: str = "chat"
    framer: Callable[[CompletionRequest], Framer] = chat_framer
    error_event: str | None = None
    markers_visible: bool = True
    heartbeat: dict[str, Any] | None = None
    heartbeat_interval: float = 0.0

    def error(self, error: BaseException, req_id: str | None = None) -> dict[str, Any]:
        """The error frame refusing a message or ending a request (see :func:`refusal_frame`)."""
        return refusal_frame(error, req_id, self.error_event)

    def rejection(self, code: int, message: str) -> dict[str, Any]:
        """The frame refusing a whole connection before its close: ``{"code", "message",
        "data": null}`` (plus ``event`` when the route's errors carry one)."""
        frame: dict[str, Any] = {"code": int(code), "message": message, "data": None}
        if self.error_event is not None:
            frame["event"] = self.error_event
        return frame

    def refusal_has_marker(self, req_id: str | None, untagged_running: bool) -> bool:
        """Whether a refused message's error frame is followed by its completion marker
        (see ``markers_visible``)."""
        return not (self.markers_visible and req_id is None and untagged_running)

    @property
    def heartbeats(self) -> bool:
        """True when this route sends heartbeat frames."""
        return self.heartbeat is not None and self.heartbeat_interval > 0


#: The native chat routes' dialect.
CHAT_DIALECT = Dialect()
