"""The search pages: `/` and `/search?q=...` (text, "more like this"), and search by image.

Results are rendered by the server from services/search.py, the very calls of GET /v1/search and its siblings:
a link to a search can be shared, and the page works without scripts. Every option of the search form is one
field of `SearchParams` and one control of templates/search.html.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api.deps import SessionDep, SettingsDep
from api.metrics import SEARCH_LATENCY, SEARCHES
from api.regions import resolve_region
from api.uploads import parse_image_upload
from db.search import SearchHit
from services import regions as region_service
from services import search as search_service
from services.errors import Conflict, NotFound

from .auth import SearchViewer
from .render import PageRoute, render, translator
from .session import CSRF_FIELD, check_csrf

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 24
MAX_K = 100


class SearchParams(BaseModel):
    """The search form: every field is one control, and one query parameter of a shareable link."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    q: str = Field(default="", max_length=1000)
    like: uuid.UUID | None = None
    k: int = Field(default=PAGE_SIZE, ge=1, le=MAX_K)
    region: str | None = Field(default=None, max_length=16)

    @field_validator("like", "region", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def link(self, path: str = "/search", **changes: object) -> str:
        """This search as a URL, with some fields changed (more results, another page): defaults left out."""
        values = self.model_dump() | changes
        defaults = SearchParams().model_dump()
        query = {name: value for name, value in values.items() if value not in (None, "") and value != defaults[name]}
        return path + ("?" + urllib.parse.urlencode(query) if query else "")


def photo_links(hit_id: uuid.UUID, region: str | None) -> dict[str, str]:
    """The page and thumbnail of a photo for a viewer in `region` (the same visibility rules on both)."""
    suffix = "?" + urllib.parse.urlencode({"region": region}) if region else ""
    return {"page": f"/photos/{hit_id}{suffix}", "thumbnail": f"/photos/{hit_id}/thumbnail{suffix}"}


def result_cards(hits: list[SearchHit], params: SearchParams) -> list[dict[str, Any]]:
    return [
        {
            "id": str(hit.photo_id),
            "title": hit.title,
            "photographer": hit.photographer,
            "score": f"{hit.score:.3f}",
            "width": hit.width,
            "height": hit.height,
            "like": params.link(like=hit.photo_id, q="", k=PAGE_SIZE),
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
    status_code: int = 200,
) -> Response:
    hits = outcome.hits if outcome else []
    more = None
    if outcome and not outcome.blocked and len(hits) == params.k and params.k < MAX_K:
        more = params.link(k=min(MAX_K, params.k + PAGE_SIZE))
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
            "more": more,
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
    """The search box and, for `q` or `like`, the results (the server renders them)."""
    raw = dict(request.query_params)
    try:
        params = SearchParams.model_validate(raw)
    except ValidationError as exc:
        return _page(request, SearchParams(), errors=_errors(exc), status_code=422)
    params = params.model_copy(update={"region": resolve_region(params.region, x_region)})
    started = time.perf_counter()
    try:
        if params.like is not None:
            outcome = search_service.search_similar(session, params.like, principal, params.k, params.region)
            _count("similar", outcome, started)
            heading = translator(request)("search.like_results")
            return _page(
                request, params, outcome=outcome, heading=heading, source=photo_links(params.like, params.region)
            )
        if params.q:
            outcome = search_service.search_text(session, params.q, params.k, params.region)
            _count("text", outcome, started)
            return _page(request, params, outcome=outcome)
    except (NotFound, Conflict) as exc:
        # A photo the viewer may not see is "not found", exactly as on GET /v1/photos/{id}/similar.
        return _page(request, params, errors=[str(exc)], status_code=404 if isinstance(exc, NotFound) else 409)
    return _page(request, params)


@router.post("/search/image")
async def search_by_image(
    request: Request, session: SessionDep, settings: SettingsDep, _principal: SearchViewer
) -> Response:
    """Photos that look like an uploaded image (not stored), as POST /v1/search/image."""
    upload = await parse_image_upload(
        request,
        spool_dir=settings.home / "tmp",
        max_bytes=settings.max_upload_bytes,
        text_fields=(CSRF_FIELD, "k", "region"),
    )
    try:
        check_csrf(request, upload.fields.get(CSRF_FIELD))
        try:
            params = SearchParams.model_validate({"k": upload.fields.get("k", PAGE_SIZE), **_region(upload.fields)})
        except ValidationError as exc:
            return _page(request, SearchParams(), errors=_errors(exc), status_code=422)
        started = time.perf_counter()
        vector = await run_in_threadpool(search_service.embed_image_file, settings, upload.file.path)
    finally:
        upload.file.discard()
    outcome = await run_in_threadpool(search_service.search_image, session, vector, params.k, params.region)
    _count("image", outcome, started)
    return _page(request, params, outcome=outcome, heading=translator(request)("search.by_image_results"))


def _region(fields: dict[str, str]) -> dict[str, str]:
    return {"region": fields["region"]} if "region" in fields else {}
