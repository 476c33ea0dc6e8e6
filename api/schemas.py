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
    updated: list[str] = Field(
        default_factory=list,
        description="a duplicate's fields this upload changed (`title`, `photographer`); a new title is screened",
    )


class PhotoPage(BaseModel):
    items: list[PhotoOut] = Field(description="newest first")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last page")


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
    truncated: bool = Field(
        False, description="true when the query was longer than the model reads (CLIP: 77 tokens) and was cut"
    )
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
    """Every error answer: a sentence for the caller."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: `query`, `body`, `path` or `header`, then the field")
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """A request that does not fit the schema, or a value a rule refuses (422)."""

    detail: str = Field(description="every problem in one sentence, e.g. `q: must not be blank`")
    errors: list[FieldError] = Field(
        default_factory=list, description="each problem apart (empty for a rule's refusal)"
    )


class InternalErrorOut(BaseModel):
    """An unexpected error: logged on the server with this id, which is also in the X-Request-ID header."""

    detail: str = Field(description="always `internal error`")
    request_id: str
