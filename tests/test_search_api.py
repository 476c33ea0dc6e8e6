"""Search that photo buyers expect, over HTTP against the real stack (worker, Postgres, the tiny trained CLIP):
metadata read from the file at ingest, words edited and screened, keywords fused with the picture, filters,
pages, composed queries, and the minors law under every combination."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text
from typer.testing import CliRunner

from tests.conftest import create_api_key, sample_of, upload, wait_for_status
from tests.images import camera_exif, iptc_block, jpeg_bytes, with_segment, xmp_packet

pytestmark = pytest.mark.usefixtures("clean_db", "worker")

DISCLAIMER = "This image is unavailable in your country in compliance with local laws."
FREE = "ZG"  # a region where the minors law does not apply (these tests only)


@pytest.fixture()
def free_region(services) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, FREE, minors_restricted=False, note="test")
    yield FREE
    with session_scope() as session:
        delete_region_rule(session, FREE)


@pytest.fixture()
def searcher(api) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('search')}"})


def _send(client: TestClient, data: bytes, **fields: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/photos", files={"file": ("photo.jpg", data, "image/jpeg")}, data=fields)


def _indexed(client: TestClient, *photo_ids: str) -> None:
    final = wait_for_status(client, list(photo_ids))
    assert {body["status"] for body in final.values()} == {"indexed"}, final


def _ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


def _shape(colour: str, shape: str, seed: int) -> bytes:
    return jpeg_bytes(sample_of(colour, shape, seed).image)


def test_metadata_from_the_file_and_what_the_uploader_says(api) -> None:  # type: ignore[no-untyped-def]
    exif = camera_exif(
        make="Canon",
        model="Canon EOS R5",
        taken="2021:06:05 14:30:00",
        offset="+08:00",
        lens="RF24-70mm",
        orientation=6,
    )
    block = iptc_block([(2, 120, b"IPTC caption"), (2, 25, b"Ice"), (2, 25, "озеро".encode())])
    packet = xmp_packet(title="A title in the file", description="Hummocks on the lake", subjects=["Olkhon"])
    data = with_segment(jpeg_bytes(Image.new("RGB", (120, 80), (40, 90, 200)), exif=exif.tobytes(), xmp=packet), block)
    photo_id = _send(api, data, title="Baikal in June", tags=["Baikal, winter", "ICE"]).json()["id"]
    _indexed(api, photo_id)
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert datetime.fromisoformat(body["taken_at"]) == datetime(2021, 6, 5, 14, 30, tzinfo=timezone(timedelta(hours=8)))
    assert (body["camera"], body["lens"]) == ("Canon EOS R5", "RF24-70mm")
    assert body["title"] == "Baikal in June", "the upload's title wins over the file's"
    assert body["description"] == "Hummocks on the lake", "XMP over IPTC"
    assert body["tags"] == ["baikal", "winter", "ice", "olkhon", "озеро"], "the uploader's first, then the file's"
    assert (body["width"], body["height"], body["orientation"]) == (80, 120, "portrait"), "as shown (EXIF 6)"

    # The uploader's description wins over the file's caption.
    other = with_segment(jpeg_bytes(Image.new("RGB", (64, 64), (200, 60, 60))), block)
    second = _send(api, other, description="My own words").json()["id"]
    _indexed(api, second)
    assert api.get(f"/v1/photos/{second}").json()["description"] == "My own words"
    assert api.get(f"/v1/photos/{second}").json()["orientation"] == "square"


def test_malformed_metadata_never_fails_the_photo(api) -> None:  # type: ignore[no-untyped-def]
    broken = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01\x12"
    data = with_segment(
        jpeg_bytes(Image.new("RGB", (90, 60), (30, 150, 70)), exif=broken, xmp=b"<x:xmpmeta><unclosed>"),
        b"\xff\xed\x00\x10Photoshop 3.0\x00",
    )
    photo_id = _send(api, data, tags="kept").json()["id"]
    _indexed(api, photo_id)
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["tags"] == ["kept"] and body["taken_at"] is None and body["orientation"] == "landscape"


def test_a_caption_about_a_child_hides_the_photo_where_the_law_applies(api, searcher, free_region) -> None:  # type: ignore[no-untyped-def]
    block = iptc_block([(2, 120, "моя дочка на качелях".encode()), (2, 25, b"swing")])
    photo_id = _send(api, with_segment(_shape("green", "circle", 3), block)).json()["id"]
    _indexed(api, photo_id)
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["depicts_minor"] is True
    screened = [e for e in api.get(f"/v1/photos/{photo_id}/moderation").json() if e["action"] == "screened"]
    assert screened and "the description describes a minor" in screened[0]["reason"]
    assert photo_id not in _ids(searcher.get("/v1/search", params={"q": "swing", "mode": "keyword", "region": "RU"}))
    assert photo_id in _ids(searcher.get("/v1/search", params={"q": "swing", "mode": "keyword", "region": FREE}))


def test_edited_words_are_found_at_once_and_screened(api, searcher) -> None:  # type: ignore[no-untyped-def]
    photo_id = upload(api, sample_of("blue", "star", 5).image).json()["id"]
    _indexed(api, photo_id)
    changed = api.patch(f"/v1/photos/{photo_id}", json={"tags": ["Olkhon, ice", "Frozen Lakes"], "description": "Wind"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["tags"] == ["olkhon", "ice", "frozen lakes"]
    found = searcher.get("/v1/search", params={"q": "a frozen lake", "mode": "keyword"}).json()["results"]
    assert [r["id"] for r in found] == [photo_id] and found[0]["matched"] == "keyword"
    assert found[0]["score"] is not None, "keyword results keep their cosine similarity"

    assert api.patch(f"/v1/photos/{photo_id}", json={"tags": ["kids party"]}).json()["depicts_minor"] is True
    assert photo_id not in _ids(searcher.get("/v1/search", params={"q": "party", "region": "RU"}))
    assert api.patch(f"/v1/photos/{photo_id}", json={"tags": "not a list"}).status_code == 422
    assert api.patch(f"/v1/photos/{photo_id}", json={"tags": ["x" * 1001]}).status_code == 422


def test_a_photo_found_only_by_its_words_comes_up_in_keyword_and_hybrid_mode(api, searcher) -> None:  # type: ignore[no-untyped-def]
    shapes = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("purple", "cross"), ("pink", "star")]
    ids = [upload(api, sample_of(c, s, 20 + i).image).json()["id"] for i, (c, s) in enumerate(shapes)]
    tagged = _send(api, _shape("orange", "square", 40), tags="Baikal", title="Озеро зимой").json()["id"]
    _indexed(api, *ids, tagged)

    keyword = searcher.get("/v1/search", params={"q": "Baikal", "mode": "keyword"}).json()
    assert [r["id"] for r in keyword["results"]] == [tagged] and keyword["mode"] == "keyword"
    hybrid = searcher.get("/v1/search", params={"q": "Baikal", "k": 3}).json()
    assert hybrid["mode"] == "hybrid" and tagged in [r["id"] for r in hybrid["results"]]
    assert next(r for r in hybrid["results"] if r["id"] == tagged)["matched"] in ("keyword", "both")
    semantic = searcher.get("/v1/search", params={"q": "a red circle", "mode": "semantic", "k": 1}).json()
    assert semantic["results"][0]["id"] == ids[0] and semantic["results"][0]["matched"] == "semantic"
    # Russian and English word forms: "озера" finds "Озеро", "lakes" would find "lake".
    assert _ids(searcher.get("/v1/search", params={"q": "озера", "mode": "keyword"})) == [tagged]
    # The picture and the words together: a red circle is the best match for "a red circle at Baikal" only
    # by its pixels, the tagged square only by its words; hybrid has both at the top.
    both = _ids(searcher.get("/v1/search", params={"q": "a red circle at Baikal", "k": 2}))
    assert set(both) == {ids[0], tagged}


def test_filters_and_pages_over_http(api, searcher) -> None:  # type: ignore[no-untyped-def]
    people = ["Anna Petrova", "Ivan Sokolov", "Anna Petrova", "Omar Haddad", "Anna Petrova"]
    colours = ["red", "green", "blue", "purple", "pink"]
    ids = [
        _send(api, _shape(colour, "circle", 60 + i), photographer=person, tags="set-a" if i % 2 == 0 else "set-b")
        for i, (colour, person) in enumerate(zip(colours, people, strict=True))
    ]
    ids = [r.json()["id"] for r in ids]
    _indexed(api, *ids)
    anna = {ids[0], ids[2], ids[4]}
    assert set(_ids(searcher.get("/v1/search", params={"q": "a circle", "photographer": "anna petrova"}))) == anna
    both = searcher.get(
        "/v1/search", params=[("q", "a circle"), ("photographer", "Ivan Sokolov"), ("photographer", "Omar Haddad")]
    )
    assert set(_ids(both)) == {ids[1], ids[3]}
    assert set(_ids(searcher.get("/v1/search", params=[("q", "circle"), ("tag", "set-a"), ("tag", "SET-A")]))) == anna
    today = datetime.now(UTC).date()
    assert len(_ids(searcher.get("/v1/search", params={"q": "circle", "uploaded_after": str(today)}))) == 5
    assert _ids(searcher.get("/v1/search", params={"q": "circle", "uploaded_before": str(today)})) == []
    assert _ids(searcher.get("/v1/search", params={"q": "circle", "taken_after": "2001-01-01"})) == []

    first = searcher.get("/v1/search", params={"q": "a circle", "k": 2, "mode": "semantic"}).json()
    assert len(first["results"]) == 2 and first["next_cursor"]
    second = searcher.get(
        "/v1/search", params={"q": "a circle", "k": 2, "mode": "semantic", "cursor": first["next_cursor"]}
    )
    third = searcher.get(
        "/v1/search", params={"q": "a circle", "k": 2, "mode": "semantic", "cursor": second.json()["next_cursor"]}
    ).json()
    paged = [r["id"] for r in first["results"]] + _ids(second) + [r["id"] for r in third["results"]]
    whole = _ids(searcher.get("/v1/search", params={"q": "a circle", "k": 5, "mode": "semantic"}))
    assert paged == whole and third["next_cursor"] is None
    assert [r["rank"] for r in third["results"]] == [5]

    for params, message in (
        ({"orientation": "diagonal"}, "orientation"),
        ({"mode": "fuzzy"}, "mode"),
        ({"sort": "oldest"}, "sort"),
        ({"taken_after": "2020-13-45"}, "taken_after"),
        ({"taken_after": "yesterday"}, "taken_after"),
        ({"min_width": "-1"}, "min_width"),
        ({"min_score": "2"}, "min_score"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": first["next_cursor"], "tag": "set-a"}, "another query or filter set"),
        ({"photographer": "bad\x00name"}, "photographer"),
        ({"tag": "x" * 201}, "tag"),
    ):
        response = searcher.get("/v1/search", params={"q": "a circle", "mode": "semantic", **params})
        assert response.status_code == 422, (params, response.text)
        assert message in response.json()["detail"], response.json()
    # A range that ends before it starts is no mistake of form: no photo was uploaded in it.
    empty = searcher.get(
        "/v1/search",
        params={"q": "a circle", "mode": "semantic", "uploaded_after": "2024-01-02", "uploaded_before": "2024-01-01"},
    )
    assert empty.status_code == 200 and empty.json()["results"] == [] and empty.json()["next_cursor"] is None


def test_newest_first_by_capture_time(api, searcher) -> None:  # type: ignore[no-untyped-def]
    dates = ["2019:05:01 10:00:00", "2023:05:01 10:00:00", "2021:05:01 10:00:00"]
    ids = []
    for i, taken in enumerate(dates):
        data = jpeg_bytes(sample_of("green", "circle", 80 + i).image, exif=camera_exif(taken=taken).tobytes())
        ids.append(_send(api, data).json()["id"])
    _indexed(api, *ids)
    newest = searcher.get("/v1/search", params={"q": "a green circle", "sort": "newest", "mode": "semantic"}).json()
    assert [r["id"] for r in newest["results"]] == [ids[1], ids[2], ids[0]] and newest["sort"] == "newest"
    camera = searcher.get("/v1/search", params={"q": "circle", "camera": "canon eos r5", "taken_before": "2022-01-01"})
    assert set(_ids(camera)) == {ids[0], ids[2]}


def test_composed_queries_and_the_minors_law(api, searcher, free_region) -> None:  # type: ignore[no-untyped-def]
    red, green, blue = (
        upload(api, sample_of(c, "circle", 90 + i).image).json()["id"] for i, c in enumerate(["red", "green", "blue"])
    )
    child = _send(api, _shape("purple", "circle", 95), tags="lighthouse", depicts_minor="true").json()["id"]
    other_key = TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('upload', 'search')}"})
    private = upload(other_key, sample_of("pink", "circle", 96).image).json()["id"]
    _indexed(api, red, green, blue, child, private)
    assert other_key.patch(f"/v1/photos/{private}", json={"visibility": "private"}).status_code == 200

    like = searcher.post("/v1/search", json={"like_photo": red, "k": 3, "region": FREE}).json()
    assert red not in [r["id"] for r in like["results"]] and like["results"]
    steered = searcher.post(
        "/v1/search",
        json={"q": "a circle", "negative": ["red"], "weights": {"negative": 2.0}, "k": 5, "mode": "semantic"},
    ).json()
    ranked = [r["id"] for r in steered["results"]]
    assert ranked.index(red) == len(ranked) - 1, "steered away from red"
    both = searcher.post("/v1/search", json={"q": "a blue circle", "like_photo": green, "k": 2, "mode": "semantic"})
    assert set(_ids(both)) == {blue, red} or blue in _ids(both)

    # like_photo: the same 404 as every route for what the caller may not see; the disclaimer for a hidden child.
    assert searcher.post("/v1/search", json={"q": "circle", "like_photo": private}).status_code == 404
    assert searcher.get("/v1/search", params={"q": "circle", "like_photo": private}).status_code == 404
    restricted = searcher.post("/v1/search", json={"q": "a circle", "like_photo": child, "region": "RU"}).json()
    assert restricted["blocked"] is True and restricted["disclaimer"] == DISCLAIMER and restricted["results"] == []
    assert searcher.post("/v1/search", json={"like_photo": child, "region": FREE}).json()["blocked"] is False
    similar = searcher.get(f"/v1/photos/{child}/similar", params={"region": "RU", "tag": "lighthouse"}).json()
    assert similar["blocked"] is True
    # Negatives are words of the query too.
    negated = searcher.post("/v1/search", json={"q": "a beach", "negative": ["children"], "region": "RU"}).json()
    assert negated["blocked"] is True and negated["disclaimer"] == DISCLAIMER
    # A restricted photo found by its own tag: hidden where the law applies, in every mode.
    for mode in ("keyword", "hybrid", "semantic"):
        params = {"q": "lighthouse", "mode": mode, "k": 10}
        assert child not in _ids(searcher.get("/v1/search", params={**params, "region": "RU"})), mode
        assert child not in _ids(searcher.post("/v1/search", json={**params, "region": "RU"})), mode
    assert child in _ids(searcher.get("/v1/search", params={"q": "lighthouse", "mode": "keyword", "region": FREE}))
    # The composed body is validated like the query string.
    for body in (
        {"q": "x", "negative": ["a"] * 11},
        {"q": "x", "weights": {"text": 11}},
        {"q": "x", "colour": "red"},
        {},
    ):
        assert searcher.post("/v1/search", json=body).status_code == 422, body


def test_image_search_takes_the_same_options(api, searcher) -> None:  # type: ignore[no-untyped-def]
    a = _send(api, _shape("red", "square", 100), tags="studio").json()["id"]
    b = _send(api, _shape("red", "square", 101)).json()["id"]
    _indexed(api, a, b)
    probe = ("probe.jpg", _shape("red", "square", 102), "image/jpeg")
    plain = searcher.post("/v1/search/image", files={"file": probe}, params={"k": 5})
    assert set(_ids(plain)) == {a, b}
    tagged = searcher.post("/v1/search/image", files={"file": probe}, params={"tag": "studio"})
    assert _ids(tagged) == [a]
    composed = searcher.post(
        "/v1/search/image", files={"file": probe}, data={"query": json.dumps({"tag": ["studio"], "q": "a red square"})}
    )
    assert _ids(composed) == [a]
    bad = searcher.post("/v1/search/image", files={"file": probe}, data={"query": "{not json"})
    assert bad.status_code == 422 and "query" in bad.json()["detail"]
    wrong = searcher.post("/v1/search/image", files={"file": probe}, data={"query": json.dumps({"mode": "x"})})
    assert wrong.status_code == 422


def test_vector_search_takes_filters_and_words(api, searcher) -> None:  # type: ignore[no-untyped-def]
    a = _send(api, _shape("blue", "cross", 110), tags="harbour").json()["id"]
    b = _send(api, _shape("blue", "cross", 111)).json()["id"]
    _indexed(api, a, b)
    vector = api.post("/v1/embeddings/text", json={"texts": ["a blue cross"]}).json()["data"][0]["embedding"]
    assert set(_ids(searcher.post("/v1/search/vector", json={"embedding": vector}))) == {a, b}
    assert _ids(searcher.post("/v1/search/vector", json={"embedding": vector, "tag": "harbour"})) == [a]
    keyword = searcher.post("/v1/search/vector", json={"embedding": vector, "text": "harbour", "mode": "keyword"})
    assert _ids(keyword) == [a]
    assert searcher.post("/v1/search/vector", json={"embedding": vector, "mode": "keyword"}).status_code == 422
    blocked = searcher.post("/v1/search/vector", json={"embedding": vector, "text": "kids", "region": "RU"}).json()
    assert blocked["blocked"] is True


def test_backfill_reads_the_files_of_photos_indexed_before(api) -> None:  # type: ignore[no-untyped-def]
    from cli.main import app
    from db.engine import session_scope

    data = jpeg_bytes(
        Image.new("RGB", (100, 70), (90, 30, 160)),
        exif=camera_exif(taken="2018:02:03 04:05:06", lens="XF 23mm").tobytes(),
        xmp=xmp_packet(subjects=["Reykjavik"]),
    )
    photo_id = _send(api, data, tags="mine").json()["id"]
    _indexed(api, photo_id)
    with session_scope() as session:  # as a photo indexed before the worker read metadata looks
        session.execute(
            text(
                "UPDATE photos SET taken_at = NULL, camera = NULL, lens = NULL, tags = '{mine}', "
                "metadata_read_at = NULL WHERE id = :id"
            ),
            {"id": photo_id},
        )
    result = CliRunner().invoke(app, ["metadata", "backfill"])
    assert result.exit_code == 0, result.output
    assert "1 photos read: 1 gained metadata" in result.output
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["taken_at"].startswith("2018-02-03T04:05:06") and body["lens"] == "XF 23mm"
    assert body["tags"] == ["mine", "reykjavik"]
    again = CliRunner().invoke(app, ["metadata", "backfill"])
    assert "0 photos read" in again.output


def test_cli_search_takes_the_options(api) -> None:  # type: ignore[no-untyped-def]
    from cli.main import app

    ids = [
        _send(api, _shape("green", "triangle", 120 + i), tags="cli", photographer="Ana").json()["id"] for i in range(3)
    ]
    _indexed(api, *ids)
    first = CliRunner().invoke(app, ["search", "a green triangle", "-k", "2", "--tag", "cli", "--photographer", "ana"])
    assert first.exit_code == 0, first.output
    assert sum(photo_id in first.output for photo_id in ids) == 2 and "--page 2" in first.output
    second = CliRunner().invoke(app, ["search", "a green triangle", "-k", "2", "--tag", "cli", "--page", "2"])
    assert sum(photo_id in second.output for photo_id in ids) == 1
    none = CliRunner().invoke(app, ["search", "a green triangle", "--after", "2030-01-01", "--mode", "semantic"])
    assert "no results" in none.output
    bad = CliRunner().invoke(app, ["search", "x", "--mode", "fuzzy"])
    assert bad.exit_code == 1 and "mode" in bad.output
    blocked = CliRunner().invoke(app, ["search", "a green triangle", "--not", "kids", "--region", "RU"])
    assert DISCLAIMER in blocked.output
