"""FastAPI dependencies: settings, the database session (commit on success, roll back on error), the model check."""

from __future__ import annotations

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


def model_mismatch(session: Session) -> str | None:
    """Why this API's query vectors would not match the index (another model is active), or None."""
    from core.embedding import get_embedder
    from db.photos import cached_active_model

    embedder = get_embedder()
    embedder.load()  # its revision is known once it is loaded (at most once per process)
    active = cached_active_model(session)
    if active is None or active.revision == embedder.revision:  # the revision names the weights, whatever the path
        return None
    return (
        f"search is unavailable: this API embeds queries with {embedder.model_name}@{embedder.revision}, but the "
        f"index is searched with {active.name}@{active.revision} (the active model). Point WITHSENSE_MODEL (and "
        "WITHSENSE_MODEL_REVISION) at the active model, or finish `withsense reindex` and run "
        "`withsense models activate`."
    )


def ensure_query_model(session: Session) -> None:
    """503 rather than quietly wrong rankings when the API's model is not the one the index is searched with."""
    problem = model_mismatch(session)
    if problem:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, problem)
