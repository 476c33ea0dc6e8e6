"""SQLAlchemy models of the search database. The migrations in migrations/versions are the source of truth
for DDL (views, SQL functions, roles, per-model indexes); these classes map the tables for Python code."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from core.metadata import orientation_of

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Square within 1% (core.metadata.orientation_of is the same rule); width and height are as shown (EXIF rotation).
ORIENTATION_SQL = (
    "CASE WHEN abs(width - height)::bigint * 100 <= greatest(width, height) THEN 'square' "
    "WHEN width > height THEN 'landscape' ELSE 'portrait' END"
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class PhotoStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    INDEXED = "indexed"
    FAILED = "failed"


class ModerationStatus(StrEnum):
    PENDING_REVIEW = "pending_review"
    APPROVED = "approved"
    REJECTED = "rejected"


class Visibility(StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"


class EmbeddingModel(Base):
    """A model whose vectors live in photo_embeddings. Exactly one is active for search."""

    __tablename__ = "embedding_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    dimension: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The relevance floor of search with this model (cosine; migration 0008): semantic matches below it are
    # dropped unless a search gives its own `min_score`. NULL: no floor.
    min_score: Mapped[float | None] = mapped_column(Float)
    # The HNSW index its searches use (migration 0011): 'halfvec' (hnsw on the halfvec vectors) or 'binary' (hnsw on
    # binary_quantize(...)::bit(D), re-ranked on the halfvec vectors); switched by `withsense embeddings index`.
    # Its bit index's centre (embedding_models.binary_centre) is kept by the SQL functions and not mapped here.
    vector_index: Mapped[str] = mapped_column(Text, server_default=text("'halfvec'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("name", "revision", name="uq_embedding_models_name_revision"),
        CheckConstraint("dimension BETWEEN 1 AND 4000", name="dimension_range"),
        CheckConstraint("vector_index IN ('halfvec', 'binary')", name="vector_index_kind"),
    )


class EmbeddingTextModel(Base):
    """A separate text model (WITHSENSE_TEXT_MODEL) whose start-up check against a model version passed (0012).

    The check embeds probe captions with it and with the model version's own text tower (core/text_alignment.py);
    the figures are kept as measured. A text model of another revision is checked (and recorded) on its own.
    """

    __tablename__ = "embedding_text_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(Integer, ForeignKey("embedding_models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(Text)
    dimension: Mapped[int] = mapped_column(Integer)
    probes: Mapped[int] = mapped_column(Integer)
    margin: Mapped[float] = mapped_column(Float)
    matched_cosine: Mapped[float] = mapped_column(Float)
    mismatched_cosine: Mapped[float] = mapped_column(Float)
    top1: Mapped[float] = mapped_column(Float)
    min_margin: Mapped[float] = mapped_column(Float)
    first_checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("model_id", "revision", name="uq_embedding_text_models_model_revision"),
        CheckConstraint("margin >= min_margin", name="passed_the_check"),
    )


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    photographer: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    # The client's file name, for display only: it never reaches a filesystem path.
    original_name: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(Text, unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, server_default=PhotoStatus.PENDING.value)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    visibility: Mapped[str] = mapped_column(Text, server_default=Visibility.PUBLIC.value)
    # The API key that uploaded it (NULL: `withsense ingest`, or uploaded before keys were recorded).
    uploaded_by_key: Mapped[int | None] = mapped_column(Integer, ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Moderation (migration 0003). `depicts_minor` is the effective flag, from the classifier, the
    # photographer's declaration (`minor_declared`) or a moderator; search enforces it with the region.
    moderation_status: Mapped[str] = mapped_column(Text, server_default=ModerationStatus.PENDING_REVIEW.value)
    depicts_minor: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    parental_consent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    unsafe: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    minor_declared: Mapped[bool | None] = mapped_column(Boolean)
    classifier_version: Mapped[str | None] = mapped_column(Text)
    moderated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the file says (migration 0008; core/metadata.py), and what the uploader said instead.
    taken_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    camera: Mapped[str | None] = mapped_column(Text)
    lens: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    gps_latitude: Mapped[float | None] = mapped_column(Float)  # only with WITHSENSE_STORE_GPS, rounded
    gps_longitude: Mapped[float | None] = mapped_column(Float)
    # When the worker (or `withsense metadata backfill`) read the file's metadata; NULL: not read yet.
    metadata_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Two generated columns are left unmapped on purpose (SQL reads them, Python never writes them, and an ORM
    # flush would expire them): `orientation` (ORIENTATION_SQL; core.metadata.orientation_of in Python) and
    # `search_document` (photo_search_document(): the words keyword search matches).

    @property
    def orientation(self) -> str:
        """landscape, portrait or square, as shown (the rule of the generated column)."""
        return orientation_of(self.width, self.height)

    embeddings: Mapped[list[PhotoEmbedding]] = relationship(back_populates="photo", passive_deletes=True)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'processing', 'indexed', 'failed')", name="status"),
        CheckConstraint("visibility IN ('public', 'private')", name="visibility"),
    )


class PhotoEmbedding(Base):
    """One vector per (photo, model). The column is unsized so that models of any dimension share it;
    each model gets its own partial HNSW index on `embedding::halfvec(<dimension>)`."""

    __tablename__ = "photo_embeddings"

    photo_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("embedding_models.id", ondelete="CASCADE"), primary_key=True
    )
    embedding: Mapped[object] = mapped_column(HALFVEC())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # photo_is_visible() of the photo for both answers of minors_allowed, kept by triggers in the writing
    # transaction (db/sql/photo_embedding_visibility/): the HNSW scan tests them without a lookup into photos.
    # Whatever a statement writes here is replaced by the trigger's answer.
    visible_restricted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    visible_unrestricted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    photo: Mapped[Photo] = relationship(back_populates="embeddings")


class ModerationScore(Base):
    __tablename__ = "moderation_scores"

    photo_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True
    )
    classifier_version: Mapped[str] = mapped_column(Text, primary_key=True)
    category: Mapped[str] = mapped_column(Text, primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ModerationAudit(Base):
    """Append-only trail of every moderation change, by people and by the classifier."""

    __tablename__ = "moderation_audit"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    photo_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    changes: Mapped[dict[str, object]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    """A hashed API key with scopes. The secret is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, Identity(always=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text, unique=True)
    secret_hash: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
