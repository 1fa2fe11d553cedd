"""``GET /metrics``: the process's Prometheus metrics (see :mod:`api.utils.metrics`).

Served at the root, not under ``/api/v1``, and without authentication, as Prometheus
scrapes it; keep it off the public side of the proxy.
"""

from __future__ import annotations

from quart import Blueprint, Response

from api.utils.metrics import metrics_payload

manager = Blueprint("metrics", __name__)


@manager.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    """The exposition text (``text/plain; version=0.0.4``)."""
    body, content_type = metrics_payload()
    return Response(body, content_type=content_type)
