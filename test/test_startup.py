"""``python -m api`` start-up: the listening line names the bound address, bind errors name the setting."""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from api.__main__ import bind_sockets, hypercorn_config
from common.settings import SettingsError, load_settings
from test.support.server import ROOT, _child_env, variant_env

LISTENING = re.compile(r"RagSocket listening on http://([^/]+):(\d+)/api/v1 \(WebSocket: ws://\1:\2/api/v1/ws/")


def run_api(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=_child_env(env), capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    assert "RagSocket listening" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ragsocket: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_port_in_use_is_a_one_line_error_naming_the_setting(server_env, tmp_path_factory):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = variant_env(server_env, tmp_path_factory, "port-in-use", RAGSOCKET_HOST="127.0.0.1", RAGSOCKET_PORT=str(port))
        result = run_api(env)
    assert_one_line_error(result, "RAGSOCKET_PORT", f"127.0.0.1:{port}", "already in use")


def test_host_not_on_this_machine_names_the_host_setting(server_env, tmp_path_factory):
    with socket.socket() as probe:
        try:
            probe.bind(("192.0.2.1", 0))
        except OSError:
            pass
        else:
            pytest.skip("this machine binds non-local addresses (ip_nonlocal_bind)")
    env = variant_env(server_env, tmp_path_factory, "bad-host", RAGSOCKET_HOST="192.0.2.1", RAGSOCKET_PORT="0")
    assert_one_line_error(run_api(env), "RAGSOCKET_HOST", "192.0.2.1")


def test_permission_denied_names_the_port_setting(monkeypatch):
    settings = load_settings(host="127.0.0.1", port=80)
    config = hypercorn_config(settings)

    def refuse():
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(config, "create_sockets", refuse)
    with pytest.raises(SettingsError) as caught:
        bind_sockets(config, settings)
    assert str(caught.value).startswith("RAGSOCKET_PORT: permission denied to listen on 127.0.0.1:80")


def test_port_zero_prints_the_real_port_which_answers(server_env, tmp_path_factory):
    env = variant_env(server_env, tmp_path_factory, "port-zero", RAGSOCKET_HOST="127.0.0.1", RAGSOCKET_PORT="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "api"], cwd=ROOT, env=_child_env(env), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()  # the first line printed
        match = LISTENING.search(line)
        assert match, line
        host, port = match.group(1), int(match.group(2))
        assert host == "127.0.0.1" and port != 0
        deadline = time.monotonic() + 30
        while True:  # the port is listening already; the app may still be starting
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert response.status_code == 200 and response.json()["code"] == 0
    finally:
        process.terminate()
        process.wait(20)
