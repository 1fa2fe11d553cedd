"""hypercorn settings for ``hypercorn --config python:api.hypercorn_config api.asgi:app``.

The same values as ``python -m api`` (``api.__main__.hypercorn_config``), read from
the ``RAGSOCKET_*`` settings, plus ``workers`` (``RAGSOCKET_WORKERS``, default 1).
hypercorn reads the module-level names below.
"""

from __future__ import annotations

from api.__main__ import hypercorn_config
from common.settings import load_settings

_settings = load_settings()
_config = hypercorn_config(_settings)

bind = _config.bind
workers = _settings.workers
websocket_max_message_size = _config.websocket_max_message_size
websocket_ping_interval = _config.websocket_ping_interval
accesslog = _config.accesslog
logger_class = _config.logger_class
access_log_format = _config.access_log_format
graceful_timeout = _config.graceful_timeout
keep_alive_timeout = _config.keep_alive_timeout
