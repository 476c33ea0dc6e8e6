"""Image loading shared by the API (validation at upload) and the workers (decode, 224x224 derivative).

Everything here is pure Pillow on bytes or paths: no database, no HTTP.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Truncated files must fail loudly rather than decode into half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

MIME_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
}


class ImageRejected(ValueError):
    """The bytes are not an image we accept. `reason` is safe to show to the uploader."""

    def __init__(self, reason: str, *, code: str = "invalid_image") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class UnsupportedFormat(ImageRejected):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="unsupported_format")


class ImageTooLarge(ImageRejected):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="too_many_pixels")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding the pixels."""

    format: str
    width: int
    height: int
    frames: int

    @property
    def mime_type(self) -> str:
        return MIME_TYPES.get(self.format, "application/octet-stream")


def _open(source: BinaryIO | Path, allowed_formats: Iterable[str], max_pixels: int) -> Image.Image:
    allowed = [fmt.upper() for fmt in allowed_formats]
    # Pillow only warns between 1x and 2x its cap; we want one hard limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=allowed)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLarge(f"image has too many pixels (limit {max_pixels:,}): {exc}") from exc
        except UnidentifiedImageError as exc:
            raise UnsupportedFormat(
                "the file is not an image in an accepted format "
                f"({', '.join(sorted(allowed))}); the format is read from the bytes, not the name"
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            # Recognised signature, unreadable header: a broken or disguised file.
            raise ImageRejected(f"the image header cannot be read: {exc}", code="corrupt_image") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    return image


def inspect_image(
    data: bytes | Path,
    *,
    allowed_formats: Iterable[str] = DEFAULT_ALLOWED_FORMATS,
    max_pixels: int = 100_000_000,
) -> ImageInfo:
    """Identify an upload from its bytes: format, size and frame count, checked against the caps.

    Only the header is parsed here; the pixels are decoded by the worker.
    """
    source: BinaryIO | Path = io.BytesIO(data) if isinstance(data, bytes) else data
    with _open(source, allowed_formats, max_pixels) as image:
        fmt = (image.format or "").upper()
        if fmt not in {f.upper() for f in allowed_formats}:
            raise UnsupportedFormat(f"format {fmt or 'unknown'} is not accepted")
        width, height = image.width, image.height
        if _exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:  # shown rotated by 90 degrees: as the viewer sees it
            width, height = height, width
        return ImageInfo(format=fmt, width=width, height=height, frames=getattr(image, "n_frames", 1))


# EXIF orientations 5-8 turn the picture by 90 degrees (with or without a mirror), swapping width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError, SyntaxError):  # malformed EXIF: the picture is shown as stored
        return 1


def load_rgb(
    source: bytes | Path,
    *,
    allowed_formats: Iterable[str] = DEFAULT_ALLOWED_FORMATS,
    max_pixels: int = 100_000_000,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image into an upright RGB picture.

    The first frame of an animation, EXIF orientation applied, transparency composited on white.
    With `draft_size`, JPEGs are decoded at a reduced scale (DCT scaling) no smaller than that,
    which is several times faster for large photos that end up at 224x224 anyway.
    Raises ImageRejected for anything that cannot be decoded; never returns a partial image.
    """
    stream: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    image = _open(stream, allowed_formats, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            if draft_size and image.format == "JPEG":
                # draft() must be called before load(); it keeps the requested size as a floor.
                scale = draft_size / min(image.size)
                image.draft("RGB", (max(1, int(image.width * scale)), max(1, int(image.height * scale))))
            image.load()
            upright = _exif_transpose(image)
            return _to_rgb(upright)
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"the image cannot be decoded: {exc}", code="corrupt_image") from exc
    finally:
        image.close()


def _exif_transpose(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - malformed EXIF must not lose the photo; pixels are still fine
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        # 16/32-bit greyscale: rescale to 8 bits rather than clip to white.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    if image.mode == "F":
        import numpy as np

        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def make_derivative(image: Image.Image, size: int = 224) -> Image.Image:
    """Shorter side to `size`, then a centre crop: the square the model sees and the thumbnail users see."""
    return ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
