"""Liveness, readiness (which dependency is missing) and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from services import health

router = APIRouter(tags=["health"])


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyChecks(BaseModel):
    database: str = Field(description="`ok`, or why Postgres cannot be reached")
    broker: str = Field(description="`ok`, or why Redis cannot be reached")
    model: str = Field(
        description="`ok`; `loading` while the first load runs; else why not: the model that could not be loaded "
        "with the reason and the next attempt, or the mismatch with the active model"
    )


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: ReadyChecks


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """The process is up."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "a dependency is missing; `checks` names it and why"}},
)
def readyz() -> JSONResponse:
    """Ready when the database and the queue answer and the API's model is loaded and the active one; else 503."""
    checks = {"database": health.database_problem(), "broker": health.broker_problem()}
    model_state, model_problem = health.model_state(checks["database"] is None)
    problems = [name for name, problem in checks.items() if problem] + (["model"] if model_problem else [])
    body = ReadyOut(
        status="ready" if not problems else "unavailable",
        checks=ReadyChecks(**{name: problem or "ok" for name, problem in checks.items()}, model=model_state),
    )
    return JSONResponse(
        body.model_dump(), status_code=status.HTTP_200_OK if not problems else status.HTTP_503_SERVICE_UNAVAILABLE
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
def metrics() -> Response:
    """Upload and search counters and latencies, for Prometheus."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
