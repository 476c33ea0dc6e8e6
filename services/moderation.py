"""Moderation rules: what a photographer's declaration, a classifier verdict, the photo's own words or a
moderator's decision change, and the audit row each one writes. The SQL is in db/moderation.py."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func
from sqlalchemy.orm import Session

from db import moderation as moderation_sql
from db import photos as photo_sql
from db.models import ModerationAudit, ModerationStatus, Photo
from services.pages import decode_cursor, encode_cursor

CLASSIFIER_ACTOR = moderation_sql.CLASSIFIER_ACTOR


def _diff(photo: Photo, values: dict[str, object]) -> dict[str, object]:
    return {
        name: {"from": getattr(photo, name), "to": value}
        for name, value in values.items()
        if getattr(photo, name) != value
    }


def record_declaration(
    session: Session, photo: Photo, *, depicts_minor: bool | None, parental_consent: bool | None, actor: str
) -> None:
    """What the photographer declared: a minor is shown, and whether the parents consented.

    A declaration about a photo that the classifier or a moderator has already decided on (the uploader
    sends the photo again, say, now with "consent") sends it back to review: a person checks it before
    it is shown, and no declaration undoes a moderator's decision by itself.
    """
    values: dict[str, object] = {}
    if depicts_minor is not None:
        values["minor_declared"] = depicts_minor
        if depicts_minor:
            values["depicts_minor"] = True
    if parental_consent is not None:
        values["parental_consent"] = parental_consent
    changes = _diff(photo, values)
    if not changes:
        return
    if photo.moderated_at is not None or photo.classifier_version is not None:
        values["moderation_status"] = ModerationStatus.PENDING_REVIEW.value
        changes = _diff(photo, values)
    for name, value in values.items():
        setattr(photo, name, value)
    moderation_sql.audit(session, photo.id, actor, "declared", changes, "declared by the uploader")


def record_text_flag(
    session: Session, photo: Photo, field: str, matched_terms: tuple[str, ...], rules_version: str, actor: str
) -> None:
    """The photo's own words (its title) describe a child: treated as showing a minor until a moderator says not.

    Hidden in restricted regions like a declared minor (unless there is parental consent). At upload, a
    contradiction with the photographer's "no minor" goes to review when the photo is classified; a new
    title on a photo that was already classified or moderated sends it back to review at once.
    """
    values: dict[str, object] = {"depicts_minor": True}
    if _diff(photo, values) and (photo.moderated_at is not None or photo.classifier_version is not None):
        values["moderation_status"] = ModerationStatus.PENDING_REVIEW.value  # decided before: a person looks again
    changes = _diff(photo, values)
    for name, value in values.items():
        setattr(photo, name, value)
    moderation_sql.audit(
        session,
        photo.id,
        actor,
        "screened",
        changes,
        f"the {field} describes a minor ({', '.join(matched_terms)}; query policy {rules_version})",
    )


@dataclass(frozen=True)
class ClassifierOutcome:
    version: str
    scores: list[tuple[str, float, str]]  # (category, score, decision)
    depicts_minor: bool
    unsafe: bool
    needs_review: bool


def apply_classifier(session: Session, outcomes: dict[uuid.UUID, ClassifierOutcome]) -> None:
    """Store scores and the automatic decisions, in the worker's indexing transaction, with audit rows.

    The classifier never clears what a person set: a photographer's minor declaration stands, and a
    photo a moderator already decided keeps that decision. One statement each for the rows, the
    scores, the photo updates (grouped by SQLAlchemy) and the audit rows, whatever the batch size.
    """
    if not outcomes:
        return
    photos = moderation_sql.lock_photos(session, list(outcomes))
    score_rows: list[dict[str, object]] = []
    audit_rows: list[dict[str, object]] = []
    for photo in photos:
        outcome = outcomes[photo.id]
        score_rows.extend(
            {
                "photo_id": photo.id,
                "classifier_version": outcome.version,
                "category": category,
                "score": score,
                "decision": decision,
            }
            for category, score, decision in outcome.scores
        )
        values: dict[str, object] = {"classifier_version": outcome.version}
        if outcome.depicts_minor:
            values["depicts_minor"] = True
        if outcome.unsafe:
            values["unsafe"] = True
        if photo.moderated_at is None:  # no person has decided yet
            conflict = photo.minor_declared is False and (outcome.depicts_minor or photo.depicts_minor)
            values["moderation_status"] = (
                ModerationStatus.PENDING_REVIEW if outcome.needs_review or conflict else ModerationStatus.APPROVED
            )
        changes = _diff(photo, values)
        if "moderation_status" in values:  # the automatic decision is recorded even when it keeps the default
            changes["moderation_status"] = {"from": photo.moderation_status, "to": str(values["moderation_status"])}
        for name, value in values.items():
            setattr(photo, name, value)
        changes["scores"] = {category: round(score, 4) for category, score, _ in outcome.scores}
        audit_rows.append(
            {
                "photo_id": photo.id,
                "actor": CLASSIFIER_ACTOR,
                "action": "classified",
                "changes": changes,
                "reason": f"classifier {outcome.version}",
            }
        )
    moderation_sql.upsert_scores(session, score_rows)
    moderation_sql.insert_audit_rows(session, audit_rows)


@dataclass(frozen=True)
class ModeratorDecision:
    status: ModerationStatus | None = None
    depicts_minor: bool | None = None
    parental_consent: bool | None = None
    unsafe: bool | None = None
    reason: str = ""


def apply_moderator_decision(
    session: Session, photo_id: uuid.UUID, decision: ModeratorDecision, actor: str
) -> Photo | None:
    """A moderator's change; takes effect for every search when the transaction commits."""
    photo = photo_sql.get_photo(session, photo_id, for_update=True)
    if photo is None:
        return None
    values: dict[str, object] = {}
    if decision.status is not None:
        values["moderation_status"] = decision.status.value
    if decision.depicts_minor is not None:
        values["depicts_minor"] = decision.depicts_minor
    if decision.parental_consent is not None:
        values["parental_consent"] = decision.parental_consent
    if decision.unsafe is not None:
        values["unsafe"] = decision.unsafe
    changes = _diff(photo, values)
    for name, value in values.items():
        setattr(photo, name, value)
    photo.moderated_at = func.now()
    photo.updated_at = func.now()
    moderation_sql.audit(session, photo_id, actor, "moderated", changes, decision.reason)
    session.flush()
    session.refresh(photo)
    return photo


@dataclass(frozen=True)
class ReviewPage:
    total: int
    items: list[tuple[Photo, dict[str, float]]]
    next_cursor: str | None


def review_queue(session: Session, limit: int, offset: int = 0, cursor: str | None = None) -> ReviewPage:
    """The queue's size and one page of it: indexed photos waiting for a person, oldest first, with their scores.

    `cursor` is the previous page's `next_cursor` (a position: photos decided meanwhile do not shift the pages).
    """
    after = decode_cursor(cursor) if cursor else None
    rows = moderation_sql.review_queue(session, limit + 1, offset, after)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1][0].created_at, page[-1][0].id) if len(rows) > limit else None
    return ReviewPage(moderation_sql.queue_size(session), page, next_cursor)


def audit_trails(session: Session, photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[ModerationAudit]]:
    """The audit trails of several photos at once (a page of the queue), each oldest first."""
    return moderation_sql.audit_trails(session, photo_ids)


def photo_scores(session: Session, photo: Photo) -> dict[str, float]:
    """The classifier's latest scores of one photo by category, 0 to 1 (empty before it is classified)."""
    return moderation_sql.photo_scores(session, photo.id, photo.classifier_version)


def audit_trail(session: Session, photo_id: uuid.UUID) -> list[ModerationAudit]:
    """Every moderation change of a photo, oldest first (kept after the photo is deleted)."""
    return moderation_sql.audit_trail(session, photo_id)
