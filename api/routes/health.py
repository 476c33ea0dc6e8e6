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


@router.get("/readyz")
def readyz() -> JSONResponse:
    """Ready when the database and the queue answer; otherwise 503 naming what is missing."""
    problems = {name: problem for name, problem in (("database", _check_database()), ("broker", _check_broker())) if problem}
    body = {"status": "ready" if not problems else "unavailable", "checks": {
        "database": problems.get("database", "ok"), "broker": problems.get("broker", "ok")}}
    return JSONResponse(body, status_code=status.HTTP_200_OK if not problems else status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
