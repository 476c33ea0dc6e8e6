"""SQL for the photo lifecycle: register an upload, claim it for indexing, store its embedding, fail it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pgvector import HalfVector
from sqlalchemy import ColumnElement, and_, case, delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.runtime import TtlCache, runtime
from core.settings import get_settings
from db.models import EmbeddingModel, Photo, PhotoEmbedding, PhotoStatus
from db.text_models import TextModelCheck, checks_by_model


class InvalidEmbedding(ValueError):
    """A vector that must never be stored: wrong dimension, NaN/inf, zero, or not normalised."""


@dataclass(frozen=True)
class NewPhoto:
    sha256: str
    storage_key: str
    format: str
    width: int
    height: int
    bytes: int
    original_name: str | None = None
    title: str | None = None
    photographer: str | None = None
    uploaded_by_key: int | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()


def find_by_sha256(session: Session, sha256: str) -> Photo | None:
    return session.scalars(select(Photo).where(Photo.sha256 == sha256)).one_or_none()


def insert_photo(session: Session, new: NewPhoto) -> tuple[Photo, bool]:
    """Insert a pending photo, or return the existing one with the same bytes.

    Returns (photo, created). Concurrent uploads of the same bytes race on the sha256 unique
    constraint; ON CONFLICT DO NOTHING makes the loser read the winner's row instead of failing.
    """
    statement = (
        insert(Photo)
        .values(
            sha256=new.sha256,
            storage_key=new.storage_key,
            format=new.format,
            width=new.width,
            height=new.height,
            bytes=new.bytes,
            original_name=new.original_name,
            title=new.title,
            photographer=new.photographer,
            uploaded_by_key=new.uploaded_by_key,
            description=new.description,
            tags=list(new.tags),
        )
        .on_conflict_do_nothing(index_elements=[Photo.sha256])
        .returning(Photo.id)
    )
    photo_id = session.execute(statement).scalar_one_or_none()
    if photo_id is None:
        existing = find_by_sha256(session, new.sha256)
        if existing is None:  # deleted between the conflict and the read: vanishingly rare, retryable
            raise RuntimeError("a photo with the same bytes was deleted concurrently; retry the upload")
        return existing, False
    photo = session.get(Photo, photo_id)
    assert photo is not None
    return photo, True


def get_photo(session: Session, photo_id: uuid.UUID, *, for_update: bool = False) -> Photo | None:
    return session.get(Photo, photo_id, with_for_update=for_update)


def lock_photos(session: Session, photo_ids: list[uuid.UUID]) -> list[Photo]:
    """The photos, locked for the caller's transaction, in id order (so that two batches never deadlock)."""
    return list(
        session.scalars(select(Photo).where(Photo.id.in_(photo_ids)).order_by(Photo.id).with_for_update()).all()
    )


def _metadata_unread() -> ColumnElement[bool]:
    return and_(Photo.status == PhotoStatus.INDEXED, Photo.metadata_read_at.is_(None))


def count_metadata_unread(session: Session) -> int:
    """Indexed photos whose file's metadata was never read (indexed before the worker read it)."""
    return int(session.scalar(select(func.count()).select_from(Photo).where(_metadata_unread())) or 0)


def metadata_unread(session: Session, after: uuid.UUID | None, limit: int) -> list[Photo]:
    """The next `limit` of those, by id after `after`, locked (skipping photos another backfill holds)."""
    query = select(Photo).where(_metadata_unread())
    if after is not None:
        query = query.where(Photo.id > after)
    return list(session.scalars(query.order_by(Photo.id).limit(limit).with_for_update(skip_locked=True)).all())


@dataclass(frozen=True)
class Claim:
    """A photo this worker now holds in `processing`: where its original is, and which attempt this is."""

    storage_key: str
    attempts: int


def claim_for_indexing(session: Session, photo_ids: list[uuid.UUID], max_attempts: int) -> dict[uuid.UUID, Claim]:
    """Move the photos to `processing` and count the attempt, under row locks, in two statements.

    Photos with nothing to do are left out: gone, already indexed or failed, or held by another worker
    right now (SKIP LOCKED), so a second delivery of the same task changes nothing. A photo that has
    used up its attempts (a poison image that kills the worker each time) is failed instead.
    """
    if not photo_ids:
        return {}
    rows = session.execute(
        select(Photo.id, Photo.status, Photo.attempts, Photo.storage_key)
        .where(Photo.id.in_(photo_ids))
        .with_for_update(skip_locked=True)
    ).all()
    open_rows = [row for row in rows if row.status not in (PhotoStatus.INDEXED, PhotoStatus.FAILED)]
    exhausted = [row.id for row in open_rows if row.attempts >= max_attempts]
    claimed = {row.id: Claim(row.storage_key, row.attempts + 1) for row in open_rows if row.attempts < max_attempts}
    if exhausted:
        session.execute(
            update(Photo)
            .where(Photo.id.in_(exhausted))
            .values(
                status=PhotoStatus.FAILED,
                updated_at=func.now(),
                error=func.concat(
                    "gave up after ",
                    Photo.attempts,
                    " attempts",
                    case(
                        (Photo.error.is_(None), " (the worker crashed or timed out on this image each time)"),
                        else_=func.concat("; last error: ", Photo.error),
                    ),
                ),
            )
            .execution_options(synchronize_session=False)
        )
    if claimed:
        session.execute(
            update(Photo)
            .where(Photo.id.in_(list(claimed)))
            .values(status=PhotoStatus.PROCESSING, attempts=Photo.attempts + 1, updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
    return claimed


def release_claim(session: Session, photo_id: uuid.UUID) -> None:
    """Undo a claim that did no work (the batch was split): back to pending, the attempt returned."""
    session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.status == PhotoStatus.PROCESSING)
        .values(status=PhotoStatus.PENDING, attempts=func.greatest(Photo.attempts - 1, 0), updated_at=func.now())
    )


def validate_embedding(vector: np.ndarray, dimension: int) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dimension:
        raise InvalidEmbedding(f"embedding has shape {array.shape}; the model produces {dimension} dimensions")
    if not np.all(np.isfinite(array)):
        raise InvalidEmbedding("embedding contains NaN or infinity")
    norm = float(np.linalg.norm(array))
    if norm < 1e-6:
        raise InvalidEmbedding("embedding is a zero vector")
    return array / norm


def store_embeddings(session: Session, model: EmbeddingModel, vectors: dict[uuid.UUID, np.ndarray]) -> list[uuid.UUID]:
    """Write the embeddings and mark the photos indexed, in the caller's transaction (three statements).

    Idempotent: an embedding already present for (photo, model) is kept as it is. Returns the photos
    stored; a photo deleted while it was being embedded is left out.
    """
    stored = mark_indexed(session, model, vectors)
    insert_embeddings(session, model, vectors, stored)
    return stored


def mark_indexed(session: Session, model: EmbeddingModel, vectors: dict[uuid.UUID, np.ndarray]) -> list[uuid.UUID]:
    """The first half of store_embeddings: validate the vectors, lock the photos still present and mark them
    indexed; returns those photos. `insert_embeddings` writes the vectors after whatever else the transaction
    changes on the photos (metadata, the classifier's decision): the embedding rows are then written once, with
    their visibility flags final (db/sql/photo_embedding_visibility/), rather than written and updated again."""
    for vector in vectors.values():
        validate_embedding(vector, model.dimension)
    stored = _lock_present(session, list(vectors))
    if stored:
        session.execute(
            update(Photo)
            .where(Photo.id.in_(stored))
            .values(status=PhotoStatus.INDEXED, error=None, indexed_at=func.now(), updated_at=func.now())
            .execution_options(synchronize_session=False)
        )
    return stored


def insert_embeddings(
    session: Session, model: EmbeddingModel, vectors: dict[uuid.UUID, np.ndarray], stored: list[uuid.UUID]
) -> None:
    """The second half of store_embeddings: the vectors of the photos `mark_indexed` returned (existing kept)."""
    session.flush()  # the ORM's pending changes to these photos first: the rows' flags are computed from them
    rows = [
        {"photo_id": p, "model_id": model.id, "embedding": HalfVector(validate_embedding(vectors[p], model.dimension))}
        for p in stored
    ]
    if rows:
        session.execute(
            insert(PhotoEmbedding)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[PhotoEmbedding.photo_id, PhotoEmbedding.model_id])
        )


def _lock_present(session: Session, photo_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """These photos that still exist, locked for this transaction, in the order given."""
    present = set(session.scalars(select(Photo.id).where(Photo.id.in_(photo_ids)).with_for_update()))
    return [photo_id for photo_id in photo_ids if photo_id in present]


def mark_failed(session: Session, photo_id: uuid.UUID, reason: str) -> None:
    session.execute(
        update(Photo)
        .where(Photo.id == photo_id, Photo.status != PhotoStatus.INDEXED)
        .values(status=PhotoStatus.FAILED, error=reason[:2000], updated_at=func.now())
    )


def release_after_error(session: Session, photo_ids: list[uuid.UUID], reason: str, *, claimed: bool = True) -> None:
    """The task failed as a whole (the model or the database): its photos go back to `pending` with the reason.

    `claimed`: the task held them in `processing`; the attempt stays counted, so a photo that breaks the
    worker each time still ends `failed` after WITHSENSE_TASK_MAX_ATTEMPTS, and then with this reason
    rather than a guess. Otherwise (the task failed before claiming) only photos still `pending` get the
    reason, with no attempt used. The task's retry (a transient error) or the reconciler picks them up again.
    """
    if photo_ids:
        session.execute(
            update(Photo)
            .where(
                Photo.id.in_(photo_ids), Photo.status == (PhotoStatus.PROCESSING if claimed else PhotoStatus.PENDING)
            )
            .values(status=PhotoStatus.PENDING, error=reason[:2000], updated_at=func.now())
            .execution_options(synchronize_session=False)
        )


def list_photos(
    session: Session,
    *,
    uploaded_by_key: int | None,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Photo]:
    """Photos newest first, a page at a time (keyset: those older than the position `after`); one key's when given.

    The position is a (created_at, id) pair, not a photo that must still exist: a page boundary whose photo was
    deleted meanwhile still works, and no lookup tells a caller anything about photos that are not theirs.
    """
    mine = [Photo.uploaded_by_key == uploaded_by_key] if uploaded_by_key is not None else []
    query = select(Photo).where(*mine)
    if status is not None:
        query = query.where(Photo.status == status)
    if after is not None:
        query = query.where(tuple_(Photo.created_at, Photo.id) < tuple_(after[0], after[1]))
    return list(session.scalars(query.order_by(Photo.created_at.desc(), Photo.id.desc()).limit(limit)))


def delete_photo(session: Session, photo_id: uuid.UUID) -> Photo | None:
    """Delete the row (its embeddings go with it): gone from search when the transaction commits."""
    photo = session.get(Photo, photo_id, with_for_update=True)
    if photo is None:
        return None
    session.execute(delete(Photo).where(Photo.id == photo_id))
    return photo


def stale_photo_ids(session: Session, older_than: timedelta, limit: int = 1000) -> list[uuid.UUID]:
    """Photos stuck in pending/processing longer than `older_than`: their task was lost (e.g. Redis restarted)."""
    rows = session.scalars(
        select(Photo.id)
        .where(
            Photo.status.in_([PhotoStatus.PENDING, PhotoStatus.PROCESSING]),
            Photo.updated_at < func.now() - older_than,
        )
        .order_by(Photo.updated_at)
        .limit(limit)
    )
    return list(rows)


def touch(session: Session, photo_ids: list[uuid.UUID]) -> None:
    if photo_ids:
        session.execute(update(Photo).where(Photo.id.in_(photo_ids)).values(updated_at=func.now()))


def register_model(session: Session, name: str, revision: str, dimension: int) -> EmbeddingModel:
    """Find or create the row for this model, build its HNSW index, and make it active if none is.

    The revision (a hub commit, or the content hash of a local folder) says which weights these are, so the
    same model reached by another name (another mount path, the hub's long name) is the same row.
    Safe to call from many workers at once: the insert races on (name, revision).
    """
    model = session.scalars(
        select(EmbeddingModel).where(EmbeddingModel.revision == revision).order_by(EmbeddingModel.id).limit(1)
    ).one_or_none()
    if model is None:
        session.execute(
            insert(EmbeddingModel)
            .values(name=name, revision=revision, dimension=dimension, vector_index=get_settings().vector_index)
            .on_conflict_do_nothing(constraint="uq_embedding_models_name_revision")
        )
        model = session.scalars(
            select(EmbeddingModel).where(EmbeddingModel.name == name, EmbeddingModel.revision == revision)
        ).one()
    if model.dimension != dimension:
        raise InvalidEmbedding(
            f"model {name}@{revision} was registered with {model.dimension} dimensions but now produces {dimension}"
        )
    # Serialise index creation and activation across workers.
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext('withsense.register_model'))"))
    session.execute(text("SELECT ensure_embedding_index(:id)"), {"id": model.id})
    if session.scalar(select(func.count()).select_from(EmbeddingModel).where(EmbeddingModel.active)) == 0:
        model.active = True
    return model


def active_model(session: Session) -> EmbeddingModel | None:
    return session.scalars(select(EmbeddingModel).where(EmbeddingModel.active)).one_or_none()


@dataclass(frozen=True)
class ActiveModel:
    id: int
    name: str
    revision: str


# The active model changes only when an operator runs `withsense models activate`: APIs (which embed queries)
# and workers (which index) look it up at most every WITHSENSE_ACTIVE_MODEL_TTL_S seconds.
_active_model: TtlCache[ActiveModel | None] = runtime.cache(lambda: get_settings().active_model_ttl_s)


def cached_active_model(session: Session) -> ActiveModel | None:
    """The active model as this process last saw it, at most active_model_ttl_s old; None before any indexing."""

    def fetch() -> ActiveModel | None:
        model = active_model(session)
        return ActiveModel(model.id, model.name, model.revision) if model else None

    return _active_model.get(fetch)


def forget_active_model() -> None:
    """Look the active model up again on the next call (after activating one in this process)."""
    _active_model.forget()


@dataclass(frozen=True)
class ModelCoverage:
    """A registered model and how much of the index it covers (a new model is switched on when it covers it all)."""

    name: str
    revision: str
    dimension: int
    active: bool
    embedded: int  # indexed photos with a vector from this model
    indexed: int  # indexed photos
    # The separate text models (WITHSENSE_TEXT_MODEL) whose start-up check against this version passed, the
    # most recently checked first (migration 0012); none: only its own text tower has embedded queries.
    text_models: tuple[TextModelCheck, ...] = ()

    @property
    def missing(self) -> int:
        return self.indexed - self.embedded


def model_coverage(session: Session) -> list[ModelCoverage]:
    indexed = session.scalar(select(func.count()).select_from(Photo).where(Photo.status == PhotoStatus.INDEXED)) or 0
    embedded = (
        select(PhotoEmbedding.model_id, func.count().label("n"))
        .join(Photo, Photo.id == PhotoEmbedding.photo_id)
        .where(Photo.status == PhotoStatus.INDEXED)
        .group_by(PhotoEmbedding.model_id)
        .subquery()
    )
    rows = session.execute(
        select(EmbeddingModel, func.coalesce(embedded.c.n, 0))
        .outerjoin(embedded, embedded.c.model_id == EmbeddingModel.id)
        .order_by(EmbeddingModel.created_at)
    ).all()
    text_models = checks_by_model(session)
    return [
        ModelCoverage(m.name, m.revision, m.dimension, m.active, n, indexed, tuple(text_models.get(m.id, ())))
        for m, n in rows
    ]


class ModelNotRegistered(LookupError):
    """No registered model matches; a worker registers its model when it first indexes or reindexes."""


def find_model(session: Session, name: str, revision: str | None = None) -> EmbeddingModel:
    """The registered model called `name` (at `revision`, or the newest registered when None)."""
    query = select(EmbeddingModel).where(EmbeddingModel.name == name)
    if revision:
        query = query.where(EmbeddingModel.revision == revision)
    model = session.scalars(query.order_by(EmbeddingModel.created_at.desc()).limit(1)).one_or_none()
    if model is None:
        known = ", ".join(f"{m.name}@{m.revision}" for m in session.scalars(select(EmbeddingModel))) or "none"
        raise ModelNotRegistered(
            f"no registered model {name}{'@' + revision if revision else ''} (registered: {known})"
        )
    return model


def activate_model(session: Session, model: EmbeddingModel) -> None:
    """Make `model` the one search uses, atomically: every query after the commit searches its vectors."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext('withsense.register_model'))"))
    session.execute(update(EmbeddingModel).where(EmbeddingModel.active).values(active=False))
    session.flush()
    session.execute(update(EmbeddingModel).where(EmbeddingModel.id == model.id).values(active=True))


def indexed_photo_ids(session: Session, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """Indexed photos in id order, a page at a time (for reindexing under another model)."""
    query = select(Photo.id).where(Photo.status == PhotoStatus.INDEXED)
    if after is not None:
        query = query.where(Photo.id > after)
    return list(session.scalars(query.order_by(Photo.id).limit(limit)))


def photos_missing_embedding(
    session: Session, model: EmbeddingModel, photo_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Of these photos, the indexed ones that have no vector from `model` yet, with their storage keys."""
    if not photo_ids:
        return {}
    has_vector = (
        select(PhotoEmbedding.photo_id)
        .where(PhotoEmbedding.model_id == model.id, PhotoEmbedding.photo_id == Photo.id)
        .exists()
    )
    rows = session.execute(
        select(Photo.id, Photo.storage_key).where(
            Photo.id.in_(photo_ids), Photo.status == PhotoStatus.INDEXED, ~has_vector
        )
    )
    return {photo_id: storage_key for photo_id, storage_key in rows}


def add_embeddings(session: Session, model: EmbeddingModel, vectors: dict[uuid.UUID, np.ndarray]) -> list[uuid.UUID]:
    """Write validated, normalised vectors of `model` (two statements); photos deleted meanwhile are left out.

    Status and moderation are left as they are: `store_embeddings` builds on this for new photos, and a
    reindex (another model's vectors for photos already indexed) uses it alone. Existing vectors are kept.
    """
    normalised = {photo_id: validate_embedding(vector, model.dimension) for photo_id, vector in vectors.items()}
    if not normalised:
        return []
    stored = _lock_present(session, list(normalised))
    rows = [{"photo_id": p, "model_id": model.id, "embedding": HalfVector(normalised[p])} for p in stored]
    if rows:
        session.execute(
            insert(PhotoEmbedding)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[PhotoEmbedding.photo_id, PhotoEmbedding.model_id])
        )
    return stored


def status_counts(session: Session, photo_ids: list[uuid.UUID] | None = None) -> dict[str, int]:
    """Photos by indexing status (of these photos only, when given)."""
    query = select(Photo.status, func.count()).group_by(Photo.status)
    if photo_ids is not None:
        query = query.where(Photo.id.in_(photo_ids))
    return {status: count for status, count in session.execute(query)}


@dataclass(frozen=True)
class ReasonCount:
    """How many photos in `status` carry this stored `error` (why they failed, or why they still wait)."""

    status: str
    reason: str
    count: int


def counts_by_reason(
    session: Session, photo_ids: list[uuid.UUID] | None = None, limit: int = 10
) -> tuple[list[ReasonCount], int]:
    """Photos not indexed that carry a reason, grouped by status and reason, most frequent first (at most `limit`
    groups), and how many such photos the groups left out. Of these photos only, when given."""
    waiting = [Photo.status.in_([PhotoStatus.PENDING, PhotoStatus.PROCESSING, PhotoStatus.FAILED])]
    if photo_ids is not None:
        waiting.append(Photo.id.in_(photo_ids))
    count = func.count().label("n")
    rows = session.execute(
        select(Photo.status, Photo.error, count)
        .where(*waiting, Photo.error.is_not(None))
        .group_by(Photo.status, Photo.error)
        .order_by(count.desc(), Photo.status, Photo.error)
    ).all()
    groups = [ReasonCount(str(status), str(error), int(n)) for status, error, n in rows]
    return groups[:limit], sum(group.count for group in groups[limit:])


def pending_photo_ids(session: Session, photo_ids: list[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Photos still `pending` (of these only, when given), touched so the reconciler does not queue them again."""
    condition = [Photo.status == PhotoStatus.PENDING]
    if photo_ids is not None:
        condition.append(Photo.id.in_(photo_ids))
    rows = session.execute(
        update(Photo)
        .where(*condition)
        .values(updated_at=func.now())
        .returning(Photo.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars())


def display_names(session: Session, photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """What to call each photo when listing it: its title, else the file name it was uploaded or ingested as."""
    rows = session.execute(
        select(Photo.id, func.coalesce(func.nullif(Photo.title, ""), Photo.original_name)).where(
            Photo.id.in_(photo_ids)
        )
    )
    return {photo_id: name for photo_id, name in rows}


def reset_for_redrive(session: Session, photo_ids: list[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Failed photos back to pending with a fresh attempt budget (all failed ones when `photo_ids` is None)."""
    condition = [Photo.status == PhotoStatus.FAILED]
    if photo_ids is not None:
        condition.append(Photo.id.in_(photo_ids))
    rows = session.execute(
        update(Photo)
        .where(*condition)
        .values(status=PhotoStatus.PENDING, attempts=0, error=None, updated_at=func.now())
        .returning(Photo.id)
    )
    return list(rows.scalars())


# The reason services.indexing records on photos whose task failed because the worker had no model.
MODEL_LOAD_FAILURE = "indexing attempt failed: ModelUnavailableError%"


def photos_waiting_for_model(session: Session, limit: int = 100_000) -> list[uuid.UUID]:
    """Pending photos whose last task failed because the worker could not load its model (oldest first)."""
    return list(
        session.scalars(
            select(Photo.id)
            .where(Photo.status == PhotoStatus.PENDING, Photo.error.like(MODEL_LOAD_FAILURE))
            .order_by(Photo.created_at)
            .limit(limit)
        )
    )
