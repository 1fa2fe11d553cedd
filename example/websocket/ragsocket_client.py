"""A small RagSocket WebSocket client library: sync and asyncio, with reconnection and resume.

Copy this one file into your project (it needs only the ``websockets`` package, 13+)::

    from ragsocket_client import RagSocketClient

    with RagSocketClient("ws://127.0.0.1:9380", api_key=KEY, chat_id=CHAT_ID) as client:
        for frame in client.stream("How many days do I have to return a purchase?"):
            print(frame["data"]["answer"], end="", flush=True)       # the text deltas
        answer = client.ask("And when is the refund paid?", session_id=client.session_id)
        print(answer.text, answer.document_names)

    # asyncio
    async with AsyncRagSocketClient(URL, api_key=KEY, chat_id=CHAT_ID) as client:
        async for frame in client.stream("…"):
            ...
        answer = await client.ask("…")

What the clients do for you (see docs/websocket_api.md for the protocol):

* authenticate with ``Authorization: Bearer <key>`` when connecting;
* send a question (``"resumable": true`` by default) and read its frames up to the
  completion marker ``{"data": true}``, which ends the iteration (it is not yielded);
* track the answer's message id, session id and last ``seq``;
* when the connection drops in the middle of an answer (``ConnectionClosed`` without a
  1008 close, or ``OSError``), reconnect with exponential backoff and send
  ``{"type": "resume", "session_id", "message_id", "last_seq"}``: the iteration goes
  on with the frames after ``last_seq`` as if nothing happened (frames already seen are
  skipped, so the text is exact);
* ``stop()`` sends ``{"type": "stop"}``: the answer ends with a final frame with
  ``"interrupted": true``;
* agents: pass ``agent_id`` instead of ``chat_id``; frames then carry an ``event``
  (``thinking``, ``tool_call_start``, ``tool_call_end``, ``message``, ``message_end``),
  and ``Answer.text`` is built from the ``message`` events.

Errors: a refused key or chat (close 1008) raises :class:`AuthenticationError` and is
never retried; a drop that cannot be resumed (before the first frame of the answer, or
after ``max_retries`` failed reconnections) raises :class:`ConnectionLost`. Error frames
of the server (non-zero ``code``) are yielded like any frame and recorded in
``Answer.error``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect as sync_connect

POLICY_VIOLATION = 1008
__all__ = ["Answer", "AsyncRagSocketClient", "AuthenticationError", "ConnectionLost", "RagSocketClient", "RagSocketError"]


class RagSocketError(Exception):
    """Base class of the errors raised by the clients."""


class AuthenticationError(RagSocketError):
    """The server refused the key or the chat (close 1008). Retrying will not help."""

    def __init__(self, reason: str, code: int = POLICY_VIOLATION) -> None:
        super().__init__(f"close {code}: {reason}")
        self.reason = reason
        self.code = code


class ConnectionLost(RagSocketError):
    """The connection dropped and the answer could not be resumed."""


@dataclass
class Answer:
    """One answer, collected from its frames."""

    text: str = ""
    session_id: str | None = None
    message_id: str | None = None
    last_seq: int = 0
    reference: dict = field(default_factory=dict)
    interrupted: bool = False
    error: tuple[int, str] | None = None
    events: list[dict] = field(default_factory=list)
    resumes: int = 0
    done: bool = False

    @property
    def document_names(self) -> list[str]:
        """Names of the cited documents, in the order of ``reference.doc_aggs``."""
        names = [agg.get("doc_name") or agg.get("doc_id", "?") for agg in self.reference.get("doc_aggs") or []]
        for chunk in self.reference.get("chunks") or []:
            name = chunk.get("document_name") or chunk.get("document_id")
            if name and name not in names:
                names.append(name)
        return names


class _Tracker:
    """Protocol state of one request: what to skip after a resume, when it is over."""

    def __init__(self) -> None:
        self.answer = Answer()

    def feed(self, frame: dict) -> bool:
        """Account for one frame; False when it repeats a frame already seen (skip it)."""
        answer = self.answer
        data = frame.get("data")
        if data is True:
            answer.done = True
            return True
        if frame.get("code") != 0 or not isinstance(data, dict):
            answer.error = (int(frame.get("code") or 0), str(frame.get("message") or ""))
            return True
        seq = data.get("seq")
        if isinstance(seq, int):
            if seq <= answer.last_seq and answer.message_id == data.get("id"):
                return False
            answer.last_seq = seq
        answer.message_id = data.get("id") or answer.message_id
        answer.session_id = data.get("session_id") or answer.session_id
        event = frame.get("event")
        if event is not None:  # an agent
            answer.events.append(frame)
            if event == "message":
                answer.text += data.get("content") or ""
            elif event == "message_end":
                answer.reference = data.get("reference") or {}
                answer.interrupted = bool(data.get("interrupted"))
            return True
        answer.text += data.get("answer") or ""
        if data.get("final"):
            answer.reference = data.get("reference") or {}
            answer.interrupted = bool(data.get("interrupted"))
        return True

    def resume_message(self) -> dict | None:
        """The resume request, or None when there is nothing to resume yet."""
        answer = self.answer
        if not (answer.message_id and answer.session_id):
            return None
        return {"type": "resume", "session_id": answer.session_id, "message_id": answer.message_id, "last_seq": answer.last_seq}


def _request(question: str, session_id: str | None, resumable: bool, fields: dict) -> str:
    request: dict[str, Any] = {"question": question, "stream": True, "resumable": resumable, **fields}
    if session_id:
        request["session_id"] = session_id
    return json.dumps(request, ensure_ascii=False)


# What a reconnection attempt may fail with (and then be tried again, unless refused).
_RETRYABLE = (ConnectionClosed, OSError, InvalidHandshake, TimeoutError)


def _raise_if_refused(error: BaseException) -> None:
    """Raise :class:`AuthenticationError` when ``error`` is a close 1008 (never retried)."""
    if isinstance(error, ConnectionClosed) and error.rcvd is not None and error.rcvd.code == POLICY_VIOLATION:
        raise AuthenticationError(error.rcvd.reason, error.rcvd.code) from error


class _Base:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:9380",
        *,
        api_key: str,
        chat_id: str | None = None,
        agent_id: str | None = None,
        reconnect: bool = True,
        max_retries: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        open_timeout: float = 30.0,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        """
        Args:
            url: the server, ``ws://host:port`` or ``wss://host`` (a full
                ``…/completions`` URL is used as it is).
            api_key: the API key, sent as ``Authorization: Bearer``.
            chat_id / agent_id: what to ask (exactly one, unless ``url`` is complete).
            reconnect: reconnect and resume after a drop in the middle of an answer.
            max_retries: reconnection attempts per drop; delays ``backoff * 2**n`` up to
                ``max_backoff`` seconds.
            on_message: called with every raw text message received (debugging).
        """
        url = url.rstrip("/")
        if not url.endswith("/completions"):
            if bool(chat_id) == bool(agent_id):
                raise ValueError("give exactly one of chat_id and agent_id")
            path = f"agents/{agent_id}" if agent_id else f"chats/{chat_id}"
            url = f"{url}/api/v1/ws/{path}/completions"
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.reconnect, self.max_retries = reconnect, max_retries
        self.backoff, self.max_backoff, self.open_timeout = backoff, max_backoff, open_timeout
        self.on_message = on_message
        self.session_id: str | None = None  # the session of the last answer
        self.last_answer: Answer | None = None
        self.reconnects = 0

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2**attempt))

    def _decode(self, text: str | bytes) -> dict:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if self.on_message is not None:
            self.on_message(text)
        return json.loads(text)

    # The I/O-free part of ``stream()`` and ``_reconnect()``, shared by both clients: they
    # only add the (sync or awaited) sending, receiving, connecting and sleeping.

    def _start(self) -> _Tracker:
        """The protocol state of a new request (its answer is ``self.last_answer``)."""
        tracker = _Tracker()
        self.last_answer = tracker.answer
        return tracker

    def _accept(self, tracker: _Tracker, frame: dict) -> bool:
        """Account for a received frame: True when it is to be yielded; False for a pong,
        a frame already seen before a resume, or the completion marker (then
        ``tracker.answer.done`` is set)."""
        if frame.get("type") == "pong" or not tracker.feed(frame):
            return False
        if tracker.answer.session_id:
            self.session_id = tracker.answer.session_id
        return not tracker.answer.done

    def _release(self) -> None:
        """Free the dead connection's socket before reconnecting."""
        raise NotImplementedError

    def _resume_attempts(self, tracker: _Tracker, cause: BaseException) -> Iterator[tuple[float, str]]:
        """The reconnections after a drop: ``(delay before it, resume request to send)``
        for each attempt; the caller stops iterating when one succeeds (and calls
        :meth:`_resumed`).

        Raises:
            ConnectionLost: reconnection is off, there is nothing to resume yet, or all
                ``max_retries`` attempts failed.
        """
        resume = tracker.resume_message()
        if not self.reconnect or resume is None:
            raise ConnectionLost(f"connection lost before the answer could be resumed: {cause}") from cause
        self._release()
        for attempt in range(self.max_retries):
            yield self._delay(attempt), json.dumps(resume)
        raise ConnectionLost(f"could not resume after {self.max_retries} attempts: {cause}") from cause

    def _resumed(self, tracker: _Tracker) -> None:
        self.reconnects += 1
        tracker.answer.resumes += 1


class RagSocketClient(_Base):
    """Synchronous client on ``websockets.sync.client``. Thread-safe for ``stop()``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = None  # the websockets ClientConnection in use
        self._lock = threading.Lock()

    def connect(self) -> RagSocketClient:
        """Open the connection (done on first use otherwise)."""
        # Entered as a context manager: websockets 17.1+ warns about connections used
        # otherwise, and this works with every version since 13.
        connection = sync_connect(self.url, additional_headers=self.headers, open_timeout=self.open_timeout, max_size=None)
        self.connection = connection.__enter__()
        return self

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def __enter__(self) -> RagSocketClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Stop the running answer(s): they end with ``"interrupted": true``."""
        if self.connection is not None:
            try:
                self.connection.send(json.dumps({"type": "stop"}))
            except (ConnectionClosed, OSError):
                pass

    def ping(self) -> None:
        """An application heartbeat ``{"type": "ping"}`` (answered by a pong frame)."""
        self.connection.send(json.dumps({"type": "ping"}))

    def _release(self) -> None:
        try:
            self.connection.socket.close()
        except (AttributeError, OSError):
            pass

    def _reconnect(self, tracker: _Tracker, cause: BaseException) -> None:
        for delay, resume in self._resume_attempts(tracker, cause):
            time.sleep(delay)
            try:
                self.connect()
                self.connection.send(resume)
            except _RETRYABLE as error:
                _raise_if_refused(error)
                continue
            return self._resumed(tracker)

    def stream(self, question: str, session_id: str | None = None, resumable: bool = True, **fields: Any) -> Iterator[dict]:
        """Ask and yield the answer's frames (not the completion marker), resuming after drops.

        ``fields`` are extra request fields (``kb_ids``, ``doc_ids``, ``req_id`` …).
        The collected answer is ``self.last_answer`` during and after the iteration.
        """
        if self.connection is None:
            self.connect()
        tracker = self._start()
        try:
            self.connection.send(_request(question, session_id, resumable, fields))
        except ConnectionClosed:
            pass  # closed already (e.g. a refused key): read the frames it sent first
        while True:
            try:
                frame = self._decode(self.connection.recv())
            except (ConnectionClosed, OSError) as error:
                _raise_if_refused(error)
                self._reconnect(tracker, error)
                continue
            if self._accept(tracker, frame):
                yield frame
            elif tracker.answer.done:
                return

    def ask(self, question: str, session_id: str | None = None, resumable: bool = True, **fields: Any) -> Answer:
        """Ask and wait for the whole answer."""
        for _ in self.stream(question, session_id, resumable, **fields):
            pass
        return self.last_answer


class AsyncRagSocketClient(_Base):
    """asyncio client on ``websockets.asyncio.client``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = None

    async def connect(self) -> AsyncRagSocketClient:
        self.connection = await async_connect(
            self.url, additional_headers=self.headers, open_timeout=self.open_timeout, max_size=None
        )
        return self

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    async def __aenter__(self) -> AsyncRagSocketClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def stop(self) -> None:
        """Stop the running answer(s): they end with ``"interrupted": true``."""
        if self.connection is not None:
            try:
                await self.connection.send(json.dumps({"type": "stop"}))
            except (ConnectionClosed, OSError):
                pass

    async def ping(self) -> None:
        await self.connection.send(json.dumps({"type": "ping"}))

    def _release(self) -> None:
        try:
            self.connection.transport.abort()
        except AttributeError:
            pass

    async def _reconnect(self, tracker: _Tracker, cause: BaseException) -> None:
        for delay, resume in self._resume_attempts(tracker, cause):
            await asyncio.sleep(delay)
            try:
                await self.connect()
                await self.connection.send(resume)
            except _RETRYABLE as error:
                _raise_if_refused(error)
                continue
            return self._resumed(tracker)

    async def stream(
        self, question: str, session_id: str | None = None, resumable: bool = True, **fields: Any
    ) -> AsyncIterator[dict]:
        """Ask and yield the answer's frames (not the completion marker), resuming after drops."""
        if self.connection is None:
            await self.connect()
        tracker = self._start()
        try:
            await self.connection.send(_request(question, session_id, resumable, fields))
        except ConnectionClosed:
            pass
        while True:
            try:
                frame = self._decode(await self.connection.recv())
            except (ConnectionClosed, OSError) as error:
                _raise_if_refused(error)
                await self._reconnect(tracker, error)
                continue
            if self._accept(tracker, frame):
                yield frame
            elif tracker.answer.done:
                return

    async def ask(self, question: str, session_id: str | None = None, resumable: bool = True, **fields: Any) -> Answer:
        """Ask and wait for the whole answer."""
        async for _ in self.stream(question, session_id, resumable, **fields):
            pass
        return self.last_answer
