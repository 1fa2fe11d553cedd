"""Single-use WebSocket tickets for browsers, which cannot set headers on a WebSocket.

``POST /api/v1/ws/tickets`` (API-key auth) returns a ticket: an itsdangerous
``URLSafeTimedSerializer`` signature of ``{tenant, principal, nonce}`` valid
:data:`TICKET_MAX_AGE` seconds, accepted once as ``?ticket=…`` on a WebSocket URL.
Used nonces are remembered (in memory, or in Redis with ``SET NX EX`` when
``RAGSOCKET_REDIS_URL`` is set, so that a ticket is single-use across processes).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from redis import asyncio as redis_asyncio
from redis.exceptions import RedisError

from common.errors import AuthError

#: Seconds a ticket stays valid.
TICKET_MAX_AGE = 60
TICKET_SALT = "ragsocket-ws-ticket"
NONCE_KEY_PREFIX = "ragsocket:ticket:"


@dataclass(frozen=True)
class Identity:
    """Who is calling: the tenant, and the key used for limits (``key:<id>``, ``session:<tenant>``)."""

    tenant_id: str
    principal: str
    via: str = "api_key"


class TicketBook:
    """Issues and redeems tickets.

    Args:
        secret_key: the service's signing key.
        redis_url: share used nonces through Redis when set.
    """

    def __init__(self, secret_key: str, redis_url: str = "") -> None:
        self._serializer = URLSafeTimedSerializer(secret_key, salt=TICKET_SALT)
        self._used: dict[str, float] = {}
        self._redis = redis_asyncio.from_url(redis_url, decode_responses=True) if redis_url else None

    def issue(self, identity: Identity) -> dict:
        """A new ticket: ``{"ticket", "expires_in"}`` (seconds)."""
        payload = {"t": identity.tenant_id, "p": identity.principal, "n": secrets.token_urlsafe(12)}
        return {"ticket": self._serializer.dumps(payload), "expires_in": TICKET_MAX_AGE}

    async def _claim(self, nonce: str) -> bool:
        if self._redis is not None:
            try:
                return bool(await self._redis.set(NONCE_KEY_PREFIX + nonce, "1", nx=True, ex=TICKET_MAX_AGE * 2))
            except RedisError:
                raise AuthError("Authentication error: tickets cannot be checked right now") from None
        now = time.monotonic()
        for old, expires in list(self._used.items()):
            if expires < now:
                del self._used[old]
        if nonce in self._used:
            return False
        self._used[nonce] = now + TICKET_MAX_AGE * 2
        return True

    async def redeem(self, ticket: str) -> Identity:
        """The identity inside a valid, unused ticket (now used).

        Only the ticket is checked here, not the database: the WebSocket handshake
        (``api.utils.api_utils.confirm_ticket_identity``) then checks that the key
        it was issued with is not revoked and that the tenant still exists.

        Raises:
            AuthError: bad signature, expired, or already used.
        """
        try:
            payload = self._serializer.loads(ticket, max_age=TICKET_MAX_AGE)
        except SignatureExpired:
            raise AuthError("Authentication error: the ticket has expired") from None
        except BadSignature:
            raise AuthError("Authentication error: invalid ticket") from None
        if not isinstance(payload, dict) or not {"t", "p", "n"} <= payload.keys():
            raise AuthError("Authentication error: invalid ticket")
        if not await self._claim(str(payload["n"])):
            raise AuthError("Authentication error: the ticket was already used")
        return Identity(payload["t"], payload["p"], via="ticket")

    async def close(self) -> None:
        """Release the Redis connection."""
        if self._redis is not None:
            await self._redis.aclose()
