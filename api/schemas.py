"""Request and response bodies of HTTP API v1."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class PhotoOut(BaseModel):
    id: uuid.UUID
    status: str = Field(description="pending, processing, indexed or failed")
    error: str | None = Field(None, description="why the photo failed (or why it is being retried)")
    sha256: str
    title: str | None = None
    photographer: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    taken_at: datetime | None = Field(None, description="capture time from the file's EXIF/XMP/IPTC metadata")
    camera: str | None = None
    lens: str | None = None
    orientation: Literal["landscape", "portrait", "square"] | None = Field(None, description="as shown")
    original_name: str | None = None
    format: str
    width: int
    height: int
    bytes: int
    attempts: int
    visibility: str
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None = None
    moderation_status: str = Field(description="pending_review, approved or rejected")
    depicts_minor: bool
    parental_consent: bool
    unsafe: bool
    thumbnail_url: str | None = Field(None, description="present once the photo is indexed")


class UploadOut(PhotoOut):
    duplicate: bool = Field(False, description="true when the same bytes were uploaded before; `id` is that photo")


class PhotoPage(BaseModel):
    photos: list[PhotoOut] = Field(description="newest first")
    next_before: uuid.UUID | None = Field(None, description="pass as `before` for the next page; null on the last page")


class SearchResult(BaseModel):
    id: uuid.UUID
    rank: int = Field(description="position in the whole ranking, from 1 (pages continue it)")
    score: float | None = Field(
        description="cosine similarity between the query and the photo, higher is better (null without a query vector)"
    )
    matched: Literal["semantic", "keyword", "both"] = Field(
        description="semantic: by what the photo shows; keyword: by its words (title, tags, description, "
        "photographer); both"
    )
    thumbnail_url: str
    title: str | None = None
    description: str | None = None
    photographer: str | None = None
    tags: list[str] = Field(default_factory=list)
    taken_at: datetime | None = Field(None, description="capture time from the file's metadata")
    uploaded_at: datetime
    camera: str | None = None
    lens: str | None = None
    width: int
    height: int
    orientation: Literal["landscape", "portrait", "square"]


class SearchOut(BaseModel):
    query: str | None = None
    k: int
    region: str | None = None
    mode: Literal["hybrid", "semantic", "keyword"] = "hybrid"
    sort: Literal["relevance", "newest"] = "relevance"
    blocked: bool = False
    disclaimer: str | None = None
    results: list[SearchResult]
    next_cursor: str | None = Field(
        None, description="pass as `cursor` (with the same query and filters) for the next page; null on the last"
    )


class ErrorOut(BaseModel):
    detail: str
