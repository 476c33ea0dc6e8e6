"""Text, composed, image, similar-photo and vector search over HTTP: the rules are in services/search.py."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.auth import SearchPrincipal
from api.deps import ReadSessionDep, SettingsDep
from api.metrics import SEARCH_LATENCY, SEARCHES
from api.presenters import search_out
from api.regions import RegionField, RegionHeader, ViewerRegion, region_error, resolve_region
from api.routes.photos import IMAGE_MEDIA_TYPES
from api.schemas import ErrorOut, SearchOut
from api.uploads import parse_image_upload
from api.validation import FreeText, JsonInteger, NonBlankLine
from services import search as search_service
from services.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["search"])

KParam = Annotated[int, Query(ge=1, le=100, description="results per page, 1 to 100")]

# ISO 8601: a date, or a date and time with an optional zone (UTC when it has none); only real calendar days from
# 1800 to 9999 (leap years included), ASCII digits only, so that what the schema allows the service accepts.
_YEAR = r"(?:1[89][0-9][0-9]|[2-9][0-9]{3})"
_LEAP_YEAR = r"(?:(?:1[89]|[2-9][0-9])(?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[3579][26])00)"
_DAY = (
    rf"(?:{_YEAR}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    rf"|{_LEAP_YEAR}-02-29)"
)
_TIME = (
    r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
    r"(?:[zZ]|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])?)?"
)
ISO_MOMENT = f"^{_DAY}{_TIME}$"
FilterText = Annotated[NonBlankLine, Field(min_length=1, max_length=200)]
QueryText = Annotated[FreeText, Field(min_length=1, max_length=1000)]
Orientation = Literal["landscape", "portrait", "square"]
Mode = Literal["hybrid", "semantic", "keyword"]
Sort = Literal["relevance", "newest"]

MODE_HELP = (
    "hybrid (default): what the photo shows and its words (title, tags, description, photographer), fused by "
    "reciprocal rank fusion; semantic: what it shows; keyword: its words"
)
MIN_SCORE_HELP = (
    "drop results whose cosine similarity is below this (fewer than k results then). Without it, the model's "
    "default floor drops semantic matches below it and keeps keyword matches"
)
SORT_HELP = "relevance (default), or newest: capture time (else upload time) among the first 1,000 results"
CURSOR_HELP = "`next_cursor` of the previous page, with the same query, filters, mode, min_score and sort"
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "a parameter, filter or cursor that is not valid, with a message"},
    503: {"model": ErrorOut, "description": "the model is not loaded (with the reason) or not the active one"},
}
# Routes that take `like_photo`: 404 for a photo the caller may not see, 409 for one not indexed yet.
LIKE_PHOTO_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "`like_photo` is no photo this caller may see"},
    409: {"model": ErrorOut, "description": "`like_photo` is not indexed yet, or shows a child the law hides here"},
}


def search_options(
    mode: Annotated[Mode, Query(description=MODE_HELP)] = "hybrid",
    min_score: Annotated[float | None, Query(ge=-1, le=1, description=MIN_SCORE_HELP)] = None,
    sort: Annotated[Sort, Query(description=SORT_HELP)] = "relevance",
    cursor: Annotated[str | None, Query(min_length=1, max_length=200, description=CURSOR_HELP)] = None,
    photographer: Annotated[
        list[FilterText] | None, Query(max_length=50, description="the photographer's name (repeat: any of them)")
    ] = None,
    tag: Annotated[list[FilterText] | None, Query(max_length=50, description="a tag (repeat: all of them)")] = None,
    camera: Annotated[
        list[FilterText] | None, Query(max_length=50, description='make and model, e.g. "Canon EOS R5" (repeat: any)')
    ] = None,
    orientation: Annotated[list[Orientation] | None, Query(max_length=3, description="as shown (repeat: any)")] = None,
    taken_after: Annotated[
        str | None, Query(pattern=ISO_MOMENT, description="captured at or after (ISO date or time; UTC by default)")
    ] = None,
    taken_before: Annotated[str | None, Query(pattern=ISO_MOMENT, description="captured before")] = None,
    uploaded_after: Annotated[str | None, Query(pattern=ISO_MOMENT, description="uploaded at or after")] = None,
    uploaded_before: Annotated[str | None, Query(pattern=ISO_MOMENT, description="uploaded before")] = None,
    min_width: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="pixels, as shown")] = None,
    min_height: Annotated[int | None, Query(ge=0, le=2**31 - 1, description="pixels, as shown")] = None,
) -> search_service.SearchOptions:
    """Filters and options of every search route, validated by the service (422 with a message)."""
    return search_service.SearchOptions(
        filters=search_service.SearchFilters.parse(
            photographer=photographer,
            tag=tag,
            camera=camera,
            orientation=orientation,
            taken_after=taken_after,
            taken_before=taken_before,
            uploaded_after=uploaded_after,
            uploaded_before=uploaded_before,
            min_width=min_width,
            min_height=min_height,
        ),
        mode=mode,
        min_score=min_score,
        sort=sort,
        cursor=cursor,
    )


OptionsDep = Annotated[search_service.SearchOptions, Depends(search_options)]


def _counted(kind: str, outcome: search_service.SearchOutcome, started: float) -> search_service.SearchOutcome:
    SEARCHES.labels(kind=kind, outcome="blocked" if outcome.blocked else "ok").inc()
    if not outcome.blocked:
        SEARCH_LATENCY.labels(kind=kind).observe(time.perf_counter() - started)
    return outcome


@router.get("/search", response_model=SearchOut, responses={**LIKE_PHOTO_ERRORS, **ERRORS})
async def search_text(
    request: Request,
    session: ReadSessionDep,
    principal: SearchPrincipal,
    region: ViewerRegion,
    options: OptionsDep,
    q: Annotated[
        FreeText,
        Query(
            min_length=1,
            max_length=1000,
            description="what the photo should show, in words; the model reads the first 77 tokens (`truncated`)",
        ),
    ],
    k: KParam = 10,
    negative: Annotated[
        list[QueryText] | None,
        Query(max_length=10, description="words to steer away from (repeat); no result matches them as keywords"),
    ] = None,
    like_photo: Annotated[uuid.UUID | None, Query(description="an indexed photo the results should look like")] = None,
) -> SearchOut:
    """Photos that best match a text description (by what they show and by their words), best first.

    Filters narrow the photos searched (inside the nearest-neighbour query); `next_cursor` pages on. A query that
    the content policy blocks in the viewer's region gets `blocked: true` with the disclaimer.
    """
    started = time.perf_counter()
    query = search_service.ComposedQuery(text=q, negative=tuple(negative or ()), like_photo=like_photo)
    outcome = await run_in_threadpool(search_service.search_composed, session, query, k, region, options, principal)
    return search_out(_counted("text", outcome, started), k, request)


class WeightsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: float = Field(1.0, ge=0, le=10, description="weight of `q`")
    like_photo: float = Field(1.0, ge=0, le=10, description="weight of `like_photo`")
    image: float = Field(1.0, ge=0, le=10, description="weight of the uploaded image (POST /v1/search/image)")
    negative: float = Field(0.5, ge=0, le=10, description="weight of each negative text (subtracted)")


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class SearchFiltersIn(BaseModel):
    """The filters, as in the query string of GET /v1/search (a single value or a list where it repeats)."""

    model_config = ConfigDict(extra="forbid")

    photographer: list[FilterText] | None = Field(None, max_length=50, description="any of these photographers")
    tag: list[FilterText] | None = Field(None, max_length=50, description="all of these tags")
    camera: list[FilterText] | None = Field(None, max_length=50, description="any of these cameras")
    orientation: list[Orientation] | None = Field(None, max_length=3, description="any of these orientations")
    taken_after: str | None = Field(None, pattern=ISO_MOMENT)
    taken_before: str | None = Field(None, pattern=ISO_MOMENT)
    uploaded_after: str | None = Field(None, pattern=ISO_MOMENT)
    uploaded_before: str | None = Field(None, pattern=ISO_MOMENT)
    min_width: JsonInteger | None = Field(None, ge=0, le=2**31 - 1)
    min_height: JsonInteger | None = Field(None, ge=0, le=2**31 - 1)
    mode: Mode = Field("hybrid", description=MODE_HELP)
    min_score: float | None = Field(None, ge=-1, le=1, description=MIN_SCORE_HELP)
    sort: Sort = Field("relevance", description=SORT_HELP)
    cursor: str | None = Field(None, min_length=1, max_length=200, description=CURSOR_HELP)

    _lists = field_validator("photographer", "tag", "camera", "orientation", mode="before")(_one_or_many)

    def options(self) -> search_service.SearchOptions:
        return search_service.SearchOptions.from_fields(dict(self))


class ComposedParts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: QueryText | None = Field(None, description="what the photo should show, in words")
    negative: list[QueryText] = Field(
        default_factory=list, max_length=10, description='texts to steer away from ("people" for a beach without)'
    )
    like_photo: uuid.UUID | None = Field(None, description="an indexed photo the results should look like")
    weights: WeightsIn | None = Field(None, description="how much each part counts (defaults: 1, 1, 1, 0.5)")

    _negatives = field_validator("negative", mode="before")(_one_or_many)

    def composed(self) -> search_service.ComposedQuery:
        return search_service.ComposedQuery(
            text=self.q,
            negative=tuple(self.negative),
            like_photo=self.like_photo,
            weights=search_service.QueryWeights(**self.weights.model_dump())
            if self.weights
            else search_service.QueryWeights(),
        )


class SearchIn(SearchFiltersIn, ComposedParts):
    """A composed query: `q`, `negative`, `like_photo` and `weights`, with every filter and option."""

    k: JsonInteger = Field(10, ge=1, le=100, description="results per page, 1 to 100")
    region: RegionField | None = Field(None, description="the viewer's region (else the X-Region header)")


@router.post("/search", response_model=SearchOut, responses={**LIKE_PHOTO_ERRORS, **ERRORS})
async def search_composed(
    body: SearchIn,
    request: Request,
    session: ReadSessionDep,
    principal: SearchPrincipal,
    x_region: RegionHeader = None,
) -> SearchOut:
    """A composed query: the weighted sum of the normalised embeddings of `q` and `like_photo`, minus `negative`.

    "like this photo, but at night": `like_photo` and `q`; "a beach, but no people": `q` and `negative`.
    Every text goes through the query policy; `like_photo` must be a photo the caller may see (404 otherwise).
    """
    started = time.perf_counter()
    region = _region(body.region, x_region)
    options = body.options()
    outcome = await run_in_threadpool(
        search_service.search_composed, session, body.composed(), body.k, region, options, principal
    )
    return search_out(_counted("composed", outcome, started), body.k, request)


IMAGE_SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "minLength": 1,
                            "description": "the image to look like: JPEG, PNG, WebP, GIF (first frame), TIFF or BMP, "
                            "decided from the bytes",
                        },
                        "query": {
                            "type": "string",
                            "maxLength": 1000,
                            "description": "optional JSON object: the body of POST /v1/search without `k` and "
                            "`region` (q, negative, like_photo, weights, filters, mode, min_score, sort, cursor); "
                            "the query string's filters and options are used when it is absent",
                        },
                    },
                },
                "encoding": {"file": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}},
            }
        },
    }
}


class ImageQueryIn(SearchFiltersIn, ComposedParts):
    """The `query` part of POST /v1/search/image."""


@router.post(
    "/search/image",
    response_model=SearchOut,
    responses={
        400: {"model": ErrorOut, "description": "malformed multipart, no `file` part, or bytes that do not decode"},
        413: {"model": ErrorOut, "description": "the body or the image's pixel count is over the cap"},
        415: {"model": ErrorOut, "description": "not multipart, or not an image in an accepted format"},
        **LIKE_PHOTO_ERRORS,
        **ERRORS,
    },
    openapi_extra=IMAGE_SEARCH_BODY,
)
async def search_image(
    request: Request,
    session: ReadSessionDep,
    settings: SettingsDep,
    principal: SearchPrincipal,
    region: ViewerRegion,
    options: OptionsDep,
    k: KParam = 10,
) -> SearchOut:
    """Photos that look like the uploaded image (not stored), with the filters and options of GET /v1/search, and
    optionally the parts of a composed query in a `query` part ("like this picture, but at night")."""
    started = time.perf_counter()
    upload = await parse_image_upload(
        request, spool_dir=settings.home / "tmp", max_bytes=settings.max_upload_bytes, text_fields=("query",)
    )
    try:
        composed = search_service.ComposedQuery()
        raw = upload.fields.get("query")
        if raw is not None:
            parsed = _image_query(raw)
            composed, options = parsed.composed(), parsed.options()
        vector = await run_in_threadpool(search_service.embed_image_file, settings, upload.file.path)
        digest = upload.file.sha256
    finally:
        upload.file.discard()
    outcome = await run_in_threadpool(
        search_service.search_image, session, vector, k, region, options, composed, principal, digest
    )
    return search_out(_counted("image", outcome, started), k, request)


def _image_query(raw: str) -> ImageQueryIn:
    try:
        return ImageQueryIn.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"`query` must be a JSON object: {exc.msg}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"`query`: {problems}") from None


@router.get(
    "/photos/{photo_id}/similar",
    response_model=SearchOut,
    responses={
        **ERRORS,
        404: {"model": ErrorOut, "description": "no such photo, or not one this caller may see"},
        409: {"model": ErrorOut, "description": "the photo is not indexed yet, or shows a child the law hides here"},
    },
)
def search_similar(
    photo_id: uuid.UUID,
    request: Request,
    session: ReadSessionDep,
    principal: SearchPrincipal,
    region: ViewerRegion,
    options: OptionsDep,
    k: KParam = 10,
) -> SearchOut:
    """Photos that look like an indexed photo (the photo itself excluded), with the filters of GET /v1/search.

    Found by what they show: `mode` is semantic (keyword is 422).
    """
    started = time.perf_counter()
    if options.mode == "hybrid":  # the default: nothing to fuse without words
        options = search_service.SearchOptions(
            filters=options.filters,
            mode="semantic",
            min_score=options.min_score,
            sort=options.sort,
            cursor=options.cursor,
        )
    outcome = search_service.search_similar(session, photo_id, principal, k, region, options)
    return search_out(_counted("similar", outcome, started), k, request)


class VectorSearchIn(SearchFiltersIn):
    model_config = ConfigDict(extra="forbid", strict=True)

    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        min_length=1,
        max_length=4096,
        description="a query vector from /v1/embeddings/text: finite numbers, not all zero",
        json_schema_extra={"contains": {"not": {"const": 0}}},
    )
    text: QueryText | None = Field(None, description="the query's words, for keyword and hybrid modes (screened)")
    k: JsonInteger = Field(10, ge=1, le=100, description="how many results, 1 to 100")
    region: RegionField | None = Field(None, description="the viewer's region, as the `region` parameter of /v1/search")


@router.post(
    "/search/vector",
    response_model=SearchOut,
    responses={
        **ERRORS,
        422: {
            "model": ErrorOut,
            "description": "a vector of another dimension than the active model's, or a bad filter",
        },
    },
)
def search_vector(
    body: VectorSearchIn,
    request: Request,
    session: ReadSessionDep,
    _principal: SearchPrincipal,
    x_region: RegionHeader = None,
) -> SearchOut:
    """Nearest photos to a query vector of the active model (for services that embed their own queries), with the
    filters and options of POST /v1/search, and keyword matching when `text` is given."""
    started = time.perf_counter()
    region = _region(body.region, x_region)
    vector = np.asarray(body.embedding, dtype=np.float64)
    outcome = search_service.search_vector(session, vector, body.k, region, body.options(), body.text)
    return search_out(_counted("vector", outcome, started), body.k, request)


def _region(body_region: str | None, header_region: str | None) -> str | None:
    try:
        return resolve_region(body_region, header_region)
    except ValueError as exc:
        raise region_error(exc) from None
