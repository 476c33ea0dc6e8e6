"""The FastAPI application: HTTP API v1 of With Sense photo search."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors, openapi, pages
from api.routes import embeddings, health, moderation, photos, search
from core.embedding import get_embedder
from core.settings import get_settings
from services.model_loader import model_loader
from services.search import note_write

log = logging.getLogger(__name__)

DOCS_ASSETS = "/static/docs"


def _docs_assets() -> Path:
    """Swagger UI and ReDoc as shipped by the fastapi-offline wheel (their licences travel with it): no CDN."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    (settings.home / "tmp").mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(settings.api_torch_threads)
    # The model loads in the background, retried with backoff when it fails: /healthz answers at once, /readyz
    # names the reason, and a search never waits on the hub (services/model_loader.py).
    model_loader().start()
    yield


def _vector_dimension() -> int | None:
    embedder = get_embedder()
    return embedder.dimension if embedder.is_loaded else None


def create_app() -> FastAPI:
    app = FastAPI(
        title="With Sense photo search",
        version="1.0.0",
        description=(
            "Find photos by what they show: text and image search over CLIP embeddings in Postgres + pgvector.\n\n"
            "Every `/v1` route needs `Authorization: Bearer <key>` (see `withsense keys create`). Errors are "
            '`{"detail": "<sentence>"}`; a request that does not fit the schema is 422 with `errors` listing each '
            "problem; an unexpected error is 500 with the `request_id` under which the server logged it (also in "
            'the `X-Request-ID` header of every response). Lists are `{"items": [...], "next_cursor"}`: pass '
            "`next_cursor` back as `cursor` for the next page."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(health.router)
    app.include_router(photos.router)
    app.include_router(search.router)
    app.include_router(moderation.router)
    app.include_router(embeddings.router)
    # Before the pages: their /static mount would otherwise answer for /static/docs too (the first mount wins).
    _serve_docs(app)
    pages.install(app)

    errors.install(app)
    openapi.install(app, _vector_dimension)

    app.add_middleware(ReadYourWritesMiddleware)
    return app


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ReadYourWritesMiddleware:
    """After a key's successful write, its searches read the primary for a while (services.search.note_write).

    Plain ASGI (it reads the status line as it goes out): Starlette's BaseHTTPMiddleware would cost every request
    a task and a stream copy of its response for a check that needs only the status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or _is_search(scope["path"]):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def note_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, note_status)
        principal = scope.get("state", {}).get("principal")
        if status and status[0] < 400 and principal is not None:
            note_write(principal)


def _is_search(path: str) -> bool:
    """POSTs that only read: image and vector search, query embeddings."""
    return path.startswith(("/v1/search", "/v1/embeddings"))


def _serve_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the app's own static files, so they work without internet."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=_docs_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


app = create_app()
