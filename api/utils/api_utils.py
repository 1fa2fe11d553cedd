"""Route helpers: authentication decorators, the response envelope, validation, and
the bodies shared by the list and delete routes.

Envelope (RAGFlow's HTTP API reference): ``{"code": 0, "message": "", "data": …}``;
errors carry a non-zero :class:`~common.constants.RetCode` and HTTP status 200, as
RAGFlow answers, so that RAGFlow SDK clients read the code from the body.

Credentials: ``Authorization: Bearer <API key>`` (HTTP and WebSocket); on WebSockets
also a single-use ``?ticket=``, the key as a ``Sec-WebSocket-Protocol`` value, or
``?token=<API key>`` (browsers and WeChat cannot always set headers); a login-session
token signed with itsdangerous is accepted wherever a key is.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Response, g, jsonify, request, websocket

from api.db.db_models import APIToken, Tenant, db_session
from api.db.services import tenant_service
from api.runtime import get_runtime
from api.streaming.limits import Refused
from api.streaming.protocol import dumps
from api.utils import metrics
from api.utils.tickets import Identity
from common.constants import CloseCode, RetCode
from common.errors import ArgumentError, AuthError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

AUTH_MISSING = "Authorization is not valid!"


# -- envelope ----------------------------------------------------------------------
def get_result(data: Any = None, message: str = "") -> Response:
    """A success envelope."""
    return jsonify({"code": RetCode.SUCCESS.value, "message": message, "data": data})


def error_result(code: int, message: str, status: int = 200) -> Response:
    """An error envelope with ``data: null``."""
    response = jsonify({"code": int(code), "message": message, "data": None})
    response.status_code = status
    return response


#: Headers that keep proxies (nginx: X-Accel-Buffering) from buffering an SSE stream.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_response(frames: AsyncIterator[Any], encode: Callable[[Any], str]) -> Response:
    """A ``text/event-stream`` response sending each frame as ``encode(frame)``, with
    no response timeout (answers may stream for minutes); each frame is counted in
    the metrics."""

    async def body() -> AsyncIterator[str]:
        async for frame in frames:
            metrics.frame_sent("sse", frame)
            yield encode(frame)

    response = Response(body(), mimetype="text/event-stream", headers=SSE_HEADERS)
    response.timeout = None
    return response


# -- blocking work -----------------------------------------------------------------
async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a synchronous service call in the worker pool (never on the event loop)."""
    return await get_runtime().pool.run(fn, *args, **kwargs)


# -- validation --------------------------------------------------------------------
class StrictModel(BaseModel):
    """Base of request schemas: unknown fields are refused, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ListQuery(StrictModel):
    """RAGFlow's list parameters: ``page``, ``page_size``, ``orderby``, ``desc``."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    page: int = Field(1, ge=1)
    page_size: int = Field(30, ge=1, le=1000)
    orderby: str = Field("create_time", pattern="^(create_time|update_time)$")
    desc: bool = True
    name: str | None = None
    id: str | None = None


class IdsBody(StrictModel):
    """``{"ids": [...]}`` of a DELETE; ``null`` (or no body) means every item in scope."""

    ids: list[str] | None = None


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"`{location}`: {item['msg']}")
    return "; ".join(parts)


def validate(model: type[M], payload: Any) -> M:
    """Parse ``payload`` into ``model``.

    Raises:
        ArgumentError: naming each wrong field and why.
    """
    if not isinstance(payload, dict):
        raise ArgumentError("the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise ArgumentError(_describe(error)) from None


async def json_body(required: bool = True) -> dict:
    """The request's JSON object (``{}`` for an empty optional body).

    Raises:
        ArgumentError: malformed JSON, or not an object.
    """
    raw = await request.get_data(as_text=True)
    if not raw.strip():
        if required:
            raise ArgumentError("the request body must be a JSON object")
        return {}
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ArgumentError(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(payload, dict):
        raise ArgumentError("the request body must be a JSON object")
    return payload


def query_args(model: type[M]) -> M:
    """Validate the query string into ``model`` (repeated keys keep the last value)."""
    return validate(model, request.args.to_dict())


# -- shared route bodies -----------------------------------------------------------
async def list_result(
    list_fn: Callable[..., Any],
    scope: tuple[str, ...],
    query: type[ListQuery] = ListQuery,
    filters: tuple[str, ...] = ("name", "id"),
) -> Response:
    """The success envelope of a list route, whose ``data`` is what the service returns.

    The query string is validated into ``query``; then, in the worker pool,
    ``list_fn(*scope, page, page_size, orderby, desc, *filter_values)`` runs, the
    filter values being the query's fields named by ``filters``, in that order.

    Raises:
        ArgumentError: a bad query parameter (as :func:`query_args`).
    """
    args = query_args(query)
    filter_values = [getattr(args, name) for name in filters]
    return get_result(await run_blocking(list_fn, *scope, args.page, args.page_size, args.orderby, args.desc, *filter_values))


async def request_ids() -> list[str] | None:
    """The ``ids`` of a DELETE body (:class:`IdsBody`); ``None`` (no body, or
    ``"ids": null``) means every item in scope.

    Raises:
        ArgumentError: malformed JSON, or a body that is not ``{"ids": [str, ...] | null}``.
    """
    return validate(IdsBody, await json_body(required=False)).ids


async def delete_result(delete_fn: Callable[..., Any], *scope: str) -> Response:
    """A delete route: ``delete_fn(*scope, ids)`` in the worker pool, ``ids`` from
    :func:`request_ids`; answers ``{"code": 0, "message": "", "data": null}``.

    Raises:
        ArgumentError: a bad body; whatever ``delete_fn`` raises (e.g. DataError).
    """
    await run_blocking(delete_fn, *scope, await request_ids())
    return get_result()


# -- authentication ----------------------------------------------------------------
#: Subprotocol a browser offers beside its key (``new WebSocket(url, ["ragsocket", key])``);
#: the server answers with it, never with the key.
SUBPROTOCOL = "ragsocket"


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(token: str | None) -> Identity:
    """The identity behind an API key or signed login-session token (blocking: DB).

    Raises:
        AuthError: missing, unknown, revoked or expired credentials.
    """
    if not token:
        raise AuthError(AUTH_MISSING)
    if tenant_service.looks_like_api_key(token):
        tenant_id, key_id = tenant_service.resolve_api_key(token)
        return Identity(tenant_id, f"key:{key_id}")
    if "." not in token:  # itsdangerous tokens always hold dots: this was meant as a key
        raise AuthError("Authentication error: API key is invalid!")
    tenant_id = tenant_service.verify_session_token(token, get_runtime().secret_key)
    return Identity(tenant_id, f"session:{tenant_id}", via="session")


def confirm_ticket_identity(identity: Identity) -> Identity:
    """``identity`` from a ticket, if its credentials still hold (blocking: DB).

    A ticket is signed when issued; the key it was issued with may have been revoked
    (or the tenant removed) since, within the ticket's lifetime.

    Raises:
        AuthError: the key is revoked or gone, or the tenant no longer exists.
    """
    kind, _, reference = identity.principal.partition(":")
    with db_session():
        if kind == "key":
            row = APIToken.get_or_none(APIToken.id == reference)
            if row is None or row.tenant_id != identity.tenant_id:
                raise AuthError("Authentication error: the API key this ticket was issued with no longer exists")
            if row.revoked_time is not None:
                raise AuthError("Authentication error: the API key this ticket was issued with has been revoked")
        if Tenant.get_or_none(Tenant.id == identity.tenant_id) is None:
            raise AuthError("Authentication error: the tenant of this ticket no longer exists")
    return identity


def current_identity() -> Identity:
    """The identity authenticated for this request or WebSocket."""
    return g.identity


def token_required(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """HTTP routes: authenticate ``Authorization: Bearer …`` and pass ``tenant_id``."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _bearer(request.headers.get("Authorization"))
        try:
            g.identity = await run_blocking(authenticate, token)
        except AuthError as error:
            response = error_result(error.code, error.message)
            # The request body is left unread, so hypercorn (h11) closes the connection
            # after this response; say so, or a keep-alive client may send its next
            # request on the closing connection ("Server disconnected").
            response.headers["Connection"] = "close"
            return response
        return await handler(g.identity.tenant_id, *args, **kwargs)

    return wrapper


def _offered_key() -> str | None:
    """An API key offered as a ``Sec-WebSocket-Protocol`` value, if any."""
    for value in websocket.requested_subprotocols:
        if tenant_service.looks_like_api_key(value):
            return value
    return None


async def _ws_identity() -> Identity:
    """Authenticate a WebSocket handshake (ticket, subprotocol, header, query).

    Raises:
        AuthError: bad credentials, or a login session from an Origin not allowed.
    """
    runtime = get_runtime()
    ticket = websocket.args.get("ticket")
    if ticket:
        return await run_blocking(confirm_ticket_identity, await runtime.tickets.redeem(ticket))
    token = _offered_key() or _bearer(websocket.headers.get("Authorization")) or websocket.args.get("token")
    identity = await run_blocking(authenticate, token)
    origin = (websocket.headers.get("Origin") or "").rstrip("/")
    if identity.via == "session" and origin and origin not in runtime.settings.allowed_origins:
        raise AuthError(f"Authentication error: login sessions are not accepted from origin {origin[:100]}")
    return identity


async def ws_refuse(frame: dict | None, code: int, reason: str) -> None:
    """Accept, send ``frame`` (if any), and close with ``code`` (RFC 6455 section 7.4.1)."""
    await websocket.accept()
    if frame is not None:
        await websocket.send(dumps(frame))
    await websocket.close(code, reason)


def auth_refusal(error: AuthError) -> dict:
    """The frame refusing a WebSocket's credentials: ``{"code": 109, "message", "data": null}``."""
    return {"code": error.code, "message": error.message, "data": None}


def ws_authenticated(
    refusal: Callable[[AuthError], dict] = auth_refusal,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """A :func:`ws_token_required` whose refusal frame is ``refusal(error)`` (routes that
    speak another dialect, e.g. Dify's events, refuse in it)."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            runtime = get_runtime()
            try:
                runtime.registry.check_capacity()
            except Refused as refused:
                await ws_refuse(None, refused.code, refused.reason)
                return None
            try:
                g.identity = await _ws_identity()
            except AuthError as error:
                await ws_refuse(refusal(error), CloseCode.POLICY_VIOLATION, "authentication failed")
                return None
            offered = SUBPROTOCOL in websocket.requested_subprotocols
            await websocket.accept(subprotocol=SUBPROTOCOL if offered else None)
            return await handler(g.identity.tenant_id, *args, **kwargs)

        return wrapper

    return decorate


#: WebSocket routes: authenticate, accept, and pass ``tenant_id``.
#:
#: Credentials, first found wins: ``?ticket=`` (single use), an API key offered as a
#: ``Sec-WebSocket-Protocol`` value (answered with ``ragsocket``), ``Authorization:
#: Bearer …``, ``?token=…``; each may be an API key or a login-session token (the
#: latter only from an allowed ``Origin``). Before authentication a full process
#: refuses with 1013. On failure the client gets ``{"code": 109, "message": …,
#: "data": null}`` and close 1008 (policy violation, RFC 6455 section 7.4.1).
ws_token_required = ws_authenticated()
