"""One answer, end to end: worker-thread generator → frames, shared by SSE and WebSocket.

:func:`answer_frames` is the only place where a failed answer becomes an error frame;
every request's frames end with the completion marker, after an error too, so a
client reading until ``data === true`` always stops.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from api.db.services.conversation_service import AnswerEvent, completion
from api.streaming.bridge import ThreadedStream, WorkerPool
from api.streaming.protocol import CompletionRequest, Framer
from api.utils import metrics


def chat_answer_factory(
    tenant_id: str, chat_id: str, request: CompletionRequest
) -> Callable[[threading.Event], Iterator[AnswerEvent]]:
    """The generator factory that :meth:`WorkerPool.stream` runs for a chat request."""

    def factory(cancel: threading.Event) -> Iterator[AnswerEvent]:
        return completion(
            tenant_id,
            chat_id,
            request.question,
            session_id=request.session_id,
            kb_ids=list(request.kb_ids),
            doc_ids=list(request.doc_ids),
            cancel=cancel,
        )

    return factory


async def answer_frames(
    pool: WorkerPool,
    factory: Callable[[threading.Event], Iterator[AnswerEvent]],
    framer: Framer,
    on_start: Callable[[ThreadedStream[AnswerEvent]], None] | None = None,
    transport: str = "websocket",
    kind: str = "chat",
) -> AsyncIterator[dict[str, Any]]:
    """Frames of one request: data frames, an error frame on failure, then the marker.

    Args:
        on_start: called with the running stream (so that a "stop" can reach it).
        transport: ``websocket`` or ``sse``; ``kind``: ``chat``, ``agent``, ``dify``,
            ``openai`` (labels of the answers metric).

    Closing this async generator early (client gone) stops the worker, whose
    generator saves the partial answer. The time to the first event and the
    stream's duration go to :mod:`api.utils.metrics`.
    """
    timer, outcome = metrics.answer_started(transport, kind), "abandoned"
    try:
        try:
            async with pool.stream(factory) as events:
                if on_start is not None:
                    on_start(events)
                async for event in events:
                    if getattr(event, "text", ""):  # a piece of answer text, not a tool step
                        timer.first_text()
                    for frame in framer.feed(event):
                        yield frame
            outcome = "completed"
        except Exception as error:  # noqa: BLE001 - mapped (and logged when unexpected) by framer.fail
            outcome = "error"
            yield framer.fail(error)
        yield framer.end()
    finally:
        timer.end(outcome)
