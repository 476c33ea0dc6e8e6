"""search_photos_filtered: the recall of the HNSW path under a selective filter (issue 13; measured at 1M in
BENCHMARKS.md 6c). db/sql/search_photos_filtered/0013.sql says what changed.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from db import sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

CHANGED = ("search_photos_filtered",)


def upgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))


def downgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=down_revision))
