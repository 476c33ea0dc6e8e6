"""RELIABILITY.md items 11-16, 21, 22 and the soak test: real processes killed, restarted and starved.

These tests run their own Redis and Celery workers (so they can kill them) and are marked slow:
`pytest -m slow` runs them alone, `pytest -m "not slow"` skips them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import text

from cli.local_services import LocalPostgres, LocalRedis
from tests.conftest import Services, WorkerProcess, upload, wait_for_status
from tests.images import jpeg_bytes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_db")]


@pytest.fixture()
def workers(services: Services) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def _start_worker(services: Services, started: list[WorkerProcess], **env: str) -> WorkerProcess:
    worker = WorkerProcess(services.home, concurrency=int(env.pop("concurrency", "1")), extra_env=env)
    worker.start()
    started.append(worker)
    return worker


def _counts(photo_ids: list[str]) -> dict[str, int]:
    from db.engine import session_scope

    with session_scope() as session:
        rows = session.execute(
            text("SELECT p.status, count(*) FROM photos p WHERE p.id = ANY(CAST(:ids AS uuid[])) GROUP BY p.status"),
            {"ids": photo_ids},
        ).all()
    return dict(rows)


def _embedding_rows(photo_ids: list[str]) -> dict[str, int]:
    from db.engine import session_scope

    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT photo_id::text, count(*) FROM photo_embeddings WHERE photo_id = ANY(CAST(:ids AS uuid[])) "
                "GROUP BY photo_id"
            ),
            {"ids": photo_ids},
        ).all()
    return dict(rows)


def _status_of(photo_id: str) -> str:
    from db.engine import session_scope

    with session_scope() as session:
        return str(session.scalar(text("SELECT status FROM photos WHERE id = :id"), {"id": photo_id}))


def _status_and_attempts(photo_id: str) -> tuple[str, int]:
    from db.engine import session_scope

    with session_scope() as session:
        row = session.execute(text("SELECT status, attempts FROM photos WHERE id = :id"), {"id": photo_id}).one()
    return str(row[0]), int(row[1])


def _original_file(photo_id: str) -> Path:
    from core.settings import get_settings
    from core.storage import original_path
    from db.engine import session_scope

    with session_scope() as session:
        key = session.scalar(text("SELECT storage_key FROM photos WHERE id = :id"), {"id": photo_id})
    return original_path(get_settings(), str(key))


class BlockingOriginal:
    """Swap a photo's stored original for a named pipe: the worker's open() blocks on it, so the test
    knows the task is mid-flight for as long as it likes (no timing race), then puts the bytes back."""

    def __init__(self, photo_id: str) -> None:
        self.path = _original_file(photo_id)
        self.data = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)

    def restore(self) -> None:
        tmp = self.path.with_suffix(".restore")
        tmp.write_bytes(self.data)
        os.replace(tmp, self.path)  # the blocked open() keeps waiting on the old pipe; new ones read the file


def _wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _large_jpeg(seed: int, size: tuple[int, int] = (3000, 2000)) -> bytes:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 255, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8))
    return jpeg_bytes(small.resize(size, Image.Resampling.BICUBIC), quality=95)


def _register(api: TestClient, images: list[bytes], name: str = "x.jpg") -> list[str]:
    ids = []
    for data in images:
        response = api.post("/v1/photos", files={"file": (name, data, "image/jpeg")})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


# 11. kill -9 of the worker child mid-task, and of the whole worker.
def test_killed_worker_child_mid_batch_reruns_with_one_row_each(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    import redis

    from services.queue import enqueue_ingest_batch

    ids = _register(api, [_large_jpeg(seed, (1200, 800)) for seed in range(12)])
    redis.Redis.from_url(own_broker.url).delete("photos")  # drop the uploads' single tasks: this test is about a batch
    blocking = BlockingOriginal(ids[5])
    enqueue_ingest_batch([uuid.UUID(i) for i in ids])
    worker = _start_worker(services, workers)
    assert _wait_until(lambda: set(_counts(ids)) == {"processing"}, 120), worker.log()
    blocking.restore()
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)

    final = wait_for_status(api, ids, timeout=300)
    assert {body["status"] for body in final.values()} == {"indexed"}, worker.log()
    assert set(_embedding_rows(ids).values()) == {1} and len(_embedding_rows(ids)) == len(ids)
    assert max(body["attempts"] for body in final.values()) == 2  # the killed attempt counted, once
    assert "WorkerLostError" in worker.full_log() or "SIGKILL" in worker.full_log()


def test_killed_whole_worker_is_recovered_by_the_reconciler(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    from workers.tasks import reconcile_stale_photos

    ids = _register(api, [_large_jpeg(100 + seed, (1200, 800)) for seed in range(6)])
    blocking = BlockingOriginal(ids[0])
    worker = _start_worker(services, workers)
    assert _wait_until(lambda: _status_of(ids[0]) == "processing", 120), worker.log()
    worker.kill()  # parent and children, -9: nothing acknowledged, nothing requeued by the worker itself
    blocking.restore()
    assert _status_of(ids[0]) == "processing"

    _start_worker(services, workers)
    requeued = reconcile_stale_photos.run(older_than_s=0)["requeued"]
    assert requeued >= 1
    final = wait_for_status(api, ids, timeout=300)
    assert {body["status"] for body in final.values()} == {"indexed"}
    assert set(_embedding_rows(ids).values()) == {1} and len(_embedding_rows(ids)) == len(ids)


# 12. A poison image that kills the worker every time fails after N attempts, not in a loop.
def test_poison_image_fails_after_the_attempt_cap(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    (poison_id,) = _register(api, [_large_jpeg(555, (640, 480))], name="poison.jpg")
    BlockingOriginal(poison_id)  # every attempt hangs in the decoder until the killer strikes
    worker = _start_worker(services, workers, WITHSENSE_TASK_MAX_ATTEMPTS="3")
    kills = 0
    stop = threading.Event()

    def killer() -> None:
        # Kill the child each time it claims the photo anew (a fresh attempt), as a crashing decoder would.
        nonlocal kills
        killed_attempt = 0
        while not stop.is_set():
            status, attempts = _status_and_attempts(poison_id)
            if status == "processing" and attempts > killed_attempt:
                for pid in worker.child_pids():
                    os.kill(pid, signal.SIGKILL)
                kills += 1
                killed_attempt = attempts
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        body = wait_for_status(api, [poison_id], timeout=300)[poison_id]
    finally:
        stop.set()
        thread.join()
    assert body["status"] == "failed", worker.log()
    assert "gave up after 3 attempts" in body["error"]
    assert kills == 3
    assert _embedding_rows([poison_id]) == {}


# 13. A task longer than the visibility timeout: the second delivery changes nothing
# (test_pipeline.py runs two deliveries at once); the timeout is configured above the task limit.
def test_visibility_timeout_is_above_the_task_time_limit() -> None:
    from workers.celery_app import celery_app

    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


# 14. Redis restarted (and half its queue lost) with 1,000 uploads queued: none lost.
def test_redis_restart_with_a_thousand_queued_uploads_loses_none(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    import redis

    from workers.tasks import reconcile_stale_photos

    rng = np.random.default_rng(14)
    images = [
        jpeg_bytes(Image.new("RGB", (48, 32), tuple(int(c) for c in rng.integers(0, 255, 3)))) for _ in range(1000)
    ]
    images = list(dict.fromkeys(images))  # distinct bytes only
    ids = _register(api, images)
    client = redis.Redis.from_url(own_broker.url)
    assert client.llen("photos") == len(ids)
    own_broker.kill()
    own_broker.start()  # AOF brings the queue back ...
    client = redis.Redis.from_url(own_broker.url)
    survived = client.llen("photos")
    assert isinstance(survived, int)  # the synchronous client answers at once
    client.ltrim("photos", 0, survived // 2 - 1)  # ... and we throw half of it away, as a lost volume would
    assert client.llen("photos") == survived // 2
    # No worker has run yet: every photo is still pending, and the reconciler must re-enqueue exactly those.
    left_pending = _counts(ids)
    assert left_pending == {"pending": len(ids)}
    requeued = reconcile_stale_photos.run(older_than_s=0, limit=5000)["requeued"]
    assert requeued == left_pending["pending"]
    _start_worker(services, workers, concurrency="2")
    assert _wait_until(lambda: _counts(ids).get("indexed", 0) == len(ids), 900, interval=1.0), _counts(ids)
    rows = _embedding_rows(ids)
    assert len(rows) == len(ids) and set(rows.values()) == {1}


# 15. Redis full: uploads answer 503 and nothing is half-done.
def test_full_redis_makes_uploads_503_with_nothing_stored(api: TestClient, own_broker: LocalRedis) -> None:
    import redis

    from core.settings import get_settings
    from db.engine import session_scope

    client = redis.Redis.from_url(own_broker.url)
    client.config_set("maxmemory", "2mb")
    try:
        filler = 0
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            while filler < 100_000:
                client.set(f"filler:{filler}", b"x" * 10_000)
                filler += 1
        response = upload(api, Image.new("RGB", (64, 64), (1, 99, 7)))
        assert response.status_code == 503 and "nothing was stored" in response.json()["detail"]
        assert response.headers["retry-after"]
        with session_scope() as session:
            assert session.scalar(text("SELECT count(*) FROM photos")) == 0
        originals = get_settings().originals_dir
        assert not originals.exists() or not any(p.is_file() for p in originals.rglob("*"))
        assert api.get("/readyz").status_code == 200  # Redis answers; it is only full
    finally:
        client.config_set("maxmemory", "0")
        client.flushdb()
    assert upload(api, Image.new("RGB", (64, 64), (1, 99, 7))).status_code == 202


# 15, the other way: Redis down (not full). Uploads answer 503 with nothing half-done, /readyz names the
# broker, and the API needs no restart once Redis is back.
def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_redis_down_makes_uploads_503_with_nothing_stored_and_recovers(api: TestClient, own_broker: LocalRedis) -> None:
    import redis

    from core.settings import get_settings

    home = get_settings().home
    before = _files_under(home)
    own_broker.stop()
    try:
        response = upload(api, Image.new("RGB", (64, 64), (8, 99, 70)))
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "queue is unavailable" in detail and "nothing was stored" in detail
        assert response.headers["retry-after"]
        assert _counts_all() == 0
        assert _files_under(home) == before, _files_under(home) - before

        ready = api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("broker unreachable")
        assert ready.json()["checks"]["database"] == "ok"
    finally:
        own_broker.start()  # the same port and data folder: the URL the API knows works again

    assert api.get("/readyz").status_code == 200
    accepted = upload(api, Image.new("RGB", (64, 64), (8, 99, 70)))
    assert accepted.status_code == 202, accepted.text
    assert _counts_all() == 1
    assert redis.Redis.from_url(own_broker.url).llen("photos") == 1  # queued, for a worker to take


def _counts_all() -> int:
    from db.engine import session_scope

    with session_scope() as session:
        return int(session.scalar(text("SELECT count(*) FROM photos")))


# 16. Torch in prefork children: no fork deadlock, threads = cores / concurrency.
def test_prefork_children_split_the_cores_and_do_not_deadlock(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    worker = _start_worker(services, workers, concurrency="2")  # `-c 2` alone, as `withsense up --workers 2` runs it
    ids = _register(api, [_large_jpeg(300 + seed, (640, 480)) for seed in range(8)])
    final = wait_for_status(api, ids, timeout=300)
    assert {body["status"] for body in final.values()} == {"indexed"}
    expected = max(1, (os.cpu_count() or 1) // 2)
    lines = [line for line in worker.full_log().splitlines() if "torch threads" in line]
    assert len(lines) == 2 and all(line.endswith(f"torch threads {expected}") for line in lines), lines


# 21. Concurrent inserts, searches and VACUUM, then kill -9 of the postmaster.
def test_postmaster_crash_keeps_committed_rows_and_drops_uncommitted() -> None:
    from migrations.apply import upgrade

    home = Path(tempfile.mkdtemp(prefix="wsc-", dir="/tmp"))
    server = LocalPostgres(home / "pg")
    server.start()
    dsn = server.url.replace("+psycopg", "")
    try:
        upgrade(server.url)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO embedding_models (name, revision, dimension, active) VALUES ('m', 'r', 4, true)")
            conn.execute("SELECT ensure_embedding_index(1)")
        committed: list[str] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer(offset: int) -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    for i in range(10_000):
                        if stop.is_set():
                            return
                        sha = f"{offset * 100_000 + i:064x}"
                        [(photo_id,)] = conn.execute(
                            "WITH p AS (INSERT INTO photos (storage_key, sha256, format, width, height, bytes, status, "
                            "moderation_status) VALUES (%s, %s, 'JPEG', 1, 1, 1, 'indexed', 'approved') RETURNING id) "
                            "INSERT INTO photo_embeddings (photo_id, model_id, embedding) "
                            "SELECT id, 1, '[0.5,0.5,0.5,0.5]'::halfvec FROM p RETURNING photo_id",
                            (sha, sha),
                        ).fetchall()
                        committed.append(str(photo_id))
            except psycopg.OperationalError:
                return  # the crash
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        def searcher() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    while not stop.is_set():
                        conn.execute("SELECT * FROM search_photos('[0.5,0.5,0.5,0.5]'::vector, 10, NULL)").fetchall()
            except psycopg.OperationalError:
                return

        def vacuumer() -> None:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    while not stop.is_set():
                        conn.execute("VACUUM photo_embeddings")
                        time.sleep(0.05)
            except psycopg.OperationalError:
                return

        # An open transaction whose rows must never be seen.
        uncommitted = psycopg.connect(dsn)
        uncommitted.execute(
            "INSERT INTO photos (storage_key, sha256, format, width, height, bytes) "
            "VALUES ('ghost', %s, 'JPEG', 1, 1, 1)",
            ("f" * 64,),
        )
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
        threads += [threading.Thread(target=searcher), threading.Thread(target=vacuumer)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        with contextlib.suppress(psycopg.Error):
            uncommitted.close()
        server.start()
        with psycopg.connect(dsn) as conn:
            present = {str(r[0]) for r in conn.execute("SELECT id FROM photos")}
            embedded = {str(r[0]) for r in conn.execute("SELECT photo_id FROM photo_embeddings")}
            [(ghosts,)] = conn.execute("SELECT count(*) FROM photos WHERE storage_key = 'ghost'").fetchall()
            [(found,)] = conn.execute(
                "SELECT count(*) FROM search_photos('[0.5,0.5,0.5,0.5]'::vector, 1000, NULL)"
            ).fetchall()
            assert ghosts == 0
            assert found == min(1000, len(embedded))
        assert len(committed) > 50
        assert set(committed) <= present and set(committed) <= embedded
    finally:
        server.destroy()


# 22. Postgres restarted under load: 503 meanwhile, recovery by itself.
def test_postgres_restart_gives_503_then_recovers(api: TestClient, services: Services, worker: WorkerProcess) -> None:
    assert api.get("/v1/search", params={"q": "a red circle"}).status_code == 200
    services.postgres.stop()
    try:
        down = api.get("/v1/search", params={"q": "a red circle"})
        assert down.status_code == 503 and "database is unavailable" in down.json()["detail"]
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("database unreachable")
        assert ready.json()["checks"]["broker"] == "ok"
        assert upload(api, Image.new("RGB", (40, 40), (3, 3, 3))).status_code == 503
    finally:
        services.postgres.start()
    assert _wait_until(lambda: api.get("/v1/search", params={"q": "a red circle"}).status_code == 200, 30, 0.5)
    assert api.get("/readyz").status_code == 200
    photo_id = upload(api, Image.new("RGB", (40, 40), (200, 30, 3))).json()["id"]
    assert wait_for_status(api, [photo_id], timeout=120)[photo_id]["status"] == "indexed"


class _RouteRequest(TypedDict, total=False):
    files: dict[str, tuple[str, bytes, str]]
    json: dict[str, object]


def _route_request_kwargs(method: str, path: str) -> _RouteRequest:
    """A plausible body for each /v1 operation, so a route is not refused for its input before it touches the
    database."""
    image = ("q.jpg", jpeg_bytes(Image.new("RGB", (48, 48), (9, 80, 9))), "image/jpeg")
    if method == "POST" and path in ("/v1/photos", "/v1/search/image"):
        return {"files": {"file": image}}
    if method == "POST" and path == "/v1/search/vector":
        return {"json": {"embedding": [1.0] + [0.0] * 63, "k": 5}}
    if method == "POST" and path == "/v1/embeddings/text":
        return {"json": {"texts": ["a red circle"]}}
    if method == "POST" and path.endswith("/moderation"):
        return {"json": {"status": "approved", "reason": "outage test"}}
    return {}


def test_postgres_down_under_load_every_v1_route_is_503_and_queued_uploads_index_once(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    from api.app import create_app
    from tests.test_hostile_input import _v1_routes

    # Accepted before the outage, still queued (no worker on this broker yet).
    ids = _register(api, [_large_jpeg(700 + seed, (640, 480)) for seed in range(6)])
    assert _counts(ids) == {"pending": len(ids)}
    routes = [
        (method, path.replace("00000000-0000-0000-0000-000000000001", ids[0]))
        for method, path in _v1_routes(create_app())
    ]
    assert len(routes) >= 12

    seen: list[int] = []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            seen.append(api.get("/v1/search", params={"q": "a green square", "k": 5}).status_code)
            time.sleep(0.05)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert _wait_until(lambda: 200 in seen, 60)
        services.postgres.stop()
        try:
            worker = _start_worker(services, workers)  # it takes the queued uploads while Postgres is down
            for method, path in routes:
                response = api.request(method, path, **_route_request_kwargs(method, path))
                assert response.status_code == 503, (method, path, response.status_code, response.text)
                assert "database is unavailable" in response.json()["detail"], (method, path, response.text)
                assert response.headers["retry-after"]
            assert _wait_until(lambda: seen.count(503) >= 5, 60)
            # The worker met the outage and is retrying, not failing the photos.
            assert _wait_until(lambda: "Retry in" in worker.full_log(), 60), worker.log()
        finally:
            services.postgres.start()
        # Recovery by itself: the same app object, no restart, answers again.
        assert _wait_until(lambda: api.get("/v1/search", params={"q": "a green square"}).status_code == 200, 30, 0.5)
        assert api.get("/readyz").status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(seen) <= {200, 503}, sorted(set(seen))
    assert seen.count(200) > 0 and seen.count(503) > 0

    final = wait_for_status(api, ids, timeout=300)
    assert {body["status"] for body in final.values()} == {"indexed"}, [b["error"] for b in final.values()]
    rows = _embedding_rows(ids)
    assert len(rows) == len(ids) and set(rows.values()) == {1}, rows
    assert _counts(ids) == {"indexed": len(ids)}  # one row each, none duplicated or lost


# The soak: a few hundred uploads while searching and restarting the worker.
def test_soak_uploads_searches_and_worker_restarts(
    api: TestClient, services: Services, own_broker: LocalRedis, workers: list[WorkerProcess]
) -> None:
    from workers.tasks import reconcile_stale_photos

    rng = np.random.default_rng(99)
    images = list(
        dict.fromkeys(
            jpeg_bytes(Image.new("RGB", (96, 64), tuple(int(c) for c in rng.integers(0, 255, 3)))) for _ in range(300)
        )
    )
    worker = _start_worker(services, workers)
    search_errors: list[int] = []
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            status = api.get("/v1/search", params={"q": "a blue square", "k": 10}).status_code
            if status != 200:
                search_errors.append(status)
            time.sleep(0.05)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    ids: list[str] = []
    try:
        for n, data in enumerate(images):
            response = api.post("/v1/photos", files={"file": (f"{n}.jpg", data, "image/jpeg")})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            if n in (100, 200):  # restart the worker twice mid-stream: once gently, once with kill -9
                if n == 100:
                    worker.stop()
                else:
                    worker.kill()
                worker = _start_worker(services, workers)
        # The task killed with the worker is recovered by the reconciler (beat runs it in production).
        deadline = time.monotonic() + 600
        while set(_counts(ids)) - {"indexed", "failed"} and time.monotonic() < deadline:
            reconcile_stale_photos.run(older_than_s=20)
            time.sleep(5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    counts = _counts(ids)
    rows = _embedding_rows(ids)
    print(f"soak: {len(ids)} uploads, {counts}, {len(search_errors)} search errors")
    assert counts == {"indexed": len(ids)}
    assert len(rows) == len(ids) and set(rows.values()) == {1}, "lost or duplicated embeddings"
    assert search_errors == []
