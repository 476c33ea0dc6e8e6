"""One mapping from the service layer's typed outcomes to HTTP statuses, registered on the app, and the guard that
answers every unexpected error with a request id instead of a traceback."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.embedding import ModelUnavailableError
from core.images import ImageRejected, ImageTooLarge, UnsupportedFormat
from services.errors import Conflict, Forbidden, InvalidRequest, NotFound, Restricted, ServiceError, Unavailable
from services.queue import QueueUnavailable

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A client's own request id is kept when it is a plain token (it goes into logs and back into a header).
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# Postgres gone or restarting: the client retries (RELIABILITY.md item 22).
_DATABASE_DOWN_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08006", "08003", "08001"})

STATUS_OF: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Forbidden, status.HTTP_403_FORBIDDEN),
    (Restricted, status.HTTP_451_UNAVAILABLE_FOR_LEGAL_REASONS),
    (Conflict, status.HTTP_409_CONFLICT),
    (InvalidRequest, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (Unavailable, status.HTTP_503_SERVICE_UNAVAILABLE),
)


def status_of(error: ServiceError) -> int:
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code
    return status.HTTP_400_BAD_REQUEST


def image_status(error: ImageRejected) -> int:
    """415 for a format outside the allow-list, 413 for too many pixels, 400 for bytes that do not decode."""
    if isinstance(error, UnsupportedFormat):
        return status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    if isinstance(error, ImageTooLarge):
        return status.HTTP_413_CONTENT_TOO_LARGE
    return status.HTTP_400_BAD_REQUEST


def validation_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    """Where and what, for each problem; the input is not echoed (it may be huge, or not even encodable)."""
    return [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]


def validation_message(errors: list[dict[str, object]]) -> str:
    """One sentence for people: `q: must not contain control characters (U+0000 at position 3)`."""
    messages = []
    for error in errors:
        loc = error["loc"]
        parts = loc if isinstance(loc, list) else []
        where = ".".join(str(part) for part in parts if part not in ("query", "body", "path", "header"))
        message = str(error["msg"]).removeprefix("Value error, ")
        messages.append(f"{where}: {message}" if where else message)
    return "; ".join(messages) or "the request is not valid"


def _unavailable(detail: str, retry_after_s: int) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after_s)},
    )


def install(app: FastAPI) -> None:
    """Register the handlers: every typed outcome of a service answers with its status and its message."""
    app.add_middleware(RequestIdMiddleware)

    allowed_methods = _allowed_methods(app)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names the methods of the first route that matched the path; a path has several routes.
            allow = allowed_methods(request.url.path)
            if allow:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers={"Allow": allow})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        return JSONResponse(
            {"detail": validation_message(errors), "errors": errors},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        code = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
        body: dict[str, object] = {"detail": str(exc)}
        if code == status.HTTP_422_UNPROCESSABLE_CONTENT:
            body["errors"] = []  # the same shape as a schema's refusal: a rule refused the value as a whole
        return JSONResponse(body, status_code=code, headers=headers)

    @app.exception_handler(ImageRejected)
    async def _image_rejected(_request: Request, exc: ImageRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=image_status(exc))

    @app.exception_handler(QueueUnavailable)
    async def _queue_unavailable(_request: Request, exc: QueueUnavailable) -> JSONResponse:
        return _unavailable(f"{exc}; nothing was stored, retry later", 5)

    @app.exception_handler(ModelUnavailableError)
    async def _model_unavailable(_request: Request, exc: ModelUnavailableError) -> JSONResponse:
        return _unavailable(str(exc), Unavailable.retry_after_s)

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return _unavailable("the database is unavailable; retry shortly", 2)

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated or getattr(exc.orig, "sqlstate", "") in _DATABASE_DOWN_SQLSTATES:
            return _unavailable("the database is unavailable; retry shortly", 2)
        return internal_error(request_id_of(request.scope), exc, request.method, request.url.path)


def _allowed_methods(app: FastAPI) -> Callable[[str], str]:
    """path -> `Allow` value: every method of every route whose path template matches (built on first use)."""
    table: list[tuple[re.Pattern[str], set[str]]] = []

    def allowed(path: str) -> str:
        if not table:
            from api.openapi import api_routes

            for template, route in api_routes(app):
                pattern = re.compile(
                    "".join(
                        "[^/]+" if part.startswith("{") else re.escape(part)
                        for part in re.split(r"(\{[^}]+\})", template)
                    )
                    + "$"
                )
                table.append((pattern, set(route.methods or ())))
        methods = set().union(*(methods for pattern, methods in table if pattern.match(path)))
        return ", ".join(sorted(methods))

    return allowed


def request_id_of(scope: Scope) -> str:
    """The id RequestIdMiddleware gave this request (a new one if it did not run)."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = uuid.uuid4().hex
    return str(state["request_id"])


def internal_error(request_id: str, exc: BaseException, method: str, path: str) -> JSONResponse:
    """Log an unexpected error with its traceback and the request id; the client gets only the id."""
    log.error("request %s %s %s failed: %s", request_id, method, path, type(exc).__name__, exc_info=exc)
    return JSONResponse(
        {"detail": "internal error", "request_id": request_id},
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        headers={REQUEST_ID_HEADER: request_id},
    )


class RequestIdMiddleware:
    """Every response carries X-Request-ID (the client's, when it sent a plain one); an exception that no handler
    took is logged with that id and answered 500 `{"detail": "internal error", "request_id": ...}`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (value.decode("latin-1") for name, value in scope.get("headers", ()) if name == b"x-request-id"), ""
        )
        request_id = incoming if _CLIENT_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: logged with the id, never silent
            response = internal_error(request_id, exc, scope.get("method", ""), scope.get("path", ""))
            if started:
                return  # the status line is out: nothing truthful can be sent any more; the log has the error
            await response(scope, receive, send)
