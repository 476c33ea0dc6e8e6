"""Liveness, readiness (which dependency is missing) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services import health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> JSONResponse:
    """Ready when the database, the queue and the photo store answer and the API's model is the active one; else
    503 naming why."""
    checks = {
        "database": health.database_problem(),
        "broker": health.broker_problem(),
        "storage": health.storage_problem(),
    }
    model_state, model_problem = health.model_state(checks["database"] is None)
    problems = [name for name, problem in checks.items() if problem] + (["model"] if model_problem else [])
    body = {
        "status": "ready" if not problems else "unavailable",
        "checks": {name: problem or "ok" for name, problem in checks.items()} | {"model": model_state},
    }
    return JSONResponse(body, status_code=status.HTTP_200_OK if not problems else status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
