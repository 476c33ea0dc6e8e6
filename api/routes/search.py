"""Text, image, similar-photo and vector search over HTTP: the rules are in services/search.py."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.auth import SearchPrincipal
from api.deps import SessionDep, SettingsDep
from api.metrics import SEARCH_LATENCY, SEARCHES
from api.presenters import search_out
from api.regions import RegionField, RegionHeader, ViewerRegion, region_error, resolve_region
from api.routes.photos import IMAGE_QUERY_BODY
from api.schemas import ErrorOut, SearchOut
from api.uploads import parse_image_upload
from api.validation import FreeText, JsonInteger
from services import search as search_service

router = APIRouter(prefix="/v1", tags=["search"])

KParam = Annotated[int, Query(ge=1, le=100, description="how many results, 1 to 100")]


def _counted(kind: str, outcome: search_service.SearchOutcome, started: float) -> search_service.SearchOutcome:
    SEARCHES.labels(kind=kind, outcome="blocked" if outcome.blocked else "ok").inc()
    if not outcome.blocked:
        SEARCH_LATENCY.labels(kind=kind).observe(time.perf_counter() - started)
    return outcome


@router.get(
    "/search",
    response_model=SearchOut,
    responses={
        503: {"model": ErrorOut, "description": "the model is not loaded (with the reason) or not the active one"}
    },
)
async def search_text(
    request: Request,
    session: SessionDep,
    _principal: SearchPrincipal,
    region: ViewerRegion,
    q: Annotated[
        FreeText,
        Query(
            min_length=1,
            max_length=1000,
            description="what the photo should show, in words; the model reads the first 77 tokens (`truncated`)",
        ),
    ],
    k: KParam = 10,
) -> SearchOut:
    """Photos that best match a text description, best first, scored by cosine similarity.

    A query that the content policy blocks in the viewer's region gets `blocked: true` with the disclaimer.
    """
    started = time.perf_counter()
    outcome = await run_in_threadpool(search_service.search_text, session, q, k, region)
    return search_out(_counted("text", outcome, started), k, request)


@router.post(
    "/search/image",
    response_model=SearchOut,
    responses={
        400: {"model": ErrorOut, "description": "malformed multipart, no `file` part, or bytes that do not decode"},
        413: {"model": ErrorOut, "description": "the body or the image's pixel count is over the cap"},
        415: {"model": ErrorOut, "description": "not multipart, or not an image in an accepted format"},
        503: {"model": ErrorOut, "description": "the model is not loaded (with the reason) or not the active one"},
    },
    openapi_extra=IMAGE_QUERY_BODY,
)
async def search_image(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _principal: SearchPrincipal,
    region: ViewerRegion,
    k: KParam = 10,
) -> SearchOut:
    """Photos that look like the uploaded image. The image is not stored."""
    started = time.perf_counter()
    upload = await parse_image_upload(request, spool_dir=settings.home / "tmp", max_bytes=settings.max_upload_bytes)
    try:
        vector = await run_in_threadpool(search_service.embed_image_file, settings, upload.file.path)
    finally:
        upload.file.discard()
    outcome = await run_in_threadpool(search_service.search_image, session, vector, k, region)
    return search_out(_counted("image", outcome, started), k, request)


@router.get(
    "/photos/{photo_id}/similar",
    response_model=SearchOut,
    responses={
        404: {"model": ErrorOut, "description": "no such photo, or not one this caller may see"},
        409: {"model": ErrorOut, "description": "the caller's own photo is not indexed yet"},
    },
)
def search_similar(
    photo_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: SearchPrincipal,
    region: ViewerRegion,
    k: KParam = 10,
) -> SearchOut:
    """Photos that look like an indexed photo (the photo itself excluded)."""
    started = time.perf_counter()
    outcome = search_service.search_similar(session, photo_id, principal, k, region)
    return search_out(_counted("similar", outcome, started), k, request)


class VectorSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1,
        max_length=4096,
        description="a query vector from /v1/embeddings/text: finite numbers, not all zero",
        json_schema_extra={"contains": {"not": {"const": 0}}},
    )
    k: JsonInteger = Field(10, ge=1, le=100, description="how many results, 1 to 100")
    region: RegionField | None = Field(None, description="the viewer's region, as the `region` parameter of /v1/search")


@router.post(
    "/search/vector",
    response_model=SearchOut,
    responses={422: {"model": ErrorOut, "description": "a vector of another dimension than the active model's"}},
)
def search_vector(
    body: VectorSearchIn,
    request: Request,
    session: SessionDep,
    _principal: SearchPrincipal,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Nearest photos to a query vector of the active model (for services that embed their own queries)."""
    started = time.perf_counter()
    try:
        region = resolve_region(body.region, x_region)
    except ValueError as exc:
        raise region_error(exc) from None
    outcome = search_service.search_vector(session, np.asarray(body.embedding, dtype=np.float64), body.k, region)
    return search_out(_counted("vector", outcome, started), body.k, request)
