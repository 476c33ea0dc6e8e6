"""Metadata, keywords, filters and pages for search (issue 13).

- photos: `taken_at`, `camera`, `lens`, `description`, `tags` (lower case), `gps_latitude`/`gps_longitude` (only
  with WITHSENSE_STORE_GPS, rounded), `metadata_read_at` (the file's metadata was read: `withsense metadata
  backfill` reads the rest), and two generated columns: `orientation` (landscape/portrait/square as shown) and
  `search_document` (photo_search_document(): the words keyword search matches, GIN-indexed). Indexes for the
  filters: tags (GIN), taken_at, lower(photographer), lower(camera), width, height.
- embedding_models.min_score: each model's default relevance floor (NULL: none).
- SQL surface (db/sql/*/0008.sql): photo_search_document, keyword_query, search_filter_values, estimated_rows,
  search_photos_filtered (filters, keyword and hybrid search, floor, sort, pages; granted to the reader role),
  similar_photos_filtered, and searchable_photos with the new columns.

Adding the generated columns rewrites the photos table (a few seconds per million rows, under a lock).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

from db import sql
from db.models import ORIENTATION_SQL

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# In dependency order: each one's body calls only those before it (and what 0007 left).
NEW = (
    "photo_search_document",
    "keyword_query",
    "search_filter_values",
    "estimated_rows",
    "search_photos_filtered",
    "similar_photos_filtered",
)
FILTER_INDEXES = {
    "ix_photos_taken_at": "taken_at",
    "ix_photos_photographer_lower": "lower(photographer)",
    "ix_photos_camera_lower": "lower(camera)",
    "ix_photos_width": "width",
    "ix_photos_height": "height",
}


def upgrade() -> None:
    op.execute(sql.statement("photo_search_document", at=revision))
    op.add_column("photos", sa.Column("taken_at", sa.DateTime(timezone=True)))
    op.add_column("photos", sa.Column("camera", sa.Text))
    op.add_column("photos", sa.Column("lens", sa.Text))
    op.add_column("photos", sa.Column("description", sa.Text))
    op.add_column("photos", sa.Column("tags", ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")))
    op.add_column("photos", sa.Column("gps_latitude", sa.Float))
    op.add_column("photos", sa.Column("gps_longitude", sa.Float))
    op.add_column("photos", sa.Column("metadata_read_at", sa.DateTime(timezone=True)))
    op.add_column("photos", sa.Column("orientation", sa.Text, sa.Computed(ORIENTATION_SQL, persisted=True)))
    op.execute(
        "ALTER TABLE photos ADD COLUMN search_document tsvector "
        "GENERATED ALWAYS AS (photo_search_document(title, description, tags, photographer)) STORED"
    )
    op.create_check_constraint(
        "gps",
        "photos",
        "(gps_latitude IS NULL) = (gps_longitude IS NULL) "
        "AND gps_latitude BETWEEN -90 AND 90 AND gps_longitude BETWEEN -180 AND 180",
    )
    op.create_check_constraint("tags_count", "photos", "cardinality(tags) <= 100")
    op.execute("CREATE INDEX ix_photos_search_document ON photos USING gin (search_document)")
    op.execute("CREATE INDEX ix_photos_tags ON photos USING gin (tags)")
    for name, expression in FILTER_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON photos ({expression})")
    op.add_column("embedding_models", sa.Column("min_score", sa.Float))
    op.create_check_constraint("min_score_range", "embedding_models", "min_score BETWEEN -1 AND 1")
    for name in NEW[1:]:
        op.execute(sql.statement(name, at=revision))
    op.execute(sql.statement("searchable_photos", at=revision))


def downgrade() -> None:
    # The view's older text has fewer columns: CREATE OR REPLACE cannot drop columns, so it is made again.
    op.execute("DROP VIEW searchable_photos")
    op.execute(sql.statement("searchable_photos", at=down_revision))
    op.execute("DROP FUNCTION similar_photos_filtered(uuid, integer, text, jsonb, jsonb)")
    op.execute("DROP FUNCTION search_photos_filtered(vector, text, integer, text, jsonb, jsonb)")
    op.execute("DROP FUNCTION estimated_rows(text)")
    op.execute("DROP FUNCTION search_filter_values(text, jsonb)")
    op.execute("DROP FUNCTION keyword_query(text)")
    op.drop_constraint("ck_embedding_models_min_score_range", "embedding_models")
    op.drop_column("embedding_models", "min_score")
    for name in (*FILTER_INDEXES, "ix_photos_tags", "ix_photos_search_document"):
        op.execute(f"DROP INDEX {name}")
    op.drop_constraint("ck_photos_tags_count", "photos")
    op.drop_constraint("ck_photos_gps", "photos")
    for column in (
        "search_document",
        "orientation",
        "metadata_read_at",
        "gps_longitude",
        "gps_latitude",
        "tags",
        "description",
        "lens",
        "camera",
        "taken_at",
    ):
        op.drop_column("photos", column)
    op.execute("DROP FUNCTION photo_search_document(text, text, text[], text)")
