"""The WeChat Mini Program example (``example/wechat-miniprogram/``), run under Node.

The WeChat runtime is not available here: ``test/run-conversation.js`` loads the page's
own JavaScript (``pages/chat/chat.js``, ``utils/ragsocket.js``) in a vm context with a
small ``wx`` shim built on the ``ws`` npm package, and holds a conversation with a live
server: a question, a follow-up in the same session, and an answer whose socket is
dropped in the middle and resumed. ``test/run-scenario.js`` runs the page through the
failures that must never leave a question waiting: a refused key, a key past its
connection quota, a drop before the first frame of an answer, a socket that goes silent
(no frame, no close event), and Stop (on an open socket, and while offline).

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
    free_port,
    make_chat_over,
    run_cli,
    saved_session_sync,
    sync_api_client,
    variant_env,
)

EXAMPLE = ROOT / "example" / "wechat-miniprogram"
HARNESS = EXAMPLE / "test"
NODE = shutil.which("node")

LAMP_GUIDE = "# Lumen lamp guide\n\nThe Lumen lamp uses a 5 watt LED bulb that lasts about 15000 hours.\n"
KEY_QUOTA = 3  # WebSockets at once per API key on the test server

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (the WeChat example test runs the page under Node)"),
    pytest.mark.skipif(
        not (HARNESS / "node_modules" / "ws").is_dir(),
        reason="example/wechat-miniprogram/test/node_modules is missing: run .ci/setup.d/node-wechat.sh (npm ci)",
    ),
]


@pytest.fixture(scope="module")
def wechat_server(server_env, tmp_path_factory):
    """A server whose offline model writes one word every 30 ms, so a drop lands mid-answer,
    and that lets each API key open only a few sockets (the "limited" scenario fills it)."""
    env = variant_env(
        server_env,
        tmp_path_factory,
        "wechat",
        RAGSOCKET_OFFLINE_TOKEN_DELAY="0.03",
        RAGSOCKET_WS_MAX_CONNECTIONS_PER_KEY=str(KEY_QUOTA),
    )
    with ServerProcess(env) as process:
        yield process


@pytest.fixture(scope="module")
async def lamp_chat(wechat_server: ServerProcess, tenant: Tenant) -> str:
    return await make_chat_over(wechat_server, tenant, {"lamp_guide.md": LAMP_GUIDE.encode(), "lamp_story.txt": LAMP_STORY.encode()})


@pytest.fixture(scope="module")
def quota_key(wechat_server: ServerProcess, tenant: Tenant) -> str:
    """Another key of the tenant: the "limited" scenario fills its socket quota, not the tenant key's."""
    result = run_cli(wechat_server.env, "--json", "create-key", tenant.tenant_id, "--name", "wechat-quota")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["api_key"]


def run_harness(script: str, server: ServerProcess, key: str, chat_id: str, *options: str) -> dict:
    """Run a harness script of the example under Node; its JSON report (``ok``: every check passed)."""
    result = subprocess.run(
        [NODE, script, "--url", server.ws_root, "--key", key, "--chat-id", chat_id, *options],
        cwd=HARNESS,
        check=False,
        capture_output=True,
        text=True,
        timeout=100,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON from the harness (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n{server.log_tail()}"
    report = json.loads(lines[-1])
    print(json.dumps(report, ensure_ascii=False))  # shown with -s or on failure
    assert result.returncode == (0 if report.get("ok") else 1)
    assert report["ok"], json.dumps(report, indent=1, ensure_ascii=False)
    return report


def run_conversation(server: ServerProcess, tenant: Tenant, chat_id: str) -> dict:
    return run_harness("run-conversation.js", server, tenant.api_key, chat_id)


def run_scenario(server: ServerProcess, key: str, chat_id: str, scenario: str, *options: str) -> dict:
    return run_harness("run-scenario.js", server, key, chat_id, "--scenario", scenario, *options)


def saved_message(server: ServerProcess, tenant: Tenant, chat_id: str, session_id: str, message_id: str) -> dict:
    with sync_api_client(server, tenant) as api:
        session = saved_session_sync(api, chat_id, session_id)
    (message,) = [m for m in session["messages"] if m["id"] == message_id]
    return message


def test_mini_program_conversation_with_resume(wechat_server, tenant, lamp_chat):
    report = run_conversation(wechat_server, tenant, lamp_chat)
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


def test_refused_key_fails_the_question_at_once(wechat_server, lamp_chat):
    """Error frame 109 + close 1008: the question ends with the server's message, the
    page leaves its running state, a second question fails at once, nothing reconnects."""
    report = run_scenario(wechat_server, "ragsocket-not-a-real-key", lamp_chat, "refused")
    first, second = report["first"], report["second"]
    assert first["error"]["code"] == 109 and "Authentication error" in first["error"]["message"]
    assert first["shown_error"] == first["error"]["message"] and first["page_running"] is False
    assert first["ms"] < 5000 and second["ms"] < 500
    assert report["status"] == "refused" and report["sockets_opened"] == 1, "a refused key is never retried"


def test_connection_quota_fails_at_once_then_retries_with_backoff(wechat_server, quota_key, lamp_chat):
    """Error frame 108 "too many connections for this API key" + close 1008 is a quota
    that frees up: the question fails at once with that message, and the page retries
    (with backoff, not in a loop) until a socket of the key closes, then answers."""
    report = run_scenario(wechat_server, quota_key, lamp_chat, "limited", "--blockers", str(KEY_QUOTA))
    first = report["first"]
    assert first["error"]["code"] == 108 and f"limit {KEY_QUOTA}" in first["error"]["message"]
    assert first["shown_error"] == first["error"]["message"] and first["page_running"] is False
    assert report["status"] == "limited" and report["second"]["ms"] < 500
    assert 2 <= report["sockets_while_limited"] <= 8
    assert "5 watt LED bulb" in report["third"]["text"]


def test_drop_before_the_first_frame_fails_clearly(wechat_server, tenant, lamp_chat):
    """The socket drops after the question left and before its first frame: no message
    id to resume from. The question ends at once with "lost before the answer started"
    (not re-sent: it may be answered already), and asking again works."""
    report = run_scenario(wechat_server, tenant.api_key, lamp_chat, "lost-before-start")
    first, second = report["first"], report["second"]
    assert report["dropped"]["seq"] == 1
    assert first["error"]["code"] == 1006 and "before the answer started" in first["error"]["message"]
    assert first["shown_error"] == first["error"]["message"] and first["page_running"] is False
    assert first["ms"] < 5000
    assert "5 watt LED bulb" in second["text"] and second["error"] is None
    assert report["sockets_opened"] == 2


def test_silent_socket_is_closed_and_the_answer_resumed(wechat_server, tenant, lamp_chat):
    """A socket that goes silent (no frame, no close event) is noticed by the heartbeat
    when idle, by App.onShow's ping when the heartbeat is far off, and mid-answer, where
    the page reconnects and resumes: the text equals the saved answer."""
    pong_timeout_ms = 1000  # generous: a slow pong on a busy machine must not count as a dead socket
    report = run_scenario(wechat_server, tenant.api_key, lamp_chat, "frozen", "--pong-timeout-ms", str(pong_timeout_ms))
    assert report["idle"]["status"] == "closed" and report["idle"]["detected_ms"] < 5 * pong_timeout_ms
    assert report["probe"]["open_until_probed"] and report["probe"]["detected_ms"] < 3 * pong_timeout_ms
    answer = report["answer"]
    assert answer["resumes"] == 1 and answer["last_seq"] > report["frozen_at_seq"]
    assert report["heartbeat_timeouts"] == 3 and report["sockets_opened"] == 4
    saved = saved_message(wechat_server, tenant, lamp_chat, answer["session_id"], answer["message_id"])
    assert saved["interrupted"] is False, "the resumable answer went on while the socket was silent"
    assert answer["text"] == saved["content"], "the resumed answer equals the saved one"


def test_stop_always_ends_the_question(wechat_server, tenant, lamp_chat):
    """Stop on an open socket: the server ends the answer, saved as interrupted. Stop
    while the page cannot connect: the question ends at once (it used to stay queued)."""
    report = run_scenario(
        wechat_server, tenant.api_key, lamp_chat, "stop", "--offline-url", f"ws://127.0.0.1:{free_port()}"
    )
    stopped = report["on_open"]
    assert stopped["interrupted"] and report["interrupted_frame"]
    saved = saved_message(wechat_server, tenant, lamp_chat, stopped["session_id"], stopped["message_id"])
    assert saved["interrupted"] is True and saved["content"] == stopped["text"]
    offline = report["while_offline"]
    assert offline["interrupted"] and offline["page_running"] is False and report["stop_ms"] < 500
