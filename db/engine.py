"""Engine and sessions. One engine per process, created lazily (after a Celery fork, never before)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.runtime import runtime
from core.settings import get_settings


def normalise_database_url(url: str) -> str:
    """Accept plain postgresql:// URLs (psql style) and make SQLAlchemy use psycopg 3."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def build_engine(url: str, *, pool_size: int = 5) -> Engine:
    engine = create_engine(
        normalise_database_url(url),
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=True,  # a Postgres restart must not leave dead connections in the pool
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: psycopg.Connection[Any], _record: object) -> None:
        try:
            register_vector(dbapi_connection)
        except psycopg.ProgrammingError:
            # Before the first migration the extension does not exist yet; types register on the next connect.
            dbapi_connection.rollback()

    return engine


def _engine_from_settings() -> Engine:
    url = get_settings().database_url
    if not url:
        raise DatabaseNotConfigured(
            "WITHSENSE_DATABASE_URL is not set. Start the local stack with `withsense up`, "
            "or point WITHSENSE_DATABASE_URL at a Postgres with pgvector >= 0.8."
        )
    return build_engine(url)


class DatabaseNotConfigured(RuntimeError):
    """No database URL: neither set nor read from a running `withsense up`."""


_engine = runtime.slot("engine", _engine_from_settings, close=lambda engine: engine.dispose())
_sessionmaker = runtime.slot("sessionmaker", lambda: sessionmaker(bind=get_engine(), expire_on_commit=False))


def get_engine() -> Engine:
    """This process's engine (one pool), created on first use: after a Celery fork, never before."""
    return _engine.get()


def get_sessionmaker() -> sessionmaker[Session]:
    return _sessionmaker.get()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engine() -> None:
    """Drop pooled connections (after fork, or in tests that restart Postgres); the engine itself is kept."""
    engine = _engine.peek()
    if engine is not None:
        engine.dispose()
