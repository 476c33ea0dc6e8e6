"""Helpers shared by the page tests: a browser-like client that signs in through the sign-in form."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
PHOTO_ID_RE = re.compile(r'class="card" data-photo-id="([0-9a-f-]{36})"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF_RE.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def result_ids(html: str) -> list[str]:
    """The photo ids of a results grid, in the order the page shows them."""
    return PHOTO_ID_RE.findall(html)


def sign_in(client: TestClient, key: str) -> None:
    page = client.get("/signin")
    response = client.post("/signin", data={"key": key, "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert response.status_code == 303, response.text


@contextmanager
def page_client(key: str | None = None) -> Iterator[TestClient]:
    """The real app over ASGI with a cookie jar, signed in with `key` through the form (or signed out)."""
    from api.app import create_app

    with TestClient(create_app(), follow_redirects=False) as client:
        if key is not None:
            sign_in(client, key)
        yield client
