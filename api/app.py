"""The FastAPI application: HTTP API v1 of With Sense photo search."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError

from api import errors, pages
from api.routes import embeddings, health, moderation, photos, search
from core.settings import get_settings

log = logging.getLogger(__name__)


def _warm_up_model() -> None:
    from core.embedding import get_embedder

    try:
        get_embedder().load()
    except Exception:
        log.exception("the embedding model could not be loaded; searches will fail until it can")


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    (settings.home / "tmp").mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(settings.api_torch_threads)
    # Load the model in the background: /healthz answers at once, the first search waits for the lock.
    threading.Thread(target=_warm_up_model, name="model-warm-up", daemon=True).start()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="With Sense photo search",
        version="1.0.0",
        description="Find photos by what they show: text and image search over CLIP embeddings in Postgres + pgvector.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(photos.router)
    app.include_router(search.router)
    app.include_router(moderation.router)
    app.include_router(embeddings.router)
    pages.install(app)

    errors.install(app)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        messages = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path"))
            messages.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return JSONResponse(
            {"detail": "; ".join(messages), "errors": jsonable(exc.errors())},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or getattr(exc.orig, "sqlstate", "") in {
            "57P01",
            "57P02",
            "57P03",
            "08006",
            "08003",
            "08001",
        }:
            return JSONResponse(
                {"detail": "the database is unavailable; retry shortly"},
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "2"},
            )
        log.exception("database error")
        return JSONResponse({"detail": "internal database error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)

    return app


def jsonable(errors: object) -> object:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str})


app = create_app()
