"""Tenants, API keys and signed login-session tokens.

API keys are random (``ragsocket-`` + 43 URL-safe characters), stored only as their
SHA-256 digest, and compared with :func:`hmac.compare_digest`. Login-session tokens
are itsdangerous ``URLSafeTimedSerializer`` signatures of the tenant id, as RAGFlow
signs its session access tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.db.db_models import APIToken, Tenant, db_session, now_ms
from common.constants import API_KEY_PREFIX, API_KEY_VISIBLE_CHARS
from common.errors import AuthError, DataError

SESSION_SALT = "ragsocket-login-session"
#: Seconds a login-session token stays valid.
SESSION_MAX_AGE = 7 * 24 * 3600


@dataclass(frozen=True)
class IssuedKey:
    """A new API key: ``key`` is shown once and never stored."""

    id: str
    tenant_id: str
    key: str
    prefix: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@db_session()
def create_tenant(name: str) -> Tenant:
    """Create a tenant named ``name`` (1–128 characters)."""
    if not name or len(name) > 128:
        raise DataError("tenant name must be 1 to 128 characters")
    return Tenant.create(name=name)


@db_session()
def get_tenant(tenant_id: str) -> Tenant:
    """The tenant with this id.

    Raises:
        DataError: no such tenant.
    """
    tenant = Tenant.get_or_none(Tenant.id == tenant_id)
    if tenant is None:
        raise DataError(f"tenant '{tenant_id}' not found")
    return tenant


@db_session()
def create_api_key(tenant_id: str, name: str = "") -> IssuedKey:
    """Issue a new API key for the tenant; the clear key is only in the result."""
    get_tenant(tenant_id)
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:API_KEY_VISIBLE_CHARS]
    row = APIToken.create(tenant_id=tenant_id, token_hash=_digest(key), prefix=prefix, name=name)
    return IssuedKey(id=row.id, tenant_id=tenant_id, key=key, prefix=prefix)


@db_session()
def authenticate_api_key(key: str) -> str:
    """The tenant id owning an active API key.

    Raises:
        AuthError: the key is unknown or revoked.
    """
    return resolve_api_key(key)[0]


@db_session()
def resolve_api_key(key: str) -> tuple[str, str]:
    """(tenant id, key id) of an active API key.

    Raises:
        AuthError: the key is unknown or revoked.
    """
    digest = _digest(key)
    row = APIToken.get_or_none(APIToken.token_hash == digest)
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise AuthError("Authentication error: API key is invalid!")
    if row.revoked_time is not None:
        raise AuthError("Authentication error: API key has been revoked")
    return row.tenant_id, row.id


@db_session()
def list_api_keys(tenant_id: str | None = None) -> list[dict]:
    """Keys (prefix only, never the key) of one tenant or of all tenants."""
    query = APIToken.select().order_by(APIToken.create_time)
    if tenant_id:
        query = query.where(APIToken.tenant_id == tenant_id)
    return [
        {
            "id": row.id,
            "tenant_id": row.tenant_id,
            "prefix": row.prefix,
            "name": row.name,
            "create_time": row.create_time,
            "revoked": row.revoked_time is not None,
        }
        for row in query
    ]


@db_session()
def revoke_api_key(key_id_or_prefix: str) -> dict:
    """Revoke a key given its id or its listed prefix.

    Raises:
        DataError: nothing matches, or a prefix matches several keys.
    """
    rows = list(
        APIToken.select().where((APIToken.id == key_id_or_prefix) | (APIToken.prefix == key_id_or_prefix))
    )
    if not rows:
        raise DataError(f"no API key matches '{key_id_or_prefix}'")
    if len(rows) > 1:
        raise DataError(f"'{key_id_or_prefix}' matches {len(rows)} keys; use the key id")
    row = rows[0]
    if row.revoked_time is None:
        row.revoked_time = now_ms()
        row.save()
    return {"id": row.id, "prefix": row.prefix, "revoked": True}


def issue_session_token(tenant_id: str, secret_key: str) -> str:
    """A signed login-session token for the tenant (valid :data:`SESSION_MAX_AGE` s)."""
    return URLSafeTimedSerializer(secret_key, salt=SESSION_SALT).dumps({"tenant_id": tenant_id})


def verify_session_token(token: str, secret_key: str) -> str:
    """The tenant id inside a valid login-session token.

    Raises:
        AuthError: bad signature, expired, or unknown tenant.
    """
    serializer = URLSafeTimedSerializer(secret_key, salt=SESSION_SALT)
    try:
        payload = serializer.loads(token, max_age=SESSION_MAX_AGE)
    except BadSignature:
        raise AuthError("Authentication error: invalid or expired session token") from None
    tenant_id = payload.get("tenant_id") if isinstance(payload, dict) else None
    if not isinstance(tenant_id, str):
        raise AuthError("Authentication error: invalid session token")
    try:
        get_tenant(tenant_id)
    except DataError:
        raise AuthError("Authentication error: the session's tenant no longer exists") from None
    return tenant_id


def looks_like_api_key(token: str) -> bool:
    """True when ``token`` has the shape of an API key rather than a session token."""
    return token.startswith(API_KEY_PREFIX)
