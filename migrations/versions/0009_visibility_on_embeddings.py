"""The visibility rule kept on the embedding rows, so the nearest-neighbour scan needs no lookup into photos.

- photo_embeddings: `visible_restricted` and `visible_unrestricted`, photo_is_visible() of the row's photo for
  both answers of minors_allowed, kept by two triggers in the writing transaction (never stale):
  db/sql/photo_embedding_visibility/0009.sql and db/sql/photo_visibility_to_embeddings/0009.sql.
- search_photos and search_photos_filtered test the flag inside the HNSW scan and join photos only for the
  rows they return (or, with filters on photos' columns, for the rows the flag lets through).

The upgrade fills the flags of every existing row. That rewrites each row, so the per-model HNSW indexes are
dropped first and built again afterwards (one build per model: ~15 min at 1M vectors on 2 cores) rather than
taking a million index insertions.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db import sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CHANGED = ("search_photos", "search_photos_filtered")
HNSW_INDEXES = """
    SELECT indexname FROM pg_indexes
    WHERE tablename = 'photo_embeddings' AND indexname LIKE 'ix_photo_embeddings_hnsw_model_%'
"""


def upgrade() -> None:
    bind = op.get_bind()
    indexed = [str(name) for (name,) in bind.execute(sa.text(HNSW_INDEXES))]
    for name in indexed:
        op.execute(f'DROP INDEX "{name}"')
    for column in ("visible_restricted", "visible_unrestricted"):
        op.add_column(
            "photo_embeddings", sa.Column(column, sa.Boolean, nullable=False, server_default=sa.text("false"))
        )
    op.execute(
        """
        UPDATE photo_embeddings e
        SET visible_restricted = photo_is_visible(p, false), visible_unrestricted = photo_is_visible(p, true)
        FROM photos p WHERE p.id = e.photo_id
        """
    )
    op.execute(sql.statement("photo_embedding_visibility", at=revision))
    op.execute(sql.statement("photo_visibility_to_embeddings", at=revision))
    for name in indexed:
        op.execute(sa.text("SELECT ensure_embedding_index(:id)").bindparams(id=int(name.rsplit("_", 1)[1])))
    op.execute("ANALYZE photo_embeddings")
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))


def downgrade() -> None:
    for name in CHANGED:
        op.execute(sql.statement(name, at=down_revision))
    op.execute("DROP TRIGGER photo_visibility_to_embeddings ON photos")
    op.execute("DROP TRIGGER photo_embedding_visibility ON photo_embeddings")
    op.execute("DROP FUNCTION photo_visibility_to_embeddings()")
    op.execute("DROP FUNCTION photo_embedding_visibility()")
    op.drop_column("photo_embeddings", "visible_unrestricted")
    op.drop_column("photo_embeddings", "visible_restricted")
