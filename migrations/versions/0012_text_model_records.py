"""The separate text models (WITHSENSE_TEXT_MODEL) checked against each model version, with the check's figures.

- embedding_text_models: one row per (model version, text model revision) whose start-up check passed
  (core/text_alignment.py: probe captions embedded by the text model and by the image model's own text tower):
  the text model's name and revision (a hub commit, or sha256 of a local folder's files), its dimension, the
  margin and its parts, the threshold it was held to, when it was first and last checked. Written by every API
  and worker that loads a text model which agrees; an API whose text model fails the check refuses text search,
  naming the text models recorded for its model version (services/text_models.py).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedding_text_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("embedding_models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("probes", sa.Integer, nullable=False),
        sa.Column("margin", sa.Float, nullable=False),
        sa.Column("matched_cosine", sa.Float, nullable=False),
        sa.Column("mismatched_cosine", sa.Float, nullable=False),
        sa.Column("top1", sa.Float, nullable=False),
        sa.Column("min_margin", sa.Float, nullable=False),
        sa.Column("first_checked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("model_id", "revision", name="uq_embedding_text_models_model_revision"),
        sa.CheckConstraint("margin >= min_margin", name="ck_embedding_text_models_passed_the_check"),
    )


def downgrade() -> None:
    op.drop_table("embedding_text_models")
