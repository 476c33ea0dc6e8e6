"""One cursor for every list: an opaque position `<microseconds since 1970>.<photo id hex>` in (created_at, id) order.

A cursor names a place in the order, not a photo that must still exist, so a page boundary whose photo was
deleted or decided meanwhile still works, and reading one looks nothing up. CURSOR_PATTERN is what the API's
schema promises: every string that matches it is a cursor this module reads.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from services.errors import InvalidRequest

CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9a-f]{32}$"
_CURSOR = re.compile(r"([0-9]{1,16})\.([0-9a-f]{32})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(created_at: datetime, photo_id: uuid.UUID) -> str:
    """The position just after (or before, by the list's order) this photo."""
    moment = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    microseconds = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{max(0, microseconds)}.{photo_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) of a cursor; `InvalidRequest` for a string that is not one."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidRequest("cursor: not a cursor of this API; pass `next_cursor` of the previous page")
    return _EPOCH + timedelta(microseconds=int(match.group(1))), uuid.UUID(hex=match.group(2))
