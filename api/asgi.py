"""ASGI entry point for running under an external server with several workers::

    hypercorn --config python:api.hypercorn_config api.asgi:app

Each worker process imports this module and builds its own application (database
connections, worker pool, parse scheduler). Differences from ``python -m api``:

* ``--demo`` is not available;
* on SIGTERM hypercorn stops accepting, waits ``graceful_timeout`` for open
  connections, then closes them: running answers are not ended with an
  ``interrupted`` final frame and a 1001 close as ``python -m api`` does (their
  partial answers are still saved when the socket drops; resumable answers can be
  resumed on another worker when ``RAGSOCKET_REDIS_URL`` is set);
* the application-level keepalive (``RAGSOCKET_WS_PONG_TIMEOUT``) is installed here
  for each worker, and ``api.hypercorn_config`` applies the same hypercorn settings
  (bind, ping interval, message size, access log) as ``python -m api``.
"""

from __future__ import annotations

import logging

from api.app import create_app
from api.streaming import keepalive
from api.utils.log_redaction import install_log_redaction
from common.settings import load_settings

settings = load_settings()
logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
install_log_redaction()
keepalive.install(settings.ws_pong_timeout)
app = create_app(settings)
