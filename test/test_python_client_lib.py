"""``example/websocket/ragsocket_client.py``, the Python client library, against a live server:
sync and asyncio clients, a transparent resume after a forced drop, stop, errors."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading

import pytest

from test.support.documents import LAMP_QUESTION, LAMP_STORY
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    make_chat_over,
    variant_env,
    wait_saved_message,
)

sys.path.insert(0, str(ROOT / "example" / "websocket"))
from ragsocket_client import (  # noqa: E402
    AsyncRagSocketClient,
    AuthenticationError,
    RagSocketClient,
)


@pytest.fixture(scope="module")
def slow_server(server_env, tmp_path_factory):
    """A server whose offline model writes one word every 30 ms (answers take ~1-2 s)."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "pylib", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.03")) as process:
        yield process


@pytest.fixture(scope="module")
async def lamp_chat(slow_server: ServerProcess, tenant: Tenant) -> str:
    return await make_chat_over(slow_server, tenant, {"lamp.txt": LAMP_STORY.encode()})


def drop(sock: socket.socket) -> None:
    """Cut the TCP connection under the client, without a close frame (like a network change)."""
    sock.shutdown(socket.SHUT_RDWR)


def test_sync_answer_equals_saved_message_and_follow_up_keeps_session(slow_server, tenant, lamp_chat):
    with RagSocketClient(slow_server.ws_root, api_key=tenant.api_key, chat_id=lamp_chat) as client:
        deltas = [frame["data"]["answer"] for frame in client.stream(LAMP_QUESTION)]
        answer = client.last_answer
        assert answer.done and answer.error is None and answer.resumes == 0
        assert "".join(deltas) == answer.text and "Porto" in answer.text
        assert answer.document_names == ["lamp.txt"]
        saved = wait_saved_message(slow_server, tenant, lamp_chat, answer.session_id, answer.message_id)
        assert saved["content"] == answer.text and saved["interrupted"] is False
        follow = client.ask("And how many watts does the bulb draw?", session_id=answer.session_id)
        assert follow.session_id == answer.session_id and follow.message_id != answer.message_id
        assert "five watts" in follow.text


def test_sync_drop_mid_answer_is_resumed_transparently(slow_server, tenant, lamp_chat):
    with RagSocketClient(slow_server.ws_root, api_key=tenant.api_key, chat_id=lamp_chat, backoff=0.1) as client:
        text, seqs, dropped = "", [], False
        for frame in client.stream(LAMP_QUESTION):
            text += frame["data"]["answer"]
            seqs.append(frame["data"]["seq"])
            if len(seqs) == 3 and not dropped:
                dropped = True
                threading.Thread(target=drop, args=(client.connection.socket,)).start()
        answer = client.last_answer
        assert dropped and answer.resumes == 1 and client.reconnects == 1
        assert seqs == list(range(1, len(seqs) + 1)), "no frame lost or repeated"
        assert text == answer.text
        saved = wait_saved_message(slow_server, tenant, lamp_chat, answer.session_id, answer.message_id)
        assert saved["interrupted"] is False, "a resumable answer went on while the client was away"
        assert answer.text == saved["content"]
        # the new connection serves the next question
        assert "Porto" in client.ask(LAMP_QUESTION, session_id=answer.session_id).text


def test_sync_stop_interrupts(slow_server, tenant, lamp_chat):
    with RagSocketClient(slow_server.ws_root, api_key=tenant.api_key, chat_id=lamp_chat) as client:
        frames = []
        for frame in client.stream(LAMP_QUESTION):
            frames.append(frame)
            if len(frames) == 2:
                client.stop()
        answer = client.last_answer
        assert answer.interrupted and frames[-1]["data"]["interrupted"] is True
        saved = wait_saved_message(slow_server, tenant, lamp_chat, answer.session_id, answer.message_id)
        assert saved["interrupted"] is True and saved["content"] == answer.text


def test_sync_refused_key_raises(slow_server, lamp_chat):
    with pytest.raises(AuthenticationError) as refused:
        with RagSocketClient(slow_server.ws_root, api_key="ragsocket-not-a-real-key", chat_id=lamp_chat) as client:
            client.ask("Hello?")
    assert refused.value.code == 1008


async def test_async_answer_and_resume_after_forced_drop(slow_server, tenant, lamp_chat):
    async with AsyncRagSocketClient(slow_server.ws_root, api_key=tenant.api_key, chat_id=lamp_chat, backoff=0.1) as client:
        plain = await client.ask(LAMP_QUESTION)
        assert plain.error is None and "Porto" in plain.text
        saved = await asyncio.to_thread(wait_saved_message, slow_server, tenant, lamp_chat, plain.session_id, plain.message_id)
        assert plain.text == saved["content"]

        text, seqs = "", []
        async for frame in client.stream(LAMP_QUESTION, session_id=plain.session_id):
            text += frame["data"]["answer"]
            seqs.append(frame["data"]["seq"])
            if len(seqs) == 4 and client.reconnects == 0:
                client.connection.transport.abort()  # the TCP connection drops, no close frame
        answer = client.last_answer
        assert answer.resumes == 1 and answer.session_id == plain.session_id
        assert seqs == list(range(1, len(seqs) + 1))
        saved = await asyncio.to_thread(wait_saved_message, slow_server, tenant, lamp_chat, answer.session_id, answer.message_id)
        assert saved["interrupted"] is False
        assert text == answer.text == saved["content"]


async def test_async_drop_from_another_task(slow_server, tenant, lamp_chat):
    async with AsyncRagSocketClient(slow_server.ws_root, api_key=tenant.api_key, chat_id=lamp_chat, backoff=0.1) as client:
        first_frame = asyncio.Event()

        async def cut() -> None:
            await first_frame.wait()
            await asyncio.sleep(0.1)
            client.connection.transport.abort()

        cutter = asyncio.create_task(cut())
        text = ""
        async for frame in client.stream(LAMP_QUESTION):
            text += frame["data"]["answer"]
            first_frame.set()
        await cutter
        answer = client.last_answer
        assert answer.resumes == 1
        saved = await asyncio.to_thread(wait_saved_message, slow_server, tenant, lamp_chat, answer.session_id, answer.message_id)
        assert text == saved["content"]
