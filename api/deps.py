"""FastAPI dependencies: settings, the database session (commit on success, roll back on error), the model check."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from sqlalchemy.orm import Session

from core.settings import Settings, get_settings
from db.engine import session_scope


def get_session() -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# The active model changes only when an operator runs `withsense models activate`: looked up at most every few seconds.
ACTIVE_MODEL_TTL_S = 5.0
_active_model_lock = threading.Lock()
_active_model: tuple[float, tuple[str, str] | None] = (float("-inf"), None)


def active_model_label(session: Session) -> tuple[str, str] | None:
    """(name, revision) of the model whose vectors search compares queries with; None before any indexing."""
    global _active_model
    from db.photos import active_model

    with _active_model_lock:
        fetched_at, label = _active_model
        if time.monotonic() - fetched_at < ACTIVE_MODEL_TTL_S:
            return label
    model = active_model(session)
    label = (model.name, model.revision) if model else None
    with _active_model_lock:
        _active_model = (time.monotonic(), label)
    return label


def forget_active_model() -> None:
    global _active_model
    with _active_model_lock:
        _active_model = (float("-inf"), None)


def model_mismatch(session: Session) -> str | None:
    """Why this API's query vectors would not match the index (another model is active), or None."""
    from core.embedding import get_embedder

    embedder = get_embedder()
    embedder.load()  # its revision is known once it is loaded (at most once per process)
    active = active_model_label(session)
    if active is None or active[1] == embedder.revision:  # the revision names the weights, whatever the path
        return None
    return (f"search is unavailable: this API embeds queries with {embedder.model_name}@{embedder.revision}, but the "
            f"index is searched with {active[0]}@{active[1]} (the active model). Point WITHSENSE_MODEL (and "
            "WITHSENSE_MODEL_REVISION) at the active model, or finish `withsense reindex` and run "
            "`withsense models activate`.")


def ensure_query_model(session: Session) -> None:
    """503 rather than quietly wrong rankings when the API's model is not the one the index is searched with."""
    problem = model_mismatch(session)
    if problem:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, problem)
