"""Service routes: ``GET /api/v1/health`` and ``POST /api/v1/ws/tickets``."""

from __future__ import annotations

import logging

from peewee import PeeweeException
from quart import Blueprint, jsonify
from redis.exceptions import RedisError

from api.db.db_models import DB, db_session
from api.runtime import get_runtime
from api.utils.api_utils import (
    current_identity,
    get_result,
    run_blocking,
    token_required,
)
from common.constants import RetCode

manager = Blueprint("system", __name__)
logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def _database_ok() -> bool:
    with db_session():
        return DB.execute_sql("SELECT 1").fetchone()[0] == 1


async def _database_status() -> str:
    try:
        return "ok" if await run_blocking(_database_ok) else "error"
    except (PeeweeException, OSError) as error:
        logger.warning("health: database unreachable: %s", error)
        return "error"


async def _redis_status() -> str:
    runtime = get_runtime()
    ping = getattr(runtime.event_log, "ping", None)
    if ping is None:
        return "disabled"
    try:
        return "ok" if await ping() else "error"
    except RedisError as error:
        logger.warning("health: redis unreachable: %s", error)
        return "error"


@manager.route("/health", methods=["GET"])
async def health():
    """``{"status": "ok" | "degraded", "database", "redis", "version", "websocket_connections"}``;
    HTTP 503 when a configured dependency is down (for load balancers)."""
    database, redis_state = await _database_status(), await _redis_status()
    healthy = database == "ok" and redis_state in ("ok", "disabled")
    data = {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "redis": redis_state,
        "version": VERSION,
        "websocket_connections": get_runtime().registry.open_connections,
    }
    code = RetCode.SUCCESS if healthy else RetCode.SERVER_ERROR
    response = jsonify({"code": int(code), "message": "" if healthy else "a dependency is down", "data": data})
    response.status_code = 200 if healthy else 503
    return response


@manager.route("/ws/tickets", methods=["POST"])
@token_required
async def ticket(tenant_id: str):
    """A single-use ticket for ``?ticket=`` on a WebSocket URL, valid 60 s."""
    return get_result(get_runtime().tickets.issue(current_identity()))
