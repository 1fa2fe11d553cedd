"""``python -m api --demo FOLDER`` and ``example/websocket/python_client.py``, for real.

The demo server runs as a subprocess with its own data folder (the database is the
run's shared one); the client runs as a subprocess against it, as a user would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import ENV_PREFIX, Settings
from test.support.server import (
    ROOT,
    ServerProcess,
    ok,
    saved_session_sync,
    sync_api_client,
)

CLIENT = ROOT / "example" / "websocket" / "python_client.py"

ENGLISH_DOC = """# Lumen lamp guide

The Lumen lamp uses a 5 watt LED bulb that lasts about 15000 hours.

Clean the lamp shade with a dry cloth only.
"""
CHINESE_DOC = """# 会员积分

会员每消费一元可获得一个积分，一百积分可以抵扣一元现金。
"""


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small documents (English, Chinese), one nested, and a file to skip."""
    folder = tmp_path_factory.mktemp("demo-docs")
    (folder / "lamp_guide.md").write_text(ENGLISH_DOC, encoding="utf-8")
    (folder / "nested").mkdir()
    (folder / "nested" / "points_zh.txt").write_text(CHINESE_DOC, encoding="utf-8")
    (folder / "logo.png").write_bytes(b"\x89PNG not a document")
    return folder


@pytest.fixture(scope="module")
def demo_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Settings of the demo server: the built-in offline model, no delay between words."""
    return {
        "RAGSOCKET_DATABASE_URL": database_url,
        "RAGSOCKET_DATA_DIR": str(tmp_path_factory.mktemp("demo-data")),
        "RAGSOCKET_OFFLINE_TOKEN_DELAY": "0",
    }


def demo_credentials(server: ServerProcess) -> tuple[str, str]:
    """The API key and chat id the demo printed."""
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    key = re.search(r"^Demo API key: (\S+)$", log, re.MULTILINE)
    chat = re.search(r"^Demo chat id: (\S+)$", log, re.MULTILINE)
    assert key and chat, f"the demo did not print its key and chat id:\n{log}"
    return key.group(1), chat.group(1)


@pytest.fixture(scope="module")
def demo_server(demo_env: dict, demo_folder: Path) -> Iterator[ServerProcess]:
    with ServerProcess(demo_env, args=("--demo", str(demo_folder))) as server:
        yield server


def run_client(server: ServerProcess, token: str, chat_id: str, *args: str, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, str(CLIENT), "--host", f"127.0.0.1:{server.port}", "--token", token, "--chat-id", chat_id, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_prints_ready_to_paste_commands(demo_server: ServerProcess):
    key, chat_id = demo_credentials(demo_server)
    log = demo_server.log_path.read_text(encoding="utf-8")
    assert key.startswith("ragsocket-")
    assert (
        f"python example/websocket/python_client.py --host 127.0.0.1:{demo_server.port} --token {key} "
        f'--chat-id {chat_id} --question "What is RagSocket?"'
    ) in log
    assert f"curl -N -X POST http://127.0.0.1:{demo_server.port}/api/v1/chats/{chat_id}/completions" in log
    assert "ok      lamp_guide.md" in log and "ok      points_zh.txt" in log
    assert "skipped logo.png (unsupported type)" in log


def test_client_streams_answer_and_sources(demo_server: ServerProcess):
    key, chat_id = demo_credentials(demo_server)
    result = run_client(demo_server, key, chat_id, "--question", "Which bulb does the Lumen lamp use?")
    assert result.returncode == 0, result.stderr
    assert "5 watt LED bulb" in result.stdout
    sources = result.stdout.split("Sources:", 1)[1]
    assert "lamp_guide.md (similarity" in sources


def test_client_debug_prints_raw_frames(demo_server: ServerProcess):
    key, chat_id = demo_credentials(demo_server)
    result = run_client(demo_server, key, chat_id, "--question", "How do I clean the lamp shade?", "--debug")
    assert result.returncode == 0, result.stderr
    assert "dry cloth" in result.stdout
    assert '<< {"code":0,"message":"","data":true}' in result.stderr


def test_client_bad_token_exits_non_zero(demo_server: ServerProcess):
    _, chat_id = demo_credentials(demo_server)
    result = run_client(demo_server, "ragsocket-not-a-real-key", chat_id, "--question", "Hello?")
    assert result.returncode == 2, result.stderr
    # The 109 error frame precedes the close, but the close code is what the client
    # relies on (the frame is occasionally not delivered when the question was
    # already on the wire).
    assert "close 1008" in result.stderr


def test_client_interactive_keeps_the_session(demo_server: ServerProcess):
    key, chat_id = demo_credentials(demo_server)
    questions = "Which bulb does the Lumen lamp use?\n积分怎么抵扣现金？\n"
    result = run_client(demo_server, key, chat_id, "--interactive", stdin=questions)
    assert result.returncode == 0, result.stderr
    assert "5 watt LED bulb" in result.stdout
    assert "一百积分可以抵扣一元现金" in result.stdout
    assert result.stdout.count("Sources:") == 2
    session = re.search(r"^Session: (\w+)$", result.stdout, re.MULTILINE)
    assert session, result.stdout
    with sync_api_client(demo_server, key) as api:
        saved = saved_session_sync(api, chat_id, session.group(1))
    roles = [message["role"] for message in saved["messages"]]
    assert roles.count("user") == 2, "both questions went to one session"


def test_demo_runs_again_on_the_same_data(demo_env: dict, demo_folder: Path, tmp_path: Path):
    env = {**demo_env, "RAGSOCKET_DATA_DIR": str(tmp_path / "data")}
    with ServerProcess(env, args=("--demo", str(demo_folder))) as first:
        first_key, first_chat = demo_credentials(first)
    with ServerProcess(env, args=("--demo", str(demo_folder))) as again:
        key, chat_id = demo_credentials(again)
        assert key != first_key and chat_id != first_chat
        with sync_api_client(again, key) as api:
            datasets = ok(api.get("/datasets", params={"name": "demo"}))
            chats = ok(api.get("/chats", params={"name": "demo"}))
        assert len(datasets) == 1 and datasets[0]["document_count"] == 2, "the dataset was recreated, not doubled"
        assert [chat["id"] for chat in chats] == [chat_id]
        result = run_client(again, key, chat_id, "--question", "Which bulb does the Lumen lamp use?")
        assert result.returncode == 0, result.stderr
        assert "5 watt LED bulb" in result.stdout and "lamp_guide.md" in result.stdout
        old_chat = run_client(again, key, first_chat, "--question", "Which bulb does the Lumen lamp use?")
        assert old_chat.returncode != 0, "the previous demo chat was deleted"


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(RAGSOCKET_\w+)` \|", readme, re.MULTILINE))
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert expected - rows == set(), "settings missing from the README's settings table"
    assert rows - expected == {"RAGSOCKET_TEST_MYSQL_URL"}, "README lists settings that do not exist"
