"""User mistakes get a clear message and the right status, and leave nothing behind."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings, get_settings, reload_settings
from tests.conftest import Services
from tests.images import jpeg_bytes, png_declaring, solid

pytestmark = pytest.mark.usefixtures("clean_db")


@pytest.mark.parametrize("k", [0, 101, -3])
def test_k_out_of_range_is_422_with_a_message(api: TestClient, k: int) -> None:
    response = api.get("/v1/search", params={"q": "a red circle", "k": k})
    assert response.status_code == 422
    assert "k" in response.json()["detail"]


@pytest.mark.parametrize("q", ["", "   "])
def test_empty_query_is_422(api: TestClient, q: str) -> None:
    response = api.get("/v1/search", params={"q": q})
    assert response.status_code == 422
    assert "q" in response.json()["detail"] or "empty" in response.json()["detail"]


def test_missing_query_is_422(api: TestClient) -> None:
    assert api.get("/v1/search").status_code == 422


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"<html><body>not an image</body></html>", "x.jpg"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "x.jpg"),
        (b"<?php system($_GET['c']); ?>", "x.jpg.php"),
        (b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF", "x.jpg"),
    ],
)
def test_non_images_sent_as_jpeg_are_415(api: TestClient, services: Services, payload: bytes, name: str) -> None:
    response = api.post("/v1/photos", files={"file": (name, payload, "image/jpeg")})
    assert response.status_code == 415
    assert "format" in response.json()["detail"]
    _assert_nothing_stored(services)


def test_decompression_bomb_is_413_and_nothing_is_stored(api: TestClient, services: Services) -> None:
    response = api.post("/v1/photos", files={"file": ("bomb.png", png_declaring(20000, 20000), "image/png")})
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]
    _assert_nothing_stored(services)


def test_body_over_the_size_cap_is_413(services: Services, admin_key: str) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(max_upload_bytes=10_000)
    with TestClient(app, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        big = jpeg_bytes(solid((10, 200, 30), (1200, 900)), quality=100)
        assert len(big) > 10_000
        response = client.post("/v1/photos", files={"file": ("big.jpg", big, "image/jpeg")})
        assert response.status_code == 413
        assert "larger than" in response.json()["detail"]
    _assert_nothing_stored(services)


def test_upload_without_a_file_part_is_400(api: TestClient) -> None:
    response = api.post("/v1/photos", data={"title": "no file"}, files={"other": ("x.txt", b"x", "text/plain")})
    assert response.status_code == 400
    assert "file" in response.json()["detail"]


def test_upload_that_is_not_multipart_is_415(api: TestClient) -> None:
    response = api.post("/v1/photos", content=b"\xff\xd8\xff", headers={"content-type": "image/jpeg"})
    assert response.status_code == 415


def test_unknown_photo_is_404_and_bad_id_is_422(api: TestClient) -> None:
    assert api.get("/v1/photos/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.get("/v1/photos/not-a-uuid").status_code == 422


def _assert_nothing_stored(services: Services) -> None:
    from sqlalchemy import text

    from db.engine import session_scope

    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM photos")) == 0
    originals = get_settings().originals_dir
    assert not originals.exists() or not any(p.is_file() for p in originals.rglob("*"))
    spool = get_settings().home / "tmp"
    assert not spool.exists() or not any(spool.iterdir())


@pytest.mark.parametrize("threads", [2, 1])
def test_the_api_process_runs_torch_with_the_configured_threads(
    services: Services,
    threads: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from fastapi.testclient import TestClient

    from api.app import create_app

    monkeypatch.setenv("WITHSENSE_API_TORCH_THREADS", str(threads))
    reload_settings()
    try:
        with TestClient(create_app()) as client:
            assert client.get("/healthz").status_code == 200
            # Torch keeps a thread count per OS thread, taken from the process setting on first use: the
            # threads that embed queries start after the app has started, like this one.
            seen: list[int] = []
            probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            probe.start()
            probe.join()
            assert seen == [threads]
    finally:
        monkeypatch.delenv("WITHSENSE_API_TORCH_THREADS")
        reload_settings()


def test_docs_and_redoc_work_offline_from_the_apps_own_files(api: TestClient) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = api.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert f"/static/docs/{asset}" in html.text
        assert "cdn." not in html.text and "fonts.googleapis" not in html.text, html.text  # nothing from outside
        script = api.get(f"/static/docs/{asset}")
        assert script.status_code == 200 and len(script.content) > 100_000  # the real bundle, not a stub
    assert api.get("/static/docs/swagger-ui.css").status_code == 200


def test_the_openapi_document_tells_the_truth_about_errors(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # FastAPI's default array of errors is not what 422 sends
    assert components["ValidationErrorOut"]["properties"]["detail"]["type"] == "string"
    assert schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "500" in responses, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "403", "422", "503"} <= responses.keys(), (method, path, sorted(responses))
                assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ValidationErrorOut")
            if operation.get("requestBody"):
                assert "400" in responses, (method, path)
    assert "429" in schema["paths"]["/v1/search"]["get"]["responses"]
    assert "429" in schema["paths"]["/v1/photos"]["post"]["responses"]
    # The real constraints: what the API refuses, the schema refuses too.
    q = next(p for p in schema["paths"]["/v1/search"]["get"]["parameters"] if p["name"] == "q")["schema"]
    assert q["minLength"] == 1 and q["maxLength"] == 1000 and "\\u0000" in q["pattern"]
    offset = next(p for p in schema["paths"]["/v1/moderation/queue"]["get"]["parameters"] if p["name"] == "offset")
    assert offset["schema"]["maximum"] == 1_000_000
    patch = components["PhotoChange"]
    assert patch["additionalProperties"] is False and {"required": ["title"]} in patch["anyOf"]
    texts = components["TextEmbeddingIn"]["properties"]["texts"]["items"]
    assert texts["minLength"] == 1 and "pattern" in texts
    upload_file = schema["paths"]["/v1/photos"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload_file["schema"]["properties"]["file"]["minLength"] == 1


def test_the_search_vector_schema_names_the_models_dimension_once_loaded(api: TestClient) -> None:
    from core.embedding import get_embedder

    api.get("/v1/search", params={"q": "load the model"})
    dimension = get_embedder().dimension
    embedding = api.get("/openapi.json").json()["components"]["schemas"]["VectorSearchIn"]["properties"]["embedding"]
    assert embedding["minItems"] == embedding["maxItems"] == dimension
    assert embedding["contains"] == {"not": {"const": 0}}
