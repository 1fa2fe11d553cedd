"""Constants shared by every layer: API error codes, WebSocket close codes, statuses.

Sources:

* :class:`RetCode` follows RAGFlow's ``common/constants.py`` ``RetCode`` (the codes
  its HTTP API reference documents: 0 success, 100 argument error, 102 data error,
  109 authentication error, 500 server error ...).
* :class:`CloseCode` follows RFC 6455 section 7.4.1 and the IANA "WebSocket Close
  Code Number Registry" (1012-1014 are registered there, not in the RFC).
"""

from __future__ import annotations

from enum import Enum, IntEnum

SERVICE_NAME = "ragsocket"
API_PREFIX = "/api/v1"


class RetCode(IntEnum):
    """Envelope ``code`` values, as in RAGFlow's HTTP API reference."""

    SUCCESS = 0
    NOT_EFFECTIVE = 10
    EXCEPTION_ERROR = 100
    ARGUMENT_ERROR = 101
    DATA_ERROR = 102
    OPERATING_ERROR = 103
    CONNECTION_ERROR = 105
    RUNNING = 106
    PERMISSION_ERROR = 108
    AUTHENTICATION_ERROR = 109
    UNAUTHORIZED = 401
    SERVER_ERROR = 500
    FORBIDDEN = 403
    NOT_FOUND = 404
    #: Not in RAGFlow's set: a per-API-key rate limit was hit (HTTP's 429).
    TOO_MANY_REQUESTS = 429


class CloseCode(IntEnum):
    """WebSocket close status codes (RFC 6455 section 7.4.1, IANA registry).

    How this service uses each one is in :data:`CLOSE_CODE_USES` and in
    ``docs/websocket_api.md``.
    """

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


#: When the server closes with each code (the table of docs/websocket_api.md).
CLOSE_CODE_USES: dict[CloseCode, str] = {
    CloseCode.NORMAL_CLOSURE: "idle timeout: no request and no running answer for RAGSOCKET_WS_IDLE_TIMEOUT",
    CloseCode.GOING_AWAY: "server shutting down (after the grace period for running answers)",
    CloseCode.PROTOCOL_ERROR: (
        "malformed WebSocket framing, e.g. a compressed frame: permessage-deflate is not negotiated "
        "(sent by hypercorn/wsproto)"
    ),
    CloseCode.UNSUPPORTED_DATA: "a binary message: requests are JSON text messages",
    CloseCode.INVALID_DATA: "a text message that is not valid UTF-8 (sent by hypercorn/wsproto)",
    CloseCode.POLICY_VIOLATION: (
        "authentication failed (an API key offered as a subprotocol without ragsocket too), chat or agent not found "
        "or not yours, too many connections for the key (health sockets: for the client address)"
    ),
    CloseCode.MESSAGE_TOO_BIG: "a message larger than RAGSOCKET_WS_MAX_MESSAGE_BYTES, in bytes as they arrive",
    CloseCode.INTERNAL_ERROR: "keepalive ping timeout, or an unexpected server error",
    CloseCode.TRY_AGAIN_LATER: "the process has RAGSOCKET_WS_MAX_CONNECTIONS connections open",
}


class TaskStatus(str, Enum):
    """Parsing state of a document (RAGFlow's ``run`` field)."""

    UNSTART = "UNSTART"
    RUNNING = "RUNNING"
    CANCEL = "CANCEL"
    DONE = "DONE"
    FAIL = "FAIL"


class MessageRole(str, Enum):
    """Role of a message stored in a session (OpenAI / RAGFlow names)."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


#: Prefix of API keys issued by the CLI; RAGFlow keys start with ``ragflow-``.
API_KEY_PREFIX = "ragsocket-"
#: Characters of a key kept in clear for listing (prefix included).
API_KEY_VISIBLE_CHARS = 16

#: Default chunk size in tokens (RAGFlow's ``chunk_token_num`` default is 512).
DEFAULT_CHUNK_TOKENS = 512
DEFAULT_TOP_N = 6
DEFAULT_SIMILARITY_THRESHOLD = 0.2
DEFAULT_EMPTY_RESPONSE = "Sorry, I could not find anything relevant in the knowledge base."
DEFAULT_PROLOGUE = "Hi! I'm your assistant. What can I do for you?"
DEFAULT_SYSTEM_PROMPT = (
    "You are an intelligent assistant. Answer the question using the knowledge base "
    "below, and cite the passages you use with [ID:n] markers.\n"
    "Here is the knowledge base:\n{knowledge}\nThe above is the knowledge base."
)
OFFLINE_MODEL_NAME = "ragsocket-offline"

#: Text formats accepted by the document parsers (lower-case suffixes).
SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
