"""Request and response bodies of HTTP API v1."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class PhotoOut(BaseModel):
    id: uuid.UUID
    status: str = Field(description="pending, processing, indexed or failed")
    error: str | None = Field(None, description="why the photo failed (or why it is being retried)")
    sha256: str
    title: str | None = None
    photographer: str | None = None
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
    score: float = Field(description="cosine similarity between the query and the photo, higher is better")
    thumbnail_url: str
    title: str | None = None
    photographer: str | None = None
    width: int
    height: int


class SearchOut(BaseModel):
    query: str | None = None
    k: int
    region: str | None = None
    blocked: bool = False
    disclaimer: str | None = None
    results: list[SearchResult]


class ErrorOut(BaseModel):
    detail: str
