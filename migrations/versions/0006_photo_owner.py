"""Photos remember the API key that uploaded them; two fixes to the SQL surface for other services.

- `photos.uploaded_by_key`: the key whose owner may delete the photo and follow it while it is being
  indexed or reviewed (admins and moderators may always). NULL for photos from `withsense ingest` and for
  photos uploaded before this revision: only admins and moderators may delete those.
- `region_is_restricted(region)` runs with its owner's rights, so the read-only role (granted EXECUTE in
  0003) can call it without reading `region_rules`.
- `similar_photos(id, k)` accepts k up to 1000 like `search_photos` (it asked for k + 1 rows).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SIMILAR_PHOTOS = """
CREATE OR REPLACE FUNCTION similar_photos(source_photo_id uuid, k integer DEFAULT 10, region text DEFAULT NULL)
RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    source vector;
BEGIN{k_check}
    -- A photo the viewer may not see cannot be the starting point of a search either.
    IF photo_visibility(source_photo_id, region) <> 'visible' THEN
        RETURN;
    END IF;
    SELECT e.embedding::vector INTO source
    FROM photo_embeddings e JOIN embedding_models m ON m.id = e.model_id AND m.active
    WHERE e.photo_id = source_photo_id;
    IF source IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT s.* FROM search_photos(source, {limit}, region) s
    WHERE s.photo_id <> source_photo_id
    ORDER BY s.score DESC
    LIMIT k;
END $$;
"""


K_CHECK = """
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;"""


def upgrade() -> None:
    op.add_column(
        "photos",
        sa.Column("uploaded_by_key", sa.Integer, sa.ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True),
    )
    op.create_index("ix_photos_uploaded_by_key", "photos", ["uploaded_by_key", "created_at"])
    op.execute("ALTER FUNCTION region_is_restricted(text) SECURITY DEFINER SET search_path = public, pg_temp")
    op.execute(SIMILAR_PHOTOS.format(k_check=K_CHECK, limit="LEAST(k + 1, 1000)"))


def downgrade() -> None:
    op.execute(SIMILAR_PHOTOS.format(k_check="", limit="k + 1"))  # exactly as 0003 defined it
    op.execute("ALTER FUNCTION region_is_restricted(text) SECURITY INVOKER RESET search_path")
    op.drop_index("ix_photos_uploaded_by_key", table_name="photos")
    op.drop_column("photos", "uploaded_by_key")
