"""Upload → Redis → Celery worker → Postgres → search, end to end with the tiny trained CLIP."""

from __future__ import annotations

import io
import threading
import uuid
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, text

from evaluation.standins.synthetic import SyntheticImage, TemplateSet, generate
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, Services, wait_for_status
from tests.images import jpeg_bytes

if TYPE_CHECKING:
    import httpx2

pytestmark = pytest.mark.usefixtures("clean_db", "worker")


def _upload(api: TestClient, image: Image.Image, **fields: str) -> httpx2.Response:
    return api.post("/v1/photos", files={"file": ("photo.jpg", jpeg_bytes(image), "image/jpeg")}, data=fields)


def _one_per_concept(seed: int, templates: TemplateSet) -> dict[tuple[str, str], SyntheticImage]:
    """One image per (colour, shape), leaving out the moderation stand-in colours (hidden by design)."""
    chosen: dict[tuple[str, str], SyntheticImage] = {}
    for sample in generate(600, seed, templates=templates):
        if sample.colour not in (MINOR_COLOUR, UNSAFE_COLOUR):
            chosen.setdefault((sample.colour, sample.shape), sample)
    return chosen


def _plain_samples(n: int, seed: int) -> list[SyntheticImage]:
    return [s for s in generate(n * 4, seed) if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)][:n]


def test_text_search_ranks_unseen_images_for_unseen_captions(api: TestClient) -> None:
    gallery = _one_per_concept(seed=1234, templates="heldout")
    ids: dict[str, tuple[str, str]] = {}
    for concept, sample in gallery.items():
        response = _upload(api, sample.image, title=f"{concept[0]} {concept[1]}")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending"
        ids[response.json()["id"]] = concept
    final = wait_for_status(api, list(ids))
    assert all(body["status"] == "indexed" for body in final.values()), [b["error"] for b in final.values()]

    queries = _one_per_concept(seed=98765, templates="heldout")
    hits_at_5 = 0
    for concept, sample in queries.items():
        body = api.get("/v1/search", params={"q": sample.caption, "k": 5}).json()
        assert body["blocked"] is False and body["mode"] == "hybrid"
        assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
        # By the picture alone, best first by cosine similarity; hybrid (the default) also reads the titles.
        semantic = api.get("/v1/search", params={"q": sample.caption, "k": 5, "mode": "semantic"}).json()
        scores = [r["score"] for r in semantic["results"]]
        assert scores == sorted(scores, reverse=True)
        assert len(body["results"]) == 5
        if concept in [ids[r["id"]] for r in body["results"]]:
            hits_at_5 += 1
    recall_at_5 = hits_at_5 / len(queries)
    chance = 5 / len(gallery)
    print(f"Recall@5 = {recall_at_5:.2f} over {len(queries)} unseen captions (chance {chance:.2f})")
    assert recall_at_5 >= max(0.6, 3 * chance)


def test_thumbnail_is_the_224_derivative_and_status_reports_it(api: TestClient) -> None:
    sample = _plain_samples(1, seed=5)[0]
    photo_id = _upload(api, sample.image.resize((1024, 768))).json()["id"]
    body = wait_for_status(api, [photo_id])[photo_id]
    assert body["status"] == "indexed" and body["error"] is None
    assert body["width"] == 1024 and body["height"] == 768 and body["format"] == "JPEG"
    thumbnail = api.get(f"/v1/photos/{photo_id}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (224, 224)
    assert body["thumbnail_url"].endswith(f"/v1/photos/{photo_id}/thumbnail")


def test_duplicate_bytes_return_the_existing_photo(api: TestClient) -> None:
    data = jpeg_bytes(_plain_samples(1, seed=6)[0].image)
    first = api.post("/v1/photos", files={"file": ("a.jpg", data, "image/jpeg")})
    second = api.post("/v1/photos", files={"file": ("b.jpg", data, "image/jpeg")})
    assert first.status_code == 202 and first.json()["duplicate"] is False
    assert second.status_code == 200 and second.json()["duplicate"] is True
    assert second.json()["id"] == first.json()["id"]
    assert first.json()["sha256"] == second.json()["sha256"]


def test_corrupt_image_fails_for_good_with_a_reason(api: TestClient) -> None:
    data = jpeg_bytes(_plain_samples(1, seed=7)[0].image.resize((800, 600)))
    truncated = data[: len(data) // 3]
    response = api.post("/v1/photos", files={"file": ("t.jpg", truncated, "image/jpeg")})
    assert response.status_code == 202
    body = wait_for_status(api, [response.json()["id"]])[response.json()["id"]]
    assert body["status"] == "failed"
    assert "decoded" in body["error"] or "truncated" in body["error"]
    assert body["attempts"] == 1  # a decode error is a verdict, not a retry
    assert api.get(f"/v1/photos/{body['id']}/thumbnail").status_code == 404


def test_task_delivered_twice_leaves_one_embedding(api: TestClient, services: Services) -> None:
    from db.engine import session_scope
    from db.models import PhotoEmbedding
    from workers.tasks import ingest_photo

    photo_id = _upload(api, _plain_samples(1, seed=8)[0].image).json()["id"]
    wait_for_status(api, [photo_id])
    # Two more deliveries of the same task, at once, in this process (the real task code and database).
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(ingest_photo.run(photo_id))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r["result"] for r in results] == ["skipped", "skipped"]
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(PhotoEmbedding).where(PhotoEmbedding.photo_id == uuid.UUID(photo_id))
        )
    assert count == 1
    assert api.get(f"/v1/photos/{photo_id}").json()["attempts"] == 1


def test_concurrent_first_deliveries_write_one_row(api: TestClient, services: Services) -> None:
    from db import photos as photo_sql
    from db.engine import session_scope
    from workers.tasks import ingest_photo

    # Register a photo without queueing it, then run two deliveries of its task at the same moment.
    photo_id = _upload(api, _plain_samples(1, seed=9)[0].image).json()["id"]
    wait_for_status(api, [photo_id])
    with session_scope() as session:
        session.execute(text("DELETE FROM photo_embeddings WHERE photo_id = :id"), {"id": photo_id})
        session.execute(text("UPDATE photos SET status = 'pending', attempts = 0 WHERE id = :id"), {"id": photo_id})
    barrier = threading.Barrier(2)
    results: list[dict] = []

    def deliver() -> None:
        barrier.wait()
        results.append(ingest_photo.run(photo_id))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_scope() as session:
        count = session.scalar(text("SELECT count(*) FROM photo_embeddings WHERE photo_id = :id"), {"id": photo_id})
        photo = photo_sql.get_photo(session, uuid.UUID(photo_id))
        assert photo is not None and photo.status == "indexed"
    assert count == 1
    assert "indexed" in [r["result"] for r in results]


def test_delete_removes_from_search_at_once(api: TestClient) -> None:
    samples = _plain_samples(3, seed=10)
    ids = [_upload(api, s.image).json()["id"] for s in samples]
    wait_for_status(api, ids)
    found = {r["id"] for r in api.get("/v1/search", params={"q": samples[0].caption, "k": 10}).json()["results"]}
    assert ids[0] in found
    assert api.delete(f"/v1/photos/{ids[0]}").status_code == 204
    found_after = {r["id"] for r in api.get("/v1/search", params={"q": samples[0].caption, "k": 10}).json()["results"]}
    assert ids[0] not in found_after and set(ids[1:]) <= found_after
    assert api.get(f"/v1/photos/{ids[0]}").status_code == 404
    assert api.get(f"/v1/photos/{ids[0]}/thumbnail").status_code == 404
    assert api.delete(f"/v1/photos/{ids[0]}").status_code == 404
    similar = api.get(f"/v1/photos/{ids[1]}/similar").json()["results"]
    assert ids[0] not in {r["id"] for r in similar}


def test_image_search_and_similar_find_the_same_concept(api: TestClient) -> None:
    gallery = _one_per_concept(seed=4321, templates="heldout")
    ids = {}
    for concept, sample in gallery.items():
        ids[_upload(api, sample.image).json()["id"]] = concept
    wait_for_status(api, list(ids))
    probes = _one_per_concept(seed=777, templates="heldout")
    image_hits = similar_hits = 0
    for concept, sample in probes.items():
        body = api.post(
            "/v1/search/image", params={"k": 5}, files={"file": ("q.jpg", jpeg_bytes(sample.image), "image/jpeg")}
        ).json()
        image_hits += concept in [ids[r["id"]] for r in body["results"]]
    for photo_id, concept in ids.items():
        results = api.get(f"/v1/photos/{photo_id}/similar", params={"k": 5}).json()["results"]
        assert photo_id not in [r["id"] for r in results]
        same_colour = [ids[r["id"]][0] == concept[0] or ids[r["id"]][1] == concept[1] for r in results]
        similar_hits += bool(same_colour and same_colour[0])
    assert image_hits / len(probes) >= 0.6
    assert similar_hits / len(ids) >= 0.6


def test_search_on_an_empty_index_is_empty_not_an_error(api: TestClient) -> None:
    body = api.get("/v1/search", params={"q": "a red circle"}).json()
    assert body["results"] == [] and body["blocked"] is False
