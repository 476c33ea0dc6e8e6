"""Engines and sessions: the primary's engine, and one per read replica, each created lazily (after a Celery fork,
never before).

Writes and every read that must see them go to the primary through :func:`session_scope`. Searches may read a
streaming standby through :func:`read_session`: the replicas in turn (round robin), skipping one that failed or
whose replay lags more than WITHSENSE_REPLICA_MAX_LAG_S, and the primary when none is left.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.runtime import runtime
from core.settings import get_settings

log = logging.getLogger(__name__)


def normalise_database_url(url: str) -> str:
    """Accept plain postgresql:// URLs (psql style) and make SQLAlchemy use psycopg 3."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def build_engine(
    url: str, *, pool_size: int = 5, connect_timeout_s: int = 5, application_name: str = "withsense"
) -> Engine:
    engine = create_engine(
        normalise_database_url(url),
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=True,  # a Postgres restart must not leave dead connections in the pool
        pool_recycle=1800,
        connect_args={"connect_timeout": connect_timeout_s, "application_name": application_name},
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


@contextmanager
def single_read() -> Iterator[Connection]:
    """A pooled connection of the primary in autocommit, for one read statement: no BEGIN and COMMIT round trips
    around it (what authenticating every request would otherwise pay)."""
    with get_engine().connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def dispose_engine() -> None:
    """Drop pooled connections (after fork, or in tests that restart Postgres), the replicas' too; the engines
    themselves are kept."""
    engine = _engine.peek()
    if engine is not None:
        engine.dispose()
    replicas = _replicas.peek()
    if replicas is not None:
        replicas.dispose()


# Read replicas -------------------------------------------------------------------------------------------------

# Seconds the standby's replay is behind. Caught up (everything received is replayed while it streams) is 0 even
# when the primary has been idle for long; otherwise the age of the last replayed transaction, which overstates
# the lag of an idle primary (safe: such a replica is skipped, never trusted too much). A server that is not in
# recovery (not a standby) has no lag.
REPLICA_LAG_SQL = text(
    """
    SELECT CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
             AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 0.0
        ELSE COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8, 1e9)
    END
    """
)


def _describe(url: str) -> str:
    """host:port/database of a URL, never its credentials (for logs and metric labels)."""
    parsed = make_url(normalise_database_url(url))
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


@dataclass
class ReplicaState:
    """What this process last measured of one replica."""

    label: str
    healthy: bool
    lag_s: float | None
    error: str | None
    usable: bool


class Replica:
    """One streaming standby: its engine, and its health and lag as last measured (at most every few seconds)."""

    def __init__(self, url: str, application_name: str) -> None:
        self.label = _describe(url)
        self.engine = build_engine(url, pool_size=3, connect_timeout_s=2, application_name=application_name)
        self.healthy = False
        self.lag_s: float | None = None
        self.error: str | None = "not checked yet"
        self.checked_at = float("-inf")
        self._checking = threading.Lock()

    def refresh(self) -> None:
        """Measure the replica now (one short query); a failure marks it down until the retry interval passes."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SET LOCAL statement_timeout = 2000"))
                lag = connection.execute(REPLICA_LAG_SQL).scalar_one()
            self.lag_s, self.healthy, self.error = max(0.0, float(lag)), True, None
        except Exception as exc:  # noqa: BLE001 - the replica is skipped and the reason kept for /metrics and logs
            self.mark_failed(exc)
            return
        finally:
            self.checked_at = time.monotonic()

    def mark_failed(self, exc: BaseException) -> None:
        if self.healthy or self.error is None or self.error == "not checked yet":
            log.warning("read replica %s skipped: %s", self.label, _first_line(exc))
        self.healthy, self.lag_s = False, None
        self.error = _first_line(exc)
        self.checked_at = time.monotonic()

    def is_due(self, check_every_s: float, retry_after_s: float) -> bool:
        age = time.monotonic() - self.checked_at
        return age >= (check_every_s if self.healthy else retry_after_s)

    def refresh_if_due(self, check_every_s: float, retry_after_s: float) -> None:
        # One thread measures; the others go on with the last measurement rather than wait for it.
        if self.is_due(check_every_s, retry_after_s) and self._checking.acquire(blocking=False):
            try:
                if self.is_due(check_every_s, retry_after_s):
                    self.refresh()
            finally:
                self._checking.release()


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


class ReplicaSet:
    """The replicas of WITHSENSE_DATABASE_REPLICA_URLS, handed out in turn while healthy and not lagging."""

    def __init__(self, urls: tuple[str, ...], max_lag_s: float, check_every_s: float, retry_after_s: float) -> None:
        self.replicas = [Replica(url, "withsense-search") for url in urls]
        self.max_lag_s = max_lag_s
        self.check_every_s = check_every_s
        self.retry_after_s = retry_after_s
        self._turn = itertools.count()

    def usable(self, replica: Replica) -> bool:
        replica.refresh_if_due(self.check_every_s, self.retry_after_s)
        return replica.healthy and replica.lag_s is not None and replica.lag_s <= self.max_lag_s

    def candidates(self) -> list[Replica]:
        """The usable replicas, starting with the next one in turn."""
        if not self.replicas:
            return []
        start = next(self._turn) % len(self.replicas)
        ordered = self.replicas[start:] + self.replicas[:start]
        return [replica for replica in ordered if self.usable(replica)]

    def states(self) -> list[ReplicaState]:
        for replica in self.replicas:
            replica.refresh_if_due(self.check_every_s, self.retry_after_s)
        return [
            ReplicaState(
                r.label, r.healthy, r.lag_s, r.error, r.healthy and r.lag_s is not None and r.lag_s <= self.max_lag_s
            )
            for r in self.replicas
        ]

    def dispose(self) -> None:
        for replica in self.replicas:
            replica.engine.dispose()


def _replicas_from_settings() -> ReplicaSet:
    settings = get_settings()
    return ReplicaSet(
        settings.database_replica_urls,
        settings.replica_max_lag_s,
        settings.replica_check_every_s,
        settings.replica_retry_after_s,
    )


_replicas = runtime.slot("read-replicas", _replicas_from_settings, close=lambda replicas: replicas.dispose())


def has_replicas() -> bool:
    """Whether WITHSENSE_DATABASE_REPLICA_URLS names any replica."""
    return bool(_replicas.get().replicas)


def replica_states() -> list[ReplicaState]:
    """Each replica's health and lag as this process measures them (measured again when stale)."""
    return _replicas.get().states()


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


@contextmanager
def read_session() -> Iterator[Session]:
    """A session for searches: a healthy, caught-up replica in turn, else the primary. For reads only.

    The connection is checked out before the block runs, so a replica that went away is skipped here (and left
    alone for WITHSENSE_REPLICA_RETRY_AFTER_S) instead of failing the search; one that fails during the block
    fails that search and is skipped from the next one on. `session.info["replica"]` names the server used
    (None: the primary).
    """
    replicas = _replicas.get()
    for replica in replicas.candidates():
        session = Session(bind=replica.engine, expire_on_commit=False)
        try:
            session.connection()
        except DBAPIError as exc:
            session.close()
            replica.mark_failed(exc)
            continue
        session.info["replica"] = replica.label
        try:
            yield session
        except BaseException as exc:
            if _connection_lost(exc):
                replica.mark_failed(exc)
            raise
        finally:
            session.rollback()  # nothing to keep: the transaction only read
            session.close()
        return
    with session_scope() as session:
        session.info["replica"] = None
        yield session
