"""Photos, embedding models, per-model halfvec embeddings, and the search functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")

    op.create_table(
        "embedding_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("revision", sa.Text, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("name", "revision", name="uq_embedding_models_name_revision"),
        sa.CheckConstraint("dimension BETWEEN 1 AND 4000", name="ck_embedding_models_dimension_range"),
    )
    # At most one model answers searches at a time.
    op.execute("CREATE UNIQUE INDEX uq_embedding_models_one_active ON embedding_models (active) WHERE active")

    op.create_table(
        "photos",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("photographer", sa.Text),
        sa.Column("title", sa.Text),
        sa.Column("original_name", sa.Text),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("visibility", sa.Text, nullable=False, server_default="public"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("indexed_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("storage_key", name="uq_photos_storage_key"),
        sa.UniqueConstraint("sha256", name="uq_photos_sha256"),
        sa.CheckConstraint("status IN ('pending', 'processing', 'indexed', 'failed')", name="ck_photos_status"),
        sa.CheckConstraint("visibility IN ('public', 'private')", name="ck_photos_visibility"),
        sa.CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="ck_photos_sha256_hex"),
    )
    # The reconciler looks for rows stuck in a state; the API lists by recency.
    op.create_index("ix_photos_status_updated_at", "photos", ["status", "updated_at"])
    op.create_index("ix_photos_created_at", "photos", ["created_at"])

    op.create_table(
        "photo_embeddings",
        sa.Column(
            "photo_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("photos.id", ondelete="CASCADE", name="fk_photo_embeddings_photo_id_photos"),
            primary_key=True,
        ),
        sa.Column(
            "model_id",
            sa.Integer,
            sa.ForeignKey(
                "embedding_models.id", ondelete="CASCADE", name="fk_photo_embeddings_model_id_embedding_models"
            ),
            primary_key=True,
        ),
        sa.Column("embedding", HALFVEC(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )

    # The database refuses vectors no search could use: wrong dimension for the model, zero or unnormalised.
    # (pgvector itself refuses NaN and infinity.)
    op.execute(
        """
        CREATE FUNCTION check_photo_embedding() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            expected integer;
            norm double precision;
        BEGIN
            IF NEW.embedding IS NULL THEN
                RAISE EXCEPTION 'embedding is NULL' USING ERRCODE = 'not_null_violation';
            END IF;
            SELECT dimension INTO expected FROM embedding_models WHERE id = NEW.model_id;
            IF expected IS NULL THEN
                RAISE EXCEPTION 'unknown embedding model %', NEW.model_id USING ERRCODE = 'foreign_key_violation';
            END IF;
            IF vector_dims(NEW.embedding) <> expected THEN
                RAISE EXCEPTION 'embedding has % dimensions but model % produces %',
                    vector_dims(NEW.embedding), NEW.model_id, expected
                    USING ERRCODE = 'data_exception';
            END IF;
            norm := l2_norm(NEW.embedding);
            IF norm IS NULL OR abs(norm - 1.0) > 0.01 THEN
                RAISE EXCEPTION 'embedding must be L2-normalised (its norm is %); zero vectors are refused', norm
                    USING ERRCODE = 'data_exception';
            END IF;
            RETURN NEW;
        END $$;
        """
    )
    op.execute(
        """
        CREATE TRIGGER photo_embeddings_check BEFORE INSERT OR UPDATE OF embedding, model_id ON photo_embeddings
        FOR EACH ROW EXECUTE FUNCTION check_photo_embedding()
        """
    )

    # A model's vectors get their own partial HNSW index, sized from the model's dimension.
    op.execute(
        """
        CREATE FUNCTION ensure_embedding_index(p_model_id integer) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            dim integer;
            index_name text := format('ix_photo_embeddings_hnsw_model_%s', p_model_id);
        BEGIN
            SELECT dimension INTO dim FROM embedding_models WHERE id = p_model_id;
            IF dim IS NULL THEN
                RAISE EXCEPTION 'unknown embedding model %', p_model_id;
            END IF;
            EXECUTE format(
                'CREATE INDEX IF NOT EXISTS %I ON photo_embeddings USING hnsw ((embedding::halfvec(%s)) halfvec_cosine_ops) '
                'WITH (m = 16, ef_construction = 64) WHERE model_id = %s',
                index_name, dim, p_model_id);
            RETURN index_name;
        END $$;
        """
    )

    op.execute(
        """
        CREATE VIEW searchable_photos AS
        SELECT id, photographer, title, width, height, created_at, indexed_at
        FROM photos
        WHERE status = 'indexed' AND visibility = 'public'
        """
    )
    _create_search_functions()


def _create_search_functions() -> None:
    # plpgsql with EXECUTE because the cast dimension and the partial index's model id must be literals
    # for the planner to pick the per-model index. Iterative index scans keep filtered searches from
    # returning fewer than k rows; results are re-sorted because relaxed order may be slightly out of order.
    op.execute(
        """
        CREATE FUNCTION search_photos(query_embedding vector, k integer DEFAULT 10, region text DEFAULT NULL)
        RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
        LANGUAGE plpgsql STABLE
        SET hnsw.iterative_scan = 'relaxed_order'
        SET hnsw.ef_search = 200
        AS $$
        DECLARE
            m record;
        BEGIN
            IF k IS NULL OR k < 1 OR k > 1000 THEN
                RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT id, dimension INTO m FROM embedding_models WHERE active;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no active embedding model: nothing has been indexed yet' USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            IF vector_dims(query_embedding) <> m.dimension THEN
                RAISE EXCEPTION 'query vector has % dimensions; the active model produces %',
                    vector_dims(query_embedding), m.dimension USING ERRCODE = 'data_exception';
            END IF;
            RETURN QUERY EXECUTE format(
                $q$
                SELECT nn.photo_id, nn.score, p.title, p.photographer, p.width, p.height
                FROM (
                    SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score
                    FROM photo_embeddings e
                    JOIN searchable_photos p ON p.id = e.photo_id
                    WHERE e.model_id = %2$s
                    ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)
                    LIMIT $2
                ) nn
                JOIN searchable_photos p ON p.id = nn.photo_id
                ORDER BY nn.score DESC
                $q$, m.dimension, m.id)
            USING query_embedding, k;
        END $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION similar_photos(source_photo_id uuid, k integer DEFAULT 10, region text DEFAULT NULL)
        RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
        LANGUAGE plpgsql STABLE
        AS $$
        DECLARE
            source vector;
        BEGIN
            SELECT e.embedding::vector INTO source
            FROM photo_embeddings e
            JOIN embedding_models m ON m.id = e.model_id AND m.active
            JOIN searchable_photos p ON p.id = e.photo_id
            WHERE e.photo_id = source_photo_id;
            IF source IS NULL THEN
                RETURN;
            END IF;
            RETURN QUERY
            SELECT s.* FROM search_photos(source, k + 1, region) s
            WHERE s.photo_id <> source_photo_id
            ORDER BY s.score DESC
            LIMIT k;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS similar_photos(uuid, integer, text)")
    op.execute("DROP FUNCTION IF EXISTS search_photos(vector, integer, text)")
    op.execute("DROP VIEW IF EXISTS searchable_photos")
    op.execute("DROP FUNCTION IF EXISTS ensure_embedding_index(integer)")
    op.drop_table("photo_embeddings")
    op.execute("DROP FUNCTION IF EXISTS check_photo_embedding()")
    op.drop_table("photos")
    op.drop_table("embedding_models")
    op.execute("DROP EXTENSION IF EXISTS vector")
