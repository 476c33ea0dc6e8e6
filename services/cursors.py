"""Page cursors of search: where the next page starts, signed, and bound to the query and filters they came from.

A cursor carries an offset into one deterministic ranking (search_photos_filtered() ranks the same way whatever
the page, see its definition) and a fingerprint of everything that ranking depends on: the query's parts, the
filters, mode, floor, order and the viewer's region. An HMAC over both, keyed by WITHSENSE_SEARCH_CURSOR_SECRET,
means a client can neither make a cursor up nor carry one over to another query: either is a clear 422.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from core.runtime import runtime
from core.settings import get_settings
from services.errors import InvalidRequest

log = logging.getLogger(__name__)

_SIGNATURE_BYTES = 16
MAX_CURSOR_LENGTH = 200


def fingerprint(parts: dict[str, object]) -> str:
    """A digest of what a ranking depends on (JSON with sorted keys: the same query always gives the same one)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode(offset: int, query_fingerprint: str) -> str:
    """The cursor of the page that starts at `offset` of the ranking named by `query_fingerprint`."""
    payload = _b64(json.dumps({"o": offset, "f": query_fingerprint}, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_sign(payload))}"


def decode(cursor: str, query_fingerprint: str) -> int:
    """The offset a cursor points at; `InvalidRequest` for one this service did not issue, or issued for another
    query or filter set."""
    if len(cursor) > MAX_CURSOR_LENGTH or cursor.count(".") != 1:
        raise InvalidRequest("`cursor` is not a cursor this service issued: pass a response's `next_cursor` unchanged")
    payload, signature = cursor.split(".")
    try:
        given = _unb64(signature)
    except ValueError:
        given = b""
    if not hmac.compare_digest(given, _sign(payload)):
        raise InvalidRequest("`cursor` is not a cursor this service issued: pass a response's `next_cursor` unchanged")
    try:
        content = json.loads(_unb64(payload))
        offset, issued_for = int(content["o"]), str(content["f"])
    except (ValueError, KeyError, TypeError):  # signed by us, so only an older format could get here
        raise InvalidRequest("`cursor` is from an older version of this service: start again without it") from None
    if not hmac.compare_digest(issued_for, query_fingerprint):
        raise InvalidRequest(
            "`cursor` belongs to another query or filter set: send the same query, filters, mode, min_score, sort "
            "and region as the page it came from, or start again without a cursor"
        )
    return offset


def _sign(payload: str) -> bytes:
    return hmac.new(_secret.get(), payload.encode("ascii", errors="replace"), hashlib.sha256).digest()[
        :_SIGNATURE_BYTES
    ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_secret() -> bytes:
    """WITHSENSE_SEARCH_CURSOR_SECRET, else a key kept in WITHSENSE_HOME (made once, shared by every process of
    this home), else one for this process alone (its cursors then work only against it)."""
    settings = get_settings()
    if settings.search_cursor_secret is not None:
        return settings.search_cursor_secret.get_secret_value().encode()
    path = settings.home / "search-cursor.key"
    try:
        return _read_or_create(path)
    except OSError as exc:
        log.warning(
            "cannot keep the search cursor key in %s (%s): cursors are valid for this process only; set "
            "WITHSENSE_SEARCH_CURSOR_SECRET when several API processes serve the same clients",
            path,
            exc,
        )
        return secrets.token_bytes(32)


def _read_or_create(path: Path) -> bytes:
    if path.exists():
        key = path.read_bytes().strip()
        if len(key) >= 32:
            return key
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(secrets.token_hex(32).encode())
    temporary.chmod(0o600)
    try:
        os.link(temporary, path)  # the first process to get here wins; the others read its key
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes().strip()


_secret = runtime.slot("search-cursor-secret", _load_secret)
