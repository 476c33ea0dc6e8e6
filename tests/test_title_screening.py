"""A photo whose own title describes a child is treated as showing a minor: the same law as for queries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import Services, create_api_key, upload, wait_for_status

pytestmark = pytest.mark.usefixtures("clean_db", "worker")

FREE = "ZF"  # a region where the minors law does not apply (set for these tests only)


@pytest.fixture()
def free_region(services: Services) -> Iterator[str]:
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, FREE, minors_restricted=False, note="test")
    yield FREE
    with session_scope() as session:
        delete_region_rule(session, FREE)


def _found(client: TestClient, photo_id: str, region: str) -> bool:
    response = client.get("/v1/search", params={"q": "a green circle", "k": 100, "region": region})
    assert response.status_code == 200, response.text
    return photo_id in {r["id"] for r in response.json()["results"]}


def test_a_title_about_children_hides_the_photo_where_the_law_applies(api: TestClient, free_region: str) -> None:
    searcher = TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('search')}"})
    kids = upload(api, Image.new("RGB", (96, 96), (20, 160, 60)), title="my kids at the beach").json()["id"]
    beans = upload(api, Image.new("RGB", (96, 96), (24, 150, 64)), title="kidney beans on a plate").json()["id"]
    assert {b["status"] for b in wait_for_status(api, [kids, beans]).values()} == {"indexed"}

    assert api.get(f"/v1/photos/{kids}").json()["depicts_minor"] is True
    assert api.get(f"/v1/photos/{beans}").json()["depicts_minor"] is False
    trail = api.get(f"/v1/photos/{kids}/moderation").json()
    screened = [entry for entry in trail if entry["action"] == "screened"]
    assert len(screened) == 1 and screened[0]["actor"] == "text-screen"
    assert "the title describes a minor (kid" in screened[0]["reason"]

    assert not _found(searcher, kids, "RU") and _found(searcher, beans, "RU")
    assert _found(searcher, kids, free_region)
    blocked = searcher.get(f"/v1/photos/{kids}/thumbnail", params={"region": "RU"})
    assert blocked.status_code == 451
    assert blocked.json()["detail"] == "This image is unavailable in your country in compliance with local laws."


def test_a_title_that_contradicts_the_declaration_goes_to_review(api: TestClient) -> None:
    photo = upload(api, Image.new("RGB", (96, 96), (40, 90, 200)), title="школьница у доски", depicts_minor="false")
    photo_id = photo.json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["depicts_minor"] is True and body["moderation_status"] == "pending_review"
    queue = api.get("/v1/moderation/queue").json()
    assert photo_id in {item["photo"]["id"] for item in queue["items"]}


def test_the_same_bytes_again_with_a_new_title_update_it_screened_like_an_edit(api) -> None:  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (96, 96), (60, 60, 180))
    first = upload(api, image, title="a blue wall", photographer="Ann")
    photo_id = first.json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"

    again = upload(api, image, title="my kids by a blue wall")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["duplicate"] is True and body["id"] == photo_id and body["updated"] == ["title"]
    assert body["title"] == "my kids by a blue wall" and body["photographer"] == "Ann"  # not sent: unchanged
    # Screened as an edit is: the words describe a child, so the photo is treated as showing one.
    assert body["depicts_minor"] is True
    assert [e["action"] for e in api.get(f"/v1/photos/{photo_id}/moderation").json()].count("screened") == 1

    same = upload(api, image, title="my kids by a blue wall", photographer="Ann")
    assert same.status_code == 200 and same.json()["updated"] == []  # nothing new: nothing changed
    renamed = upload(api, image, photographer="Ann Lee")
    assert renamed.json()["updated"] == ["photographer"] and renamed.json()["photographer"] == "Ann Lee"
    assert api.get(f"/v1/photos/{photo_id}").json()["photographer"] == "Ann Lee"
