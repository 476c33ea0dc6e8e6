"""Turn rows into response bodies."""

from __future__ import annotations

import uuid

from fastapi import Request

from api.schemas import PhotoOut, SearchOut, SearchResult
from core.settings import get_settings
from db.models import Photo, PhotoStatus
from services.search import SearchOutcome


def base_url(request: Request) -> str:
    """Where clients reach this API: WITHSENSE_PUBLIC_BASE_URL behind a proxy, else the request's own address."""
    return get_settings().public_base_url or str(request.base_url)


def thumbnail_url(base: str, photo_id: uuid.UUID) -> str:
    return f"{base.rstrip('/')}/v1/photos/{photo_id}/thumbnail"


def search_out(outcome: SearchOutcome, k: int, request: Request) -> SearchOut:
    base = base_url(request)
    return SearchOut(
        query=outcome.query,
        truncated=outcome.truncated,
        k=k,
        region=outcome.region,
        mode=outcome.options.mode,
        sort=outcome.options.sort,
        blocked=outcome.blocked,
        disclaimer=outcome.disclaimer,
        next_cursor=outcome.next_cursor,
        results=[
            SearchResult(
                id=h.photo_id,
                rank=h.rank,
                score=round(h.score, 6) if h.score is not None else None,
                matched=h.matched,  # type: ignore[arg-type]
                thumbnail_url=thumbnail_url(base, h.photo_id),
                title=h.title,
                description=h.description,
                photographer=h.photographer,
                tags=h.tags,
                taken_at=h.taken_at,
                uploaded_at=h.uploaded_at,
                camera=h.camera,
                lens=h.lens,
                width=h.width,
                height=h.height,
                orientation=h.orientation,  # type: ignore[arg-type]
            )
            for h in outcome.hits
        ],
    )


def photo_out(photo: Photo, base_url: str) -> PhotoOut:
    return PhotoOut(
        id=photo.id,
        status=photo.status,
        error=photo.error,
        sha256=photo.sha256,
        title=photo.title,
        photographer=photo.photographer,
        description=photo.description,
        tags=list(photo.tags or []),
        taken_at=photo.taken_at,
        camera=photo.camera,
        lens=photo.lens,
        orientation=photo.orientation,  # type: ignore[arg-type] # one of the three
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
