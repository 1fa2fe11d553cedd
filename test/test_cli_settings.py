"""``python -m api.cli`` (tenants, API keys) and start-up settings validation."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test.support.server import ROOT, _child_env, api_client, auth, run_cli


def cli_json(env: dict, *args: str) -> dict:
    result = run_cli(env, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_create_tenant_prints_a_working_key(server):
    data = cli_json(server.env, "create-tenant", "carol")
    assert set(data) >= {"tenant_id", "tenant_name", "key_id", "api_key", "prefix"}
    assert data["tenant_name"] == "carol" and len(data["tenant_id"]) == 32
    assert data["api_key"].startswith("ragsocket-") and len(data["api_key"]) > 40
    assert data["prefix"] == data["api_key"][:16]
    async with api_client(server, data["api_key"]) as api:
        body = (await api.get("/datasets")).json()
    assert body == {"code": 0, "message": "", "data": []}, "a new tenant sees no dataset"


def test_create_tenant_human_output(server):
    result = run_cli(server.env, "create-tenant", "dave")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert lines["tenant_name"] == "dave" and lines["api_key"].startswith("ragsocket-")


def test_list_keys_shows_prefixes_only(server):
    first = cli_json(server.env, "create-tenant", "erin")
    second = cli_json(server.env, "create-key", first["tenant_id"], "--name", "ci")
    listed = run_cli(server.env, "--json", "list-keys", "--tenant-id", first["tenant_id"])
    assert listed.returncode == 0
    keys = json.loads(listed.stdout)["keys"]
    assert [(k["id"], k["prefix"], k["name"], k["revoked"]) for k in keys] == [
        (first["key_id"], first["prefix"], "default", False),
        (second["key_id"], second["prefix"], "ci", False),
    ]
    human = run_cli(server.env, "list-keys", "--tenant-id", first["tenant_id"])
    assert human.returncode == 0 and f"{first['prefix']}…" in human.stdout and first["key_id"] in human.stdout
    everything = run_cli(server.env, "--json", "list-keys")
    for output in (listed.stdout, human.stdout, everything.stdout, listed.stderr, human.stderr):
        assert first["api_key"] not in output and second["api_key"] not in output
        assert first["api_key"][16:] not in output, "nothing past the visible prefix"
    assert second["key_id"] in everything.stdout


async def test_revoked_key_gets_109(server):
    tenant = cli_json(server.env, "create-tenant", "frank")
    spare = cli_json(server.env, "create-key", tenant["tenant_id"])
    assert cli_json(server.env, "revoke-key", tenant["key_id"]) == {"id": tenant["key_id"], "prefix": tenant["prefix"], "revoked": True}
    async with httpx.AsyncClient(base_url=server.api_url) as client:
        body = (await client.get("/datasets", headers=auth(tenant["api_key"]))).json()
        assert body == {"code": 109, "message": "Authentication error: API key has been revoked", "data": None}
        still = (await client.get("/datasets", headers=auth(spare["api_key"]))).json()
        assert still["code"] == 0, "the tenant's other key still works"
    # by prefix too; revoking twice is fine
    assert run_cli(server.env, "revoke-key", spare["prefix"]).returncode == 0
    assert run_cli(server.env, "revoke-key", spare["key_id"]).returncode == 0
    keys = cli_json(server.env, "list-keys", "--tenant-id", tenant["tenant_id"])["keys"]
    assert [k["revoked"] for k in keys] == [True, True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("revoke-key", "no-such-key"), "error: no API key matches 'no-such-key'"),
        (("create-key", "no-such-tenant"), "error: tenant 'no-such-tenant' not found"),
        (("session-token", "no-such-tenant"), "error: tenant 'no-such-tenant' not found"),
        (("create-tenant", ""), "error: tenant name must be 1 to 128 characters"),
    ],
)
def test_refused_commands_exit_1_with_a_message(server, args, message):
    result = run_cli(server.env, *args)
    assert result.returncode == 1
    assert result.stderr.strip() == message and result.stdout == ""
    as_json = run_cli(server.env, "--json", *args)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"error": message.removeprefix("error: "), "code": 102}


def test_usage_errors_exit_2(server):
    result = run_cli(server.env, "frobnicate")
    assert result.returncode == 2 and "invalid choice: 'frobnicate'" in result.stderr


def test_cli_refuses_bad_settings(server, tmp_path):
    env = {**server.env, "RAGSOCKET_DATABASE_URL": "postgres://x", "RAGSOCKET_DATA_DIR": str(tmp_path)}
    result = run_cli(env, "list-keys")
    assert result.returncode == 2
    assert result.stderr.startswith("invalid setting: RAGSOCKET_DATABASE_URL: ")
    unreachable = {**server.env, "RAGSOCKET_DATABASE_URL": f"sqlite:///{tmp_path}/missing/dir/x.db", "RAGSOCKET_DATA_DIR": str(tmp_path)}
    result = run_cli(unreachable, "list-keys")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cannot open the database of RAGSOCKET_DATABASE_URL: ")


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RAGSOCKET_PORT", "notaport", "RAGSOCKET_PORT: Input should be a valid integer"),
        ("RAGSOCKET_PORT", "70000", "RAGSOCKET_PORT: Input should be less than or equal to 65535"),
        ("RAGSOCKET_DATABASE_URL", "postgres://x", "RAGSOCKET_DATABASE_URL: Value error, must start with sqlite:/// or mysql://"),
        ("RAGSOCKET_DATABASE_URL", "sqlite://", "RAGSOCKET_DATABASE_URL: sqlite URL needs a path"),
        ("RAGSOCKET_LLM_BASE_URL", "ftp://x", "RAGSOCKET_LLM_BASE_URL: Value error, must be an http:// or https:// URL"),
        ("RAGSOCKET_LOG_LEVEL", "LOUD", "RAGSOCKET_LOG_LEVEL: Value error, must be one of DEBUG"),
    ],
)
def test_server_refuses_a_bad_setting(tmp_path, variable, value, message):
    env = _child_env({"RAGSOCKET_DATA_DIR": str(tmp_path / "data"), "RAGSOCKET_PORT": "0"})
    env[variable] = value
    result = subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"ragsocket: invalid setting: {message}"), result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists(), "nothing is created before the settings are valid"


async def test_secret_key_file_is_private_and_reused(server, tenant, tmp_path):
    path = Path(server.env["RAGSOCKET_DATA_DIR"]) / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert len(key.strip()) == 64
    token = cli_json(server.env, "session-token", tenant.tenant_id)["session_token"]
    async with api_client(server, token) as client:
        assert (await client.get("/datasets")).json()["code"] == 0, "the CLI and the server share the key"
    assert path.read_text() == key
    # a fresh data dir: created once, then reused by the next process
    env = {**server.env, "RAGSOCKET_DATA_DIR": str(tmp_path)}
    first = cli_json(env, "session-token", tenant.tenant_id)["session_token"]
    fresh = (tmp_path / "secret_key").read_text()
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    cli_json(env, "session-token", tenant.tenant_id)
    assert (tmp_path / "secret_key").read_text() == fresh != key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret_key"], "no temporary file left behind"
    async with api_client(server, first) as client:
        body = (await client.get("/datasets")).json()
    assert body == {"code": 109, "message": "Authentication error: invalid or expired session token", "data": None}
