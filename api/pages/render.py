"""Rendering: the Jinja2 environment, the context every page gets, and one route class that turns the service
layer's typed outcomes into error pages (or JSON for the upload script), the same statuses as the API's."""

from __future__ import annotations

import hashlib
import logging
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DBAPIError

from api.errors import image_status, status_of
from core.embedding import ModelUnavailableError
from core.images import ImageRejected
from core.policy import DISCLAIMER
from services.access import Principal
from services.errors import Restricted, ServiceError
from services.queue import QueueUnavailable

from .auth import SignInRequired, may, signed_in_principal
from .i18n import LANGUAGES, Translator, negotiate
from .session import LANG_COOKIE, CsrfRejected, csrf_token, finish

log = logging.getLogger(__name__)

API_DIR = Path(__file__).resolve().parents[1]
STATIC_DIR = API_DIR / "static"
templates = Jinja2Templates(directory=API_DIR / "templates")
templates.env.trim_blocks = True
templates.env.lstrip_blocks = True

# Pages load only what the app serves: no inline script, no third party (the thumbnails are ours too).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@cache
def _static_version(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]


def static_url(name: str) -> str:
    """/static/NAME?v=HASH: cached by browsers until the file changes."""
    return f"/static/{name}?v={_static_version(name)}"


def translator(request: Request) -> Translator:
    found: Translator | None = getattr(request.state, "translator", None)
    if found is None:
        found = Translator(negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")))
        request.state.translator = found
    return found


def home_page(principal: Principal) -> str:
    """The page a key is most likely to want: search, else upload, else the moderation queue."""
    if principal.allows("search"):
        return "/"
    if principal.allows("upload"):
        return "/upload"
    return "/moderation"


def here(request: Request) -> str:
    """This page's path and query, for `next` links (the sign-in page, the language switch)."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def safe_next(value: str | None, default: str = "/") -> str:
    """A same-site path to go to after a form: anything else (another host, a scheme, `//x`) goes to `default`."""
    if not value or len(value) > 2000 or any(ord(c) < 32 for c in value):
        return default
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme or parsed.netloc or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    return value


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    """A page from `template` with the common context: language, strings, the CSRF token, who is signed in."""
    t = translator(request)
    principal = signed_in_principal(request)
    page: dict[str, Any] = {
        "request": request,
        "t": t,
        "lang": t.language,
        "languages": LANGUAGES,
        "csrf": csrf_token(request),
        "principal": principal,
        "signed_in": principal is not None,
        "can": lambda scope: may(request, scope),
        "static": static_url,
        "here": here(request),
        "home": home_page(principal) if principal is not None else "/",
        "disclaimer": DISCLAIMER,
    }
    page.update(context or {})
    response = templates.TemplateResponse(request, template, page, status_code=status_code)
    response.headers["Cache-Control"] = "private, no-cache"
    response.headers["Vary"] = "Cookie, Accept-Language, X-Region"
    return response


def redirect(url: str) -> RedirectResponse:
    """303: the browser follows it with a GET (after a form)."""
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _failure(exc: Exception) -> tuple[int, str, dict[str, str]] | None:
    """The status, message and headers for an outcome a user can cause; None for a bug (a 500)."""
    if isinstance(exc, Restricted):
        return status.HTTP_451_UNAVAILABLE_FOR_LEGAL_REASONS, DISCLAIMER, {}
    if isinstance(exc, ServiceError):
        return status_of(exc), str(exc), {}
    if isinstance(exc, CsrfRejected):
        return status.HTTP_403_FORBIDDEN, "", {}
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    if isinstance(exc, RequestValidationError):
        messages = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body", "path", "form"))
            messages.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(messages), {}
    if isinstance(exc, ImageRejected):
        return image_status(exc), exc.reason, {}
    if isinstance(exc, QueueUnavailable):
        return status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; nothing was stored, retry later", {"Retry-After": "5"}
    if isinstance(exc, ModelUnavailableError):
        return status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), {}
    if isinstance(exc, DBAPIError):
        log.warning("database error on a page: %s", exc)
        return status.HTTP_503_SERVICE_UNAVAILABLE, "the database is unavailable; retry shortly", {"Retry-After": "2"}
    return None


def error_page(request: Request, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    t = translator(request)
    if not message:
        message = t("error.csrf") if code == status.HTTP_403_FORBIDDEN else t("error.generic")
    response = render(
        request,
        "error.html",
        {"status": code, "message": message, "restricted": code == status.HTTP_451_UNAVAILABLE_FOR_LEGAL_REASONS},
        status_code=code,
    )
    response.headers.update(headers or {})
    return response


class PageRoute(APIRoute):
    """A page's route: typed outcomes become error pages (JSON when the caller asked for JSON), signed-out
    browsers go to the sign-in page, first-visit cookies are set, and the server time is in Server-Timing."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handle(request)
            except SignInRequired:
                if _wants_json(request):
                    response = JSONResponse({"detail": "sign in first"}, status_code=status.HTTP_401_UNAUTHORIZED)
                else:
                    response = redirect("/signin?" + urllib.parse.urlencode({"next": here(request)}))
            except Exception as exc:
                failure = _failure(exc)
                if failure is None:
                    raise
                code, message, headers = failure
                if _wants_json(request):
                    response = JSONResponse({"detail": message or "the form has expired; reload the page"}, code)
                    response.headers.update(headers)
                else:
                    response = error_page(request, code, message, headers)
            finish(response, request)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
            return response

        return route
