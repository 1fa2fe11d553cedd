"""A small OpenAI-compatible chat server on loopback, for tests.

Standard library only (``http.server.ThreadingHTTPServer`` in a daemon thread).
It serves the parts of the OpenAI API the service uses:

* ``POST /v1/chat/completions``: streaming (server-sent events, one
  ``data: {chat.completion.chunk}`` per piece, then ``data: [DONE]``) or a plain
  ``chat.completion`` JSON answer.
* ``GET /v1/models``: the model list.

The requested model name chooses the behaviour:

``echo``
    answers ``"You asked: <last user message>. The knowledge says: <first 60
    chars of the system message after its first line>"``, one word per chunk.
``fail-midstream``
    streams two chunks, then drops the connection (no terminating chunk, no
    ``[DONE]``).
``error-500``
    HTTP 500 with an OpenAI-style error JSON.
``slow``
    20 chunks (``"tick0 "`` .. ``"tick19 "``), one every 0.2 s.
``stall``
    streams one chunk (``"first "``), then sends nothing for :data:`STALL_SECONDS`
    (or until the test server stops) before finishing: a model that goes quiet.
``long-<n>`` (e.g. ``long-5000``)
    ``n`` chunks (``"token0 "`` .. ``"token<n-1> "``) as fast as the client reads
    them, for answers of any length (benchmarks). Not in ``GET /v1/models``.

Agent models (function calling; they stream ``tool_calls`` and are not in ``GET /v1/models``):

``agent-tool``
    the last user message is JSON ``{"tool": <name>, "arguments": {...}}``: the first
    request calls that tool (arguments split over two chunks); once the messages hold
    a tool result it answers ``"Tool result: <that result>"``, one word per chunk.
``agent-loop``
    always calls ``calculator`` with ``{"expression": "1+1"}``: it never answers.
``agent-slow-loop``
    request ``k`` streams ``"step<k>a "`` .. ``"step<k>e "`` 0.2 s apart, then calls
    ``calculator`` with ``{"expression": "<k>*10"}``: for disconnects mid-run.

Any other model gets HTTP 404 ``model_not_found`` as OpenAI answers. Every parsed
request body is appended to :attr:`OpenAITestServer.requests` and its
``Authorization`` header to :attr:`OpenAITestServer.authorizations`.

Usage::

    with OpenAITestServer(api_key="sk-test") as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-test")
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

ECHO = "echo"
FAIL_MIDSTREAM = "fail-midstream"
ERROR_500 = "error-500"
SLOW = "slow"
STALL = "stall"
MODELS = (ECHO, FAIL_MIDSTREAM, ERROR_500, SLOW, STALL)
#: ``long-<n>``: n chunks streamed without delay.
LONG_MODEL = re.compile(r"long-(\d{1,9})")

AGENT_TOOL = "agent-tool"
AGENT_LOOP = "agent-loop"
AGENT_SLOW_LOOP = "agent-slow-loop"
AGENT_MODELS = (AGENT_TOOL, AGENT_LOOP, AGENT_SLOW_LOOP)
AGENT_SLOW_INTERVAL = 0.2
#: How long the ``stall`` model stays silent after its first chunk.
STALL_SECONDS = 30.0

SLOW_CHUNKS = 20
SLOW_INTERVAL = 0.2
#: Text of the 500 error; tests check it never reaches a client.
ERROR_500_MESSAGE = "Traceback (most recent call last): internal failure in test server"


def echo_answer(messages: list[dict]) -> str:
    """The ``echo`` model's answer for the given chat messages."""
    question = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    knowledge = system.split("\n", 1)[1] if "\n" in system else ""
    return f"You asked: {question}. The knowledge says: {knowledge[:60]}"


def long_chunks(model: object) -> int | None:
    """``n`` for a ``long-<n>`` model name, else None."""
    match = LONG_MODEL.fullmatch(model) if isinstance(model, str) else None
    return int(match.group(1)) if match else None


def split_words(text: str) -> list[str]:
    """Words with their following whitespace; joined they give ``text`` back."""
    return re.findall(r"\s*\S+\s*", text) or [text]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Keep test output quiet."""

    # -- helpers -----------------------------------------------------------------

    def _send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def _authorized(self) -> bool:
        self.server.owner._record_authorization(self.headers.get("Authorization"))
        key = self.server.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return False

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _write_event(self, payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self._write_chunk(f"data: {data}\n\n".encode())

    # -- routes ------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") != "/v1/models":
            self._send_error(404, "Not found.", "invalid_request_error")
            return
        if self._authorized():
            models = [{"id": name, "object": "model", "created": 0, "owned_by": "test"} for name in MODELS]
            self._send_json(200, {"object": "list", "data": models})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, "Not found.", "invalid_request_error")
            return
        if not self._authorized():
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._send_error(400, "Invalid JSON body.", "invalid_request_error")
            return
        self.server.owner._record_request(request)
        self._answer(request)

    def _answer(self, request: dict) -> None:
        model = request.get("model")
        if model == ERROR_500:
            self._send_error(500, ERROR_500_MESSAGE, "server_error")
        elif model in AGENT_MODELS:
            self._agent(request)
        elif model not in MODELS and long_chunks(model) is None:
            self._send_error(404, f"The model `{model}` does not exist.", "invalid_request_error", "model_not_found")
        elif request.get("stream"):
            self._stream(request)
        else:
            text = "".join(self._pieces(request))
            self._send_json(200, _completion(model, text))

    def _pieces(self, request: dict) -> Iterator[str]:
        model = request["model"]
        chunks = long_chunks(model)
        if chunks is not None:
            for index in range(chunks):
                yield f"token{index} "
        elif model == SLOW:
            for index in range(SLOW_CHUNKS):
                if index:
                    time.sleep(SLOW_INTERVAL)
                yield f"tick{index} "
        elif model == FAIL_MIDSTREAM:
            yield from ("Partial ", "answer ")
        elif model == STALL:
            yield "first "
            self.server.owner._stopping.wait(STALL_SECONDS)
            yield "late "
        else:
            yield from split_words(echo_answer(request.get("messages") or []))

    def _stream(self, request: dict) -> None:
        model = request["model"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._write_event(_chunk(model, {"role": "assistant", "content": ""}))
            for piece in self._pieces(request):
                self._write_event(_chunk(model, {"content": piece}))
            if model == FAIL_MIDSTREAM:
                self._drop_connection()
                return
            self._write_event(_chunk(model, {}, finish_reason="stop"))
            self._write_event("[DONE]")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away (e.g. cancelled)

    def _agent(self, request: dict) -> None:
        """The agent models: stream text and/or one tool call (see the module docstring)."""
        model = request["model"]
        messages = request.get("messages") or []
        tool_results = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
        texts: list[str] = []
        call: tuple[str, str] | None = None
        interval = 0.0
        if model == AGENT_TOOL:
            if tool_results:
                texts = split_words(f"Tool result: {tool_results[-1]}")
            else:
                question = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
                script = json.loads(question)
                call = (script["tool"], json.dumps(script.get("arguments", {})))
        elif model == AGENT_LOOP:
            call = ("calculator", json.dumps({"expression": "1+1"}))
        else:
            step = len(tool_results) + 1
            texts = [f"step{step}{letter} " for letter in "abcde"]
            interval = AGENT_SLOW_INTERVAL
            call = ("calculator", json.dumps({"expression": f"{step}*10"}))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._write_event(_chunk(model, {"role": "assistant", "content": ""}))
            for index, text in enumerate(texts):
                if index and interval:
                    time.sleep(interval)
                self._write_event(_chunk(model, {"content": text}))
            if call is not None:
                name, arguments = call
                call_id = f"call_{len(tool_results) + 1}"
                half = len(arguments) // 2
                first = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments[:half]}}
                self._write_event(_chunk(model, {"tool_calls": [first]}))
                self._write_event(_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}))
            self._write_event(_chunk(model, {}, finish_reason="tool_calls" if call else "stop"))
            self._write_event("[DONE]")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop_connection(self) -> None:
        """Cut the TCP connection in the middle of the chunked body."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _chunk(model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "OpenAITestServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up (e.g. a cancelled stream); report the rest."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class OpenAITestServer:
    """An OpenAI-compatible test server on ``127.0.0.1`` (a free port).

    Args:
        api_key: when given, requests must carry ``Authorization: Bearer <api_key>``
            (HTTP 401 otherwise).

    Attributes:
        base_url: ``"http://127.0.0.1:PORT/v1"`` once started.
        requests: parsed JSON bodies of the chat requests received, in order.
        authorizations: the ``Authorization`` header of every request (or None).
    """

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the test server is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "OpenAITestServer":
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._stopping.set()  # release stalled answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record_request(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    def _record_authorization(self, header: str | None) -> None:
        with self._lock:
            self.authorizations.append(header)
