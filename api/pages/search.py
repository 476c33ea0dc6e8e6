"""The search pages: `/` and `/search?q=...` (text, composed, "more like this"), and search by image.

Results are rendered by the server from services/search.py, the very calls of GET /v1/search and its siblings
(search_composed, search_similar, search_image with the same SearchFilters.parse and SearchOptions): a link to a
search can be shared, and the page works without scripts. Every filter and option of the search API is one field
of `SearchParams`, one query parameter of a shareable link and one control of templates/search.html; next pages
follow the search's `next_cursor`.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import SessionDep, SettingsDep
from api.metrics import SEARCH_LATENCY, SEARCHES
from api.regions import resolve_region
from api.routes.search import ISO_MOMENT
from api.uploads import parse_image_upload
from api.validation import FreeText, NonBlankLine
from db.search import FoundPhoto
from services import regions as region_service
from services import search as search_service
from services.errors import Conflict, InvalidRequest, NotFound

from .auth import SearchViewer
from .render import PageRoute, render, translator
from .session import CSRF_FIELD, check_csrf

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 24
MAX_K = 100
FilterText = Annotated[NonBlankLine, Field(min_length=1, max_length=200)]
QueryText = Annotated[FreeText, Field(min_length=1, max_length=1000)]
Moment = Annotated[str, Field(pattern=ISO_MOMENT)]
# Fields that repeat in a link (`tag=a&tag=b`); the tag box also takes comma-separated tags.
LIST_FIELDS = ("photographer", "tag", "camera", "orientation", "negative")
FILTER_FIELDS = (
    "photographer",
    "tag",
    "camera",
    "orientation",
    "taken_after",
    "taken_before",
    "uploaded_after",
    "uploaded_before",
    "min_width",
    "min_height",
)
# Everything of a search but its page: what a new search from the image form carries along.
CARRIED_FIELDS = (*FILTER_FIELDS, "mode", "min_score", "sort", "k", "region")


class SearchParams(BaseModel):
    """The search form: every field is one control, and one query parameter of a shareable link."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    q: QueryText | None = None
    negative: list[QueryText] = Field(default_factory=list, max_length=10)
    like: uuid.UUID | None = None
    k: int = Field(default=PAGE_SIZE, ge=1, le=MAX_K)
    region: str | None = Field(default=None, max_length=16)
    photographer: list[FilterText] = Field(default_factory=list, max_length=50)
    tag: list[FilterText] = Field(default_factory=list, max_length=50)
    camera: list[FilterText] = Field(default_factory=list, max_length=50)
    orientation: list[Literal["landscape", "portrait", "square"]] = Field(default_factory=list, max_length=3)
    taken_after: Moment | None = None
    taken_before: Moment | None = None
    uploaded_after: Moment | None = None
    uploaded_before: Moment | None = None
    min_width: int | None = Field(default=None, ge=0, le=2**31 - 1)
    min_height: int | None = Field(default=None, ge=0, le=2**31 - 1)
    mode: Literal["hybrid", "semantic", "keyword"] = "hybrid"
    min_score: float | None = Field(default=None, ge=-1, le=1)
    sort: Literal["relevance", "newest"] = "relevance"
    cursor: Annotated[NonBlankLine, Field(max_length=200)] | None = None

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> SearchParams:
        """The form as a browser sends it: blank controls are absent, list fields repeat (tags also by commas)."""
        values: dict[str, Any] = {name: [] for name in LIST_FIELDS}
        for name, raw in pairs:
            value = raw.strip()
            if not value:
                continue
            if name == "tag":
                values[name].extend(part.strip() for part in value.split(",") if part.strip())
            elif name in LIST_FIELDS:
                values[name].append(value)
            else:
                values[name] = value
        return cls.model_validate(values)

    def options(self) -> search_service.SearchOptions:
        """The service's options, exactly as GET /v1/search builds them (InvalidRequest naming a bad filter)."""
        return search_service.SearchOptions.from_fields(dict(self))

    @property
    def filtered(self) -> bool:
        """Whether any filter or non-default option is set (the options panel opens)."""
        defaults = SearchParams()
        return any(getattr(self, name) != getattr(defaults, name) for name in (*CARRIED_FIELDS, "negative"))

    def pairs(self, fields: Iterable[str] | None = None, /, **changes: object) -> list[tuple[str, str]]:
        """This search's non-default fields as query pairs (lists repeated), some changed."""
        values = self.model_dump() | changes
        defaults = SearchParams().model_dump()
        found: list[tuple[str, str]] = []
        for name in fields if fields is not None else values:
            value = values[name]
            if value in (None, "", []) or value == defaults[name]:
                continue
            for item in value if isinstance(value, list) else [value]:
                found.append((name, str(item)))
        return found

    def link(self, path: str = "/search", **changes: object) -> str:
        """This search as a URL, with some fields changed (another page, more like a photo): defaults left out."""
        query = self.pairs(None, **changes)
        return path + ("?" + urllib.parse.urlencode(query) if query else "")


def photo_links(hit_id: uuid.UUID, region: str | None) -> dict[str, str]:
    """The page and thumbnail of a photo for a viewer in `region` (the same visibility rules on both)."""
    suffix = "?" + urllib.parse.urlencode({"region": region}) if region else ""
    return {"page": f"/photos/{hit_id}{suffix}", "thumbnail": f"/photos/{hit_id}/thumbnail{suffix}"}


def result_cards(hits: list[FoundPhoto], params: SearchParams) -> list[dict[str, Any]]:
    """The grid's cards; "more like this" keeps the filters and starts a new first page."""
    return [
        {
            "id": str(hit.photo_id),
            "title": hit.title,
            "photographer": hit.photographer,
            "score": f"{hit.score:.3f}" if hit.score is not None else None,
            "width": hit.width,
            "height": hit.height,
            "like": params.link(like=hit.photo_id, q=None, negative=[], cursor=None),
            **photo_links(hit.photo_id, params.region),
        }
        for hit in hits
    ]


def _region_choices() -> list[str]:
    return [region for region, _restricted, _note in region_service.rules() if region != "*"]


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()]


def _count(kind: str, outcome: search_service.SearchOutcome, started: float) -> None:
    SEARCHES.labels(kind=kind, outcome="blocked" if outcome.blocked else "ok").inc()
    if not outcome.blocked:
        SEARCH_LATENCY.labels(kind=kind).observe(time.perf_counter() - started)


def _page(
    request: Request,
    params: SearchParams,
    *,
    outcome: search_service.SearchOutcome | None = None,
    errors: list[str] | None = None,
    heading: str | None = None,
    source: dict[str, str] | None = None,
    pageable: bool = True,
    status_code: int = 200,
) -> Response:
    hits = outcome.hits if outcome else []
    next_link = first_link = None
    if outcome and not outcome.blocked and pageable:
        if outcome.next_cursor:
            next_link = params.link(cursor=outcome.next_cursor)
        if params.cursor:
            first_link = params.link(cursor=None)
    return render(
        request,
        "search.html",
        {
            "active": "search",
            "params": params,
            "outcome": outcome,
            "results": result_cards(hits, params),
            "errors": errors or [],
            "heading": heading,
            "source": source,
            "next_link": next_link,
            "first_link": first_link,
            "carried": params.pairs(CARRIED_FIELDS),
            "region_choices": _region_choices(),
            "page_sizes": sorted({12, PAGE_SIZE, 48, MAX_K, params.k}),
        },
        status_code=status_code,
    )


@router.get("/")
@router.get("/search")
def search_page(
    request: Request,
    session: SessionDep,
    principal: SearchViewer,
    x_region: Annotated[str | None, Header(alias="X-Region", max_length=16)] = None,
) -> Response:
    """The search form and, for `q` or `like`, the results (the server renders them)."""
    try:
        params = SearchParams.from_pairs(request.query_params.multi_items())
    except ValidationError as exc:
        return _page(request, SearchParams(), errors=_errors(exc), status_code=422)
    params = params.model_copy(update={"region": resolve_region(params.region, x_region)})
    if params.q is None and params.like is None:
        return _page(request, params)
    started = time.perf_counter()
    try:
        options = params.options()
        params = params.model_copy(update={"tag": list(options.filters.tag)})  # as matched: lower case, once each
        if params.q is None and not params.negative and params.like is not None:
            # "More like this": GET /v1/photos/{id}/similar, found by what the photos show (hybrid means semantic).
            if options.mode == "hybrid":
                options = search_service.SearchOptions(
                    filters=options.filters,
                    mode="semantic",
                    min_score=options.min_score,
                    sort=options.sort,
                    cursor=options.cursor,
                )
            outcome = search_service.search_similar(session, params.like, principal, params.k, params.region, options)
            _count("similar", outcome, started)
            heading = translator(request)("search.like_results")
            return _page(
                request, params, outcome=outcome, heading=heading, source=photo_links(params.like, params.region)
            )
        query = search_service.ComposedQuery(text=params.q, negative=tuple(params.negative), like_photo=params.like)
        outcome = search_service.search_composed(session, query, params.k, params.region, options, principal)
        _count("text", outcome, started)
        source = photo_links(params.like, params.region) if params.like is not None else None
        return _page(request, params, outcome=outcome, source=source)
    except InvalidRequest as exc:
        return _page(request, params, errors=[str(exc)], status_code=422)
    except (NotFound, Conflict) as exc:
        # A photo the viewer may not see is "not found", exactly as on GET /v1/photos/{id}/similar.
        return _page(request, params, errors=[str(exc)], status_code=404 if isinstance(exc, NotFound) else 409)


@router.post("/search/image")
async def search_by_image(
    request: Request, session: SessionDep, settings: SettingsDep, principal: SearchViewer
) -> Response:
    """Photos that look like an uploaded image (not stored), as POST /v1/search/image, with the form's filters."""
    scalar_fields = tuple(name for name in CARRIED_FIELDS if name not in LIST_FIELDS)
    upload = await parse_image_upload(
        request,
        spool_dir=settings.home / "tmp",
        max_bytes=settings.max_upload_bytes,
        text_fields=(CSRF_FIELD, *scalar_fields),
        list_fields=tuple(name for name in CARRIED_FIELDS if name in LIST_FIELDS),
    )
    try:
        check_csrf(request, upload.fields.get(CSRF_FIELD))
        pairs = [(name, value) for name, value in upload.fields.items() if name != CSRF_FIELD]
        pairs += [(name, value) for name, values in upload.lists.items() for value in values]
        try:
            params = SearchParams.from_pairs(pairs)
            options = params.options()
        except ValidationError as exc:
            return _page(request, SearchParams(), errors=_errors(exc), status_code=422)
        except InvalidRequest as exc:
            return _page(request, SearchParams(), errors=[str(exc)], status_code=422)
        started = time.perf_counter()
        vector = await run_in_threadpool(search_service.embed_image_file, settings, upload.file.path)
        digest = upload.file.sha256
    finally:
        upload.file.discard()
    query = search_service.ComposedQuery()
    try:
        outcome = await run_in_threadpool(
            search_service.search_image, session, vector, params.k, params.region, options, query, principal, digest
        )
    except InvalidRequest as exc:
        return _page(request, params, errors=[str(exc)], status_code=422)
    _count("image", outcome, started)
    # Its next page would need the image again: the page shows up to `k` (100) results at once instead.
    heading = translator(request)("search.by_image_results")
    return _page(request, params, outcome=outcome, heading=heading, pageable=False)
