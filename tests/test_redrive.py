"""Re-driving failed photos: `POST /v1/photos/{id}/redrive` and `withsense redrive`, with a real worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import CursorResult, text
from typer.testing import CliRunner

from cli.local_services import LocalRedis
from cli.main import app as cli_app
from tests.conftest import create_api_key, upload, wait_for_status
from tests.images import jpeg_bytes

pytestmark = pytest.mark.usefixtures("clean_db")


def _sql(statement: str, **params: object) -> list[tuple[Any, ...]]:
    from db.engine import session_scope

    with session_scope() as session:
        result = session.execute(text(statement), params)
        if isinstance(result, CursorResult) and not result.returns_rows:
            return []
        return [tuple(row) for row in result.all()]


def _force_failed(photo_id: str) -> None:
    """Turn an indexed photo into one that failed for good: no embedding, no thumbnail, attempts used up."""
    from core.settings import get_settings
    from core.storage import derivative_path

    _sql("DELETE FROM photo_embeddings WHERE photo_id = :id", id=photo_id)
    _sql("UPDATE photos SET status = 'failed', attempts = 3, error = 'forced by the test' WHERE id = :id", id=photo_id)
    derivative_path(get_settings(), uuid.UUID(photo_id)).unlink(missing_ok=True)


def _indexed_photo(api: TestClient, colour: tuple[int, int, int]) -> str:
    photo_id = upload(api, Image.new("RGB", (96, 64), colour)).json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"
    return photo_id


def _embedding_count(photo_id: str) -> int:
    return int(_sql("SELECT count(*) FROM photo_embeddings WHERE photo_id = :id", id=photo_id)[0][0])


@pytest.mark.usefixtures("worker")
def test_redrive_sends_a_failed_photo_back_and_it_ends_indexed(api: TestClient) -> None:
    photo_id = _indexed_photo(api, (10, 120, 200))
    _force_failed(photo_id)
    assert api.get(f"/v1/photos/{photo_id}/thumbnail").status_code == 404

    response = api.post(f"/v1/photos/{photo_id}/redrive")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == photo_id
    assert response.json()["attempts"] == 0 and response.json()["error"] is None  # a fresh attempt budget
    assert response.json()["status"] in ("pending", "processing", "indexed")

    body = wait_for_status(api, [photo_id])[photo_id]
    assert body["status"] == "indexed" and body["error"] is None, body
    assert body["attempts"] == 1
    assert _embedding_count(photo_id) == 1
    assert api.get(f"/v1/photos/{photo_id}/thumbnail").status_code == 200


@pytest.mark.usefixtures("worker")
def test_redrive_of_a_truncated_jpeg_fails_again_after_one_fresh_attempt(api: TestClient) -> None:
    data = jpeg_bytes(Image.effect_noise((400, 300), 80).convert("RGB"))
    photo_id = api.post("/v1/photos", files={"file": ("t.jpg", data[: len(data) // 3], "image/jpeg")}).json()["id"]
    first = wait_for_status(api, [photo_id])[photo_id]
    assert first["status"] == "failed" and first["attempts"] == 1

    assert api.post(f"/v1/photos/{photo_id}/redrive").status_code == 200
    again = wait_for_status(api, [photo_id])[photo_id]
    assert again["status"] == "failed" and again["attempts"] == 1 and again["error"]  # a verdict, not a loop
    assert _embedding_count(photo_id) == 0


@pytest.mark.usefixtures("worker")
def test_redrive_refuses_photos_that_are_not_failed(api: TestClient) -> None:
    photo_id = _indexed_photo(api, (200, 40, 40))
    conflict = api.post(f"/v1/photos/{photo_id}/redrive")
    assert conflict.status_code == 409 and "not failed" in conflict.json()["detail"]
    assert "indexed" in conflict.json()["detail"]
    after = api.get(f"/v1/photos/{photo_id}").json()
    assert after["status"] == "indexed" and after["attempts"] == 1  # untouched
    missing = api.post(f"/v1/photos/{uuid.uuid4()}/redrive")
    assert missing.status_code == 404


def test_redrive_needs_an_admin_key(api: TestClient, anonymous_api: TestClient, own_broker: LocalRedis) -> None:
    """On a broker of its own: no worker may index the photo while the test holds it `failed`."""
    photo_id = upload(api, Image.new("RGB", (64, 64), (1, 2, 250))).json()["id"]
    _sql("UPDATE photos SET status = 'failed', attempts = 3, error = 'forced by the test' WHERE id = :id", id=photo_id)

    unauthenticated = anonymous_api.post(f"/v1/photos/{photo_id}/redrive")
    assert unauthenticated.status_code == 401
    for scope in ("search", "upload", "moderate"):
        key = create_api_key(scope, name=f"redrive-{scope}")
        refused = anonymous_api.post(f"/v1/photos/{photo_id}/redrive", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403 and "admin" in refused.json()["detail"], (scope, refused.text)
    # Nothing was reset by the refused calls.
    assert _sql("SELECT status, attempts, error FROM photos WHERE id = :id", id=photo_id)[0] == (
        "failed",
        3,
        "forced by the test",
    )


def test_redrive_while_the_queue_is_down_answers_503_and_leaves_the_photo_pending(
    api: TestClient, own_broker: LocalRedis
) -> None:
    photo_id = upload(api, Image.new("RGB", (64, 64), (90, 2, 250))).json()["id"]
    _sql("UPDATE photos SET status = 'failed', attempts = 3, error = 'forced by the test' WHERE id = :id", id=photo_id)
    own_broker.stop()
    response = api.post(f"/v1/photos/{photo_id}/redrive")
    assert response.status_code == 503 and "reconciler" in response.json()["detail"]
    assert response.headers["retry-after"]
    # Pending with a fresh budget: the reconciler picks it up once the queue is back.
    assert _sql("SELECT status, attempts FROM photos WHERE id = :id", id=photo_id)[0] == ("pending", 0)


@pytest.mark.usefixtures("worker")
def test_cli_redrive_by_id_and_all_failed(api: TestClient) -> None:
    first, second, untouched = (_indexed_photo(api, colour) for colour in ((5, 200, 5), (200, 200, 5), (5, 5, 90)))
    for photo_id in (first, second):
        _force_failed(photo_id)
    runner = CliRunner()

    by_id = runner.invoke(cli_app, ["redrive", first])
    assert by_id.exit_code == 0, by_id.output
    assert "1 failed photos sent back to indexing" in by_id.output
    assert wait_for_status(api, [first])[first]["status"] == "indexed"
    assert api.get(f"/v1/photos/{second}").json()["status"] == "failed"  # only the named photo

    everything = runner.invoke(cli_app, ["redrive"])
    assert everything.exit_code == 0, everything.output
    assert "1 failed photos sent back to indexing" in everything.output  # `second`; the indexed ones are left alone
    final = wait_for_status(api, [first, second, untouched])
    assert {body["status"] for body in final.values()} == {"indexed"}
    assert final[second]["attempts"] == 1 and final[untouched]["attempts"] == 1
    assert all(_embedding_count(p) == 1 for p in (first, second, untouched))

    nothing = runner.invoke(cli_app, ["redrive"])
    assert nothing.exit_code == 0 and "0 failed photos sent back to indexing" in nothing.output

    bad = runner.invoke(cli_app, ["redrive", "not-a-uuid"])
    assert bad.exit_code == 2 and "not a photo id" in bad.output
