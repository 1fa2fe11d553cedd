"""``python -m api.cli``: manage tenants and API keys.

Commands::

    create-tenant NAME            create a tenant and print a new API key
    create-key TENANT_ID [--name] issue another key for a tenant
    list-keys [--tenant-id ID]    list keys (prefix only, never the key)
    revoke-key KEY_ID_OR_PREFIX   revoke a key
    session-token TENANT_ID       print a signed login-session token

``--json`` prints one JSON object per command, for scripts. Exit status 0 on success,
1 on a refused operation (unknown tenant or key), 2 on invalid settings or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from peewee import DatabaseError

from api.db.db_models import init_database
from api.db.services import tenant_service
from common.errors import RagSocketError
from common.settings import SettingsError, ensure_secret_key, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m api.cli", description="Manage RagSocket tenants and API keys.")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    tenant = commands.add_parser("create-tenant", help="create a tenant and print its first API key")
    tenant.add_argument("name")
    key = commands.add_parser("create-key", help="issue another API key for a tenant")
    key.add_argument("tenant_id")
    key.add_argument("--name", default="")
    listing = commands.add_parser("list-keys", help="list API keys (prefix only)")
    listing.add_argument("--tenant-id")
    revoke = commands.add_parser("revoke-key", help="revoke an API key by id or prefix")
    revoke.add_argument("key")
    token = commands.add_parser("session-token", help="print a signed login-session token")
    token.add_argument("tenant_id")
    return parser


def _issue(tenant_id: str, name: str) -> dict[str, Any]:
    issued = tenant_service.create_api_key(tenant_id, name)
    return {"tenant_id": tenant_id, "key_id": issued.id, "api_key": issued.key, "prefix": issued.prefix}


def run_command(args: argparse.Namespace, secret_key: str) -> dict[str, Any]:
    """Execute one parsed command and return its result object.

    Raises:
        RagSocketError: unknown tenant or key.
    """
    if args.command == "create-tenant":
        tenant = tenant_service.create_tenant(args.name)
        return {"tenant_name": tenant.name, **_issue(tenant.id, "default")}
    if args.command == "create-key":
        return _issue(args.tenant_id, args.name)
    if args.command == "list-keys":
        return {"keys": tenant_service.list_api_keys(args.tenant_id)}
    if args.command == "revoke-key":
        return tenant_service.revoke_api_key(args.key)
    tenant_service.get_tenant(args.tenant_id)
    return {"tenant_id": args.tenant_id, "session_token": tenant_service.issue_session_token(args.tenant_id, secret_key)}


def _print_human(result: dict[str, Any]) -> None:
    if "keys" in result:
        for key in result["keys"]:
            state = "revoked" if key["revoked"] else "active"
            print(f"{key['id']}  {key['prefix']}…  tenant={key['tenant_id']}  {state}  {key['name']}")
        return
    for name, value in result.items():
        print(f"{name}: {value}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m api.cli`` and the ``ragsocket-admin`` script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"invalid setting: {error}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        init_database(settings.resolved_database_url(), max_connections=4)
    except DatabaseError as error:
        print(f"cannot open the database of RAGSOCKET_DATABASE_URL: {error}", file=sys.stderr)
        return 2
    try:
        result = run_command(args, ensure_secret_key(settings))
    except RagSocketError as error:
        if args.json:
            print(json.dumps({"error": error.message, "code": int(error.code)}))
        else:
            print(f"error: {error.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_human(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
