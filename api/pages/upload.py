"""The photographer's page `/upload`: several files at once with per-file progress and status, declarations, and
the key's own photos. One file per POST /upload/files (the upload script sends each on its own, with progress),
through services.photos.upload_photo exactly as POST /v1/photos; GET /upload/status follows them."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import SessionDep, SettingsDep
from api.metrics import UPLOADS
from api.routes.photos import parse_bool
from api.uploads import parse_image_upload
from core.images import ImageRejected
from db.models import Photo, PhotoStatus
from services import photos as photo_service
from services.errors import NotFound, Restricted
from services.queue import QueueUnavailable

from .auth import Uploader
from .render import PageRoute, redirect, render
from .search import photo_links
from .session import CSRF_FIELD, CSRF_HEADER, check_csrf

router = APIRouter(route_class=PageRoute, include_in_schema=False)

OWN_PAGE_SIZE = 24
UPLOAD_FIELDS = ("title", "photographer", "depicts_minor", "parental_consent", CSRF_FIELD)


def status_of_photo(photo: Photo) -> dict[str, Any]:
    """What the upload page shows of one photo while it is followed (JSON for the script)."""
    links = photo_links(photo.id, None)
    return {
        "id": str(photo.id),
        "status": str(photo.status),
        "error": photo.error,
        "moderation_status": str(photo.moderation_status),
        "page_url": links["page"],
        "thumbnail_url": links["thumbnail"] if photo.status == PhotoStatus.INDEXED else None,
    }


@router.get("/upload")
def upload_page(
    request: Request,
    session: SessionDep,
    principal: Uploader,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    done: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    """The upload form and the photos this key uploaded, newest first (GET /v1/photos)."""
    page = photo_service.list_photos(session, principal, status=None, cursor=cursor, limit=OWN_PAGE_SIZE)
    return render(
        request,
        "upload.html",
        {
            "active": "upload",
            "photos": [status_of_photo(p) | {"title": p.title, "name": p.original_name} for p in page.photos],
            "next_cursor": page.next_cursor,
            "done": done if done in {"uploaded", "duplicate", "deleted"} else None,
        },
    )


@router.post("/upload/files")
async def upload_file(request: Request, settings: SettingsDep, principal: Uploader) -> Response:
    """One file of an upload (multipart `file` + the form's fields), as POST /v1/photos.

    The upload script sends `Accept: application/json` and the CSRF token in X-CSRF-Token and gets the photo's
    status (202, or 200 for the same bytes again); a plain form post (no script) is sent back to /upload.
    """
    by_script = request.headers.get(CSRF_HEADER) is not None
    if by_script:  # refuse a forged request before reading its body
        check_csrf(request, request.headers.get(CSRF_HEADER))
    upload = await parse_image_upload(
        request, spool_dir=settings.home / "tmp", max_bytes=settings.max_upload_bytes, text_fields=UPLOAD_FIELDS
    )
    try:
        if not by_script:
            check_csrf(request, upload.fields.get(CSRF_FIELD))
        received = photo_service.Upload(
            spooled=upload.file.path,
            sha256=upload.file.sha256,
            size=upload.file.size,
            filename=upload.filename,
            title=upload.fields.get("title"),
            photographer=upload.fields.get("photographer"),
            depicts_minor=parse_bool("depicts_minor", upload.fields.get("depicts_minor")),
            parental_consent=parse_bool("parental_consent", upload.fields.get("parental_consent")),
        )
        try:
            result = await run_in_threadpool(photo_service.upload_photo, settings, received, principal)
        except ImageRejected:
            UPLOADS.labels(result="rejected").inc()
            raise
        except QueueUnavailable:
            UPLOADS.labels(result="queue_unavailable").inc()
            raise
    finally:
        upload.file.discard()  # a no-op once the file was moved into storage
    UPLOADS.labels(result="accepted" if result.created else "duplicate").inc()
    if not by_script:
        return redirect("/upload?done=" + ("uploaded" if result.created else "duplicate"))
    body = status_of_photo(result.photo) | {"duplicate": not result.created, "name": upload.filename}
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK)


@router.get("/upload/status")
def upload_status(
    session: SessionDep,
    principal: Uploader,
    ids: Annotated[list[uuid.UUID], Query(alias="id", min_length=1, max_length=100)],
) -> JSONResponse:
    """The indexing status of photos being followed (the rules of GET /v1/photos/{id}); `missing` for a photo
    this key may not see or that was deleted."""
    photos: list[dict[str, Any]] = []
    for photo_id in ids:
        try:
            photos.append(status_of_photo(photo_service.load_visible(session, photo_id, principal, None)))
        except (NotFound, Restricted):
            photos.append({"id": str(photo_id), "status": "missing"})
    return JSONResponse({"photos": photos}, headers={"Cache-Control": "no-store"})
