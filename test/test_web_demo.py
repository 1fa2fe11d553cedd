"""The browser demo page (``GET /demo/`` = ``example/websocket/index.html``) driven in
headless Chromium by Playwright against a live server: ticket auth, streaming with a
typing indicator, sources, multi-turn, stop, heartbeat, drop + reconnect + resume.

Debian's Chromium (``/usr/bin/chromium``, installed by ``.ci/setup.d/chromium.sh``)
is the browser: Playwright never downloads one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from test.support.documents import LAMP_QUESTION, LAMP_STORY
from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    api_client,
    corpus_files,
    create_tenant,
    make_chat_over,
    session_messages,
    variant_env,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "test-output" / "web_demo.png"
SCREENSHOT_PHONE = ROOT / "test-output" / "web_demo_phone.png"
WAIT_MS = 20_000

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing: run .ci/setup.d/chromium.sh (Debian's chromium package)"
)

@pytest.fixture(scope="module")
def demo_server(server_env: dict, tmp_path_factory: pytest.TempPathFactory):
    """A server whose offline model writes slowly (50 ms a word), so answers can be
    watched, stopped and interrupted by a drop."""
    with ServerProcess(variant_env(server_env, tmp_path_factory, "web_demo", RAGSOCKET_OFFLINE_TOKEN_DELAY="0.05")) as process:
        yield process


@pytest.fixture(scope="module")
def demo_tenant(demo_server: ServerProcess) -> Tenant:
    return create_tenant(demo_server.env, "web-demo")


@pytest.fixture(scope="module")
async def demo_chat(demo_server: ServerProcess, demo_tenant: Tenant, corpus_dir: Path) -> str:
    """A chat over the shipped documents and a lamp description (long answers)."""
    return await make_chat_over(demo_server, demo_tenant, {**corpus_files(corpus_dir), "lamp.txt": LAMP_STORY.encode()})


@pytest.fixture(scope="module")
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
async def page(browser) -> AsyncIterator:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        await context.close()


async def saved_messages(process: ServerProcess, tenant: Tenant, chat_id: str, session_id: str) -> list[dict]:
    async with api_client(process, tenant) as api:
        return await session_messages(api, chat_id, session_id)


async def last_message(page) -> dict:
    return await page.evaluate("window.__ragsocket.messages().at(-1)")


async def ask(page, question: str) -> None:
    await page.fill("#question", question)
    await page.click("#ask")


async def wait_done(page) -> dict:
    await page.wait_for_function("() => { const m = window.__ragsocket.messages().at(-1); return m && m.done; }", timeout=WAIT_MS)
    return await last_message(page)


async def wait_streaming(page, min_seq: int = 1) -> None:
    """Until the running answer has shown text (frame ``min_seq``) and is not finished."""
    await page.wait_for_function(
        "(n) => { const m = window.__ragsocket.messages().at(-1); return m && !m.done && m.seq >= n && m.answer.length > 0; }",
        arg=min_seq,
        timeout=WAIT_MS,
    )


async def save_screenshot(page, tmp_path: Path, name: str, shared: Path) -> None:
    local = tmp_path / name
    await page.screenshot(path=str(local), full_page=True)
    shared.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, shared)


async def test_demo_path_serves_the_page(demo_server):
    base = f"http://127.0.0.1:{demo_server.port}"
    async with httpx.AsyncClient() as client:
        redirect = await client.get(f"{base}/demo")
        page = await client.get(f"{base}/demo/")
    assert redirect.status_code == 308 and redirect.headers["location"] == "demo/"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (ROOT / "example" / "websocket" / "index.html").read_text(encoding="utf-8")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    assert "cdn" not in page.text.lower() and "<script src" not in page.text, "the page is self-contained"


async def test_full_conversation_in_chromium(page, demo_server, demo_tenant, demo_chat, tmp_path):
    key = demo_tenant.api_key
    socket_urls: list[str] = []
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    await page.goto(f"http://127.0.0.1:{demo_server.port}/demo/?heartbeat=1")
    assert await page.input_value("#server") == f"http://127.0.0.1:{demo_server.port}", "default server: same origin"
    assert await page.text_content("#status") == "Disconnected"

    # Connect: a ticket in the URL, never the key.
    await page.fill("#api-key", key)
    await page.fill("#chat-id", demo_chat)
    await page.click("#connect")
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    assert len(socket_urls) == 1 and "?ticket=" in socket_urls[0] and key not in socket_urls[0]

    # Heartbeat ({"type": "ping"} every second here, 25 s by default) is answered.
    await page.wait_for_function("() => window.__ragsocket.lastPong !== null", timeout=WAIT_MS)
    assert "Heartbeat OK" in await page.text_content("#heartbeat")

    # Ask: the answer streams under a typing indicator, then the sources name the document.
    await ask(page, "How many days do I have to return a purchase?")
    await wait_streaming(page)
    typing = page.locator("#log .msg.assistant").last.locator(".typing")
    assert await typing.is_visible(), "typing indicator while the answer streams"
    assert await page.get_attribute("#log .msg.assistant >> nth=-1", "aria-busy") == "true"
    first = await wait_done(page)
    assert not await typing.is_visible()
    assert "30 days" in first["answer"] and not first["error"] and not first["interrupted"]
    assert first["sources"][0] == "returns.md"
    sources = page.locator("#log .msg.assistant").last.locator(".sources li")
    assert await sources.count() >= 1
    assert "returns.md" in await sources.first.text_content()
    answer_text = await page.locator("#log .msg.assistant").last.locator(".answer-text").text_content()
    assert "30 days" in answer_text and "[ID:" not in answer_text, "citations are shown as numbered links"
    session_id = await page.evaluate("window.__ragsocket.sessionId")
    assert session_id and await page.text_content("#session-id") == session_id

    # Continue the conversation in the same session.
    await ask(page, "And how long does standard shipping take?")
    second = await wait_done(page)
    assert "3 to 5 business days" in second["answer"]
    assert second["session_id"] == session_id
    messages = await saved_messages(demo_server, demo_tenant, demo_chat, session_id)
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "How many days do I have to return a purchase?",
        "And how long does standard shipping take?",
    ]
    assert messages[-1]["content"] == second["answer"]

    # Stop a running answer: the final frame says interrupted.
    await ask(page, LAMP_QUESTION)
    await wait_streaming(page)
    assert await page.is_enabled("#stop") and not await page.is_enabled("#ask")
    await page.click("#stop")
    stopped = await wait_done(page)
    assert stopped["interrupted"] and not stopped["error"]
    note = page.locator("#log .msg.assistant").last.locator(".note.interrupted")
    assert await note.is_visible() and "Interrupted" in await note.text_content()
    saved = [m for m in await saved_messages(demo_server, demo_tenant, demo_chat, session_id) if m["id"] == stopped["id"]]
    assert saved and saved[0]["interrupted"] is True and saved[0]["content"] == stopped["answer"]
    assert await page.is_enabled("#ask") and not await page.is_enabled("#stop")

    # Network drop mid-answer: reconnect with a fresh ticket, resume, get the whole answer.
    await ask(page, LAMP_QUESTION)
    await wait_streaming(page, min_seq=3)
    before = await last_message(page)
    await page.evaluate("window.__ragsocket.ws.close()")
    await page.wait_for_selector('#status[data-state="reconnecting"]', timeout=WAIT_MS)
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    resumed = await wait_done(page)
    assert not before["done"] and len(before["answer"]) < len(resumed["answer"])
    assert await page.evaluate("window.__ragsocket.resumes") == 1
    assert not resumed["error"] and not resumed["interrupted"] and resumed["id"] == before["id"]
    assert len(socket_urls) == 2 and "?ticket=" in socket_urls[1] and socket_urls[1] != socket_urls[0]
    saved = [m for m in await saved_messages(demo_server, demo_tenant, demo_chat, session_id) if m["id"] == resumed["id"]]
    assert saved and saved[0]["content"] == resumed["answer"], "the resumed answer is exactly the saved one"
    assert "Porto" in resumed["answer"] and resumed["sources"][0] == "lamp.txt"

    # Text from the user and the server is shown as text, never as HTML.
    await page.click("#new-session")
    assert await page.text_content("#session-id") == "new"
    hostile = '<img src=x onerror="window.__pwned=1"> what is the warranty?'
    await ask(page, hostile)
    await wait_done(page)
    assert await page.locator("#log .msg.user").last.locator(".question-text").text_content() == hostile
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("#log img").count() == 0
    assert await page.evaluate("window.__ragsocket.sessionId") != session_id

    assert not page.js_errors, page.js_errors
    await save_screenshot(page, tmp_path, "web_demo.png", SCREENSHOT)
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling on a phone"
    await save_screenshot(page, tmp_path, "web_demo_phone.png", SCREENSHOT_PHONE)


async def test_wrong_key_shows_the_error_and_does_not_retry(page, demo_server, demo_chat):
    socket_urls: list[str] = []
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    await page.goto(f"http://127.0.0.1:{demo_server.port}/demo/")
    await page.fill("#api-key", "ragsocket-not-a-key")
    await page.fill("#chat-id", demo_chat)
    await page.click("#connect")
    await page.wait_for_selector('#status[data-state="refused"]', timeout=WAIT_MS)
    alert = await page.text_content("#error-text")
    assert "109" in alert and "API key" in alert
    assert await page.is_enabled("#connect") and not await page.is_enabled("#ask")
    assert socket_urls == [], "no WebSocket is opened without a ticket"


async def test_unknown_chat_is_refused_with_close_1008(page, demo_server, demo_tenant):
    await page.goto(f"http://127.0.0.1:{demo_server.port}/demo/")
    await page.fill("#api-key", demo_tenant.api_key)
    await page.fill("#chat-id", "0" * 32)
    await page.click("#connect")
    await page.wait_for_selector('#status[data-state="refused"]', timeout=WAIT_MS)
    alert = await page.text_content("#error-text")
    assert "1008" in alert, alert
    assert "chat" in alert.lower()
    await page.wait_for_timeout(1000)
    assert await page.evaluate("window.__ragsocket.status") == "refused", "no reconnect loop after 1008"


async def test_missing_pongs_make_the_page_reconnect(page, demo_server, demo_tenant, demo_chat):
    """A connection that stops answering pings (a dead network without a close event)
    is dropped after two heartbeat intervals and replaced with a fresh one."""
    socket_urls: list[str] = []
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    await page.goto(f"http://127.0.0.1:{demo_server.port}/demo/?heartbeat=0.5")
    await page.fill("#api-key", demo_tenant.api_key)
    await page.fill("#chat-id", demo_chat)
    await page.click("#connect")
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    # Swallow the pings of this socket, as a dead network would.
    await page.evaluate(
        """() => { const ws = window.__ragsocket.ws, send = ws.send.bind(ws);
                   ws.send = (text) => { if (!text.includes('"ping"')) send(text); }; }"""
    )
    await page.wait_for_function("() => document.querySelector('#status').textContent.includes('heartbeat timeout')", timeout=WAIT_MS)
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    assert len(socket_urls) == 2 and socket_urls[0] != socket_urls[1]
