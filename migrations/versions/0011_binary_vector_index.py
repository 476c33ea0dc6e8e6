"""A binary-quantised HNSW index per model, beside today's halfvec one (WITHSENSE_VECTOR_INDEX=halfvec|binary).

- embedding_models.vector_index ('halfvec', the default and every model's kind before, or 'binary'): the index
  kind its searches use, read by search_photos and search_photos_filtered on each call (the reader role's SQL
  too); embedding_models.binary_centre: the centre its bit index was built on (the mean of its vectors then).
- build_embedding_index / set_embedding_index_kind / drop_embedding_index: build the other kind while searches
  use the first, switch, drop the first (`withsense embeddings index --kind`); ensure_embedding_index builds the
  recorded kind; repartition_photo_embeddings rebuilds each kind a model has; embedding_bits: the bit expression.
- The upgrade applies the setting: with the default, halfvec, no index changes. With binary, each model with an
  index gets its bit index, is switched to it, and its halfvec index is dropped, in this transaction.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC

from core.settings import get_settings
from db import sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

NEW = ("embedding_bits", "build_embedding_index", "set_embedding_index_kind", "drop_embedding_index")
CHANGED = ("ensure_embedding_index", "repartition_photo_embeddings", "search_photos", "search_photos_filtered")
INDEXED_MODELS = """
    SELECT DISTINCT substring(indexname FROM 'model_([0-9]+)$')::integer FROM pg_indexes
    WHERE tablename = 'photo_embeddings' AND indexname ~ '^ix_photo_embeddings_(hnsw|bq)_model_[0-9]+$'
"""


def _switch(kind: str) -> None:
    other = "halfvec" if kind == "binary" else "binary"
    for (model_id,) in op.get_bind().execute(sa.text(INDEXED_MODELS)).all():
        # Build the new kind, switch the model's searches to it, drop the other: never without an index.
        for function, which in (
            ("build_embedding_index", kind),
            ("set_embedding_index_kind", kind),
            ("drop_embedding_index", other),
        ):
            op.execute(sa.text(f"SELECT {function}(:id, :kind)").bindparams(id=int(model_id), kind=which))


def upgrade() -> None:
    op.add_column(
        "embedding_models",
        sa.Column("vector_index", sa.Text, nullable=False, server_default=sa.text("'halfvec'")),
    )
    op.create_check_constraint("vector_index_kind", "embedding_models", "vector_index IN ('halfvec', 'binary')")
    op.add_column("embedding_models", sa.Column("binary_centre", HALFVEC()))
    for name in NEW:
        op.execute(sql.statement(name, at=revision))
    for name in CHANGED:
        op.execute(sql.statement(name, at=revision))
    if get_settings().vector_index != "halfvec":
        _switch(get_settings().vector_index)


def downgrade() -> None:
    _switch("halfvec")
    for name in CHANGED:
        op.execute(sql.statement(name, at=down_revision))
    op.execute("DROP FUNCTION drop_embedding_index(integer, text)")
    op.execute("DROP FUNCTION set_embedding_index_kind(integer, text)")
    op.execute("DROP FUNCTION build_embedding_index(integer, text)")
    op.execute("DROP FUNCTION embedding_bits(text, integer, halfvec)")
    op.drop_constraint("ck_embedding_models_vector_index_kind", "embedding_models")
    op.drop_column("embedding_models", "binary_centre")
    op.drop_column("embedding_models", "vector_index")
