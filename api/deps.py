"""FastAPI dependencies: settings and the database session (commit on success, roll back on error)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from core.settings import Settings, get_settings
from db.engine import session_scope


def get_session() -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, rolled back if it raises."""
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
