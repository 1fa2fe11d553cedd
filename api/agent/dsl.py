"""The agent definition (an agent's ``dsl``) and the RAGFlow canvas import.

Our definition (documented in ``docs/agents.md``)::

    {"system_prompt": str, "prologue": str,
     "llm": {"model_name": str, "temperature": float | null, "top_p": …, "max_tokens": …},
     "tools": [{"type": "retrieval", "dataset_ids": [...], "top_n": 6, "similarity_threshold": 0.2}
             | {"type": "calculator"} | {"type": "current_time"}
             | {"type": "http_request", "allowed_url_prefixes": [...], "timeout": 10, "max_response_bytes": 65536}
             | {"type": "mcp", "transport": "stdio", "command": str, "args": [...], "env": {...}, "timeout": 30}
             | {"type": "mcp", "transport": "streamable_http", "url": "http(s)://…", "timeout": 30}],
     "max_iterations": 5, "time_limit": 60}

:func:`parse_definition` validates it (unknown fields refused) with messages naming
the field; :func:`from_ragflow_canvas` maps RAGFlow's canvas DSL ("Begin → Agent (with
tools) → Message", RAGFlow ``agent/canvas.py``) onto it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from common.constants import (
    DEFAULT_PROLOGUE,
    DEFAULT_SIMILARITY_THRESHOLD,
    DEFAULT_TOP_N,
    OFFLINE_MODEL_NAME,
)
from common.errors import ArgumentError

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Use the tools when they help; answer from their results "
    "and cite retrieved passages with their [ID:n] markers."
)
DEFAULT_MAX_ITERATIONS = 5
DEFAULT_TIME_LIMIT = 60.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LLMSettings(_Strict):
    """The chat model of an agent: ``model_name`` (empty: the offline model) and sampling."""

    model_name: str = Field(OFFLINE_MODEL_NAME, max_length=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=32768)


class RetrievalTool(_Strict):
    """Search chunks of the tenant's datasets; found chunks become the answer's references."""

    type: Literal["retrieval"]
    dataset_ids: list[str] = Field(..., min_length=1, max_length=32)
    top_n: int = Field(DEFAULT_TOP_N, ge=1, le=64)
    similarity_threshold: float = Field(DEFAULT_SIMILARITY_THRESHOLD, ge=0, le=1)


class CalculatorTool(_Strict):
    """Evaluate an arithmetic expression."""

    type: Literal["calculator"]


class CurrentTimeTool(_Strict):
    """The current date and time in a time zone."""

    type: Literal["current_time"]


class HttpRequestTool(_Strict):
    """GET/POST to URLs starting with one of ``allowed_url_prefixes``.

    A prefix is ``http(s)://host[:port]/path``; a URL matches when scheme, host and
    port are equal and its path starts with the prefix's path.
    """

    type: Literal["http_request"]
    allowed_url_prefixes: list[str] = Field(..., min_length=1, max_length=32)
    timeout: float = Field(10.0, gt=0, le=120, description="seconds")
    max_response_bytes: int = Field(65536, ge=1, le=10 * 1024 * 1024)

    @field_validator("allowed_url_prefixes")
    @classmethod
    def _check_prefixes(cls, prefixes: list[str]) -> list[str]:
        for prefix in prefixes:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{prefix!r} is not an http:// or https:// URL prefix with a host")
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError(f"{prefix!r}: a prefix may not hold credentials, a query or a fragment")
        return prefixes


#: Environment variables an agent may not set for an MCP stdio server: they change how
#: a program is loaded or run (preloaded libraries, interpreter options and module
#: paths, shell start-up files, where configuration is read, package registries),
#: which would turn an allowed command line into any code. Compared in upper case.
REFUSED_ENV_NAMES = frozenset({
    "PATH", "HOME", "XDG_CONFIG_HOME", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS",
    "NODE_OPTIONS", "NODE_PATH", "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "RUBYOPT", "RUBYLIB",
    "GCONV_PATH", "GLIBC_TUNABLES", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
})
#: Prefixes of refused names (see :data:`REFUSED_ENV_NAMES`).
REFUSED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "BASH_FUNC_", "NPM_CONFIG_", "PIP_", "UV_")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def refused_env_name(name: str) -> bool:
    """True when an agent may not set the environment variable ``name`` (see
    :data:`REFUSED_ENV_NAMES` and :data:`REFUSED_ENV_PREFIXES`)."""
    upper = name.upper()
    return upper in REFUSED_ENV_NAMES or upper.startswith(REFUSED_ENV_PREFIXES)


class McpTool(_Strict):
    """The tools of an MCP server: started with ``command args`` (``transport: "stdio"``,
    the default), or reached at ``url`` (``transport: "streamable_http"``)."""

    type: Literal["mcp"]
    transport: Literal["stdio", "streamable_http"] = "stdio"
    command: str | None = Field(None, min_length=1, max_length=512, description="stdio: the command")
    args: list[str] = Field(default_factory=list, max_length=64, description="stdio: its arguments")
    env: dict[str, str] = Field(default_factory=dict, max_length=64, description="stdio: environment variables")
    url: str | None = Field(None, min_length=1, max_length=2048, description="streamable_http: the endpoint")
    timeout: float = Field(30.0, gt=0, le=300, description="seconds for start-up and for each call")

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name[:64]!r} is not an environment variable name (letters, digits and _, not starting with a digit)")
            if refused_env_name(name):
                raise ValueError(
                    f"{name} may not be set: it changes how the server's program is loaded or run "
                    "(refused: PATH, LD_*, DYLD_*, PYTHON*, NODE_OPTIONS, NODE_PATH, NPM_CONFIG_*, BASH_ENV, ENV, "
                    "PERL5OPT, RUBYOPT and the others listed in docs/agents.md)"
                )
            if "\0" in value:
                raise ValueError(f"the value of {name} holds a NUL character")
        return env

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.fragment or parts.username or parts.password:
            raise ValueError(f"{url!r}: the URL may not hold credentials or a fragment")
        return url

    @model_validator(mode="after")
    def _fields_of_the_transport(self) -> McpTool:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("`command` is required with transport 'stdio'")
            if self.url is not None:
                raise ValueError("`url` is for transport 'streamable_http'; 'stdio' takes `command`")
        else:
            if not self.url:
                raise ValueError("`url` is required with transport 'streamable_http'")
            if self.command is not None or self.args or self.env:
                raise ValueError("`command`, `args` and `env` are for transport 'stdio'; 'streamable_http' takes `url`")
        return self


ToolSpec = Annotated[
    RetrievalTool | CalculatorTool | CurrentTimeTool | HttpRequestTool | McpTool, Field(discriminator="type")
]


class AgentDefinition(_Strict):
    """An agent: prompt, model, tools and limits."""

    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, max_length=20000)
    prologue: str = Field(DEFAULT_PROLOGUE, max_length=2000)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    tools: list[ToolSpec] = Field(default_factory=list, max_length=16)
    max_iterations: int = Field(DEFAULT_MAX_ITERATIONS, ge=1, le=20)
    time_limit: float = Field(DEFAULT_TIME_LIMIT, gt=0, le=600, description="seconds")

    @model_validator(mode="after")
    def _one_of_each(self) -> AgentDefinition:
        seen: set[str] = set()
        for tool in self.tools:
            if tool.type != "mcp" and tool.type in seen:
                raise ValueError(f"the tool {tool.type!r} is listed twice")
            seen.add(tool.type)
        return self

    def tool(self, kind: str) -> Any:
        """The first tool spec of type ``kind``, or None."""
        return next((tool for tool in self.tools if tool.type == kind), None)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"`dsl.{location}`: {message}" if location else f"`dsl`: {message}")
    return "; ".join(parts)


def is_canvas(dsl: dict) -> bool:
    """True when ``dsl`` looks like a RAGFlow canvas (it has ``components``)."""
    return isinstance(dsl, dict) and "components" in dsl


def parse_definition(dsl: Any) -> AgentDefinition:
    """Validate an agent ``dsl``: ours, or a RAGFlow canvas mapped by :func:`from_ragflow_canvas`.

    Raises:
        ArgumentError: naming each wrong field (``dsl.tools.0.dataset_ids`` …) or the
            canvas components that are not supported.
    """
    if not isinstance(dsl, dict):
        raise ArgumentError("`dsl` must be a JSON object")
    if is_canvas(dsl):
        dsl = from_ragflow_canvas(dsl)
    try:
        return AgentDefinition.model_validate(dsl)
    except ValidationError as error:
        raise ArgumentError(_describe(error)) from None


# -- RAGFlow canvas ----------------------------------------------------------------
#: RAGFlow tool components we can map, by component name.
_CANVAS_TOOLS = {"Retrieval"}


def _component_name(component: Any) -> str:
    obj = component.get("obj") if isinstance(component, dict) else None
    return str(obj.get("component_name", "")) if isinstance(obj, dict) else ""


def _params(component: dict) -> dict:
    params = component.get("obj", {}).get("params", {})
    return params if isinstance(params, dict) else {}


def _canvas_tool(tool: Any) -> dict:
    params = tool.get("params", {}) if isinstance(tool, dict) else {}
    spec: dict[str, Any] = {"type": "retrieval", "dataset_ids": list(params.get("kb_ids") or [])}
    if params.get("top_n") is not None:
        spec["top_n"] = params["top_n"]
    if params.get("similarity_threshold") is not None:
        spec["similarity_threshold"] = params["similarity_threshold"]
    return spec


def from_ragflow_canvas(dsl: dict) -> dict:
    """Map a RAGFlow canvas DSL onto our definition (a dict, validated by the caller).

    Accepted: exactly the chain ``Begin → Agent → Message`` (component names as in
    RAGFlow's ``agent/component``), the Agent's tools among ``Retrieval``; read are
    Begin's ``prologue``, Agent's ``sys_prompt``, ``llm_id`` (``model@factory``),
    ``temperature``, ``top_p``, ``max_tokens``, ``max_rounds``.

    Raises:
        ArgumentError: another component, another tool, MCP servers (RAGFlow names
            them by server-side id), or not a single chain; the message names them.
    """
    components = dsl.get("components")
    if not isinstance(components, dict) or not components:
        raise ArgumentError("`dsl.components` must be a non-empty object of canvas components")
    names = {cid: _component_name(component) for cid, component in components.items()}
    unsupported = sorted(f"{cid} ({name or 'no component_name'})" for cid, name in names.items() if name not in ("Begin", "Agent", "Message"))
    if unsupported:
        raise ArgumentError(
            "unsupported canvas components: " + ", ".join(unsupported)
            + "; only the template Begin → Agent → Message can be imported"
        )
    by_kind: dict[str, list[str]] = {}
    for cid, name in names.items():
        by_kind.setdefault(name, []).append(cid)
    counts = {kind: len(by_kind.get(kind, [])) for kind in ("Begin", "Agent", "Message")}
    if any(count != 1 for count in counts.values()):
        found = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        raise ArgumentError(f"the canvas must hold exactly one Begin, one Agent and one Message; it holds {found}")
    begin, agent, message = (by_kind[kind][0] for kind in ("Begin", "Agent", "Message"))
    for source, target in ((begin, agent), (agent, message)):
        if target not in (components[source].get("downstream") or []):
            raise ArgumentError(f"the canvas must be the chain Begin → Agent → Message; {source} does not lead to {target}")
    params = _params(components[agent])
    refused = sorted(
        str(tool.get("component_name") or tool.get("name") or "?")
        for tool in params.get("tools") or []
        if not isinstance(tool, dict) or tool.get("component_name") not in _CANVAS_TOOLS
    )
    if params.get("mcp"):
        refused.append("mcp (servers registered in RAGFlow)")
    if refused:
        raise ArgumentError(f"unsupported agent tools in the canvas: {', '.join(refused)}; supported: Retrieval")
    llm: dict[str, Any] = {}
    if params.get("llm_id"):
        llm["model_name"] = str(params["llm_id"]).split("@", 1)[0]
    for key in ("temperature", "top_p", "max_tokens"):
        if params.get(key) is not None:
            llm[key] = params[key]
    definition: dict[str, Any] = {"llm": llm, "tools": [_canvas_tool(tool) for tool in params.get("tools") or []]}
    if params.get("sys_prompt"):
        definition["system_prompt"] = params["sys_prompt"]
    if params.get("max_rounds"):
        definition["max_iterations"] = params["max_rounds"]
    prologue = _params(components[begin]).get("prologue")
    if prologue:
        definition["prologue"] = prologue
    return definition
