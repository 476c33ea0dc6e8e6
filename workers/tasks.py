"""Celery tasks. Each takes ids, reloads the rows, and exits cleanly when there is nothing to do."""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

from celery import Task
from sqlalchemy.exc import OperationalError

from core.moderation import ModerationVerdict, get_moderator
from core.images import ImageRejected, encode_jpeg, load_rgb, make_derivative
from core.settings import get_settings
from core.storage import derivative_path, original_path, write_atomically
from db import photos as photo_sql
from db.engine import session_scope
from db.moderation import ClassifierOutcome, apply_classifier
from db.models import EmbeddingModel
from workers.celery_app import celery_app

log = logging.getLogger(__name__)

# Errors worth retrying: the database or the broker blinked. Everything else is a verdict on the photo.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OperationalError, ConnectionError, TimeoutError)

_model_lock = threading.Lock()
_registered_model: EmbeddingModel | None = None


def outcome_of(verdict: ModerationVerdict) -> ClassifierOutcome:
    return ClassifierOutcome(
        version=verdict.classifier_version,
        scores=[(s.category, s.score, s.decision) for s in verdict.scores],
        depicts_minor=verdict.depicts_minor, unsafe=verdict.unsafe, needs_review=verdict.needs_review,
    )


def registered_model() -> EmbeddingModel:
    """The embedding_models row of the model this process loaded (registered once per process)."""
    global _registered_model
    with _model_lock:
        if _registered_model is None:
            from core.embedding import get_embedder

            embedder = get_embedder()
            embedder.load()
            with session_scope() as session:
                model = photo_sql.register_model(session, embedder.model_name, embedder.revision, embedder.dimension)
                session.flush()
                session.expunge(model)
            _registered_model = model
        return _registered_model


@celery_app.task(
    name="photos.ingest",
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=8,
)
def ingest_photo(self: Task, photo_id: str) -> dict[str, str]:
    """Decode, make the 224x224 derivative, embed, and store the vector with status `indexed`."""
    settings = get_settings()
    pid = uuid.UUID(photo_id)

    with session_scope() as session:
        photo = photo_sql.claim_for_indexing(session, pid, settings.task_max_attempts)
        if photo is None:
            return {"photo_id": photo_id, "result": "skipped"}
        storage_key = photo.storage_key
    # The connection goes back to the pool here: decoding and the model call can take a while.

    try:
        image = load_rgb(
            original_path(settings, storage_key),
            allowed_formats=settings.allowed_formats,
            max_pixels=settings.max_image_pixels,
            draft_size=settings.derivative_size,
        )
        derivative = make_derivative(image, settings.derivative_size)
    except FileNotFoundError:
        return _fail(pid, "the original file is missing from storage")
    except ImageRejected as exc:
        return _fail(pid, exc.reason)

    write_atomically(derivative_path(settings, pid), encode_jpeg(derivative, settings.derivative_quality))

    from core.embedding import get_embedder

    model = registered_model()
    vector = get_embedder().embed_images([derivative])[0]
    verdict = get_moderator().score(vector)

    # Embedding, moderation flags and `indexed` become visible together, or not at all.
    with session_scope() as session:
        stored = photo_sql.store_embedding(session, pid, model, vector)
        if stored:
            apply_classifier(session, pid, outcome_of(verdict))
    if not stored:
        derivative_path(settings, pid).unlink(missing_ok=True)
        return {"photo_id": photo_id, "result": "deleted"}
    return {"photo_id": photo_id, "result": "indexed"}


def _fail(photo_id: uuid.UUID, reason: str) -> dict[str, str]:
    log.warning("photo %s failed: %s", photo_id, reason)
    with session_scope() as session:
        photo_sql.mark_failed(session, photo_id, reason)
    return {"photo_id": str(photo_id), "result": "failed", "reason": reason}


@celery_app.task(name="maintenance.reconcile")
def reconcile_stale_photos(older_than_s: int = 600, limit: int = 1000) -> dict[str, int]:
    """Re-enqueue photos left pending or processing too long (their task was lost, e.g. Redis restarted)."""
    with session_scope() as session:
        stale = photo_sql.stale_photo_ids(session, timedelta(seconds=older_than_s), limit)
        photo_sql.touch(session, stale)
    for photo_id in stale:
        ingest_photo.apply_async(args=[str(photo_id)])
    if stale:
        log.info("reconciler re-enqueued %d stale photos", len(stale))
    return {"requeued": len(stale)}


__all__ = ["ingest_photo", "reconcile_stale_photos", "registered_model", "TRANSIENT_ERRORS"]
