"""Intake, shared by the upload API and `withsense ingest`: identify the bytes, store the original under a
generated name, insert the row as pending (declarations recorded, its words screened), commit, and only then
enqueue `photos.ingest`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from core.images import ImageInfo, inspect_image
from core.policy import PolicyDecision, check_query
from core.settings import Settings
from core.storage import move_into_place, new_storage_key, original_path, remove_quietly
from db import photos as photo_sql
from db.engine import session_scope
from db.models import Photo
from services.moderation import record_declaration, record_text_flag
from services.queue import enqueue_ingest

log = logging.getLogger(__name__)

TEXT_SCREEN_ACTOR = "text-screen"


@dataclass(frozen=True)
class IntakeResult:
    photo: Photo
    created: bool


# The words of a photo that the query policy screens, and how each is named in the audit trail.
SCREENED_WORDS = {
    "title": "title",
    "original_name": "original file name",
    "description": "description",
    "tags": "tags",
}


def screened_field(
    photo: Photo,
    check: Callable[[str], PolicyDecision] = check_query,
    fields: Iterable[str] = tuple(SCREENED_WORDS),
) -> tuple[str, str, PolicyDecision] | None:
    """The first of the photo's own words (title, file name, description, tags) that describe a child:
    (field as named in the audit trail, words, decision)."""
    for name in fields:
        value = getattr(photo, name)
        words = ", ".join(value) if isinstance(value, list | tuple) else value
        if words:
            decision = check(words)
            if decision.blocked:
                return SCREENED_WORDS[name], words, decision
    return None


def screen_words(
    session: Session,
    photo: Photo,
    fields: Iterable[str] = tuple(SCREENED_WORDS),
    *,
    actor: str = TEXT_SCREEN_ACTOR,
    check: Callable[[str], PolicyDecision] = check_query,
) -> tuple[str, str, PolicyDecision] | None:
    """The query policy applied to the photo's words: a title, description or tag "my kids at the beach" marks it
    as showing a minor (audited, once: the first field that describes a child).

    Returns what marked it, or None. `withsense policy rescreen` calls it too, as its own actor.
    """
    found = screened_field(photo, check, fields)
    if found is not None:
        field, _, decision = found
        record_text_flag(session, photo, field, decision.matched_terms, decision.rules_version, actor=actor)
    return found


def find_duplicate(sha256: str) -> Photo | None:
    with session_scope() as session:
        return photo_sql.find_by_sha256(session, sha256)


def register_photo(
    settings: Settings,
    spooled: Path,
    *,
    sha256: str,
    size: int,
    original_name: str | None = None,
    title: str | None = None,
    photographer: str | None = None,
    description: str | None = None,
    tags: Iterable[str] = (),
    info: ImageInfo | None = None,
    depicts_minor: bool | None = None,
    parental_consent: bool | None = None,
    actor: str = "uploader",
    uploaded_by_key: int | None = None,
    enqueue: bool = True,
) -> IntakeResult:
    """Move `spooled` (a temporary file that is ours to consume) into storage and queue it.

    Raises core.images.ImageRejected subclasses for bytes we do not accept (nothing is stored),
    and services.queue.QueueUnavailable when the queue is down (the row and file are removed again).
    With `enqueue=False` the caller queues the photo itself (in batches); until it does, the photo is
    pending and the reconciler would queue it.
    """
    existing = find_duplicate(sha256)
    if existing is not None:
        return IntakeResult(existing, False)
    if info is None:
        info = inspect_image(spooled, allowed_formats=settings.allowed_formats, max_pixels=settings.max_image_pixels)

    storage_key = new_storage_key(info.format)
    destination = original_path(settings, storage_key)
    move_into_place(spooled, destination)
    try:
        with session_scope() as session:
            photo, created = photo_sql.insert_photo(
                session,
                photo_sql.NewPhoto(
                    sha256=sha256,
                    storage_key=storage_key,
                    format=info.format,
                    width=info.width,
                    height=info.height,
                    bytes=size,
                    original_name=original_name,
                    title=title,
                    photographer=photographer,
                    uploaded_by_key=uploaded_by_key,
                    description=description,
                    tags=tuple(tags),
                ),
            )
            if created:
                record_declaration(
                    session, photo, depicts_minor=depicts_minor, parental_consent=parental_consent, actor=actor
                )
                screen_words(session, photo)
    except BaseException:
        remove_quietly(destination)
        raise
    if not created:  # lost a race with a concurrent upload of the same bytes
        remove_quietly(destination)
        return IntakeResult(photo, False)
    if not enqueue:
        return IntakeResult(photo, True)
    try:
        enqueue_ingest(photo.id)
    except BaseException:
        # Nothing half-done: without a queued task the upload is undone and the client retries later.
        with session_scope() as session:
            photo_sql.delete_photo(session, photo.id)
        remove_quietly(destination)
        raise
    return IntakeResult(photo, True)


def display_name(filename: str | None) -> str | None:
    """The client's file name, for display only: control characters and any path stripped, at most 255 characters."""
    if not filename:
        return None
    name = "".join(ch for ch in filename if ch.isprintable()).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:255] or None
