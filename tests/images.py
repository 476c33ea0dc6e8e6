"""Image bytes for tests, generated at run time."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def jpeg_bytes(image: Image.Image, quality: int = 90, **save_kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, **save_kwargs)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Image.Image:
    return Image.new("RGB", size, colour)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares width x height: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def iptc_block(datasets: list[tuple[int, int, bytes]], *, utf8: bool = True) -> bytes:
    """IPTC-IIM datasets (record, dataset, value) as an APP13 "Photoshop 3.0" segment for a JPEG.

    Written by hand (no library writes IPTC): 0x1C, record, dataset, big-endian length, value; wrapped in an
    8BIM image resource 0x0404 as Photoshop stores it.
    """
    records = b""
    if utf8:
        records += b"\x1c\x01\x5a" + struct.pack(">H", 3) + b"\x1b%G"  # 1:90 coded character set: UTF-8
    for record, dataset, value in datasets:
        records += bytes([0x1C, record, dataset]) + struct.pack(">H", len(value)) + value
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(records)) + records
    if len(resource) % 2:
        resource += b"\x00"
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def with_segment(jpeg: bytes, segment: bytes) -> bytes:
    """A JPEG with an extra marker segment right after SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segment + jpeg[2:]


def xmp_packet(
    *,
    title: str | None = None,
    description: str | None = None,
    subjects: list[str] | None = None,
    creator: str | None = None,
    created: str | None = None,
    attributes: dict[str, str] | None = None,
) -> bytes:
    """An XMP packet as Lightroom and Photoshop write it (rdf:Alt, rdf:Bag, rdf:Seq); `attributes` adds simple
    properties written as attributes of rdf:Description (e.g. {"photoshop:DateCreated": "2020-01-01"})."""
    from xml.sax.saxutils import escape, quoteattr

    def alt(name: str, value: str) -> str:
        return f'<dc:{name}><rdf:Alt><rdf:li xml:lang="x-default">{escape(value)}</rdf:li></rdf:Alt></dc:{name}>'

    body = ""
    if title is not None:
        body += alt("title", title)
    if description is not None:
        body += alt("description", description)
    if subjects is not None:
        body += "<dc:subject><rdf:Bag>" + "".join(f"<rdf:li>{escape(s)}</rdf:li>" for s in subjects)
        body += "</rdf:Bag></dc:subject>"
    if creator is not None:
        body += f"<dc:creator><rdf:Seq><rdf:li>{escape(creator)}</rdf:li></rdf:Seq></dc:creator>"
    if created is not None:
        body += f"<photoshop:DateCreated>{escape(created)}</photoshop:DateCreated>"
    extra = "".join(f" {name}={quoteattr(value)}" for name, value in (attributes or {}).items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f'xmlns:exif="http://ns.adobe.com/exif/1.0/"{extra}>{body}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def camera_exif(
    *,
    make: str | None = "Canon",
    model: str | None = "Canon EOS R5",
    taken: str | None = "2021:06:05 14:30:00",
    offset: str | None = None,
    lens: str | None = None,
    orientation: int | None = None,
    gps: tuple[float, float] | None = None,
) -> Image.Exif:
    """EXIF as a camera writes it, built with Pillow (IFD0, the EXIF sub-IFD, the GPS IFD)."""
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    if taken is not None:
        sub[0x9003] = taken
    if offset is not None:
        sub[0x9011] = offset
    if lens is not None:
        sub[0xA434] = lens
    if gps is not None:

        def dms(value: float) -> tuple[float, float, float]:
            value = abs(value)
            degrees = int(value)
            minutes = int((value - degrees) * 60)
            return (float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 4))

        gps_ifd = exif.get_ifd(0x8825)
        gps_ifd[1] = "N" if gps[0] >= 0 else "S"
        gps_ifd[2] = dms(gps[0])
        gps_ifd[3] = "E" if gps[1] >= 0 else "W"
        gps_ifd[4] = dms(gps[1])
    return exif
