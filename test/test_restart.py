"""A server restarted while documents were RUNNING resumes (or fails) their parsing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test.support.database import fresh_database, sql
from test.support.server import (
    ServerProcess,
    api_client,
    create_tenant,
    ok,
    wait_parsed,
)


@pytest.fixture
def fresh_database_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the kind the run uses (SQLite file, or a new MariaDB database)."""
    with fresh_database(tmp_path / "restart.db", "ragsocket_restart") as url:
        yield url


async def test_running_documents_are_resumed_after_a_restart(server_env, fresh_database_url, tmp_path):
    env = {**server_env, "RAGSOCKET_DATABASE_URL": fresh_database_url, "RAGSOCKET_DATA_DIR": str(tmp_path / "data")}
    files = {
        "resume.txt": b"The Nimbus heater has three power settings.",
        "gone.txt": b"This file disappears while it is being parsed.",
        "done.txt": b"The Aurora lamp was parsed before the restart.",
    }
    with ServerProcess(env) as first:
        tenant = create_tenant(first.env, "restart")
        async with api_client(first, tenant) as api:
            dataset = ok(await api.post("/datasets", json={"name": "restart"}))
            docs = ok(await api.post(f"/datasets/{dataset['id']}/documents", files=[("file", item) for item in files.items()]))
            ids = {d["name"]: d["id"] for d in docs}
            ok(await api.post(f"/datasets/{dataset['id']}/chunks", json={"document_ids": [ids["done.txt"]]}))
            await _wait_for(api, dataset["id"], ids["done.txt"])
            chunks_before = ok(await api.get(f"/datasets/{dataset['id']}/documents/{ids['done.txt']}/chunks"))["chunks"]

    # as if the process died in the middle of parsing two documents
    for name in ("resume.txt", "gone.txt"):
        sql(fresh_database_url, "UPDATE document SET run = ?, progress = ?, progress_msg = ? WHERE id = ?",
            ("RUNNING", 0.6, "Splitting into chunks", ids[name]))
    (location,) = sql(fresh_database_url, "SELECT location FROM document WHERE id = ?", (ids["gone.txt"],))[0]
    Path(location).unlink()

    with ServerProcess(env) as second:
        async with api_client(second, tenant) as api:
            after = {d["name"]: d for d in await wait_parsed(api, dataset["id"], timeout=30)}
            resumed = after["resume.txt"]
            assert resumed["run"] == "DONE" and resumed["progress"] == 1.0 and resumed["chunk_count"] == 1
            assert resumed["progress_msg"].startswith("Resumed after a server restart. Done: 1 chunks"), resumed
            gone = after["gone.txt"]
            assert (gone["run"], gone["progress"], gone["chunk_count"]) == ("FAIL", -1, 0)
            assert gone["progress_msg"] == "The server restarted during parsing and the file is gone"
            assert after["done.txt"]["run"] == "DONE" and after["done.txt"]["progress_msg"].startswith("Done: ")
            chunks_after = ok(await api.get(f"/datasets/{dataset['id']}/documents/{ids['done.txt']}/chunks"))["chunks"]
            assert chunks_after == chunks_before, "documents already parsed are not parsed again"
            hits = ok(await api.post("/retrieval", json={"question": "Nimbus heater power settings", "dataset_ids": [dataset["id"]]}))
            assert hits["chunks"][0]["document_id"] == ids["resume.txt"]


async def _wait_for(api, dataset_id: str, document_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (doc,) = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"id": document_id}))["docs"]
        if doc["run"] == "DONE":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{document_id} not parsed: {doc}")
