"""Hooks for the OpenAPI fuzzer (tests/test_openapi_fuzz.py loads them with SCHEMATHESIS_HOOKS).

A JSON schema cannot say "bytes that decode as an image", so a fuzzer left alone sends random bytes or a PDF as a
schema-valid `file` and the API rightly answers 415. For the media types the upload schema names, real images of
random size and colour are drawn instead: uploads are accepted, indexed by the worker, and the photo routes see real
photos. Undecodable and foreign bytes are still sent in negative mode, and tests/test_hostile_input.py covers them.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _encoded(fmt: str):  # type: ignore[no-untyped-def]
    def encode(width: int, height: int, red: int, green: int, blue: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (red, green, blue)).save(buffer, format=fmt)
        return buffer.getvalue()

    channel = st.integers(0, 255)
    return st.builds(encode, st.integers(1, 48), st.integers(1, 48), channel, channel, channel)


for _media_type, _format in (
    ("image/jpeg", "JPEG"),
    ("image/png", "PNG"),
    ("image/webp", "WEBP"),
    ("image/gif", "GIF"),
    ("image/tiff", "TIFF"),
    ("image/bmp", "BMP"),
):
    schemathesis.openapi.media_type(_media_type, _encoded(_format))


# A range filter whose start is not before its end is a user mistake the API answers with 422 and a message
# ("`taken_after` must be earlier than `taken_before`"); a JSON schema cannot relate two fields, so such
# cases are left out of the positive tests here (tests/test_search_api.py checks the 422).
_RANGES = (("taken_after", "taken_before"), ("uploaded_after", "uploaded_before"))


def _ordered_ranges(values: object) -> bool:
    if not isinstance(values, dict):
        return True
    for start, end in _RANGES:
        first, last = values.get(start), values.get(end)
        if isinstance(first, str) and isinstance(last, str):
            try:
                if _moment(first) >= _moment(last):
                    return False
            except ValueError:
                continue  # not a date: the schema or the service refuses it, as a fuzzer should see
    return True


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@schemathesis.hook
def filter_query(ctx, query):  # type: ignore[no-untyped-def]
    return _ordered_ranges(query)


@schemathesis.hook
def filter_body(ctx, body):  # type: ignore[no-untyped-def]
    return _ordered_ranges(body)
