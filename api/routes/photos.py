"""Uploads, status, thumbnails and deletion of photos."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import func
from sqlalchemy.orm import Session

from api.auth import AdminPrincipal, CuratorPrincipal, UploadPrincipal, ViewerPrincipal
from api.deps import SessionDep, SettingsDep
from api.metrics import UPLOADS
from api.presenters import photo_out
from api.regions import RegionHeader, RegionParam, resolve_region
from api.schemas import ErrorOut, PhotoOut, PhotoPage, UploadOut
from api.uploads import parse_image_upload
from core.images import ImageRejected, ImageTooLarge, UnsupportedFormat
from core.policy import DISCLAIMER
from core.settings import Settings
from core.storage import derivative_path, original_path, remove_quietly
from db import photos as photo_sql
from db.api_keys import Principal
from db.engine import session_scope
from db.models import Photo, PhotoStatus
from db.moderation import audit, photo_visibility, record_declaration
from workers.enqueue import QueueUnavailable, enqueue_ingest
from workers.intake import register_photo, screen_words

log = logging.getLogger(__name__)
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
        declarations = {
            name: _parse_bool(name, upload.fields.get(name)) for name in ("depicts_minor", "parental_consent")
        }
        body, created = await run_in_threadpool(
            _register_upload,
            settings,
            upload.file.path,
            upload.file.sha256,
            upload.file.size,
            upload.filename,
            upload.fields,
            str(request.base_url),
            declarations,
            principal,
        )
    finally:
        upload.file.discard()  # a no-op once the file was moved into storage
    UPLOADS.labels(result="accepted" if created else "duplicate").inc()
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    )


@router.get("", response_model=PhotoPage)
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
    if all_uploaders and not principal.allows("moderate"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "`all_uploaders` needs the `moderate` or `admin` scope")
    try:
        photos = photo_sql.list_photos(
            session,
            uploaded_by_key=None if all_uploaders else principal.key_id,
            status=status_,
            before=before,
            limit=limit + 1,
        )
    except LookupError as exc:  # the cursor photo was deleted meanwhile
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"{exc}; it may have been deleted, start over"
        ) from None
    base_url = str(request.base_url)
    page = photos[:limit]
    return PhotoPage(
        photos=[photo_out(p, base_url) for p in page], next_before=page[-1].id if len(photos) > limit else None
    )


def _parse_bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"`{name}` must be true or false, not {value[:20]!r}")


def _register_upload(
    settings: Settings,
    spooled: Path,
    sha256: str,
    size: int,
    filename: str | None,
    fields: dict[str, str],
    base_url: str,
    declarations: dict[str, bool | None],
    principal: Principal,
) -> tuple[UploadOut, bool]:
    try:
        result = register_photo(
            settings,
            spooled,
            sha256=sha256,
            size=size,
            original_name=_display_name(filename),
            title=fields.get("title"),
            photographer=fields.get("photographer"),
            depicts_minor=declarations["depicts_minor"],
            parental_consent=declarations["parental_consent"],
            actor=principal.actor,
            uploaded_by_key=principal.key_id or None,
        )
    except UnsupportedFormat as exc:
        UPLOADS.labels(result="rejected").inc()
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, exc.reason) from None
    except ImageTooLarge as exc:
        UPLOADS.labels(result="rejected").inc()
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, exc.reason) from None
    except ImageRejected as exc:
        UPLOADS.labels(result="rejected").inc()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, exc.reason) from None
    except QueueUnavailable as exc:
        UPLOADS.labels(result="queue_unavailable").inc()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; nothing was stored, retry later", headers={"Retry-After": "5"}
        ) from None
    photo = result.photo
    if not result.created:
        if not may_manage(principal, photo):
            # Someone else's photo: its id and metadata (it may be hidden by moderation) are not this caller's to see.
            raise HTTPException(
                status.HTTP_409_CONFLICT, "this image is already in the catalogue, uploaded with another key"
            )
        if any(value is not None for value in declarations.values()):
            photo = _declare_again(photo.id, declarations, principal)  # sent again with a declaration: not lost
    return UploadOut(**photo_out(photo, base_url).model_dump(), duplicate=not result.created), result.created


def _declare_again(photo_id: uuid.UUID, declarations: dict[str, bool | None], principal: Principal) -> Photo:
    with session_scope() as session:
        photo = photo_sql.get_photo(session, photo_id, for_update=True)
        if photo is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} was deleted meanwhile")
        record_declaration(
            session,
            photo,
            depicts_minor=declarations["depicts_minor"],
            parental_consent=declarations["parental_consent"],
            actor=principal.actor,
        )
        photo.updated_at = func.now()
        session.flush()
        session.refresh(photo)
        return photo


def _display_name(filename: str | None) -> str | None:
    if not filename:
        return None
    # Display only: strip control characters and any path the client sent, and cap the length.
    name = "".join(ch for ch in filename if ch.isprintable()).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:255] or None


def may_manage(principal: Principal, photo: Photo) -> bool:
    """Moderators and admins manage every photo; an uploader manages what its key uploaded."""
    return principal.allows("moderate") or (
        photo.uploaded_by_key is not None and photo.uploaded_by_key == principal.key_id
    )


def _managed_photo(session: Session, photo_id: uuid.UUID, principal: Principal, verb: str) -> Photo:
    """The photo, locked, if this caller may manage it: 404 when it does not exist, 403 when it is another key's."""
    photo = photo_sql.get_photo(session, photo_id, for_update=True)
    if photo is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} does not exist")
    if not may_manage(principal, photo):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"photo {photo_id} was uploaded with another key; only that key, a moderator or an admin may {verb} it",
        )
    return photo


def _load(session: SessionDep, photo_id: uuid.UUID) -> Photo:
    photo = photo_sql.get_photo(session, photo_id)
    if photo is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} does not exist")
    return photo


def _load_visible(session: SessionDep, photo_id: uuid.UUID, principal: Principal, region: str | None) -> Photo:
    """The photo, if this caller in this region may see it: the same rule as search, decided in SQL.

    Moderators see everything (they review it), and uploaders their own photos at every stage (they follow
    indexing and review). Others see a photo only once search would show it: 451 with the disclaimer for a
    minor without consent in a restricted region, 404 for anything not (yet) searchable.
    """
    photo = _load(session, photo_id)
    if may_manage(principal, photo):
        return photo
    visibility = photo_visibility(session, photo_id, region)
    if visibility == "restricted":
        raise HTTPException(status.HTTP_451_UNAVAILABLE_FOR_LEGAL_REASONS, DISCLAIMER)
    if visibility != "visible":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} does not exist")
    return photo


@router.get("/{photo_id}", response_model=PhotoOut, responses={404: {"model": ErrorOut}, 451: {"model": ErrorOut}})
def get_photo(
    photo_id: uuid.UUID,
    session: SessionDep,
    request: Request,
    principal: ViewerPrincipal,
    region: RegionParam = None,
    x_region: RegionHeader = None,
) -> PhotoOut:
    """The photo's metadata, indexing status (with the failure reason) and moderation state."""
    photo = _load_visible(session, photo_id, principal, resolve_region(region, x_region))
    return photo_out(photo, str(request.base_url))


@router.get(
    "/{photo_id}/thumbnail", response_class=FileResponse, responses={404: {"model": ErrorOut}, 451: {"model": ErrorOut}}
)
def get_thumbnail(
    photo_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: ViewerPrincipal,
    region: RegionParam = None,
    x_region: RegionHeader = None,
) -> FileResponse:
    """The 224x224 JPEG derivative, once the photo is indexed."""
    photo = _load_visible(session, photo_id, principal, resolve_region(region, x_region))
    path = derivative_path(settings, photo.id)
    if photo.status != PhotoStatus.INDEXED or not path.exists():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"the thumbnail of photo {photo_id} is not ready (status {photo.status})"
        )
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
    with session_scope() as session:
        photo = _managed_photo(session, photo_id, principal, "change")
        for name in body.model_fields_set:
            setattr(photo, name, getattr(body, name))
        photo.updated_at = func.now()
        if "title" in body.model_fields_set:
            screen_words(session, photo)
        session.flush()
        session.refresh(photo)
        return photo_out(photo, str(request.base_url))


@router.delete(
    "/{photo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"model": ErrorOut}, 404: {"model": ErrorOut}},
)
def delete_photo(photo_id: uuid.UUID, settings: SettingsDep, principal: CuratorPrincipal) -> Response:
    """Delete the photo: it leaves search when this returns; its files are removed after the commit.

    The key that uploaded it may delete it; moderators and admins may delete any photo.
    """
    with session_scope() as session:
        storage_key = _managed_photo(session, photo_id, principal, "delete").storage_key  # locked until the commit
        photo_sql.delete_photo(session, photo_id)
        audit(session, photo_id, principal.actor, "deleted", {}, "photo deleted")
    errors = remove_quietly(original_path(settings, storage_key), derivative_path(settings, photo_id))
    for error in errors:
        log.error("photo %s deleted but a file could not be removed: %s", photo_id, error)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{photo_id}/redrive", response_model=PhotoOut, responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}}
)
def redrive_photo(photo_id: uuid.UUID, request: Request, _principal: AdminPrincipal) -> PhotoOut:
    """Send a failed photo through indexing again, with a fresh attempt budget."""
    with session_scope() as session:
        photo = photo_sql.get_photo(session, photo_id)
        if photo is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"photo {photo_id} does not exist")
        if not photo_sql.reset_for_redrive(session, [photo_id]):
            raise HTTPException(status.HTTP_409_CONFLICT, f"photo {photo_id} is {photo.status}, not failed")
    try:
        enqueue_ingest(photo_id)
    except QueueUnavailable as exc:
        # The photo stays pending: the reconciler enqueues it when the queue is back.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; the reconciler will retry it", headers={"Retry-After": "5"}
        ) from None
    with session_scope() as session:
        refreshed = photo_sql.get_photo(session, photo_id)
        assert refreshed is not None
        return photo_out(refreshed, str(request.base_url))
