"""A photo's metadata from its file: read when it is indexed, or later by `withsense metadata backfill`.

What the uploader said wins: the file only fills what is empty (title, description, photographer, capture time,
camera, lens), and its keywords are added to the uploader's tags. Every new text is screened by the query policy
as a title is at upload (a caption "my daughter at the beach" marks the photo as showing a minor), in the same
transaction that makes the photo searchable. GPS positions are kept only with WITHSENSE_STORE_GPS, rounded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from sqlalchemy import func
from sqlalchemy.orm import Session

from core.metadata import PhotoMetadata, merge_tags, read_metadata
from core.settings import Settings
from core.storage import original_path
from db import photos as photo_sql
from db.engine import session_scope
from db.models import Photo
from services import intake

log = logging.getLogger(__name__)

# The fields whose words the query policy screens when the file fills them.
SCREENED_FIELDS = ("title", "description", "tags")


def read_file_metadata(settings: Settings, storage_key: str) -> PhotoMetadata | None:
    """The original's metadata, or None when the file cannot be read at all (the photo's decode says why)."""
    try:
        return read_metadata(
            original_path(settings, storage_key),
            allowed_formats=settings.allowed_formats,
            max_pixels=settings.max_image_pixels,
            include_gps=settings.store_gps,
        )
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        log.warning("metadata of %s not read: %s", storage_key, exc)
        return None


def apply_file_metadata(
    session: Session, photo: Photo, metadata: PhotoMetadata | None, *, store_gps: bool
) -> list[str]:
    """Fill the photo's empty fields from its file, add its keywords, screen the new words; marks it read.

    Returns the names of the fields that changed. Runs in the caller's transaction.
    """
    changed: list[str] = []
    if metadata is not None:
        for name in ("title", "description", "photographer", "taken_at", "camera", "lens"):
            value = getattr(metadata, name)
            if value is not None and getattr(photo, name) in (None, ""):
                setattr(photo, name, value)
                changed.append(name)
        if metadata.tags:
            merged = merge_tags(photo.tags or [], metadata.tags)
            if merged != list(photo.tags or []):
                photo.tags = merged
                changed.append("tags")
        if store_gps and metadata.latitude is not None and photo.gps_latitude is None:
            photo.gps_latitude, photo.gps_longitude = metadata.latitude, metadata.longitude
            changed.append("gps")
        for problem in metadata.problems:
            log.info("photo %s: metadata partly unreadable: %s", photo.id, problem)
    photo.metadata_read_at = func.now()
    screened = [name for name in SCREENED_FIELDS if name in changed]
    if screened:
        intake.screen_words(session, photo, screened)
    return changed


def apply_to_photos(session: Session, found: dict[uuid.UUID, PhotoMetadata | None], *, store_gps: bool) -> None:
    """`apply_file_metadata` for several photos at once (locked in id order, as the classifier locks them)."""
    if not found:
        return
    for photo in photo_sql.lock_photos(session, sorted(found)):
        apply_file_metadata(session, photo, found[photo.id], store_gps=store_gps)
    session.flush()


@dataclass(frozen=True)
class BackfillResult:
    read: int
    filled: int  # photos that gained at least one field
    unreadable: int


def backfill(
    settings: Settings, *, batch_size: int = 200, progress: Callable[[int, int], None] | None = None
) -> BackfillResult:
    """Read the metadata of indexed photos that were indexed before the worker read it (or whose read failed).

    One transaction per batch; running it again continues where it stopped. `progress(done, total)` after each.
    """
    with session_scope() as session:
        total = photo_sql.count_metadata_unread(session)
    done = filled = unreadable = 0
    after: uuid.UUID | None = None
    while True:
        with session_scope() as session:
            batch = photo_sql.metadata_unread(session, after, batch_size)
            if not batch:
                break
            for photo in batch:
                metadata = read_file_metadata(settings, photo.storage_key)
                unreadable += metadata is None
                if apply_file_metadata(session, photo, metadata, store_gps=settings.store_gps):
                    filled += 1
            after = batch[-1].id
            done += len(batch)
        if progress is not None:
            progress(done, max(total, done))
    return BackfillResult(read=done, filled=filled, unreadable=unreadable)
