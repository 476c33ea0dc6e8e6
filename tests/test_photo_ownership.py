"""Photographers own what they upload: they follow and delete their photos, nobody else's (moderators all)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import create_api_key, upload

pytestmark = pytest.mark.usefixtures("clean_db", "own_broker")  # nothing indexes: these photos stay pending


def _client(api: TestClient, *scopes: str) -> TestClient:
    return TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key(*scopes)}"})


@pytest.fixture()
def alice(api: TestClient) -> Iterator[TestClient]:
    yield _client(api, "upload")


@pytest.fixture()
def bob(api: TestClient) -> Iterator[TestClient]:
    yield _client(api, "upload")


def _image(seed: int) -> Image.Image:
    return Image.new("RGB", (80, 60), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))


def test_only_the_uploader_or_a_moderator_may_delete_a_photo(
    api: TestClient, alice: TestClient, bob: TestClient
) -> None:
    mine = upload(alice, _image(1)).json()["id"]
    theirs = upload(bob, _image(2)).json()["id"]

    refused = bob.delete(f"/v1/photos/{mine}")
    assert refused.status_code == 403 and "uploaded with another key" in refused.json()["detail"]
    assert _client(api, "search").delete(f"/v1/photos/{mine}").status_code == 403  # a search key may not delete at all
    assert alice.get(f"/v1/photos/{mine}").status_code == 200  # still there

    assert alice.delete(f"/v1/photos/{mine}").status_code == 204
    assert alice.get(f"/v1/photos/{mine}").status_code == 404
    moderator = _client(api, "moderate")  # a moderator's key alone: it reviews and removes any photo
    assert moderator.get(f"/v1/photos/{theirs}").status_code == 200  # pending: others could not see it yet
    assert moderator.patch(f"/v1/photos/{theirs}", json={"visibility": "private"}).status_code == 200
    assert moderator.delete(f"/v1/photos/{theirs}").status_code == 204
    assert api.get(f"/v1/photos/{theirs}").status_code == 404


def test_uploaders_follow_their_own_photos_even_while_hidden_by_moderation(
    api: TestClient, alice: TestClient, bob: TestClient
) -> None:
    photo_id = upload(alice, _image(3)).json()["id"]
    rejected = api.post(f"/v1/photos/{photo_id}/moderation", json={"status": "rejected", "reason": "test: off-topic"})
    assert rejected.status_code == 200

    own = alice.get(f"/v1/photos/{photo_id}")  # an upload-only key reads its own photo's status
    assert own.status_code == 200 and own.json()["moderation_status"] == "rejected"
    assert bob.get(f"/v1/photos/{photo_id}").status_code == 404  # for others it does not exist


def test_a_duplicate_of_someone_elses_photo_reveals_nothing(alice: TestClient, bob: TestClient) -> None:
    image = _image(4)
    first = upload(alice, image)
    assert first.status_code == 202
    again = upload(alice, image)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and again.json()["duplicate"] is True

    other = upload(bob, image)
    assert other.status_code == 409
    assert first.json()["id"] not in other.text and "already in the catalogue" in other.json()["detail"]


def test_an_uploader_lists_its_own_photos_newest_first_page_by_page(
    api: TestClient, alice: TestClient, bob: TestClient
) -> None:
    mine = [upload(alice, _image(10 + i)).json()["id"] for i in range(5)]
    theirs = upload(bob, _image(20)).json()["id"]

    first = alice.get("/v1/photos", params={"limit": 2}).json()
    assert [p["id"] for p in first["items"]] == mine[::-1][:2]
    pages, cursor = [first], first["next_cursor"]
    while cursor:
        pages.append(alice.get("/v1/photos", params={"limit": 2, "cursor": cursor}).json())
        cursor = pages[-1]["next_cursor"]
    assert [p["id"] for page in pages for p in page["items"]] == mine[::-1]
    assert len(pages) == 3

    assert [p["id"] for p in bob.get("/v1/photos").json()["items"]] == [theirs]
    assert alice.get("/v1/photos", params={"status": "indexed"}).json()["items"] == []
    assert {p["status"] for p in alice.get("/v1/photos", params={"status": "pending"}).json()["items"]} == {"pending"}

    assert alice.get("/v1/photos", params={"all_uploaders": "true"}).status_code == 403
    everyone = (
        _client(api, "moderate").get("/v1/photos", params={"all_uploaders": "true", "limit": 100}).json()["items"]
    )
    assert {p["id"] for p in everyone} == set(mine) | {theirs}

    # A cursor is a place in the order, not a photo: it still works when its photo is deleted meanwhile ...
    boundary = first["next_cursor"]
    assert alice.delete(f"/v1/photos/{mine[3]}").status_code == 204
    after_delete = alice.get("/v1/photos", params={"limit": 10, "cursor": boundary}).json()
    assert [p["id"] for p in after_delete["items"]] == mine[::-1][2:] and after_delete["next_cursor"] is None
    # ... and anything else is refused with a message, never a lookup that could say whether a photo exists.
    for bad in (str(uuid.uuid4()), theirs, "1.zz", "12345678901234567.00000000000000000000000000000000"):
        refused = alice.get("/v1/photos", params={"cursor": bad})
        assert refused.status_code == 422 and "cursor" in refused.json()["detail"], (bad, refused.text)
        assert refused.json()["errors"], refused.json()
    assert alice.get("/v1/photos", params={"limit": 0}).status_code == 422


def test_the_uploader_edits_its_photo_and_makes_it_private(api: TestClient, alice: TestClient, bob: TestClient) -> None:
    from sqlalchemy import text

    from db.engine import session_scope

    photo_id = upload(alice, _image(30), title="harbour at dawn").json()["id"]
    assert bob.patch(f"/v1/photos/{photo_id}", json={"title": "mine now"}).status_code == 403
    assert alice.patch(f"/v1/photos/{photo_id}", json={}).status_code == 422
    assert alice.patch(f"/v1/photos/{photo_id}", json={"visibility": None}).status_code == 422

    changed = alice.patch(f"/v1/photos/{photo_id}", json={"title": "Harbour at dawn, Tallinn", "visibility": "private"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["title"] == "Harbour at dawn, Tallinn" and changed.json()["visibility"] == "private"
    assert changed.json()["depicts_minor"] is False
    with session_scope() as session:  # a private photo is never searchable, whatever its status
        session.execute(
            text("UPDATE photos SET status = 'indexed', moderation_status = 'approved' WHERE id = :id"),
            {"id": photo_id},
        )
        assert (
            session.execute(text("SELECT count(*) FROM searchable_photos WHERE id = :id"), {"id": photo_id}).scalar()
            == 0
        )
    assert bob.get(f"/v1/photos/{photo_id}").status_code == 404
    assert alice.get(f"/v1/photos/{photo_id}").json()["visibility"] == "private"

    # A new title is screened like an upload's: it now describes a child.
    retitled = alice.patch(f"/v1/photos/{photo_id}", json={"title": "мой сын на причале", "visibility": "public"})
    assert retitled.json()["depicts_minor"] is True and retitled.json()["visibility"] == "public"
    trail = api.get(f"/v1/photos/{photo_id}/moderation").json()
    assert [e["action"] for e in trail][-1] == "screened"


def test_a_declaration_sent_with_a_duplicate_is_recorded(api: TestClient, alice: TestClient) -> None:
    image = _image(40)
    photo_id = upload(alice, image).json()["id"]
    again = upload(alice, image, depicts_minor="true", parental_consent="true")
    assert again.status_code == 200 and again.json()["id"] == photo_id
    assert again.json()["depicts_minor"] is True and again.json()["parental_consent"] is True
    trail = api.get(f"/v1/photos/{photo_id}/moderation").json()
    assert [e["action"] for e in trail] == ["declared"] and trail[0]["actor"].startswith("key:")


def test_a_declaration_never_undoes_a_moderators_decision_by_itself(api: TestClient, alice: TestClient) -> None:
    image = _image(41)
    photo_id = upload(alice, image, depicts_minor="true").json()["id"]
    decided = api.post(
        f"/v1/photos/{photo_id}/moderation",
        json={"status": "approved", "parental_consent": False, "reason": "test: no consent on file"},
    )
    assert decided.status_code == 200 and decided.json()["parental_consent"] is False

    again = upload(alice, image, parental_consent="true")  # the same bytes, now "with consent"
    assert again.status_code == 200
    assert again.json()["parental_consent"] is True and again.json()["moderation_status"] == "pending_review"
    assert api.get("/v1/photos/" + photo_id).json()["moderation_status"] == "pending_review"  # a person checks it first
