"""The Quart application: blueprints, error envelopes, start-up and shut-down.

:func:`create_app` binds the database, builds the runtime (worker pool, parse
scheduler) and mounts every ``api/apps/sdk`` blueprint under ``/api/v1``.
"""

from __future__ import annotations

import logging

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from api.apps import metrics as metrics_route
from api.apps import openapi as openapi_route
from api.apps import web as web_route
from api.apps.sdk import (
    agent,
    chat,
    dataset,
    dify,
    doc,
    openai_compat,
    session,
    system,
    websocket,
)
from api.db.db_models import init_database
from api.runtime import get_runtime, init_runtime
from api.streaming.protocol import describe_error
from api.utils import metrics
from api.utils.api_utils import error_result
from common.constants import API_PREFIX, RetCode
from common.errors import RagSocketError
from common.settings import Settings

logger = logging.getLogger(__name__)

BLUEPRINTS = (
    dataset.manager,
    doc.manager,
    chat.manager,
    session.manager,
    websocket.manager,
    system.manager,
    openai_compat.manager,
    agent.manager,
)
#: The seed API's routes live under /v1 (RAGFlow PR #11704's first version).
SEED_PREFIX = "/v1"


def _register_error_handlers(app: Quart) -> None:
    @app.errorhandler(RagSocketError)
    async def service_error(error: RagSocketError):
        return error_result(error.code, error.message)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException):
        code = RetCode.NOT_FOUND if error.code == 404 else RetCode.ARGUMENT_ERROR
        return error_result(code, f"{error.name}: {error.description}", status=error.code or 500)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception):
        code, message = describe_error(error)
        return error_result(code, message, status=500)


async def _count_request(response: Response) -> Response:
    """``after_request``: one HTTP request into the metrics (route template, outcome)."""
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    code = None
    if response.mimetype == "application/json":
        code = metrics.envelope_code(await response.get_data())
    metrics.http_request_done(rule, request.method, response.status_code, code)
    return response


def create_app(settings: Settings) -> Quart:
    """Build the application for ``settings`` (creates tables, starts nothing yet)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    init_database(settings.resolved_database_url(), max_connections=settings.db_max_connections)
    init_runtime(settings)
    app = Quart("ragsocket")
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # keep Chinese text readable
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["BODY_TIMEOUT"] = 300
    app.config["RESPONSE_TIMEOUT"] = None
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint, url_prefix=API_PREFIX)
    app.register_blueprint(websocket.seed, url_prefix=SEED_PREFIX)
    app.register_blueprint(dify.manager, url_prefix=SEED_PREFIX)  # Dify-style /v1/ws/chat-messages, completion-messages
    app.register_blueprint(metrics_route.manager)
    app.register_blueprint(openapi_route.manager, url_prefix=API_PREFIX)  # GET /api/v1/openapi.json
    app.register_blueprint(web_route.manager)  # GET /demo/: example/websocket/index.html
    app.after_request(_count_request)
    _register_error_handlers(app)

    @app.before_serving
    async def resume_parsing() -> None:
        runtime = get_runtime()
        resumed = await runtime.pool.run(runtime.parser.resume_interrupted)
        if resumed:
            logger.info("resumed parsing of %d documents interrupted by the last shutdown", resumed)

    @app.after_serving
    async def release() -> None:
        runtime = get_runtime()
        await runtime.event_log.close()
        await runtime.tickets.close()
        runtime.pool.shutdown()

    return app
