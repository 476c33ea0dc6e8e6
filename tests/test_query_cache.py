"""The query-embedding cache in the real Redis (Valkey): a repeated text query skips the text tower and ranks the
same, the cache stays bounded (least recently used out first, TTL), another model never reads it, and a Redis
outage never breaks search."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest
import redis

from evaluation.standins.synthetic import generate
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, Services, environment, wait_for_status
from tests.images import jpeg_bytes

pytestmark = pytest.mark.usefixtures("clean_db", "worker")

INDEX = "withsense:{qcache}:lru"


def _flush_cache(url: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter("withsense:{qcache}:*"):
        client.delete(key)
    client.close()


def _counters(api) -> dict[str, float]:  # type: ignore[no-untyped-def]
    values = {}
    for line in api.get("/metrics").text.splitlines():
        for name in ("hits", "misses", "errors"):
            if line.startswith(f"withsense_query_cache_{name}_total "):
                values[name] = float(line.split()[1])
    return values


@pytest.fixture()
def indexed(api) -> list[str]:  # type: ignore[no-untyped-def]
    samples = [s for s in generate(12, 71) if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)][:3]
    ids = [
        api.post("/v1/photos", files={"file": ("p.jpg", jpeg_bytes(s.image), "image/jpeg")}).json()["id"]
        for s in samples
    ]
    assert all(body["status"] == "indexed" for body in wait_for_status(api, ids).values())
    return ids


def test_a_repeated_query_is_served_from_the_cache_with_the_same_ranking(  # type: ignore[no-untyped-def]
    api, services: Services, indexed: list[str]
) -> None:
    from core.embedding import get_embedder
    from services.query_cache import cache_key
    from services.search import query_model_id

    _flush_cache(services.broker_url)
    before = _counters(api)
    first = api.get("/v1/search", params={"q": "a red  circle ", "k": 3}).json()
    again = api.get("/v1/search", params={"q": "  a red circle", "k": 3}).json()  # the same words, other spacing
    after = _counters(api)
    assert after["misses"] - before["misses"] == 1 and after["hits"] - before["hits"] == 1
    assert [(r["id"], r["score"]) for r in again["results"]] == [(r["id"], r["score"]) for r in first["results"]]
    assert first["query"] == again["query"] == "a red circle"

    client: Any = redis.Redis.from_url(services.broker_url)
    key = cache_key(query_model_id(), "a red circle")
    stored = np.frombuffer(client.get(key), dtype=np.float32)
    expected = get_embedder().embed_texts(["a red circle"])[0]
    assert stored.shape == expected.shape and np.allclose(stored, expected, atol=1e-6)
    assert 0 < client.pttl(key) <= 86_400_000  # WITHSENSE_QUERY_CACHE_TTL_S, one day by default
    assert client.zscore(INDEX, key) is not None
    # Another model's vectors live under other keys: a model switch never reads this one's.
    assert cache_key("another-model@abc|text=", "a red circle") != key
    client.close()


def test_the_cache_keeps_the_most_recently_used_entries_and_expires_them(  # type: ignore[no-untyped-def]
    api, services: Services, indexed: list[str]
) -> None:
    from services.query_cache import cache_key
    from services.search import query_model_id

    _flush_cache(services.broker_url)
    with environment({"WITHSENSE_QUERY_CACHE_MAX_ENTRIES": "3"}):
        for q in ("a red circle", "a blue square", "a green triangle"):
            assert api.get("/v1/search", params={"q": q}).status_code == 200
        assert api.get("/v1/search", params={"q": "a red circle"}).status_code == 200  # used again: most recent
        assert api.get("/v1/search", params={"q": "a white star"}).status_code == 200  # one too many
        client = redis.Redis.from_url(services.broker_url)
        model = query_model_id()
        assert client.zcard(INDEX) == 3
        assert client.exists(cache_key(model, "a blue square")) == 0  # the least recently used went
        for kept in ("a red circle", "a green triangle", "a white star"):
            assert client.exists(cache_key(model, kept)) == 1
        client.close()

    _flush_cache(services.broker_url)
    with environment({"WITHSENSE_QUERY_CACHE_TTL_S": "1"}):
        before = _counters(api)
        api.get("/v1/search", params={"q": "a red circle"})
        time.sleep(1.3)
        api.get("/v1/search", params={"q": "a red circle"})
        after = _counters(api)
        assert after["misses"] - before["misses"] == 2 and after["hits"] == before["hits"]


def test_search_goes_on_when_the_cache_redis_is_down(  # type: ignore[no-untyped-def]
    api, services: Services, indexed: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    expected = api.get("/v1/search", params={"q": "a blue square", "k": 3}).json()["results"]
    # A cache server that does not answer: nothing listens on the port.
    with environment({"WITHSENSE_QUERY_CACHE_URL": "redis://127.0.0.1:1/0"}):
        caplog.set_level(logging.WARNING, logger="services.shared_state")
        for _ in range(4):
            response = api.get("/v1/search", params={"q": "a blue square", "k": 3})
            assert response.status_code == 200
            assert [r["id"] for r in response.json()["results"]] == [r["id"] for r in expected]
        warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # logged once for the outage
        assert _counters(api)["errors"] >= 1
