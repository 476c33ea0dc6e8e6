"""The web pages over HTTP, against the real stack: sign-in cookies, CSRF, the same visibility as the API for the
same key, server-rendered results, and no 5xx for bad input. The browser tests (test_pages_browser.py) drive the
same pages in Chromium."""

from __future__ import annotations

import html
import re
import uuid

import pytest

from api.pages.i18n import CATALOGUES, EN, Translator, missing_keys, negotiate
from core.policy import DISCLAIMER
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, create_api_key, reset_cached_state, sample_of, upload
from tests.conftest import wait_for_status as wait
from tests.pages_helpers import csrf_of, page_client, result_ids

FREE = "XF"


def test_every_language_has_every_string() -> None:
    for language, catalogue in CATALOGUES.items():
        assert not missing_keys(catalogue), f"{language} lacks {sorted(missing_keys(catalogue))}"
        assert set(catalogue) - set(EN) <= {k for k in catalogue if "#" in k}, f"{language} has unknown keys"
    assert Translator("ru").plural("search.count", 1) == "1 фотография"
    assert Translator("ru").plural("search.count", 3) == "3 фотографии"
    assert Translator("ru").plural("search.count", 11) == "11 фотографий"
    assert Translator("en").plural("search.count", 1) == "1 photo"


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        (None, "ru-RU,ru;q=0.9,en;q=0.8", "ru"),
        (None, "de-DE,de;q=0.9,en;q=0.5,ru;q=0.4", "en"),
        (None, "de, ru;q=0.1", "ru"),
        (None, None, "en"),
        (None, "en;q=garbage, ru", "ru"),
        ("en", "ru", "en"),
        ("xx", "ru", "ru"),
    ],
)
def test_language_comes_from_the_switch_then_accept_language(cookie: str | None, header: str, expected: str) -> None:
    assert negotiate(cookie, header) == expected


@pytest.fixture()
def free_region(services):  # type: ignore[no-untyped-def]
    from db.engine import session_scope
    from db.policy import delete_region_rule, set_region_rule

    with session_scope() as session:
        set_region_rule(session, FREE, minors_restricted=False, note="test")
    yield FREE
    with session_scope() as session:
        delete_region_rule(session, FREE)


@pytest.fixture()
def anonymous_search(services, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WITHSENSE_ANONYMOUS_SCOPES", "search")
    reset_cached_state()
    yield
    monkeypatch.delenv("WITHSENSE_ANONYMOUS_SCOPES")
    reset_cached_state()


def test_signed_out_pages_lead_to_the_sign_in_page(services) -> None:  # type: ignore[no-untyped-def]
    with page_client() as client:
        for path in ("/", "/search?q=a+red+circle", "/upload", "/moderation", f"/photos/{uuid.uuid4()}"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/signin?next=%2F"), path
        assert (
            client.get(
                "/upload/status", params={"id": str(uuid.uuid4())}, headers={"Accept": "application/json"}
            ).status_code
            == 401
        )
        page = client.get("/signin?next=/upload")
        assert page.status_code == 200 and 'name="key"' in page.text and 'type="password"' in page.text


def test_anonymous_search_scope_opens_the_search_pages_only(anonymous_search) -> None:  # type: ignore[no-untyped-def]
    with page_client() as client:
        assert client.get("/").status_code == 200
        assert client.get("/search", params={"q": "a red circle"}).status_code == 200
        assert client.get("/upload").status_code == 303
        assert client.get("/moderation").status_code == 303


def test_sign_in_keeps_the_key_in_an_http_only_same_site_cookie(services) -> None:  # type: ignore[no-untyped-def]
    key = create_api_key("search", name="cookie-check")
    with page_client() as client:
        token = csrf_of(client.get("/signin").text)
        wrong = client.post("/signin", data={"key": "wsk_nope_nope", "csrf_token": token})
        assert (
            wrong.status_code == 401
            and "not valid" in wrong.text
            and "ws_session" not in wrong.headers.get("set-cookie", "")
        )
        response = client.post("/signin", data={"key": key, "csrf_token": token, "next": "/search?q=x"})
        assert response.status_code == 303 and response.headers["location"] == "/search?q=x"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("ws_session=") and key not in cookie  # signed, and not readable as the key
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
        page = client.get("/")
        assert page.status_code == 200 and "cookie-check" in page.text
        assert key not in page.text  # the key is never written into a page

        # Sign out: the cookie goes, the pages need a key again.
        out = client.post("/signout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303 and 'ws_session=""' in out.headers["set-cookie"]
        assert client.get("/").status_code == 303


def test_behind_an_https_proxy_the_cookies_are_secure(services) -> None:  # type: ignore[no-untyped-def]
    key = create_api_key("search")
    with page_client() as client:
        token = csrf_of(client.get("/signin").text)
        response = client.post(
            "/signin", data={"key": key, "csrf_token": token}, headers={"X-Forwarded-Proto": "https"}
        )
        assert response.status_code == 303
        assert "Secure" in response.headers["set-cookie"]


def test_forms_refuse_a_missing_or_foreign_csrf_token(services) -> None:  # type: ignore[no-untyped-def]
    key = create_api_key("admin")
    with page_client() as client, page_client(key) as other:
        client.get("/signin")  # has a nonce cookie, but sends no token
        assert client.post("/signin", data={"key": key}).status_code in (403, 422)
        assert client.post("/signin", data={"key": key, "csrf_token": "0" * 64}).status_code == 403
        foreign = csrf_of(other.get("/").text)  # valid for the other browser's session only
        refused = client.post("/signin", data={"key": key, "csrf_token": foreign})
        assert refused.status_code == 403 and "expired" in refused.text
        # A signed-in browser's forms need its own token too.
        photo_id = uuid.uuid4()
        assert (
            other.post(
                f"/moderation/{photo_id}", data={"action": "approve", "reason": "ok ok", "csrf_token": "x"}
            ).status_code
            == 403
        )
        assert other.post("/signout", data={"csrf_token": "nope"}).status_code == 403
        assert other.get("/").status_code == 200  # still signed in
        upload_forged = other.post(
            "/upload/files",
            files={"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")},
            headers={"X-CSRF-Token": "forged", "Accept": "application/json"},
        )
        assert upload_forged.status_code == 403


def test_a_revoked_key_is_signed_out_at_once(services) -> None:  # type: ignore[no-untyped-def]
    from services.access import authenticate, revoke_key

    key = create_api_key("search", name="to-revoke")
    with page_client(key) as client:
        assert client.get("/").status_code == 200
        principal = authenticate(key)
        assert principal is not None
        revoke_key(principal.key_id)
        response = client.get("/")
        assert response.status_code == 303 and response.headers["location"].startswith("/signin")
        assert 'ws_session=""' in response.headers.get("set-cookie", "")


def test_a_search_only_key_gets_403_on_upload_and_moderation(services) -> None:  # type: ignore[no-untyped-def]
    with page_client(create_api_key("search")) as client:
        for path in ("/upload", "/moderation"):
            response = client.get(path)
            assert response.status_code == 403, path
            assert "may not open this page" in response.text
        home = client.get("/").text
        assert 'href="/upload"' not in home and 'href="/moderation"' not in home


def test_redirects_after_forms_stay_on_this_site(services) -> None:  # type: ignore[no-untyped-def]
    key = create_api_key("search")
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        with page_client() as client:
            token = csrf_of(client.get("/signin").text)
            response = client.post("/signin", data={"key": key, "csrf_token": token, "next": target})
            assert response.headers["location"] == "/", target


@pytest.mark.parametrize(
    "path",
    [
        "/search?k=1000&q=x",
        "/search?k=abc",
        "/search?like=not-a-uuid",
        "/search?q=" + "x" * 1001,
        "/search?region=" + "X" * 40,
        "/photos/not-a-uuid",
        "/photos/00000000-0000-0000-0000-000000000000/thumbnail",
        "/upload/status?id=nope",
        "/moderation?cursor=nope",
        "/upload?cursor=zzz",
        "/search?q=%00%01",
        "/search?q=x&taken_after=yesterday",
        "/search?q=x&min_score=2",
        "/search?q=x&min_score=abc",
        "/search?q=x&orientation=diagonal",
        "/search?q=x&mode=magic",
        "/search?q=x&sort=oldest",
        "/search?q=x&min_width=-1",
        "/search?q=x&cursor=garbage",
        "/search?q=x&tag=%01",
        "/search?q=x&photographer=" + "p" * 201,
        "/search?like=00000000-0000-0000-0000-000000000000&mode=keyword",
    ],
)
def test_bad_input_gets_a_4xx_page_never_a_5xx(services, path: str) -> None:  # type: ignore[no-untyped-def]
    with page_client(create_api_key("admin")) as client:
        response = client.get(path)
        assert 400 <= response.status_code < 500 or response.status_code == 200, (path, response.status_code)
        assert response.status_code != 200 or path.startswith("/search?q=%00")


@pytest.mark.usefixtures("clean_db", "worker")
def test_the_pages_show_exactly_what_the_api_shows_the_same_key(api, free_region) -> None:  # type: ignore[no-untyped-def]
    """Photo page, thumbnail and "more like this" answer the statuses of the API's routes, key by key."""
    visible = sample_of("red", "circle", seed=31)
    child = sample_of(MINOR_COLOUR, "star", seed=32)
    unsafe = sample_of(UNSAFE_COLOUR, "square", seed=33)
    private = sample_of("blue", "cross", seed=34)
    ids = [upload(api, s.image).json()["id"] for s in (visible, child, unsafe, private)]
    assert all(b["status"] == "indexed" for b in wait(api, ids).values())
    api.patch(f"/v1/photos/{ids[3]}", json={"visibility": "private"})
    search_key = create_api_key("search")
    uploader_key = create_api_key("upload", "search")
    own = upload_with(uploader_key, sample_of("green", "triangle", seed=35))  # pending for a moment, then indexed
    from fastapi.testclient import TestClient

    from api.app import create_app

    keys = {"search": search_key, "uploader": uploader_key, "admin": create_api_key("admin")}
    seen: set[int] = set()
    for who, key in keys.items():
        with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as bearer, page_client(key) as pages:
            for photo_id in [*ids, own, str(uuid.uuid4())]:
                for region in (None, FREE):
                    params = {"region": region} if region else {}
                    api_record = bearer.get(f"/v1/photos/{photo_id}", params=params).status_code
                    api_thumb = bearer.get(f"/v1/photos/{photo_id}/thumbnail", params=params).status_code
                    seen.update((api_record, api_thumb))
                    assert pages.get(f"/photos/{photo_id}", params=params).status_code == api_record, (who, photo_id)
                    assert pages.get(f"/photos/{photo_id}/thumbnail", params=params).status_code == api_thumb, (
                        who,
                        photo_id,
                    )
    assert {200, 404, 451} <= seen  # the comparison covered each kind of answer
    with page_client(search_key) as pages:
        restricted = pages.get(f"/photos/{ids[1]}")
        assert restricted.status_code == 451 and DISCLAIMER in restricted.text
        assert pages.get(f"/photos/{ids[1]}", params={"region": FREE}).status_code == 200
        # "More like this" from the hidden child: the disclaimer, as GET /v1/photos/{id}/similar answers.
        like = pages.get("/search", params={"like": ids[1]})
        assert DISCLAIMER in like.text and result_ids(like.text) == []
        assert pages.get("/search", params={"like": ids[2]}).status_code == 404  # waiting for review: not found


def upload_with(key: str, sample) -> str:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as client:
        return str(upload(client, sample.image).json()["id"])


@pytest.mark.usefixtures("clean_db", "worker")
def test_search_results_are_in_the_html_the_server_sends(api) -> None:  # type: ignore[no-untyped-def]
    samples = [
        sample_of(c, s, seed=40 + i)
        for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")])
    ]
    ids = [upload(api, s.image, title=f"{s.colour} {s.shape}").json()["id"] for s in samples]
    wait(api, ids)
    with page_client(create_api_key("search")) as client:
        for sample, photo_id in zip(samples, ids, strict=True):
            page = client.get("/search", params={"q": f"a {sample.colour} {sample.shape}"})
            assert page.status_code == 200
            assert result_ids(page.text)[0] == photo_id, sample.caption
            assert f"/photos/{photo_id}/thumbnail" in page.text and f"{sample.colour} {sample.shape}" in page.text
        blocked = client.get("/search", params={"q": "a child playing in the park"})
        assert blocked.status_code == 200 and DISCLAIMER in blocked.text and result_ids(blocked.text) == []
        russian = client.get("/search", params={"q": "a red circle"}, headers={"Accept-Language": "ru"})
        assert 'lang="ru"' in russian.text and "Найти" in russian.text and result_ids(russian.text)[0] == ids[0]
        assert "Server-Timing" in russian.headers and "Content-Security-Policy" in russian.headers


@pytest.mark.usefixtures("clean_db", "worker")
def test_the_uploader_edits_and_deletes_from_the_photo_page_and_others_may_not(services) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from api.app import create_app

    uploader_key, stranger_key = create_api_key("upload"), create_api_key("upload", "search")
    photo_id = upload_with(uploader_key, sample_of("green", "circle", seed=50))
    with page_client(uploader_key) as owner, page_client(stranger_key) as stranger:
        page = owner.get(f"/photos/{photo_id}")
        assert page.status_code == 200 and 'data-testid="edit-form"' in page.text
        token = csrf_of(page.text)
        saved = owner.post(
            f"/photos/{photo_id}/edit",
            data={"csrf_token": token, "title": "Green light", "photographer": "", "visibility": "private"},
        )
        assert saved.status_code == 303 and saved.headers["location"] == f"/photos/{photo_id}?done=saved"
        shown = owner.get(f"/photos/{photo_id}?done=saved").text
        assert "Green light" in shown and "Saved." in shown and "private" in shown
        # Description and tags: edited in the form (tags comma-separated), shown on the page, in the API's record.
        described = owner.post(
            f"/photos/{photo_id}/edit",
            data={
                "csrf_token": token,
                "title": "Green light",
                "description": "A green circle at dusk",
                "tags": "Dusk, signal , ",
                "visibility": "private",
            },
        )
        assert described.status_code == 303
        shown = owner.get(f"/photos/{photo_id}").text
        assert "A green circle at dusk" in shown and 'value="dusk, signal"' in shown
        assert '<a href="/search?q=dusk&amp;tag=dusk">dusk</a>' in shown
        with TestClient(create_app(), headers={"Authorization": f"Bearer {uploader_key}"}) as bearer:
            record = bearer.get(f"/v1/photos/{photo_id}").json()
        assert record["description"] == "A green circle at dusk" and record["tags"] == ["dusk", "signal"]
        cleared = owner.post(
            f"/photos/{photo_id}/edit", data={"csrf_token": token, "title": "Green light", "visibility": "private"}
        )
        assert cleared.status_code == 303
        with TestClient(create_app(), headers={"Authorization": f"Bearer {uploader_key}"}) as bearer:
            record = bearer.get(f"/v1/photos/{photo_id}").json()
        assert record["description"] is None and record["tags"] == []
        bad = owner.post(f"/photos/{photo_id}/edit", data={"csrf_token": token, "title": "x\x00y"})
        assert bad.status_code == 422 and "control characters" in bad.text

        # Another uploader cannot see it (private), nor edit or delete it: 404/403 as on the API.
        assert stranger.get(f"/photos/{photo_id}").status_code == 404
        other_token = csrf_of(stranger.get("/upload").text)
        assert stranger.post(f"/photos/{photo_id}/delete", data={"csrf_token": other_token}).status_code == 403

        deleted = owner.post(f"/photos/{photo_id}/delete", data={"csrf_token": token})
        assert deleted.status_code == 303 and deleted.headers["location"] == "/upload?done=deleted"
        assert owner.get(f"/photos/{photo_id}").status_code == 404
        assert "The photo was deleted." in owner.get("/upload?done=deleted").text


@pytest.mark.usefixtures("clean_db", "worker")
def test_a_moderation_decision_needs_a_reason_and_the_moderate_scope(api) -> None:  # type: ignore[no-untyped-def]
    (photo_id,) = [upload(api, sample_of(UNSAFE_COLOUR, "star", seed=51).image).json()["id"]]
    wait(api, [photo_id])
    with page_client(create_api_key("moderate")) as moderator, page_client(create_api_key("upload")) as uploader:
        token = csrf_of(moderator.get("/moderation").text)
        short = moderator.post(
            f"/moderation/{photo_id}", data={"csrf_token": token, "action": "approve", "reason": "ok"}
        )
        assert short.status_code == 422 and "reason" in short.text
        unknown = moderator.post(
            f"/moderation/{photo_id}", data={"csrf_token": token, "action": "delete", "reason": "x" * 5}
        )
        assert unknown.status_code == 422
        missing = moderator.post(
            f"/moderation/{uuid.uuid4()}", data={"csrf_token": token, "action": "approve", "reason": "looks fine"}
        )
        assert missing.status_code == 404
        done = moderator.post(
            f"/moderation/{photo_id}", data={"csrf_token": token, "action": "consent", "reason": "signed form #9"}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/moderation?decided={photo_id}"
        assert api.get(f"/v1/photos/{photo_id}").json()["parental_consent"] is True
        trail = api.get(f"/v1/photos/{photo_id}/moderation").json()
        assert trail[-1]["reason"] == "signed form #9" and trail[-1]["actor"].startswith("key:")
        other = csrf_of(uploader.get("/upload").text)
        refused = uploader.post(
            f"/moderation/{photo_id}", data={"csrf_token": other, "action": "approve", "reason": "let me in"}
        )
        assert refused.status_code == 403


@pytest.mark.usefixtures("clean_db", "worker")
def test_filters_options_and_next_pages_are_in_the_links_the_server_sends(api) -> None:  # type: ignore[no-untyped-def]
    from tests.images import jpeg_bytes

    ada = upload(api, sample_of("red", "circle", seed=60).image, title="Red circle", photographer="Ada", tags="alpha")
    nadar = upload(api, sample_of("red", "circle", seed=61).image, title="Red circle", photographer="Nadar")
    ids = [ada.json()["id"], nadar.json()["id"]]
    assert all(b["status"] == "indexed" for b in wait(api, ids).values())
    with page_client(create_api_key("search")) as client:
        narrowed = client.get("/search", params={"q": "a red circle", "photographer": "Nadar", "mode": "semantic"})
        assert narrowed.status_code == 200 and result_ids(narrowed.text) == [ids[1]]
        # The form shows what the link asked for, so "Apply" keeps it.
        assert 'id="photographer" name="photographer" value="Nadar"' in narrowed.text
        assert '<option value="semantic" selected>' in narrowed.text
        tagged = client.get("/search", params={"q": "a red circle", "tag": "ALPHA"})  # tags match in lower case
        assert result_ids(tagged.text) == [ids[0]] and 'value="alpha"' in tagged.text
        # Search by image carries the form's filters (hidden fields), as POST /v1/search/image takes them.
        form = client.get("/search", params={"q": "a red circle", "photographer": "Ada"}).text
        assert '<input type="hidden" name="photographer" value="Ada">' in form
        by_image = client.post(
            "/search/image",
            data={"csrf_token": csrf_of(form), "photographer": "Ada"},
            files={"file": ("q.jpg", jpeg_bytes(sample_of("red", "circle", seed=62).image), "image/jpeg")},
        )
        assert by_image.status_code == 200 and result_ids(by_image.text) == [ids[0]]
        # One result a page: the next page link carries the search's cursor and shows the other photo.
        first = client.get("/search", params={"q": "a red circle", "k": 1, "min_score": -1})
        next_link = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert next_link, "no next page link"
        second = client.get(html.unescape(next_link.group(1)))
        assert second.status_code == 200 and "cursor=" in next_link.group(1)
        assert sorted(result_ids(first.text) + result_ids(second.text)) == sorted(ids)
