"""Streaming multipart parsing with limits enforced while the body arrives, never after reading it all."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request, status
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget, ListTarget, ValueTarget
from streaming_form_data.validators import ValidationError

from api.validation import check_line_field, refuse_control_characters
from services.errors import InvalidRequest

MAX_TEXT_FIELD_CHARS = 1000
# UTF-8 takes up to 4 bytes a character: the byte cap stops a huge field early, the character cap is the rule.
MAX_TEXT_FIELD_BYTES = 4 * MAX_TEXT_FIELD_CHARS
MAX_PARTS = 20
# Fields that carry more than a name (a photo's description, the JSON query beside a search image), and may hold
# line breaks; a field that may repeat (tags) is capped for all its values together.
FIELD_LIMITS = {"description": 4000, "query": 8000}
MULTILINE_FIELDS = frozenset({"description", "query"})
MAX_LIST_FIELD_CHARS = 8000


class _TooLarge(Exception):
    pass


class _FieldTooLong(Exception):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(name)
        self.name = name
        self.limit = limit  # characters


def _field_cap(name: str, limit: int = MAX_TEXT_FIELD_CHARS) -> Callable[[bytes], None]:
    """A validator that stops a text field (all its parts together) at 4 bytes per allowed character, naming it."""
    seen = 0

    def validate(chunk: bytes) -> None:
        nonlocal seen
        seen += len(chunk)
        if seen > 4 * limit:
            raise _FieldTooLong(name, limit)

    return validate


class SpoolingFileTarget(BaseTarget):
    """Writes the `file` part to a temporary file, hashing and counting as it goes."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        super().__init__()
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-")
        self.path = Path(name)
        self._handle = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes
        self.parts_seen = 0

    def on_start(self) -> None:
        self.parts_seen += 1
        if self.parts_seen > 1:
            raise ValidationError("send exactly one `file` part", "file")

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _TooLarge()
        self._hash.update(chunk)
        self._handle.write(chunk)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass
class ParsedUpload:
    file: SpoolingFileTarget
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    lists: dict[str, list[str]] = field(default_factory=dict)  # fields that may repeat, each value in order


def _boundary(content_type: str) -> bytes:
    for piece in content_type.split(";"):
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart/form-data without a boundary")


async def parse_image_upload(
    request: Request,
    *,
    spool_dir: Path,
    max_bytes: int,
    text_fields: tuple[str, ...] = (),
    list_fields: tuple[str, ...] = (),
) -> ParsedUpload:
    """Parse a multipart body with one `file` part and a few short text fields (`list_fields` may repeat; all of
    a list field's values together are capped at MAX_LIST_FIELD_CHARS).

    413 as soon as the body passes the cap (or when Content-Length already says so), 400 for malformed
    or missing parts. The caller owns the returned temporary file and must `discard()` it.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "send the image as multipart/form-data with a `file` part"
        )
    declared = request.headers.get("content-length")
    # The body also carries boundaries and small fields: allow a little more than the file cap.
    body_cap = max_bytes + 64 * 1024
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Content-Length is not a number") from None
        if declared_bytes > body_cap:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than {max_bytes:,} bytes")

    target = SpoolingFileTarget(spool_dir, max_bytes)
    values = {
        name: ValueTarget(validator=_field_cap(name, FIELD_LIMITS.get(name, MAX_TEXT_FIELD_CHARS)))
        for name in text_fields
    }
    lists = {name: ListTarget(validator=_field_cap(name, MAX_LIST_FIELD_CHARS)) for name in list_fields}
    try:
        parser = StreamingFormDataParser(headers=request.headers)
        parser.register("file", target)
        for name, value_target in values.items():
            parser.register(name, value_target)
        for name, list_target in lists.items():
            parser.register(name, list_target)
        delimiter = b"--" + _boundary(content_type)
        received = 0
        parts = 0
        tail = b""
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_cap:
                raise _TooLarge()
            # Count part delimiters (carrying a tail across chunks) to refuse bodies of thousands of parts.
            window = tail + chunk
            parts += window.count(delimiter) - tail.count(delimiter)
            tail = window[-len(delimiter) :]
            if parts > MAX_PARTS + 1:
                raise HTTPException(
                    status.HTTP_400_BAD_REQUEST, f"too many parts in the multipart body (at most {MAX_PARTS})"
                )
            parser.data_received(chunk)
        target.close()
    except _TooLarge:
        target.discard()
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"the upload is larger than {max_bytes:,} bytes"
        ) from None
    except _FieldTooLong as exc:
        target.discard()
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"the `{exc.name}` field is longer than {exc.limit} characters",
        ) from None
    except ValidationError as exc:
        target.discard()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except HTTPException:
        target.discard()
        raise
    except Exception as exc:  # noqa: BLE001 - the parser raises plain exceptions on malformed bodies
        target.discard()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}") from None

    if target.parts_seen == 0 or target.size == 0:
        target.discard()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the request has no `file` part, or it is empty")
    fields: dict[str, str] = {}
    for name, value_target in values.items():
        raw = value_target.value
        if raw:
            text = _field_text(target, name, raw, FIELD_LIMITS.get(name, MAX_TEXT_FIELD_CHARS))
            if text:
                fields[name] = text
    repeated: dict[str, list[str]] = {}
    for name, list_target in lists.items():
        texts = [_field_text(target, name, raw, MAX_LIST_FIELD_CHARS) for raw in list_target.value]
        if any(texts):
            repeated[name] = [text for text in texts if text]
    return ParsedUpload(file=target, fields=fields, filename=target.multipart_filename, lists=repeated)


def _field_text(target: SpoolingFileTarget, name: str, raw: bytes, limit: int) -> str:
    """A text field's value: UTF-8 (else 400), no control characters (line breaks only in multi-line fields) and
    at most `limit` characters (else 422). The spooled file is discarded on refusal."""
    try:
        decoded = raw.decode("utf-8")
        if name in MULTILINE_FIELDS:
            text = refuse_control_characters(decoded, allow_whitespace_controls=True).strip()
        else:
            text = check_line_field(name, decoded).strip()
    except UnicodeDecodeError:
        target.discard()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"the `{name}` field is not UTF-8") from None
    except ValueError as exc:
        target.discard()
        raise InvalidRequest(str(exc) if str(exc).startswith("`") else f"`{name}` {exc}") from None
    if len(text) > limit:
        target.discard()
        raise InvalidRequest(f"`{name}` is longer than {limit} characters")
    return text
