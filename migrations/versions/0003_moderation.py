"""Moderation and the minors law inside the database.

Classifier scores, moderation status, the minor/consent flags, an append-only audit log, the
searchable view and search functions that enforce them, and a read-only role for other services.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

READER_ROLE = "withsense_reader"


def upgrade() -> None:
    op.add_column("photos", sa.Column("moderation_status", sa.Text, nullable=False, server_default="pending_review"))
    op.add_column("photos", sa.Column("depicts_minor", sa.Boolean, nullable=False, server_default=sa.text("false")))
    op.add_column("photos", sa.Column("parental_consent", sa.Boolean, nullable=False, server_default=sa.text("false")))
    op.add_column("photos", sa.Column("unsafe", sa.Boolean, nullable=False, server_default=sa.text("false")))
    op.add_column("photos", sa.Column("minor_declared", sa.Boolean))
    op.add_column("photos", sa.Column("classifier_version", sa.Text))
    op.add_column("photos", sa.Column("moderated_at", sa.DateTime(timezone=True)))
    op.execute(
        "ALTER TABLE photos ADD CONSTRAINT ck_photos_moderation_status "
        "CHECK (moderation_status IN ('pending_review', 'approved', 'rejected'))"
    )
    op.create_index(
        "ix_photos_moderation_queue",
        "photos",
        ["created_at"],
        postgresql_where=sa.text("moderation_status = 'pending_review' AND status = 'indexed'"),
    )

    op.create_table(
        "moderation_scores",
        sa.Column(
            "photo_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("photos.id", ondelete="CASCADE", name="fk_moderation_scores_photo_id_photos"),
            primary_key=True,
        ),
        sa.Column("classifier_version", sa.Text, primary_key=True),
        sa.Column("category", sa.Text, primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("score >= 0 AND score <= 1", name="ck_moderation_scores_score_range"),
        sa.CheckConstraint("decision IN ('clear', 'uncertain', 'flagged')", name="ck_moderation_scores_decision"),
    )

    # Append-only: no foreign key (the trail outlives a deleted photo), and a trigger refuses edits.
    op.create_table(
        "moderation_audit",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("photo_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("changes", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_moderation_audit_photo_id", "moderation_audit", ["photo_id", "id"])
    op.execute(
        """
        CREATE FUNCTION moderation_audit_is_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'moderation_audit is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER moderation_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON moderation_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION moderation_audit_is_append_only()"
    )

    # Searchable everywhere: indexed, public, approved by moderation, and not a minor without consent.
    # Minors without consent in regions where the law does not apply are reachable only through the
    # functions below, which take the viewer's region; the view is the strictest answer.
    op.execute("DROP FUNCTION similar_photos(uuid, integer, text)")
    op.execute("DROP FUNCTION search_photos(vector, integer, text)")
    op.execute("DROP VIEW searchable_photos")
    op.execute(
        """
        CREATE VIEW searchable_photos AS
        SELECT id, photographer, title, width, height, created_at, indexed_at
        FROM photos
        WHERE status = 'indexed' AND visibility = 'public' AND moderation_status = 'approved'
          AND NOT (depicts_minor AND NOT parental_consent)
        """
    )
    op.execute(
        """
        CREATE FUNCTION photo_visibility(p_photo_id uuid, region text DEFAULT NULL) RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
            SELECT CASE
                WHEN p.id IS NULL THEN 'missing'
                WHEN p.status <> 'indexed' OR p.visibility <> 'public' OR p.moderation_status <> 'approved' THEN 'hidden'
                WHEN p.depicts_minor AND NOT p.parental_consent AND region_is_restricted(region) THEN 'restricted'
                ELSE 'visible'
            END
            FROM (SELECT 1) one LEFT JOIN photos p ON p.id = p_photo_id
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION search_photos(query_embedding vector, k integer DEFAULT 10, region text DEFAULT NULL)
        RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        SET hnsw.iterative_scan = 'relaxed_order'
        SET hnsw.ef_search = 200
        SET hnsw.max_scan_tuples = 50000
        AS $$
        DECLARE
            m record;
            minors_allowed boolean := NOT region_is_restricted(region);
        BEGIN
            IF k IS NULL OR k < 1 OR k > 1000 THEN
                RAISE EXCEPTION 'k must be between 1 and 1000, got %', k USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT id, dimension INTO m FROM embedding_models WHERE active;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no active embedding model: nothing has been indexed yet'
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            IF query_embedding IS NULL OR vector_dims(query_embedding) <> m.dimension THEN
                RAISE EXCEPTION 'query vector has % dimensions; the active model produces %',
                    vector_dims(query_embedding), m.dimension USING ERRCODE = 'data_exception';
            END IF;
            -- Literals, not parameters, for the dimension and model id: the planner must match the
            -- partial expression index of this model. The filter runs inside the index scan.
            RETURN QUERY EXECUTE format(
                $q$
                SELECT nn.photo_id, nn.score, nn.title, nn.photographer, nn.width, nn.height
                FROM (
                    SELECT e.photo_id, 1 - (e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) AS score,
                           p.title, p.photographer, p.width, p.height
                    FROM photo_embeddings e
                    JOIN photos p ON p.id = e.photo_id
                    WHERE e.model_id = %2$s
                      AND p.status = 'indexed' AND p.visibility = 'public' AND p.moderation_status = 'approved'
                      AND (%3$s OR NOT p.depicts_minor OR p.parental_consent)
                    ORDER BY e.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)
                    LIMIT $2
                ) nn
                ORDER BY nn.score DESC
                $q$, m.dimension, m.id, CASE WHEN minors_allowed THEN 'true' ELSE 'false' END)
            USING query_embedding, k;
        END $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION similar_photos(source_photo_id uuid, k integer DEFAULT 10, region text DEFAULT NULL)
        RETURNS TABLE (photo_id uuid, score double precision, title text, photographer text, width integer, height integer)
        LANGUAGE plpgsql STABLE SECURITY DEFINER
        SET search_path = public, pg_temp
        AS $$
        DECLARE
            source vector;
        BEGIN
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
            SELECT s.* FROM search_photos(source, k + 1, region) s
            WHERE s.photo_id <> source_photo_id
            ORDER BY s.score DESC
            LIMIT k;
        END $$;
        """
    )

    # Other services connect with a login role that is a member of this one.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                CREATE ROLE {READER_ROLE} NOLOGIN;
            END IF;
        END $$;
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}")
    op.execute(f"GRANT SELECT ON searchable_photos TO {READER_ROLE}")
    for function in (
        "search_photos(vector, integer, text)",
        "similar_photos(uuid, integer, text)",
        "photo_visibility(uuid, text)",
        "region_is_restricted(text)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {READER_ROLE}")
    op.execute("REVOKE ALL ON FUNCTION ensure_embedding_index(integer) FROM PUBLIC")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON searchable_photos FROM {READER_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {READER_ROLE}")
    op.execute("DROP FUNCTION similar_photos(uuid, integer, text)")
    op.execute("DROP FUNCTION search_photos(vector, integer, text)")
    op.execute("DROP FUNCTION photo_visibility(uuid, text)")
    op.execute("DROP VIEW searchable_photos")
    op.execute(
        """
        CREATE VIEW searchable_photos AS
        SELECT id, photographer, title, width, height, created_at, indexed_at
        FROM photos WHERE status = 'indexed' AND visibility = 'public'
        """
    )
    from importlib import import_module

    import_module("migrations.versions.0001_photos_and_embeddings")._create_search_functions()
    # Privileges on objects that outlive this revision (region_is_restricted) go with the role.
    op.execute(f"DROP OWNED BY {READER_ROLE}")
    op.execute(f"DROP ROLE IF EXISTS {READER_ROLE}")
    op.execute("GRANT EXECUTE ON FUNCTION region_is_restricted(text) TO PUBLIC")
    op.execute("GRANT EXECUTE ON FUNCTION ensure_embedding_index(integer) TO PUBLIC")
    op.drop_table("moderation_audit")
    op.execute("DROP FUNCTION moderation_audit_is_append_only()")
    op.drop_table("moderation_scores")
    op.drop_index("ix_photos_moderation_queue", table_name="photos")
    op.execute("ALTER TABLE photos DROP CONSTRAINT ck_photos_moderation_status")
    for column in (
        "moderated_at",
        "classifier_version",
        "minor_declared",
        "unsafe",
        "parental_consent",
        "depicts_minor",
        "moderation_status",
    ):
        op.drop_column("photos", column)
