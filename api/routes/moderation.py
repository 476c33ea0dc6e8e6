"""The moderator's API: the review queue, decisions, and the audit trail of a photo."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import ModeratorPrincipal
from api.deps import SessionDep
from api.presenters import base_url, photo_out
from api.schemas import ErrorOut, PhotoOut
from api.validation import FreeText, unset_means_unchanged
from db.models import ModerationStatus
from services import moderation as moderation_service
from services.errors import NotFound
from services.pages import CURSOR_PATTERN

router = APIRouter(prefix="/v1", tags=["moderation"])


class QueueItem(BaseModel):
    photo: PhotoOut
    scores: dict[str, float] = Field(description="the classifier's scores by category, 0 to 1")


class QueueOut(BaseModel):
    items: list[QueueItem] = Field(description="oldest first")
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null on the last page")
    total: int = Field(description="photos waiting for review in all")


_DECISIONS = ("status", "depicts_minor", "parental_consent", "unsafe")


class ModerationIn(BaseModel):
    # At least one decision; none of them nullable (a default of None means "not sent", so unchanged).
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra=unset_means_unchanged(*_DECISIONS, at_least_one=_DECISIONS)
    )

    status: Literal["pending_review", "approved", "rejected"] = None  # type: ignore[assignment]
    depicts_minor: bool = None  # type: ignore[assignment]
    parental_consent: bool = None  # type: ignore[assignment]
    unsafe: bool = None  # type: ignore[assignment]
    reason: Annotated[FreeText, Field(min_length=3, max_length=2000)] = Field(
        description="why: kept in the audit log (line breaks allowed)"
    )

    @model_validator(mode="after")
    def _changes_something(self) -> ModerationIn:
        if all(v is None for v in (self.status, self.depicts_minor, self.parental_consent, self.unsafe)):
            raise ValueError("set at least one of status, depicts_minor, parental_consent, unsafe")
        return self


class AuditEntry(BaseModel):
    id: int
    actor: str
    action: str
    changes: dict[str, object]
    reason: str | None
    created_at: datetime


@router.get("/moderation/queue", response_model=QueueOut)
def moderation_queue(
    request: Request,
    session: SessionDep,
    _principal: ModeratorPrincipal,
    limit: Annotated[int, Query(ge=1, le=200, description="photos per page, 1 to 200")] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, max_length=49, description="`next_cursor` of the previous page"),
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=1_000_000, deprecated=True, description="photos to skip (after `cursor`); use `cursor`")
    ] = 0,
) -> QueueOut:
    """Indexed photos waiting for a moderator, oldest first, with the classifier's scores."""
    page = moderation_service.review_queue(session, limit, offset, cursor)
    base = base_url(request)
    return QueueOut(
        items=[QueueItem(photo=photo_out(photo, base), scores=scores) for photo, scores in page.items],
        next_cursor=page.next_cursor,
        total=page.total,
    )


@router.post(
    "/photos/{photo_id}/moderation",
    response_model=PhotoOut,
    responses={404: {"model": ErrorOut, "description": "no such photo"}},
)
def moderate_photo(
    photo_id: uuid.UUID, body: ModerationIn, request: Request, session: SessionDep, principal: ModeratorPrincipal
) -> PhotoOut:
    """Set the moderation status, the minor flag, parental consent or the unsafe flag; effective for search at once."""
    decision = moderation_service.ModeratorDecision(
        status=ModerationStatus(body.status) if body.status else None,
        depicts_minor=body.depicts_minor,
        parental_consent=body.parental_consent,
        unsafe=body.unsafe,
        reason=body.reason,
    )
    photo = moderation_service.apply_moderator_decision(session, photo_id, decision, principal.actor)
    if photo is None:
        raise NotFound(f"photo {photo_id} does not exist")
    return photo_out(photo, base_url(request))


@router.get("/photos/{photo_id}/moderation", response_model=list[AuditEntry])
def moderation_history(photo_id: uuid.UUID, session: SessionDep, _principal: ModeratorPrincipal) -> list[AuditEntry]:
    """Every moderation change of a photo, by people and by the classifier, oldest first (kept after deletion)."""
    return [
        AuditEntry(id=a.id, actor=a.actor, action=a.action, changes=a.changes, reason=a.reason, created_at=a.created_at)
        for a in moderation_service.audit_trail(session, photo_id)
    ]
