"""Liveness, readiness (which dependency is missing) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from core.settings import get_settings
from db.engine import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _check_database() -> str | None:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed: it is the readiness answer
        return f"database unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _check_broker() -> str | None:
    import redis

    url = get_settings().broker_url or "redis://127.0.0.1:6379/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # noqa: BLE001 - reported as the readiness answer
        return f"broker unreachable: {type(exc).__name__}: {str(exc)[:200]}"


def _check_model(database_ok: bool) -> tuple[str, bool]:
    """("ok" | "loading" | the mismatch, whether that is a problem): queries must use the active model."""
    from api.deps import model_mismatch
    from core.embedding import get_embedder
    from db.engine import session_scope

    if not get_embedder().is_loaded:
        return "loading", False  # the first search waits for it; nothing is wrong
    if not database_ok:
        return "unknown (the database is unreachable)", False
    with session_scope() as session:
        problem = model_mismatch(session)
    return (problem, True) if problem else ("ok", False)


@router.get("/readyz")
def readyz() -> JSONResponse:
    """Ready when the database and the queue answer and the API's model is the active one; else 503 naming why."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    model_state, model_problem = _check_model(checks["database"] is None)
    problems = [name for name, problem in checks.items() if problem] + (["model"] if model_problem else [])
    body = {
        "status": "ready" if not problems else "unavailable",
        "checks": {name: problem or "ok" for name, problem in checks.items()} | {"model": model_state},
    }
    return JSONResponse(body, status_code=status.HTTP_200_OK if not problems else status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
