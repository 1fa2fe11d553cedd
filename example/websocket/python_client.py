"""Ask a RagSocket chat over WebSocket and print the answer as it streams.

Usage::

    python example/websocket/python_client.py --host 127.0.0.1:9380 \\
        --token ragsocket-... --chat-id CHAT_ID --question "What is RagSocket?"

    # several questions in one session, on one connection (empty line or Ctrl-D ends):
    python example/websocket/python_client.py --token ... --chat-id ... --interactive

    # an agent: tool calls are printed as they happen, then the answer streams:
    python example/websocket/python_client.py --token ... --agent-id AGENT_ID \\
        --question "How long do I have to return a purchase, and what is 30 * 2?"

Options: ``--session-id`` continues an existing session, ``--debug`` prints every raw
frame to stderr, ``--secure`` uses ``wss://`` instead of ``ws://``, ``--no-reconnect`` does not
reconnect and resume an answer after a dropped connection.

The protocol (see docs/websocket_api.md): send ``{"question", "session_id"?}``; the
server answers with frames ``{"code": 0, "data": {"answer": <new text>, "final": …,
"reference": …, "session_id": …}}`` and ends every request with ``{"code": 0,
"data": true}``. An error frame has a non-zero ``code`` and a ``message``. A refused
key gets an error frame and the close code 1008.

Agents (see docs/agents.md) answer with frames carrying an ``event``: ``thinking``,
``tool_call_start``, ``tool_call_end``, ``message`` (new text), ``message_end``.

The connection logic (authentication, reading frames up to the marker, reconnecting
and resuming an answer after a dropped connection, stop) is the library
``example/websocket/ragsocket_client.py`` (sync and asyncio); this script is a thin
command-line wrapper over its ``RagSocketClient``.

Exit status: 0 answered, 1 an error frame was received, 2 authentication failed
(or the chat is not yours), 3 the connection failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ragsocket_client import AuthenticationError, ConnectionLost, RagSocketClient  # noqa: E402

POLICY_VIOLATION = 1008


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RagSocket WebSocket chat client.")
    parser.add_argument("--host", default="127.0.0.1:9380", help="host:port of the server (default 127.0.0.1:9380)")
    parser.add_argument("--token", required=True, help="API key (sent as Authorization: Bearer)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--chat-id", help="id of the chat to ask")
    target.add_argument("--agent-id", help="id of the agent to ask (prints its tool calls as they happen)")
    parser.add_argument("--question", help="the question (required unless --interactive)")
    parser.add_argument("--session-id", help="continue this session instead of starting one")
    parser.add_argument("--interactive", action="store_true", help="ask questions read from stdin, one per line")
    parser.add_argument("--debug", action="store_true", help="print raw frames to stderr")
    parser.add_argument("--secure", action="store_true", help="use wss:// (TLS)")
    parser.add_argument("--no-reconnect", action="store_true", help="do not reconnect and resume after a dropped connection")
    args = parser.parse_args(argv)
    if not args.interactive and not args.question:
        parser.error("--question is required unless --interactive is given")
    return args


def print_sources(reference: dict) -> None:
    """Print the cited documents: name and best similarity of their chunks."""
    best: dict[str, float] = {}
    for chunk in reference.get("chunks") or []:
        name = chunk.get("document_name") or chunk.get("document_id", "?")
        best[name] = max(best.get(name, 0.0), float(chunk.get("similarity") or 0.0))
    for agg in reference.get("doc_aggs") or []:
        best.setdefault(agg.get("doc_name") or agg.get("doc_id", "?"), 0.0)
    if best:
        print("Sources:")
        for name, similarity in sorted(best.items(), key=lambda item: -item[1]):
            print(f"  - {name} (similarity {similarity:.2f})")


def print_agent_event(event: str, data: dict) -> None:
    """Print one agent frame: tool calls on their own lines, the answer as it streams."""
    if event == "tool_call_start":
        print(f"[tool] {data.get('tool_name')}({json.dumps(data.get('arguments'), ensure_ascii=False)}) ...", flush=True)
    elif event == "tool_call_end":
        result = str(data.get("result", "")).replace("\n", " ")
        if len(result) > 120:
            result = result[:117] + "..."
        print(f"[tool] {data.get('tool_name')} {data.get('status')} in {data.get('elapsed_ms')} ms: {result}", flush=True)
    elif event == "message":
        print(data.get("content", ""), end="", flush=True)
    elif event == "message_end":
        print()
        print_sources(data.get("reference") or {})


def ask(client: RagSocketClient, question: str, session_id: str | None) -> tuple[str | None, bool]:
    """Send one question and print its answer as it streams; returns (session id, success)."""
    ok = True
    for frame in client.stream(question, session_id):
        data = frame.get("data")
        if frame.get("code") != 0:
            print(f"\nError {frame.get('code')}: {frame.get('message')}", file=sys.stderr)
            ok = False
            continue
        if "event" in frame:
            print_agent_event(frame["event"], data)
            continue
        print(data.get("answer", ""), end="", flush=True)
        if data.get("final"):
            print()
            print_sources(data.get("reference") or {})
    return client.last_answer.session_id or session_id, ok


def questions(args: argparse.Namespace):
    """The question to ask, or each line of stdin in interactive mode."""
    if not args.interactive:
        yield args.question
        return
    if args.question:
        yield args.question
    while True:
        if sys.stdin.isatty():
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debug = (lambda text: print(f"<< {text}", file=sys.stderr)) if args.debug else None
    client = RagSocketClient(
        f"{'wss' if args.secure else 'ws'}://{args.host}",
        api_key=args.token,
        chat_id=args.chat_id,
        agent_id=args.agent_id,
        reconnect=not args.no_reconnect,
        on_message=debug,
    )
    session_id, status = args.session_id, 0
    try:
        with client:
            # A refused key gets an error frame and close 1008 before any question.
            for question in questions(args):
                session_id, ok = ask(client, question, session_id)
                status = status or (0 if ok else 1)
    except AuthenticationError as refused:
        print(f"Refused by the server (close {POLICY_VIOLATION}: {refused.reason})", file=sys.stderr)
        return 2
    except (ConnectionLost, ConnectionClosed) as closed:
        print(f"Connection closed: {closed}", file=sys.stderr)
        return 3
    except (OSError, InvalidStatus) as error:
        print(f"Connection failed: {error}", file=sys.stderr)
        return 3
    if session_id and args.interactive:
        print(f"Session: {session_id}")
    return status


if __name__ == "__main__":
    sys.exit(main())
