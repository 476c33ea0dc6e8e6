"""Turn rows into response bodies."""

from __future__ import annotations

import uuid

from api.schemas import PhotoOut
from db.models import Photo, PhotoStatus


def thumbnail_url(base_url: str, photo_id: uuid.UUID) -> str:
    return f"{base_url.rstrip('/')}/v1/photos/{photo_id}/thumbnail"


def photo_out(photo: Photo, base_url: str) -> PhotoOut:
    return PhotoOut(
        id=photo.id,
        status=photo.status,
        error=photo.error,
        sha256=photo.sha256,
        title=photo.title,
        photographer=photo.photographer,
        original_name=photo.original_name,
        format=photo.format,
        width=photo.width,
        height=photo.height,
        bytes=photo.bytes,
        attempts=photo.attempts,
        visibility=photo.visibility,
        created_at=photo.created_at,
        updated_at=photo.updated_at,
        indexed_at=photo.indexed_at,
        moderation_status=photo.moderation_status,
        depicts_minor=photo.depicts_minor,
        parental_consent=photo.parental_consent,
        unsafe=photo.unsafe,
        thumbnail_url=thumbnail_url(base_url, photo.id) if photo.status == PhotoStatus.INDEXED else None,
    )
