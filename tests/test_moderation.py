"""Moderation and the minors law, enforced in SQL for the API and for other services alike.

Yellow shapes stand in for children and brown shapes for unsafe content (tests/moderation_prompts.yaml),
scored by the worker's zero-shot classifier with the tiny trained CLIP.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from core.policy import DISCLAIMER
from evaluation.standins.synthetic import SyntheticImage
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, Services, create_api_key, sample_of, upload, wait_for_status
from tests.images import jpeg_bytes

if TYPE_CHECKING:
    import httpx2

pytestmark = pytest.mark.usefixtures("clean_db", "worker")

FREE = "XF"  # a region where the law does not apply (set per test)


@pytest.fixture()
def free_region(services: Services) -> Iterator[str]:
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, FREE, minors_restricted=False, note="test")
    yield FREE
    with session_scope() as session:
        delete_region_rule(session, FREE)


@pytest.fixture()
def search_client(services: Services) -> Iterator[TestClient]:
    from api.app import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {create_api_key('search')}"}) as client:
        yield client


def _index(api: TestClient, *samples: SyntheticImage) -> tuple[list[str], dict[str, dict[str, Any]]]:
    ids = [upload(api, s.image).json()["id"] for s in samples]
    final = wait_for_status(api, ids)
    assert all(body["status"] == "indexed" for body in final.values())
    return ids, final


def _ids(response: httpx2.Response) -> list[str]:
    return [r["id"] for r in response.json()["results"]]


@pytest.mark.parametrize("query", ["a child playing in the park", "дети на пляже", "a 10 year old boy", "малыши"])
def test_queries_for_children_get_exactly_the_disclaimer(search_client: TestClient, query: str) -> None:
    body = search_client.get("/v1/search", params={"q": query}).json()
    assert body == {**body, "blocked": True, "disclaimer": DISCLAIMER, "results": []}
    assert body["disclaimer"] == "This image is unavailable in your country in compliance with local laws."


def test_blocked_query_is_answered_where_the_law_does_not_apply(search_client: TestClient, free_region: str) -> None:
    body = search_client.get("/v1/search", params={"q": "a child playing", "region": free_region}).json()
    assert body["blocked"] is False and body["disclaimer"] is None
    via_header = search_client.get("/v1/search", params={"q": "a child playing"}, headers={"X-Region": free_region})
    assert via_header.json()["blocked"] is False


def test_photo_classified_as_minor_is_hidden_in_restricted_regions_everywhere(
    api: TestClient, search_client: TestClient, free_region: str
) -> None:
    child = sample_of(MINOR_COLOUR, "star", seed=1)
    other = sample_of("blue", "star", seed=2)
    (child_id, other_id), final = _index(api, child, other)
    assert final[child_id]["depicts_minor"] is True and final[other_id]["depicts_minor"] is False
    assert final[child_id]["moderation_status"] == "approved"

    query: dict[str, str | int] = {"q": "a yellow star", "k": 10}
    assert child_id not in _ids(search_client.get("/v1/search", params=query))
    assert child_id in _ids(search_client.get("/v1/search", params={**query, "region": free_region}))

    probe = jpeg_bytes(sample_of(MINOR_COLOUR, "star", seed=3).image)
    image_search = search_client.post("/v1/search/image", files={"file": ("q.jpg", probe, "image/jpeg")})
    assert image_search.json() == {**image_search.json(), "blocked": True, "disclaimer": DISCLAIMER, "results": []}
    blue_probe = jpeg_bytes(sample_of("blue", "circle", seed=4).image)
    assert child_id not in _ids(
        search_client.post("/v1/search/image", files={"file": ("q.jpg", blue_probe, "image/jpeg")})
    )
    allowed = search_client.post(
        "/v1/search/image", params={"region": free_region}, files={"file": ("q.jpg", probe, "image/jpeg")}
    )
    assert child_id in _ids(allowed)

    assert child_id not in _ids(search_client.get(f"/v1/photos/{other_id}/similar"))
    similar_to_child = search_client.get(f"/v1/photos/{child_id}/similar").json()
    assert similar_to_child["blocked"] is True and similar_to_child["disclaimer"] == DISCLAIMER
    assert child_id in _ids(search_client.get(f"/v1/photos/{other_id}/similar", params={"region": free_region}))

    for route in (f"/v1/photos/{child_id}", f"/v1/photos/{child_id}/thumbnail"):
        restricted = search_client.get(route)
        assert restricted.status_code == 451 and restricted.json()["detail"] == DISCLAIMER
        assert search_client.get(route, params={"region": free_region}).status_code == 200
    assert api.get(f"/v1/photos/{child_id}/thumbnail").status_code == 200  # moderators review it


def test_parental_consent_makes_it_visible_at_once_and_is_audited(api: TestClient, search_client: TestClient) -> None:
    (child_id, other_id), final = _index(
        api, sample_of(MINOR_COLOUR, "circle", seed=5), sample_of("blue", "circle", seed=15)
    )
    assert final[child_id]["depicts_minor"] is True and final[other_id]["depicts_minor"] is False
    # A probe that is not itself a minor, so image search is not blocked by the query; k covers every photo.
    probe = {"file": ("q.jpg", jpeg_bytes(sample_of("green", "circle", seed=16).image), "image/jpeg")}

    def image_search() -> list[str]:
        response = search_client.post("/v1/search/image", params={"k": 10}, files=probe)
        assert response.status_code == 200 and response.json()["blocked"] is False, response.text
        return _ids(response)

    # Without consent, in the default (restricted) region, it is hidden from every kind of search.
    assert child_id not in _ids(search_client.get("/v1/search", params={"q": "a yellow circle"}))
    assert child_id not in image_search() and other_id in image_search()
    assert child_id not in _ids(search_client.get(f"/v1/photos/{other_id}/similar"))
    assert search_client.get(f"/v1/photos/{child_id}/similar").json()["blocked"] is True

    response = api.post(
        f"/v1/photos/{child_id}/moderation", json={"parental_consent": True, "reason": "signed consent form #123"}
    )
    assert response.status_code == 200 and response.json()["parental_consent"] is True
    assert child_id in _ids(search_client.get("/v1/search", params={"q": "a yellow circle"}))
    assert search_client.get(f"/v1/photos/{child_id}/thumbnail").status_code == 200
    assert search_client.get(f"/v1/photos/{child_id}").status_code == 200
    assert child_id in image_search()
    assert child_id in _ids(search_client.get(f"/v1/photos/{other_id}/similar"))
    similar_to_child = search_client.get(f"/v1/photos/{child_id}/similar")
    assert similar_to_child.status_code == 200
    assert similar_to_child.json()["blocked"] is False and similar_to_child.json()["disclaimer"] is None
    assert _ids(similar_to_child) == [other_id]

    trail = api.get(f"/v1/photos/{child_id}/moderation").json()
    assert [entry["action"] for entry in trail] == ["classified", "moderated"]
    assert trail[0]["actor"] == "classifier" and "minor" in trail[0]["changes"]["scores"]
    assert trail[1]["changes"] == {"parental_consent": {"from": False, "to": True}}
    assert trail[1]["reason"] == "signed consent form #123" and trail[1]["actor"].startswith("key:")


def test_unsafe_photo_waits_in_the_queue_until_a_moderator_decides(api: TestClient, search_client: TestClient) -> None:
    (unsafe_id, plain_id), final = _index(
        api, sample_of(UNSAFE_COLOUR, "square", seed=6), sample_of("green", "square", seed=7)
    )
    assert final[unsafe_id]["moderation_status"] == "pending_review" and final[unsafe_id]["unsafe"] is True
    assert final[plain_id]["moderation_status"] == "approved"
    queue = api.get("/v1/moderation/queue").json()
    assert queue["total"] == 1 and queue["items"][0]["photo"]["id"] == unsafe_id
    assert queue["items"][0]["scores"]["unsafe"] >= 0.5
    assert unsafe_id not in _ids(search_client.get("/v1/search", params={"q": "a brown square", "region": "XF"}))
    assert search_client.get(f"/v1/photos/{unsafe_id}/thumbnail").status_code == 404

    decided = api.post(
        f"/v1/photos/{unsafe_id}/moderation",
        json={"status": "approved", "unsafe": False, "reason": "brown paint, not gore"},
    )
    assert decided.json()["moderation_status"] == "approved"
    assert unsafe_id in _ids(search_client.get("/v1/search", params={"q": "a brown square"}))
    assert api.get("/v1/moderation/queue").json()["total"] == 0

    api.post(
        f"/v1/photos/{unsafe_id}/moderation", json={"status": "rejected", "reason": "photographer withdrew consent"}
    )
    assert unsafe_id not in _ids(search_client.get("/v1/search", params={"q": "a brown square"}))
    actions = [
        (e["actor"] == "classifier", e["changes"].get("moderation_status", {}).get("to"))
        for e in api.get(f"/v1/photos/{unsafe_id}/moderation").json()
    ]
    assert actions == [(True, "pending_review"), (False, "approved"), (False, "rejected")]


def test_declared_minor_at_upload_is_hidden_and_audited(api: TestClient, search_client: TestClient) -> None:
    sample = sample_of("red", "triangle", seed=8)
    photo_id = upload(api, sample.image, depicts_minor="true", parental_consent="false").json()["id"]
    body = wait_for_status(api, [photo_id])[photo_id]
    assert body["depicts_minor"] is True and body["parental_consent"] is False
    assert photo_id not in _ids(search_client.get("/v1/search", params={"q": "a red triangle"}))
    first = api.get(f"/v1/photos/{photo_id}/moderation").json()[0]
    assert first["action"] == "declared" and first["changes"]["depicts_minor"] == {"from": False, "to": True}
    bad = upload(api, sample_of("red", "star", seed=9).image, depicts_minor="maybe")
    assert bad.status_code == 422


def test_moderation_needs_the_moderate_scope_and_a_reason(api: TestClient, search_client: TestClient) -> None:
    (photo_id,), _ = _index(api, sample_of("blue", "cross", seed=10))
    assert search_client.get("/v1/moderation/queue").status_code == 403
    assert (
        search_client.post(
            f"/v1/photos/{photo_id}/moderation", json={"status": "rejected", "reason": "nope"}
        ).status_code
        == 403
    )
    assert api.post(f"/v1/photos/{photo_id}/moderation", json={"status": "rejected"}).status_code == 422
    assert api.post(f"/v1/photos/{photo_id}/moderation", json={"reason": "nothing to change"}).status_code == 422
    assert (
        api.post(f"/v1/photos/{uuid.uuid4()}/moderation", json={"status": "rejected", "reason": "gone"}).status_code
        == 404
    )


def test_audit_log_is_append_only_and_outlives_the_photo(api: TestClient, services: Services) -> None:
    from db.engine import session_scope

    (photo_id,), _ = _index(api, sample_of("pink", "circle", seed=11))
    assert api.delete(f"/v1/photos/{photo_id}").status_code == 204
    trail = api.get(f"/v1/photos/{photo_id}/moderation").json()
    assert [e["action"] for e in trail] == ["classified", "deleted"]
    for statement in ("UPDATE moderation_audit SET reason = 'x'", "DELETE FROM moderation_audit"):
        with pytest.raises(Exception, match="append-only"), session_scope() as session:
            session.execute(text(statement))


def test_read_only_role_sees_only_what_moderation_allows(
    api: TestClient, search_client: TestClient, services: Services, free_region: str
) -> None:
    child, plain, unsafe = (
        sample_of(MINOR_COLOUR, "square", seed=12),
        sample_of("purple", "square", seed=13),
        sample_of(UNSAFE_COLOUR, "triangle", seed=14),
    )
    (child_id, plain_id, unsafe_id), _ = _index(api, child, plain, unsafe)

    role = f"catalogue_{uuid.uuid4().hex[:8]}"
    admin_dsn = services.database_url.replace("+psycopg", "")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{role}-pw' IN ROLE withsense_reader")
    reader_dsn = services.postgres.dsn_for(role, f"{role}-pw")
    try:
        with psycopg.connect(reader_dsn, autocommit=True) as conn:
            for table in ("photos", "photo_embeddings", "moderation_scores", "moderation_audit", "api_keys"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(f"SELECT * FROM {table} LIMIT 1")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("UPDATE photos SET parental_consent = true")
            visible = {str(r[0]) for r in conn.execute("SELECT id FROM searchable_photos")}
            assert visible == {plain_id}

            vector = api.post("/v1/embeddings/text", json={"texts": ["a yellow square"]}).json()["data"][0]["embedding"]
            literal = "[" + ",".join(str(x) for x in vector) + "]"
            restricted = [
                str(r[0]) for r in conn.execute("SELECT photo_id FROM search_photos(%s::vector, 10, 'RU')", (literal,))
            ]
            api_restricted = _ids(search_client.get("/v1/search", params={"q": "a yellow square", "region": "RU"}))
            assert restricted == api_restricted and child_id not in restricted and unsafe_id not in restricted
            allowed = [
                str(r[0])
                for r in conn.execute("SELECT photo_id FROM search_photos(%s::vector, 10, %s)", (literal, free_region))
            ]
            assert child_id in allowed and unsafe_id not in allowed
            assert allowed == _ids(
                search_client.get("/v1/search", params={"q": "a yellow square", "region": free_region})
            )
            # Joining with a table of the other service's own, as the README shows.
            conn.execute("CREATE TEMP TABLE favourites (photo_id uuid, buyer text)")
            conn.execute("INSERT INTO favourites VALUES (%s, 'ana')", (plain_id,))
            joined = conn.execute(
                "SELECT f.buyer, s.score FROM search_photos(%s::vector, 10, 'RU') s JOIN favourites f USING (photo_id)",
                (literal,),
            ).fetchall()
            assert [row[0] for row in joined] == ["ana"]
            # Dropped here, not at disconnect: the server drops temp tables after the client has gone, which
            # can be after the DROP ROLE below.
            conn.execute("DROP TABLE favourites")
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_text_embedding_endpoint_matches_the_search_space(api: TestClient) -> None:
    body = api.post("/v1/embeddings/text", json={"texts": ["a red circle", "a child"]}).json()
    assert body["dimension"] == len(body["data"][0]["embedding"])
    assert [d["describes_minor"] for d in body["data"]] == [False, True]
    norm = sum(x * x for x in body["data"][0]["embedding"]) ** 0.5
    assert abs(norm - 1) < 1e-3
    assert api.post("/v1/embeddings/text", json={"texts": []}).status_code == 422
