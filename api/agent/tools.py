"""Agent tools: each a small class with a ``name``, a ``description``, a JSON schema of its
arguments (``parameters``, as OpenAI's function calling takes it) and a synchronous
``run(arguments, timeout) -> ToolResult``.

A tool reports an expected failure by raising :class:`ToolError` with a message fit
for the model and the client; :meth:`Toolset.call` is the one place turning any tool
failure into a :class:`ToolResult` with ``status="error"`` — a tool never crashes an
agent.

Tools: ``retrieval``, ``calculator`` (simpleeval, never ``eval``), ``current_time``
(zoneinfo), ``http_request`` (httpx; prefix allow-list, private addresses refused
unless allowed by the operator), and the tools of MCP servers, stdio or streamable HTTP
(:mod:`api.agent.mcp_client`; the same address check as ``http_request``).
"""

from __future__ import annotations

import ast
import datetime as dt
import ipaddress
import json
import logging
import math
import operator
import re
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import simpleeval

from api.agent.dsl import AgentDefinition, HttpRequestTool, McpTool, RetrievalTool
from common.errors import ArgumentError

logger = logging.getLogger(__name__)

ToolStatus = Literal["completed", "error"]
#: Longest tool result given back to the model, characters.
MODEL_RESULT_CHARS = 8000
#: Longest calculator expression, characters.
MAX_EXPRESSION_CHARS = 256


class ToolError(Exception):
    """A tool failed in an expected way; ``str(error)`` is shown to the model and client."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool call gave: ``content`` (for the model), ``status``, and for retrieval
    the chunks found (they become the answer's references)."""

    content: str
    status: ToolStatus = "completed"
    chunks: tuple[dict, ...] = ()


class Tool(Protocol):
    """The interface of every tool."""

    name: str
    description: str
    parameters: dict

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        """Run with validated-by-the-tool ``arguments`` within ``timeout`` seconds.

        Raises:
            ToolError: the call failed (bad arguments, refused, timed out …).
        """
        ...


def _string_argument(arguments: dict, name: str, default: str | None = None) -> str:
    value = arguments.get(name, default)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"`{name}` is required and must be a non-empty string")
    return value.strip()


# -- references --------------------------------------------------------------------
@dataclass
class References:
    """Chunks found by retrieval during one run, numbered for ``[ID:n]`` citations."""

    chunks: list[dict] = field(default_factory=list)

    def add(self, found: list[dict]) -> list[tuple[int, dict]]:
        """Number new chunks (a chunk found twice keeps its first number)."""
        index_of = {chunk["id"]: index for index, chunk in enumerate(self.chunks)}
        numbered = []
        for chunk in found:
            if chunk["id"] not in index_of:
                index_of[chunk["id"]] = len(self.chunks)
                self.chunks.append(chunk)
            numbered.append((index_of[chunk["id"]], chunk))
        return numbered

    def as_reference(self) -> dict:
        """RAGFlow's reference object ``{"total", "chunks", "doc_aggs"}``."""
        aggs: dict[str, dict] = {}
        for chunk in self.chunks:
            entry = aggs.setdefault(chunk["document_id"], {"doc_id": chunk["document_id"], "doc_name": chunk["document_name"], "count": 0})
            entry["count"] += 1
        return {"total": len(self.chunks), "chunks": list(self.chunks), "doc_aggs": sorted(aggs.values(), key=lambda e: -e["count"])}


# -- retrieval ---------------------------------------------------------------------
Retriever = Callable[..., dict]


class RetrievalToolImpl:
    """Search the agent's datasets (the same BM25 retrieval as chats).

    Args:
        spec: the tool's definition (datasets, ``top_n``, ``similarity_threshold``).
        retrieve: :func:`api.db.services.retrieval_service.retrieve`.
        references: where found chunks are numbered.
    """

    name = "retrieval"
    description = "Search the knowledge base for passages relevant to a question. Cite them as [ID:n]."
    parameters: ClassVar[dict] = {
        "type": "object",
        "properties": {"question": {"type": "string", "description": "what to search for"}},
        "required": ["question"],
    }

    def __init__(self, spec: RetrievalTool, retrieve: Retriever, references: References) -> None:
        self.spec = spec
        self._retrieve = retrieve
        self.references = references

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        question = _string_argument(arguments, "question")
        found = self._retrieve(
            question, list(self.spec.dataset_ids), None,
            similarity_threshold=self.spec.similarity_threshold, page=1, page_size=self.spec.top_n,
        )["chunks"]
        if not found:
            return ToolResult("No relevant passage found.")
        numbered = self.references.add(found)
        text = "\n\n".join(f"[ID:{index}] ({chunk['document_name']}) {chunk['content']}" for index, chunk in numbered)
        return ToolResult(text, chunks=tuple(chunk for _, chunk in numbered))


# -- calculator --------------------------------------------------------------------
def _safe_power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > 1000 or (abs(base) > 1 and abs(exponent) * math.log10(abs(base)) > 300):
        raise ToolError("the result is too large")
    return simpleeval.safe_power(base, exponent)


_OPERATORS = {
    ast.Add: simpleeval.safe_add,
    ast.Sub: operator.sub,
    ast.Mult: simpleeval.safe_mult,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _safe_power,
    ast.BitXor: _safe_power,  # "2^10" means a power to most people
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_FUNCTIONS = {
    "sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "floor": math.floor,
    "ceil": math.ceil, "log": math.log, "log10": math.log10, "exp": math.exp,
    "sin": math.sin, "cos": math.cos, "tan": math.tan,
}
_NAMES = {"pi": math.pi, "e": math.e}
#: Characters an arithmetic expression may hold (letters only for function/constant names).
_EXPRESSION_CHARS = re.compile(r"[0-9a-z.,+\-*/%^()\s]+")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression with simpleeval (no ``eval``).

    Numbers, ``+ - * / // % ** ^`` (``^`` is a power), parentheses, ``pi``, ``e`` and
    :data:`_FUNCTIONS`.

    Raises:
        ToolError: not arithmetic, malformed, division by zero, too large.
    """
    text = expression.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression must hold 1 to {MAX_EXPRESSION_CHARS} characters")
    if not _EXPRESSION_CHARS.fullmatch(text):
        raise ToolError("not an arithmetic expression: only numbers, operators, parentheses and math functions are allowed")
    evaluator = simpleeval.SimpleEval(operators=_OPERATORS, functions=_FUNCTIONS, names=_NAMES)
    # No attribute access: "(1).to_bytes(10**9)" would call a method of int.
    del evaluator.nodes[ast.Attribute]
    try:
        result = evaluator.eval(text)
    except ToolError:
        raise
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (simpleeval.InvalidExpression, SyntaxError, TypeError, ValueError, OverflowError, KeyError) as error:
        raise ToolError(f"not a valid arithmetic expression ({type(error).__name__})") from None
    if isinstance(result, bool) or not isinstance(result, (int, float)):
        raise ToolError("not an arithmetic expression: the result is not a number")
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolError("the result is not a finite number")
    return result


def format_number(value: float) -> str:
    """``12`` for integers and integral floats, else up to 12 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value) if isinstance(value, int) else f"{value:.12g}"


class CalculatorToolImpl:
    """Arithmetic with a safe evaluator (simpleeval)."""

    name = "calculator"
    description = "Evaluate an arithmetic expression, e.g. (12 + 30) * 1.5 or sqrt(2)."
    parameters: ClassVar[dict] = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "the arithmetic expression"}},
        "required": ["expression"],
    }

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        return ToolResult(format_number(evaluate(_string_argument(arguments, "expression"))))


# -- current time ------------------------------------------------------------------
class CurrentTimeToolImpl:
    """The current date and time in an IANA time zone (zoneinfo)."""

    name = "current_time"
    description = "The current date and time in a time zone such as UTC, Europe/Paris or Asia/Shanghai."
    parameters: ClassVar[dict] = {
        "type": "object",
        "properties": {"timezone": {"type": "string", "description": "IANA time zone name; default UTC"}},
    }

    def __init__(self, clock: Callable[[], dt.datetime] | None = None) -> None:
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        name = _string_argument(arguments, "timezone", "UTC")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {name[:64]!r}; use an IANA name such as Europe/Paris") from None
        now = self._clock().astimezone(zone)
        return ToolResult(f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')}, {name})")


# -- http request ------------------------------------------------------------------
def _address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
        or address.is_reserved or address.is_unspecified or not address.is_global
    )


def resolve_checked(host: str, port: int, allow_private: bool) -> str:
    """Resolve ``host`` and return the address to connect to.

    Every address the name resolves to must be public (not private, loopback,
    link-local, multicast, reserved …) unless ``allow_private``: a name with one
    private address among public ones is refused too (server-side request forgery).

    Raises:
        ToolError: the name does not resolve, or an address is not public.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ToolError(f"cannot resolve host {host[:100]!r}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise ToolError(f"cannot resolve host {host[:100]!r}")
    if not allow_private:
        refused = [str(a) for a in addresses if not _address_is_public(a)]
        if refused:
            raise ToolError(
                f"refused: {host[:100]} resolves to a private, loopback or link-local address ({refused[0]}); "
                "the operator can allow these with RAGSOCKET_AGENT_ALLOW_PRIVATE_URLS"
            )
    return str(addresses[0])


#: Percent-encoded ".", "/" and "\\" in a path: servers may decode them into dot
#: segments or separators after our check, so such paths are refused outright.
_ENCODED_PATH_SEPARATORS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def _path_within(path: str, prefix_path: str) -> bool:
    """``path`` equals ``prefix_path`` or lies below it at a ``/`` boundary."""
    if not prefix_path or prefix_path.endswith("/"):
        return path.startswith(prefix_path)
    return path == prefix_path or path.startswith(prefix_path + "/")


def url_allowed(url: str, prefixes: list[str]) -> bool:
    """True when ``url`` has the scheme, host and port of a prefix and its path lies
    under the prefix's path.

    The path compared is the one httpx sends, with dot segments removed (RFC 3986
    section 5.2.4), so ``/api/../admin`` is ``/admin``; a path holding an encoded
    ``.``, ``/`` or ``\\`` is refused; ``/api`` admits ``/api`` and ``/api/x`` but
    not ``/apix``; ``https://api.example.com`` does not admit
    ``https://api.example.com.evil.org``; URLs with credentials are refused.
    """
    try:
        sent = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    path = sent.raw_path.decode("ascii").split("?", 1)[0]
    if sent.userinfo or _ENCODED_PATH_SEPARATORS.search(path):
        return False
    for prefix in prefixes:
        allowed = urlsplit(prefix)
        if (
            sent.scheme == allowed.scheme
            and sent.host == (allowed.hostname or "").lower()
            and sent.port == allowed.port
            and _path_within(path, allowed.path)
        ):
            return True
    return False


class HttpRequestToolImpl:
    """GET or POST to URLs of the allow-list, within a timeout and a size cap.

    The host is resolved once, every address checked (see :func:`resolve_checked`),
    and the connection made to the checked address (``Host`` and TLS SNI keep the
    name), so a second DNS answer cannot redirect it. Redirects are not followed.
    Proxies from the environment are not used.
    """

    name = "http_request"
    description = "Send an HTTP GET or POST request to an allowed URL and return the status and body."
    parameters: ClassVar[dict] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "the full URL"},
            "method": {"type": "string", "enum": ["GET", "POST"], "description": "default GET"},
            "body": {"description": "POST body: a string, or an object sent as JSON"},
        },
        "required": ["url"],
    }

    def __init__(self, spec: HttpRequestTool, allow_private: bool) -> None:
        self.spec = spec
        self.allow_private = allow_private

    def run(self, arguments: dict, timeout: float) -> ToolResult:
        url = _string_argument(arguments, "url")
        method = str(arguments.get("method") or "GET").upper()
        if method not in ("GET", "POST"):
            raise ToolError("`method` must be GET or POST")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolError("`url` must be an http:// or https:// URL")
        if not url_allowed(url, self.spec.allowed_url_prefixes):
            raise ToolError(f"refused: {url[:200]} is not under an allowed URL prefix of this agent")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve_checked(parts.hostname, port, self.allow_private)
        pinned_host = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((parts.scheme, f"{pinned_host}:{port}", parts.path or "/", parts.query, ""))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "RagSocket-agent"}
        content: bytes | None = None
        body = arguments.get("body")
        if method == "POST" and body is not None:
            if isinstance(body, str):
                content = body.encode("utf-8")
                headers["Content-Type"] = "text/plain; charset=utf-8"
            else:
                content = json.dumps(body, ensure_ascii=False).encode("utf-8")
                headers["Content-Type"] = "application/json"
        limit = min(timeout, self.spec.timeout)
        extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        return self._fetch(method, pinned, headers, content, limit, extensions)

    def _fetch(self, method: str, url: str, headers: dict, content: bytes | None, limit: float, extensions: dict) -> ToolResult:
        deadline = time.monotonic() + limit
        cap = self.spec.max_response_bytes
        received = bytearray()
        truncated = False
        try:
            with httpx.Client(timeout=limit, follow_redirects=False, trust_env=False) as client:
                with client.stream(method, url, headers=headers, content=content, extensions=extensions) as response:
                    for piece in response.iter_bytes():
                        received.extend(piece)
                        if len(received) > cap:
                            truncated = True
                            break
                        if time.monotonic() > deadline:
                            raise ToolError(f"the request timed out after {limit:g} s")
                    status, location = response.status_code, response.headers.get("location")
                    charset = response.charset_encoding or "utf-8"
        except httpx.TimeoutException:
            raise ToolError(f"the request timed out after {limit:g} s") from None
        except httpx.HTTPError as error:
            raise ToolError(f"the request failed ({type(error).__name__})") from None
        text = bytes(received[:cap]).decode(charset, errors="replace")
        lines = [f"HTTP {status}"]
        if location:
            lines.append(f"Location: {location} (redirects are not followed)")
        lines.append(text)
        if truncated:
            lines.append(f"[response truncated at {cap} bytes]")
        return ToolResult("\n".join(lines), "completed" if status < 400 else "error")


# -- the toolset of one run --------------------------------------------------------
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True)
class ToolConfig:
    """Operator settings the tools need.

    Attributes:
        allow_private_urls: ``http_request`` may reach private/loopback addresses.
        mcp_command_lines: the command lines (command and arguments, as token lists)
            an MCP stdio server may be started with (empty: none);
            ``RAGSOCKET_AGENT_MCP_COMMANDS``, see :func:`command_line_allowed`.

    An MCP server over streamable HTTP needs no command; its address is checked like
    ``http_request``'s (``allow_private_urls``).
    """

    allow_private_urls: bool = False
    mcp_command_lines: frozenset[tuple[str, ...]] = frozenset()


MCP_COMMANDS_SETTING = "RAGSOCKET_AGENT_MCP_COMMANDS"


def command_line(spec: McpTool) -> tuple[str, ...]:
    """The command line of a stdio MCP server: ``(command, *args)``."""
    return (spec.command or "", *spec.args)


def command_line_allowed(spec: McpTool, allowed: frozenset[tuple[str, ...]]) -> bool:
    """True when the stdio server's command line is exactly one of ``allowed``: the
    same tokens in the same order (no prefix, pattern or path lookup)."""
    return command_line(spec) in allowed


def check_mcp_commands(definition: AgentDefinition, allowed: frozenset[tuple[str, ...]]) -> None:
    """Refuse a definition naming a stdio MCP server the operator does not allow.

    Raises:
        ArgumentError: the first stdio server whose command line is not in ``allowed``;
            the message names the field, the command line and the setting.
    """
    for index, spec in enumerate(definition.tools):
        if isinstance(spec, McpTool) and spec.transport == "stdio" and not command_line_allowed(spec, allowed):
            reason = (
                "it is empty, so stdio MCP servers are disabled on this server"
                if not allowed else "an entry must equal the command and all its arguments exactly"
            )
            raise ArgumentError(
                f"`dsl.tools.{index}.mcp`: the command line `{shlex.join(command_line(spec))}` is not allowed "
                f"by {MCP_COMMANDS_SETTING} ({reason})"
            )


class Toolset:
    """The tools of one agent run, by name; MCP servers are started on first use of
    :meth:`schemas` (the offline plan never starts them) and stopped by :meth:`close`.

    Args:
        definition: the agent.
        config: operator settings.
        retrieve: the retrieval function (``retrieval_service.retrieve``).
    """

    def __init__(self, definition: AgentDefinition, config: ToolConfig, retrieve: Retriever) -> None:
        self.references = References()
        self.tools: dict[str, Tool] = {}
        self._mcp_specs: list[McpTool] = []
        self._mcp_clients: list[Any] = []
        self._config = config
        for spec in definition.tools:
            if isinstance(spec, RetrievalTool):
                self.tools["retrieval"] = RetrievalToolImpl(spec, retrieve, self.references)
            elif spec.type == "calculator":
                self.tools["calculator"] = CalculatorToolImpl()
            elif spec.type == "current_time":
                self.tools["current_time"] = CurrentTimeToolImpl()
            elif isinstance(spec, HttpRequestTool):
                self.tools["http_request"] = HttpRequestToolImpl(spec, config.allow_private_urls)
            elif isinstance(spec, McpTool):
                self._mcp_specs.append(spec)
        self._mcp_started = not self._mcp_specs

    def _start_mcp(self) -> None:
        from api.agent.mcp_client import (  # the mcp package is only loaded when used
            McpClient,
            McpHttpClient,
        )

        self._mcp_started = True
        for spec in self._mcp_specs:
            if spec.transport == "streamable_http":
                # the address is checked by start(), as for http_request
                client = McpHttpClient(spec.url, spec.timeout, self._config.allow_private_urls)
            elif not command_line_allowed(spec, self._config.mcp_command_lines):
                # checked when the agent was saved; the operator changed the setting since
                logger.warning(
                    "agent MCP server command line `%s` is not allowed by %s; not started",
                    shlex.join(command_line(spec)), MCP_COMMANDS_SETTING,
                )
                continue
            else:
                client = McpClient(spec.command, spec.args, spec.env, spec.timeout)
            try:
                listed = client.start()
            except ToolError as error:
                logger.warning("MCP server %r did not start: %s", client.label, error)
                client.close()
                continue
            self._mcp_clients.append(client)
            for tool in listed:
                name = _TOOL_NAME.sub("_", tool.name)[:64]
                if name in self.tools:
                    name = f"mcp_{len(self._mcp_clients)}_{name}"[:64]
                self.tools[name] = tool

    def schemas(self) -> list[dict]:
        """OpenAI ``tools`` entries (``{"type": "function", "function": {…}}``)."""
        if not self._mcp_started:
            self._start_mcp()
        return [
            {"type": "function", "function": {"name": name, "description": tool.description, "parameters": tool.parameters}}
            for name, tool in self.tools.items()
        ]

    def call(self, name: str, arguments: Any, timeout: float) -> ToolResult:
        """Run a tool; every failure becomes a result with ``status="error"``."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"error: there is no tool named {name[:64]!r}", "error")
        if not isinstance(arguments, dict):
            return ToolResult("error: the arguments must be a JSON object", "error")
        try:
            return tool.run(arguments, max(timeout, 0.001))
        except ToolError as error:
            return ToolResult(f"error: {error}", "error")
        except Exception:
            logger.exception("agent tool %s failed", name)
            return ToolResult("error: the tool failed unexpectedly", "error")

    def close(self) -> None:
        """Stop the MCP servers started by this run."""
        for client in self._mcp_clients:
            client.close()
        self._mcp_clients.clear()
