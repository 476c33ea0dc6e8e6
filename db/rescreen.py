"""SQL of the policy rescreen: the photos whose own words are to be read again by newer rules."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from db.models import ModerationAudit, Photo


def photos_to_rescreen(session: Session, after: uuid.UUID | None, limit: int) -> list[Photo]:
    """One page, in id order after ``after``, of the photos that newer policy rules might mark as showing a minor.

    Those not treated as showing a minor yet that have a title or an original file name; not those
    a moderator decided on after their words were last screened (the moderator has read them).
    """
    screened_then_decided = exists().where(
        and_(
            ModerationAudit.photo_id == Photo.id,
            ModerationAudit.action == "screened",
            Photo.moderated_at.is_not(None),
            Photo.moderated_at > ModerationAudit.created_at,
        )
    )
    query = (
        select(Photo)
        .where(
            Photo.depicts_minor.is_(False),
            or_(Photo.title.is_not(None), Photo.original_name.is_not(None)),
            ~screened_then_decided,
        )
        .order_by(Photo.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Photo.id > after)
    return list(session.scalars(query))


def lock_photo(session: Session, photo_id: uuid.UUID) -> Photo | None:
    """The photo, locked for this transaction and read afresh (another process may have marked it meanwhile)."""
    query = select(Photo).where(Photo.id == photo_id).with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).first()
