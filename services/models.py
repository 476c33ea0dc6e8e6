"""Which embedding model serves search, how much of the index each covers, and switching with no downtime."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from db import photos as photo_sql
from db.engine import session_scope
from db.photos import ModelCoverage
from services.errors import Conflict, InvalidRequest, NotFound
from services.queue import enqueue_reindex_batch


def coverage() -> list[ModelCoverage]:
    """Registered models, the active one, and how many indexed photos each has a vector for."""
    with session_scope() as session:
        return photo_sql.model_coverage(session)


def activate(name: str, revision: str | None = None, *, force: bool = False) -> str:
    """Make a registered model the one search uses, at once for every query; returns its `name@revision`.

    Refused (`Conflict`) while indexed photos have no vector from it (they would vanish from search), unless
    `force`; `NotFound` when no worker has registered such a model.
    """
    with session_scope() as session:
        try:
            model = photo_sql.find_model(session, name, revision)
        except photo_sql.ModelNotRegistered as exc:
            raise NotFound(str(exc)) from None
        covered = next(
            m for m in photo_sql.model_coverage(session) if (m.name, m.revision) == (model.name, model.revision)
        )
        if covered.missing and not force:
            raise Conflict(
                f"{covered.missing} of {covered.indexed} indexed photos have no vector from "
                f"{model.name}@{model.revision}; they would vanish from search. Run `withsense reindex` with a "
                "worker on this model until `withsense models list` shows full coverage, or pass --force."
            )
        photo_sql.activate_model(session, model)
        label = f"{model.name}@{model.revision}"
    photo_sql.forget_active_model()
    return label


def set_floor(name: str, revision: str | None, floor: float | None) -> str:
    """A model's default relevance floor (cosine; None: none), used by every search with it from now on."""
    if floor is not None and not (-1.0 <= floor <= 1.0):
        raise InvalidRequest(f"the floor is a cosine similarity, from -1 to 1; got {floor}")
    with session_scope() as session:
        try:
            model = photo_sql.find_model(session, name, revision)
        except photo_sql.ModelNotRegistered as exc:
            raise NotFound(str(exc)) from None
        model.min_score = floor
        return f"{model.name}@{model.revision}"


def status_counts() -> dict[str, int]:
    """Photos by indexing status."""
    with session_scope() as session:
        return photo_sql.status_counts(session)


def indexed_count() -> int:
    return status_counts().get("indexed", 0)


def queue_reindex(batch_size: int) -> Iterator[int]:
    """Queue every indexed photo, a page at a time, for a worker on the new model (`-Q reindex`) to embed.

    Yields the size of each page once it is queued (for a progress bar); raises QueueUnavailable part-way when
    the queue goes down (running it again is cheap: photos that already have the new vector are skipped).
    """
    after: uuid.UUID | None = None
    while True:
        with session_scope() as session:
            page = photo_sql.indexed_photo_ids(session, after, batch_size)
        if not page:
            return
        enqueue_reindex_batch(page)
        after = page[-1]
        yield len(page)
