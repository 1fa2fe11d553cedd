"""Start the real service in a subprocess, and small helpers to drive it over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSOCKET_", "MYSQL_"))}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    base["RAGSOCKET_LOG_LEVEL"] = base.get("RAGSOCKET_TEST_LOG_LEVEL", "WARNING")
    return {**base, **env}


class ServerProcess:
    """``python -m api`` on a free loopback port, stopped with SIGTERM on exit.

    Attributes:
        env: the child's RAGSOCKET_* settings (port included).
        api_url: ``http://127.0.0.1:PORT/api/v1``.
        ws_root: ``ws://127.0.0.1:PORT`` (what the example clients take).
        ws_url: ``ws://127.0.0.1:PORT/api/v1``.
    """

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.port = int(env.get("RAGSOCKET_PORT") or free_port())
        self.env = {**env, "RAGSOCKET_PORT": str(self.port), "RAGSOCKET_HOST": "127.0.0.1"}
        self.args = args
        self.api_url = f"http://127.0.0.1:{self.port}/api/v1"
        self.ws_root = f"ws://127.0.0.1:{self.port}"
        self.ws_url = f"{self.ws_root}/api/v1"
        self.process: subprocess.Popen[str] | None = None
        self.log_path = Path(self.env["RAGSOCKET_DATA_DIR"]) / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        """Start and wait until the port answers HTTP.

        Raises:
            RuntimeError: the process exited or did not answer within 30 s; the
                message holds the end of its log.
        """
        Path(self.env["RAGSOCKET_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", *self.args], cwd=ROOT, env=_child_env(self.env), stdout=log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                httpx.get(f"{self.api_url}/datasets", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer in {START_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server printed."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def variant_env(server_env: dict[str, str], tmp_path_factory: Any, name: str, **settings: str) -> dict[str, str]:
    """Settings of one more server on the run's database: the shared server's, with its
    own data folder (``tmp_path_factory.mktemp(name)``) and ``settings`` on top."""
    return {**server_env, "RAGSOCKET_DATA_DIR": str(tmp_path_factory.mktemp(name)), **settings}


@dataclass(frozen=True)
class Tenant:
    """A tenant made by the CLI: its id and a clear API key."""

    tenant_id: str
    api_key: str
    key_id: str


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m api.cli`` against the same database as a server."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=_child_env(env), capture_output=True, text=True, timeout=60
    )


def create_tenant(env: dict[str, str], name: str) -> Tenant:
    """Create a tenant and its first key with ``python -m api.cli --json create-tenant``."""
    result = run_cli(env, "--json", "create-tenant", name)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return Tenant(data["tenant_id"], data["api_key"], data["key_id"])


def unique(prefix: str) -> str:
    """A name no other test uses: ``prefix-<monotonic ns>``."""
    return f"{prefix}-{time.monotonic_ns()}"


def auth(who: Tenant | str) -> dict[str, str]:
    """The ``Authorization: Bearer`` header of a tenant's key (or of a key)."""
    key = who.api_key if isinstance(who, Tenant) else who
    return {"Authorization": f"Bearer {key}"}


def api_client(server: ServerProcess, who: Tenant | str) -> httpx.AsyncClient:
    """An HTTP client of ``server``'s ``/api/v1``, authenticated as ``who`` (a context manager)."""
    return httpx.AsyncClient(base_url=server.api_url, headers=auth(who), timeout=30)


def sync_api_client(server: ServerProcess, who: Tenant | str) -> httpx.Client:
    """The synchronous :func:`api_client`."""
    return httpx.Client(base_url=server.api_url, headers=auth(who), timeout=30)


def ok(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope (asserts ``code == 0``)."""
    body = response.json()
    assert body["code"] == 0, body
    return body["data"]


def assert_error(response: httpx.Response, code: int, fragment: str = "") -> dict:
    """An error envelope: ``code``, ``data`` null, ``fragment`` in the message and no
    traceback in it; returns the body."""
    body = response.json()
    assert body["code"] == code, body
    assert body["data"] is None, body
    assert fragment in body["message"], body
    assert "Traceback" not in body["message"]
    return body


async def wait_parsed(api: httpx.AsyncClient, dataset_id: str, timeout: float = 60.0) -> list[dict]:
    """Poll the document list until no document is RUNNING; returns the documents."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"page_size": 1000}))["docs"]
        if all(doc["run"] not in ("RUNNING", "UNSTART") for doc in docs):
            return docs
        await asyncio.sleep(0.1)
    raise AssertionError(f"documents still parsing after {timeout} s: {docs}")


async def make_dataset(api: httpx.AsyncClient, files: dict[str, bytes], name: str | None = None) -> tuple[str, list[dict]]:
    """Create a dataset, upload ``files`` (name → content), parse them and wait.

    Returns:
        (dataset id, documents after parsing).
    """
    dataset = ok(await api.post("/datasets", json={"name": name or f"ds-{time.monotonic_ns()}"}))
    uploads = [("file", (filename, content)) for filename, content in files.items()]
    docs = ok(await api.post(f"/datasets/{dataset['id']}/documents", files=uploads))
    ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [d["id"] for d in docs]}))
    return dataset["id"], await wait_parsed(api, dataset["id"])


async def make_chat(api: httpx.AsyncClient, dataset_ids: list[str], **fields: Any) -> dict:
    """Create a chat over datasets; ``fields`` are extra chat fields (``llm``, ``prompt``)."""
    body = {"name": f"chat-{time.monotonic_ns()}", "dataset_ids": dataset_ids, **fields}
    return ok(await api.post("/chats", json=body))


def corpus_files(corpus_dir: Path) -> dict[str, bytes]:
    """The files of a folder (the shipped ``test/data``), name → content, sorted by name."""
    return {path.name: path.read_bytes() for path in sorted(corpus_dir.iterdir())}


async def make_parsed_dataset(api: httpx.AsyncClient, files: dict[str, bytes], name: str | None = None) -> tuple[str, list[dict]]:
    """:func:`make_dataset`, asserting that every document parsed (``DONE``)."""
    dataset_id, docs = await make_dataset(api, files, name)
    assert {d["run"] for d in docs} == {"DONE"}, docs
    return dataset_id, docs


async def make_corpus(
    server: ServerProcess, who: Tenant | str, files: dict[str, bytes], *chats: dict[str, Any], name: str | None = None
) -> tuple[str, list[dict], list[str]]:
    """As ``who``: a new dataset of ``files``, parsed (every document DONE), and a chat
    over it for each of ``chats`` (its extra fields: ``{}``, ``{"llm": …}`` …).

    Returns:
        (dataset id, documents after parsing, chat ids in the order of ``chats``).
    """
    async with api_client(server, who) as api:
        dataset_id, docs = await make_parsed_dataset(api, files, name)
        chat_ids = [(await make_chat(api, [dataset_id], **fields))["id"] for fields in chats]
    return dataset_id, docs, chat_ids


async def make_chat_over(server: ServerProcess, who: Tenant | str, files: dict[str, bytes], **fields: Any) -> str:
    """The id of a chat of ``who`` over a new dataset of ``files``, all parsed."""
    _, _, (chat_id,) = await make_corpus(server, who, files, fields)
    return chat_id


async def saved_session(api: httpx.AsyncClient, owner_id: str, session_id: str, kind: str = "chats") -> dict:
    """Session ``session_id`` of a chat (``kind="agents"``: of an agent) as the server
    saved it (asserts it is the only one listed)."""
    (session,) = ok(await api.get(f"/{kind}/{owner_id}/sessions", params={"id": session_id}))
    return session


def saved_session_sync(http: httpx.Client, owner_id: str, session_id: str, kind: str = "chats") -> dict:
    """The synchronous :func:`saved_session`."""
    (session,) = ok(http.get(f"/{kind}/{owner_id}/sessions", params={"id": session_id}))
    return session


async def session_messages(api: httpx.AsyncClient, chat_id: str, session_id: str) -> list[dict]:
    """The saved messages of one chat session."""
    return (await saved_session(api, chat_id, session_id))["messages"]


def wait_saved_message(server: ServerProcess, who: Tenant | str, chat_id: str, session_id: str, message_id: str, timeout: float = 10.0) -> dict:
    """Poll a chat session until its assistant message ``message_id`` is saved; returns it."""
    with sync_api_client(server, who) as http:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = saved_session_sync(http, chat_id, session_id)["messages"]
            found = [m for m in messages if m["id"] == message_id and m["role"] == "assistant"]
            if found:
                return found[0]
            time.sleep(0.05)
    raise AssertionError(f"message {message_id} was never saved")
