"""The web pages in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the real stack:
uvicorn serving api.app:app on loopback, Postgres, Redis, a Celery worker and the tiny trained CLIP.

Chromium and Playwright come from scripts/install_browser.sh (and the test extra). Where they are missing these
tests fail under CI=true or WITHSENSE_REQUIRE_BROWSER=1 (.ci/run sets it) and are skipped elsewhere, saying what
to install.

With WITHSENSE_SCREENSHOTS=DIR set, the tests also save a PNG of each page into DIR (scripts/screenshots.sh makes
the README's screenshots this way).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.policy import DISCLAIMER
from tests.conftest import ROOT, UNSAFE_COLOUR, create_api_key, sample_of, upload, wait_for_status
from tests.images import jpeg_bytes

CHROMIUM = Path(os.environ.get("WITHSENSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("WITHSENSE_SCREENSHOTS")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
INDEXING_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.usefixtures("clean_db", "worker")


def _unavailable(reason: str) -> None:
    required = (os.environ.get(name, "").lower() for name in ("CI", "WITHSENSE_REQUIRE_BROWSER"))
    if any(value in {"1", "true", "yes"} for value in required):
        pytest.fail(f"{reason}; CI must install the browser: run scripts/install_browser.sh before the tests")
    pytest.skip(f"{reason}; install it with scripts/install_browser.sh (as root)")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Site:
    """uvicorn serving the app (pages and API) in a process of its own, on the test stack's settings."""

    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"uvicorn-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise TimeoutError(f"uvicorn not ready in 180s:\n{self.log_path.read_text()[-3000:]}")
        # One search waits for the model's warm-up (imports and weights; slow on a busy machine), so no page does.
        warm_up = httpx.get(
            f"{self.url}/v1/search",
            params={"q": "warm up"},
            headers={"Authorization": f"Bearer {create_api_key('search', name='warm-up')}"},
            timeout=300,
        )
        assert warm_up.status_code == 200, warm_up.text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def site(services) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    server = Site(services.home)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def new_page(browser, site):  # type: ignore[no-untyped-def]
    """A page in a fresh browser context (its own cookies): new_page(viewport=..., locale=...)."""
    contexts = []
    script_errors: list[str] = []

    def make(viewport: dict[str, int] | None = None, locale: str = "en-US", js: bool = True):  # type: ignore[no-untyped-def]
        phone = viewport == PHONE  # a touch screen without hover: the captions show under every thumbnail
        context = browser.new_context(
            base_url=site.url,
            viewport=viewport or DESKTOP,
            locale=locale,
            java_script_enabled=js,
            is_mobile=phone,
            has_touch=phone,
        )
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not script_errors, f"the pages' script failed: {script_errors}"


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """Save a screenshot of the page for the README when WITHSENSE_SCREENSHOTS is set."""
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def sign_in(page, key: str, next_path: str = "/") -> None:  # type: ignore[no-untyped-def]
    page.goto(f"/signin?next={next_path}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_load_state()


def result_ids(page) -> list[str]:  # type: ignore[no-untyped-def]
    return list(
        page.locator("[data-testid=results] li.card").evaluate_all("cards => cards.map(c => c.dataset.photoId)")
    )


def index(api, *samples, **fields: str) -> list[str]:  # type: ignore[no-untyped-def]
    ids = [upload(api, s.image, title=f"{s.colour} {s.shape}".title(), **fields).json()["id"] for s in samples]
    final = wait_for_status(api, ids)
    assert all(body["status"] == "indexed" for body in final.values()), final
    return ids


def image_file(sample, name: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"name": name, "mimeType": "image/jpeg", "buffer": jpeg_bytes(sample.image)}


def test_typing_a_query_shows_the_right_thumbnail_first(api, new_page) -> None:  # type: ignore[no-untyped-def]
    shapes = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("purple", "star"), ("orange", "cross")]
    samples = [sample_of(colour, shape, seed=100 + i) for i, (colour, shape) in enumerate(shapes)]
    ids = index(api, *samples, photographer="Ada Lovelace")
    page = new_page()
    sign_in(page, create_api_key("search", name="buyer"))
    assert page.url.endswith("/")
    for sample, photo_id in [(samples[0], ids[0]), (samples[2], ids[2])]:
        box = page.get_by_label("Describe the photo")
        box.fill(f"a {sample.colour} {sample.shape}")
        box.press("Enter")
        page.wait_for_url("**/search?q=*")
        assert result_ids(page)[0] == photo_id
        first = page.locator("[data-testid=results] li.card").first
        # The thumbnail comes through the cookie-authenticated route and really loads.
        image = first.locator("img")
        image.evaluate("img => img.decode()")
        assert image.evaluate("img => img.naturalWidth") == 224
        assert image.get_attribute("alt") == f"{sample.colour} {sample.shape}".title() + " — by Ada Lovelace"
        # Title, photographer and score show on hover.
        caption = first.locator(".caption")
        first.hover()
        page.wait_for_function("el => getComputedStyle(el).opacity === '1'", arg=caption.element_handle())
        assert "Score" in caption.inner_text() and "Ada Lovelace" in caption.inner_text()
    shot(page, "search")

    # "More like this" leads to the photos that look like the first result.
    page.locator("[data-testid=results] li.card").first.get_by_role("link", name="More like this").click()
    page.wait_for_url("**like=*")
    assert page.get_by_role("heading", name="Photos like this one").is_visible()
    assert ids[2] not in result_ids(page) and len(result_ids(page)) == len(ids) - 1  # the green triangle itself

    # The photo page: the derivative, metadata and similar photos.
    page.goto(f"/photos/{ids[0]}")
    assert page.get_by_role("heading", level=1).inner_text() == "Red Circle"
    assert page.locator(".photo-image img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 224
    assert page.get_by_role("heading", name="Similar photos").is_visible()
    shot(page, "photo")

    # Without JavaScript the server's HTML has the same results: links to a search can be shared.
    plain = new_page(js=False)
    sign_in(plain, create_api_key("search"))
    plain.goto("/search?q=a+red+circle")
    assert result_ids(plain)[0] == ids[0]

    # On a phone the grid and the form fit the screen.
    phone = new_page(viewport=PHONE)
    sign_in(phone, create_api_key("search"))
    phone.goto("/search?q=a+blue+square")
    assert result_ids(phone)[0] == ids[1]
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(phone, "search-phone")


def test_search_by_image_file(api, new_page) -> None:  # type: ignore[no-untyped-def]
    samples = [sample_of("red", "square", seed=120), sample_of("green", "circle", seed=121)]
    ids = index(api, *samples)
    page = new_page()
    sign_in(page, create_api_key("search"))
    page.get_by_label("Image to search with").set_input_files(
        image_file(sample_of("green", "circle", seed=122), "q.jpg")
    )
    page.get_by_role("button", name="Find similar photos").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Photos that look like your image").is_visible()
    assert result_ids(page)[0] == ids[1]


def test_filter_controls_narrow_the_results_with_and_without_javascript(api, new_page) -> None:  # type: ignore[no-untyped-def]
    ada = upload(api, sample_of("red", "circle", seed=180).image, title="Red Circle", photographer="Ada", tags="alpha")
    nadar = upload(
        api, sample_of("red", "circle", seed=181).image, title="Red Circle", photographer="Nadar", tags="beta, gamma"
    )
    other = upload(api, sample_of("blue", "square", seed=182).image, title="Blue Square", photographer="Nadar")
    ids = [ada.json()["id"], nadar.json()["id"], other.json()["id"]]
    assert all(body["status"] == "indexed" for body in wait_for_status(api, ids).values())
    page = new_page()
    sign_in(page, create_api_key("search"))
    page.goto("/search?q=a+red+circle")
    assert set(result_ids(page)[:2]) == {ids[0], ids[1]}

    # The photographer control: only Nadar's photos, his red circle first; the choice is in the shareable URL.
    page.get_by_text("Options", exact=True).click()
    page.get_by_label("Photographer", exact=True).fill("Nadar")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**photographer=Nadar*")
    found = result_ids(page)
    assert found[0] == ids[1] and ids[0] not in found
    assert page.get_by_label("Photographer", exact=True).input_value() == "Nadar"  # the form shows the filter
    shot(page, "search-filters")

    # The tag control instead: Ada's photo alone.
    page.get_by_label("Photographer", exact=True).fill("")
    page.get_by_label("Tags", exact=True).fill("alpha")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**tag=alpha*")
    assert result_ids(page) == [ids[0]]

    # Without JavaScript: the same GET form, the same server-rendered answer.
    plain = new_page(js=False)
    sign_in(plain, create_api_key("search"))
    plain.goto("/search?q=a+red+circle")
    plain.get_by_text("Options", exact=True).click()
    plain.get_by_label("Tags", exact=True).fill("beta, gamma")
    plain.get_by_label("Portrait").check()  # the synthetic photos are 320x240, landscape: nothing left
    plain.get_by_role("button", name="Apply").click()
    plain.wait_for_url("**orientation=portrait*")
    assert result_ids(plain) == [] and plain.get_by_text("No photo matches").is_visible()
    plain.get_by_label("Portrait").uncheck()
    plain.get_by_label("Landscape").check()
    plain.get_by_role("button", name="Apply").click()
    plain.wait_for_url("**orientation=landscape*")
    assert result_ids(plain) == [ids[1]]
    # A filter the service refuses is a message on the page, not an error page.
    response = plain.goto("/search?q=a+red+circle&taken_after=2024-13-01")
    assert response is not None and response.status == 422
    assert "taken_after" in plain.get_by_role("alert").inner_text()
    # A range that ends before it starts is no error: nothing was taken in it.
    plain.goto("/search?q=a+red+circle&taken_after=2024-02-01&taken_before=2024-01-01")
    assert result_ids(plain) == [] and plain.get_by_text("No photo matches").is_visible()


def test_the_next_page_link_shows_the_next_results_without_duplicates(api, new_page) -> None:  # type: ignore[no-untyped-def]
    shapes = ["circle", "square", "triangle", "star", "cross"]
    ids = index(api, *(sample_of("red", shape, seed=190 + i) for i, shape in enumerate(shapes)))
    page = new_page(js=False)  # a plain link: no script needed
    sign_in(page, create_api_key("search"))
    page.goto("/search?q=a+red+shape&k=100&min_score=-1")
    everything = result_ids(page)
    assert sorted(everything) == sorted(ids)
    page.goto("/search?q=a+red+shape&k=2&min_score=-1")
    pages = [result_ids(page)]
    while page.get_by_test_id("next-page").count():
        page.get_by_test_id("next-page").click()
        page.wait_for_url("**cursor=*")
        pages.append(result_ids(page))
        assert len(pages) <= 5, pages
    assert [len(found) for found in pages] == [2, 2, 1]
    assert [photo for found in pages for photo in found] == everything  # in order, none twice, none left out
    assert page.get_by_role("link", name="First page").is_visible()
    page.get_by_role("link", name="First page").click()
    assert result_ids(page) == pages[0]


def test_a_blocked_query_shows_the_disclaimer_in_place_of_results(api, new_page) -> None:  # type: ignore[no-untyped-def]
    index(api, sample_of("red", "circle", seed=130))
    page = new_page()
    sign_in(page, create_api_key("search"))
    page.get_by_label("Describe the photo").fill("a child playing in the park")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=*")
    disclaimer = page.get_by_test_id("disclaimer")
    assert disclaimer.inner_text().strip() == DISCLAIMER
    assert disclaimer.inner_text().strip() == "This image is unavailable in your country in compliance with local laws."
    assert page.locator("[data-testid=results]").count() == 0
    shot(page, "blocked")

    # The same sentence in the Russian interface (the law names it exactly), switched with the language control.
    page.get_by_role("button", name="RU").click()
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "ru"
    assert page.get_by_label("Опишите фотографию").input_value() == "a child playing in the park"
    assert page.get_by_test_id("disclaimer").inner_text().strip() == DISCLAIMER
    page.get_by_label("Опишите фотографию").fill("дети на пляже")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=*")
    assert page.get_by_test_id("disclaimer").inner_text().strip() == DISCLAIMER


def test_uploading_two_files_shows_progress_until_both_are_indexed(api, new_page) -> None:  # type: ignore[no-untyped-def]
    page = new_page()
    sign_in(page, create_api_key("upload", name="photographer"), "/upload")
    assert page.url.endswith("/upload")
    assert page.get_by_text("You have not uploaded any photo").is_visible()
    page.get_by_label("Photographer (optional)").fill("Nadar")
    page.get_by_label("Photos", exact=True).set_input_files(
        [
            image_file(sample_of("red", "circle", seed=140), "red-circle.jpg"),
            image_file(sample_of("blue", "triangle", seed=141), "blue-triangle.jpg"),
            {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"<?php echo 'not an image'; ?>"},
        ]
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    items = page.get_by_test_id("upload-items").locator("li")
    items.nth(2).wait_for()
    assert items.count() == 3
    for position in (0, 1):
        item = items.nth(position)
        page.wait_for_function(
            "el => el.dataset.status === 'indexed'", arg=item.element_handle(), timeout=INDEXING_TIMEOUT_MS
        )
        assert item.locator("progress").evaluate("p => p.value") == 100
        assert item.locator(".badge").inner_text() == "indexed"
        assert item.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 224
    refused = items.nth(2)
    page.wait_for_function("el => el.dataset.status === 'rejected'", arg=refused.element_handle())
    assert "JPEG" in refused.locator(".detail").inner_text() or "format" in refused.locator(".detail").inner_text()
    shot(page, "upload")

    # The photographer's own photos list them, indexed, with the photographer's name recorded.
    page.reload()
    mine = page.get_by_test_id("my-photos").locator("li.card")
    assert mine.count() == 2
    assert page.get_by_test_id("my-photos").locator("[data-status=indexed]").count() == 2
    photo_ids = mine.evaluate_all("cards => cards.map(c => c.dataset.photoId)")
    assert {api.get(f"/v1/photos/{pid}").json()["photographer"] for pid in photo_ids} == {"Nadar"}

    # Its uploader sees the status and edits the photo on its page; a new title is what search shows.
    page.goto(f"/photos/{photo_ids[0]}")
    assert page.locator("[data-status]").get_attribute("data-status") == "indexed"
    page.get_by_label("Title", exact=True).fill("Sunset over the bay")
    page.get_by_label("Description", exact=True).fill("Blue hour over the harbour, from the pier")
    page.get_by_label("Tags", exact=True).fill("Harbour, blue hour")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**done=saved")
    assert page.get_by_role("heading", level=1).inner_text() == "Sunset over the bay"
    assert page.get_by_test_id("tags").inner_text().split() == ["harbour", "blue", "hour"]
    record = api.get(f"/v1/photos/{photo_ids[0]}").json()
    assert record["title"] == "Sunset over the bay" and record["tags"] == ["harbour", "blue hour"]
    assert record["description"] == "Blue hour over the harbour, from the pier"
    assert page.locator("dd.description").inner_text() == "Blue hour over the harbour, from the pier"
    shot(page, "photo-owner")
    page.goto("/upload")

    # Declarations go with the files: a photo of a minor without consent.
    page.get_by_label("These photos show a person under 16").check()
    page.get_by_label("Photos", exact=True).set_input_files(image_file(sample_of("green", "star", seed=142), "g.jpg"))
    page.get_by_role("button", name="Upload", exact=True).click()
    latest = page.get_by_test_id("upload-items").locator("li").last
    page.wait_for_function(
        "el => el.dataset.status === 'indexed'", arg=latest.element_handle(), timeout=INDEXING_TIMEOUT_MS
    )
    declared = api.get(f"/v1/photos/{latest.get_attribute('data-photo-id')}").json()
    assert declared["depicts_minor"] is True and declared["parental_consent"] is False


def test_approve_and_reject_in_the_queue_change_search_at_once(api, new_page) -> None:  # type: ignore[no-untyped-def]
    square, circle = sample_of(UNSAFE_COLOUR, "square", seed=150), sample_of(UNSAFE_COLOUR, "circle", seed=151)
    square_id, circle_id = index(api, square, circle)
    index(api, sample_of("green", "square", seed=152))

    searcher = new_page()
    sign_in(searcher, create_api_key("search"))

    def found(query: str) -> list[str]:
        searcher.goto(f"/search?q={query.replace(' ', '+')}")
        return result_ids(searcher)

    assert square_id not in found("a brown square") and circle_id not in found("a brown circle")

    moderator = new_page()
    sign_in(moderator, create_api_key("moderate", name="moderator"), "/moderation")
    assert moderator.get_by_test_id("queue-total").inner_text() == "2 photos wait for a decision"
    item = moderator.locator(f"li.queue-item[data-photo-id='{square_id}']")
    assert item.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 224
    assert "flagged as unsafe" in item.inner_text()
    unsafe_score = float(item.locator(".scores li", has_text="unsafe").locator("meter").get_attribute("value"))
    assert unsafe_score >= 0.5
    item.locator("summary").click()
    assert "classified" in item.locator(".audit").inner_text()
    shot(moderator, "moderation")

    item.get_by_label("Reason (kept in the audit trail)").fill("brown paint, not gore")
    item.get_by_role("button", name="Approve").click()
    moderator.wait_for_url("**/moderation?decided=*")
    assert moderator.get_by_test_id("queue-total").inner_text() == "1 photo waits for a decision"
    assert found("a brown square")[0] == square_id  # in search at once

    other = moderator.locator(f"li.queue-item[data-photo-id='{circle_id}']")
    other.get_by_label("Reason (kept in the audit trail)").fill("gore")
    other.get_by_role("button", name="Reject").click()
    moderator.wait_for_url("**/moderation?decided=*")
    assert moderator.get_by_test_id("queue-empty").is_visible()
    assert circle_id not in found("a brown circle")

    # From the photo page: its audit trail, and a rejection that takes it out of search again.
    moderator.goto(f"/photos/{square_id}")
    trail = moderator.locator(".audit").inner_text()
    assert "classified" in trail and "moderated" in trail and "brown paint, not gore" in trail
    moderator.get_by_label("Reason (kept in the audit trail)").fill("photographer withdrew consent")
    moderator.get_by_role("button", name="Reject").click()
    moderator.wait_for_url("**done=decided")
    assert moderator.locator("[data-moderation]").get_attribute("data-moderation") == "rejected"
    assert square_id not in found("a brown square")


def test_sign_in_and_out(new_page) -> None:  # type: ignore[no-untyped-def]
    page = new_page()
    page.goto("/upload")
    assert "/signin?next=%2Fupload" in page.url
    assert page.get_by_text("Sign in to see this page.").is_visible()
    page.get_by_label("API key").fill("wsk_000000000000_wrong")
    page.get_by_role("button", name="Sign in", exact=True).click()
    assert page.get_by_role("alert").inner_text() == "This key is not valid, or it was revoked."
    shot(page, "signin")

    key = create_api_key("upload", "search", name="studio-7")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/upload")
    assert page.get_by_text("studio-7").is_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "ws_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert "ws_session" not in page.evaluate("document.cookie")  # scripts never see the key
    assert key not in page.content()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin?done=signed_out")
    assert page.get_by_text("You are signed out.").is_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "ws_session"]
    page.goto("/upload")
    assert "/signin" in page.url


def test_a_search_only_key_cannot_reach_moderation_or_upload(new_page) -> None:  # type: ignore[no-untyped-def]
    page = new_page()
    sign_in(page, create_api_key("search"))
    assert page.get_by_role("link", name="Moderation").count() == 0
    for path in ("/moderation", "/upload"):
        response = page.goto(path)
        assert response is not None and response.status == 403
        assert page.get_by_text("This key may not open this page.").is_visible()


def test_keyboard_only_search(api, new_page) -> None:  # type: ignore[no-untyped-def]
    (photo_id,) = index(api, sample_of("pink", "circle", seed=160))
    page = new_page(locale="ru-RU")
    sign_in_ru = create_api_key("search")
    page.goto("/signin")
    assert page.locator("html").get_attribute("lang") == "ru"  # Accept-Language: ru
    page.keyboard.type(sign_in_ru)  # the key field has the focus
    page.keyboard.press("Enter")
    page.wait_for_url("**/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Перейти к содержимому"
    page.locator("#q").focus()
    page.keyboard.type("a pink circle")
    page.keyboard.press("Enter")
    page.wait_for_url("**/search?q=*")
    assert result_ids(page)[0] == photo_id
    assert page.get_by_role("heading", level=2).first.inner_text() == "Результаты по запросу «a pink circle»"
    shot(page, "search-ru")
    # Tab reaches the first result's link and Enter opens the photo page.
    page.locator("[data-testid=results] a.thumb").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/photos/{photo_id}")


@pytest.fixture(scope="module")
def public_site(services) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    server = Site(services.home, {"WITHSENSE_ANONYMOUS_SCOPES": "search"})
    try:
        yield server
    finally:
        server.stop()


def test_with_anonymous_search_the_search_pages_need_no_sign_in(api, browser, public_site) -> None:  # type: ignore[no-untyped-def]
    (photo_id,) = index(api, sample_of("orange", "square", seed=170))
    context = browser.new_context(base_url=public_site.url, viewport=DESKTOP, locale="en-US")
    context.set_default_timeout(30_000)
    try:
        page = context.new_page()
        page.goto("/search?q=an+orange+square")
        assert result_ids(page)[0] == photo_id
        assert page.locator("[data-testid=results] img").first.evaluate("i => i.decode().then(() => i.naturalWidth)")
        assert page.get_by_role("link", name="Sign in").is_visible()
        page.goto("/moderation")
        assert "/signin" in page.url
    finally:
        context.close()
