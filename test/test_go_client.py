"""The Go client (``example/websocket/go/main.go``, the "### Go" snippet of
``docs/websocket_api.md``), built offline and run against a live server.

No Go module proxy is reachable here: ``.ci/setup.d/go.sh`` installs Debian's
``golang-go`` and ``golang-github-gorilla-websocket-dev``, which puts gorilla/websocket's
source under ``/usr/share/gocode/src``, and the program is built in classic GOPATH mode
(``GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off``) into a temporary folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test.support.server import (
    ROOT,
    ServerProcess,
    Tenant,
    corpus_files,
    make_chat_over,
)

EXAMPLE = ROOT / "example" / "websocket" / "go" / "main.go"
DOCS = ROOT / "docs" / "websocket_api.md"
GOPATH = Path("/usr/share/gocode")
GORILLA = GOPATH / "src" / "github.com" / "gorilla" / "websocket"
GO = shutil.which("go")
RUN_TIMEOUT = 60.0


def missing_toolchain() -> str | None:
    """Why the Go client cannot be built here, or None."""
    if GO is None:
        return "go is not installed (run .ci/setup.d/go.sh: Debian's golang-go)"
    if not GORILLA.is_dir():
        return f"gorilla/websocket source missing in {GORILLA} (run .ci/setup.d/go.sh: golang-github-gorilla-websocket-dev)"
    return None


def docs_go_snippet() -> str:
    """The first ```go block of the "### Go" section of docs/websocket_api.md (headings
    inside code blocks, such as shell comments, do not end the section)."""
    lines = DOCS.read_text(encoding="utf-8").splitlines(keepends=True)
    in_section, fence, block = False, None, None
    for line in lines:
        stripped = line.rstrip("\n")
        if fence is None:
            if stripped.startswith("```"):
                fence = stripped[3:].strip()
                if in_section and fence == "go":
                    block = []
            elif stripped.startswith("#"):
                if in_section:
                    break
                in_section = stripped == "### Go"
        elif stripped == "```":
            if block is not None:
                return "".join(block)
            fence = None
        elif block is not None:
            block.append(line)
    raise AssertionError("docs/websocket_api.md has no ```go block under a '### Go' heading")


def test_docs_snippet_is_the_example():
    assert docs_go_snippet() == EXAMPLE.read_text(encoding="utf-8"), (
        "the Go snippet of docs/websocket_api.md differs from example/websocket/go/main.go"
    )


def go_env(cache: Path) -> dict[str, str]:
    """Offline GOPATH-mode build settings: Debian's gorilla/websocket, no proxy, no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(GO111MODULE="off", GOPATH=str(GOPATH), GOFLAGS="", GOPROXY="off", GOCACHE=str(cache), GOTOOLCHAIN="local")
    return env


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built with ``go build`` into a temporary folder."""
    reason = missing_toolchain()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("go")
    binary = out / "ragsocket-go-client"
    result = subprocess.run(
        [GO, "build", "-o", str(binary), EXAMPLE.name],
        cwd=EXAMPLE.parent, env=go_env(out / "cache"), capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, f"go build failed:\n{result.stdout}\n{result.stderr}"
    return binary


@pytest.fixture(scope="module")
async def chat_id(server: ServerProcess, tenant: Tenant, corpus_dir: Path) -> str:
    return await make_chat_over(server, tenant, corpus_files(corpus_dir))


async def run_client(binary: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run the client; returns (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(binary), *args,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RAGSOCKET_")}, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, stdout.decode(), stderr.decode()


async def test_go_client_streams_an_answer_with_sources(go_client, server, tenant, chat_id):
    status, out, err = await run_client(
        go_client, "-url", server.ws_root, "-key", tenant.api_key, "-chat", chat_id,
        "-question", "How many days do I have to return a purchase?",
    )
    assert status == 0, (out, err)
    answer, _, sources = out.rpartition("\nsources: ")
    assert "30 days" in answer, out
    assert "returns.md" in sources.strip().split(", "), out


async def test_go_client_takes_key_chat_and_question_from_env(go_client, server, tenant, chat_id):
    status, out, err = await run_client(
        go_client, "-url", server.ws_root,
        RAGSOCKET_API_KEY=tenant.api_key, RAGSOCKET_CHAT_ID=chat_id,
        RAGSOCKET_QUESTION="What does the warranty cover?",
    )
    assert status == 0, (out, err)
    answer, _, sources = out.rpartition("\nsources: ")
    assert "manufacturing defects" in answer and "warranty.txt" in sources.strip().split(", "), out


async def test_go_client_reports_an_error_frame(go_client, server, tenant, chat_id):
    status, out, err = await run_client(
        go_client, "-url", server.ws_root, "-key", tenant.api_key, "-chat", chat_id, "-question", "x" * 9000,
    )
    assert status == 1, (out, err)
    assert "error 101:" in err and "too long" in err, err


@pytest.mark.parametrize("case", ["bad key", "unknown chat"])
async def test_go_client_stops_on_1008(go_client, server, tenant, chat_id, case):
    key, chat = (("ragsocket-wrong", chat_id) if case == "bad key" else (tenant.api_key, "0" * 32))
    status, out, err = await run_client(go_client, "-url", server.ws_root, "-key", key, "-chat", chat)
    assert status == 2, (out, err)
    assert ("error 109:" if case == "bad key" else "error 102:") in err, err
    assert "close 1008" in err, err
