"""Nearest-neighbour search through the SQL functions that the migrations define.

The filters (visibility, status, moderation, region) live inside those functions, so the API and
every other service that searches at SQL level get the same answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
from pgvector import Vector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class SearchHit:
    photo_id: uuid.UUID
    score: float
    title: str | None
    photographer: str | None
    width: int
    height: int


def search_by_vector(session: Session, query: np.ndarray, k: int, region: str | None = None) -> list[SearchHit]:
    """Nearest photos to `query` under every filter, best first. Raises NoActiveModel before any indexing."""
    try:
        with session.begin_nested():
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


def similar_to_photo(session: Session, photo_id: uuid.UUID, k: int, region: str | None = None) -> list[SearchHit]:
    rows = session.execute(
        text("SELECT * FROM similar_photos(:photo_id, :k, :region)"),
        {"photo_id": photo_id, "k": k, "region": region},
    )
    return [SearchHit(*row) for row in rows]


class NoActiveModel(LookupError):
    """Nothing has been indexed yet, so no model is active."""


class DimensionMismatch(ValueError):
    """The query vector's dimension is not the active model's."""
