"""The tests' databases: SQLite in a temporary folder or, when ``RAGSOCKET_TEST_MYSQL_URL``
is set (e.g. ``mysql://root:@127.0.0.1:3306/test``), a fresh MariaDB/MySQL database on
that server, dropped afterwards."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql

from common.settings import parse_database_url

MYSQL_URL_VARIABLE = "RAGSOCKET_TEST_MYSQL_URL"


def _mysql_connect(url: str, **options: object) -> pymysql.connections.Connection:
    conf = parse_database_url(url)
    return pymysql.connect(host=conf["host"], port=conf["port"], user=conf["user"], password=conf["password"], autocommit=True, **options)


@contextmanager
def fresh_database(sqlite_path: Path, prefix: str) -> Iterator[str]:
    """The URL of an empty database of the kind the run uses: ``sqlite_path``, or a new
    MariaDB/MySQL database named ``<prefix>_<8 hex>`` (dropped on exit)."""
    base = os.environ.get(MYSQL_URL_VARIABLE)
    if not base:
        yield f"sqlite:///{sqlite_path}"
        return
    conf = parse_database_url(base)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = _mysql_connect(base)
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    try:
        yield f"mysql://{conf['user']}:{conf['password']}@{conf['host']}:{conf['port']}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a server's database (``?`` placeholders)."""
    conf = parse_database_url(url)
    if conf["engine"] == "sqlite":
        with sqlite3.connect(conf["path"]) as connection:
            return connection.execute(statement, params).fetchall()
    connection = _mysql_connect(url, database=conf["database"])
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement.replace("?", "%s"), params)
            return list(cursor.fetchall())
    finally:
        connection.close()
