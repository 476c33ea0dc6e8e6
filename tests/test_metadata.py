"""Metadata read from the file at ingest (core/metadata.py): EXIF, IPTC and XMP as cameras and editors write them,
and damaged blocks that must never fail a photo. The files are built here byte by byte (no metadata library)."""

from __future__ import annotations

import io
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from core.metadata import camera_name, orientation_of, parse_tags, read_metadata
from tests.images import camera_exif, iptc_block, jpeg_bytes, with_segment, xmp_packet


def _jpeg(size: tuple[int, int] = (64, 48), **save: Any) -> bytes:
    return jpeg_bytes(Image.new("RGB", size, (90, 120, 200)), **save)


def test_exif_capture_time_with_its_offset_camera_and_lens() -> None:
    exif = camera_exif(taken="2021:06:05 14:30:00", offset="+03:00", lens="RF24-70mm F2.8 L IS USM")
    meta = read_metadata(_jpeg(exif=exif.tobytes()))
    assert meta.taken_at == datetime(2021, 6, 5, 14, 30, tzinfo=timezone(timedelta(hours=3)))
    assert meta.taken_at_has_offset
    assert meta.taken_at.astimezone(UTC).hour == 11
    assert meta.camera == "Canon EOS R5"  # not "Canon Canon EOS R5"
    assert meta.lens == "RF24-70mm F2.8 L IS USM"
    assert meta.problems == ()


def test_capture_time_without_an_offset_is_read_as_utc() -> None:
    meta = read_metadata(_jpeg(exif=camera_exif(taken="2019:12:31 23:59:58").tobytes()))
    assert meta.taken_at == datetime(2019, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert not meta.taken_at_has_offset


@pytest.mark.parametrize(
    ("make", "model", "expected"),
    [
        ("Canon", "Canon EOS R5", "Canon EOS R5"),
        ("NIKON CORPORATION", "NIKON D850", "NIKON D850"),
        ("FUJIFILM", "X-T4", "FUJIFILM X-T4"),
        ("Apple", "iPhone 12 Pro", "Apple iPhone 12 Pro"),
        (None, "iPhone 12", "iPhone 12"),
        ("SONY", None, "SONY"),
        ("  Canon\x00", "Canon EOS 5D Mark IV\x00\x00", "Canon EOS 5D Mark IV"),
        ("", "", None),
    ],
)
def test_camera_names(make: str | None, model: str | None, expected: str | None) -> None:
    assert camera_name(make, model) == expected


def test_iptc_caption_keywords_byline_title_and_date() -> None:
    block = iptc_block(
        [
            (2, 5, "Утро на Байкале".encode()),
            (2, 25, b"Baikal"),
            (2, 25, "озеро".encode()),
            (2, 25, b"ice, winter"),
            (2, 80, "Анна Петрова".encode()),
            (2, 120, "Лёд озера Байкал на рассвете".encode()),
            (2, 55, b"20200214"),
            (2, 60, b"071500+0800"),
        ]
    )
    meta = read_metadata(with_segment(_jpeg(), block))
    assert meta.title == "Утро на Байкале"
    assert meta.description == "Лёд озера Байкал на рассвете"
    assert meta.photographer == "Анна Петрова"
    assert meta.tags == ("baikal", "озеро", "ice", "winter")
    assert meta.taken_at == datetime(2020, 2, 14, 7, 15, tzinfo=timezone(timedelta(hours=8)))


def test_iptc_without_a_character_set_is_read_as_latin() -> None:
    block = iptc_block([(2, 120, "Café on the Seine".encode("cp1252")), (2, 25, b"Paris")], utf8=False)
    meta = read_metadata(with_segment(_jpeg(), block))
    assert meta.description == "Café on the Seine"
    assert meta.tags == ("paris",)


def test_xmp_description_subjects_creator_and_date() -> None:
    packet = xmp_packet(
        title="Lake Baikal",
        description="Ice hummocks near Olkhon island",
        subjects=["Baikal", "ice", "Olkhon", "baikal"],
        creator="Ivan Sokolov",
        created="2018-03-02T09:10:00+08:00",
    )
    meta = read_metadata(_jpeg(xmp=packet))
    assert meta.title == "Lake Baikal"
    assert meta.description == "Ice hummocks near Olkhon island"
    assert meta.tags == ("baikal", "ice", "olkhon")
    assert meta.photographer == "Ivan Sokolov"
    assert meta.taken_at == datetime(2018, 3, 2, 9, 10, tzinfo=timezone(timedelta(hours=8)))


def test_xmp_simple_properties_written_as_attributes() -> None:
    packet = xmp_packet(attributes={"photoshop:DateCreated": "2017-08-21", "xmp:CreateDate": "2001-01-01"})
    meta = read_metadata(_jpeg(xmp=packet))
    assert meta.taken_at == datetime(2017, 8, 21, tzinfo=UTC)


def test_xmp_wins_over_iptc_for_text_and_keywords_of_both_are_kept() -> None:
    block = iptc_block([(2, 120, b"old caption"), (2, 25, b"harbour"), (2, 25, b"boats")])
    data = with_segment(_jpeg(xmp=xmp_packet(description="new caption", subjects=["Boats", "sunset"])), block)
    meta = read_metadata(data)
    assert meta.description == "new caption"
    assert meta.tags == ("boats", "sunset", "harbour")


def test_exif_date_wins_over_xmp_and_iptc() -> None:
    block = iptc_block([(2, 55, b"19990101")])
    data = with_segment(
        _jpeg(exif=camera_exif(taken="2022:02:02 10:00:00").tobytes(), xmp=xmp_packet(created="2010-05-05")), block
    )
    assert read_metadata(data).taken_at == datetime(2022, 2, 2, 10, tzinfo=UTC)


def test_xmp_in_png_and_webp() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(description="A red kite", subjects=["bird"]).decode())
    buffer = io.BytesIO()
    Image.new("RGB", (30, 60)).save(buffer, format="PNG", pnginfo=info)
    meta = read_metadata(buffer.getvalue())
    assert (meta.description, meta.tags, meta.orientation) == ("A red kite", ("bird",), "portrait")

    buffer = io.BytesIO()
    Image.new("RGB", (60, 60)).save(buffer, format="WEBP", xmp=xmp_packet(subjects=["tram", "Lisbon"]))
    meta = read_metadata(buffer.getvalue())
    assert (meta.tags, meta.orientation) == (("tram", "lisbon"), "square")


@pytest.mark.parametrize(("rotation", "shown"), [(1, (64, 48)), (3, (64, 48)), (6, (48, 64)), (8, (48, 64))])
def test_size_and_orientation_as_shown(rotation: int, shown: tuple[int, int]) -> None:
    meta = read_metadata(_jpeg((64, 48), exif=camera_exif(orientation=rotation).tobytes()))
    assert (meta.width, meta.height) == shown
    assert meta.orientation == ("landscape" if shown[0] > shown[1] else "portrait")


def test_orientation_rule() -> None:
    assert orientation_of(4000, 3000) == "landscape"
    assert orientation_of(3000, 4000) == "portrait"
    assert orientation_of(4000, 3990) == "square"  # within 1%
    assert orientation_of(100, 98) == "landscape"
    assert orientation_of(1, 1) == "square"


def test_gps_is_read_only_when_asked_and_rounded_to_about_a_kilometre() -> None:
    data = _jpeg(exif=camera_exif(gps=(55.755831, -37.617673)).tobytes())
    assert read_metadata(data).latitude is None
    meta = read_metadata(data, include_gps=True)
    assert (meta.latitude, meta.longitude) == (55.76, -37.62)


def test_gps_without_a_fix_or_with_zero_denominators_is_dropped() -> None:
    assert read_metadata(_jpeg(exif=camera_exif(gps=(0.0, 0.0)).tobytes()), include_gps=True).latitude is None
    exif = camera_exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "N", "E"
    gps[2] = gps[4] = (IFDRational(55, 0), IFDRational(0, 0), IFDRational(1, 0))  # a writer's zero denominators
    meta = read_metadata(_jpeg(exif=exif.tobytes()), include_gps=True)
    assert (meta.latitude, meta.longitude) == (None, None)
    assert meta.camera == "Canon EOS R5"


@pytest.mark.parametrize(
    "taken",
    ["0000:00:00 00:00:00", "    :  :     :  :  ", "2021:13:45 10:00:00", "garbage", "1800:01:01 00:00:00"],
)
def test_unset_or_impossible_capture_times_are_empty(taken: str) -> None:
    meta = read_metadata(_jpeg(exif=camera_exif(taken=taken).tobytes()))
    assert meta.taken_at is None
    assert meta.camera == "Canon EOS R5"


def test_a_capture_time_in_the_future_is_a_wrong_clock() -> None:
    ahead = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y:%m:%d %H:%M:%S")
    assert read_metadata(_jpeg(exif=camera_exif(taken=ahead).tobytes())).taken_at is None


def test_an_impossible_offset_is_ignored() -> None:
    meta = read_metadata(_jpeg(exif=camera_exif(taken="2021:06:05 14:30:00", offset="+99:00").tobytes()))
    assert meta.taken_at == datetime(2021, 6, 5, 14, 30, tzinfo=UTC)
    assert not meta.taken_at_has_offset


def test_malformed_exif_leaves_the_other_blocks_readable() -> None:
    broken_exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01\x12"
    data = _jpeg(exif=broken_exif, xmp=xmp_packet(description="still here", subjects=["kept"]))
    meta = read_metadata(data)
    assert meta.description == "still here"
    assert meta.tags == ("kept",)
    assert (meta.taken_at, meta.camera) == (None, None)


def test_xml_that_is_not_well_formed_only_loses_the_xmp() -> None:
    data = with_segment(_jpeg(xmp=b"<x:xmpmeta><rdf:RDF><unclosed>"), iptc_block([(2, 120, b"from IPTC")]))
    meta = read_metadata(data)
    assert meta.description == "from IPTC"
    assert any(problem.startswith("XMP") for problem in meta.problems)


def test_xmp_entity_expansion_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
        b'<rdf:li xml:lang="x-default">&lol3;</rdf:li></rdf:Alt></dc:description></rdf:Description>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    meta = read_metadata(_jpeg(xmp=bomb))
    assert meta.description is None
    assert any("XMP" in problem for problem in meta.problems)


def test_truncated_iptc_block_is_not_fatal() -> None:
    records = b"\x1c\x02\x78" + struct.pack(">H", 500) + b"only a few bytes"  # declares 500, has 16
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(records)) + records
    payload = b"Photoshop 3.0\x00" + resource
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    meta = read_metadata(with_segment(_jpeg(exif=camera_exif().tobytes()), segment))
    assert meta.camera == "Canon EOS R5"
    assert meta.description in (None, "only a few bytes")


def test_control_characters_and_placeholders_are_not_text() -> None:
    exif = camera_exif(make="OLYMPUS IMAGING CORP.", model="E-M1")
    exif[0x013B] = "Jane\x07 Doe\x00junk after the terminator"  # Artist
    data = _jpeg(exif=exif.tobytes(), xmp=xmp_packet(description="OLYMPUS DIGITAL CAMERA", title="  \t "))
    meta = read_metadata(data)
    assert meta.photographer == "Jane Doe"
    assert meta.description is None
    assert meta.title is None
    assert meta.camera == "OLYMPUS IMAGING CORP. E-M1"


def test_windows_keywords_field() -> None:
    exif = camera_exif()
    exif[0x9C9E] = "Prague;bridge\x00".encode("utf-16-le")
    assert read_metadata(_jpeg(exif=exif.tobytes())).tags == ("prague", "bridge")


def test_upload_tags_comma_separated_or_repeated() -> None:
    assert parse_tags(["Baikal, ice ,, winter", "ICE", " Olkhon  island "]) == [
        "baikal",
        "ice",
        "winter",
        "olkhon island",
    ]
    assert parse_tags(["tag\x00with\x07control"]) == ["tag with control"]
    assert len(parse_tags([",".join(f"t{i}" for i in range(500))])) == 100
    assert parse_tags(["x" * 300]) == ["x" * 100]


def test_a_file_without_metadata() -> None:
    meta = read_metadata(_jpeg((10, 20)))
    assert (meta.width, meta.height, meta.orientation) == (10, 20, "portrait")
    assert (meta.taken_at, meta.camera, meta.lens, meta.description, meta.tags) == (None, None, None, None, ())
