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

from api.utils.api_utils import error_result, run_blocking
from api.utils.resources import find_resource, resource_candidates
from common.constants import RetCode

manager = Blueprint("openapi", __name__)

#: Looked for as described in :mod:`api.utils.resources`.
OPENAPI_RELATIVE = Path("docs") / "openapi.yaml"


@functools.lru_cache(maxsize=1)
def openapi_document() -> str:
    """The document as compact JSON text (read and converted once).

    Raises:
        FileNotFoundError: the file is found in none of the places searched.
        OSError: the file is unreadable.
    """
    path = find_resource(OPENAPI_RELATIVE)
    if path is None:
        searched = ", ".join(str(c) for c in resource_candidates(OPENAPI_RELATIVE))
        raise FileNotFoundError(f"{OPENAPI_RELATIVE} was not found (looked in: {searched})")
    document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


@manager.route("/openapi.json", methods=["GET"])
async def openapi_json() -> Response:
    """The OpenAPI document of ``/api/v1``, or 404 naming the places searched."""
    try:
        document = await run_blocking(openapi_document)
    except FileNotFoundError as missing:
        return error_result(RetCode.NOT_FOUND, f"the OpenAPI document is not installed: {missing}", status=404)
    return Response(
        document,
        mimetype="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )
