"""The web pages: search gallery, photo page, photographer uploads, moderation queue and sign-in.

Server-rendered Jinja2 templates (api/templates) over the same service layer as the API's routes, with a little
JavaScript that enhances them (api/static); served by the same FastAPI app, never in the OpenAPI schema.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import account, moderation, photos, search, upload
from .render import STATIC_DIR


def install(app: FastAPI) -> None:
    """Add the pages' routes and their static files (CSS, JS) to the app."""
    for module in (search, photos, upload, moderation, account):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
