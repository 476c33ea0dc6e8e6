"""Text, image and similar-photo search: one SQL nearest-neighbour query each, filters inside SQL."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import SearchPrincipal
from api.deps import SessionDep, SettingsDep, ensure_query_model
from api.metrics import SEARCH_LATENCY, SEARCHES
from api.presenters import thumbnail_url
from api.regions import RegionHeader, RegionParam, resolve_region
from api.routes.photos import UPLOAD_BODY
from api.schemas import ErrorOut, SearchOut, SearchResult
from api.uploads import parse_image_upload
from core.embedding import get_embedder
from core.images import ImageRejected, load_rgb, make_derivative
from core.moderation import get_moderator
from core.policy import DISCLAIMER, check_query
from core.settings import Settings
from db import photos as photo_sql
from db.moderation import photo_visibility
from db.search import DimensionMismatch, NoActiveModel, SearchHit, search_by_vector, similar_to_photo

router = APIRouter(prefix="/v1", tags=["search"])

KParam = Annotated[int, Query(ge=1, le=100, description="how many results, 1 to 100")]


def _results(hits: list[SearchHit], base_url: str) -> list[SearchResult]:
    return [
        SearchResult(
            id=h.photo_id,
            score=round(h.score, 6),
            thumbnail_url=thumbnail_url(base_url, h.photo_id),
            title=h.title,
            photographer=h.photographer,
            width=h.width,
            height=h.height,
        )
        for h in hits
    ]


def _blocked(query: str | None, k: int, region: str | None) -> SearchOut:
    return SearchOut(query=query, k=k, region=region, blocked=True, disclaimer=DISCLAIMER, results=[])


def _search(session: SessionDep, vector: np.ndarray, k: int, region: str | None) -> list[SearchHit]:
    """The query vector comes from this API's model: refused (503) when the index is searched with another."""
    ensure_query_model(session)
    try:
        return search_by_vector(session, vector, k, region)
    except NoActiveModel:
        return []  # nothing indexed yet: an empty result, not an error
    except DimensionMismatch as exc:  # a model change between the check and the query
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"search is unavailable: {exc}") from None


@router.get("/search", response_model=SearchOut, responses={422: {"model": ErrorOut}})
async def search_text(
    request: Request,
    session: SessionDep,
    _principal: SearchPrincipal,
    q: Annotated[str, Query(min_length=1, max_length=1000, description="what the photo should show, in words")],
    k: KParam = 10,
    region: RegionParam = None,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Photos that best match a text description, best first, scored by cosine similarity."""
    started = time.perf_counter()
    query = q.strip()
    if not query:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the query `q` is empty")
    viewer_region = resolve_region(region, x_region)
    if check_query(query).blocked and await run_in_threadpool(_region_restricted, session, viewer_region):
        SEARCHES.labels(kind="text", outcome="blocked").inc()
        return _blocked(query, k, viewer_region)
    vector = await run_in_threadpool(_embed_text, query)
    hits = await run_in_threadpool(_search, session, vector, k, viewer_region)
    SEARCHES.labels(kind="text", outcome="ok").inc()
    SEARCH_LATENCY.labels(kind="text").observe(time.perf_counter() - started)
    return SearchOut(query=query, k=k, region=viewer_region, results=_results(hits, str(request.base_url)))


def _embed_text(query: str) -> np.ndarray:
    return get_embedder().embed_texts([query])[0]


def _region_restricted(session: SessionDep, region: str | None) -> bool:
    from db.policy import region_is_restricted

    return region_is_restricted(session, region)


@router.post(
    "/search/image",
    response_model=SearchOut,
    responses={400: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}},
    openapi_extra=UPLOAD_BODY,
)
async def search_image(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _principal: SearchPrincipal,
    k: KParam = 10,
    region: RegionParam = None,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Photos that look like the uploaded image. The image is not stored."""
    started = time.perf_counter()
    upload = await parse_image_upload(request, spool_dir=settings.home / "tmp", max_bytes=settings.max_upload_bytes)
    try:
        vector = await run_in_threadpool(_embed_image_file, settings, upload.file.path)
    finally:
        upload.file.discard()
    viewer_region = resolve_region(region, x_region)
    # A query image that shows a child leads to such content: the same disclaimer as a text query.
    if get_moderator().score(vector).depicts_minor and await run_in_threadpool(
        _region_restricted, session, viewer_region
    ):
        SEARCHES.labels(kind="image", outcome="blocked").inc()
        return _blocked(None, k, viewer_region)
    hits = await run_in_threadpool(_search, session, vector, k, viewer_region)
    SEARCHES.labels(kind="image", outcome="ok").inc()
    SEARCH_LATENCY.labels(kind="image").observe(time.perf_counter() - started)
    return SearchOut(k=k, region=viewer_region, results=_results(hits, str(request.base_url)))


def _embed_image_file(settings: Settings, path) -> np.ndarray:
    try:
        image = load_rgb(
            path,
            allowed_formats=settings.allowed_formats,
            max_pixels=settings.max_image_pixels,
            draft_size=settings.derivative_size,
        )
    except ImageRejected as exc:
        code = (
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
            if exc.code == "unsupported_format"
            else (status.HTTP_413_CONTENT_TOO_LARGE if exc.code == "too_many_pixels" else status.HTTP_400_BAD_REQUEST)
        )
        raise HTTPException(code, exc.reason) from None
    return get_embedder().embed_images([make_derivative(image, settings.derivative_size)])[0]


@router.get("/photos/{photo_id}/similar", response_model=SearchOut, responses={404: {"model": ErrorOut}})
def search_similar(
    photo_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    _principal: SearchPrincipal,
    k: KParam = 10,
    region: RegionParam = None,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Photos that look like an indexed photo (the photo itself excluded)."""
    photo = photo_sql.get_photo(session, photo_id)
    viewer_region = resolve_region(region, x_region)
    visibility = photo_visibility(session, photo_id, viewer_region)
    if visibility == "restricted":
        SEARCHES.labels(kind="similar", outcome="blocked").inc()
        return _blocked(None, k, viewer_region)
    if photo is None or (visibility == "hidden" and photo.status == "indexed"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} does not exist")
    if photo.status != "indexed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"photo {photo_id} is not indexed yet (status {photo.status})")
    hits = similar_to_photo(session, photo_id, k, viewer_region)
    SEARCHES.labels(kind="similar", outcome="ok").inc()
    return SearchOut(k=k, region=viewer_region, results=_results(hits, str(request.base_url)))


class VectorSearchIn(BaseModel):
    embedding: list[float] = Field(min_length=1, max_length=4096, description="a query vector from /v1/embeddings/text")
    k: int = Field(10, ge=1, le=100)
    region: str | None = Field(None, max_length=16)


@router.post("/search/vector", response_model=SearchOut, responses={422: {"model": ErrorOut}})
def search_vector(
    body: VectorSearchIn,
    request: Request,
    session: SessionDep,
    _principal: SearchPrincipal,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Nearest photos to a query vector of the active model (for services that embed their own queries)."""
    vector = np.asarray(body.embedding, dtype=np.float32)
    if not np.all(np.isfinite(vector)) or float(np.linalg.norm(vector)) < 1e-6:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the embedding must be finite and non-zero")
    viewer_region = resolve_region(body.region, x_region)
    try:
        hits = search_by_vector(session, vector / np.linalg.norm(vector), body.k, viewer_region)
    except NoActiveModel:
        hits = []
    except DimensionMismatch as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    SEARCHES.labels(kind="vector", outcome="ok").inc()
    return SearchOut(k=body.k, region=viewer_region, results=_results(hits, str(request.base_url)))
