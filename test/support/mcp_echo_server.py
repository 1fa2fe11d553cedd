"""A tiny MCP server, on stdio or streamable HTTP, for the agent tests (the ``mcp`` package's MCPServer,
FastMCP's name since mcp 2).

Tools: ``echo(text)`` → ``"echo: <text>"``; ``add(a, b)`` → the sum; ``fail()`` raises
(an MCP tool error); ``sleep(seconds)`` sleeps then answers ``"slept"``.

Run: ``python test/support/mcp_echo_server.py`` (stdio), or
``python test/support/mcp_echo_server.py --transport streamable-http --port 8765``
(endpoint ``http://127.0.0.1:8765/mcp``).
"""

from __future__ import annotations

import argparse
import time

from mcp.server.mcpserver import MCPServer

app = MCPServer("ragsocket-test-echo")


@app.tool()
def echo(text: str) -> str:
    """Echo the text back, prefixed with "echo: "."""
    return f"echo: {text}"


@app.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@app.tool()
def fail() -> str:
    """Always fails."""
    raise RuntimeError("this tool always fails")


@app.tool()
def sleep(seconds: float) -> str:
    """Sleep for the given seconds, then answer "slept"."""
    time.sleep(seconds)
    return "slept"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="streamable-http: address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="streamable-http: port to listen on")
    options = parser.parse_args()
    if options.transport == "stdio":
        app.run()
    else:
        app.run("streamable-http", host=options.host, port=options.port)


if __name__ == "__main__":
    main()
