"""Indexing a batch of photos: claim, decode in parallel with the model, embed in one pass, store.

Shared by the single-photo task (uploads) and the batch task (`withsense ingest`, the reconciler).
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.images import ImageRejected, encode_jpeg, load_rgb, make_derivative
from core.moderation import ModerationVerdict, get_moderator
from core.settings import Settings, get_settings
from core.storage import derivative_path, original_path, write_atomically
from db import photos as photo_sql
from db.engine import session_scope
from db.moderation import ClassifierOutcome, apply_classifier
from db.models import EmbeddingModel

log = logging.getLogger(__name__)

_lock = threading.Lock()
_registered_model: EmbeddingModel | None = None
_decoder: ThreadPoolExecutor | None = None


def registered_model() -> EmbeddingModel:
    """The embedding_models row of the model this process loaded (registered once per process)."""
    global _registered_model
    with _lock:
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


def _decode_pool(settings: Settings) -> ThreadPoolExecutor:
    # Pillow releases the GIL while decoding and resizing, so threads decode alongside the model.
    global _decoder
    with _lock:
        if _decoder is None:
            _decoder = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        return _decoder


def outcome_of(verdict: ModerationVerdict) -> ClassifierOutcome:
    return ClassifierOutcome(
        version=verdict.classifier_version,
        scores=[(s.category, s.score, s.decision) for s in verdict.scores],
        depicts_minor=verdict.depicts_minor, unsafe=verdict.unsafe, needs_review=verdict.needs_review,
    )


@dataclass
class _Decoded:
    photo_id: uuid.UUID
    derivative: Image.Image | None = None
    failure: str | None = None


def _decode(settings: Settings, photo_id: uuid.UUID, storage_key: str) -> _Decoded:
    try:
        image = load_rgb(original_path(settings, storage_key), allowed_formats=settings.allowed_formats,
                         max_pixels=settings.max_image_pixels, draft_size=settings.derivative_size)
        derivative = make_derivative(image, settings.derivative_size)
    except FileNotFoundError:
        return _Decoded(photo_id, failure="the original file is missing from storage")
    except ImageRejected as exc:
        return _Decoded(photo_id, failure=exc.reason)
    write_atomically(derivative_path(settings, photo_id), encode_jpeg(derivative, settings.derivative_quality))
    return _Decoded(photo_id, derivative=derivative)


@dataclass(frozen=True)
class BatchResult:
    indexed: list[str]
    failed: dict[str, str]
    skipped: list[str]
    split: list[str]

    def as_dict(self) -> dict[str, object]:
        return {"indexed": self.indexed, "failed": self.failed, "skipped": self.skipped, "split": self.split}


def index_photos(photo_ids: list[uuid.UUID], *, allow_split: bool = True) -> BatchResult:
    """Index the given photos; each ends `indexed` or `failed` (or is skipped when there is nothing to do).

    When a batch comes back after a crash (some photo already used an attempt), it is split into
    single-photo tasks, so one poison image uses up only its own attempts, not its neighbours'.
    """
    settings = get_settings()
    claimed: dict[uuid.UUID, str] = {}
    retried = False
    with session_scope() as session:
        for photo_id in photo_ids:
            photo = photo_sql.claim_for_indexing(session, photo_id, settings.task_max_attempts)
            if photo is not None:
                claimed[photo_id] = photo.storage_key
                retried = retried or photo.attempts > 1
    skipped = [str(p) for p in photo_ids if p not in claimed]
    if allow_split and retried and len(claimed) > 1:
        from workers.enqueue import enqueue_ingest

        with session_scope() as session:
            for photo_id in claimed:  # give back the attempt this claim took; each single task counts its own
                photo_sql.release_claim(session, photo_id)
        for photo_id in claimed:
            enqueue_ingest(photo_id)
        return BatchResult([], {}, skipped, [str(p) for p in claimed])
    if not claimed:
        return BatchResult([], {}, skipped, [])

    from core.embedding import get_embedder

    embedder = get_embedder()
    model = registered_model()
    moderator = get_moderator()
    pool = _decode_pool(settings)
    futures: list[Future[_Decoded]] = [pool.submit(_decode, settings, pid, key) for pid, key in claimed.items()]

    failed: dict[str, str] = {}
    vectors: dict[uuid.UUID, np.ndarray] = {}
    chunk = max(1, settings.image_batch_size)
    # Embed chunk i while the pool keeps decoding chunks i+1, i+2, ...
    for start in range(0, len(futures), chunk):
        decoded = [f.result() for f in futures[start:start + chunk]]
        for item in decoded:
            if item.failure:
                failed[str(item.photo_id)] = item.failure
        ready = [item for item in decoded if item.derivative is not None]
        if ready:
            embeddings = embedder.embed_images([item.derivative for item in ready])  # type: ignore[misc]
            for item, vector in zip(ready, embeddings, strict=True):
                vectors[item.photo_id] = vector

    indexed: list[str] = []
    # Embedding, moderation flags and `indexed` become visible together, or not at all.
    with session_scope() as session:
        for photo_id, reason in failed.items():
            log.warning("photo %s failed: %s", photo_id, reason)
            photo_sql.mark_failed(session, uuid.UUID(photo_id), reason)
        for photo_id, vector in vectors.items():
            if photo_sql.store_embedding(session, photo_id, model, vector):
                apply_classifier(session, photo_id, outcome_of(moderator.score(vector)))
                indexed.append(str(photo_id))
            else:  # deleted while it was being embedded
                derivative_path(settings, photo_id).unlink(missing_ok=True)
                skipped.append(str(photo_id))
    return BatchResult(indexed, failed, skipped, [])
