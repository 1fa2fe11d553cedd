"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document of the HTTP API.

The source is ``docs/openapi.yaml`` (kept next to the prose reference); it is read
once and served as JSON. No authentication: the document holds no secrets.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from quart import Blueprint, Response

from api.utils.api_utils import run_blocking

manager = Blueprint("openapi", __name__)

#: ``docs/`` of a source checkout; the Docker image copies ``docs/`` to /app/docs.
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


@functools.lru_cache(maxsize=1)
def openapi_document() -> str:
    """The document as compact JSON text (read and converted once).

    Raises:
        OSError: the file is missing or unreadable.
    """
    document: Any = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


@manager.route("/openapi.json", methods=["GET"])
async def openapi_json() -> Response:
    """The OpenAPI document of ``/api/v1``."""
    return Response(
        await run_blocking(openapi_document),
        mimetype="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )
