"""SQL for fine-tuning: the catalogue's weak captions, and sharing image vectors with a text-only fine-tune."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.models import EmbeddingModel


@dataclass(frozen=True)
class CatalogueCaption:
    photo_id: uuid.UUID
    caption: str


def catalogue_captions(session: Session, limit: int = 1_000_000) -> list[CatalogueCaption]:
    """Titles of the photos search may show anyone, as weak captions, oldest first.

    Only indexed, public, approved photos that do not depict a minor (whatever the consent: a training set is
    no place for children) and carry a non-blank title: the visibility rule of the SQL surface, at its strictest.
    """
    rows = session.execute(
        text(
            "SELECT p.id, btrim(p.title) FROM photos p "
            "WHERE photo_is_visible(p, false) AND NOT p.depicts_minor AND p.minor_declared IS NOT TRUE "
            "AND p.title IS NOT NULL AND btrim(p.title) <> '' "
            "ORDER BY p.created_at, p.id LIMIT :limit"
        ),
        {"limit": limit},
    ).all()
    return [CatalogueCaption(row[0], row[1]) for row in rows]


def share_embeddings(session: Session, source: EmbeddingModel, target: EmbeddingModel) -> int:
    """Copy every stored vector of `source` to `target` (same image tower, so the same vectors); returns how many.

    Vectors `target` already has are kept; run again after photos were indexed meanwhile, it adds only theirs.
    """
    if source.dimension != target.dimension:
        raise ValueError(f"cannot share {source.dimension}-d vectors with a {target.dimension}-d model")
    result = session.execute(
        text(
            "INSERT INTO photo_embeddings (photo_id, model_id, embedding) "
            "SELECT photo_id, :target, embedding FROM photo_embeddings WHERE model_id = :source "
            "ON CONFLICT (photo_id, model_id) DO NOTHING"
        ),
        {"source": source.id, "target": target.id},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def model_by_revision(session: Session, revision: str) -> EmbeddingModel | None:
    """The registered model with these weights (the first registered, whatever name it was reached by)."""
    return session.scalars(
        select(EmbeddingModel).where(EmbeddingModel.revision == revision).order_by(EmbeddingModel.id).limit(1)
    ).one_or_none()
