"""Helpers for the agent tests: the echo MCP server, loopback HTTP servers for the
tools to call, and RAGFlow canvases (the agent DSL of RAGFlow's UI)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: ``python MCP_SERVER [--transport streamable-http --port N]``: tools echo, add, fail, sleep.
MCP_SERVER = str(Path(__file__).with_name("mcp_echo_server.py"))
OFFLINE_LLM_ID = "ragsocket-offline@Builtin"


class QuietHTTPServer(ThreadingHTTPServer):
    """A loopback HTTP server that ignores clients hanging up (a tool timing out)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A :class:`QuietHTTPServer` on a free loopback port, in a daemon thread; yields
    its base URL ``http://127.0.0.1:PORT``."""
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def retrieval_agent(dataset_id: str, max_rounds: int) -> dict[str, Any]:
    """Params of a canvas Agent component: the offline model with a Retrieval tool."""
    return {
        "llm_id": OFFLINE_LLM_ID, "sys_prompt": "Answer from the knowledge.", "max_rounds": max_rounds,
        "tools": [{"component_name": "Retrieval", "name": "Retrieval", "params": {"kb_ids": [dataset_id], "top_n": 3}}],
    }


def ragflow_canvas(
    agent_params: dict[str, Any],
    extra: dict | None = None,
    *,
    prologue: str = "Canvas says hi",
    agent: str = "Agent:A",
    message: str = "Message:M",
    **fields: Any,
) -> dict[str, Any]:
    """A RAGFlow canvas of the template Begin → Agent → Message (the one RagSocket
    imports), as RAGFlow's UI saves it: ``extra`` adds components, ``fields`` replace
    top-level keys (``globals``, ``graph`` …)."""
    components = {
        "begin": {"obj": {"component_name": "Begin", "params": {"prologue": prologue}}, "downstream": [agent], "upstream": []},
        agent: {"obj": {"component_name": "Agent", "params": agent_params}, "downstream": [message], "upstream": ["begin"]},
        message: {"obj": {"component_name": "Message", "params": {"content": [f"{{{agent}@content}}"]}}, "downstream": [], "upstream": [agent]},
        **(extra or {}),
    }
    canvas = {"components": components, "globals": {"sys.query": ""}, "graph": {"nodes": [], "edges": []}, "history": [], "path": [], "retrieval": []}
    return {**canvas, **fields}
