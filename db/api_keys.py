"""API keys: created with a random secret shown once, stored as a SHA-256 hash, looked up by prefix."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, update
from sqlalchemy.orm import Session

from db.models import ApiKey

SCOPES = ("search", "upload", "moderate", "admin")
KEY_PREFIX = "wsk"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and name, and what it may do."""

    key_id: int
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"


_PREFIX = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _hash(secret: str) -> str:
    # Keys are 32 random bytes: a fast hash is enough (there is nothing to brute-force).
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full key string, which is never stored."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"unknown scopes {unknown}; choose from {', '.join(SCOPES)}")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=prefix, secret_hash=_hash(secret), scopes=sorted(set(scopes)))
    session.add(key)
    session.flush()
    return key, f"{KEY_PREFIX}_{prefix}_{secret}"


def authenticate(connection: Connection | Session, presented: str) -> Principal | None:
    """The principal for a presented key, or None when it is malformed, unknown, wrong or revoked (one statement)."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    _, prefix, secret = parts
    # A key is `wsk_<12 hex>_<urlsafe base64>`; anything else (control characters included) never reaches SQL.
    if not _PREFIX.fullmatch(prefix) or not _SECRET.fullmatch(secret):
        return None
    key = connection.execute(
        select(ApiKey.id, ApiKey.name, ApiKey.secret_hash, ApiKey.scopes).where(
            ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)
        )
    ).one_or_none()
    if key is None or not hmac.compare_digest(key.secret_hash, _hash(secret)):
        return None
    return Principal(key_id=key.id, name=key.name, scopes=frozenset(key.scopes))


def revoke_key(session: Session, key_id: int) -> bool:
    revoked = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiKey.id)
    ).first()
    return revoked is not None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
