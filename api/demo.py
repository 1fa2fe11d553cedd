"""``python -m api --demo [FOLDER]``: a ready-to-use tenant, dataset and chat.

:func:`run_demo` runs once at start-up, after the database and the runtime exist and
before the server listens. It

1. finds the tenant named ``demo`` (or creates it) and issues it a new API key;
2. deletes the tenant's chat ``demo`` and dataset ``demo`` if they exist, so every run
   starts from the folder's current content;
3. creates the dataset ``demo`` from the folder's supported files
   (:data:`common.constants.SUPPORTED_SUFFIXES`, searched recursively; other files and
   empty files are skipped), parses them and waits until parsing is done;
4. creates the chat ``demo`` over the dataset (the configured OpenAI-compatible model
   when ``RAGSOCKET_LLM_*`` is set, else the built-in offline model);
5. prints the API key, the chat id, and commands to try: the Python WebSocket client
   and a curl SSE request.

Printed lines (stdout, one per fact, so scripts and tests can read them)::

    Demo API key: ragsocket-…
    Demo chat id: 0123…
    Demo dataset id: 4567…

Everything blocking runs in the worker pool (``get_runtime().pool.run``); the event
loop is never blocked. Running the demo twice against the same data is supported.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from api.db.db_models import Tenant, db_session
from api.db.services import (
    dataset_service,
    dialog_service,
    document_service,
    tenant_service,
)
from api.runtime import get_runtime
from common.constants import API_PREFIX, SUPPORTED_SUFFIXES, TaskStatus
from common.settings import Settings

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
#: Seconds to wait for parsing before reporting the documents still running.
PARSE_TIMEOUT = 600.0
DEMO_QUESTION = "What is RagSocket?"


@dataclass
class DemoResult:
    """What the demo made.

    Attributes:
        api_key: the new clear API key of tenant ``demo`` (shown once).
        tenant_id, dataset_id, chat_id: ids of the demo objects.
        documents: the dataset's documents after parsing (RAGFlow document objects).
        skipped: files of the folder that were not uploaded, with the reason.
    """

    api_key: str
    tenant_id: str
    dataset_id: str
    chat_id: str
    documents: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        """Documents whose parsing did not end DONE."""
        return [doc for doc in self.documents if doc["run"] != TaskStatus.DONE.value]


# -- blocking steps (run in the worker pool) ----------------------------------------
def collect_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Supported, non-empty files under ``folder`` (recursive, sorted).

    Hidden files and folders (name starting with ``.``) are ignored.

    Returns:
        (files to upload, descriptions of skipped files).
    """
    files: list[Path] = []
    skipped: list[str] = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            skipped.append(f"{relative} (unsupported type)")
        elif path.stat().st_size == 0:
            skipped.append(f"{relative} (empty)")
        else:
            files.append(path)
    return files, skipped


def demo_tenant() -> tuple[str, str]:
    """The oldest tenant named ``demo`` (created when there is none) and a new API key.

    Returns:
        (tenant id, clear API key).
    """
    with db_session():
        tenant = Tenant.select().where(Tenant.name == DEMO_NAME).order_by(Tenant.create_time, Tenant.id).first()
    if tenant is None:
        tenant = tenant_service.create_tenant(DEMO_NAME)
    issued = tenant_service.create_api_key(tenant.id, f"demo {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return tenant.id, issued.key


def remove_previous(tenant_id: str) -> None:
    """Delete the tenant's chat ``demo`` (with its sessions) and dataset ``demo``
    (with its documents, chunks and files)."""
    chats = dialog_service.list_chats(tenant_id, 1, 1000, "create_time", True, DEMO_NAME, None)
    if chats:
        dialog_service.delete_chats(tenant_id, [chat["id"] for chat in chats])
    datasets = dataset_service.list_datasets(tenant_id, 1, 1000, "create_time", True, DEMO_NAME)
    if datasets:
        locations = dataset_service.delete_datasets(tenant_id, [dataset["id"] for dataset in datasets])
        document_service.remove_files(locations)


def create_dataset(tenant_id: str, folder: Path, files: list[Path], data_dir: Path) -> tuple[str, list[dict]]:
    """Create dataset ``demo`` and upload ``files`` into it (not parsed yet).

    Returns:
        (dataset id, uploaded RAGFlow document objects).

    Raises:
        common.errors.ArgumentError: a file name is invalid (too long).
    """
    dataset = dataset_service.create_dataset(
        tenant_id, {"name": DEMO_NAME, "description": f"Files of {folder.resolve()}"}
    )
    if not files:
        return dataset["id"], []
    uploads = [document_service.Upload(path.name, path.read_bytes()) for path in files]
    return dataset["id"], document_service.upload_documents(tenant_id, dataset["id"], uploads, data_dir)


def parsed_documents(tenant_id: str, dataset_id: str) -> list[dict]:
    """Every document of the dataset with its parsing status, oldest first."""
    return document_service.list_documents(tenant_id, dataset_id, 1, 10_000, "create_time", False)["docs"]


def create_chat(tenant_id: str, dataset_id: str, settings: Settings) -> str:
    """Create chat ``demo`` over the dataset; returns its id."""
    fields: dict = {
        "name": DEMO_NAME,
        "description": "Answers questions about the demo folder.",
        "dataset_ids": [dataset_id],
    }
    if settings.llm_configured:
        fields["llm"] = {"model_name": settings.llm_model}
    return dialog_service.create_chat(tenant_id, fields)["id"]


# -- orchestration -----------------------------------------------------------------
async def build_demo(settings: Settings, folder: Path) -> DemoResult:
    """Create the demo tenant key, dataset and chat; wait for parsing.

    Returns:
        A :class:`DemoResult`; documents that failed to parse are in ``failed``.

    Raises:
        common.errors.RagSocketError: a service refused a step (e.g. a file name
            longer than 255 characters).
    """
    runtime = get_runtime()
    run = runtime.pool.run
    files, skipped = await run(collect_files, folder)
    tenant_id, api_key = await run(demo_tenant)
    await run(remove_previous, tenant_id)
    dataset_id, uploaded = await run(create_dataset, tenant_id, folder, files, settings.data_dir)
    if uploaded:
        await run(runtime.parser.start, tenant_id, dataset_id, [doc["id"] for doc in uploaded])
        if not await run(runtime.parser.idle.wait, PARSE_TIMEOUT):
            logger.warning("demo: parsing still running after %.0f s", PARSE_TIMEOUT)
    documents = await run(parsed_documents, tenant_id, dataset_id)
    chat_id = await run(create_chat, tenant_id, dataset_id, settings)
    return DemoResult(api_key, tenant_id, dataset_id, chat_id, documents, skipped)


def _client_host(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    port = settings.port if settings.port else "PORT"
    return f"{host}:{port}"


def report(result: DemoResult, settings: Settings, folder: Path) -> str:
    """The text printed after the demo was built."""
    address = _client_host(settings)
    done = [doc for doc in result.documents if doc["run"] == TaskStatus.DONE.value]
    lines = [
        "",
        "=" * 72,
        f"RagSocket demo: {len(done)} of {len(result.documents)} documents from {folder.resolve()} ready",
    ]
    for doc in result.documents:
        if doc["run"] == TaskStatus.DONE.value:
            lines.append(f"  ok      {doc['name']}: {doc['chunk_count']} chunks")
        else:
            lines.append(f"  FAILED  {doc['name']}: {doc['run']} {doc['progress_msg']}")
    for item in result.skipped:
        lines.append(f"  skipped {item}")
    if not result.documents:
        supported = " ".join(SUPPORTED_SUFFIXES)
        lines.append(f"  warning: no supported file found ({supported}); the chat will find nothing")
    payload = shlex.quote(f'{{"question": "{DEMO_QUESTION}", "stream": true}}')
    lines += [
        "",
        f"Demo API key: {result.api_key}",
        f"Demo chat id: {result.chat_id}",
        f"Demo dataset id: {result.dataset_id}",
        "",
        "Ask over WebSocket with the Python client:",
        f"  python example/websocket/python_client.py --host {address} --token {result.api_key} "
        f'--chat-id {result.chat_id} --question "{DEMO_QUESTION}"',
        "",
        "Ask over HTTP (server-sent events) with curl:",
        f"  curl -N -X POST http://{address}{API_PREFIX}/chats/{result.chat_id}/completions "
        f"-H 'Authorization: Bearer {result.api_key}' -H 'Content-Type: application/json' -d {payload}",
        "=" * 72,
        "",
    ]
    return "\n".join(lines)


async def run_demo(settings: Settings, folder: Path) -> None:
    """Build the demo (see the module docstring) and print what a client needs.

    Called by ``python -m api --demo`` after ``create_app`` (database and runtime are
    ready) and before the server listens.

    Raises:
        common.errors.RagSocketError: a service refused a step.
    """
    started = time.monotonic()
    print(f"RagSocket demo: ingesting {folder.resolve()} …", flush=True)
    result = await build_demo(settings, folder)
    for doc in result.failed:
        logger.warning("demo: %s was not parsed: %s %s", doc["name"], doc["run"], doc["progress_msg"])
    print(report(result, settings, folder), flush=True)
    logger.info("demo ready in %.1f s", time.monotonic() - started)
