"""One mapping from the service layer's typed outcomes to HTTP statuses, registered on the app."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from core.embedding import ModelUnavailableError
from core.images import ImageRejected, ImageTooLarge, UnsupportedFormat
from core.storage import StorageUnavailable
from services.errors import Conflict, Forbidden, InvalidRequest, NotFound, Restricted, ServiceError, Unavailable
from services.queue import QueueUnavailable

log = logging.getLogger(__name__)

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


def install(app: FastAPI) -> None:
    """Register the handlers: every typed outcome of a service answers with its status and its message."""

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        code = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    @app.exception_handler(ImageRejected)
    async def _image_rejected(_request: Request, exc: ImageRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=image_status(exc))

    @app.exception_handler(QueueUnavailable)
    async def _queue_unavailable(_request: Request, exc: QueueUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"{exc}; nothing was stored, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StorageUnavailable)
    async def _storage_unavailable(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        log.warning("photo store unavailable: %s", exc)
        return JSONResponse(
            {"detail": "the photo store is unavailable; nothing was stored, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(ModelUnavailableError)
    async def _model_unavailable(_request: Request, exc: ModelUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
