"""photo_embeddings as hash partitions of photo id (WITHSENSE_EMBEDDING_PARTITIONS, default 1: one table).

- repartition_photo_embeddings(partitions): db/sql/repartition_photo_embeddings/0010.sql; `withsense embeddings
  partition` runs it later with another number.
- The upgrade applies the setting: with the default, 1, nothing changes. More rewrites the table and builds each
  model's HNSW index per partition in this transaction (searches wait).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.settings import get_settings
from db import sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sql.statement("repartition_photo_embeddings", at=revision))
    partitions = get_settings().embedding_partitions
    if partitions != 1:
        op.execute(sa.text("SELECT repartition_photo_embeddings(:n)").bindparams(n=partitions))


def downgrade() -> None:
    op.execute("SELECT repartition_photo_embeddings(1)")
    op.execute("DROP FUNCTION repartition_photo_embeddings(integer)")
