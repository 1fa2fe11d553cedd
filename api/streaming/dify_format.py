"""Dify's chat-messages / completion-messages dialect of the answer WebSocket, without I/O.

Used by ``/v1/ws/chat-messages`` and ``/v1/ws/completion-messages``
(:mod:`api.apps.sdk.dify`, reference in ``docs/dify_compat.md``), for platform
bridges written against Dify's API (the WebSocket variant of Dify PR #33543). The
formats are Dify's "Send Chat Message" / "Send Completion Message" API:

* request: ``{"query", "inputs": {}, "conversation_id", "user", "response_mode":
  "streaming" | "blocking"}`` (plus our optional ``chat_id`` and ``req_id``);
* streamed events, one JSON text frame each: ``message`` (``answer`` = the new text),
  ``message_end`` (``metadata.retriever_resources`` and ``metadata.usage``), ``error``
  (``status``, ``code``, ``message``);
* blocking: one ``message`` event with the whole ``answer`` and ``metadata``.

The connection loop (:class:`~api.streaming.connection.AnswerConnection`) speaks the
native protocol; this module translates at its edges:

* :func:`client_message_to_native` turns a Dify request into a native question
  payload (``query`` → ``question``, ``conversation_id`` → ``session_id``,
  ``response_mode`` → ``stream``), and passes ``{"type": "stop" | "ping"}`` through;
* :class:`DifyFramer` turns answer events into Dify events;
* :func:`native_frame_to_dify` turns the loop's own frames (refusals, the completion
  marker, pongs) into Dify events, or drops them (the marker: Dify has none);
* :func:`dify_dialect` tells the loop the rest: Dify framers, a marker after every
  refusal (dropped here), and Dify's ``{"event": "ping"}`` while a request runs and
  nothing was sent for a while.

Every error event is built as a dict and encoded with ``json.dumps``: a quote or a
backslash in a message cannot break the frame (Dify PR #33543 built them with
f-strings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from api.db.services.conversation_service import AnswerDelta, AnswerDone, AnswerEvent
from api.rag.tokenizer import count_tokens
from api.streaming.protocol import (
    INTERNAL_ERROR_MESSAGE,
    MAX_REQ_ID_CHARS,
    CompletionRequest,
    Dialect,
    IllegalTransition,
    StreamState,
    describe_error,
    end_frame,
    is_end_marker,
    optional_str,
    tagged,
)
from common.constants import RetCode
from common.errors import ArgumentError

#: Longest accepted ``user``, ``conversation_id`` and ``chat_id`` (characters).
MAX_ID_CHARS = 64
MAX_USER_CHARS = 255


class DifyKind(str, Enum):
    """The Dify app type a route imitates (Dify's ``mode`` field)."""

    CHAT = "chat"
    COMPLETION = "completion"


class ResponseMode(str, Enum):
    """Dify's ``response_mode``."""

    STREAMING = "streaming"
    BLOCKING = "blocking"


class DifyEvent(str, Enum):
    """``event`` of a frame sent to a Dify client."""

    MESSAGE = "message"
    MESSAGE_END = "message_end"
    ERROR = "error"
    PONG = "pong"
    PING = "ping"


#: Dify's keepalive event: sent while a request runs and nothing else was sent for
#: ``RAGSOCKET_DIFY_PING_INTERVAL`` seconds (Dify streams it every 10 s).
PING_EVENT: dict[str, Any] = {"event": DifyEvent.PING.value}


#: Envelope code → (HTTP-like ``status``, Dify error ``code``).
_ERRORS: dict[int, tuple[int, str]] = {
    RetCode.ARGUMENT_ERROR: (400, "invalid_param"),
    RetCode.DATA_ERROR: (404, "not_found"),
    RetCode.AUTHENTICATION_ERROR: (401, "unauthorized"),
    RetCode.UNAUTHORIZED: (401, "unauthorized"),
    RetCode.PERMISSION_ERROR: (403, "forbidden"),
    RetCode.FORBIDDEN: (403, "forbidden"),
    RetCode.NOT_FOUND: (404, "not_found"),
    RetCode.TOO_MANY_REQUESTS: (429, "too_many_requests"),
}


def dify_error_status(code: int, message: str) -> tuple[int, str]:
    """(``status``, Dify ``code``) of an envelope code; 500s are split into the model's
    failure (``completion_request_error``) and an internal one (``internal_server_error``)."""
    if int(code) in _ERRORS:
        return _ERRORS[int(code)]
    if message == INTERNAL_ERROR_MESSAGE:
        return 500, "internal_server_error"
    return 500, "completion_request_error"


def error_event(code: int, message: str, req_id: str | None = None, **ids: Any) -> dict[str, Any]:
    """Dify's ``error`` event for an envelope code and a client-safe message.

    ``ids`` (``task_id``, ``message_id``, ``conversation_id``, ``seq``) are added when
    not None.
    """
    status, name = dify_error_status(code, message)
    frame: dict[str, Any] = {"event": DifyEvent.ERROR.value}
    frame.update({key: value for key, value in ids.items() if value is not None})
    frame.update(status=status, code=name, message=message)
    return tagged(frame, req_id)


# -- requests ------------------------------------------------------------------------
@dataclass(frozen=True)
class DifyRequest:
    """A validated Dify request.

    Attributes:
        query: the question (for completion apps possibly taken from ``inputs.query``).
        inputs: Dify's app variables; accepted, not used in the prompt.
        conversation_id: the session to continue (chat-messages only).
        user: the end user's id; accepted, not stored.
        streaming: ``response_mode == "streaming"``.
        chat_id: the chat addressed by this request (else the route's).
        req_id: our request id, echoed in every frame of the request.
    """

    query: str
    kind: DifyKind = DifyKind.CHAT
    inputs: Mapping[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    user: str | None = None
    streaming: bool = False
    chat_id: str | None = None
    req_id: str | None = None

    def to_native(self) -> dict[str, Any]:
        """The native question payload the connection loop parses."""
        native: dict[str, Any] = {"question": self.query, "stream": self.streaming}
        if self.conversation_id:
            native["session_id"] = self.conversation_id
        if self.chat_id:
            native["chat_id"] = self.chat_id
        if self.req_id:
            native["req_id"] = self.req_id
        return native


def parse_dify_request(payload: Any, kind: DifyKind, max_question_chars: int) -> DifyRequest:
    """Validate a decoded Dify request.

    ``response_mode`` defaults to ``blocking``, as in Dify. For completion-messages a
    missing ``query`` is taken from ``inputs.query`` (Dify's completion apps take their
    text in ``inputs``) and ``conversation_id`` is ignored (each query is a fresh
    conversation).

    Raises:
        ArgumentError: not an object, missing/empty/too long query, wrong types,
            unknown ``response_mode``, non-empty ``files``.
    """
    if not isinstance(payload, dict):
        raise ArgumentError("the request must be a JSON object")
    inputs = payload.get("inputs", {})
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        raise ArgumentError("`inputs` must be an object")
    query = payload.get("query")
    name = "query"
    if (query is None or query == "") and kind is DifyKind.COMPLETION and "query" in inputs:
        query, name = inputs["query"], "inputs.query"
    if not isinstance(query, str) or not query.strip():
        wanted = "`query` (or `inputs.query`)" if kind is DifyKind.COMPLETION else "`query`"
        raise ArgumentError(f"{wanted} is required and must be a non-empty string")
    if len(query) > max_question_chars:
        raise ArgumentError(f"`{name}` is too long: {len(query)} characters, at most {max_question_chars}")
    mode = payload.get("response_mode") or ResponseMode.BLOCKING.value
    if mode not in (ResponseMode.STREAMING.value, ResponseMode.BLOCKING.value):
        raise ArgumentError('`response_mode` must be "streaming" or "blocking"')
    files = payload.get("files")
    if files not in (None, []):
        raise ArgumentError("`files` are not supported: send text only")
    conversation_id = optional_str(payload, "conversation_id", MAX_ID_CHARS)
    return DifyRequest(
        query=query.strip(),
        kind=kind,
        inputs=inputs,
        conversation_id=conversation_id if kind is DifyKind.CHAT else None,
        user=optional_str(payload, "user", MAX_USER_CHARS),
        streaming=mode == ResponseMode.STREAMING.value,
        chat_id=optional_str(payload, "chat_id", MAX_ID_CHARS),
        req_id=optional_str(payload, "req_id", MAX_REQ_ID_CHARS),
    )


#: Native control messages a Dify client may send as they are.
PASSTHROUGH_TYPES = frozenset({"stop", "ping"})


def client_message_to_native(payload: Any, kind: DifyKind, max_question_chars: int) -> dict[str, Any]:
    """The native message for one decoded client message.

    * a Dify request → a native question (see :meth:`DifyRequest.to_native`);
    * ``{"type": "stop" | "ping", …}`` → unchanged; ``{"event": "ping"}`` (Dify's event
      name) → ``{"type": "ping"}``.

    Raises:
        ArgumentError: an invalid request, or another ``type``.
    """
    if isinstance(payload, dict):
        if payload.get("event") == "ping" and "type" not in payload:
            native = {"type": "ping"}
            if isinstance(payload.get("req_id"), str):
                native["req_id"] = payload["req_id"]
            return native
        if "type" in payload:
            if payload["type"] in PASSTHROUGH_TYPES:
                return payload
            raise ArgumentError(
                f"unknown message type {str(payload['type'])[:32]!r}: send a Dify request "
                '({"query", "inputs", "conversation_id", "user", "response_mode"}), {"type": "stop"} or {"type": "ping"}'
            )
    return parse_dify_request(payload, kind, max_question_chars).to_native()


def native_frame_to_dify(frame: Any) -> dict[str, Any] | None:
    """A frame of the connection loop in Dify's dialect; None means "do not send".

    Dify events pass as they are; the completion marker is dropped (a Dify request
    ends with ``message_end`` or ``error``); a pong becomes ``{"event": "pong", …}``;
    an error envelope (a refusal: busy, rate limited, unknown chat …) becomes an
    ``error`` event.
    """
    if not isinstance(frame, dict) or "event" in frame:
        return frame
    if frame.get("type") == "pong":
        return {"event": DifyEvent.PONG.value, **frame}
    if is_end_marker(frame):
        return None
    code = frame.get("code")
    if isinstance(code, int) and code != RetCode.SUCCESS:
        return error_event(code, str(frame.get("message", "")), frame.get("req_id"))
    return frame


def is_terminal(frame: Any) -> bool:
    """True for the event ending a Dify request: ``message_end``, ``error``, or the
    single ``message`` of blocking mode (it carries ``metadata``)."""
    if not isinstance(frame, dict):
        return False
    event = frame.get("event")
    return event in (DifyEvent.MESSAGE_END.value, DifyEvent.ERROR.value) or (
        event == DifyEvent.MESSAGE.value and "metadata" in frame
    )


# -- answers -------------------------------------------------------------------------
def with_dataset_names(events: Iterator[AnswerEvent], names: Mapping[str, str]) -> Iterator[AnswerEvent]:
    """``events`` with ``dataset_name`` added to the chunks of the final reference.

    Closing this generator closes ``events`` (so a stopped answer is saved at once).
    """
    try:
        for event in events:
            if isinstance(event, AnswerDone) and isinstance(event.reference, dict):
                chunks = [
                    {**chunk, "dataset_name": names.get(chunk.get("dataset_id", ""), "")}
                    for chunk in event.reference.get("chunks", [])
                ]
                event = replace(event, reference={**event.reference, "chunks": chunks})
            yield event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def retriever_resources(reference: Any) -> list[dict[str, Any]]:
    """Dify's ``retriever_resources`` for our reference: one per chunk, in rank order.

    ``position`` is 1-based: the answer's marker ``[ID:n]`` cites ``position`` n + 1.
    ``score`` is the chunk's ``similarity`` (0..1).
    """
    chunks = reference.get("chunks", []) if isinstance(reference, dict) else []
    return [
        {
            "position": index + 1,
            "dataset_id": chunk.get("dataset_id", ""),
            "dataset_name": chunk.get("dataset_name", ""),
            "document_id": chunk.get("document_id", ""),
            "document_name": chunk.get("document_name", ""),
            "segment_id": chunk.get("id", ""),
            "score": chunk.get("similarity", 0.0),
            "content": chunk.get("content", ""),
        }
        for index, chunk in enumerate(chunks)
    ]


def usage(answer: str, latency: float) -> dict[str, Any]:
    """Dify's ``usage`` object. The chat models here do not report token counts:
    ``completion_tokens`` is an estimate (words plus CJK characters of the answer),
    ``prompt_tokens`` is 0, prices are 0."""
    completion_tokens = count_tokens(answer)
    return {
        "prompt_tokens": 0,
        "prompt_unit_price": "0",
        "prompt_price_unit": "0",
        "prompt_price": "0",
        "completion_tokens": completion_tokens,
        "completion_unit_price": "0",
        "completion_price_unit": "0",
        "completion_price": "0",
        "total_tokens": completion_tokens,
        "total_price": "0",
        "currency": "USD",
        "latency": round(latency, 6),
    }


class DifyFramer:
    """Turns the answer events of one request into Dify events (a :class:`Framer`).

    Args:
        request: the native request (``stream`` = Dify's streaming mode, ``req_id``).
        kind: chat (events carry ``conversation_id``) or completion (they do not).
        clock: seconds since the epoch (``created_at``, latency), for tests.

    Streaming: a ``message`` per delta, then ``message_end``; blocking: one
    ``message`` with the whole ``answer``, ``mode`` and ``metadata``. A failure is an
    ``error`` event. Every event of a started answer has ``seq`` (1, 2, 3 …).
    :meth:`end` returns the native completion marker, which the route drops.
    """

    def __init__(self, request: CompletionRequest, kind: DifyKind = DifyKind.CHAT, clock: Callable[[], float] = time.time) -> None:
        self.request = request
        self.kind = kind
        self._clock = clock
        self.started = clock()
        self.created_at = int(self.started)
        self.state = StreamState.STREAMING
        self.seq = 0
        self.message_id: str | None = None
        self.session_id: str | None = None

    def _event(self, name: DifyEvent, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        frame: dict[str, Any] = {
            "event": name.value,
            "task_id": self.message_id,
            "id": self.message_id,
            "message_id": self.message_id,
        }
        if self.kind is DifyKind.CHAT:
            frame["conversation_id"] = self.session_id
        frame.update(fields)
        frame["created_at"] = self.created_at
        frame["seq"] = self.seq
        return tagged(frame, self.request.req_id)

    def feed(self, event: AnswerEvent) -> list[dict[str, Any]]:
        """Events to send for one answer event (possibly none).

        Raises:
            IllegalTransition: an event after the last one.
        """
        if self.state is StreamState.FINISHED:
            raise IllegalTransition(f"{type(event).__name__} after message_end")
        self.message_id, self.session_id = event.message_id, event.session_id
        if isinstance(event, AnswerDelta):
            return [self._event(DifyEvent.MESSAGE, answer=event.text)] if self.request.stream else []
        self.state = StreamState.FINISHED
        metadata = {
            "retriever_resources": retriever_resources(event.reference),
            "usage": usage(event.answer, self._clock() - self.started),
        }
        extra = {"interrupted": True} if event.interrupted else {}
        if self.request.stream:
            return [self._event(DifyEvent.MESSAGE_END, metadata=metadata, **extra)]
        return [self._event(DifyEvent.MESSAGE, mode=self.kind.value, answer=event.answer, metadata=metadata, **extra)]

    def fail(self, error: BaseException) -> dict[str, Any]:
        """The ``error`` event ending the request (see :func:`describe_error`)."""
        self.state = StreamState.FINISHED
        code, message = describe_error(error)
        ids: dict[str, Any] = {}
        if self.message_id is not None:
            self.seq += 1
            ids = {"task_id": self.message_id, "message_id": self.message_id, "seq": self.seq}
            if self.kind is DifyKind.CHAT:
                ids["conversation_id"] = self.session_id
        return error_event(code, message, self.request.req_id, **ids)

    def end(self) -> dict[str, Any]:
        """The native completion marker (dropped by :func:`native_frame_to_dify`)."""
        return end_frame(self.request.req_id)

    @property
    def finished(self) -> bool:
        """True once ``message_end`` (or the blocking ``message``, or an error) was produced."""
        return self.state is StreamState.FINISHED


def dify_framer(kind: DifyKind) -> Callable[[CompletionRequest], DifyFramer]:
    """The framer factory of a route of ``kind`` (``Dialect.framer``)."""

    def make(request: CompletionRequest) -> DifyFramer:
        return DifyFramer(request, kind)

    return make


def dify_dialect(kind: DifyKind, ping_interval: float) -> Dialect:
    """The dialect of a Dify route of ``kind``: Dify events, native refusals (turned into
    ``error`` events at the socket edge, each with its marker, which the edge drops), and
    :data:`PING_EVENT` after ``ping_interval`` seconds without a frame while a request
    runs (0: never)."""
    return Dialect(name="dify", framer=dify_framer(kind), markers_visible=False, heartbeat=PING_EVENT, heartbeat_interval=ping_interval)


__all__ = [
    "PING_EVENT",
    "DifyEvent",
    "DifyFramer",
    "DifyKind",
    "DifyRequest",
    "ResponseMode",
    "client_message_to_native",
    "dify_dialect",
    "dify_error_status",
    "dify_framer",
    "error_event",
    "is_end_marker",
    "is_terminal",
    "native_frame_to_dify",
    "parse_dify_request",
    "retriever_resources",
    "usage",
    "with_dataset_names",
]
