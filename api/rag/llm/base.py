"""The chat-model interface shared by the offline model and OpenAI-compatible models."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatRequest:
    """One question to answer.

    Attributes:
        question: the user's question, as typed.
        messages: OpenAI chat messages from :func:`api.rag.prompt.build_messages`.
        chunks: retrieved chunks; index ``i`` is cited as ``[ID:i]``. Each has
            ``content``, ``document_name`` and ``similarity`` (0..1).
        empty_response: the answer to give when the knowledge has nothing relevant.
        temperature: sampling temperature (0..2); ``None`` leaves the model default.
        top_p: nucleus sampling mass (0..1); ``None`` leaves the model default.
        max_tokens: cap on answer tokens; ``None`` leaves the model default.
        retrieval_question: the text the chunks were retrieved with (see
            :func:`api.rag.prompt.retrieval_question`); empty means ``question``.
    """

    question: str
    messages: list[dict]
    chunks: list[dict]
    empty_response: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    retrieval_question: str = ""


class ChatModelError(RuntimeError):
    """The chat model could not answer.

    ``str(error)`` is safe to show a client: a short sentence such as
    ``"the chat model failed: upstream answered 500"``, never a traceback or the
    upstream's exception text.
    """


@runtime_checkable
class ChatModel(Protocol):
    """A streaming chat model.

    Attributes:
        name: the model name shown to clients (``llm.model_name``).
    """

    name: str

    def stream(self, request: ChatRequest, cancel: threading.Event) -> Iterator[str]:
        """Yield the answer as text deltas (new text only; joined they are the answer).

        Blocking: run it in a worker thread. ``cancel.is_set()`` is checked between
        deltas; once set the iterator closes any upstream stream and returns.

        Raises:
            ChatModelError: the model failed, before or during the answer.
        """
        ...
