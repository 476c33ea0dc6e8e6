"""Readiness: whether the database, the queue and the model can serve, each with the reason when not."""

from __future__ import annotations

import redis
from sqlalchemy import text

from core.settings import get_settings
from db.engine import ReplicaState, get_engine, has_replicas, session_scope
from db.engine import replica_states as _replica_states
from services.model_loader import model_loader, query_embedder
from services.query_cache import CacheStats, query_cache
from services.search import model_mismatch
from services.text_models import refusal
from storage import get_storage


def database_problem() -> str | None:
    """None when Postgres answers, else why not."""
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed: it is the readiness answer
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def broker_problem() -> str | None:
    """None when Redis answers, else why not."""
    url = get_settings().broker_url or "redis://127.0.0.1:6379/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # noqa: BLE001 - reported as the readiness answer
        return f"broker unreachable: {type(exc).__name__}: {str(exc)[:200]}"


def storage_problem() -> str | None:
    """None when the photo store (folder or bucket) can serve, else why not."""
    try:
        return get_storage().problem()
    except Exception as exc:  # noqa: BLE001 - a store that cannot even be built is the readiness answer
        return f"photo store unusable: {type(exc).__name__}: {str(exc)[:200]}"


def model_state(database_ok: bool) -> tuple[str, bool]:
    """("ok" | "loading" | why not, whether that is a problem): the model must load, and be the active one.

    A first load in progress is not a problem (requests wait for it); a failed load is, with the model's name, the
    reason and when the next attempt is, until the background retry loads it.
    """
    status = model_loader().status()
    if status.state != "ready":
        return status.describe(), status.state == "failed"
    if not database_ok:
        return "unknown (the database is unreachable)", False
    with session_scope() as session:
        problem = model_mismatch(session)
    problem = problem or refusal(query_embedder())
    return (problem, True) if problem else ("ok", False)


def replica_states() -> list[ReplicaState]:
    """Each read replica's health and replay lag, as this process measures them (none without replicas)."""
    return _replica_states() if has_replicas() else []


def query_cache_stats() -> CacheStats:
    """Hits, misses and unanswered calls of this process's query-embedding cache."""
    return query_cache().snapshot()
