"""A server restarted while documents were RUNNING resumes (or fails) their parsing."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymysql
import pytest

from common.settings import parse_database_url
from test.conftest import MYSQL_URL_VARIABLE
from test.support.server import ServerProcess, create_tenant, ok, wait_parsed


@pytest.fixture
def fresh_database_url(tmp_path: Path) -> Iterator[str]:
    """An empty database of the kind the run uses (SQLite file, or a new MariaDB database)."""
    base = os.environ.get(MYSQL_URL_VARIABLE)
    if not base:
        yield f"sqlite:///{tmp_path / 'restart.db'}"
        return
    conf = parse_database_url(base)
    name = f"ragsocket_restart_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host=conf["host"], port=conf["port"], user=conf["user"], password=conf["password"], autocommit=True)
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield f"mysql://{conf['user']}:{conf['password']}@{conf['host']}:{conf['port']}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the server's database (``?`` placeholders)."""
    conf = parse_database_url(url)
    if conf["engine"] == "sqlite":
        with sqlite3.connect(conf["path"]) as connection:
            return connection.execute(statement, params).fetchall()
    connection = pymysql.connect(
        host=conf["host"], port=conf["port"], user=conf["user"], password=conf["password"], database=conf["database"], autocommit=True
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement.replace("?", "%s"), params)
            return list(cursor.fetchall())
    finally:
        connection.close()


async def test_running_documents_are_resumed_after_a_restart(server_env, fresh_database_url, tmp_path):
    env = {**server_env, "RAGSOCKET_DATABASE_URL": fresh_database_url, "RAGSOCKET_DATA_DIR": str(tmp_path / "data")}
    files = {
        "resume.txt": b"The Nimbus heater has three power settings.",
        "gone.txt": b"This file disappears while it is being parsed.",
        "done.txt": b"The Aurora lamp was parsed before the restart.",
    }
    with ServerProcess(env) as first:
        tenant = create_tenant(first.env, "restart")
        async with httpx.AsyncClient(base_url=first.api_url, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=30) as api:
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
        async with httpx.AsyncClient(base_url=second.api_url, headers={"Authorization": f"Bearer {tenant.api_key}"}, timeout=30) as api:
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


async def _wait_for(api: httpx.AsyncClient, dataset_id: str, document_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (doc,) = ok(await api.get(f"/datasets/{dataset_id}/documents", params={"id": document_id}))["docs"]
        if doc["run"] == "DONE":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{document_id} not parsed: {doc}")
