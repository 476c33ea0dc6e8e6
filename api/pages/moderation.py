"""The moderator's page `/moderation`: the review queue with thumbnails, classifier scores, why each photo is there
and its audit trail, and the decision forms (also on the photo page), through services/moderation.py like
GET /v1/moderation/queue and POST /v1/photos/{id}/moderation: a decision is in search when the page answers."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request, Response
from pydantic import ValidationError

from api.deps import SessionDep
from api.routes.moderation import ModerationIn
from db.engine import session_scope
from db.models import ModerationStatus, Photo
from services import moderation as moderation_service
from services.errors import InvalidRequest, NotFound

from .auth import Moderator
from .render import PageRoute, redirect, render
from .search import photo_links
from .session import CSRF_FIELD, check_csrf

router = APIRouter(route_class=PageRoute, include_in_schema=False)

QUEUE_PAGE_SIZE = 20
Action = Literal["approve", "reject", "minor", "not_minor", "consent", "no_consent"]
# Each button of the decision form, as the fields of POST /v1/photos/{id}/moderation it sets.
DECISIONS: dict[str, dict[str, object]] = {
    "approve": {"status": "approved"},
    "reject": {"status": "rejected"},
    "minor": {"depicts_minor": True},
    "not_minor": {"depicts_minor": False},
    "consent": {"parental_consent": True},
    "no_consent": {"parental_consent": False},
}


def flags(photo: Photo) -> list[str]:
    """Why a photo waits for a person, as catalogue keys (the flags the classifier and the uploader set)."""
    found = []
    if photo.unsafe:
        found.append("moderation.flag.unsafe")
    if photo.depicts_minor:
        found.append("moderation.flag.minor")
        found.append("moderation.flag.consent" if photo.parental_consent else "moderation.flag.no_consent")
    if photo.minor_declared is True:
        found.append("moderation.flag.declared_minor")
    elif photo.minor_declared is False:
        found.append("moderation.flag.declared_no_minor")
    return found


@router.get("/moderation")
def moderation_page(
    request: Request,
    session: SessionDep,
    _principal: Moderator,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    decided: Annotated[uuid.UUID | None, Query()] = None,
) -> Response:
    """The queue, oldest first, a page at a time."""
    queue = moderation_service.review_queue(session, QUEUE_PAGE_SIZE, cursor=cursor)
    trails = moderation_service.audit_trails(session, [photo.id for photo, _scores in queue.items])
    items: list[dict[str, Any]] = [
        {
            "photo": photo,
            "scores": sorted(scores.items()),
            "flags": flags(photo),
            "audit": trails[photo.id],
            **photo_links(photo.id, None),
        }
        for photo, scores in queue.items
    ]
    return render(
        request,
        "moderation.html",
        {
            "active": "moderation",
            "total": queue.total,
            "items": items,
            "next_cursor": queue.next_cursor,
            "first_page": cursor is None,
            "decided": decided,
        },
    )


@router.post("/moderation/{photo_id}")
def decide(
    photo_id: uuid.UUID,
    request: Request,
    principal: Moderator,
    csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)],
    action: Annotated[Action, Form()],
    reason: Annotated[str, Form(max_length=2000)] = "",
    back: Annotated[Literal["queue", "photo"], Form()] = "queue",
) -> Response:
    """One decision, with its reason for the audit trail; effective for every search when this answers."""
    check_csrf(request, csrf)
    try:
        body = ModerationIn.model_validate({**DECISIONS[action], "reason": reason.strip()})
    except ValidationError as exc:
        raise InvalidRequest("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    decision = moderation_service.ModeratorDecision(
        status=ModerationStatus(body.status) if body.status else None,
        depicts_minor=body.depicts_minor,
        parental_consent=body.parental_consent,
        unsafe=body.unsafe,
        reason=body.reason,
    )
    with session_scope() as session:
        if moderation_service.apply_moderator_decision(session, photo_id, decision, principal.actor) is None:
            raise NotFound(f"photo {photo_id} does not exist")
    if back == "photo":
        return redirect(f"/photos/{photo_id}?done=decided")
    return redirect(f"/moderation?decided={photo_id}")
