"""SQL of moderation: scores, the audit trail, the review queue, and the visibility function.

The rules (what a declaration, a classifier verdict or a moderator's decision changes) are in services/moderation.py."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, insert, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from db.models import ModerationAudit, ModerationScore, ModerationStatus, Photo, PhotoStatus

CLASSIFIER_ACTOR = "classifier"


def audit(
    session: Session,
    photo_id: uuid.UUID,
    actor: str,
    action: str,
    changes: dict[str, object],
    reason: str | None = None,
) -> None:
    session.execute(
        insert(ModerationAudit).values(photo_id=photo_id, actor=actor, action=action, changes=changes, reason=reason)
    )


def insert_audit_rows(session: Session, rows: list[dict[str, object]]) -> None:
    """Append many audit rows in one statement (a worker's batch)."""
    if rows:
        session.execute(insert(ModerationAudit).values(rows))


def upsert_scores(session: Session, rows: list[dict[str, object]]) -> None:
    """Store classifier scores (photo_id, classifier_version, category, score, decision) in one statement."""
    if rows:
        upsert = pg_insert(ModerationScore).values(rows)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=["photo_id", "classifier_version", "category"],
                set_={"score": upsert.excluded.score, "decision": upsert.excluded.decision},
            )
        )


def lock_photos(session: Session, photo_ids: list[uuid.UUID]) -> list[Photo]:
    """The photos, locked for the caller's transaction."""
    return list(session.scalars(select(Photo).where(Photo.id.in_(photo_ids)).with_for_update()).all())


def review_queue(
    session: Session, limit: int, offset: int = 0, after: tuple[datetime, uuid.UUID] | None = None
) -> list[tuple[Photo, dict[str, float]]]:
    """Indexed photos waiting for a person, oldest first (after the position `after`), with their latest scores."""
    query = select(Photo).where(
        Photo.moderation_status == ModerationStatus.PENDING_REVIEW, Photo.status == PhotoStatus.INDEXED
    )
    if after is not None:
        query = query.where(tuple_(Photo.created_at, Photo.id) > tuple_(after[0], after[1]))
    photos = list(session.scalars(query.order_by(Photo.created_at, Photo.id).limit(limit).offset(offset)))
    scores: dict[uuid.UUID, dict[str, float]] = {p.id: {} for p in photos}
    if photos:
        for row in session.scalars(
            select(ModerationScore).where(
                ModerationScore.photo_id.in_(scores),
                ModerationScore.classifier_version.in_({p.classifier_version for p in photos if p.classifier_version}),
            )
        ):
            scores[row.photo_id][row.category] = row.score
    return [(p, scores[p.id]) for p in photos]


def photo_scores(session: Session, photo_id: uuid.UUID, classifier_version: str | None) -> dict[str, float]:
    """One photo's scores by category from the classifier version that last scored it (none before that)."""
    if classifier_version is None:
        return {}
    rows = session.scalars(
        select(ModerationScore).where(
            ModerationScore.photo_id == photo_id, ModerationScore.classifier_version == classifier_version
        )
    )
    return {row.category: row.score for row in rows}


def queue_size(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Photo)
            .where(Photo.moderation_status == ModerationStatus.PENDING_REVIEW, Photo.status == PhotoStatus.INDEXED)
        )
        or 0
    )


def audit_trail(session: Session, photo_id: uuid.UUID) -> list[ModerationAudit]:
    return list(
        session.scalars(
            select(ModerationAudit).where(ModerationAudit.photo_id == photo_id).order_by(ModerationAudit.id)
        )
    )


def audit_trails(session: Session, photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[ModerationAudit]]:
    """The audit trails of several photos in one query (the moderation page), each oldest first."""
    trails: dict[uuid.UUID, list[ModerationAudit]] = {photo_id: [] for photo_id in photo_ids}
    if photo_ids:
        rows = session.scalars(
            select(ModerationAudit).where(ModerationAudit.photo_id.in_(photo_ids)).order_by(ModerationAudit.id)
        )
        for row in rows:
            trails[row.photo_id].append(row)
    return trails


def photo_visibility(session: Session, photo_id: uuid.UUID, region: str | None) -> str:
    """'visible', 'hidden' (not indexed, private or not approved), 'restricted' (the minors law) or 'missing'."""
    return str(session.scalar(text("SELECT photo_visibility(:id, :region)"), {"id": photo_id, "region": region}))
