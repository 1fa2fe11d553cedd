"""The WeChat Mini Program example (``example/wechat-miniprogram/``), run under Node.

The WeChat runtime is not available here: ``test/run-conversation.js`` loads the page's
own JavaScript (``pages/chat/chat.js``, ``utils/ragsocket.js``) in a vm context with a
small ``wx`` shim built on the ``ws`` npm package, and holds a conversation with a live
server: a question, a follow-up in the same session, and an answer whose socket is
dropped in the middle and resumed.

A real Mini Program may only open ``wss://`` URLs whose domain is on its allow list (no
IP, no localhost); the shim keeps that rule but, for this test only, lets the page talk
to ``ws://127.0.0.1`` (``allowInsecureLoopback``). Setup: ``.ci/setup.d/node-wechat.sh``
(``npm ci`` in the test folder).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from test.support.documents import LAMP_STORY
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    make_chat_over,
    saved_session_sync,
    sync_api_client,
    variant_env,
)

EXAMPLE = ROOT / "example" / "wechat-miniprogram"
HARNESS = EXAMPLE / "test"
NODE = shutil.which("node")

LAMP_GUIDE = "# Lumen lamp guide\n\nThe Lumen lamp uses a 5 watt LED bulb that lasts about 15000 hours.\n"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the WeChat example test runs the page under Node)"),
    pytest.mark.skipif(
        not (HARNESS / "node_modules" / "ws").is_dir(),
        reason="example/wechat-miniprogram/test/node_modules is missing: run .ci/setup.d/node-wechat.sh (npm ci)",
    ),
]


@pytest.fixture(scope="module")
def wechat_server(server_env, tmp_path_factory):
    """A server whose offline model writes one word every 30 ms, so a drop lands mid-answer."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "wechat", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.03")) as process:
        yield process


@pytest.fixture(scope="module")
async def lamp_chat(wechat_server: ServerProcess, tenant: Tenant) -> str:
    return await make_chat_over(wechat_server, tenant, {"lamp_guide.md": LAMP_GUIDE.encode(), "lamp_story.txt": LAMP_STORY.encode()})


def run_conversation(server: ServerProcess, tenant: Tenant, chat_id: str) -> dict:
    result = subprocess.run(
        [NODE, "run-conversation.js", "--url", server.ws_root, "--key", tenant.api_key, "--chat-id", chat_id],
        cwd=HARNESS,
        capture_output=True,
        text=True,
        timeout=100,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from the harness (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n{server.log_tail()}"
    report = json.loads(lines[-1])
    assert result.returncode == (0 if report.get("ok") else 1)
    return report


def test_mini_program_conversation_with_resume(wechat_server, tenant, lamp_chat):
    report = run_conversation(wechat_server, tenant, lamp_chat)
    print(json.dumps(report, ensure_ascii=False))  # shown with -s or on failure
    assert report["ok"], json.dumps(report, indent=1, ensure_ascii=False)
    first, follow_up, resumed = report["answers"]

    # the answer streamed, rendered, and cited its source by document name
    assert "5 watt LED bulb" in first["text"]
    assert "lamp_guide.md" in first["sources"]
    assert "[lamp_guide.md]" in first["citations"], "[ID:n] markers render as the document name"
    assert report["renderer_ok"] and report["pongs"] > 0, "the renderer self-check and the application heartbeat"

    # the follow-up went to the same session (kept in storage too)
    assert follow_up["session_id"] == first["session_id"] == report["stored_session"]
    assert follow_up["message_id"] != first["message_id"]

    # the third answer lost its socket mid-answer and was resumed on a new one
    assert report["dropped_at_seq"] is not None and resumed["resumes"] == 1
    assert resumed["last_seq"] > report["dropped_at_seq"]
    assert report["sockets_opened"] == 2 and report["max_open_sockets"] == 1

    with sync_api_client(wechat_server, tenant) as api:
        session = saved_session_sync(api, lamp_chat, first["session_id"])
    messages = {m["id"]: m for m in session["messages"]}
    assert [m["role"] for m in session["messages"]].count("user") == 3, "all three questions in one session"
    assert messages[first["message_id"]]["content"] == first["text"]
    saved = messages[resumed["message_id"]]
    assert saved["interrupted"] is False, "the resumable answer went on while the socket was down"
    assert resumed["text"] == saved["content"], "the resumed answer equals the saved one"
