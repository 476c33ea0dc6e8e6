"""The SQL surface as code (db/sql/), the visibility rule written once, one region normaliser, ef_search wired.

- `photo_is_visible(photo, minors_allowed)`: the rule (indexed, public, approved, and no minor without parental
  consent unless the viewer's region allows it), an inlinable SQL function used by `searchable_photos`,
  `search_photos` and `photo_visibility` (and through them `similar_photos`), where each spelled it out.
- `normalise_region(text)`: the region rule of core/regions.py (ASCII spaces trimmed, ASCII letters
  upper-cased); `region_is_restricted` uses it, answers "restricted" for anything that is not a region code
  then (whatever the default rule says), and lets a subdivision (US-CA) follow its country's rule.
- `search_photos` takes ef_search from the caller's `withsense.ef_search` (at least k; 200 when unset).
- `searchable_photos` is a security_barrier view: no condition of a caller's query runs before its own.

Each definition is the file db/sql/<name>/0007.sql; the downgrade applies the versions 0006 left.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

from db import sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# In dependency order: each one's body calls only those before it.
CHANGED = (
    "normalise_region",
    "region_is_restricted",
    "photo_is_visible",
    "searchable_photos",
    "photo_visibility",
    "search_photos",
)


def upgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))


def downgrade() -> None:
    # The older versions no longer call the new functions; then nothing depends on them.
    for name in reversed(CHANGED[1:]):
        if name != "photo_is_visible":
            op.execute(sql.statement(name, at=down_revision))
    op.execute("DROP FUNCTION photo_is_visible(photos, boolean)")
    op.execute("DROP FUNCTION normalise_region(text)")
