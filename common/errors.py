"""Errors that carry an API code and a message safe to show a client.

Hierarchy::

    RagSocketError (code, message)
    ├── ArgumentError      101  a request field is missing or malformed
    ├── DataError          102  a referenced object does not exist or is in the wrong state
    ├── AuthError          109  missing, unknown or revoked credentials
    └── PermissionError_   108  the object belongs to another tenant (reported as not found)

Routes and the WebSocket layer turn these into envelopes in one place each
(:func:`api.utils.api_utils.error_result` and :func:`api.streaming.protocol.error_frame`);
any other exception is an internal error: logged with its traceback, answered with a
generic message and code 500.
"""

from __future__ import annotations

from common.constants import RetCode


class RagSocketError(Exception):
    """Base class: ``code`` is a :class:`RetCode`, ``message`` is client-safe."""

    code: RetCode = RetCode.SERVER_ERROR

    def __init__(self, message: str, code: RetCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ArgumentError(RagSocketError):
    """A request argument is missing or malformed (RAGFlow ARGUMENT_ERROR)."""

    code = RetCode.ARGUMENT_ERROR


class DataError(RagSocketError):
    """An object is missing, not the caller's, or in the wrong state (RAGFlow DATA_ERROR)."""

    code = RetCode.DATA_ERROR


class AuthError(RagSocketError):
    """Authentication failed (RAGFlow AUTHENTICATION_ERROR)."""

    code = RetCode.AUTHENTICATION_ERROR
