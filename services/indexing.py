"""Indexing a batch of photos: claim, decode in parallel with the model, embed in one pass, moderate, store.

Called by the worker's tasks: the single-photo task (uploads), the batch task (`withsense ingest`, the
reconciler) and the reindex task (a model upgrade). No Celery here: the tasks are thin wrappers in workers/.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.embedding import ModelUnavailableError
from core.images import ImageRejected, encode_jpeg, load_rgb, make_derivative
from core.metadata import PhotoMetadata
from core.moderation import ModerationVerdict, get_moderator
from core.runtime import runtime
from core.settings import Settings, get_settings
from db import photos as photo_sql
from db.engine import session_scope
from db.models import EmbeddingModel
from services import metadata as file_metadata
from services.moderation import ClassifierOutcome, apply_classifier
from services.queue import QueueUnavailable, enqueue_in_batches, enqueue_ingest, enqueue_resume_after_model_failure
from services.text_models import record_text_model
from storage import get_storage

if TYPE_CHECKING:
    from core.embedding import ClipEmbedder

log = logging.getLogger(__name__)


def _register_loaded_model() -> EmbeddingModel:
    from core.embedding import get_embedder

    embedder = get_embedder()
    embedder.load()
    with session_scope() as session:
        model = photo_sql.register_model(session, embedder.model_name, embedder.revision, embedder.dimension)
        session.flush()
        session.expunge(model)
    record_text_model(embedder, model.id)  # the worker's text model, when it passed its check (queries only)
    if not model.active:
        log.warning(
            "this worker's model %s@%s is registered but not active: search uses another model. Photos it "
            "indexes are found once it is activated; `withsense reindex` embeds the rest of the catalogue "
            "with it, then `withsense models activate %s` switches search over.",
            model.name,
            model.revision,
            model.name,
        )
    return model


_registered = runtime.slot("registered-model", _register_loaded_model)

FIRST_MODEL_RETRY_S = 2.0


class _ModelGate:
    """After a failed load, the worker does not try again on every task: one delayed task tries, with backoff."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failure: Exception | None = None
        self.failed_at = 0.0
        self.delay = FIRST_MODEL_RETRY_S
        self.resume_due = 0.0


_gate = runtime.slot("model-gate", _ModelGate)


def registered_model(*, retry_now: bool = False) -> EmbeddingModel:
    """The embedding_models row of the model this process loaded (registered once per process).

    After a failed load the same error is raised at once until the backoff has passed (or `retry_now`), and one
    delayed `photos.resume_waiting` task is queued to try again. The first successful load queues the photos that
    were left pending for want of the model (`resume_photos_waiting_for_model`).
    """
    if _registered.is_built:
        return _registered.get()
    gate = _gate.get()
    with gate.lock:
        if gate.failure is not None and not retry_now and time.monotonic() - gate.failed_at < gate.delay:
            raise gate.failure
    try:
        model = _registered.get()
    except Exception as exc:
        with gate.lock:
            if gate.failure is not None:
                gate.delay = min(gate.delay * 2, get_settings().model_retry_max_s)
            gate.failure, gate.failed_at = exc, time.monotonic()
        _schedule_resume(gate)
        raise
    with gate.lock:
        recovered = gate.failure is not None
        gate.failure, gate.delay = None, FIRST_MODEL_RETRY_S
    if recovered:
        log.info("the model %s@%s is loaded now", model.name, model.revision)
    resume_photos_waiting_for_model()
    return model


def _schedule_resume(gate: _ModelGate) -> None:
    """One delayed try of the model per backoff period, not one per task that needed it."""
    with gate.lock:
        now = time.monotonic()
        if gate.resume_due > now:
            return
        gate.resume_due = now + gate.delay
        delay = gate.delay
    try:
        enqueue_resume_after_model_failure(delay)
    except QueueUnavailable as exc:  # the reconciler still finds the photos later
        log.warning("could not schedule another try of the model: %s", exc)


def resume_photos_waiting_for_model() -> int:
    """Queue the pending photos whose last task failed because a worker could not load its model; returns how many.

    Called when this process has just loaded its model: they are indexed now, not when the reconciler finds them.
    """
    with session_scope() as session:
        waiting = photo_sql.photos_waiting_for_model(session)
        photo_sql.touch(session, waiting)
    if waiting:
        enqueue_in_batches(waiting, get_settings().ingest_batch_size)
        log.info("queued %d photos that were waiting for the model", len(waiting))
    return len(waiting)


def resume_after_model_failure() -> dict[str, object]:
    """The delayed task's work: try the model again; once loaded, the photos that waited for it are queued."""
    try:
        model = registered_model(retry_now=True)
    except Exception as exc:  # noqa: BLE001 - the answer of this task; the next try is already scheduled
        return {"loaded": False, "reason": _first_line(exc)}
    return {"loaded": True, "model": f"{model.name}@{model.revision}"}


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


class ModelNotActive(RuntimeError):
    """This worker's model is not the one search uses: what it indexed would never be found."""


def ensure_model_is_active(model: EmbeddingModel) -> None:
    """Refuse to index under a model that search does not use (after `withsense models activate` of another).

    Otherwise new photos would end `indexed` with only this model's vector and never appear in search.
    A worker started for a model upgrade reindexes (queue `reindex`) without this check.
    """
    with session_scope() as session:
        active = photo_sql.cached_active_model(session)
    if active is not None and active.id == model.id:
        return
    label = f"{active.name}@{active.revision}" if active else "none"
    raise ModelNotActive(
        f"this worker's model {model.name}@{model.revision} is not the active model ({label}), so photos it "
        "indexed would never be found; restart the worker with WITHSENSE_MODEL set to the active model "
        "(the photos wait as pending, and the reconciler queues them again)"
    )


def _lower_priority() -> None:
    """Decode and store threads yield the cores to the model's threads (Linux: a thread has its own nice value).

    Decoding, storing and the forward pass share the same cores. When they compete as equals, torch's
    OpenMP threads lose their time slices mid-operation and their peers wait for them at the next
    barrier, so CPU time goes nowhere. At the lowest priority these threads use the moments the model
    leaves free, and run at full speed while it waits for them (BENCHMARKS.md, section 4).
    """
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as exc:  # not permitted in some sandboxes: the work still gets done, at normal priority
            log.warning("could not lower the priority of the %s thread: %s", threading.current_thread().name, exc)


def _new_decode_pool() -> ThreadPoolExecutor:
    # Pillow and the image processor release the GIL for the heavy parts, so threads decode alongside the model.
    return ThreadPoolExecutor(
        max_workers=get_settings().decode_threads, thread_name_prefix="decode", initializer=_lower_priority
    )


def _new_store_pool() -> ThreadPoolExecutor:
    # One thread: chunks are written in order, each in its own transaction, while the model embeds the next.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="store", initializer=_lower_priority)


_decoder = runtime.slot("decode-threads", _new_decode_pool, close=lambda pool: pool.shutdown(wait=True))
_writer = runtime.slot("store-thread", _new_store_pool, close=lambda pool: pool.shutdown(wait=True))


def outcome_of(verdict: ModerationVerdict) -> ClassifierOutcome:
    return ClassifierOutcome(
        version=verdict.classifier_version,
        scores=[(s.category, s.score, s.decision) for s in verdict.scores],
        depicts_minor=verdict.depicts_minor,
        unsafe=verdict.unsafe,
        needs_review=verdict.needs_review,
    )


@dataclass
class _Decoded:
    photo_id: uuid.UUID
    prepared: np.ndarray | Image.Image | None = None  # the model's input, from ClipEmbedder.prepare_image
    failure: str | None = None
    metadata: PhotoMetadata | None = None  # what the file says (None: not read, or unreadable)


def _decode(settings: Settings, embedder: ClipEmbedder, photo_id: uuid.UUID, storage_key: str) -> _Decoded:
    """Everything per photo before the forward pass: decode, 224x224 derivative (saved), model preprocessing.

    The original comes from the photo store (from the bucket into a temporary file of this host, with S3); a
    store that cannot be reached raises StorageUnavailable, which fails the task for a retry, not the photo.
    """
    store = get_storage()
    try:
        with store.original_as_file(storage_key) as path:
            image = load_rgb(
                path,
                allowed_formats=settings.allowed_formats,
                max_pixels=settings.max_image_pixels,
                draft_size=settings.derivative_size,
            )
            # Read while the original is on this host (a temporary copy of the object, with S3).
            metadata = file_metadata.read_path_metadata(settings, path, storage_key)
        derivative = make_derivative(image, settings.derivative_size)
    except FileNotFoundError:
        return _Decoded(photo_id, failure="the original file is missing from storage")
    except ImageRejected as exc:
        return _Decoded(photo_id, failure=exc.reason)
    store.store_derivative(photo_id, encode_jpeg(derivative, settings.derivative_quality))
    return _Decoded(photo_id, prepared=embedder.prepare_image(derivative), metadata=metadata)


def _inputs(ready: list[_Decoded]) -> list[np.ndarray | Image.Image]:
    """The model inputs of decoded photos (every one of `ready` has one)."""
    return [item.prepared for item in ready if item.prepared is not None]


@dataclass(frozen=True)
class _Written:
    indexed: list[str]
    failed: dict[str, str]
    skipped: list[str]


def _store_chunk(
    settings: Settings,
    model: EmbeddingModel,
    decoded: list[_Decoded],
    vectors: dict[uuid.UUID, np.ndarray],
    outcomes: dict[uuid.UUID, ClassifierOutcome],
) -> _Written:
    """One transaction: failures, embeddings, moderation flags and `indexed`, visible together or not at all."""
    failed: dict[str, str] = {}
    with session_scope() as session:
        for item in decoded:
            if item.failure:
                log.warning("photo %s failed: %s", item.photo_id, item.failure)
                photo_sql.mark_failed(session, item.photo_id, item.failure)
                failed[str(item.photo_id)] = item.failure
        stored = photo_sql.mark_indexed(session, model, vectors)
        # The file's metadata and the screening of its words before the classifier: a caption that describes a
        # child counts when the classifier's decision is made, and the photo becomes searchable with both.
        metadata = {item.photo_id: item.metadata for item in decoded if item.photo_id in set(stored)}
        file_metadata.apply_to_photos(session, metadata, store_gps=settings.store_gps)
        apply_classifier(session, {photo_id: outcomes[photo_id] for photo_id in stored})
        # The vectors last, in the same transaction: each row is written once, its visibility flags final.
        photo_sql.insert_embeddings(session, model, vectors, stored)
    gone = [photo_id for photo_id in vectors if photo_id not in set(stored)]
    for photo_id in gone:  # deleted while it was being embedded
        error = get_storage().remove_derivative(photo_id)
        if error:
            log.error("photo %s was deleted but its derivative could not be removed: %s", photo_id, error)
    return _Written([str(p) for p in stored], failed, [str(p) for p in gone])


@dataclass(frozen=True)
class BatchResult:
    indexed: list[str]
    failed: dict[str, str]
    skipped: list[str]
    split: list[str]
    waiting: str | None = None  # why the photos wait as pending: this worker has no model (yet)

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "indexed": self.indexed,
            "failed": self.failed,
            "skipped": self.skipped,
            "split": self.split,
        }
        if self.waiting:
            result["waiting_for_model"] = self.waiting
        return result


def index_photos(photo_ids: list[uuid.UUID], *, allow_split: bool = True) -> BatchResult:
    """Index the given photos; each ends `indexed` or `failed` (or is skipped when there is nothing to do).

    The photos are decoded by a thread pool while the model embeds the chunk before (chunks of
    WITHSENSE_IMAGE_BATCH_SIZE), and a writer thread stores each embedded chunk in one transaction
    while the model goes on: a photo's embedding, moderation flags and `indexed` become visible
    together, or not at all. The log line's "database" is the time the task waited for its writes.

    When a batch comes back after a crash (some photo already used an attempt), it is split into
    single-photo tasks, so one poison image uses up only its own attempts, not its neighbours'.
    """
    settings = get_settings()
    started = time.perf_counter()
    try:  # before any claim: a worker that cannot index (no model, or not the active one) uses no attempts
        ensure_model_is_active(registered_model())
    except ModelUnavailableError as exc:
        # Not the photos' fault and not this task's: they wait as pending with the reason, and are queued again
        # as soon as a worker loads the model (a delayed try is scheduled). One log line, no task traceback.
        _record_task_error(photo_ids, exc, claimed=False)
        return BatchResult([], {}, [str(p) for p in photo_ids], [], waiting=_first_line(exc))
    except Exception as exc:
        _record_task_error(photo_ids, exc, claimed=False)
        raise
    with session_scope() as session:
        claimed = photo_sql.claim_for_indexing(session, photo_ids, settings.task_max_attempts)
    skipped = [str(p) for p in photo_ids if p not in claimed]
    retried = any(claim.attempts > 1 for claim in claimed.values())
    if allow_split and retried and len(claimed) > 1:
        with session_scope() as session:
            for photo_id in claimed:  # give back the attempt this claim took; each single task counts its own
                photo_sql.release_claim(session, photo_id)
        for photo_id in claimed:
            enqueue_ingest(photo_id)
        return BatchResult([], {}, skipped, [str(p) for p in claimed])
    if not claimed:
        return BatchResult([], {}, skipped, [])
    try:
        return _index_claimed(settings, photo_ids, claimed, skipped, started)
    except Exception as exc:
        _record_task_error(list(claimed), exc, claimed=True)
        raise


def _record_task_error(photo_ids: list[uuid.UUID], exc: Exception, *, claimed: bool) -> None:
    """Put the reason on the photos of the failed task, so their status shows it (and their final failure)."""
    reason = f"indexing attempt failed: {_first_line(exc)}"
    log.error("indexing %d photos failed: %s", len(photo_ids), reason)
    try:
        with session_scope() as session:
            photo_sql.release_after_error(session, photo_ids, reason, claimed=claimed)
    except Exception as write_error:  # noqa: BLE001 - the database may be the fault; the task's error is re-raised
        log.warning("could not record the failure on the photos: %s", write_error)


def _index_claimed(
    settings: Settings,
    photo_ids: list[uuid.UUID],
    claimed: dict[uuid.UUID, photo_sql.Claim],
    skipped: list[str],
    started: float,
) -> BatchResult:
    from core.embedding import get_embedder

    embedder = get_embedder()
    model = registered_model()
    moderator = get_moderator()
    pool = _decoder.get()
    futures: list[Future[_Decoded]] = [
        pool.submit(_decode, settings, embedder, pid, claim.storage_key) for pid, claim in claimed.items()
    ]

    writer = _writer.get()
    writes: list[Future[_Written]] = []
    seconds = {"decode_wait": 0.0, "model": 0.0, "database": 0.0}
    chunk = max(1, settings.image_batch_size)
    # Embed chunk i while the pool keeps decoding chunks i+1, i+2, ... and the writer stores chunk i-1.
    try:
        for start in range(0, len(futures), chunk):
            mark = time.perf_counter()
            decoded = [f.result() for f in futures[start : start + chunk]]
            ready = [item for item in decoded if item.prepared is not None]
            seconds["decode_wait"] += time.perf_counter() - mark
            mark = time.perf_counter()
            embeddings = embedder.embed_prepared(_inputs(ready))
            vectors = {item.photo_id: vector for item, vector in zip(ready, embeddings, strict=True)}
            outcomes = {photo_id: outcome_of(moderator.score(vector)) for photo_id, vector in vectors.items()}
            seconds["model"] += time.perf_counter() - mark
            writes.append(writer.submit(_store_chunk, settings, model, decoded, vectors, outcomes))
    finally:
        mark = time.perf_counter()
        wait(writes)  # even when decoding or the model failed: nothing of this task keeps running after it

    # Every write has ended; the first error (e.g. the database went away) fails the task (and retries it).
    indexed: list[str] = []
    failed: dict[str, str] = {}
    error: BaseException | None = None
    for write in writes:
        try:
            written = write.result()
        except Exception as exc:  # noqa: BLE001 - re-raised below, once every write has finished
            error = error or exc
            continue
        indexed.extend(written.indexed)
        failed.update(written.failed)
        skipped.extend(written.skipped)
    seconds["database"] = time.perf_counter() - mark
    if error is not None:
        raise error
    log.info(
        "indexed %d, failed %d of %d photos in %.2fs (waiting for decode %.2fs, model %.2fs, database %.2fs)",
        len(indexed),
        len(failed),
        len(photo_ids),
        time.perf_counter() - started,
        seconds["decode_wait"],
        seconds["model"],
        seconds["database"],
    )
    return BatchResult(indexed, failed, skipped, [])


def _decode_for_reindex(settings: Settings, embedder: ClipEmbedder, photo_id: uuid.UUID, storage_key: str) -> _Decoded:
    """Embed from the saved 224x224 derivative (the picture indexing embedded, as a JPEG); from the original
    when the derivative is missing. A model with another input size resizes it in `prepare_image`."""
    try:
        with Image.open(io.BytesIO(get_storage().read_derivative(photo_id))) as derivative:
            return _Decoded(photo_id, prepared=embedder.prepare_image(derivative.convert("RGB")))
    except (FileNotFoundError, OSError):  # StorageUnavailable is a ConnectionError: the original is tried too
        return _decode(settings, embedder, photo_id, storage_key)


def reembed_photos(photo_ids: list[uuid.UUID]) -> dict[str, object]:
    """Add this worker's model's vectors to indexed photos that lack them (a model upgrade; see `withsense reindex`).

    Nothing else changes: status, moderation decisions and the active model stay as they are, so search
    goes on with the current model until an operator activates the new one.
    """
    from core.embedding import get_embedder

    settings = get_settings()
    embedder = get_embedder()
    model = registered_model()
    with session_scope() as session:
        todo = photo_sql.photos_missing_embedding(session, model, photo_ids)
    pool = _decoder.get()
    decoded = list(pool.map(lambda item: _decode_for_reindex(settings, embedder, *item), todo.items()))
    failed = {str(item.photo_id): item.failure for item in decoded if item.failure}
    ready = [item for item in decoded if item.prepared is not None]
    vectors: dict[uuid.UUID, np.ndarray] = {}
    chunk = max(1, settings.image_batch_size)
    for start in range(0, len(ready), chunk):
        part = ready[start : start + chunk]
        vectors.update(zip([item.photo_id for item in part], embedder.embed_prepared(_inputs(part)), strict=True))
    with session_scope() as session:
        stored = photo_sql.add_embeddings(session, model, vectors)
    for photo_id, reason in failed.items():
        log.warning("photo %s could not be reindexed with %s: %s", photo_id, model.name, reason)
    return {
        "model": f"{model.name}@{model.revision}",
        "embedded": len(stored),
        "failed": failed,
        "skipped": len(photo_ids) - len(todo),
    }  # already embedded with this model, or no longer indexed


def reconcile_stale_photos(older_than_s: int, limit: int = 1000) -> int:
    """Queue again photos left pending or processing longer than `older_than_s` (their task was lost: Redis
    restarted, a worker vanished). Returns how many; the tasks are idempotent, so a photo queued twice is harmless."""
    with session_scope() as session:
        stale = photo_sql.stale_photo_ids(session, timedelta(seconds=older_than_s), limit)
        photo_sql.touch(session, stale)
    enqueue_in_batches(stale, get_settings().ingest_batch_size)
    if stale:
        log.info("reconciler re-enqueued %d stale photos", len(stale))
    return len(stale)
