"""RELIABILITY.md items 1-10 and 23: hostile uploads and images, and access control, against the real app."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from cli.local_services import LocalRedis
from core.images import ImageTooLarge, UnsupportedFormat, inspect_image, load_rgb, make_derivative
from core.settings import Settings, get_settings
from tests.conftest import Services, create_api_key, upload, wait_for_status
from tests.images import jpeg_bytes, png_bytes, solid

if TYPE_CHECKING:
    import httpx2

pytestmark = pytest.mark.usefixtures("clean_db")


def _nothing_stored() -> None:
    from sqlalchemy import text

    from db.engine import session_scope

    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM photos")) == 0
    settings = get_settings()
    for folder in (settings.originals_dir, settings.home / "tmp"):
        assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*")), f"files left in {folder}"


def _small_cap_client(*, max_upload_bytes: int | None = None, max_image_pixels: int | None = None) -> TestClient:
    """An upload-scoped client of an app whose settings lower one cap (the others as configured)."""
    from api.app import create_app

    overrides = {"max_upload_bytes": max_upload_bytes, "max_image_pixels": max_image_pixels}
    settings = Settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app, headers={"Authorization": f"Bearer {create_api_key('upload')}"})


# 1. Bodies over the cap: true, false and no Content-Length.
def test_oversized_body_is_413_with_true_false_and_no_content_length(
    services: Services, own_broker: LocalRedis
) -> None:
    import redis

    queue = redis.Redis.from_url(own_broker.url)  # no worker consumes this broker: every task stays visible
    big = jpeg_bytes(Image.effect_noise((900, 900), 120).convert("RGB"), quality=100)
    assert len(big) > 100_000
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + big
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with _small_cap_client(max_upload_bytes=100_000) as client:
        honest = client.post("/v1/photos", content=body, headers=headers)
        lying = client.post("/v1/photos", content=body, headers={**headers, "content-length": "1000"})

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        chunked = client.post("/v1/photos", content=chunks(), headers=headers)
        assert honest.status_code == 413 and "larger than" in honest.json()["detail"]
        # The body is counted as it streams in, whatever the header claimed.
        assert lying.status_code == 413 and "larger than" in lying.json()["detail"]
        assert chunked.status_code == 413 and "larger than" in chunked.json()["detail"]
        _nothing_stored()
        assert queue.llen("photos") == 0  # no task was queued for the refused uploads
        small = client.post(
            "/v1/photos", files={"file": ("ok.jpg", jpeg_bytes(solid((3, 4, 5), (64, 48))), "image/jpeg")}
        )
        assert small.status_code == 202, small.text
        assert queue.llen("photos") == 1  # ... while an accepted one is: the queue inspected is the real one


# 2. Thousands of empty parts; a huge text field.
def test_thousands_of_parts_and_huge_fields_are_refused(api: TestClient) -> None:
    boundary = "xx"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="p{i}"\r\n\r\n\r\n' for i in range(5000))
    body = (parts + f"--{boundary}--\r\n").encode()
    response = api.post(
        "/v1/photos", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 400 and "too many parts" in response.json()["detail"]
    huge_title = upload(api, solid((1, 2, 3)), title="x" * 100_000)
    assert huge_title.status_code == 413 and "title" in huge_title.json()["detail"]
    _nothing_stored()


# 3. Non-images disguised as JPEG are in test_api_validation.py; a polyglot: JPEG magic followed by HTML.
def test_polyglot_with_jpeg_magic_but_no_image_is_refused_from_the_bytes(api: TestClient) -> None:
    polyglot = b"\xff\xd8\xff\xe0" + b"<html><script>alert(1)</script></html>" * 20
    response = api.post("/v1/photos", files={"file": ("x.jpg.php", polyglot, "image/jpeg")})
    # JPEG magic makes it a (broken) JPEG, not another format: refused from the bytes as an unreadable image.
    assert response.status_code == 400, response.text
    assert "header cannot be read" in response.json()["detail"]
    _nothing_stored()


# 4. Hostile file names never reach a path.
@pytest.mark.parametrize(
    "name", ["../../x.jpg", "a" * 300 + ".jpg", "evil\x00.jpg", "..\\..\\windows.jpg", "/etc/passwd"]
)
def test_client_file_names_never_reach_a_path(api: TestClient, name: str) -> None:
    image = Image.new("RGB", (64, 48), tuple(int(x) for x in np.random.default_rng(len(name)).integers(0, 255, 3)))
    response = api.post("/v1/photos", files={"file": (name, jpeg_bytes(image), "image/jpeg")})
    assert response.status_code == 202, response.text
    import uuid

    from db.engine import session_scope
    from db.photos import get_photo

    with session_scope() as session:
        photo = get_photo(session, uuid.UUID(response.json()["id"]))
        assert photo is not None
        assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}\.jpg", photo.storage_key)
        assert "/" not in (photo.original_name or "") and "\x00" not in (photo.original_name or "")
        assert len(photo.original_name or "") <= 255
    stored = get_settings().originals_dir / photo.storage_key
    assert stored.is_file()


# 5. Decompression bombs: declared 20000x20000 (test_api_validation.py) and one just over the cap.
def test_image_just_over_the_pixel_cap_is_refused(services: Services) -> None:
    data = png_bytes(solid((0, 0, 0), (1001, 1000)))
    with pytest.raises(ImageTooLarge):
        inspect_image(data, max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge):
        load_rgb(data, max_pixels=1_000_000)
    assert inspect_image(png_bytes(solid((0, 0, 0), (1000, 1000))), max_pixels=1_000_000).width == 1000
    with _small_cap_client(max_image_pixels=1_000_000) as client:
        response = client.post("/v1/photos", files={"file": ("b.png", data, "image/png")})
    assert response.status_code == 413 and "pixels" in response.json()["detail"]
    _nothing_stored()


# 6. Formats outside the allow-list are never decoded.
def _ico() -> bytes:
    buffer = io.BytesIO()
    solid((200, 0, 0), (32, 32)).save(buffer, format="ICO")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        _ico(),
        b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8" + b" " * 2800,
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
        b"gd2\x00\x00\x02" + b"\x00" * 64,
    ],
)
def test_formats_outside_the_allow_list_are_415(api: TestClient, payload: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        inspect_image(payload)
    response = api.post("/v1/photos", files={"file": ("x.jpg", payload, "image/jpeg")})
    assert response.status_code == 415
    _nothing_stored()


# 7. Truncated JPEG (test_pipeline.py), truncated PNG and bad CRC: failed for good, one attempt.
@pytest.mark.usefixtures("worker")
def test_truncated_png_and_bad_crc_fail_for_good(api: TestClient) -> None:
    png = png_bytes(Image.effect_noise((300, 200), 60).convert("RGB"))
    truncated = png[: len(png) // 2]
    idat = png.index(b"IDAT")
    bad_crc = bytearray(png)
    bad_crc[idat + 10] ^= 0xFF  # corrupt the compressed pixels: the chunk CRC no longer matches
    ids = []
    for data in (truncated, bytes(bad_crc)):
        response = api.post("/v1/photos", files={"file": ("x.png", data, "image/png")})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for body in wait_for_status(api, ids).values():
        assert body["status"] == "failed" and body["attempts"] == 1
        assert body["error"]


# 8. EXIF orientations 1-8 and malformed EXIF: the derivative is upright.
def _marker() -> Image.Image:
    """Red top-left quadrant, blue elsewhere: any rotation or flip moves the red corner."""
    image = Image.new("RGB", (120, 80), (0, 0, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 59, 39), fill=(255, 0, 0))
    return image


INVERSE = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = INVERSE[orientation](_marker())
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = load_rgb(jpeg_bytes(stored, exif=exif.tobytes()))
    assert upright.size == (120, 80)
    red_corner = np.asarray(upright)[5:30, 5:50].mean(axis=(0, 1))
    assert red_corner[0] > 200 and red_corner[2] < 60, (orientation, red_corner)


@pytest.mark.usefixtures("worker")
def test_exif_rotated_uploads_get_an_upright_thumbnail(api: TestClient) -> None:
    ids = {}
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = INVERSE[orientation](_marker())
        data = jpeg_bytes(stored, exif=exif.tobytes())
        assert Image.open(io.BytesIO(data)).getexif()[0x0112] == orientation
        response = api.post("/v1/photos", files={"file": (f"o{orientation}.jpg", data, "image/jpeg")})
        assert response.status_code == 202, response.text
        assert (response.json()["width"], response.json()["height"]) == (120, 80)  # as shown, not as stored
        ids[orientation] = response.json()["id"]
    final = wait_for_status(api, list(ids.values()))
    for orientation, photo_id in ids.items():
        assert final[photo_id]["status"] == "indexed", final[photo_id]
        thumbnail = api.get(f"/v1/photos/{photo_id}/thumbnail")
        assert thumbnail.status_code == 200
        pixels = np.asarray(Image.open(io.BytesIO(thumbnail.content)).convert("RGB"), dtype=np.float32)
        assert pixels.shape == (224, 224, 3)
        # The centre crop of the upright 120x80 marker: the red quadrant is the crop's top-left quarter.
        corners = {
            "top-left": pixels[10:90, 10:90],
            "top-right": pixels[10:90, 134:214],
            "bottom-left": pixels[134:214, 10:90],
            "bottom-right": pixels[134:214, 134:214],
        }
        red = {name: bool(patch[..., 0].mean() > 200 and patch[..., 2].mean() < 60) for name, patch in corners.items()}
        assert red == {"top-left": True, "top-right": False, "bottom-left": False, "bottom-right": False}, (
            orientation,
            red,
        )


def test_malformed_exif_does_not_lose_the_photo() -> None:
    data = bytearray(jpeg_bytes(_marker(), exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff\x01\x12"))
    image = load_rgb(bytes(data))
    assert image.size == (120, 80)
    assert (inspect_image(bytes(data)).width, inspect_image(bytes(data)).height) == (120, 80)


# 9. Odd modes become RGB with alpha composited, and embed to a finite vector.
def _modes() -> dict[str, Image.Image]:
    base = _marker()
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    i16 = Image.fromarray(np.arange(120 * 80, dtype=np.uint16).reshape(80, 120) * 7)
    assert i16.mode == "I;16"
    return {
        "CMYK": base.convert("CMYK"),
        "P": palette,
        "LA": base.convert("LA"),
        "I;16": i16,
        "1": base.convert("1"),
        "RGBA": rgba,
        "L": base.convert("L"),
    }


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "I;16", "1", "RGBA", "L"])
def test_odd_modes_become_rgb(mode: str) -> None:
    image = _modes()[mode]
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    rgb = load_rgb(buffer.getvalue())
    assert rgb.mode == "RGB" and rgb.size == (120, 80)
    if mode == "RGBA":
        assert np.asarray(rgb)[60, 100].tolist() == [127, 127, 255]  # half-transparent blue over white
    derivative = make_derivative(rgb)
    assert derivative.size == (224, 224)


@pytest.mark.usefixtures("worker")
def test_odd_modes_index_to_finite_vectors(api: TestClient, services: Services) -> None:
    from sqlalchemy import text

    from db.engine import session_scope

    ids = []
    for mode, image in _modes().items():
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        response = api.post(
            "/v1/photos", files={"file": (f"x.{fmt.lower()}", buffer.getvalue(), "application/octet-stream")}
        )
        assert response.status_code == 202, (mode, response.text)
        ids.append(response.json()["id"])
    final = wait_for_status(api, ids)
    assert {b["status"] for b in final.values()} == {"indexed"}, [b["error"] for b in final.values()]
    with session_scope() as session:
        norms = (
            session.execute(
                text("SELECT l2_norm(embedding) FROM photo_embeddings WHERE photo_id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": ids},
            )
            .scalars()
            .all()
        )
    assert len(norms) == len(ids) and all(abs(n - 1) < 0.01 for n in norms)


# 10. A 500-frame animation: first frame only.
@pytest.mark.usefixtures("worker")
def test_500_frame_gif_uses_the_first_frame(api: TestClient) -> None:
    # Distinct frames (identical ones would be merged by the encoder).
    frames = [solid((255, 0, 0), (96, 64))] + [solid((0, 0, 100 + i % 150), (96, 64)) for i in range(499)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as gif:
        assert getattr(gif, "n_frames", 1) == 500
    first = load_rgb(data)
    assert np.asarray(first).mean(axis=(0, 1))[0] > 200
    photo_id = api.post("/v1/photos", files={"file": ("anim.gif", data, "image/gif")}).json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"
    thumbnail = Image.open(io.BytesIO(api.get(f"/v1/photos/{photo_id}/thumbnail").content))
    assert np.asarray(thumbnail).mean(axis=(0, 1))[0] > 200  # red: the first frame, not the 499 blue ones


# 23. Keys: every /v1 route refuses a missing or wrong key; scopes are enforced.
def _v1_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every /v1 operation in the OpenAPI schema, so a new route is covered without editing this test."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            for method in operations:
                routes.append((method.upper(), path.replace("{photo_id}", "00000000-0000-0000-0000-000000000001")))
    return routes


def test_every_v1_route_refuses_a_missing_or_wrong_key(anonymous_api: TestClient) -> None:
    from api.app import create_app

    routes = _v1_routes(create_app())
    assert len(routes) >= 12
    for method, path in routes:
        missing = anonymous_api.request(method, path)
        assert missing.status_code == 401, (method, path, missing.status_code)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous_api.request(method, path, headers={"Authorization": "Bearer wsk_000000000000_nope"})
        assert wrong.status_code == 401, (method, path)
    assert anonymous_api.get("/healthz").status_code == 200


def test_scopes_and_revocation(services: Services) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from db.api_keys import revoke_key
    from db.engine import session_scope

    search_key = create_api_key("search")
    with TestClient(create_app(), headers={"Authorization": f"Bearer {search_key}"}) as client:
        assert client.get("/v1/search", params={"q": "a red circle"}).status_code == 200
        forbidden = upload(client, solid((5, 5, 5)))
        assert forbidden.status_code == 403 and "upload" in forbidden.json()["detail"]
        assert client.get("/v1/moderation/queue").status_code == 403
        assert client.delete("/v1/photos/00000000-0000-0000-0000-000000000001").status_code == 403
    with session_scope() as session:
        from sqlalchemy import text

        key_id = session.scalar(text("SELECT id FROM api_keys WHERE prefix = :p"), {"p": search_key.split("_")[1]})
        assert revoke_key(session, key_id)
    with TestClient(create_app(), headers={"Authorization": f"Bearer {search_key}"}) as client:
        revoked = client.get("/v1/search", params={"q": "a red circle"})
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def test_anonymous_scopes_make_search_public_but_not_upload(services: Services) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(anonymous_scopes=("search",))
    with TestClient(app) as client:
        assert client.get("/v1/search", params={"q": "a red circle"}).status_code == 200
        assert upload(client, solid((9, 9, 9))).status_code == 401


def test_rate_limit_answers_429_with_retry_after(services: Services) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(rate_limit_search="3/minute")
    with TestClient(app, headers={"Authorization": f"Bearer {create_api_key('search')}"}) as client:
        statuses = [client.get("/v1/search", params={"q": "a red circle"}).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        limited = client.get("/v1/search", params={"q": "a red circle"})
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    with TestClient(app, headers={"Authorization": f"Bearer {create_api_key('search')}"}) as other:
        assert other.get("/v1/search", params={"q": "a red circle"}).status_code == 200  # limits are per key


def test_upload_rate_limit_answers_429_with_retry_after_and_stores_nothing(services: Services) -> None:
    import hashlib

    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from api.app import create_app
    from db.engine import session_scope

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(rate_limit_upload="2/minute")
    images = [jpeg_bytes(solid((40 * n, 7, 200 - 40 * n), (64, 48))) for n in range(5)]
    with TestClient(app, headers={"Authorization": f"Bearer {create_api_key('upload')}"}) as client:
        responses = [
            client.post("/v1/photos", files={"file": (f"{n}.jpg", data, "image/jpeg")})
            for n, data in enumerate(images[:4])
        ]
        assert [r.status_code for r in responses] == [202, 202, 429, 429]
        limited = responses[2]
        assert "rate limit" in limited.json()["detail"] and "upload" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
    with session_scope() as session:
        stored = set(session.scalars(text("SELECT sha256 FROM photos")))
    assert stored == {hashlib.sha256(data).hexdigest() for data in images[:2]}  # the refused ones left no row
    settings = get_settings()
    assert len([p for p in settings.originals_dir.rglob("*") if p.is_file()]) == 2  # ... and no file
    assert not (settings.home / "tmp").exists() or not any(p.is_file() for p in (settings.home / "tmp").rglob("*"))
    with TestClient(app, headers={"Authorization": f"Bearer {create_api_key('upload')}"}) as other:
        accepted = other.post("/v1/photos", files={"file": ("4.jpg", images[4], "image/jpeg")})
        assert accepted.status_code == 202, accepted.text  # limits are per key


def test_callers_without_a_key_are_rate_limited_per_client_address(services: Services) -> None:
    """With search made public, one busy client must not use up everybody's allowance."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(
        rate_limit_search="2/minute", anonymous_scopes=("search",)
    )
    with TestClient(app, client=("203.0.113.7", 50000)) as busy:
        assert [busy.get("/v1/search", params={"q": "a red circle"}).status_code for _ in range(3)] == [200, 200, 429]
    with TestClient(app, client=("203.0.113.8", 50000)) as other:
        assert other.get("/v1/search", params={"q": "a red circle"}).status_code == 200


# 25. NUL and control characters in any text a client sends, texts past the model's context, integers past 64 bits:
# a 4xx with a message, never a 5xx, and nothing stored.
CONTROL_CHARACTERS = ["\x00", "\x07", "\x1b", "\x7f", "\x85"]


def _refused(response: httpx2.Response, *words: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and isinstance(body["errors"], list), body
    for word in words:
        assert word in body["detail"], body


@pytest.mark.parametrize("char", CONTROL_CHARACTERS)
def test_control_characters_in_any_text_parameter_are_422(api: TestClient, char: str) -> None:
    photo = "00000000-0000-0000-0000-000000000001"
    _refused(api.get("/v1/search", params={"q": f"a red{char} circle"}), "q", "control characters")
    _refused(api.get("/v1/search", params={"q": "a red circle", "region": f"DE{char}"}), "region", "control")
    _refused(
        api.get("/v1/search", params={"q": "a red circle"}, headers={b"X-Region": f"DE{char}".encode("latin-1")}),
        "region",
    )
    _refused(api.get(f"/v1/photos/{photo}", params={"region": f"{char}DE"}), "region")
    _refused(api.get(f"/v1/photos/{photo}/similar", headers={b"X-Region": char.encode("latin-1")}), "region")
    _refused(api.post("/v1/embeddings/text", json={"texts": ["fine", f"not{char}fine"]}), "texts.1", "control")
    _refused(api.post("/v1/search/vector", json={"embedding": [1.0], "region": f"D{char}"}), "region")
    _refused(
        api.post("/v1/search/vector", json={"embedding": [1.0]}, headers={b"X-Region": f"D{char}".encode("latin-1")}),
        "region",
    )
    _refused(api.patch(f"/v1/photos/{photo}", json={"title": f"x{char}y"}), "title", "control")
    _refused(api.patch(f"/v1/photos/{photo}", json={"photographer": f"x{char}y"}), "photographer")
    _refused(api.post(f"/v1/photos/{photo}/moderation", json={"status": "approved", "reason": f"ok{char}ok"}), "reason")
    _refused(api.get("/v1/photos", params={"cursor": f"1.{char}"}), "cursor")
    _refused(api.get("/v1/moderation/queue", params={"cursor": f"{char}"}), "cursor")
    for field in ("title", "photographer"):
        _refused(upload(api, solid((1, 2, 3)), **{field: f"a{char}b"}), field, "control characters")
    _nothing_stored()


def test_lone_surrogates_and_blank_texts_are_422_not_500(api: TestClient) -> None:
    body = b'{"texts": ["a \\ud800 b"]}'  # valid JSON, not valid Unicode text
    _refused(api.post("/v1/embeddings/text", content=body, headers={"content-type": "application/json"}), "texts")
    _refused(api.post("/v1/embeddings/text", json={"texts": ["   "]}), "blank")
    _refused(api.post("/v1/embeddings/text", json={"texts": [""]}), "texts")
    _refused(api.get("/v1/search", params={"q": " \t "}), "q")
    # Free text may hold line breaks and tabs (a moderator's reason, a pasted query); one-line fields may not.
    assert api.get("/v1/search", params={"q": "a red\tcircle\non grass"}).status_code == 200
    _refused(api.patch("/v1/photos/00000000-0000-0000-0000-000000000001", json={"title": "two\nlines"}), "title")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/moderation/queue", {"offset": str(2**64)}),
        ("/v1/moderation/queue", {"offset": "233039880910569406464"}),
        ("/v1/moderation/queue", {"limit": str(2**63)}),
        ("/v1/photos", {"limit": str(2**70)}),
        ("/v1/search", {"q": "a red circle", "k": str(2**64)}),
        ("/v1/photos/00000000-0000-0000-0000-000000000001/similar", {"k": "-9223372036854775809"}),
    ],
)
def test_integers_past_their_bounds_are_422(api: TestClient, path: str, params: dict[str, str]) -> None:
    _refused(api.get(path, params=params))


def test_json_numbers_that_are_not_finite_and_zero_vectors_are_422(api: TestClient) -> None:
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"embedding": [1.0, {literal}]}}'.encode()
        _refused(api.post("/v1/search/vector", content=body, headers={"content-type": "application/json"}))
    _refused(api.post("/v1/search/vector", json={"embedding": [0.0, -0.0, 0.0]}), "zero")
    _refused(api.post("/v1/search/vector", json={"embedding": [1.0], "k": 2**64}), "k")


def test_queries_longer_than_the_model_reads_are_cut_and_say_so(api: TestClient) -> None:
    long_query = " ".join(["a bright red circle on a dark blue background"] * 20)  # ~200 CLIP tokens, < 1000 chars
    assert len(long_query) <= 1000
    found = api.get("/v1/search", params={"q": long_query})
    assert found.status_code == 200, found.text
    assert found.json()["truncated"] is True
    assert api.get("/v1/search", params={"q": "a red circle"}).json()["truncated"] is False

    embedded = api.post("/v1/embeddings/text", json={"texts": [long_query, "a red circle"]})
    assert embedded.status_code == 200, embedded.text
    assert [item["truncated"] for item in embedded.json()["data"]] == [True, False]
    # Cut, not garbled: the long query's vector is the one of its first 77 tokens, near the short one's subject.
    vectors = np.asarray([item["embedding"] for item in embedded.json()["data"]])
    assert np.all(np.isfinite(vectors)) and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-3


def test_a_tokenizer_that_claims_no_limit_is_capped_at_the_text_tower(tiny_clip_path: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from core.embedding import ClipEmbedder

    folder = tmp_path / "unbounded-tokenizer"
    shutil.copytree(tiny_clip_path, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 1000000000000000019884624838656  # what transformers writes for "no limit"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    embedder = ClipEmbedder(str(folder), device="cpu")
    embedder.load()
    assert embedder.sentence_transformer.tokenizer.model_max_length == 77  # the text positions
    long_text = "a red circle and a blue square " * 30
    assert embedder.embed_texts([long_text]).shape == (1, embedder.dimension)
    assert embedder.truncated_texts([long_text, "a red circle"]) == [True, False]


def test_an_unexpected_error_is_500_with_a_request_id_and_logged(
    services: Services, admin_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app()

    @app.get("/v1/test-only-broken")
    def broken() -> None:
        raise RuntimeError("a bug the handlers do not know")

    with TestClient(app, headers={"Authorization": f"Bearer {admin_key}"}) as client, caplog.at_level(logging.ERROR):
        response = client.get("/v1/test-only-broken")
        assert response.status_code == 500
        body = response.json()
        assert body["detail"] == "internal error" and re.fullmatch(r"[0-9a-f]{32}", body["request_id"]), body
        assert response.headers["x-request-id"] == body["request_id"]
        assert "Traceback" not in response.text and "a bug" not in response.text
        logged = [r for r in caplog.records if body["request_id"] in r.getMessage()]
        assert logged and logged[0].exc_info is not None, caplog.text  # the id leads to the traceback in the log
        # Every answer carries an id; a client's own plain id is kept, anything else is replaced.
        assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"] == "trace-42"
        assert client.get("/healthz", headers={"X-Request-ID": "bad id\x01"}).headers["x-request-id"] != "bad id\x01"


def test_a_malformed_json_body_is_400_or_422_never_500(api: TestClient) -> None:
    for content in (b"\xff\x1a", b"{", b"[1, 2", b'{"texts": ["a"]} trailing'):
        response = api.post("/v1/embeddings/text", content=content, headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), (content, response.text)
        assert isinstance(response.json()["detail"], str)


# 26. A photo the caller may not see is the same 404 on every route as a photo that does not exist.
@pytest.mark.usefixtures("worker")
def test_a_photo_the_caller_may_not_see_is_404_on_every_route(api: TestClient, services: Services) -> None:
    import hashlib
    import uuid

    from fastapi.testclient import TestClient

    from services import intake

    def indexed(colour: tuple[int, int, int]) -> str:
        return upload(api, solid(colour, (96, 72))).json()["id"]

    visible, private, rejected = indexed((200, 40, 40)), indexed((40, 200, 40)), indexed((40, 40, 200))
    whole = jpeg_bytes(Image.effect_noise((800, 600), 60).convert("RGB"))
    truncated = whole[: len(whole) // 3]  # the header reads (accepted), the pixels do not (failed by the worker)
    failed = api.post("/v1/photos", files={"file": ("t.jpg", truncated, "image/jpeg")}).json()["id"]
    final = wait_for_status(api, [visible, private, rejected, failed])
    assert final[failed]["status"] == "failed" and final[visible]["status"] == "indexed", final
    assert api.patch(f"/v1/photos/{private}", json={"visibility": "private"}).status_code == 200
    moderated = api.post(f"/v1/photos/{rejected}/moderation", json={"status": "rejected", "reason": "test: hidden"})
    assert moderated.status_code == 200
    # Registered but never queued: pending for as long as the test runs (the CLI's intake path).
    spooled = services.home / "pending.png"
    spooled.write_bytes(png_bytes(solid((120, 120, 0), (64, 64))))
    data = spooled.read_bytes()
    pending = intake.register_photo(
        get_settings(), spooled, sha256=hashlib.sha256(data).hexdigest(), size=len(data), enqueue=False
    ).photo.id

    hidden = {"private": private, "rejected": rejected, "failed": failed, "pending": str(pending)}
    unknown = str(uuid.uuid4())
    routes = ("/v1/photos/{id}", "/v1/photos/{id}/thumbnail", "/v1/photos/{id}/similar")
    with TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('search')}"}) as searcher:
        for route in routes:
            assert searcher.get(route.format(id=visible)).status_code == 200, route  # the control: visible is seen
            missing = searcher.get(route.format(id=unknown))
            assert missing.status_code == 404
            expected = missing.json()["detail"].replace(unknown, "{id}")
            for state, photo_id in hidden.items():
                response = searcher.get(route.format(id=photo_id))
                assert response.status_code == 404, (state, route, response.text)
                assert response.json()["detail"].replace(photo_id, "{id}") == expected, (state, route, response.json())
    # Their owner (here an admin) still sees every one of them.
    for photo_id in hidden.values():
        assert api.get(f"/v1/photos/{photo_id}").status_code == 200
