"""Which embedding model serves search, how much of the index each covers, and switching with no downtime."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.embedding import ClipEmbedder
from core.finetuned import RECORD_FILE, read_record
from db import finetune as finetune_sql
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


@dataclass(frozen=True)
class Adopted:
    """A text-only fine-tune registered beside its base, sharing the base's stored image vectors."""

    label: str
    base_label: str
    shared: int


# Noise pictures the two image towers must embed alike (a changed image tower moves them at once).
_PROBE_PICTURES = 4


def _image_towers_agree(base: ClipEmbedder, tuned: ClipEmbedder) -> float:
    """The largest difference between the two models' embeddings of a few fixed noise pictures."""
    rng = np.random.default_rng(20261202)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), "RGB") for _ in range(_PROBE_PICTURES)
    ]
    return float(np.max(np.abs(base.embed_images(pictures) - tuned.embed_images(pictures))))


def adopt_finetuned(folder: str) -> Adopted:
    """Register a `withsense finetune` text-only output as a model version sharing its base's image vectors.

    Its image tower is the base's (checked: both models embed probe pictures alike), so every vector stored for
    the base is valid for it and is copied in SQL instead of re-embedded; `activate` then finds full coverage.
    `InvalidRequest` for a folder that is no fine-tune output, `Conflict` for a whole-model fine-tune (reindex
    it) or an image tower that differs, `NotFound` when the base model is not registered here.
    """
    record = read_record(folder)
    if record is None:
        raise InvalidRequest(f"{folder} is not a `withsense finetune` output (no {RECORD_FILE})")
    if not record.shares_image_vectors:
        raise Conflict(
            f"{folder} was fine-tuned as a whole model: its image vectors differ from {record.base_model}'s. Run "
            "`withsense reindex` with a worker on it (WITHSENSE_MODEL), then `withsense models activate`."
        )
    with session_scope() as session:
        base_row = finetune_sql.model_by_revision(session, record.base_revision)
        if base_row is None:
            raise NotFound(
                f"the base model {record.base_model}@{record.base_revision} of {folder} is not registered here"
            )
    tuned = ClipEmbedder(folder, device="cpu")
    base = ClipEmbedder(record.base_model, device="cpu")
    if base.revision != record.base_revision:
        raise Conflict(
            f"{record.base_model} is now revision {base.revision}, but {folder} was tuned from {record.base_revision}"
        )
    difference = _image_towers_agree(base, tuned)
    if difference > 1e-4:
        raise Conflict(
            f"the image tower of {folder} differs from {record.base_model}'s (by {difference:.2g}): reindex it instead"
        )
    with session_scope() as session:
        base_row = finetune_sql.model_by_revision(session, record.base_revision)
        assert base_row is not None
        model = photo_sql.register_model(session, folder, tuned.revision, tuned.dimension)
        shared = finetune_sql.share_embeddings(session, base_row, model)
        return Adopted(f"{model.name}@{model.revision}", f"{base_row.name}@{base_row.revision}", shared)
