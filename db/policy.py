"""Region rules for the minors law, read from the database so SQL consumers and the API agree."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def region_is_restricted(session: Session, region: str | None) -> bool:
    """Whether the minors law applies to viewers in `region`. Unknown or missing regions are restricted."""
    return bool(session.scalar(text("SELECT region_is_restricted(:region)"), {"region": region}))


def set_region_rule(session: Session, region: str, *, minors_restricted: bool, note: str | None = None) -> None:
    """Declare whether the minors law applies in `region` ('*' is the default for unlisted regions)."""
    session.execute(
        text(
            "INSERT INTO region_rules (region, minors_restricted, note) VALUES (upper(:region), :restricted, :note) "
            "ON CONFLICT (region) DO UPDATE SET minors_restricted = EXCLUDED.minors_restricted, "
            "note = EXCLUDED.note, updated_at = now()"
        ),
        {"region": region.strip(), "restricted": minors_restricted, "note": note},
    )


def delete_region_rule(session: Session, region: str) -> bool:
    if region.strip() == "*":
        raise ValueError("the default rule '*' can be changed but not removed")
    deleted = session.execute(
        text("DELETE FROM region_rules WHERE region = upper(:region) RETURNING region"), {"region": region.strip()}
    ).first()
    return deleted is not None


def region_rules(session: Session) -> list[tuple[str, bool, str | None]]:
    rows = session.execute(
        text("SELECT region, minors_restricted, note FROM region_rules ORDER BY region = '*' DESC, region")
    )
    return [(r[0], bool(r[1]), r[2]) for r in rows]
