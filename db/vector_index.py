"""Each model's HNSW index kind: halfvec or binary (migration 0011, db/sql/build_embedding_index/ and its siblings)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

KINDS = ("halfvec", "binary")
INDEX_PREFIX = {"halfvec": "ix_photo_embeddings_hnsw_model_", "binary": "ix_photo_embeddings_bq_model_"}


@dataclass(frozen=True)
class ModelIndexes:
    model_id: int
    name: str
    active: bool
    kind: str  # the kind its searches use
    built: tuple[str, ...]  # the kinds whose index exists now


def index_name(model_id: int, kind: str) -> str:
    return f"{INDEX_PREFIX[kind]}{model_id}"


def model_indexes(session: Session) -> list[ModelIndexes]:
    """Every registered model with its kind and the indexes it has, by id."""
    rows = session.execute(
        text(
            "SELECT m.id, m.name, m.active, m.vector_index, "
            "to_regclass('public.' || :halfvec || m.id) IS NOT NULL, "
            "to_regclass('public.' || :binary || m.id) IS NOT NULL "
            "FROM embedding_models m ORDER BY m.id"
        ),
        {"halfvec": INDEX_PREFIX["halfvec"], "binary": INDEX_PREFIX["binary"]},
    ).all()
    return [
        ModelIndexes(int(i), str(n), bool(a), str(kind), tuple(k for k, has in zip(KINDS, (h, b), strict=True) if has))
        for i, n, a, kind, h, b in rows
    ]


def build_index(session: Session, model_id: int, kind: str) -> str:
    """Build the model's index of `kind` if it is missing (searches go on; writes of vectors wait). Its name."""
    return str(_call(session, "build_embedding_index", model_id, kind))


def set_kind(session: Session, model_id: int, kind: str) -> str:
    """Switch the model's searches to its index of `kind` (which must exist). The kind before."""
    return str(_call(session, "set_embedding_index_kind", model_id, kind))


def drop_index(session: Session, model_id: int, kind: str) -> bool:
    """Drop the model's index of `kind`, which its searches must not use. Whether there was one."""
    return bool(_call(session, "drop_embedding_index", model_id, kind))


def _call(session: Session, function: str, model_id: int, kind: str) -> object:
    return session.execute(text(f"SELECT {function}(:id, :kind)"), {"id": model_id, "kind": kind}).scalar_one()


def build_progress(session: Session) -> tuple[str, int, int] | None:
    """The phase and tuples done / total of an index build running now on photo_embeddings (or a partition)."""
    row = session.execute(
        text(
            "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index "
            "WHERE datname = current_database() ORDER BY pid LIMIT 1"
        )
    ).first()
    return None if row is None else (str(row[0]), int(row[1] or 0), int(row[2] or 0))
