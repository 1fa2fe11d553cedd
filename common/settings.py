"""Service settings, read from ``RAGSOCKET_*`` environment variables.

Every setting is documented in the README's settings table. Validation is done by
pydantic-settings; :func:`load_settings` turns a validation failure into a
:class:`SettingsError` whose message names the offending variable, so that a wrong
setting stops the start with one clear line instead of a traceback.
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RAGSOCKET_"
SECRET_KEY_FILE = "secret_key"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    """All tunables of one server process.

    Units are in the field names' descriptions: seconds, bytes, tokens, frames.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(9380, ge=0, le=65535, description="TCP port (0: any free port).")
    data_dir: Path = Field(Path("data"), description="Folder for SQLite, uploads and the secret key.")
    database_url: str = Field(
        "", description="sqlite:///path or mysql://user:password@host:port/db; empty: SQLite in data_dir."
    )
    secret_key: str = Field("", description="Key signing login tokens; generated in data_dir when empty.")
    llm_base_url: str = Field("", description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    llm_api_key: str = Field("", description="API key for the OpenAI-compatible endpoint.")
    llm_model: str = Field("", description="Model name at the OpenAI-compatible endpoint.")
    llm_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the chat model.")
    offline_token_delay: float = Field(
        0.02, ge=0, le=5, description="Seconds the built-in offline model waits between words."
    )
    worker_threads: int = Field(
        256, ge=4, le=4096, description="Size of the one thread pool running all blocking work."
    )
    stream_queue_frames: int = Field(
        32, ge=1, le=10_000, description="Frames buffered per stream between the worker and the socket."
    )
    workers: int = Field(
        1, ge=1, le=64, description="hypercorn worker processes when run as hypercorn api.asgi:app (docs/deployment.md)."
    )
    db_max_connections: int = Field(
        64, ge=2, le=1000, description="MySQL connections pooled by this process (keep under the server's max_connections)."
    )
    parse_workers: int = Field(2, ge=1, le=64, description="Documents parsed at the same time.")
    chunk_tokens: int = Field(512, ge=16, le=8192, description="Token budget of one chunk.")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest upload request, bytes.")
    max_question_chars: int = Field(8000, ge=1, description="Longest accepted question, characters.")
    ws_max_message_bytes: int = Field(1024 * 1024, ge=128, description="Largest incoming WebSocket message, bytes.")
    ws_max_requests_per_connection: int = Field(
        4, ge=1, le=64, description="Requests with a req_id running at once on one WebSocket."
    )
    ws_ping_interval: float = Field(20.0, gt=0, description="Seconds between WebSocket ping frames sent by the server.")
    ws_pong_timeout: float = Field(
        20.0, gt=0, description="Seconds a pong may take before the connection is closed (1011)."
    )
    ws_idle_timeout: float = Field(
        300.0, gt=0, description="Seconds without a request or running answer before a WebSocket is closed (1000)."
    )
    ws_max_connections: int = Field(10_000, ge=1, description="WebSockets open at once in this process (1013 past it).")
    ws_max_connections_per_key: int = Field(50, ge=1, description="WebSockets open at once per API key (1008 past it).")
    ws_max_detached_per_key: int = Field(
        16,
        ge=1,
        description=(
            "Answers asked with resumable: true that may go on per API key after their clients left (more are "
            "stopped and saved as interrupted; while the key has that many, new resumable questions get an error frame 102)."
        ),
    )
    rate_limit_per_minute: int = Field(
        120, ge=1, description="Questions per minute per API key (token bucket, WebSocket and HTTP completions)."
    )
    ws_shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds running answers may finish after SIGTERM before they are stopped."
    )
    ws_allowed_origins: str = Field(
        "", description="Comma-separated Origins allowed for login-session auth on WebSockets (empty: none)."
    )
    event_log_ttl: float = Field(300.0, gt=0, description="Seconds the frames of an answer are kept for resume.")
    dify_ping_interval: float = Field(
        10.0,
        ge=0,
        description='Seconds without a frame, while a request runs on a Dify-style route, before {"event": "ping"} is sent (0: never).',
    )
    redis_url: str = Field("", description="redis://host:port/db for a shared event log (resume on any process).")
    access_log: str = Field("-", description="hypercorn access log: '-' for stdout, a file path, or empty for none.")
    log_level: str = Field("INFO", description="Python logging level name.")
    agent_allow_private_urls: bool = Field(
        False, description="Agents' http_request tool may reach private, loopback and link-local addresses."
    )
    agent_mcp_commands: str = Field(
        "",
        description=(
            "Command lines agents may start as MCP stdio servers, comma-separated (commas inside quotes belong to "
            "the entry); each entry is a command and its arguments, split like a POSIX shell (shlex.split), and "
            "allows exactly that token list, e.g. `/usr/bin/python3 /opt/mcp/server.py, npx -y "
            "@modelcontextprotocol/server-filesystem /srv/docs` (empty: stdio MCP servers disabled; see docs/agents.md)."
        ),
    )

    @field_validator("agent_mcp_commands")
    @classmethod
    def _check_mcp_commands(cls, value: str) -> str:
        split_command_lines(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @property
    def allowed_origins(self) -> frozenset[str]:
        """The Origin allow list for login-session auth, as a set."""
        return frozenset(o.strip().rstrip("/") for o in self.ws_allowed_origins.split(",") if o.strip())

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("sqlite", "mysql"):
            raise ValueError("must start with sqlite:/// or mysql://")
        return value

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value.upper()

    @property
    def agent_mcp_command_lines(self) -> frozenset[tuple[str, ...]]:
        """The MCP stdio allow list: each allowed command line as its token list."""
        return frozenset(split_command_lines(self.agent_mcp_commands))

    @property
    def llm_configured(self) -> bool:
        """True when an OpenAI-compatible endpoint is configured."""
        return bool(self.llm_base_url and self.llm_model)

    def resolved_database_url(self) -> str:
        """The database URL to use: the setting, else ``MYSQL_*`` variables, else SQLite.

        ``MYSQL_HOST``, ``MYSQL_PORT``, ``MYSQL_USER``, ``MYSQL_PASSWORD`` and
        ``MYSQL_DBNAME`` are RAGFlow's docker variable names.
        """
        if self.database_url:
            return self.database_url
        host = os.environ.get("MYSQL_HOST")
        if host:
            user = os.environ.get("MYSQL_USER", "root")
            password = os.environ.get("MYSQL_PASSWORD", "")
            port = os.environ.get("MYSQL_PORT", "3306")
            name = os.environ.get("MYSQL_DBNAME", "ragsocket")
            return f"mysql://{user}:{password}@{host}:{port}/{name}"
        return f"sqlite:///{(self.data_dir / 'ragsocket.db').resolve()}"


def split_command_lines(value: str) -> list[tuple[str, ...]]:
    """The command lines of an allow list such as ``RAGSOCKET_AGENT_MCP_COMMANDS``.

    Entries are separated by commas outside quotes; each is split into tokens like a
    POSIX shell does (:func:`shlex.split`: quotes group, a backslash escapes), so
    ``/usr/bin/python3 "/opt/my server.py", npx -y pkg`` holds
    ``("/usr/bin/python3", "/opt/my server.py")`` and ``("npx", "-y", "pkg")``.
    Blank entries are skipped.

    Raises:
        ValueError: a quote is not closed, or an entry's command is empty.
    """
    entries: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    lines = []
    for number, entry in enumerate(entries, start=1):
        if not entry.strip():
            continue
        try:
            tokens = tuple(shlex.split(entry))
        except ValueError as error:  # "No closing quotation", "No escaped character"
            raise ValueError(f"entry {number} ({entry.strip()!r}) is not a command line: {error}") from None
        if not tokens[0]:
            raise ValueError(f"entry {number} ({entry.strip()!r}) has an empty command")
        lines.append(tokens)
    return lines


def parse_database_url(url: str) -> dict[str, Any]:
    """Split a database URL into peewee connection arguments.

    Returns:
        ``{"engine": "sqlite", "path": str}`` or
        ``{"engine": "mysql", "database", "host", "port", "user", "password"}``.

    Raises:
        SettingsError: the URL lacks a path or database name.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise SettingsError(f"{ENV_PREFIX}DATABASE_URL: sqlite URL needs a path, e.g. sqlite:///data/app.db")
        return {"engine": "sqlite", "path": path}
    database = parts.path.lstrip("/")
    if not database:
        raise SettingsError(f"{ENV_PREFIX}DATABASE_URL: mysql URL needs a database name")
    return {
        "engine": "mysql",
        "database": database,
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
    }


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, with keyword overrides on top.

    Raises:
        SettingsError: a variable is malformed; the message names it.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    parse_database_url(settings.resolved_database_url())
    return settings


def ensure_secret_key(settings: Settings) -> str:
    """Return the signing key: the setting, or one kept in ``data_dir/secret_key``.

    A new random key (32 bytes, hex) is written on first use with mode 0600.
    """
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / SECRET_KEY_FILE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        if path.exists():
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key
            path.unlink(missing_ok=True)  # an empty file (interrupted write) is no key
        key = secrets.token_hex(32)
        # Written whole to a private (0600) temporary file, then linked into place:
        # never readable by others nor seen half-written, and when two processes
        # start at once the link fails for one of them, which then reads the winner's.
        temporary = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(key)
            os.link(temporary, path)
            return key
        except FileExistsError:
            continue
        finally:
            temporary.unlink(missing_ok=True)
    raise SettingsError(f"{ENV_PREFIX}DATA_DIR: cannot create {path}")
