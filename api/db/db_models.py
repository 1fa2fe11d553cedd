"""Peewee models, on SQLite (embedded default) or MySQL / MariaDB (pymysql, pooled).

Table and field names follow RAGFlow's ``api/db/db_models.py`` where RAGFlow has the
concept (``knowledgebase`` is a dataset, ``dialog`` a chat, ``conversation`` a
session); ids are 32-character uuid4 hex strings and times are Unix milliseconds.

Every database call runs in a worker thread (never on the event loop); peewee keeps
one connection per thread. Call sites wrap a unit of work in :func:`db_session` so
that a pooled MySQL connection goes back to the pool when the work ends.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    Database,
    DatabaseProxy,
    FloatField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)
from playhouse.pool import PooledMySQLDatabase

from common.constants import TaskStatus
from common.settings import parse_database_url

DB = DatabaseProxy()


def get_uuid() -> str:
    """A new id: uuid4 as 32 hex characters (RAGFlow's ``get_uuid``)."""
    return uuid.uuid4().hex


def now_ms() -> int:
    """Current Unix time in milliseconds."""
    return int(time.time() * 1000)


class LongTextField(TextField):
    """TEXT on SQLite, LONGTEXT on MySQL (MySQL's TEXT stops at 64 KiB)."""

    field_type = "LONGTEXT"


class JSONField(LongTextField):
    """A JSON document stored as text; ``None`` is stored as SQL NULL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


def ref_field() -> CharField:
    """A column holding the id of another row (its owner or parent), indexed."""
    return CharField(max_length=32, index=True)


class BaseModel(Model):
    """Common columns: ``id`` (:func:`get_uuid`), ``create_time`` and ``update_time``
    in Unix ms."""

    id = CharField(max_length=32, primary_key=True, default=get_uuid)
    create_time = BigIntegerField(default=now_ms, index=True)
    update_time = BigIntegerField(default=now_ms)

    class Meta:
        database = DB

    def save(self, *args: Any, **kwargs: Any) -> int:
        self.update_time = now_ms()
        return super().save(*args, **kwargs)


class TenantModel(BaseModel):
    """A row owned by a tenant (``tenant_id``); abstract, it has no table."""

    tenant_id = ref_field()


class SessionModel(TenantModel):
    """A conversation with one user; abstract (subclasses add their parent's id)."""

    name = CharField(max_length=255, default="New session")
    user_id = CharField(max_length=255, default="")


class MessageModel(BaseModel):
    """One message of a session, kept in ``position`` order; abstract (subclasses
    add their session's id). Assistant messages keep their ``reference``;
    ``interrupted`` marks an answer stopped before its end."""

    role = CharField(max_length=16)
    content = LongTextField(default="")
    reference = JSONField(null=True)
    interrupted = BooleanField(default=False)
    position = BigIntegerField(default=time.time_ns, index=True)


class Tenant(BaseModel):
    """An account owning datasets, chats and API keys."""

    name = CharField(max_length=128)


class APIToken(TenantModel):
    """An API key, stored as its SHA-256 digest; ``prefix`` is shown in listings."""

    token_hash = CharField(max_length=64, unique=True)
    prefix = CharField(max_length=32)
    name = CharField(max_length=128, default="")
    revoked_time = BigIntegerField(null=True)
    last_used_time = BigIntegerField(null=True)

    class Meta:
        table_name = "api_token"


class Knowledgebase(TenantModel):
    """A dataset: a set of documents searched together."""

    name = CharField(max_length=128)
    description = TextField(default="")
    language = CharField(max_length=32, default="English")
    chunk_method = CharField(max_length=32, default="naive")
    parser_config = JSONField(default=dict)
    permission = CharField(max_length=16, default="me")


class Document(TenantModel):
    """An uploaded file of a dataset and the state of its parsing."""

    kb_id = ref_field()
    name = CharField(max_length=255)
    suffix = CharField(max_length=16)
    size = BigIntegerField(default=0)
    location = CharField(max_length=512)
    run = CharField(max_length=16, default=TaskStatus.UNSTART.value, index=True)
    progress = FloatField(default=0.0)
    progress_msg = LongTextField(default="")
    chunk_num = IntegerField(default=0)
    token_num = IntegerField(default=0)
    process_begin_time = BigIntegerField(null=True)
    process_duration = FloatField(default=0.0)


class Chunk(BaseModel):
    """A passage of a parsed document; ``tokens`` is its space-joined token list."""

    doc_id = ref_field()
    kb_id = ref_field()
    position = IntegerField(default=0)
    content = LongTextField()
    tokens = LongTextField()
    token_num = IntegerField(default=0)


class Dialog(TenantModel):
    """A chat assistant: datasets to search, model settings, prompt settings."""

    name = CharField(max_length=255)
    description = TextField(default="")
    kb_ids = JSONField(default=list)
    llm_setting = JSONField(default=dict)
    prompt_config = JSONField(default=dict)


class Conversation(SessionModel):
    """A session of a chat: the conversation with one user."""

    dialog_id = ref_field()


class Message(MessageModel):
    """One message of a chat's session; assistant messages keep their references."""

    conversation_id = ref_field()


ALL_MODELS: tuple[type[BaseModel], ...] = (
    Tenant,
    APIToken,
    Knowledgebase,
    Document,
    Chunk,
    Dialog,
    Conversation,
    Message,
)
#: Models of other modules (e.g. ``api/db/agent_models.py``), created at start with
#: :data:`ALL_MODELS`; a module adds its models with :func:`register_models`.
EXTRA_MODELS: list[type[BaseModel]] = []


def register_models(*models: type[BaseModel]) -> None:
    """Have :func:`init_database` create these models' tables too."""
    EXTRA_MODELS.extend(model for model in models if model not in EXTRA_MODELS)


def open_database(url: str, max_connections: int = 64) -> Database:
    """Build the peewee database for ``url`` (see :func:`parse_database_url`).

    SQLite runs in WAL mode with a 30 s busy timeout so that worker threads can read
    while one writes; MySQL uses a connection pool of ``max_connections``, at the
    READ COMMITTED isolation level.
    """
    conf = parse_database_url(url)
    if conf["engine"] == "sqlite":
        return SqliteDatabase(
            conf["path"],
            pragmas={"journal_mode": "wal", "busy_timeout": 30_000, "synchronous": "normal"},
            check_same_thread=False,
        )
    # READ COMMITTED: no gap locks, so parsing two documents at once (each deleting
    # and inserting its chunks) cannot deadlock on the chunk table's indexes.
    return PooledMySQLDatabase(
        conf["database"],
        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        host=conf["host"],
        port=conf["port"],
        user=conf["user"],
        password=conf["password"],
        charset="utf8mb4",
        max_connections=max_connections,
        stale_timeout=300,
        timeout=30,
    )


def init_database(url: str, max_connections: int = 64) -> Database:
    """Bind :data:`DB` to the database at ``url`` and create missing tables."""
    database = open_database(url, max_connections)
    DB.initialize(database)
    with DB.connection_context():
        DB.create_tables([*ALL_MODELS, *EXTRA_MODELS], safe=True)
    return database


def db_session() -> Any:
    """Context manager and decorator: one unit of work on this thread's connection."""
    return DB.connection_context()
