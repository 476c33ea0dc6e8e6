"""Uploads, status, thumbnails, edits and deletion of photos over HTTP: the rules are in services/photos.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.auth import AdminPrincipal, CuratorPrincipal, UploadPrincipal, ViewerPrincipal
from api.deps import SessionDep, SettingsDep
from api.metrics import UPLOADS
from api.presenters import base_url, photo_out
from api.regions import ViewerRegion
from api.schemas import ErrorOut, PhotoOut, PhotoPage, UploadOut
from api.uploads import FIELD_LIMITS, MAX_LIST_FIELD_CHARS, MAX_TEXT_FIELD_CHARS, ParsedUpload, parse_image_upload
from api.validation import FREE_TEXT_PATTERN, LINE_PATTERN, FreeText, LineText, unset_means_unchanged
from core.images import ImageRejected
from core.metadata import MAX_DESCRIPTION, MAX_TAGS
from core.storage import ObjectRead
from db.engine import session_scope
from services import photos as photo_service
from services.errors import InvalidRequest
from services.pages import CURSOR_PATTERN
from services.queue import QueueUnavailable

router = APIRouter(prefix="/v1/photos", tags=["photos"])


IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/tiff", "image/bmp")


def _multipart_body(*, with_fields: bool) -> dict[str, object]:
    """The multipart schema, written out: FastAPI cannot see the streamed parts (api/uploads.py parses them)."""
    properties: dict[str, object] = {
        "file": {
            "type": "string",
            "format": "binary",
            "minLength": 1,
            "description": "JPEG, PNG, WebP, GIF (first frame), TIFF or BMP, decided from the bytes",
        }
    }
    if with_fields:
        text = {"type": "string", "maxLength": MAX_TEXT_FIELD_CHARS, "pattern": LINE_PATTERN}
        properties |= {
            "title": {**text, "description": "shown in results; screened by the query policy"},
            "photographer": {**text, "description": "the photographer's name"},
            "description": {
                "type": "string",
                "maxLength": FIELD_LIMITS["description"],
                "pattern": FREE_TEXT_PATTERN,
                "description": "a caption (line breaks allowed); the file's IPTC/XMP caption is used when absent",
            },
            # One string in the schema (commas separate tags); the field may also be repeated, one tag or several
            # each time, which a JSON schema of a multipart body cannot say without describing it as an array.
            "tags": {
                "type": "string",
                "maxLength": MAX_LIST_FIELD_CHARS,
                "pattern": LINE_PATTERN,
                "description": "keywords, comma-separated (or the field repeated); added to the file's IPTC/XMP "
                f"keywords (at most {MAX_TAGS}, stored in lower case)",
            },
            "depicts_minor": {"type": "boolean", "description": "the photographer's declaration"},
            "parental_consent": {"type": "boolean", "description": "the photographer's declaration"},
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties},
                    "encoding": {"file": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}},
                }
            },
        }
    }


UPLOAD_BODY = _multipart_body(with_fields=True)
IMAGE_QUERY_BODY = _multipart_body(with_fields=False)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UploadOut,
    responses={
        200: {
            "model": UploadOut,
            "description": "the same bytes were uploaded before (by this key): `id` is that photo; a new title or "
            "photographer sent with them updates it (listed in `updated`)",
        },
        400: {"model": ErrorOut, "description": "malformed multipart, no `file` part, or bytes that do not decode"},
        409: {"model": ErrorOut, "description": "these bytes were uploaded with another key"},
        413: {"model": ErrorOut, "description": "the body, a text field or the image's pixel count is over the cap"},
        415: {"model": ErrorOut, "description": "not multipart, or not an image in an accepted format"},
        503: {"model": ErrorOut, "description": "the queue or the database is unavailable; nothing was stored"},
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_photo(request: Request, settings: SettingsDep, principal: UploadPrincipal) -> JSONResponse:
    """Accept an image, store it under a generated name, register it as `pending` and queue it for indexing.

    Optional fields: `title`, `photographer`, `description`, `tags` (comma-separated or repeated), and the
    photographer's declarations `depicts_minor` and `parental_consent` (true/false). The worker reads the rest
    from the file (capture time, camera, lens, IPTC/XMP caption and keywords); what is sent here wins.
    """
    upload = await parse_image_upload(
        request,
        spool_dir=settings.home / "tmp",
        max_bytes=settings.max_upload_bytes,
        text_fields=("title", "photographer", "description", "depicts_minor", "parental_consent"),
        list_fields=("tags",),
    )
    try:
        received = photo_service.Upload(
            spooled=upload.file.path,
            sha256=upload.file.sha256,
            size=upload.file.size,
            filename=upload.filename,
            title=upload.fields.get("title"),
            photographer=upload.fields.get("photographer"),
            description=upload.fields.get("description"),
            tags=tuple(upload.lists.get("tags", ())),
            depicts_minor=_declaration(upload, "depicts_minor"),
            parental_consent=_declaration(upload, "parental_consent"),
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
    body = UploadOut(
        **photo_out(result.photo, base_url(request)).model_dump(), duplicate=not result.created, updated=result.updated
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED if result.created else status.HTTP_200_OK
    )


def _declaration(upload: ParsedUpload, name: str) -> bool | None:
    """A declaration field: true or false; a field sent empty is a mistake (the schema says boolean), not "unsaid"."""
    if name in upload.empty:
        upload.file.discard()
        raise InvalidRequest(f"`{name}` must be true or false, not empty")
    return parse_bool(name, upload.fields.get(name))


def parse_bool(name: str, value: str | None) -> bool | None:
    """A form field's true or false; None when absent; 422 for anything else."""
    if value is None:
        return None
    # The schema says boolean: a form field spells it `true` or `false`, nothing else.
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise InvalidRequest(f"`{name}` must be true or false, not {value[:20]!r}")


@router.get("", response_model=PhotoPage)
def list_photos(
    session: SessionDep,
    request: Request,
    principal: CuratorPrincipal,
    status_: Annotated[
        Literal["pending", "processing", "indexed", "failed"] | None,
        Query(alias="status", description="only photos in this indexing status"),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, max_length=49, description="`next_cursor` of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="photos per page, 1 to 100")] = 50,
    all_uploaders: Annotated[bool, Query(description="moderators and admins: every uploader's photos")] = False,
) -> PhotoPage:
    """The photos this key uploaded, newest first, with their indexing and moderation status."""
    page = photo_service.list_photos(
        session, principal, status=status_, cursor=cursor, limit=limit, all_uploaders=all_uploaders
    )
    base = base_url(request)
    return PhotoPage(items=[photo_out(p, base) for p in page.photos], next_cursor=page.next_cursor)


NOT_VISIBLE = {"model": ErrorOut, "description": "no such photo, or not one this caller may see (yet)"}
RESTRICTED = {"model": ErrorOut, "description": "the minors law hides it in the viewer's region: the disclaimer"}


@router.get("/{photo_id}", response_model=PhotoOut, responses={404: NOT_VISIBLE, 451: RESTRICTED})
def get_photo(
    photo_id: uuid.UUID, session: SessionDep, request: Request, principal: ViewerPrincipal, region: ViewerRegion
) -> PhotoOut:
    """The photo's metadata, indexing status (with the failure reason) and moderation state."""
    return photo_out(photo_service.load_visible(session, photo_id, principal, region), base_url(request))


THUMBNAIL_HEADERS = {"Cache-Control": "private, no-cache", "Vary": "Authorization, X-Region"}


@router.get(
    "/{photo_id}/thumbnail",
    response_class=FileResponse,
    responses={
        200: {
            "description": "the 224x224 JPEG",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        307: {"description": "with WITHSENSE_S3_THUMBNAILS=redirect: a presigned URL of the JPEG, valid briefly"},
        404: {"model": ErrorOut, "description": "no such photo, not one this caller may see, or not indexed yet"},
        451: RESTRICTED,
        503: {"model": ErrorOut, "description": "the photo store is unavailable"},
    },
)
def get_thumbnail(
    photo_id: uuid.UUID, session: SessionDep, principal: ViewerPrincipal, region: ViewerRegion
) -> Response:
    """The 224x224 JPEG derivative, once the photo is indexed (the same visibility rules as the photo itself)."""
    stored = photo_service.thumbnail(session, photo_id, principal, region)
    # Revalidated on every view: a moderation decision or a deletion takes effect at once, also in browsers.
    return thumbnail_response(stored, THUMBNAIL_HEADERS, vary="Authorization, X-Region")


def thumbnail_response(stored: ObjectRead, headers: dict[str, str], *, vary: str) -> Response:
    """The derivative as the store serves it: a local file, a stream from the bucket, or a redirect to a
    presigned URL (never cached: the URL is a bearer token until it expires, WITHSENSE_S3_PRESIGN_TTL_S)."""
    if stored.redirect_url:
        return RedirectResponse(
            stored.redirect_url,
            status_code=status.HTTP_307_TEMPORARY_REDIRECT,
            headers={"Cache-Control": "no-store", "Vary": vary},
        )
    if stored.path is not None:
        return FileResponse(stored.path, media_type="image/jpeg", headers=headers)
    assert stored.chunks is not None
    streamed = dict(headers)
    if stored.size:
        streamed["Content-Length"] = str(stored.size)
    return StreamingResponse(_streamed(stored.chunks, stored.close), media_type="image/jpeg", headers=streamed)


def _streamed(chunks: Iterable[bytes], close: Callable[[], object] | None) -> Iterator[bytes]:
    """The object's chunks as they arrive from the store; its connection is released however the response ends."""
    try:
        yield from chunks
    finally:
        if close is not None:
            close()


class PhotoChange(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=unset_means_unchanged(
            "visibility", at_least_one=("title", "photographer", "description", "tags", "visibility")
        ),
    )

    title: Annotated[LineText, Field(max_length=MAX_TEXT_FIELD_CHARS)] | None = Field(
        None, description="null clears it"
    )
    photographer: Annotated[LineText, Field(max_length=MAX_TEXT_FIELD_CHARS)] | None = Field(
        None, description="null clears it"
    )
    description: Annotated[FreeText, Field(max_length=MAX_DESCRIPTION)] | None = Field(
        None, description="a caption (null clears it)"
    )
    tags: list[Annotated[LineText, Field(max_length=MAX_TEXT_FIELD_CHARS)]] | None = Field(
        None,
        max_length=MAX_TAGS,
        description="the photo's tags, replacing the old ones (each may be comma-separated; null or [] clears them)",
    )
    # Not nullable: a photo is always public or private (a default of None means "not sent").
    visibility: Literal["public", "private"] = Field(
        None,  # type: ignore[arg-type]
        description="private: kept, but never in search",
    )

    @model_validator(mode="after")
    def _changes_something(self) -> PhotoChange:
        if not self.model_fields_set:
            raise ValueError("set at least one of title, photographer, description, tags, visibility")
        return self


MANAGE_FORBIDDEN = {"model": ErrorOut, "description": "another key's photo (only it, a moderator or an admin)"}


@router.patch("/{photo_id}", response_model=PhotoOut, responses={403: MANAGE_FORBIDDEN, 404: NOT_VISIBLE})
def update_photo(photo_id: uuid.UUID, body: PhotoChange, request: Request, principal: CuratorPrincipal) -> PhotoOut:
    """Edit the title, photographer, description or tags, or make the photo private (out of search at once) or
    public again.

    The key that uploaded it, a moderator or an admin. New words (title, description, tags) are screened by the
    query policy as at upload; keyword search finds the new words at once.
    """
    changes = {name: _blank_is_none(getattr(body, name)) for name in body.model_fields_set}
    with session_scope() as session:
        photo = photo_service.update_photo(session, photo_id, principal, changes)
        return photo_out(photo, base_url(request))


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value.strip() if isinstance(value, str) else value


@router.delete(
    "/{photo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: MANAGE_FORBIDDEN, 404: NOT_VISIBLE},
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
    responses={
        404: {"model": ErrorOut, "description": "no such photo"},
        409: {"model": ErrorOut, "description": "the photo has not failed"},
        503: {
            "model": ErrorOut,
            "description": "the queue is unavailable (the photo stays pending for the reconciler)",
        },
    },
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
