"""Uploads, status, thumbnails, edits and deletion of photos over HTTP: the rules are in services/photos.py."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator

from api.auth import AdminPrincipal, CuratorPrincipal, UploadPrincipal, ViewerPrincipal
from api.deps import SessionDep, SettingsDep
from api.metrics import UPLOADS
from api.presenters import base_url, photo_out
from api.regions import ViewerRegion
from api.schemas import ErrorOut, PhotoOut, PhotoPage, UploadOut
from api.uploads import parse_image_upload
from core.images import ImageRejected
from db.engine import session_scope
from services import photos as photo_service
from services.queue import QueueUnavailable

router = APIRouter(prefix="/v1/photos", tags=["photos"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG, WebP, GIF, TIFF or BMP",
                        },
                        "title": {"type": "string", "maxLength": 1000},
                        "photographer": {"type": "string", "maxLength": 1000},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadOut,
    responses={
        200: {"model": UploadOut, "description": "the same bytes were uploaded before"},
        400: {"model": ErrorOut},
        409: {"model": ErrorOut},
        413: {"model": ErrorOut},
        415: {"model": ErrorOut},
        503: {"model": ErrorOut},
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_photo(request: Request, settings: SettingsDep, principal: UploadPrincipal) -> JSONResponse:
    """Accept an image, store it under a generated name, register it as `pending` and queue it for indexing.

    Optional fields: `title`, `photographer`, and the photographer's declarations `depicts_minor`
    and `parental_consent` (true/false).
    """
    upload = await parse_image_upload(
        request,
        spool_dir=settings.home / "tmp",
        max_bytes=settings.max_upload_bytes,
        text_fields=("title", "photographer", "depicts_minor", "parental_consent"),
    )
    try:
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
    body = UploadOut(**photo_out(result.photo, base_url(request)).model_dump(), duplicate=not result.created)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK
    )


def parse_bool(name: str, value: str | None) -> bool | None:
    """A form field's true/false (also 1/0, yes/no); None when absent; 422 for anything else."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"`{name}` must be true or false, not {value[:20]!r}")


@router.get("", response_model=PhotoPage, responses={403: {"model": ErrorOut}, 422: {"model": ErrorOut}})
def list_photos(
    session: SessionDep,
    request: Request,
    principal: CuratorPrincipal,
    status_: Annotated[
        Literal["pending", "processing", "indexed", "failed"] | None,
        Query(alias="status", description="only photos in this indexing status"),
    ] = None,
    before: Annotated[uuid.UUID | None, Query(description="`next_before` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="photos per page, 1 to 100")] = 50,
    all_uploaders: Annotated[bool, Query(description="moderators and admins: every uploader's photos")] = False,
) -> PhotoPage:
    """The photos this key uploaded, newest first, with their indexing and moderation status."""
    page = photo_service.list_photos(
        session, principal, status=status_, before=before, limit=limit, all_uploaders=all_uploaders
    )
    base = base_url(request)
    return PhotoPage(photos=[photo_out(p, base) for p in page.photos], next_before=page.next_before)


@router.get("/{photo_id}", response_model=PhotoOut, responses={404: {"model": ErrorOut}, 451: {"model": ErrorOut}})
def get_photo(
    photo_id: uuid.UUID, session: SessionDep, request: Request, principal: ViewerPrincipal, region: ViewerRegion
) -> PhotoOut:
    """The photo's metadata, indexing status (with the failure reason) and moderation state."""
    return photo_out(photo_service.load_visible(session, photo_id, principal, region), base_url(request))


@router.get(
    "/{photo_id}/thumbnail",
    response_class=FileResponse,
    responses={404: {"model": ErrorOut}, 451: {"model": ErrorOut}},
)
def get_thumbnail(
    photo_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: ViewerPrincipal, region: ViewerRegion
) -> FileResponse:
    """The 224x224 JPEG derivative, once the photo is indexed."""
    path = photo_service.thumbnail_file(session, settings, photo_id, principal, region)
    # Revalidated on every view: a moderation decision or a deletion takes effect at once, also in browsers.
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache", "Vary": "Authorization, X-Region"}
    )


class PhotoChange(BaseModel):
    title: str | None = Field(None, max_length=1000)
    photographer: str | None = Field(None, max_length=1000)
    visibility: Literal["public", "private"] | None = Field(None, description="private: kept, but never in search")

    @model_validator(mode="after")
    def _changes_something(self) -> PhotoChange:
        if not self.model_fields_set:
            raise ValueError("set at least one of title, photographer, visibility")
        if "visibility" in self.model_fields_set and self.visibility is None:
            raise ValueError("visibility must be public or private, not null")
        return self


@router.patch("/{photo_id}", response_model=PhotoOut, responses={403: {"model": ErrorOut}, 404: {"model": ErrorOut}})
def update_photo(photo_id: uuid.UUID, body: PhotoChange, request: Request, principal: CuratorPrincipal) -> PhotoOut:
    """Edit the title or photographer, or make the photo private (out of search at once) or public again.

    The key that uploaded it, a moderator or an admin. A new title is screened by the query policy as at upload.
    """
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    with session_scope() as session:
        photo = photo_service.update_photo(session, photo_id, principal, changes)
        return photo_out(photo, base_url(request))


@router.delete(
    "/{photo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"model": ErrorOut}, 404: {"model": ErrorOut}},
)
def delete_photo(photo_id: uuid.UUID, settings: SettingsDep, principal: CuratorPrincipal) -> Response:
    """Delete the photo: it leaves search when this returns; its files are removed after the commit.

    The key that uploaded it may delete it; moderators and admins may delete any photo.
    """
    photo_service.delete_photo(settings, photo_id, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{photo_id}/redrive",
    response_model=PhotoOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def redrive_photo(photo_id: uuid.UUID, request: Request, settings: SettingsDep, _principal: AdminPrincipal) -> PhotoOut:
    """Send a failed photo through indexing again, with a fresh attempt budget."""
    try:
        photo_service.redrive_one(settings, photo_id)
    except QueueUnavailable as exc:
        # The photo stays pending: the reconciler enqueues it when the queue is back.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; the reconciler will retry it", headers={"Retry-After": "5"}
        ) from None
    with session_scope() as session:
        return photo_out(photo_service.load_visible(session, photo_id, _principal, None), base_url(request))
