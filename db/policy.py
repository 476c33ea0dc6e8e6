"""Region rules for the minors law, read from the database so SQL consumers and the API agree."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def region_is_restricted(session: Session, region: str | None) -> bool:
    """Whether the minors law applies to viewers in `region`. Unknown or missing regions are restricted."""
    return bool(session.scalar(text("SELECT region_is_restricted(:region)"), {"region": region}))
