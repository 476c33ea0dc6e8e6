"""The separate text model (WITHSENSE_TEXT_MODEL) recorded with the model version it was checked against.

Every API and worker that loads a text model runs the start-up check (core/text_alignment.py, in
``ClipEmbedder.load``) against the image model's own text tower. A check that passes is recorded with the model
version (embedding_text_models, migration 0012): the text model's name and revision (hub commit or folder hash) and
the figures. A check that fails leaves the image model serving pictures and refuses every text query with 503 and
the reason, naming the text models recorded for the version (what the operator should set instead), and /readyz
answers 503 so that the process stays out of rotation until it is restarted with a text model of this space.
"""

from __future__ import annotations

import logging

from core.embedding import ClipEmbedder
from db import text_models as text_sql
from db.engine import session_scope
from db.text_models import TextModelCheck
from services.errors import Unavailable

log = logging.getLogger(__name__)


class TextSearchRefused(Unavailable):
    """This process's text model failed its check: text queries are refused until it is restarted with another.

    Retry-After is long: settings do not change without a restart.
    """

    retry_after_s = 300


def passed_check(embedder: ClipEmbedder) -> TextModelCheck | None:
    """The loaded text model's passed check as it is recorded, or None (no text model, or it was refused)."""
    alignment = embedder.text_alignment
    name, revision = embedder.text_model_name, embedder.text_model_revision
    if alignment is None or name is None or revision is None or embedder.text_model_refusal is not None:
        return None
    return TextModelCheck(
        name=name,
        revision=revision,
        dimension=embedder.dimension,
        probes=alignment.probes,
        margin=alignment.margin,
        matched_cosine=alignment.matched_cosine,
        mismatched_cosine=alignment.mismatched_cosine,
        top1=alignment.top1,
        min_margin=alignment.min_margin,
    )


def record_text_model(embedder: ClipEmbedder, model_id: int | None = None) -> bool:
    """Record a loaded embedder's passed text-model check with its model version; True when it was recorded.

    `model_id` is the version's row (a worker has it); without it the row is found by the image model's revision,
    and nothing is recorded while no worker has registered the version yet (the first worker with the same text
    model records it).
    """
    check = passed_check(embedder)
    if check is None:
        return False
    with session_scope() as session:
        if model_id is None:
            row = text_sql.model_by_revision(session, embedder.revision)
            if row is None:
                log.info(
                    "text model %s agrees with %s@%s, which no worker has registered yet: not recorded",
                    check.label,
                    embedder.model_name,
                    embedder.revision,
                )
                return False
            model_id = row.id
        earlier = text_sql.checks_of(session, model_id)
        new = text_sql.record_check(session, model_id, check)
    if new:
        others = [c.label for c in earlier if c.revision != check.revision]
        log.info(
            "recorded text model %s with %s@%s (margin %.3f)%s",
            check.label,
            embedder.model_name,
            embedder.revision,
            check.margin,
            f"; also recorded for it: {', '.join(others)}" if others else "",
        )
    return True


def refusal(embedder: ClipEmbedder) -> str | None:
    """Why this process refuses text queries (its text model failed the check), naming what the version has recorded;
    None when text queries are served."""
    reason = embedder.text_model_refusal
    if reason is None:
        return None
    try:
        with session_scope() as session:
            row = text_sql.model_by_revision(session, embedder.revision)
            recorded = text_sql.checks_of(session, row.id) if row is not None else []
    except Exception as exc:  # noqa: BLE001 - the refusal stands; only the hint is missing
        log.warning("could not read the text models recorded for %s: %s", embedder.revision, exc)
        recorded = []
    if recorded:
        hint = "recorded for this model version: " + ", ".join(f"{c.label} (margin {c.margin:.2f})" for c in recorded)
    else:
        hint = "no text model is recorded for this model version yet"
    return (
        f"text search is unavailable: {reason} ({hint}). Restart this process with a text model recorded for "
        f"{embedder.model_name}@{embedder.revision}, or without WITHSENSE_TEXT_MODEL."
    )


def ensure_text_model(embedder: ClipEmbedder) -> None:
    """`TextSearchRefused` (503) when this process's text model failed its start-up check."""
    problem = refusal(embedder)
    if problem is not None:
        raise TextSearchRefused(problem)
