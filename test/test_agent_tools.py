"""Agent tools, the agent definition, the offline plan and the agent frames, in process
(no RagSocket server): each tool against real endpoints (a loopback HTTP server, a
stdio MCP server and a streamable-HTTP MCP server started by the test); and MCP over
streamable HTTP through real servers (private URLs allowed, and refused)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect

from api.agent.dsl import (
    AgentDefinition,
    HttpRequestTool,
    from_ragflow_canvas,
    parse_definition,
)
from api.agent.mcp_client import McpClient, describe_failure, leaf_exceptions
from api.agent.tools import (
    CalculatorToolImpl,
    CurrentTimeToolImpl,
    HttpRequestToolImpl,
    ToolConfig,
    ToolError,
    Toolset,
    check_mcp_commands,
    evaluate,
    resolve_checked,
    url_allowed,
)
from api.db.services.agent_service import (
    MessageDelta,
    MessageEnd,
    Thinking,
    ToolCallEnd,
    ToolCallStart,
    extract_expression,
    offline_plan,
)
from api.streaming.agent_frames import (
    SSE_DONE,
    AgentFramer,
    AgentSSEFramer,
    agent_sse_event,
)
from common.errors import ArgumentError, DataError
from common.settings import SettingsError, load_settings, split_command_lines
from test.support.agents import MCP_SERVER, ragflow_canvas, serve_http
from test.support.server import (
    ServerProcess,
    api_client,
    auth,
    free_port,
    ok,
    unique,
    variant_env,
)
from test.support.ws import agent_url, ask


# -- calculator ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "expected"),
    [("(2 + 3) * 4", "20"), ("2^10", "1024"), ("2**0.5 * 2**0.5", "2"), ("sqrt(16) + abs(-2)", "6"), ("7 / 2", "3.5"), ("10 % 4", "2"), ("round(pi, 3)", "3.142")],
)
def test_calculator_evaluates_arithmetic(expression, expected):
    assert CalculatorToolImpl().run({"expression": expression}, 1).content == expected


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os').system('id')", "not an arithmetic expression"),
        ("open", "not a valid arithmetic expression"),
        ("'a' * 10", "not an arithmetic expression"),
        ("1 < 2", "not an arithmetic expression"),
        ("1 / 0", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("(1).to_bytes(10 ** 9)", "not an arithmetic expression"),  # "_" is refused
        ("pi.real", "not a valid arithmetic expression"),  # no attribute access
        ("(2).conjugate()", "not a valid arithmetic expression"),  # nor method calls
        ("x.__class__", "not an arithmetic expression"),
        ("2 +", "not a valid arithmetic expression"),
        ("x" * 300, "1 to 256 characters"),
    ],
)
def test_calculator_refuses_what_is_not_arithmetic(expression, fragment):
    with pytest.raises(ToolError) as raised:
        evaluate(expression)
    assert fragment in str(raised.value)


def test_calculator_needs_an_expression_argument():
    with pytest.raises(ToolError, match="`expression` is required"):
        CalculatorToolImpl().run({}, 1)


# -- current time --------------------------------------------------------------------
def test_current_time_in_a_zone():
    clock = lambda: dt.datetime(2024, 1, 1, 23, 30, tzinfo=dt.UTC)
    tool = CurrentTimeToolImpl(clock)
    assert tool.run({"timezone": "Asia/Shanghai"}, 1).content == "2024-01-02T07:30:00+08:00 (Tuesday, Asia/Shanghai)"
    assert tool.run({}, 1).content == "2024-01-01T23:30:00+00:00 (Monday, UTC)"
    with pytest.raises(ToolError, match="unknown time zone 'Mars/Olympus'"):
        tool.run({"timezone": "Mars/Olympus"}, 1)


def test_current_time_is_now():
    content = CurrentTimeToolImpl().run({"timezone": "UTC"}, 1).content
    stamp = dt.datetime.fromisoformat(content.split(" ")[0])
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 5


# -- http_request --------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/data/ok":
            self._send(200, f"hello from {self.headers['Host']}".encode())
        elif self.path == "/data/big":
            self._send(200, b"x" * 100_000)
        elif self.path == "/data/slow":
            time.sleep(2)
            self._send(200, b"late")
        elif self.path == "/data/redirect":
            self._send(302, b"", {"Location": "http://169.254.169.254/latest/meta-data"})
        elif self.path == "/data/missing":
            self._send(404, b"no such thing")
        else:
            self._send(200, b"outside the prefix")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, b"got " + self.headers["Content-Type"].encode() + b" " + body)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    with serve_http(_Handler) as url:
        yield url


def http_tool(base: str, allow_private: bool = True, **fields) -> HttpRequestToolImpl:
    spec = HttpRequestTool(type="http_request", allowed_url_prefixes=[f"{base}/data/"], **fields)
    return HttpRequestToolImpl(spec, allow_private)


def test_http_get_and_post_under_the_prefix(http_base):
    tool = http_tool(http_base)
    host = http_base.removeprefix("http://")
    assert tool.run({"url": f"{http_base}/data/ok"}, 5).content == f"HTTP 200\nhello from {host}"
    posted = tool.run({"url": f"{http_base}/data/echo", "method": "POST", "body": {"a": 1}}, 5)
    assert posted.content == 'HTTP 200\ngot application/json {"a": 1}'
    missing = tool.run({"url": f"{http_base}/data/missing"}, 5)
    assert (missing.status, missing.content) == ("error", "HTTP 404\nno such thing")


def test_http_redirect_is_not_followed(http_base):
    result = http_tool(http_base).run({"url": f"{http_base}/data/redirect"}, 5)
    assert result.content == "HTTP 302\nLocation: http://169.254.169.254/latest/meta-data (redirects are not followed)\n"


def test_http_response_size_cap(http_base):
    result = http_tool(http_base, max_response_bytes=1000).run({"url": f"{http_base}/data/big"}, 5)
    assert result.content == "HTTP 200\n" + "x" * 1000 + "\n[response truncated at 1000 bytes]"


def test_http_timeout(http_base):
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 0.5 s"):
        http_tool(http_base, timeout=0.5).run({"url": f"{http_base}/data/slow"}, 5)
    assert time.monotonic() - started < 1.5


def test_http_prefix_not_allowed(http_base):
    tool = http_tool(http_base)
    for url in (f"{http_base}/other", f"{http_base}/dat", "http://127.0.0.1.nip.io/data/ok", f"{http_base.replace('http', 'https')}/data/ok"):
        with pytest.raises(ToolError, match="not under an allowed URL prefix"):
            tool.run({"url": url}, 5)
    with pytest.raises(ToolError, match="`method` must be GET or POST"):
        tool.run({"url": f"{http_base}/data/ok", "method": "DELETE"}, 5)


def test_http_loopback_refused_unless_allowed(http_base):
    with pytest.raises(ToolError) as raised:
        http_tool(http_base, allow_private=False).run({"url": f"{http_base}/data/ok"}, 5)
    assert str(raised.value).startswith("refused: 127.0.0.1 resolves to a private, loopback or link-local address (127.0.0.1)")


@pytest.mark.parametrize("host", ["localhost", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "0.0.0.0", "100.64.0.1", "::ffff:127.0.0.1"])
def test_private_addresses_refused(host):
    with pytest.raises(ToolError, match="refused"):
        resolve_checked(host, 80, allow_private=False)
    assert resolve_checked(host, 80, allow_private=True)


def test_public_address_accepted():
    assert resolve_checked("8.8.8.8", 80, allow_private=False) == "8.8.8.8"


def test_url_prefix_matching():
    prefixes = ["https://api.example.com/v1/"]
    assert url_allowed("https://api.example.com/v1/items?q=1", prefixes)
    assert not url_allowed("https://api.example.com.evil.org/v1/items", prefixes)
    assert not url_allowed("https://api.example.com:8443/v1/items", prefixes)
    assert not url_allowed("https://user@api.example.com/v1/items", prefixes)
    assert not url_allowed("http://api.example.com/v1/items", prefixes)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1/../admin", False),  # httpx sends /admin
        ("https://api.example.com/v1/./items", True),  # sent as /v1/items
        ("https://api.example.com/v1/%2e%2e/admin", False),  # a server may decode it
        ("https://api.example.com/v1/a%2Fb", False),
        ("https://api.example.com/v1x", False),  # prefix /v1 ends at a "/" boundary
        ("https://api.example.com/v1", True),
        ("https://api.example.com/v1/items", True),
        ("https://api.example.com/v2/items", False),
        ("https://API.example.com/v1/items", True),
        ("not a url at all", False),
    ],
)
def test_url_prefix_is_checked_on_the_path_that_is_sent(url, allowed):
    assert url_allowed(url, ["https://api.example.com/v1"]) is allowed


# -- toolset and MCP -----------------------------------------------------------------
def test_toolset_turns_failures_into_error_results():
    toolset = Toolset(parse_definition({"tools": [{"type": "calculator"}]}), ToolConfig(), retrieve=None)
    assert toolset.call("calculator", {"expression": "1/0"}, 1).content == "error: division by zero"
    assert toolset.call("nope", {}, 1).content == "error: there is no tool named 'nope'"
    assert toolset.call("calculator", ["1"], 1).content == "error: the arguments must be a JSON object"
    assert [s["function"]["name"] for s in toolset.schemas()] == ["calculator"]


#: The echo MCP server's command line, as RAGSOCKET_AGENT_MCP_COMMANDS allows it.
ECHO_LINE = (sys.executable, MCP_SERVER)


def mcp_toolset(allowed: frozenset[tuple[str, ...]], timeout: float = 10, command: str = sys.executable, args: tuple[str, ...] = (MCP_SERVER,)) -> Toolset:
    definition = parse_definition({"tools": [{"type": "mcp", "command": command, "args": list(args), "timeout": timeout}]})
    return Toolset(definition, ToolConfig(mcp_command_lines=allowed), retrieve=None)


def check_echo_server_tools(toolset: Toolset, text: str, sleep_seconds: float) -> None:
    """The echo MCP server's tools, listed and called through ``toolset`` (closed after):
    ``echo`` of ``text``, ``add``, ``fail``, and ``sleep`` for ``sleep_seconds`` cut at 0.5 s."""
    try:
        schemas = {s["function"]["name"]: s["function"] for s in toolset.schemas()}
        assert sorted(schemas) == ["add", "echo", "fail", "sleep"]
        assert schemas["echo"]["parameters"]["required"] == ["text"]
        assert toolset.call("echo", {"text": text}, 5).content == f"echo: {text}"
        assert toolset.call("add", {"a": 2, "b": 3}, 5).content == "5.0"
        failed = toolset.call("fail", {}, 5)
        assert (failed.status, failed.content) == ("error", "error: Error executing tool fail")
        started = time.monotonic()
        slow = toolset.call("sleep", {"seconds": sleep_seconds}, 0.5)
        assert (slow.status, slow.content) == ("error", "error: the MCP tool 'sleep' timed out after 0.5 s")
        assert time.monotonic() - started < 2
        assert toolset.call("echo", {"text": "still there"}, 5).content == "echo: still there"
    finally:
        toolset.close()


def test_mcp_tools_listed_and_called():
    check_echo_server_tools(mcp_toolset(frozenset({ECHO_LINE})), "hi", sleep_seconds=5)


@pytest.mark.parametrize(
    "allowed",
    [
        frozenset(),
        frozenset({(sys.executable,)}),  # the command alone does not allow arguments
        frozenset({(sys.executable, MCP_SERVER, "--transport", "stdio")}),  # nor fewer arguments
        frozenset({(MCP_SERVER, sys.executable)}),  # nor the same tokens in another order
    ],
)
def test_mcp_command_line_not_allowed_is_not_started(allowed, caplog):
    toolset = mcp_toolset(allowed)
    with caplog.at_level(logging.WARNING, logger="api.agent.tools"):
        assert toolset.schemas() == []
    assert toolset.call("echo", {"text": "hi"}, 5).status == "error"
    assert f"agent MCP server command line `{shlex.join(ECHO_LINE)}` is not allowed by RAGSOCKET_AGENT_MCP_COMMANDS" in caplog.text


def test_interpreter_allowed_with_its_script_cannot_run_other_code(tmp_path):
    """The review's case: with python3 allowed for one server, ``-c <code>`` is refused."""
    marker = tmp_path / "ran"
    definition = parse_definition({"tools": [{"type": "mcp", "command": sys.executable, "args": ["-c", f"open({str(marker)!r}, 'w')"]}]})
    with pytest.raises(ArgumentError) as raised:
        check_mcp_commands(definition, frozenset({ECHO_LINE}))
    assert raised.value.code == 101
    toolset = Toolset(definition, ToolConfig(mcp_command_lines=frozenset({ECHO_LINE})), retrieve=None)
    assert toolset.schemas() == []
    toolset.close()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "lines"),
    [
        ("", []),
        (" , ,", []),
        ("/usr/bin/python3", [("/usr/bin/python3",)]),
        ("/usr/bin/python3 /opt/mcp/server.py, npx -y @modelcontextprotocol/server-filesystem /srv/docs",
         [("/usr/bin/python3", "/opt/mcp/server.py"), ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/docs")]),
        ("""python3 "/opt/my server.py" 'a,b', node x\\,y\\ z""", [("python3", "/opt/my server.py", "a,b"), ("node", "x,y z")]),
        ("""cmd "say \\"hi, there\\"" """, [("cmd", 'say "hi, there"')]),
    ],
)
def test_mcp_allow_list_entries_are_command_lines(value, lines):
    assert split_command_lines(value) == lines
    assert load_settings(agent_mcp_commands=value).agent_mcp_command_lines == frozenset(lines)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('ok, x "y', "RAGSOCKET_AGENT_MCP_COMMANDS: Value error, entry 2 ('x \"y') is not a command line: No closing quotation"),
        ('"" x', "RAGSOCKET_AGENT_MCP_COMMANDS: Value error, entry 1 ('\"\" x') has an empty command"),
    ],
)
def test_mcp_allow_list_malformed_names_the_setting(value, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(agent_mcp_commands=value)
    assert str(raised.value).startswith(message), str(raised.value)


def test_definition_with_a_command_line_not_allowed_is_refused():
    python_c = {"type": "mcp", "command": "/usr/bin/python3", "args": ["-c", "import os; os.system('id')"]}
    server = {"type": "mcp", "command": "/usr/bin/python3", "args": ["/opt/mcp/server.py"]}
    http = {"type": "mcp", "transport": "streamable_http", "url": "https://mcp.example.com/mcp"}
    allowed = frozenset(split_command_lines("/usr/bin/python3 /opt/mcp/server.py"))
    check_mcp_commands(parse_definition({"tools": [http, server]}), allowed)
    check_mcp_commands(parse_definition({"tools": [http]}), frozenset())  # no allow-list for HTTP servers
    with pytest.raises(ArgumentError) as raised:
        check_mcp_commands(parse_definition({"tools": [http, server, python_c]}), allowed)
    assert (raised.value.code, raised.value.message) == (101, (
        "`dsl.tools.2.mcp`: the command line `/usr/bin/python3 -c 'import os; os.system('\"'\"'id'\"'\"')'` "
        "is not allowed by RAGSOCKET_AGENT_MCP_COMMANDS (an entry must equal the command and all its arguments exactly)"
    ))
    with pytest.raises(ArgumentError) as raised:
        check_mcp_commands(parse_definition({"tools": [server]}), frozenset())
    assert raised.value.message == (
        "`dsl.tools.0.mcp`: the command line `/usr/bin/python3 /opt/mcp/server.py` is not allowed by "
        "RAGSOCKET_AGENT_MCP_COMMANDS (it is empty, so stdio MCP servers are disabled on this server)"
    )


@pytest.mark.parametrize(
    "name",
    ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
     "pythonpath", "NODE_OPTIONS", "NODE_PATH", "PATH", "HOME", "BASH_ENV", "ENV", "PERL5OPT", "RUBYOPT",
     "BASH_FUNC_ls", "npm_config_registry", "GCONV_PATH", "JAVA_TOOL_OPTIONS", "UV_INDEX_URL", "PIP_INDEX_URL"],
)
def test_mcp_env_that_changes_how_a_program_runs_is_refused(name):
    with pytest.raises(ArgumentError) as raised:
        parse_definition({"tools": [{"type": "mcp", "command": "server", "env": {"LOG_LEVEL": "info", name: "x"}}]})
    assert raised.value.message == (
        f"`dsl.tools.0.mcp.env`: {name} may not be set: it changes how the server's program is loaded or run "
        "(refused: PATH, LD_*, DYLD_*, PYTHON*, NODE_OPTIONS, NODE_PATH, NPM_CONFIG_*, BASH_ENV, ENV, PERL5OPT, RUBYOPT "
        "and the others listed in docs/agents.md)"
    )


def test_mcp_env_names_and_values_checked():
    env = {"LOG_LEVEL": "info", "NODE_ENV": "production", "API_TOKEN": "s3cret", "_X1": ""}
    assert parse_definition({"tools": [{"type": "mcp", "command": "server", "env": env}]}).tool("mcp").env == env
    for bad, message in [
        ({"A=B": "1"}, "`dsl.tools.0.mcp.env`: 'A=B' is not an environment variable name (letters, digits and _, not starting with a digit)"),
        ({"BASH_FUNC_ls%%": "() { id; }"}, "`dsl.tools.0.mcp.env`: 'BASH_FUNC_ls%%' is not an environment variable name"),
        ({"X": "a\0b"}, "`dsl.tools.0.mcp.env`: the value of X holds a NUL character"),
    ]:
        with pytest.raises(ArgumentError) as raised:
            parse_definition({"tools": [{"type": "mcp", "command": "server", "env": bad}]})
        assert raised.value.message.startswith(message), raised.value.message


@pytest.mark.parametrize(
    ("command", "cause"),
    [
        ("/bin/false", "MCPError: Connection closed"),
        ("/nonexistent/mcp-server", "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/mcp-server'"),
    ],
)
def test_mcp_start_failure_logs_its_cause(command, cause, caplog):
    toolset = mcp_toolset(frozenset({(command,)}), timeout=10, command=command, args=())
    with caplog.at_level(logging.WARNING):
        assert toolset.schemas() == []
    toolset.close()
    assert f"MCP server '{command}' did not start: {cause}" in caplog.text
    assert "ExceptionGroup" not in caplog.text


def test_mcp_failure_causes_unwrapped():
    error = ExceptionGroup("outer", [ExceptionGroup("inner", [MCPError(-32000, "Connection closed")]), TimeoutError(), OSError(5, "I/O error")])
    inner = ValueError("v")
    assert leaf_exceptions(ExceptionGroup("g", [inner])) == [inner] and leaf_exceptions(inner) == [inner]
    assert describe_failure(error) == "MCPError: Connection closed; TimeoutError; OSError: [Errno 5] I/O error"
    assert describe_failure(ExceptionGroup("g", [OSError("same"), OSError("same")])) == "OSError: same"


def test_mcp_unexpected_start_failure_is_logged_with_its_traceback(caplog):
    class Broken(McpClient):
        def _transport(self):
            raise KeyError("a bug")

    client = Broken("server", [], {}, 5)
    with caplog.at_level(logging.WARNING, logger="api.agent.mcp_client"), pytest.raises(ToolError) as raised:
        client.start()
    client.close()
    assert str(raised.value) == "KeyError: 'a bug'"
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "MCP server 'server' failed unexpectedly: KeyError: 'a bug'"
    assert record.exc_info is not None


# -- MCP over streamable HTTP ----------------------------------------------------------
def wait_listening(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the MCP server exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the MCP server did not listen on {port} within {timeout} s")


@pytest.fixture(scope="module")
def mcp_http_url() -> Iterator[str]:
    """The echo MCP server on a loopback port, streamable-HTTP transport."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, MCP_SERVER, "--transport", "streamable-http", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


def mcp_http_toolset(url: str, allow_private: bool, timeout: float = 10) -> Toolset:
    definition = parse_definition({"tools": [{"type": "mcp", "transport": "streamable_http", "url": url, "timeout": timeout}]})
    return Toolset(definition, ToolConfig(allow_private_urls=allow_private), retrieve=None)


def test_mcp_streamable_http_definition():
    tool = parse_definition({"tools": [{"type": "mcp", "transport": "streamable_http", "url": "https://mcp.example.com/mcp"}]}).tool("mcp")
    assert (tool.transport, tool.url, tool.command, tool.timeout) == ("streamable_http", "https://mcp.example.com/mcp", None, 30.0)
    stdio = parse_definition({"tools": [{"type": "mcp", "command": "x"}]}).tool("mcp")
    assert (stdio.transport, stdio.url) == ("stdio", None)
    stored = parse_definition({"tools": [{"type": "mcp", "transport": "streamable_http", "url": "http://x/mcp"}]}).model_dump(mode="json")
    assert parse_definition(stored).model_dump(mode="json") == stored, "the stored form validates again"


def test_mcp_streamable_http_tools_listed_and_called(mcp_http_url):
    check_echo_server_tools(mcp_http_toolset(mcp_http_url, allow_private=True), "over http", sleep_seconds=3)


def test_mcp_streamable_http_loopback_refused_unless_allowed(mcp_http_url, caplog):
    toolset = mcp_http_toolset(mcp_http_url, allow_private=False)
    with caplog.at_level(logging.WARNING, logger="api.agent.tools"):
        assert toolset.schemas() == []
    assert toolset.call("echo", {"text": "hi"}, 5).content == "error: there is no tool named 'echo'"
    assert "refused: 127.0.0.1 resolves to a private, loopback or link-local address (127.0.0.1)" in caplog.text
    assert "RAGSOCKET_AGENT_ALLOW_PRIVATE_URLS" in caplog.text
    toolset.close()


def test_mcp_streamable_http_server_not_answering():
    toolset = mcp_http_toolset(f"http://127.0.0.1:{free_port()}/mcp", allow_private=True, timeout=2)
    started = time.monotonic()
    assert toolset.schemas() == []
    assert time.monotonic() - started < 5
    toolset.close()


@pytest.fixture(scope="module")
def private_urls_server(server_env, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server allowing private URLs (the shared ``server`` keeps them refused)."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "private-urls", RAGSOCKET_AGENT_ALLOW_PRIVATE_URLS="true")) as process:
        yield process


async def test_mcp_streamable_http_through_the_server(server, private_urls_server, tenant, mcp_http_url):
    dsl = {"llm": {"model_name": "agent-tool"}, "tools": [{"type": "mcp", "transport": "streamable_http", "url": mcp_http_url, "timeout": 20}]}
    async with api_client(server, tenant) as api:
        agent = ok(await api.post("/agents", json={"title": unique("mcp-http"), "dsl": dsl}))
    assert agent["dsl"]["tools"][0] | {"timeout": 0} == {
        "type": "mcp", "transport": "streamable_http", "url": mcp_http_url, "command": None, "args": [], "env": {}, "timeout": 0,
    }
    question = json.dumps({"tool": "echo", "arguments": {"text": "hello over http"}})
    async with connect(agent_url(private_urls_server, agent["id"]), additional_headers=auth(tenant)) as ws:
        frames = await ask(ws, question)
    ends = [f["data"] for f in frames if f.get("event") == "tool_call_end"]
    assert [(e["tool_name"], e["status"], e["result"]) for e in ends] == [("echo", "completed", "echo: hello over http")]
    answer = "".join(f["data"]["content"] for f in frames if f.get("event") == "message")
    assert answer == "Tool result: echo: hello over http"
    async with connect(agent_url(server, agent["id"]), additional_headers=auth(tenant)) as ws:
        refused = await ask(ws, question)
    (end,) = [f["data"] for f in refused if f.get("event") == "tool_call_end"]
    assert (end["status"], end["result"]) == ("error", "error: there is no tool named 'echo'"), "loopback refused by default"
    assert "refused: 127.0.0.1 resolves to a private, loopback or link-local address" in server.log_tail(200)


# -- the definition ------------------------------------------------------------------
def test_definition_defaults():
    definition = parse_definition({})
    assert (definition.max_iterations, definition.time_limit, definition.tools) == (5, 60.0, [])
    assert definition.llm.model_name == "ragsocket-offline"


@pytest.mark.parametrize(
    ("dsl", "message"),
    [
        ({"max_iterations": 0}, "`dsl.max_iterations`: Input should be greater than or equal to 1"),
        ({"max_iterations": 21}, "`dsl.max_iterations`: Input should be less than or equal to 20"),
        ({"time_limit": 0}, "`dsl.time_limit`: Input should be greater than 0"),
        ({"tools": [{"type": "shell"}]}, "`dsl.tools.0`: Input tag 'shell' found using 'type' does not match any of the expected tags"),
        ({"tools": [{"type": "retrieval"}]}, "`dsl.tools.0.retrieval.dataset_ids`: Field required"),
        ({"tools": [{"type": "calculator"}, {"type": "calculator"}]}, "`dsl`: the tool 'calculator' is listed twice"),
        ({"tools": [{"type": "http_request", "allowed_url_prefixes": ["ftp://x/"]}]}, "`dsl.tools.0.http_request.allowed_url_prefixes`: 'ftp://x/' is not an http:// or https:// URL prefix with a host"),
        ({"tools": [{"type": "mcp", "transport": "sse", "command": "x"}]}, "`dsl.tools.0.mcp.transport`: Input should be 'stdio' or 'streamable_http'"),
        ({"tools": [{"type": "mcp"}]}, "`dsl.tools.0.mcp`: `command` is required with transport 'stdio'"),
        ({"tools": [{"type": "mcp", "transport": "streamable_http"}]}, "`dsl.tools.0.mcp`: `url` is required with transport 'streamable_http'"),
        ({"tools": [{"type": "mcp", "transport": "streamable_http", "url": "ftp://x/mcp"}]}, "`dsl.tools.0.mcp.url`: 'ftp://x/mcp' is not an http:// or https:// URL with a host"),
        ({"tools": [{"type": "mcp", "transport": "streamable_http", "url": "http://u:p@x/mcp"}]}, "`dsl.tools.0.mcp.url`: 'http://u:p@x/mcp': the URL may not hold credentials or a fragment"),
        ({"tools": [{"type": "mcp", "transport": "streamable_http", "url": "http://x/mcp", "command": "y"}]}, "`dsl.tools.0.mcp`: `command`, `args` and `env` are for transport 'stdio'; 'streamable_http' takes `url`"),
        ({"tools": [{"type": "mcp", "command": "y", "url": "http://x/mcp"}]}, "`dsl.tools.0.mcp`: `url` is for transport 'streamable_http'; 'stdio' takes `command`"),
        ({"temperature": 1}, "`dsl.temperature`: Extra inputs are not permitted"),
        ({"llm": {"temperature": 3}}, "`dsl.llm.temperature`: Input should be less than or equal to 2"),
    ],
)
def test_definition_errors_name_the_field(dsl, message):
    with pytest.raises(ArgumentError) as raised:
        parse_definition(dsl)
    assert raised.value.message.startswith(message), raised.value.message


def canvas(agent_params: dict, extra: dict | None = None) -> dict:
    return ragflow_canvas(agent_params, extra, prologue="Hello from the canvas", agent="Agent:Brave", message="Message:Calm")


def test_canvas_mapped_onto_our_definition():
    params = {
        "llm_id": "qwen-plus@Tongyi-Qianwen", "sys_prompt": "Be brief.", "temperature": 0.3, "max_rounds": 3,
        "tools": [{"component_name": "Retrieval", "name": "Retrieval", "params": {"kb_ids": ["kb1"], "top_n": 4, "similarity_threshold": 0.1}}],
    }
    assert from_ragflow_canvas(canvas(params)) == {
        "llm": {"model_name": "qwen-plus", "temperature": 0.3},
        "tools": [{"type": "retrieval", "dataset_ids": ["kb1"], "top_n": 4, "similarity_threshold": 0.1}],
        "system_prompt": "Be brief.",
        "max_iterations": 3,
        "prologue": "Hello from the canvas",
    }
    definition = parse_definition(canvas(params))
    assert isinstance(definition, AgentDefinition) and definition.tool("retrieval").top_n == 4


def test_canvas_with_other_components_refused():
    extra = {"Categorize:Sharp": {"obj": {"component_name": "Categorize", "params": {}}, "downstream": [], "upstream": []},
             "Switch:Odd": {"obj": {"component_name": "Switch", "params": {}}, "downstream": [], "upstream": []}}
    with pytest.raises(ArgumentError) as raised:
        parse_definition(canvas({}, extra))
    assert raised.value.message == (
        "unsupported canvas components: Categorize:Sharp (Categorize), Switch:Odd (Switch); "
        "only the template Begin → Agent → Message can be imported"
    )


def test_canvas_with_other_tools_refused():
    params = {"tools": [{"component_name": "TavilySearch", "params": {}}, {"component_name": "Retrieval", "params": {"kb_ids": ["a"]}}], "mcp": [{"mcp_id": "m1"}]}
    with pytest.raises(ArgumentError) as raised:
        parse_definition(canvas(params))
    assert raised.value.message == (
        "unsupported agent tools in the canvas: TavilySearch, mcp (servers registered in RAGFlow); supported: Retrieval"
    )


# -- the offline plan ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("question", "expression"),
    [
        ("What is 12 * (3 + 4)?", "12 * (3 + 4)"),
        ("How many days to return, and what is 30 * 2?", "30 * 2"),
        ("compute 2^10 please", "2^10"),
        ("6×7", "6*7"),
        ("What is the return policy for 2024?", None),
        ("Call me at 555-1234", "555-1234"),
    ],
)
def test_extract_expression(question, expression):
    assert extract_expression(question) == expression


def test_offline_plan_order():
    definition = parse_definition({"tools": [{"type": "current_time"}, {"type": "calculator"}, {"type": "retrieval", "dataset_ids": ["d"]}]})
    assert offline_plan(definition, "What time is it in Europe/Paris, and what is 2+2?") == [
        ("retrieval", {"question": "What time is it in Europe/Paris, and what is 2+2?"}),
        ("calculator", {"expression": "2+2"}),
        ("current_time", {"timezone": "Europe/Paris"}),
    ]
    assert offline_plan(parse_definition({"tools": [{"type": "calculator"}]}), "Hello there") == []


# -- frames --------------------------------------------------------------------------
EVENTS = [
    Thinking(1, "m1", "s1"),
    ToolCallStart("c1", "calculator", {"expression": "1+1"}, "m1", "s1"),
    ToolCallEnd("c1", "calculator", "2", "completed", 3, "m1", "s1"),
    MessageDelta("Two", "m1", "s1"),
    MessageEnd("Two", {"total": 0, "chunks": [], "doc_aggs": []}, [{"call_id": "c1"}], "m1", "s1"),
]


def test_agent_framer_frames():
    framer = AgentFramer(req_id="r1")
    frames = [frame for event in EVENTS for frame in framer.feed(event)]
    common = {"session_id": "s1", "id": "m1"}
    assert frames == [
        {"code": 0, "message": "", "event": "thinking", "data": {"step": 1, **common, "seq": 1}, "req_id": "r1"},
        {"code": 0, "message": "", "event": "tool_call_start", "data": {"call_id": "c1", "tool_name": "calculator", "arguments": {"expression": "1+1"}, **common, "seq": 2}, "req_id": "r1"},
        {"code": 0, "message": "", "event": "tool_call_end", "data": {"call_id": "c1", "tool_name": "calculator", "result": "2", "status": "completed", "elapsed_ms": 3, **common, "seq": 3}, "req_id": "r1"},
        {"code": 0, "message": "", "event": "message", "data": {"content": "Two", **common, "seq": 4}, "req_id": "r1"},
        {"code": 0, "message": "", "event": "message_end", "data": {"content": "Two", "reference": {"total": 0, "chunks": [], "doc_aggs": []}, "tool_calls": [{"call_id": "c1"}], **common, "seq": 5}, "req_id": "r1"},
    ]
    assert framer.end() == {"code": 0, "message": "", "data": True, "req_id": "r1"}


def test_agent_framer_without_stream_sends_message_end_only():
    framer = AgentFramer(stream=False)
    frames = [frame for event in EVENTS for frame in framer.feed(event)]
    assert [f["event"] for f in frames] == ["message_end"] and frames[0]["data"]["seq"] == 1


def test_agent_framer_error_frame():
    framer = AgentFramer()
    framer.feed(EVENTS[0])
    assert framer.fail(DataError("gone")) == {
        "code": 102, "message": "gone", "event": "error",
        "data": {"answer": "**ERROR**: gone", "reference": [], "id": "m1", "session_id": "s1", "seq": 2},
    }


def test_sse_framer_payloads():
    framer = AgentSSEFramer(clock=lambda: 1700000000.5)
    payloads = [p for event in EVENTS for p in framer.feed(event)]
    assert [p["event"] for p in payloads] == ["thinking", "tool_call_start", "tool_call_end", "message", "message_end"]
    assert payloads[3] == {"event": "message", "message_id": "m1", "session_id": "s1", "created_at": 1700000000, "data": {"content": "Two"}}
    assert agent_sse_event(payloads[3]) == "data:" + json.dumps(payloads[3], separators=(",", ":")) + "\n\n"
    assert agent_sse_event(framer.end()) == SSE_DONE == "data:[DONE]\n\n"
