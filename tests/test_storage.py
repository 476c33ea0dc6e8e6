"""Photo storage: the same tests against the local folder and an S3-compatible server (moto's server mode on
loopback), each with a real Celery worker on a Redis of its own; then two worker processes with separate local
homes indexing from one bucket."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from evaluation.standins.synthetic import generate
from tests.conftest import (
    MINOR_COLOUR,
    UNSAFE_COLOUR,
    Services,
    WorkerProcess,
    create_api_key,
    environment,
    wait_for_status,
)
from tests.images import jpeg_bytes, png_bytes
from tests.s3_server import LocalS3

CHUNK = 5 * 1024 * 1024  # S3's smallest part: a 6 MB upload goes up in two parts


@pytest.fixture(scope="session")
def s3_server(services: Services) -> Iterator[LocalS3]:
    server = LocalS3(services.home / "s3")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    """A backend under test: its settings, a worker using it, and a way to look into the store directly."""

    kind: str
    home: Path
    s3: LocalS3 | None
    bucket: str
    prefix: str

    def objects(self, folder: str) -> dict[str, bytes]:
        """Every stored object under `originals` or `derivatives`, by name relative to that folder."""
        if self.s3 is None:
            root = self.home / folder
            return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        client = self.s3.client()
        base = f"{self.prefix}{folder}/"
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"]
                found[item["Key"][len(base) :]] = body.read()
        return found

    def etag(self, name: str) -> str:
        assert self.s3 is not None
        return str(self.s3.client().head_object(Bucket=self.bucket, Key=name)["ETag"]).strip('"')

    def empty(self) -> None:
        if self.s3 is None:
            for folder in ("originals", "derivatives"):
                shutil.rmtree(self.home / folder, ignore_errors=True)
            return
        client = self.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=self.bucket, Key=item["Key"])


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request: pytest.FixtureRequest, services: Services, s3_server: LocalS3) -> Iterator[Stack]:
    """The backend's settings in this process, a Redis of its own and a worker started with the same settings."""
    from cli.local_services import LocalRedis
    from services.photos import prepare_storage

    kind = request.param
    home = services.home / f"storage-{kind}"
    redis = LocalRedis(services.home / f"redis-storage-{kind}")
    redis.start()
    bucket = f"withsense-{uuid.uuid4().hex[:12]}"
    values = {
        "WITHSENSE_HOME": str(home),
        "WITHSENSE_BROKER_URL": redis.url,
        "WITHSENSE_STORAGE": kind,
        "WITHSENSE_S3_MULTIPART_CHUNK_BYTES": str(CHUNK),
    }
    if kind == "s3":
        values |= s3_server.env(bucket, prefix="catalogue/")
    try:
        with environment(values):
            prepare_storage()  # creates the bucket, as `withsense migrate` does
            worker = WorkerProcess(services.home)
            worker.start()
            try:
                yield Stack(kind, home, s3_server if kind == "s3" else None, bucket, "catalogue/")
            finally:
                worker.stop()
    finally:
        redis.stop()


@pytest.fixture()
def store(stack: Stack, clean_db: None) -> Stack:
    stack.empty()
    return stack


def _samples(n: int, seed: int) -> list:
    return [s for s in generate(n * 4, seed) if s.colour not in (MINOR_COLOUR, UNSAFE_COLOUR)][:n]


def _upload(client, data: bytes, name: str = "photo.jpg", **fields: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/photos", files={"file": (name, data, "image/jpeg")}, data=fields)


def test_upload_index_serve_and_delete(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    samples = _samples(3, seed=41)
    uploads = [jpeg_bytes(s.image) for s in samples]
    ids = []
    for data in uploads:
        response = _upload(api, data)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    final = wait_for_status(api, ids)
    assert all(body["status"] == "indexed" for body in final.values()), [b["error"] for b in final.values()]

    # The originals are the uploaded bytes, stored under generated names; one derivative per photo.
    originals = store.objects("originals")
    assert sorted(originals.values()) == sorted(uploads)
    assert all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}\.jpg", name) for name in originals)
    derivatives = store.objects("derivatives")
    assert sorted(derivatives) == sorted(f"{uuid.UUID(i).hex[:2]}/{uuid.UUID(i).hex}.jpg" for i in ids)
    if store.kind == "s3":  # nothing of it on the API's host
        assert not (store.home / "originals").exists() or not any((store.home / "originals").rglob("*.jpg"))

    for photo_id in ids:
        thumbnail = api.get(f"/v1/photos/{photo_id}/thumbnail")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert thumbnail.headers["cache-control"] == "private, no-cache"
        assert Image.open(io.BytesIO(thumbnail.content)).size == (224, 224)
        assert thumbnail.content == derivatives[f"{uuid.UUID(photo_id).hex[:2]}/{uuid.UUID(photo_id).hex}.jpg"]

    results = api.get("/v1/search", params={"q": samples[0].caption, "k": 10}).json()["results"]
    assert {r["id"] for r in results} == set(ids)

    # Delete: out of search, and both of its objects gone from the store after the commit.
    assert api.delete(f"/v1/photos/{ids[0]}").status_code == 204
    assert api.get(f"/v1/photos/{ids[0]}/thumbnail").status_code == 404
    assert len(store.objects("originals")) == 2 and uploads[0] not in store.objects("originals").values()
    assert f"{uuid.UUID(ids[0]).hex[:2]}/{uuid.UUID(ids[0]).hex}.jpg" not in store.objects("derivatives")
    assert len(store.objects("derivatives")) == 2
    results = api.get("/v1/search", params={"q": samples[0].caption, "k": 10}).json()["results"]
    assert ids[0] not in {r["id"] for r in results}


def test_a_large_upload_is_stored_whole_in_parts(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    noise = np.random.default_rng(7).integers(0, 256, size=(1500, 1500, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise))
    assert len(data) > CHUNK  # bigger than one part
    response = api.post("/v1/photos", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 202, response.text
    assert response.json()["sha256"] == hashlib.sha256(data).hexdigest()
    [(name, stored)] = store.objects("originals").items()
    assert stored == data
    if store.kind == "s3":  # a multipart upload: the ETag of such an object ends in the number of parts
        parts = -(-len(data) // CHUNK)
        assert store.etag(f"{store.prefix}originals/{name}").endswith(f"-{parts}")
    body = wait_for_status(api, [response.json()["id"]])[response.json()["id"]]
    assert body["status"] == "indexed", body["error"]
    # Nothing left in this host's spool: neither the upload nor a fetched copy.
    spool = store.home / "tmp"
    assert not spool.exists() or not any(p.is_file() for p in spool.rglob("*"))


def test_duplicates_and_rejected_bytes_leave_no_object(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    data = jpeg_bytes(_samples(1, seed=42)[0].image)
    first, second = _upload(api, data), _upload(api, data)
    assert first.status_code == 202 and second.status_code == 200 and second.json()["duplicate"] is True
    html = b"<html><script>alert(1)</script></html>" * 20
    assert _upload(api, html, name="x.jpg").status_code == 415
    assert list(store.objects("originals").values()) == [data]


def test_a_missing_original_fails_the_photo_with_the_reason(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    from core.settings import get_settings
    from db.engine import session_scope
    from services.intake import register_photo
    from services.queue import enqueue_ingest
    from storage import get_storage

    data = jpeg_bytes(_samples(1, seed=43)[0].image)
    spooled = get_settings().spool_dir / f"{uuid.uuid4().hex}.jpg"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(data)
    result = register_photo(
        get_settings(), spooled, sha256=hashlib.sha256(data).hexdigest(), size=len(data), enqueue=False
    )
    with session_scope() as session:
        key = session.scalar(text("SELECT storage_key FROM photos WHERE id = :id"), {"id": result.photo.id})
    assert get_storage().remove_original(str(key)) is None
    enqueue_ingest(result.photo.id)
    body = wait_for_status(api, [str(result.photo.id)])[str(result.photo.id)]
    assert body["status"] == "failed" and body["error"] == "the original file is missing from storage"
    assert store.objects("derivatives") == {}


def test_readiness_names_the_store(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    ready = api.get("/readyz")
    assert ready.json()["checks"]["storage"] == "ok", ready.json()


# --- S3 only: what exists only with object storage -------------------------------------------------------------


def test_an_unreachable_bucket_refuses_uploads_and_fails_readiness(services: Services, s3_server: LocalS3) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    dead = LocalS3(services.home / "s3-dead")  # never started: nothing listens on its port
    dead.port = 1  # a privileged port nobody serves on loopback: connection refused at once
    values = dead.env("withsense-nowhere") | {"WITHSENSE_HOME": str(services.home / "storage-dead")}
    with environment(values):
        admin = create_api_key("admin", name="dead-store")
        with TestClient(create_app(), headers={"Authorization": f"Bearer {admin}"}) as client:
            data = jpeg_bytes(_samples(1, seed=44)[0].image)
            response = _upload(client, data)
            assert response.status_code == 503, response.text
            assert response.json()["detail"] == "the photo store is unavailable; nothing was stored, retry later"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "object storage unreachable" in ready.json()["checks"]["storage"]
        from db.engine import session_scope

        with session_scope() as session:
            sha = hashlib.sha256(data).hexdigest()
            assert session.scalar(text("SELECT count(*) FROM photos WHERE sha256 = :s"), {"s": sha}) == 0


@pytest.mark.parametrize("stack", ["s3"], indirect=True)  # presigned URLs exist only for object storage
def test_thumbnail_redirects_to_a_short_lived_url_after_the_visibility_check(api, store: Stack) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from api.app import create_app

    ids = [_upload(api, jpeg_bytes(s.image)).json()["id"] for s in _samples(2, seed=45)]
    assert all(b["status"] == "indexed" for b in wait_for_status(api, ids).values())
    assert api.patch(f"/v1/photos/{ids[1]}", json={"visibility": "private"}).status_code == 200
    searcher = create_api_key("search", name="thumb-searcher")
    redirect = {"WITHSENSE_S3_THUMBNAILS": "redirect", "WITHSENSE_S3_PRESIGN_TTL_S": "30"}
    with environment(redirect), TestClient(create_app(), headers={"Authorization": f"Bearer {searcher}"}) as client:
        answer = client.get(f"/v1/photos/{ids[0]}/thumbnail", follow_redirects=False)
        assert answer.status_code == 307 and answer.headers["cache-control"] == "no-store"
        location = answer.headers["location"]
        assert "X-Amz-Expires=30" in location and "X-Amz-Signature=" in location
        fetched = httpx.get(location, timeout=10)
        assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (224, 224)
        # A photo this key may not see is the same 404 as ever: no URL is handed out for it.
        hidden = client.get(f"/v1/photos/{ids[1]}/thumbnail", follow_redirects=False)
        assert hidden.status_code == 404 and "location" not in hidden.headers


# --- Many worker hosts, one bucket ----------------------------------------------------------------------------


def _indexed_by(worker: WorkerProcess) -> list[str]:
    """Photo ids whose `photos.ingest` task this worker finished with `indexed` (from its log)."""
    return re.findall(r"succeeded in [^:]*: \{'photo_id': '([0-9a-f-]{36})', 'result': 'indexed'\}", worker.full_log())


def _until_finished(workers: list[WorkerProcess], task: str, count: int, timeout: float = 120.0) -> None:
    """Wait until the workers' logs hold `count` finished runs of `task` between them."""
    pattern = re.compile(rf"Task {re.escape(task)}\[[0-9a-f-]+\] (succeeded|raised|failed)")
    deadline = time.monotonic() + timeout
    while sum(len(pattern.findall(worker.full_log())) for worker in workers) < count:
        assert time.monotonic() < deadline, f"{task} not finished {count} times: " + "".join(w.log() for w in workers)
        time.sleep(0.2)


def test_two_worker_hosts_index_from_one_bucket(services: Services, s3_server: LocalS3, clean_db: None) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from cli.local_services import LocalRedis
    from db.engine import session_scope
    from services.photos import prepare_storage

    redis = LocalRedis(services.home / "redis-two-hosts")
    redis.start()
    bucket = f"withsense-{uuid.uuid4().hex[:12]}"
    shared = s3_server.env(bucket) | {"WITHSENSE_BROKER_URL": redis.url}
    hosts = [services.home / f"host-{n}" for n in ("api", "a", "b")]
    workers = [WorkerProcess(home.parent, extra_env=shared | {"WITHSENSE_HOME": str(home)}) for home in hosts[1:]]
    try:
        with environment(shared | {"WITHSENSE_HOME": str(hosts[0])}):
            prepare_storage()
            for worker in workers:
                worker.start()
            # Each worker queues one `photos.resume_waiting` when it is ready, and the child that takes it loads
            # its model first: uploads sent before both have finished would all go to whichever was idle first.
            _until_finished(workers, "photos.resume_waiting", len(workers))
            admin = create_api_key("admin", name="two-hosts")
            with TestClient(create_app(), headers={"Authorization": f"Bearer {admin}"}) as client:
                ids = [_upload(client, jpeg_bytes(s.image)).json()["id"] for s in _samples(16, seed=46)]
                final = wait_for_status(client, ids, timeout=240)
                assert all(b["status"] == "indexed" for b in final.values()), [b["error"] for b in final.values()]
                for photo_id in ids:
                    thumbnail = client.get(f"/v1/photos/{photo_id}/thumbnail")
                    assert thumbnail.status_code == 200
                    assert Image.open(io.BytesIO(thumbnail.content)).size == (224, 224)
            with session_scope() as session:
                rows = session.execute(
                    text(
                        "SELECT p.attempts, count(e.photo_id) FROM photos p "
                        "LEFT JOIN photo_embeddings e ON e.photo_id = p.id WHERE p.id = ANY(:ids) GROUP BY p.id"
                    ),
                    {"ids": [uuid.UUID(i) for i in ids]},
                ).all()
            assert len(rows) == len(ids) and all(attempts == 1 and vectors == 1 for attempts, vectors in rows)
    finally:
        for worker in workers:
            worker.stop()
        redis.stop()
    # Each photo indexed by exactly one of the two hosts, and both took part.
    done = [_indexed_by(worker) for worker in workers]
    assert sorted(done[0] + done[1]) == sorted(ids), [worker.log() for worker in workers]
    assert done[0] and done[1], "one worker indexed everything"
    # The workers' own homes keep nothing: the originals came from the bucket, the derivatives went there.
    for home in hosts[1:]:
        assert not any(p.is_file() for p in home.rglob("*") if p.suffix in {".jpg", ".png"}), home


def test_storage_settings_are_checked_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    for name in [key for key in os.environ if key.startswith(("WITHSENSE_S3_", "WITHSENSE_STORAGE"))]:
        monkeypatch.delenv(name)  # another test's store may be configured in this process

    with pytest.raises(ValidationError, match="WITHSENSE_S3_BUCKET"):
        Settings(storage="s3")
    settings = Settings(storage="s3", s3_bucket="photos", s3_prefix="/catalogue/2026/")
    assert settings.s3_prefix == "catalogue/2026/"  # one trailing slash, none in front
    assert Settings(s3_prefix="").s3_prefix == ""
    with pytest.raises(ValidationError):
        Settings(s3_multipart_chunk_bytes=1024 * 1024)  # below S3's 5 MiB minimum part
    monkeypatch.setenv("WITHSENSE_DATABASE_REPLICA_URLS", "postgresql://a/withsense, postgresql://b/withsense ,")
    assert Settings().database_replica_urls == ("postgresql://a/withsense", "postgresql://b/withsense")
