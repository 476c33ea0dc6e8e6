"""Hooks for the OpenAPI fuzzer (tests/test_openapi_fuzz.py loads them with SCHEMATHESIS_HOOKS).

A JSON schema cannot say "bytes that decode as an image", so a fuzzer left alone sends random bytes or a PDF as a
schema-valid `file` and the API rightly answers 415. For the media types the upload schema names, real images of
random size and colour are drawn instead: uploads are accepted, indexed by the worker, and the photo routes see real
photos. Undecodable and foreign bytes are still sent in negative mode, and tests/test_hostile_input.py covers them.
"""

from __future__ import annotations

import io

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
