"""The text models recorded with each model version (embedding_text_models, migration 0012)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import EmbeddingModel, EmbeddingTextModel


@dataclass(frozen=True)
class TextModelCheck:
    """One passed start-up check of a text model against a model version, as the embedder measured it."""

    name: str
    revision: str
    dimension: int
    probes: int
    margin: float
    matched_cosine: float
    mismatched_cosine: float
    top1: float
    min_margin: float

    @property
    def label(self) -> str:
        return f"{self.name}@{self.revision}"


def model_by_revision(session: Session, revision: str) -> EmbeddingModel | None:
    """The registered model version of these weights (the revision names them, whatever the path)."""
    return session.scalars(
        select(EmbeddingModel).where(EmbeddingModel.revision == revision).order_by(EmbeddingModel.id).limit(1)
    ).one_or_none()


def record_check(session: Session, model_id: int, check: TextModelCheck) -> bool:
    """Record (or refresh) a passed check of a text model against model version `model_id`; True when it is new.

    The figures are those of the latest check; `first_checked_at` stays. Safe from many processes at once.
    """
    values = {
        "name": check.name,
        "dimension": check.dimension,
        "probes": check.probes,
        "margin": check.margin,
        "matched_cosine": check.matched_cosine,
        "mismatched_cosine": check.mismatched_cosine,
        "top1": check.top1,
        "min_margin": check.min_margin,
    }
    inserted = session.execute(
        insert(EmbeddingTextModel)
        .values(model_id=model_id, revision=check.revision, **values)
        .on_conflict_do_update(
            constraint="uq_embedding_text_models_model_revision",
            set_={**values, "last_checked_at": func.now()},
        )
        .returning(EmbeddingTextModel.first_checked_at == EmbeddingTextModel.last_checked_at)
    ).scalar_one()
    return bool(inserted)


def checks_of(session: Session, model_id: int) -> list[TextModelCheck]:
    """The text models recorded for one model version, the most recently checked first."""
    rows = session.scalars(
        select(EmbeddingTextModel)
        .where(EmbeddingTextModel.model_id == model_id)
        .order_by(EmbeddingTextModel.last_checked_at.desc(), EmbeddingTextModel.id.desc())
    )
    return [_check(row) for row in rows]


def checks_by_model(session: Session) -> dict[int, list[TextModelCheck]]:
    """Every model version's recorded text models (model id -> most recently checked first)."""
    found: dict[int, list[TextModelCheck]] = {}
    rows = session.scalars(
        select(EmbeddingTextModel).order_by(EmbeddingTextModel.last_checked_at.desc(), EmbeddingTextModel.id.desc())
    )
    for row in rows:
        found.setdefault(row.model_id, []).append(_check(row))
    return found


def _check(row: EmbeddingTextModel) -> TextModelCheck:
    return TextModelCheck(
        row.name,
        row.revision,
        row.dimension,
        row.probes,
        row.margin,
        row.matched_cosine,
        row.mismatched_cosine,
        row.top1,
        row.min_margin,
    )
