"""The photo page `/photos/{id}` (the derivative, metadata, similar photos; status, edit and delete for its
uploader or a moderator) and the cookie-authenticated thumbnail the pages show.

Who sees what is decided by services.photos.load_visible, as on GET /v1/photos/{id}: the same 404 for a photo
the viewer may not see, the same 451 with the disclaimer where the minors law hides it.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Header, Query, Request, Response
from pydantic import ValidationError

from api.deps import SessionDep, SettingsDep
from api.regions import resolve_region
from api.routes.photos import PhotoChange, thumbnail_response
from core.metadata import MAX_DESCRIPTION
from db.engine import session_scope
from db.models import PhotoStatus
from services import moderation as moderation_service
from services import photos as photo_service
from services import search as search_service
from services.errors import Conflict, InvalidRequest, NotFound

from .auth import Curator, PhotoViewer, ThumbnailViewer
from .render import PageRoute, redirect, render, safe_next
from .search import photo_links
from .session import CSRF_FIELD, check_csrf

router = APIRouter(route_class=PageRoute, include_in_schema=False)

SIMILAR_K = 12
MAX_TAGS_TEXT = 20_000  # the tag box: up to MAX_TAGS tags of a line each, comma-separated
RegionQuery = Annotated[str | None, Query(max_length=16)]
RegionHeader = Annotated[str | None, Header(alias="X-Region", max_length=16)]
CsrfForm = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]


def _clean(value: str, name: str) -> str | None:
    """A form's text field as the service stores it: blank is none; control characters are refused (422)."""
    text = value.strip()
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise InvalidRequest(f"{name} must not contain control characters")
    return text or None


@router.get("/photos/{photo_id}")
def photo_page(
    photo_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    principal: PhotoViewer,
    region: RegionQuery = None,
    x_region: RegionHeader = None,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    """One photo: the derivative and metadata to everyone who may see it, more to its uploader and moderators."""
    viewer_region = resolve_region(region, x_region)
    photo = photo_service.load_visible(session, photo_id, principal, viewer_region)
    manages = photo_service.may_manage(principal, photo)
    similar = None
    if principal.allows("search") and photo.status == PhotoStatus.INDEXED:
        try:
            similar = search_service.search_similar(session, photo_id, principal, SIMILAR_K, viewer_region)
        except (Conflict, NotFound):
            similar = None  # deleted or re-queued meanwhile: the page still shows what it has
    audit = moderation_service.audit_trail(session, photo_id) if principal.allows("moderate") else []
    scores = moderation_service.photo_scores(session, photo) if principal.allows("moderate") else {}
    return render(
        request,
        "photo.html",
        {
            "photo": photo,
            "links": photo_links(photo.id, viewer_region),
            "tag_links": [(tag, _tag_search(tag, viewer_region)) for tag in photo.tags or []],
            "region": viewer_region,
            "manages": manages,
            "moderates": principal.allows("moderate"),
            "similar": similar,
            "similar_cards": [
                {
                    "id": str(hit.photo_id),
                    "title": hit.title,
                    "photographer": hit.photographer,
                    "score": f"{hit.score:.3f}" if hit.score is not None else None,
                    **photo_links(hit.photo_id, viewer_region),
                }
                for hit in (similar.hits if similar else [])
            ],
            "audit": audit,
            "scores": scores,
            "done": done if done in {"saved", "decided"} else None,
        },
    )


@router.get("/photos/{photo_id}/thumbnail")
def photo_thumbnail(
    photo_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: ThumbnailViewer,
    region: RegionQuery = None,
    x_region: RegionHeader = None,
) -> Response:
    """The 224x224 derivative for the signed-in browser: the rules of GET /v1/photos/{id}/thumbnail."""
    stored = photo_service.thumbnail(session, photo_id, principal, resolve_region(region, x_region))
    # Revalidated on every view: a moderation decision or a deletion takes effect at once in the browser too.
    return thumbnail_response(stored, {"Cache-Control": "private, no-cache", "Vary": "Cookie, X-Region"}, vary="Cookie")


@router.post("/photos/{photo_id}/edit")
def edit_photo(
    photo_id: uuid.UUID,
    request: Request,
    principal: Curator,
    csrf: CsrfForm,
    title: Annotated[str, Form(max_length=1000)] = "",
    photographer: Annotated[str, Form(max_length=1000)] = "",
    description: Annotated[str, Form(max_length=MAX_DESCRIPTION)] = "",
    tags: Annotated[str, Form(max_length=MAX_TAGS_TEXT)] = "",
    visibility: Annotated[Literal["public", "private"], Form()] = "public",
) -> Response:
    """PATCH /v1/photos/{id} from a form: title, photographer, description, tags (comma-separated), public or
    private. A blank field clears it, as null does in the API."""
    check_csrf(request, csrf)
    try:
        change = PhotoChange(
            title=_clean(title, "title"),
            photographer=_clean(photographer, "photographer"),
            description=_clean(description, "description"),
            tags=[tag.strip() for tag in tags.split(",") if tag.strip()],
            visibility=visibility,
        )
    except ValidationError as exc:
        raise InvalidRequest("; ".join(str(e["msg"]) for e in exc.errors())) from None
    with session_scope() as session:
        photo_service.update_photo(session, photo_id, principal, change.model_dump())
    return redirect(f"/photos/{photo_id}?done=saved")


@router.post("/photos/{photo_id}/delete")
def delete_photo(
    photo_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    principal: Curator,
    csrf: CsrfForm,
    next_: Annotated[str, Form(alias="next", max_length=2000)] = "",
) -> Response:
    """DELETE /v1/photos/{id} from a form: gone from search when this answers."""
    check_csrf(request, csrf)
    photo_service.delete_photo(settings, photo_id, principal)
    default = "/upload" if principal.allows("upload") else "/moderation"
    target = safe_next(next_, default)
    separator = "&" if "?" in target else "?"
    return redirect(f"{target}{separator}{urllib.parse.urlencode({'done': 'deleted'})}")


def _tag_search(tag: str, region: str | None) -> str:
    """A search for the photos with this tag: its word as the query, the tag as a filter."""
    query = {"q": tag, "tag": tag, **({"region": region} if region else {})}
    return "/search?" + urllib.parse.urlencode(query)
