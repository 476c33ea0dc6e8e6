"""Region rules for the minors law, read from the database so SQL consumers and the API agree.

Region values are read by one rule (core/regions.py, mirrored by SQL's normalise_region()): a value that is
not a region code is refused here with InvalidRegion, and answered "restricted" by SQL.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.regions import DEFAULT_RULE, normalise_rule_region


def region_is_restricted(session: Session, region: str | None) -> bool:
    """Whether the minors law applies to viewers in `region`. Unknown or missing regions follow '*'.

    SQL normalises the value itself; one that is not a region code is restricted whatever '*' says.
    """
    return bool(session.scalar(text("SELECT region_is_restricted(:region)"), {"region": region}))


def set_region_rule(session: Session, region: str, *, minors_restricted: bool, note: str | None = None) -> None:
    """Declare whether the minors law applies in `region` ('*' is the default for unlisted regions).

    Raises core.regions.InvalidRegion unless `region` is a country code or '*'.
    """
    session.execute(
        text(
            "INSERT INTO region_rules (region, minors_restricted, note) "
            "VALUES (normalise_region(:region), :restricted, :note) "
            "ON CONFLICT (region) DO UPDATE SET minors_restricted = EXCLUDED.minors_restricted, "
            "note = EXCLUDED.note, updated_at = now()"
        ),
        {"region": normalise_rule_region(region), "restricted": minors_restricted, "note": note},
    )


def delete_region_rule(session: Session, region: str) -> bool:
    """Remove the rule of `region` (it then follows '*'); False when it had none. '*' itself stays."""
    code = normalise_rule_region(region)
    if code == DEFAULT_RULE:
        raise ValueError("the default rule '*' can be changed but not removed")
    deleted = session.execute(
        text("DELETE FROM region_rules WHERE region = normalise_region(:region) RETURNING region"), {"region": code}
    ).first()
    return deleted is not None


def region_rules(session: Session) -> list[tuple[str, bool, str | None]]:
    """Every rule, '*' first."""
    rows = session.execute(
        text("SELECT region, minors_restricted, note FROM region_rules ORDER BY region = '*' DESC, region")
    )
    return [(r[0], bool(r[1]), r[2]) for r in rows]
