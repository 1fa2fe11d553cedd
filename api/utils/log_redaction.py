"""Keep credentials out of logs.

API keys, tickets and session tokens may travel in URLs (``?token=``, ``?ticket=``)
because browsers and mini programs cannot always set headers on a WebSocket. These
helpers replace them with ``REDACTED`` in hypercorn's access log and in every
application log record.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hypercorn.logging import Logger

REDACTED = "REDACTED"
_QUERY_SECRET = re.compile(r"((?:^|[?&])(?:token|ticket|api_key|key)=)[^&\s\"']*", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_API_KEY = re.compile(r"ragsocket-[A-Za-z0-9_-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]+(@)")


def redact(text: str) -> str:
    """``text`` with query-string credentials, bearer tokens, URL passwords and API
    keys replaced."""
    text = _QUERY_SECRET.sub(rf"\g<1>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    text = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", text)
    return _API_KEY.sub(REDACTED, text)


#: Access log line: hypercorn's default with the (redacted) query string added.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s?%(q)s %(H)s" %(s)s %(b)s %(L)ss "%(a)s"'
#: Request headers whose values never reach the access log.
SECRET_HEADERS = frozenset({b"authorization", b"sec-websocket-protocol", b"cookie"})


class RedactingAccessLogger(Logger):
    """hypercorn logger whose access lines never show credentials (URL or headers)."""

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        query = request.get("query_string", b"")
        headers = [
            (name, REDACTED.encode() if name.lower() in SECRET_HEADERS else value)
            for name, value in request.get("headers", [])
        ]
        clean = redact(query.decode("latin-1")).encode("latin-1") if query else query
        await super().access({**request, "query_string": clean, "headers": headers}, response, request_time)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials in a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Attach :class:`RedactingFilter` to every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
