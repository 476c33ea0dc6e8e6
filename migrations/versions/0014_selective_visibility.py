"""Exact distances where few photos are visible (issue 16, item 5; measured at 1M in BENCHMARKS.md 8c).

- ix_photo_embeddings_visible_restricted / _unrestricted: partial btree indexes of the rows where each
  visibility flag is true (per model), so that a search whose rule leaves few rows reads those rows and nothing
  else, instead of walking the graph past the hidden ones;
- visible_share(flag): the share of rows where a flag is true, from pg_stats (a catalogue lookup);
- search_photos: exact distances below about sqrt(20 x depth x catalogue) visible rows (visible_share()),
  the HNSW scan above; `withsense.exact_below` and `withsense.exact_scan` as for
  search_photos_filtered;
- search_photos_filtered: the same threshold and estimate for a search with no filter on photos' columns (the
  rule alone);
- repartition_photo_embeddings: makes the two indexes on the new table too.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

from db import sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

CHANGED = ("visible_share", "search_photos", "search_photos_filtered", "repartition_photo_embeddings")
FLAGS = ("visible_restricted", "visible_unrestricted")


def upgrade() -> None:
    for flag in FLAGS:
        op.execute(f"CREATE INDEX IF NOT EXISTS ix_photo_embeddings_{flag} ON photo_embeddings (model_id) WHERE {flag}")
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))


def downgrade() -> None:
    for name in CHANGED[1:]:
        op.execute(sql.statement(name, at=down_revision))
    op.execute("DROP FUNCTION IF EXISTS visible_share(text)")
    for flag in FLAGS:
        op.execute(f"DROP INDEX IF EXISTS ix_photo_embeddings_{flag}")
