"""Keep credentials out of logs.

API keys, tickets and session tokens may travel in URLs (``?token=``, ``?ticket=``)
because browsers and mini programs cannot always set headers on a WebSocket. These
helpers replace them with ``REDACTED`` in every log record of the process, whichever
logger and handler writes it (the application's, hypercorn's error and access logs,
libraries'): :func:`install_log_redaction` redacts each record as it is created.
:class:`RedactingAccessLogger` (hypercorn's ``logger_class``) also routes hypercorn's
error log through the root logger's handlers instead of a second handler of its own,
so that each of its lines is written once.
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
    """hypercorn logger whose lines never show credentials (URL or headers).

    hypercorn gives ``hypercorn.error`` a stderr handler of its own while the logger
    also propagates to the root logger, so every line came out twice (once without
    the root's format). When the root logger has handlers, that extra handler is
    dropped and the logger's level follows the root's (``RAGSOCKET_LOG_LEVEL``).
    The access log keeps its own handler (stdout or a file, not propagated).
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        install_log_redaction()
        root = logging.getLogger()
        error_logger = self.error_logger
        if error_logger is not None and error_logger.propagate and root.handlers and config.errorlog == "-":
            error_logger.handlers = []
            error_logger.setLevel(logging.NOTSET)

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        query = request.get("query_string", b"")
        headers = [
            (name, REDACTED.encode() if name.lower() in SECRET_HEADERS else value)
            for name, value in request.get("headers", [])
        ]
        clean = redact(query.decode("latin-1")).encode("latin-1") if query else query
        await super().access({**request, "query_string": clean, "headers": headers}, response, request_time)


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message, its traceback text and stack info."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format is reported by the handler as usual
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # formatted now so that a credential in an exception message is redacted too
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials in a record (see :func:`redact_record`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


class _RedactingRecordFactory:
    """Wraps the log record factory: every record is redacted when it is created."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        redact_record(record)
        return record


def install_log_redaction() -> None:
    """Redact every log record of the process, whichever handler writes it.

    Installs a record factory (:func:`logging.setLogRecordFactory`), so that records
    of loggers with handlers of their own (hypercorn's, libraries') are covered as
    well as the root logger's; the root's handlers also get a :class:`RedactingFilter`
    for records made without the factory (``logging.makeLogRecord``). Idempotent.
    """
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingRecordFactory):
        logging.setLogRecordFactory(_RedactingRecordFactory(factory))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
