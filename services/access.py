"""API keys: who is calling and what the key may do. The hashing and the rows are in db/api_keys.py."""

from __future__ import annotations

from db import api_keys as key_sql
from db.api_keys import SCOPES, Principal
from db.engine import session_scope, single_read
from db.models import ApiKey
from services.errors import InvalidRequest, NotFound

ANONYMOUS = Principal(key_id=0, name="anonymous", scopes=frozenset())

__all__ = ["ANONYMOUS", "SCOPES", "Principal", "authenticate", "create_key", "list_keys", "revoke_key"]


def authenticate(presented: str) -> Principal | None:
    """The principal for a presented key, or None when it is malformed, unknown, wrong or revoked."""
    with single_read() as connection:
        return key_sql.authenticate(connection, presented)


def create_key(name: str, scopes: list[str]) -> tuple[int, str]:
    """A new key's number and its secret (shown once; only its hash is stored)."""
    try:
        with session_scope() as session:
            key, secret = key_sql.create_key(session, name, scopes)
            return key.id, secret
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def list_keys() -> list[ApiKey]:
    with session_scope() as session:
        return key_sql.list_keys(session)


def revoke_key(key_id: int) -> None:
    """Refuse the key from the next request on; `NotFound` when there is no such active key."""
    with session_scope() as session:
        if not key_sql.revoke_key(session, key_id):
            raise NotFound(f"no active key {key_id}")
