"""Where the minors law applies: region rules are data, read by SQL so every consumer gets the same answer."""

from __future__ import annotations

from core.regions import InvalidRegion
from db import policy as region_sql
from db.engine import session_scope
from services.errors import InvalidRequest


def rules() -> list[tuple[str, bool, str | None]]:
    """(region, minors restricted, note), the default '*' first."""
    with session_scope() as session:
        return region_sql.region_rules(session)


def set_rule(region: str, *, restricted: bool, note: str | None = None) -> None:
    """Declare whether the minors law applies in `region` ('*': every region without a rule of its own)."""
    try:
        with session_scope() as session:
            region_sql.set_region_rule(session, region, minors_restricted=restricted, note=note)
    except InvalidRegion as exc:
        raise InvalidRequest(str(exc)) from None
