"""A hybrid search whose words match nothing costs what a semantic one does (issue 16, item 6; BENCHMARKS.md 7d).

search_photos_filtered runs its keyword query first: when the words match no photo that the filters let through,
there is nothing to fuse, the ranking is the semantic list's own order, and the semantic scan goes no deeper than
a semantic search's (not 200 rows deeper, each then tested against the words). The results are the same.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from db import sql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

CHANGED = ("search_photos_filtered",)


def upgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))


def downgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=down_revision))
