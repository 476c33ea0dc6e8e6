"""Nearest-neighbour search through the SQL functions of the SQL surface (db/sql/).

The filters (visibility, status, moderation, region) live inside those functions, so the API and
every other service that searches at SQL level get the same answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
from pgvector import Vector
from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# pgvector's bounds for hnsw.ef_search; search_photos raises it to k when it is lower.
EF_SEARCH_RANGE = range(1, 1001)


@dataclass(frozen=True)
class SearchHit:
    photo_id: uuid.UUID
    score: float
    title: str | None
    photographer: str | None
    width: int
    height: int


def search_by_vector(
    session: Session,
    query: np.ndarray,
    k: int,
    region: str | None = None,
    *,
    ef_search: int | None = None,
    binary_rerank: int | None = None,
) -> list[SearchHit]:
    """Nearest photos to `query` under every filter, best first. Raises NoActiveModel before any indexing.

    `ef_search` is the HNSW scan's candidate list (Settings.hnsw_ef_search; more: better recall, slower),
    at least k in effect; None leaves search_photos' own default (200). `binary_rerank` (Settings.binary_rerank):
    the candidates re-ranked when the model's searches use its binary index; None: the function's 200.
    """
    try:
        with _search_settings(session, ef_search, binary_rerank):
            rows = session.execute(
                text("SELECT * FROM search_photos(:query, :k, :region)"),
                {"query": Vector(np.asarray(query, dtype=np.float32).tolist()), "k": k, "region": region},
            ).all()
    except DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate == "55000":
            raise NoActiveModel(str(exc.orig)) from exc
        if sqlstate == "22000":
            raise DimensionMismatch(str(exc.orig).splitlines()[0]) from exc
        raise
    return [SearchHit(*row) for row in rows]


def similar_to_photo(
    session: Session,
    photo_id: uuid.UUID,
    k: int,
    region: str | None = None,
    *,
    ef_search: int | None = None,
    binary_rerank: int | None = None,
) -> list[SearchHit]:
    """Nearest photos to a photo the viewer may see (none when they may not), best first; `ef_search` as above."""
    with _search_settings(session, ef_search, binary_rerank):
        rows = session.execute(
            text("SELECT * FROM similar_photos(:photo_id, :k, :region)"),
            {"photo_id": photo_id, "k": k, "region": region},
        ).all()
    return [SearchHit(*row) for row in rows]


@contextmanager
def _search_settings(
    session: Session, ef_search: int | None, binary_rerank: int | None = None, exact_below: int | None = None
) -> Iterator[None]:
    """The search functions read the caller's choices from the custom settings `withsense.ef_search`,
    `withsense.binary_rerank` and `withsense.exact_below`, for this call only; None leaves what the session has.

    The call runs in a savepoint that is rolled back once its rows are read: the search functions only read, so
    nothing is lost, and the rollback takes the settings with it, so the caller's later statements see none of
    them. All of them are set by one statement, and nothing needs clearing: four round trips fewer per search
    than a statement per setting, one per clearing and a RELEASE. An error rolls the savepoint back too: the
    caller's transaction stays usable.
    """
    for name, value in {"ef_search": ef_search, "binary_rerank": binary_rerank}.items():
        if value is not None and value not in EF_SEARCH_RANGE:
            raise ValueError(f"{name} must be from 1 to 1000, got {value}")
    given = {
        name: str(value)
        for name, value in {"ef_search": ef_search, "binary_rerank": binary_rerank, "exact_below": exact_below}.items()
        if value is not None
    }
    savepoint = session.begin_nested()
    try:
        if given:
            session.execute(_set_settings(tuple(given)), given)
        yield
    finally:
        if savepoint.is_active:
            savepoint.rollback()


@lru_cache(maxsize=8)
def _set_settings(names: tuple[str, ...]) -> TextClause:
    return text("SELECT " + ", ".join(f"set_config('withsense.{name}', :{name}, true)" for name in names))


class NoActiveModel(LookupError):
    """Nothing has been indexed yet, so no model is active."""


class DimensionMismatch(ValueError):
    """The query vector's dimension is not the active model's."""


@dataclass(frozen=True)
class FoundPhoto:
    """One row of search_photos_filtered(): the photo, where it ranks, and how it matched."""

    photo_id: uuid.UUID
    rank: int
    score: float | None  # cosine similarity to the query vector
    matched: str  # 'semantic', 'keyword' or 'both'
    relevance: float
    title: str | None
    description: str | None
    photographer: str | None
    tags: list[str]
    taken_at: datetime | None
    uploaded_at: datetime
    camera: str | None
    lens: str | None
    width: int
    height: int
    orientation: str


class InvalidSearch(ValueError):
    """The SQL function refused an argument (an unknown filter, a value out of range); the message says which."""


_SEARCH_FILTERED = text(
    "SELECT * FROM search_photos_filtered(CAST(:query AS vector), :query_text, :k, :region, "
    "CAST(:filters AS jsonb), CAST(:options AS jsonb))"
)


def search_filtered(
    session: Session,
    query: np.ndarray | None,
    query_text: str | None,
    k: int,
    region: str | None,
    filters: dict[str, object],
    options: dict[str, object],
    *,
    exact_below: int | None = None,
    ef_search: int | None = None,
    binary_rerank: int | None = None,
) -> list[FoundPhoto]:
    """search_photos_filtered(): filters, keyword and hybrid search, the floor, the order and the page in one call.

    `exact_below` (Settings.search_exact_below): below this many photos left by the filters, exact distances
    instead of the HNSW scan; `ef_search` as for search_by_vector; None leaves the function's own choices (about
    sqrt(depth x catalogue size), and 200). Raises NoActiveModel before any indexing,
    DimensionMismatch for a vector of another dimension, InvalidSearch for arguments the function refuses.
    """
    vector = Vector(np.asarray(query, dtype=np.float32).tolist()) if query is not None else None
    try:
        with _search_settings(session, ef_search, binary_rerank, exact_below):
            rows = session.execute(
                _SEARCH_FILTERED,
                {
                    "query": vector,
                    "query_text": query_text,
                    "k": k,
                    "region": region,
                    "filters": json.dumps(filters),
                    "options": json.dumps(options),
                },
            ).all()
    except DBAPIError as exc:
        raise _search_error(exc) from exc
    return [FoundPhoto(*row) for row in rows]


def photo_embedding(session: Session, photo_id: uuid.UUID) -> np.ndarray | None:
    """The active model's vector of a photo (None when it has none): the starting point of "more like this"."""
    row = session.execute(
        text(
            "SELECT e.embedding::vector FROM photo_embeddings e JOIN embedding_models m ON m.id = e.model_id "
            "WHERE m.active AND e.photo_id = :photo_id"
        ),
        {"photo_id": photo_id},
    ).scalar_one_or_none()
    if row is None:
        return None
    if isinstance(row, str):  # a connection made before the extension existed has no vector type registered
        return np.asarray([float(part) for part in row.strip("[]").split(",")], dtype=np.float32)
    if isinstance(row, Vector):
        return np.asarray(row.to_numpy(), dtype=np.float32)
    return np.asarray(row, dtype=np.float32)


def _search_error(exc: DBAPIError) -> Exception:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig).splitlines()[0] if exc.orig is not None else str(exc)
    if sqlstate == "55000":
        return NoActiveModel(message)
    if sqlstate == "22000":
        return DimensionMismatch(message)
    if sqlstate == "22023":
        return InvalidSearch(message)
    return exc
