"""FastAPI dependencies: settings, the database session (commit on success, roll back on error) and the read
session of searches (a read replica when one is healthy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from api.auth import SearchPrincipal
from core.settings import Settings, get_settings
from db.engine import session_scope
from services.search import search_session


def get_session() -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_read_session(principal: SearchPrincipal) -> Iterator[Session]:
    """The session of a search: a healthy, caught-up read replica, else the primary (also right after this key's
    own writes). The search key is resolved first, so the choice can depend on it."""
    with search_session(principal) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session)]
