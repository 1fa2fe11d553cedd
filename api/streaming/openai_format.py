"""OpenAI's chat-completions format for a chat's answers, without I/O.

Used by ``POST /api/v1/chats_openai/<chat_id>/chat/completions`` (RAGFlow's
OpenAI-compatible route, ``api/apps/sdk/session.py`` ``chat_completion_openai_like``
there), and tested with plain dicts. Formats are OpenAI's API reference, "Chat
Completions" (the ``chat.completion`` object, the ``chat.completion.chunk`` stream
ending with ``data: [DONE]``, and the error object ``{"error": {"message", "type",
"param", "code"}}``); RAGFlow's additions are kept:

* with ``"reference": true`` in the body (``extra_body={"reference": True}`` in the
  ``openai`` package, which merges it into the body; RAGFlow's own ``{"extra_body":
  {"reference": true}}`` is read too), the references — the list of cited chunks,
  as ``reference.chunks`` of the other routes — are in ``choices[0].message.reference``
  or, streamed, in ``choices[0].delta.reference`` of the last chunk, beside
  ``delta.final_content`` (the whole answer);
* every object also carries ``session_id``: the session that saved the conversation;
* ``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) is an
  estimate, as the chat models here do not all report token counts: words plus CJK
  characters (:func:`api.rag.tokenizer.count_tokens`) of the messages the client sent
  and of the answer; the retrieved knowledge and the system prompt are not counted.
  It is in every ``chat.completion``, and, streamed, in one more chunk with empty
  ``choices`` before ``[DONE]`` when the request asks for it with
  ``stream_options: {"include_usage": true}``, as OpenAI's API does.

Conversation: the last message is the question and must be the user's; the earlier
``user`` / ``assistant`` messages are the history. ``system`` messages are ignored (the
chat's own system prompt applies) and so are leading assistant messages, as in RAGFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from api.db.services.conversation_service import AnswerDelta, AnswerEvent
from api.rag.tokenizer import count_tokens
from api.streaming.protocol import StreamState, describe_error
from common.constants import RetCode
from common.errors import ArgumentError

#: ``model`` echoed when the request names none.
DEFAULT_MODEL = "ragsocket"
#: The object :meth:`OpenAIFramer.end` returns; sent as ``data: [DONE]``.
DONE: dict[str, Any] = {"done": True}
#: Roles a message may have (OpenAI's; ``developer`` is the newer name of ``system``).
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

#: HTTP status and OpenAI error ``type`` / ``code`` of each envelope code.
_ERRORS: dict[int, tuple[int, str, str]] = {
    RetCode.ARGUMENT_ERROR: (400, "invalid_request_error", "invalid_request"),
    RetCode.DATA_ERROR: (404, "invalid_request_error", "not_found"),
    RetCode.AUTHENTICATION_ERROR: (401, "invalid_request_error", "invalid_api_key"),
    RetCode.PERMISSION_ERROR: (403, "invalid_request_error", "permission_denied"),
    RetCode.TOO_MANY_REQUESTS: (429, "rate_limit_error", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class OpenAIRequest:
    """A validated OpenAI-style request."""

    question: str
    history: tuple[dict[str, str], ...] = ()
    model: str = DEFAULT_MODEL
    stream: bool = False
    reference: bool = False
    include_usage: bool = False
    prompt_tokens: int = 0


def _text(content: Any, index: int) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ArgumentError(f"`messages[{index}].content` must be a string or a list of text parts")


def parse_openai_request(payload: Any, max_question_chars: int) -> OpenAIRequest:
    """Validate a decoded request body.

    Raises:
        ArgumentError: not an object, no messages, a malformed message, the last
            message not the user's or empty, the question too long, wrong types.
    """
    if not isinstance(payload, dict):
        raise ArgumentError("the request body must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ArgumentError("`messages` is required and must be a non-empty list")
    conversation: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ArgumentError(f"`messages[{index}]` must be an object with a role among: {', '.join(sorted(ROLES))}")
        conversation.append({"role": message["role"], "content": _text(message.get("content", ""), index)})
    last = conversation[-1]
    if last["role"] != "user":
        raise ArgumentError("the last message must be the user's question")
    question = last["content"].strip()
    if not question:
        raise ArgumentError("the last message must not be empty")
    if len(question) > max_question_chars:
        raise ArgumentError(f"the question is too long: {len(question)} characters, at most {max_question_chars}")
    history: list[dict[str, str]] = []
    for message in conversation[:-1]:
        if message["role"] not in ("user", "assistant") or not message["content"]:
            continue
        if message["role"] == "assistant" and not history:
            continue  # an opener before the first question
        history.append(message)
    extra = payload.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        raise ArgumentError("`extra_body` must be an object")
    reference = payload.get("reference", (extra or {}).get("reference", False))
    stream = payload.get("stream", False)
    model = payload.get("model", DEFAULT_MODEL)
    if not isinstance(stream, bool) or not isinstance(reference, bool):
        raise ArgumentError("`stream` and `reference` must be true or false")
    if not isinstance(model, str):
        raise ArgumentError("`model` must be a string")
    prompt_tokens = sum(count_tokens(message["content"]) for message in conversation)
    return OpenAIRequest(
        question, tuple(history), model or DEFAULT_MODEL, stream, reference, _include_usage(payload), prompt_tokens
    )


def _include_usage(payload: dict) -> bool:
    """``stream_options.include_usage`` (OpenAI's API; default false).

    Raises:
        ArgumentError: ``stream_options`` is not an object, or ``include_usage`` not a boolean.
    """
    options = payload.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ArgumentError("`stream_options` must be an object")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise ArgumentError("`stream_options.include_usage` must be true or false")
    return include


def error_status(code: int) -> tuple[int, str, str]:
    """(HTTP status, OpenAI error type, OpenAI error code) of an envelope code."""
    return _ERRORS.get(int(code), (500, "server_error", "internal_error"))


def error_body(code: int, message: str) -> dict[str, Any]:
    """OpenAI's error object for an envelope code and a client-safe message."""
    _, kind, name = error_status(code)
    return {"error": {"message": message, "type": kind, "param": None, "code": name}}


class OpenAIFramer:
    """Turns the answer events of one request into OpenAI objects (a :class:`Framer`).

    Args:
        request: the validated request (``stream``, ``reference``, ``model``).
        now: Unix seconds for ``created`` (the clock, for tests).

    Streamed: a ``chat.completion.chunk`` per delta (the first with ``role``), a last
    chunk with ``finish_reason: "stop"`` (and the references when asked), the usage
    chunk when asked, then :data:`DONE`. Not streamed: one ``chat.completion`` with
    ``usage``. A failure is an error object; :attr:`status` is then its HTTP status.
    """

    def __init__(self, request: OpenAIRequest, now: float | None = None) -> None:
        self.request = request
        self.created = int(now if now is not None else time.time())
        self.state = StreamState.STREAMING
        self.message_id: str | None = None
        self.session_id: str | None = None
        self.seq = 0
        self.status = 200
        self._role_sent = False

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.message_id}",
            "object": kind,
            "created": self.created,
            "model": self.request.model,
            "session_id": self.session_id,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        self.seq += 1
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        chunk = self._base("chat.completion.chunk")
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        return chunk

    def feed(self, event: AnswerEvent) -> list[dict[str, Any]]:
        """Objects to send for one event (possibly none)."""
        self.message_id, self.session_id = event.message_id, event.session_id
        if isinstance(event, AnswerDelta):
            return [self._chunk({"content": event.text}, None)] if self.request.stream else []
        self.state = StreamState.FINISHED
        chunks = event.reference.get("chunks", []) if isinstance(event.reference, dict) else []
        if self.request.stream:
            delta: dict[str, Any] = {}
            if self.request.reference:
                delta = {"reference": chunks, "final_content": event.answer}
            last = [self._chunk(delta, "stop")]
            if self.request.include_usage:
                usage_chunk = self._base("chat.completion.chunk")
                usage_chunk.update(choices=[], usage=self._usage(event.answer))
                last.append(usage_chunk)
            return last
        message: dict[str, Any] = {"role": "assistant", "content": event.answer}
        if self.request.reference:
            message["reference"] = chunks
        completion = self._base("chat.completion")
        completion["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}]
        completion["usage"] = self._usage(event.answer)
        return [completion]

    def _usage(self, answer: str) -> dict[str, int]:
        completion_tokens = count_tokens(answer)
        prompt_tokens = self.request.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def fail(self, error: BaseException) -> dict[str, Any]:
        """The error object ending this request (see :func:`describe_error`)."""
        self.state = StreamState.FINISHED
        code, message = describe_error(error)
        self.status = error_status(code)[0]
        return error_body(code, message)

    def end(self) -> dict[str, Any]:
        """:data:`DONE`."""
        return DONE
