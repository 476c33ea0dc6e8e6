"""Celery tasks. Each takes ids, reloads the rows, and exits cleanly when there is nothing to do."""

from __future__ import annotations

import logging
import uuid

from celery import Task
from sqlalchemy.exc import OperationalError

from core.embedding import ModelUnavailableError
from services import indexing
from workers.celery_app import celery_app

log = logging.getLogger(__name__)

# Errors worth retrying: the database or the broker blinked. Everything else is a verdict on the photo.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, TimeoutError)


# Only named transient errors are retried, with exponential backoff and jitter; a decode error is a verdict.
RETRY_OPTIONS: dict[str, object] = {
    "bind": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 8,
    # Expected verdicts on the worker, already logged in one line with the reason put on the photos: Celery logs
    # them without a traceback.
    "throws": (ModelUnavailableError, indexing.ModelNotActive),
}


@celery_app.task(name="photos.ingest", **RETRY_OPTIONS)
def ingest_photo(self: Task, photo_id: str) -> dict[str, str]:
    """Decode, make the 224x224 derivative, embed, moderate, and store with status `indexed`."""
    result = indexing.index_photos([uuid.UUID(photo_id)])
    if result.waiting:
        return {"photo_id": photo_id, "result": "waiting for the model", "reason": result.waiting}
    if result.indexed:
        return {"photo_id": photo_id, "result": "indexed"}
    if result.failed:
        return {"photo_id": photo_id, "result": "failed", "reason": next(iter(result.failed.values()))}
    return {"photo_id": photo_id, "result": "skipped"}


@celery_app.task(name="photos.ingest_batch", **RETRY_OPTIONS)
def ingest_photo_batch(self: Task, photo_ids: list[str]) -> dict[str, object]:
    """Index several photos with one forward pass per chunk (backfills and the reconciler)."""
    return indexing.index_photos([uuid.UUID(p) for p in photo_ids]).as_dict()


@celery_app.task(name="reindex.embed", **RETRY_OPTIONS)
def reindex_photo_batch(self: Task, photo_ids: list[str]) -> dict[str, object]:
    """Embed indexed photos with this worker's model, for a model upgrade (queue `reindex`, `withsense reindex`)."""
    return indexing.reembed_photos([uuid.UUID(p) for p in photo_ids])


@celery_app.task(name="photos.resume_waiting")
def resume_waiting_photos() -> dict[str, object]:
    """Try this worker's model again; once it loads, photos left pending for want of it are queued at once."""
    return indexing.resume_after_model_failure()


@celery_app.task(name="maintenance.reconcile")
def reconcile_stale_photos(older_than_s: int = 600, limit: int = 1000) -> dict[str, int]:
    """Re-enqueue photos left pending or processing too long (their task was lost, e.g. Redis restarted)."""
    return {"requeued": indexing.reconcile_stale_photos(older_than_s, limit)}


__all__ = [
    "TRANSIENT_ERRORS",
    "ingest_photo",
    "ingest_photo_batch",
    "reconcile_stale_photos",
    "reindex_photo_batch",
    "resume_waiting_photos",
]
