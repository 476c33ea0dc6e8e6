"""The policy rescreen: photos registered under older policy rules, read again with the rules in force.

A photo's own words (title, original file name) are screened when it is uploaded or retitled. When
the rules change, photos registered before were read with the old ones: a title the new rules mark
("тинэйджеры на пляже" before 2026.12.01-1) left the photo shown as having no minor. `withsense
policy rescreen` finds them (a dry run by default) and, with ``--apply``, marks them with the upload
screening itself (services.intake.screen_words: treated as showing a minor, audited with the
rules version; a photo already decided by a moderator goes back to review).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from core.policy import QueryPolicy, get_query_policy
from db.engine import session_scope
from db.rescreen import lock_photo, photos_to_rescreen
from services.intake import screen_words, screened_field

RESCREEN_ACTOR = "policy-rescreen"
DEFAULT_PAGE_SIZE = 500


@dataclass(frozen=True)
class RescreenHit:
    """A photo whose words the rules in force read as describing a child."""

    photo_id: uuid.UUID
    field: str  # "title" or "original file name"
    text: str
    matched_terms: tuple[str, ...]


@dataclass
class RescreenReport:
    rules_version: str
    applied: bool
    scanned: int = 0
    hits: list[RescreenHit] = field(default_factory=list)


def rescreen_photos(
    *,
    apply: bool,
    policy: QueryPolicy | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_hit: Callable[[RescreenHit], None] | None = None,
) -> RescreenReport:
    """Read every candidate photo's words with the rules in force; with ``apply``, mark those they describe.

    Pages of ``page_size`` photos, one transaction each, so a large library neither holds one long
    transaction nor reads everything into memory. ``on_hit`` sees each hit as it is found.
    """
    policy = policy or get_query_policy()
    report = RescreenReport(rules_version=policy.version, applied=apply)
    after: uuid.UUID | None = None
    while True:
        with session_scope() as session:
            page = photos_to_rescreen(session, after, page_size)
            if not page:
                break
            after = page[-1].id
            report.scanned += len(page)
            for photo in page:
                found = screened_field(photo, policy.check)
                if found is None:
                    continue
                name, text, decision = found
                hit = RescreenHit(photo.id, name, text, decision.matched_terms)
                report.hits.append(hit)
                if on_hit is not None:
                    on_hit(hit)
                if apply:
                    # The upload screening itself, on the row locked and read afresh, as this command's actor.
                    locked = lock_photo(session, photo.id)
                    if locked is not None and not locked.depicts_minor:
                        screen_words(session, locked, actor=RESCREEN_ACTOR, check=policy.check)
    return report
