"""What a photo's file says about it: capture time, camera, lens, caption, keywords, orientation (and GPS).

Read from the EXIF, IPTC-IIM and XMP blocks with Pillow's readers (XMP parsed with defusedxml), from the header
only: no pixels are decoded. Photographers' files are often damaged or written by odd software, so every field
is read on its own and a field that cannot be read is left empty (and named in `problems`): metadata never fails
a photo. Pure functions, no I/O beyond opening the file given.
"""

from __future__ import annotations

import io
import math
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from PIL import Image, IptcImagePlugin

Orientation = Literal["landscape", "portrait", "square"]
ORIENTATIONS: tuple[Orientation, ...] = ("landscape", "portrait", "square")

# Limits on what is kept of each text (the upload API's own limits are the same or smaller).
MAX_TEXT = 1000
MAX_DESCRIPTION = 2000
MAX_TAG = 100
MAX_TAGS = 100

# EXIF tags (CIPA DC-008) and the IFDs that hold them.
_IFD_EXIF = 0x8769
_IFD_GPS = 0x8825
_MAKE, _MODEL, _ARTIST, _ORIENTATION = 0x010F, 0x0110, 0x013B, 0x0112
_XP_TITLE, _XP_KEYWORDS = 0x9C9B, 0x9C9E  # Windows Explorer's UTF-16 fields, in IFD0
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_TIME_ORIGINAL, _OFFSET_TIME_DIGITIZED = 0x9011, 0x9012
_SUBSEC_TIME_ORIGINAL = 0x9291
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4

# IPTC-IIM datasets (record 2 is the application record; 1:90 names the character set).
_IPTC_CHARSET = (1, 90)
_IPTC_TITLE, _IPTC_KEYWORDS, _IPTC_DATE, _IPTC_TIME = (2, 5), (2, 25), (2, 55), (2, 60)
_IPTC_BYLINE, _IPTC_CAPTION = (2, 80), (2, 120)
_ISO_2022_UTF8 = b"\x1b%G"

_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "exifEX": "http://cipa.jp/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
}
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# Capture times outside this range are a camera's unset clock or a typo, not a date.
_EARLIEST = datetime(1826, 1, 1, tzinfo=UTC)  # the oldest surviving photograph
_LATEST_AHEAD = timedelta(days=2)  # clocks a little ahead, time zones: tolerated

# Values that cameras and tools write when there is nothing to say.
_PLACEHOLDERS = frozenset(
    {
        "",
        "-",
        "--",
        "----",
        "unknown",
        "none",
        "null",
        "n/a",
        "default",
        "untitled",
        "olympus digital camera",
        "sony dsc",
        "digital camera",
        "exif_jpeg_picture",
        "image",
        "picture",
        "0.0 mm f/0.0",
    }
)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PhotoMetadata:
    """What the file says. Every field is optional except the size as shown and its orientation."""

    width: int
    height: int
    orientation: Orientation
    taken_at: datetime | None = None  # timezone-aware; UTC when the file gives no offset
    taken_at_has_offset: bool = False  # whether the file gave the offset (else the local time was read as UTC)
    camera: str | None = None
    lens: str | None = None
    title: str | None = None
    description: str | None = None
    photographer: str | None = None
    tags: tuple[str, ...] = ()
    latitude: float | None = None  # only when asked for, rounded (see `round_coordinate`)
    longitude: float | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)


def orientation_of(width: int, height: int) -> Orientation:
    """Landscape, portrait or square, as the picture is shown (after EXIF rotation).

    Square within 1% (a 4000x3990 crop is square to anyone who looks at it); the same rule as the generated
    `photos.orientation` column.
    """
    if abs(width - height) * 100 <= max(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def round_coordinate(value: float) -> float:
    """Two decimals of a degree: about 1.1 km of latitude (less of longitude), enough for "where", not "which house"."""
    return round(value, 2)


def clean_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """One line of display text: NUL and control characters removed, white space collapsed, at most `limit`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = _decode_bytes(value)
    text = unicodedata.normalize("NFC", str(value))
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if not text or text.lower() in _PLACEHOLDERS:
        return None
    return text[:limit].rstrip()


def normalise_tag(value: str) -> str | None:
    """A keyword as stored and matched: clean text in lower case, at most MAX_TAG characters."""
    text = clean_text(value, MAX_TAG)
    return text.lower() if text else None


def parse_tags(values: Iterable[str]) -> list[str]:
    """Keywords from any number of values, each comma- or semicolon-separated: normalised, first occurrence kept."""
    seen: dict[str, None] = {}
    for value in values:
        for part in re.split(r"[,;\n]", value):
            tag = normalise_tag(part)
            if tag and tag not in seen:
                seen[tag] = None
    return list(seen)[:MAX_TAGS]


def merge_tags(*groups: Iterable[str]) -> list[str]:
    """Tags of several sources in order, without duplicates (already normalised ones stay as they are)."""
    seen: dict[str, None] = {}
    for group in groups:
        for value in group:
            tag = normalise_tag(value)
            if tag and tag not in seen:
                seen[tag] = None
    return list(seen)[:MAX_TAGS]


def camera_name(make: str | None, model: str | None) -> str | None:
    """Make and model as people say it: "Canon" + "Canon EOS R5" is "Canon EOS R5", not "Canon Canon EOS R5".

    The model usually repeats the make, sometimes only its first word ("NIKON CORPORATION" + "NIKON D850").
    """
    make, model = clean_text(make, 200), clean_text(model, 200)
    if not make or not model:
        return model or make
    folded_model = model.casefold()
    first_word = make.split(" ", 1)[0].casefold()
    if folded_model.startswith(make.casefold()) or folded_model.split(" ", 1)[0] == first_word:
        return model
    return f"{make} {model}"


T = TypeVar("T")


class _Reader:
    """Collects what each field's reader found, and what it could not read."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attempt(self, what: str, read: Callable[[], T], default: T) -> T:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - any damaged block: that field stays empty, the photo goes on
            self.problems.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
            return default


def read_metadata(
    source: bytes | Path | BinaryIO,
    *,
    allowed_formats: Iterable[str] | None = None,
    max_pixels: int | None = None,
    include_gps: bool = False,
) -> PhotoMetadata:
    """Open the file's header (formats limited as for uploads) and read its metadata; see `extract_metadata`.

    Raises what `Image.open` raises for a file that is not an image at all; the worker has checked that before.
    """
    stream: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    formats = [f.upper() for f in allowed_formats] if allowed_formats is not None else None
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels  # the process-wide cap, as core.images sets it (never lowered per call)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(stream, formats=formats) as image:
            return extract_metadata(image, include_gps=include_gps)


def extract_metadata(image: Image.Image, *, include_gps: bool = False) -> PhotoMetadata:
    """Metadata of an opened image (nothing is decoded).

    Capture time: EXIF DateTimeOriginal (with OffsetTimeOriginal and sub-seconds), else DateTimeDigitized, else
    XMP exif:DateTimeOriginal / photoshop:DateCreated / xmp:CreateDate, else IPTC 2:55 + 2:60. Camera: EXIF Make
    and Model (else XMP tiff:). Lens: EXIF LensModel (else XMP). Title, description, photographer and keywords:
    XMP dc:title, dc:description, dc:creator, dc:subject, else IPTC 2:05, 2:120, 2:80, 2:25; keywords also from
    the EXIF XPKeywords field; the keywords of all three are merged. GPS only with `include_gps`, rounded.
    """
    reader = _Reader()
    exif: Image.Exif | None = reader.attempt("EXIF", image.getexif, None)
    exif_ifd: Mapping[int, Any] = reader.attempt("EXIF sub-IFD", lambda: exif.get_ifd(_IFD_EXIF), {}) if exif else {}
    xmp: dict[str, Any] = reader.attempt("XMP", lambda: _xmp_properties(image), {})
    iptc: dict[tuple[int, int], object] = reader.attempt("IPTC", lambda: _iptc_properties(image), {})

    rotation = reader.attempt("orientation", lambda: int(exif.get(_ORIENTATION, 1)) if exif else 1, 1)
    width, height = image.size
    if rotation in (5, 6, 7, 8):  # turned by 90 degrees when shown
        width, height = height, width

    no_time: tuple[datetime | None, bool] = (None, False)
    taken_at, has_offset = reader.attempt("capture time", lambda: _taken_at(exif_ifd, xmp, iptc), no_time)
    camera = reader.attempt(
        "camera",
        lambda: camera_name(_exif_text(exif.get(_MAKE)), _exif_text(exif.get(_MODEL))) if exif else None,
        None,
    ) or camera_name(xmp.get("tiff:Make"), xmp.get("tiff:Model"))
    lens = reader.attempt(
        "lens",
        lambda: (
            clean_text(_exif_text(exif_ifd.get(_LENS_MODEL)), 200)
            or clean_text(xmp.get("exifEX:LensModel"), 200)
            or clean_text(xmp.get("aux:Lens"), 200)
        ),
        None,
    )
    title = reader.attempt(
        "title",
        lambda: (
            clean_text(xmp.get("dc:title"))
            or clean_text(iptc.get(_IPTC_TITLE))
            or clean_text(_xp_text(exif.get(_XP_TITLE)) if exif else None)
        ),
        None,
    )
    description = reader.attempt(
        "description",
        lambda: (
            clean_text(xmp.get("dc:description"), MAX_DESCRIPTION)
            or clean_text(iptc.get(_IPTC_CAPTION), MAX_DESCRIPTION)
        ),
        None,
    )
    photographer = reader.attempt(
        "photographer",
        lambda: (
            clean_text(xmp.get("dc:creator"))
            or clean_text(iptc.get(_IPTC_BYLINE))
            or clean_text(_exif_text(exif.get(_ARTIST)) if exif else None)
        ),
        None,
    )
    tags: list[str] = reader.attempt(
        "keywords",
        lambda: merge_tags(
            parse_tags(xmp.get("dc:subject") or []),
            parse_tags(_as_list(iptc.get(_IPTC_KEYWORDS))),
            parse_tags([_xp_text(exif.get(_XP_KEYWORDS)) or ""]) if exif else [],
        ),
        [],
    )
    no_place: tuple[float | None, float | None] = (None, None)
    latitude, longitude = no_place
    if include_gps and exif:
        latitude, longitude = reader.attempt("GPS", lambda: _gps(exif.get_ifd(_IFD_GPS)), no_place)
    return PhotoMetadata(
        width=width,
        height=height,
        orientation=orientation_of(width, height),
        taken_at=taken_at,
        taken_at_has_offset=has_offset,
        camera=camera,
        lens=lens,
        title=title,
        description=description,
        photographer=photographer,
        tags=tuple(tags),
        latitude=latitude,
        longitude=longitude,
        problems=tuple(reader.problems),
    )


# --- EXIF ---------------------------------------------------------------------------------------------------------


def _decode_bytes(raw: bytes) -> str:
    raw = raw.split(b"\x00", 1)[0] if raw.endswith(b"\x00") else raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _exif_text(value: object) -> str | None:
    """EXIF ASCII values come as str (sometimes with NULs) or bytes; anything else is not text."""
    if isinstance(value, bytes):
        return _decode_bytes(value)
    if isinstance(value, str):
        return value.split("\x00", 1)[0]
    return None


def _xp_text(value: object) -> str | None:
    """Windows XP* fields: UTF-16LE bytes (or a tuple of byte values), NUL-terminated."""
    if isinstance(value, tuple):
        value = bytes(int(v) & 0xFF for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-16-le", errors="replace").split("\x00", 1)[0]
    return _exif_text(value)


_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-/.](\d{2})[:\-/.](\d{2})[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?")
_OFFSET = re.compile(r"^\s*([+-])(\d{1,2}):?(\d{2})\s*$")


def _offset(value: object) -> timezone | None:
    text = _exif_text(value)
    match = _OFFSET.match(text or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14):
        return None
    return timezone(-delta if sign == "-" else delta)


def _plausible(moment: datetime) -> datetime | None:
    if _EARLIEST <= moment <= datetime.now(UTC) + _LATEST_AHEAD:
        return moment
    return None


def _exif_datetime(value: object, offset: object, subsec: object = None) -> tuple[datetime | None, bool]:
    match = _EXIF_DATE.match(_exif_text(value) or "")
    if not match:
        return None, False
    year, month, day, hour, minute, second = (int(part) if part else 0 for part in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00, month 13, ...
        return None, False
    digits = re.match(r"\d+", _exif_text(subsec) or "")
    if digits:
        moment = moment.replace(microsecond=int(digits.group()[:6].ljust(6, "0")))
    zone = _offset(offset)
    return _plausible(moment.replace(tzinfo=zone or UTC)), zone is not None


def _iso_datetime(value: object) -> tuple[datetime | None, bool]:
    """XMP dates: ISO 8601 with or without a time and a zone (a year or a year and month alone are too vague)."""
    text = clean_text(value, 64)
    if not text or len(text) < 10:
        return None, False
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None, False
    aware = moment.tzinfo is not None
    return _plausible(moment if aware else moment.replace(tzinfo=UTC)), aware


def _iptc_datetime(iptc: Mapping[tuple[int, int], object]) -> tuple[datetime | None, bool]:
    date = clean_text(iptc.get(_IPTC_DATE), 16) or ""
    if not re.fullmatch(r"\d{8}", date):
        return None, False
    time = clean_text(iptc.get(_IPTC_TIME), 16) or ""
    match = re.fullmatch(r"(\d{2})(\d{2})(\d{2})([+-]\d{4})?", time)
    hour, minute, second, zone_text = match.groups() if match else ("00", "00", "00", None)
    try:
        moment = datetime(int(date[:4]), int(date[4:6]), int(date[6:]), int(hour), int(minute), int(second))
    except ValueError:
        return None, False
    zone = _offset(f"{zone_text[:3]}:{zone_text[3:]}") if zone_text else None
    return _plausible(moment.replace(tzinfo=zone or UTC)), zone is not None


def _taken_at(
    exif_ifd: Mapping[int, Any], xmp: Mapping[str, Any], iptc: Mapping[tuple[int, int], object]
) -> tuple[datetime | None, bool]:
    for found in (
        _exif_datetime(
            exif_ifd.get(_DATETIME_ORIGINAL), exif_ifd.get(_OFFSET_TIME_ORIGINAL), exif_ifd.get(_SUBSEC_TIME_ORIGINAL)
        ),
        _exif_datetime(exif_ifd.get(_DATETIME_DIGITIZED), exif_ifd.get(_OFFSET_TIME_DIGITIZED)),
        _iso_datetime(xmp.get("exif:DateTimeOriginal")),
        _iso_datetime(xmp.get("photoshop:DateCreated")),
        _iso_datetime(xmp.get("xmp:CreateDate")),
        _iptc_datetime(iptc),
    ):
        if found[0] is not None:
            return found
    return None, False


def _rational(value: object) -> float:
    number = float(value)  # type: ignore[arg-type] # IFDRational, int or float; anything else raises
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _degrees(parts: object, reference: object) -> float | None:
    if not isinstance(parts, tuple | list) or len(parts) != 3:
        return None
    degrees, minutes, seconds = (_rational(part) for part in parts)
    value = degrees + minutes / 60 + seconds / 3600
    ref = (_exif_text(reference) or "").strip().upper()
    return -value if ref in ("S", "W") else value


def _gps(gps: Mapping[int, Any]) -> tuple[float | None, float | None]:
    latitude = _degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF))
    longitude = _degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF))
    if latitude is None or longitude is None or not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None, None
    if latitude == 0 and longitude == 0:  # "null island": a receiver without a fix
        return None, None
    return round_coordinate(latitude), round_coordinate(longitude)


# --- IPTC ---------------------------------------------------------------------------------------------------------


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list | tuple) else [value]
    return [text for item in values if (text := clean_text(item, MAX_DESCRIPTION))]


def _iptc_properties(image: Image.Image) -> dict[tuple[int, int], object]:
    if image.format not in ("JPEG", "TIFF", "MPO"):
        return {}
    raw = IptcImagePlugin.getiptcinfo(image)  # type: ignore[arg-type]
    if not raw:
        return {}
    utf8 = raw.get(_IPTC_CHARSET) == _ISO_2022_UTF8

    def decode(item: object) -> object:
        if isinstance(item, bytes):
            return item.decode("utf-8", errors="replace") if utf8 else _decode_bytes(item)
        return item

    return {
        key: [decode(v) for v in value] if isinstance(value, list) else decode(value)
        for key, value in raw.items()
        if isinstance(key, tuple)
    }


# --- XMP ----------------------------------------------------------------------------------------------------------


def _xmp_packet(image: Image.Image) -> bytes | None:
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    if isinstance(packet, str):
        packet = packet.encode("utf-8")
    if not isinstance(packet, bytes) or not packet.strip():
        return None
    return packet.rstrip(b"\x00 \r\n\t")


def _xmp_properties(image: Image.Image) -> dict[str, Any]:
    """The few XMP properties we read, as `prefix:Name` -> text (or a list of texts for dc:subject)."""
    packet = _xmp_packet(image)
    if packet is None:
        return {}
    from defusedxml import ElementTree  # refuses entity expansion and external entities: XMP is untrusted XML

    root = ElementTree.fromstring(packet)
    wanted = {
        ("dc", "title"): "alt",
        ("dc", "description"): "alt",
        ("dc", "creator"): "seq",
        ("dc", "subject"): "bag",
        ("photoshop", "DateCreated"): "text",
        ("xmp", "CreateDate"): "text",
        ("exif", "DateTimeOriginal"): "text",
        ("exifEX", "LensModel"): "text",
        ("aux", "Lens"): "text",
        ("tiff", "Make"): "text",
        ("tiff", "Model"): "text",
    }
    found: dict[str, Any] = {}
    for description in root.iter(f"{{{_NS['rdf']}}}Description"):
        for (prefix, name), kind in wanted.items():
            key = f"{prefix}:{name}"
            if key in found:
                continue
            qualified = f"{{{_NS[prefix]}}}{name}"
            attribute = description.get(qualified)  # simple properties may be written as attributes
            if attribute is not None:
                found[key] = [attribute] if kind == "bag" else attribute
                continue
            element = description.find(qualified)
            if element is None:
                continue
            value = _xmp_value(element, kind)
            if value:
                found[key] = value
    return found


def _xmp_value(element: Any, kind: str) -> Any:
    items = element.findall(f".//{{{_NS['rdf']}}}li")
    if kind == "text" or not items:
        return (element.text or "").strip() or None
    if kind == "alt":  # language alternatives: x-default, else English, else the first one
        by_language = {item.get(_XML_LANG, "").lower(): (item.text or "") for item in items}
        for language in ("x-default", "en", "en-us", "en-gb"):
            if by_language.get(language, "").strip():
                return by_language[language]
        return next((item.text for item in items if (item.text or "").strip()), None)
    texts = [item.text.strip() for item in items if item.text and item.text.strip()]
    if kind == "seq":
        return ", ".join(texts) or None
    return texts
