"""A synchronous client of one MCP server (stdio or streamable HTTP), for the agent's tools.

The official ``mcp`` package is asyncio-based; the agent loop is synchronous and runs
in a worker thread. :class:`McpClient` owns a private event loop used only from that
thread: one long-lived task (``_serve``) opens the stdio transport and the
``ClientSession`` and then serves calls handed to it through a queue, so every anyio
cancel scope is entered and left by the same task, while each synchronous method runs
the loop (``run_until_complete``) just long enough for its call. Between calls the
loop does not run; the server process simply waits.

:class:`McpClient` starts a server on stdio; :class:`McpHttpClient` reaches one over
streamable HTTP (``mcp.client.streamable_http``) after checking its address like the
``http_request`` tool (:func:`api.agent.tools.resolve_checked`).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from api.agent.tools import ToolError, ToolResult, resolve_checked

logger = logging.getLogger(__name__)

#: Seconds allowed for the server to exit when the run ends.
CLOSE_SECONDS = 5.0
#: How a server or its transport fails (cannot be spawned, exits, breaks the protocol,
#: answers an error, times out, HTTP failures). Any other exception among the causes of
#: a failure is probably a bug, ours or the ``mcp`` package's: it is logged with its
#: traceback.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OSError, MCPError, ToolError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
    httpx2.HTTPError,
)


def leaf_exceptions(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, exception groups (anyio task groups) unwrapped."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_exceptions(inner)]
    return [error]


def describe_failure(error: BaseException) -> str:
    """``Type: message`` of each leaf exception of ``error``, joined by ``; `` (repeats
    once), e.g. ``MCPError: Connection closed`` for a server that exits at once."""
    parts = []
    for leaf in leaf_exceptions(error):
        message = str(leaf).strip()
        parts.append(f"{type(leaf).__name__}: {message}" if message else type(leaf).__name__)
    return "; ".join(dict.fromkeys(parts))


def _log_if_unexpected(label: str, error: BaseException) -> None:
    """Log ``error`` with its traceback when a cause is not an :data:`EXPECTED_FAILURES`."""
    if any(not isinstance(leaf, EXPECTED_FAILURES) for leaf in leaf_exceptions(error)):
        logger.error("MCP server %r failed unexpectedly: %s", label, describe_failure(error), exc_info=error)


class McpToolProxy:
    """One tool of an MCP server, with the :class:`~api.agent.tools.Tool` interface."""

    def __init__(self, client: McpClient, name: str, description: str, parameters: dict) -> None:
        self.client = client
        self.name = name
        self.description = description
        self.parameters = parameters or {"type": "object", "properties": {}}

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        return self.client.call(self.name, arguments, timeout)


def _text_of(result: Any) -> str:
    parts = []
    for item in getattr(result, "content", None) or []:
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(item, 'type', 'content')}]")
    if not parts and getattr(result, "structured_content", None) is not None:
        parts.append(str(result.structured_content))
    return "\n".join(parts)


class McpClient:
    """A started MCP stdio server and its session, driven synchronously.

    Args:
        command / args / env: how to start the server (``env`` is merged over the
            ``mcp`` package's safe default environment).
        timeout: seconds for start-up and the upper bound of each call.

    Use from one thread only (the agent's worker thread).
    """

    def __init__(self, command: str, args: list[str], env: dict[str, str], timeout: float) -> None:
        self.params = StdioServerParameters(command=command, args=list(args), env=dict(env) or None)
        self.label = shlex.join([command, *args])
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._requests: asyncio.Queue[tuple[str, dict, float, asyncio.Future] | None] | None = None
        self._ready: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        """The transport's context manager, yielding ``(read stream, write stream, …)``."""
        return stdio_client(self.params, errlog=sys.stderr)

    async def _serve(self) -> None:
        assert self._requests is not None and self._ready is not None
        try:
            async with self._transport() as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    listed = await session.list_tools()
                    self._ready.set_result(listed.tools)
                    while (request := await self._requests.get()) is not None:
                        name, arguments, timeout, reply = request
                        try:
                            result = await session.call_tool(name, arguments, read_timeout_seconds=timeout)
                        except Exception as error:  # noqa: BLE001 - delivered to the caller, who maps it
                            if not reply.done():
                                reply.set_exception(error)
                        else:
                            if not reply.done():
                                reply.set_result(result)
        except Exception as error:  # noqa: BLE001 - start-up failure, delivered to start()
            if not self._ready.done():
                self._ready.set_exception(error)
            else:
                logger.warning("MCP server %r ended: %s", self.label, describe_failure(error))
                _log_if_unexpected(self.label, error)

    def start(self) -> list[McpToolProxy]:
        """Start the server, initialise the session and list its tools.

        Raises:
            ToolError: the server did not start or answer within ``timeout``; the
                message names each cause (``FileNotFoundError: [Errno 2] …``,
                ``MCPError: Connection closed`` …), exception groups unwrapped.
        """

        async def begin() -> list[Any]:
            self._requests = asyncio.Queue()
            self._ready = self._loop.create_future()
            self._task = self._loop.create_task(self._serve())
            return await asyncio.wait_for(asyncio.shield(self._ready), self.timeout)

        try:
            tools = self._loop.run_until_complete(begin())
        except TimeoutError:
            raise ToolError(f"no answer within {self.timeout:g} s") from None
        except Exception as error:  # noqa: BLE001 - every cause is named, unexpected ones logged with a traceback
            _log_if_unexpected(self.label, error)
            raise ToolError(describe_failure(error)) from None
        return [
            McpToolProxy(self, tool.name, tool.description or "", dict(getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}))
            for tool in tools
        ]

    def call(self, name: str, arguments: dict, timeout: float) -> ToolResult:
        """Call a tool of the server within ``min(timeout, self.timeout)`` seconds.

        Raises:
            ToolError: the call failed or timed out, or the server reported an error.
        """
        if self._requests is None or self._task is None or self._task.done():
            raise ToolError("the MCP server is not running")
        limit = min(timeout, self.timeout)

        async def ask() -> Any:
            reply = self._loop.create_future()
            await self._requests.put((name, arguments, limit, reply))
            return await asyncio.wait_for(reply, limit + 1.0)

        try:
            result = self._loop.run_until_complete(ask())
        except TimeoutError:
            raise ToolError(f"the MCP tool {name!r} timed out after {limit:g} s") from None
        except MCPError as error:
            message = getattr(getattr(error, "error", None), "message", "") or "error"
            if "timed out" in message:
                raise ToolError(f"the MCP tool {name!r} timed out after {limit:g} s") from None
            raise ToolError(f"the MCP tool {name!r} failed: {message[:200]}") from None
        except Exception as error:  # noqa: BLE001 - transport failures of the mcp package
            logger.warning("MCP tool %r of %r failed: %s", name, self.label, describe_failure(error))
            _log_if_unexpected(self.label, error)
            kinds = ", ".join(dict.fromkeys(type(leaf).__name__ for leaf in leaf_exceptions(error)))
            raise ToolError(f"the MCP tool {name!r} failed ({kinds})") from None
        text = _text_of(result)
        if getattr(result, "is_error", False):
            return ToolResult(f"error: {text}", "error")
        return ToolResult(text)

    def close(self) -> None:
        """Stop the session and the server (waits at most :data:`CLOSE_SECONDS`)."""
        try:
            if self._task is not None and not self._task.done() and self._requests is not None:
                self._requests.put_nowait(None)
                try:
                    self._loop.run_until_complete(asyncio.wait_for(self._task, CLOSE_SECONDS))
                except (TimeoutError, Exception):  # noqa: BLE001 - best effort at shutdown
                    logger.warning("MCP server %r did not stop cleanly", self.label)
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()


class McpHttpClient(McpClient):
    """An MCP server reached over streamable HTTP at ``url``, driven synchronously.

    :meth:`start` resolves the host and checks every address with
    :func:`~api.agent.tools.resolve_checked` (private, loopback, link-local … refused
    unless ``allow_private``). An ``http://`` endpoint is then reached at the checked
    address (the ``Host`` header keeps the name), so a second DNS answer cannot
    redirect it; an ``https://`` endpoint is reached by name (TLS verifies it). The
    ``mcp`` package follows redirects only within the endpoint's origin. Proxy
    environment variables are ignored.

    Args:
        url: the server's endpoint (``http(s)://host[:port]/path``).
        timeout: seconds for start-up and the upper bound of each call.
        allow_private: the operator allows private and loopback addresses.
    """

    def __init__(self, url: str, timeout: float, allow_private: bool) -> None:
        self.url = url
        self.allow_private = allow_private
        self.label = url
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._requests = None
        self._ready = None
        self._task = None
        self._endpoint = url
        self._headers: dict[str, str] = {}

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        timeout = httpx2.Timeout(self.timeout, read=max(self.timeout, 300.0))
        async with (
            httpx2.AsyncClient(timeout=timeout, headers=self._headers, trust_env=False) as client,
            streamable_http_client(self._endpoint, http_client=client) as streams,
        ):
            yield streams

    def start(self) -> list[McpToolProxy]:
        """Check the endpoint's addresses, connect, initialise and list the tools.

        Raises:
            ToolError: the address is refused, or the server did not answer within ``timeout``.
        """
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve_checked(host, port, self.allow_private)
        if parts.scheme == "http":
            pinned = f"[{address}]" if ":" in address else address
            self._endpoint = urlunsplit(("http", f"{pinned}:{port}", parts.path or "/", parts.query, ""))
            self._headers = {"Host": parts.netloc}
        return super().start()
