"""Fixtures: a real server (``python -m api`` under hypercorn) on a free loopback port.

The database is SQLite in a temporary folder, or — when ``RAGSOCKET_TEST_MYSQL_URL``
is set (e.g. ``mysql://root:@127.0.0.1:3306/test``) — a fresh MariaDB/MySQL database
created for the run on that server and dropped afterwards. The chat models are the
built-in offline model and an OpenAI-compatible test server on loopback
(``test/support/openai_server.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from test.support.database import fresh_database
from test.support.openai_server import OpenAITestServer
from test.support.server import (
    ServerProcess,
    Tenant,
    api_client,
    create_tenant,
    sync_api_client,
)

if TYPE_CHECKING:
    from ragflow_sdk import RAGFlow


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database URL every server of this run uses."""
    with fresh_database(tmp_path_factory.mktemp("db") / "ragsocket.db", "ragsocket_test") as url:
        yield url


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OpenAITestServer]:
    """The loopback OpenAI-compatible test server (models: echo, slow, error-500, fail-midstream)."""
    with OpenAITestServer(api_key="sk-test") as server:
        yield server


@pytest.fixture(scope="session")
def server_env(database_url: str, openai_server: OpenAITestServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Settings of the shared server."""
    return {
        "RAGSOCKET_DATABASE_URL": database_url,
        "RAGSOCKET_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "RAGSOCKET_OFFLINE_TOKEN_DELAY": "0",
        "RAGSOCKET_LLM_BASE_URL": openai_server.base_url,
        "RAGSOCKET_LLM_API_KEY": "sk-test",
        "RAGSOCKET_LLM_MODEL": "echo",
    }


@pytest.fixture(scope="session")
def server(server_env: dict) -> Iterator[ServerProcess]:
    """One server for the whole run."""
    with ServerProcess(server_env) as process:
        yield process


@pytest.fixture(scope="session")
def tenant(server: ServerProcess) -> Tenant:
    """A tenant with an API key, created with the real CLI."""
    return create_tenant(server.env, "alice")


@pytest.fixture(scope="session")
def other_tenant(server: ServerProcess) -> Tenant:
    """A second tenant, for cross-tenant checks."""
    return create_tenant(server.env, "mallory")


@pytest.fixture
async def api(server: ServerProcess, tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client authenticated as ``tenant``."""
    async with api_client(server, tenant) as client:
        yield client


@pytest.fixture
async def other_api(server: ServerProcess, other_tenant: Tenant) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client authenticated as ``other_tenant``."""
    async with api_client(server, other_tenant) as client:
        yield client


@pytest.fixture(scope="session")
def http(server: ServerProcess, tenant: Tenant) -> Iterator[httpx.Client]:
    """A synchronous HTTP client authenticated as ``tenant`` (to check what the server saved)."""
    with sync_api_client(server, tenant) as client:
        yield client


@pytest.fixture(scope="session")
def rag(server: ServerProcess, tenant: Tenant) -> RAGFlow:
    """RAGFlow's SDK client as ``tenant``, pointed at the server root (the SDK adds ``/api/v1``)."""
    from ragflow_sdk import RAGFlow

    return RAGFlow(api_key=tenant.api_key, base_url=f"http://127.0.0.1:{server.port}")


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """Small documents shipped with the tests (English and Chinese)."""
    return Path(__file__).parent / "data"
