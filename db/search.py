"""Nearest-neighbour search through the SQL functions of the SQL surface (db/sql/).

The filters (visibility, status, moderation, region) live inside those functions, so the API and
every other service that searches at SQL level get the same answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from pgvector import Vector
from sqlalchemy import text
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
    session: Session, query: np.ndarray, k: int, region: str | None = None, *, ef_search: int | None = None
) -> list[SearchHit]:
    """Nearest photos to `query` under every filter, best first. Raises NoActiveModel before any indexing.

    `ef_search` is the HNSW scan's candidate list (Settings.hnsw_ef_search; more: better recall, slower),
    at least k in effect; None leaves search_photos' own default (200).
    """
    try:
        with session.begin_nested(), _ef_search(session, ef_search):
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
    session: Session, photo_id: uuid.UUID, k: int, region: str | None = None, *, ef_search: int | None = None
) -> list[SearchHit]:
    """Nearest photos to a photo the viewer may see (none when they may not), best first; `ef_search` as above."""
    with session.begin_nested(), _ef_search(session, ef_search):
        rows = session.execute(
            text("SELECT * FROM similar_photos(:photo_id, :k, :region)"),
            {"photo_id": photo_id, "k": k, "region": region},
        ).all()
    return [SearchHit(*row) for row in rows]


@contextmanager
def _ef_search(session: Session, ef_search: int | None) -> Iterator[None]:
    """search_photos reads the caller's choice from the custom setting `withsense.ef_search`, for this call only."""
    if ef_search is None:
        yield
        return
    if ef_search not in EF_SEARCH_RANGE:
        raise ValueError(f"ef_search must be from 1 to 1000, got {ef_search}")
    session.execute(text("SELECT set_config('withsense.ef_search', :value, true)"), {"value": str(ef_search)})
    yield
    # Set for the transaction: cleared at once so that its later statements are not affected. (After an
    # error the caller's savepoint is rolled back, and the setting with it.)
    session.execute(text("SELECT set_config('withsense.ef_search', '', true)"))


class NoActiveModel(LookupError):
    """Nothing has been indexed yet, so no model is active."""


class DimensionMismatch(ValueError):
    """The query vector's dimension is not the active model's."""
