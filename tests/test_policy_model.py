"""The model's second opinion on text queries, through the search service and the API (settings
WITHSENSE_POLICY_MODEL_CHECK and WITHSENSE_POLICY_MODEL_THRESHOLD), with the real tiny CLIP, Postgres and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from core.policy import DISCLAIMER
from tests.conftest import create_api_key, reset_cached_state

pytestmark = pytest.mark.usefixtures("clean_db")


@pytest.fixture()
def model_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings are read once per process: set the environment, then start over from it (and again after)."""
    yield monkeypatch
    monkeypatch.delenv("WITHSENSE_POLICY_MODEL_CHECK", raising=False)
    monkeypatch.delenv("WITHSENSE_POLICY_MODEL_THRESHOLD", raising=False)
    reset_cached_state()


def _configure(monkeypatch: pytest.MonkeyPatch, *, on: bool, threshold: float) -> None:
    monkeypatch.setenv("WITHSENSE_POLICY_MODEL_CHECK", "true" if on else "false")
    monkeypatch.setenv("WITHSENSE_POLICY_MODEL_THRESHOLD", str(threshold))
    reset_cached_state()


def _search(api, query: str, region: str) -> dict:  # type: ignore[no-untyped-def]
    searcher = TestClient(api.app, headers={"Authorization": f"Bearer {create_api_key('search')}"})
    response = searcher.get("/v1/search", params={"q": query, "k": 5, "region": region})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_model_blocks_what_it_scores_above_the_threshold_where_the_law_applies(api, model_check) -> None:  # type: ignore[no-untyped-def]
    # Threshold 0: every query scores at least that, so the opinion blocks whatever the rules allow.
    _configure(model_check, on=True, threshold=0.0)
    blocked = _search(api, "a red circle", "RU")
    assert blocked["blocked"] is True and blocked["disclaimer"] == DISCLAIMER and blocked["results"] == []
    embedded = api.post("/v1/embeddings/text", json={"texts": ["a red circle"]})
    assert embedded.status_code == 200, embedded.text
    assert [item["describes_minor"] for item in embedded.json()["data"]] == [True]


def test_the_model_is_off_by_default_and_never_unblocks(api, model_check) -> None:  # type: ignore[no-untyped-def]
    _configure(model_check, on=False, threshold=0.0)
    assert _search(api, "a red circle", "RU")["blocked"] is False, "off: the model's opinion is not asked"
    # Threshold 1: no query scores above it, yet what the rules block stays blocked.
    _configure(model_check, on=True, threshold=1.0)
    assert _search(api, "a red circle", "RU")["blocked"] is False
    assert _search(api, "chlidren in a red circle", "RU")["blocked"] is True
