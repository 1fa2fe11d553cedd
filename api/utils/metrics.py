"""Prometheus metrics of the process, served at ``GET /metrics`` (prometheus-client).

Every metric is defined here, and the rest of the code only calls the small
functions below (one line at each place that observes something):

* :func:`connection_opened` / :func:`connection_closed`: ``serve_connection``;
* :func:`frame_sent`: ``AnswerConnection.send_frame`` (WebSocket) and the SSE bodies;
* :func:`answer_started` → :class:`AnswerTimer`: ``answer_frames`` (SSE and
  WebSocket alike);
* :func:`http_request_done`: the application's ``after_request`` hook.

Metrics are per process: with several hypercorn workers, scrape each worker or set up
prometheus-client's multiprocess mode. Units are in the names (``_seconds``) as
Prometheus' naming conventions ask.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Buckets (seconds) for the time to the first piece of an answer: retrieval plus the
#: model's first token.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
#: Buckets (seconds) for a whole answer stream.
STREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))

OPEN_CONNECTIONS = Gauge(
    "ragsocket_websocket_connections",
    "Answer WebSocket connections open now (authenticated and admitted).",
)
HTTP_REQUESTS = Counter(
    "ragsocket_http_requests",
    "HTTP requests by route template, method and outcome (success, or error: HTTP status "
    ">= 400 or an envelope with a non-zero code).",
    ["route", "method", "outcome"],
)
FRAMES_SENT = Counter(
    "ragsocket_frames_sent",
    "Frames sent to clients: WebSocket text messages, or SSE events.",
    ["transport"],
)
ERRORS = Counter(
    "ragsocket_errors",
    "Errors returned to clients by code: the envelope code (101, 102, 109, 429, 500 ...) of an "
    "HTTP answer or a stream's error frame, or http_<status> for an error without an envelope.",
    ["code"],
)
ANSWERS = Counter(
    "ragsocket_answers",
    "Answers (one per question) by transport (websocket, sse, http), kind (chat, agent, "
    "dify, openai) and outcome (completed, error, abandoned: the client left).",
    ["transport", "kind", "outcome"],
)
FIRST_TOKEN = Histogram(
    "ragsocket_time_to_first_token_seconds",
    "Seconds from the start of an answer to its first piece of text (retrieval, tool "
    "steps and the model's first token).",
    buckets=FIRST_TOKEN_BUCKETS,
)
STREAM_DURATION = Histogram(
    "ragsocket_stream_duration_seconds",
    "Seconds from the start of an answer to its end, by outcome: completed, error, or "
    "abandoned (the client left).",
    ["outcome"],
    buckets=STREAM_BUCKETS,
)

_ENVELOPE_CODE = re.compile(rb'\s*\{\s*"code"\s*:\s*(-?\d+)')


def metrics_payload() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def connection_opened() -> None:
    """An answer WebSocket was admitted."""
    OPEN_CONNECTIONS.inc()


def connection_closed() -> None:
    """An admitted answer WebSocket ended."""
    OPEN_CONNECTIONS.dec()


def frame_sent(transport: str, frame: Any) -> None:
    """One frame went to a client; an error frame also counts in the errors.

    Args:
        transport: ``"websocket"`` or ``"sse"``.
        frame: the frame as sent (envelope, or an OpenAI object).
    """
    FRAMES_SENT.labels(transport).inc()
    if isinstance(frame, dict):
        code = frame.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            ERRORS.labels(str(code)).inc()
        elif isinstance(frame.get("error"), dict):
            ERRORS.labels("500").inc()  # an OpenAI stream's error object (after the 200 status)


def envelope_code(body: bytes) -> int | None:
    """The ``code`` of a JSON envelope, read from its start (Quart sorts keys, so
    ``code`` comes first), or None when the body is not an envelope."""
    match = _ENVELOPE_CODE.match(body[:64])
    return int(match.group(1)) if match else None


def http_request_done(route: str, method: str, status: int, code: int | None) -> None:
    """One HTTP response.

    Args:
        route: the URL rule (``/api/v1/chats/<chat_id>``), never the raw path, so that
            ids do not create label values.
        status: HTTP status.
        code: the envelope code, or None for a body that is not an envelope.
    """
    failed = status >= 400 or (code is not None and code != 0)
    HTTP_REQUESTS.labels(route, method, "error" if failed else "success").inc()
    if code is not None and code != 0:
        ERRORS.labels(str(code)).inc()
    elif status >= 400:
        ERRORS.labels(f"http_{status}").inc()


class AnswerTimer:
    """Times one answer stream: :meth:`first_text` at each piece of text, :meth:`end` once.

    Args:
        transport, kind: labels of :data:`ANSWERS` (see :func:`answer_started`).
    """

    def __init__(self, transport: str, kind: str) -> None:
        self.started = time.monotonic()
        self._labels = (transport, kind)
        self._first_seen = False

    def first_text(self) -> None:
        """A piece of answer text arrived (the first one is observed)."""
        if not self._first_seen:
            self._first_seen = True
            FIRST_TOKEN.observe(time.monotonic() - self.started)

    def end(self, outcome: str) -> None:
        """The stream ended: ``completed``, ``error`` or ``abandoned``."""
        STREAM_DURATION.labels(outcome).observe(time.monotonic() - self.started)
        ANSWERS.labels(*self._labels, outcome).inc()


def answer_started(transport: str, kind: str) -> AnswerTimer:
    """A new answer stream starts now.

    Args:
        transport: ``websocket``, ``sse`` or ``http`` (a whole answer in one response).
        kind: ``chat``, ``agent``, ``dify`` or ``openai``.
    """
    return AnswerTimer(transport, kind)
