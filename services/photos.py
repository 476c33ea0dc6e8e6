"""Photos: who may see and manage one, uploads, edits, declarations, deletion, redrive and lists.

Who sees a photo: the key that uploaded it follows it at every stage, moderators and admins see and manage
everything, and everyone else sees it only once search would show it to them (the SQL visibility function
decides: hidden is "not found", the minors law is `Restricted`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.orm import Session

from core.metadata import MAX_DESCRIPTION, clean_text, parse_tags
from core.settings import Settings
from core.storage import derivative_path, original_path, remove_quietly
from db import photos as photo_sql
from db.api_keys import Principal
from db.engine import session_scope
from db.models import Photo, PhotoStatus
from db.moderation import audit, photo_visibility
from services import intake
from services.errors import Conflict, Forbidden, InvalidRequest, NotFound, Restricted
from services.moderation import record_declaration
from services.pages import decode_cursor, encode_cursor
from services.queue import enqueue_in_batches

log = logging.getLogger(__name__)


def _not_found(photo_id: uuid.UUID) -> NotFound:
    return NotFound(f"photo {photo_id} does not exist")


def may_manage(principal: Principal, photo: Photo) -> bool:
    """Moderators and admins manage every photo; an uploader manages what its key uploaded."""
    return principal.allows("moderate") or (
        photo.uploaded_by_key is not None and photo.uploaded_by_key == principal.key_id
    )


def load_visible(session: Session, photo_id: uuid.UUID, principal: Principal, region: str | None) -> Photo:
    """The photo, if this caller in this region may see it: the same rule as search, decided in SQL.

    Moderators see everything (they review it), and uploaders their own photos at every stage (they follow
    indexing and review). Others see a photo only once search would show it: `Restricted` for a minor without
    consent in a restricted region, `NotFound` for anything not (yet) searchable, exactly as for a photo that
    does not exist.
    """
    photo = photo_sql.get_photo(session, photo_id)
    if photo is None:
        raise _not_found(photo_id)
    if may_manage(principal, photo):
        return photo
    visibility = photo_visibility(session, photo_id, region)
    if visibility == "restricted":
        raise Restricted()
    if visibility != "visible":
        raise _not_found(photo_id)
    return photo


def load_managed(session: Session, photo_id: uuid.UUID, principal: Principal, verb: str) -> Photo:
    """The photo, locked, if this caller may manage it: `NotFound` when it does not exist, `Forbidden` when it is
    another key's."""
    photo = photo_sql.get_photo(session, photo_id, for_update=True)
    if photo is None:
        raise _not_found(photo_id)
    if not may_manage(principal, photo):
        raise Forbidden(
            f"photo {photo_id} was uploaded with another key; only that key, a moderator or an admin may {verb} it"
        )
    return photo


def thumbnail_file(
    session: Session, settings: Settings, photo_id: uuid.UUID, principal: Principal, region: str | None
) -> Path:
    """The 224x224 derivative of a photo this caller may see, once it is indexed."""
    photo = load_visible(session, photo_id, principal, region)
    path = derivative_path(settings, photo.id)
    if photo.status != PhotoStatus.INDEXED or not path.exists():
        raise NotFound(f"the thumbnail of photo {photo_id} is not ready (status {photo.status})")
    return path


@dataclass(frozen=True)
class Upload:
    """An upload's bytes (spooled to a file that is ours to consume) and what the client said about them."""

    spooled: Path
    sha256: str
    size: int
    filename: str | None = None
    title: str | None = None
    photographer: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()  # as sent: each value may hold several, comma-separated
    depicts_minor: bool | None = None
    parental_consent: bool | None = None


@dataclass(frozen=True)
class UploadResult:
    photo: Photo
    created: bool
    updated: list[str] = field(default_factory=list)  # a duplicate's fields that the upload changed


def upload_photo(settings: Settings, upload: Upload, principal: Principal) -> UploadResult:
    """Register an upload and queue it; the same bytes again return the existing photo.

    Raises core.images.ImageRejected (nothing stored), services.queue.QueueUnavailable (nothing stored), and
    `Conflict` for bytes that another key uploaded (its id and metadata are not this caller's to see). A duplicate
    sent again by its uploader (or a moderator) with a declaration records the declaration (audited, not dropped);
    with a new title or photographer it updates them, a title screened as an edit's (`updated` names them).
    """
    result = intake.register_photo(
        settings,
        upload.spooled,
        sha256=upload.sha256,
        size=upload.size,
        original_name=intake.display_name(upload.filename),
        title=upload.title,
        photographer=upload.photographer,
        description=clean_text(upload.description, MAX_DESCRIPTION),
        tags=parse_tags(upload.tags),
        depicts_minor=upload.depicts_minor,
        parental_consent=upload.parental_consent,
        actor=principal.actor,
        uploaded_by_key=principal.key_id or None,
    )
    photo = result.photo
    if result.created:
        return UploadResult(photo, True)
    if not may_manage(principal, photo):
        raise Conflict("this image is already in the catalogue, uploaded with another key")
    edits: dict[str, object] = {
        name: value
        for name, value in (("title", upload.title), ("photographer", upload.photographer))
        if value is not None and value != getattr(photo, name)
    }
    declares = upload.depicts_minor is not None or upload.parental_consent is not None
    if not edits and not declares:
        return UploadResult(photo, False)
    with session_scope() as session:
        locked = photo_sql.get_photo(session, photo.id, for_update=True)
        if locked is None:
            raise NotFound(f"photo {photo.id} was deleted meanwhile")
        if declares:
            record_declaration(
                session,
                locked,
                depicts_minor=upload.depicts_minor,
                parental_consent=upload.parental_consent,
                actor=principal.actor,
            )
        # The same bytes sent again with a new title or photographer: an edit, screened as PATCH screens it.
        _apply_edits(session, locked, edits)
        locked.updated_at = func.now()
        session.flush()
        session.refresh(locked)
    return UploadResult(locked, False, updated=sorted(edits))


EDITABLE_FIELDS = ("title", "photographer", "description", "tags", "visibility")


def update_photo(session: Session, photo_id: uuid.UUID, principal: Principal, changes: dict[str, object]) -> Photo:
    """Edit a photo this caller may manage; new words (title, description, tags) are screened by the query policy
    as at upload. Tags replace the old ones (normalised as at upload: lower case, split at commas)."""
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidRequest(f"cannot change {', '.join(sorted(unknown))}")
    values = dict(changes)
    if "description" in values:
        values["description"] = clean_text(values["description"], MAX_DESCRIPTION)
    if "tags" in values:
        given = values["tags"]
        if given is None:
            values["tags"] = []
        elif isinstance(given, list | tuple) and all(isinstance(tag, str) for tag in given):
            values["tags"] = parse_tags(given)
        else:
            raise InvalidRequest("`tags` must be a list of strings")
    photo = load_managed(session, photo_id, principal, "change")
    _apply_edits(session, photo, values)
    photo.updated_at = func.now()
    session.flush()
    session.refresh(photo)
    return photo


def _apply_edits(session: Session, photo: Photo, changes: Mapping[str, object]) -> None:
    """Set the fields; new words (title, description, tags) are screened by the query policy (a child in the words
    marks the photo)."""
    for name, value in changes.items():
        setattr(photo, name, value)
    screened = [name for name in ("title", "description", "tags") if name in changes]
    if screened:
        intake.screen_words(session, photo, screened)


def delete_photo(settings: Settings, photo_id: uuid.UUID, principal: Principal) -> None:
    """Delete the photo: gone from search when the transaction commits; its files are removed after the commit."""
    with session_scope() as session:
        storage_key = load_managed(session, photo_id, principal, "delete").storage_key  # locked until the commit
        photo_sql.delete_photo(session, photo_id)
        audit(session, photo_id, principal.actor, "deleted", {}, "photo deleted")
    for error in remove_quietly(original_path(settings, storage_key), derivative_path(settings, photo_id)):
        log.error("photo %s deleted but a file could not be removed: %s", photo_id, error)


def redrive(settings: Settings, photo_ids: list[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Failed photos (these, or all when None) back to indexing with a fresh attempt budget; returns them.

    They are committed as pending before they are queued: when the queue is down (QueueUnavailable is raised
    after the commit) they stay pending and the reconciler queues them later.
    """
    with session_scope() as session:
        reset = photo_sql.reset_for_redrive(session, photo_ids)
    enqueue_in_batches(reset, settings.ingest_batch_size)
    return reset


def redrive_pending(settings: Settings, photo_ids: list[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Queue again the photos still pending (these, or all when None), e.g. once the model loads again.

    A photo waits as pending, with the reason in `error`, when its task could not run (no model, another model
    active, the database blinked); the reconciler would queue it after WITHSENSE_RECONCILE_AFTER_S. Attempts are
    kept: a photo that keeps crashing the worker still fails after WITHSENSE_TASK_MAX_ATTEMPTS. A photo already
    queued gets a second task, which finds it indexed and changes nothing.
    """
    with session_scope() as session:
        pending = photo_sql.pending_photo_ids(session, photo_ids)
    enqueue_in_batches(pending, settings.ingest_batch_size)
    return pending


@dataclass(frozen=True)
class StatusReport:
    """Photos by indexing status, and the reasons stored on those not indexed (most frequent first)."""

    counts: dict[str, int]
    reasons: list[photo_sql.ReasonCount]
    other_reasons: int  # photos whose reasons the list left out

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def status_report(photo_ids: list[uuid.UUID] | None = None, max_reasons: int = 10) -> StatusReport:
    """Counts by status and by reason: of all photos, or of these (`withsense ingest --wait` follows its own)."""
    with session_scope() as session:
        counts = photo_sql.status_counts(session, photo_ids)
        reasons, others = photo_sql.counts_by_reason(session, photo_ids, max_reasons)
    return StatusReport(counts, reasons, others)


def display_names(photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """Each photo's title, else its original file name (for listings such as `withsense search`)."""
    if not photo_ids:
        return {}
    with session_scope() as session:
        return photo_sql.display_names(session, photo_ids)


def redrive_one(settings: Settings, photo_id: uuid.UUID) -> None:
    """One failed photo back to indexing; `NotFound` or `Conflict` (it has not failed)."""
    with session_scope() as session:
        photo = photo_sql.get_photo(session, photo_id)
        if photo is None:
            raise _not_found(photo_id)
        current = photo.status
    if not redrive(settings, [photo_id]):
        raise Conflict(f"photo {photo_id} is {current}, not failed")


@dataclass(frozen=True)
class PhotoPage:
    photos: list[Photo]
    next_cursor: str | None


def list_photos(
    session: Session,
    principal: Principal,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
    all_uploaders: bool = False,
) -> PhotoPage:
    """The photos this key uploaded (every uploader's for moderators who ask), newest first, a page at a time.

    `cursor` is the previous page's `next_cursor` (services/pages.py); `InvalidRequest` for anything else.
    """
    if all_uploaders and not principal.allows("moderate"):
        raise Forbidden("`all_uploaders` needs the `moderate` or `admin` scope")
    photos = photo_sql.list_photos(
        session,
        uploaded_by_key=None if all_uploaders else principal.key_id,
        status=status,
        after=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = photos[:limit]
    return PhotoPage(page, encode_cursor(page[-1].created_at, page[-1].id) if len(photos) > limit else None)


def status_counts(photo_ids: list[uuid.UUID] | None = None) -> dict[str, int]:
    """Photos by indexing status: all of them, or these (`withsense ingest --wait` follows its own)."""
    with session_scope() as session:
        return photo_sql.status_counts(session, photo_ids)
