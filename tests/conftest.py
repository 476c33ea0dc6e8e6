"""Real components for the tests: embedded Postgres + pgvector, a Valkey (Redis) server, a Celery worker
process and the tiny trained CLIP model, all started once per session and stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    # What TestClient answers with (httpx2 comes with huggingface_hub; starlette prefers it to httpx).
    import httpx2
    from fastapi.testclient import TestClient
    from PIL import Image

    from cli.local_services import LocalPostgres, LocalRedis
    from evaluation.standins.synthetic import SyntheticImage, TemplateSet

# Fixture modules every test gets by name (the trained tiny CLIP).
pytest_plugins = ["tests.fixtures_model"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Services:
    """The session's servers and data folder."""

    home: Path
    postgres: LocalPostgres
    redis: LocalRedis

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def broker_url(self) -> str:
        return self.redis.url


def reset_cached_state() -> None:
    """Settings, engine, model, policy, classifier, queue producer and caches are process-wide: after changing the
    environment, forget them all (they are rebuilt from the new settings on next use)."""
    import workers.celery_app  # noqa: F401 - registers the worker app's reconfiguration with the reset
    from core.runtime import runtime

    runtime.reset()


@pytest.fixture(scope="session")
def services(tiny_clip_path: Path) -> Iterator[Services]:
    """Postgres and Redis on loopback, migrated, with WITHSENSE_* pointing at them and at the tiny model."""
    from cli.local_services import LocalPostgres, LocalRedis
    from migrations.apply import upgrade

    # Short path: keeps any unix socket well under the ~107-byte limit.
    home = Path(tempfile.mkdtemp(prefix="wst-", dir="/tmp"))
    postgres = LocalPostgres(home / "pg")
    redis = LocalRedis(home / "redis")
    postgres.start()
    redis.start()
    saved = {k: v for k, v in os.environ.items() if k.startswith("WITHSENSE_")}
    os.environ.update(
        {
            "WITHSENSE_HOME": str(home / "data"),
            "WITHSENSE_DATABASE_URL": postgres.url,
            "WITHSENSE_BROKER_URL": redis.url,
            "WITHSENSE_MODEL": str(tiny_clip_path),
            "WITHSENSE_DEVICE": "cpu",
            "WITHSENSE_RECONCILE_AFTER_S": "3600",
            # Tests upload faster than a person; the rate-limit test sets its own limits.
            "WITHSENSE_RATE_LIMIT_UPLOAD": "100000/second",
            "WITHSENSE_RATE_LIMIT_SEARCH": "100000/second",
            "WITHSENSE_MODERATION_PROMPTS": str(Path(__file__).with_name("moderation_prompts.yaml")),
        }
    )
    reset_cached_state()
    upgrade(postgres.url)
    try:
        yield Services(home=home, postgres=postgres, redis=redis)
    finally:
        from db.engine import dispose_engine

        dispose_engine()
        redis.stop()
        postgres.stop()
        for key in [k for k in os.environ if k.startswith("WITHSENSE_")]:
            del os.environ[key]
        os.environ.update(saved)
        reset_cached_state()
        shutil.rmtree(home, ignore_errors=True)


class WorkerProcess:
    """A real `celery worker` child process consuming from the test Redis."""

    def __init__(
        self,
        home: Path,
        concurrency: int = 1,
        extra_env: dict[str, str] | None = None,
        queues: str = "photos,maintenance",
    ) -> None:
        self.home = home
        self.concurrency = concurrency
        self.queues = queues
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"worker-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ, **self.extra_env)
        env["PYTHONPATH"] = str(ROOT)
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                "--loglevel",
                "INFO",
                "-n",
                f"test{time.monotonic_ns()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """The end of the worker's log, for assertion messages."""
        return self.full_log()[-5000:]

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        import psutil

        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """kill -9 the whole worker (parent and children)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.process = None


@pytest.fixture(scope="session")
def worker(services: Services) -> Iterator[WorkerProcess]:
    process = WorkerProcess(services.home)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture()
def own_broker(services: Services) -> Iterator[LocalRedis]:
    """A Redis of this test's own, so the session worker never takes these tasks and it can be killed."""
    from cli.local_services import LocalRedis

    redis = LocalRedis(services.home / f"redis-{uuid.uuid4().hex[:6]}")
    redis.start()
    previous = os.environ["WITHSENSE_BROKER_URL"]
    os.environ["WITHSENSE_BROKER_URL"] = redis.url
    reset_cached_state()
    try:
        yield redis
    finally:
        os.environ["WITHSENSE_BROKER_URL"] = previous
        reset_cached_state()
        redis.stop()


@pytest.fixture()
def clean_db(services: Services) -> Iterator[None]:
    """Start each test with no photos (the worker is a separate process, so rollback isolation can't apply)."""
    from sqlalchemy import text

    from core.settings import get_settings
    from db.engine import session_scope

    with session_scope() as session:
        session.execute(text("TRUNCATE photos CASCADE"))
    settings = get_settings()
    for folder in (settings.originals_dir, settings.derivatives_dir):
        shutil.rmtree(folder, ignore_errors=True)
    yield


def create_api_key(*scopes: str, name: str = "test") -> str:
    from db.api_keys import create_key
    from db.engine import session_scope

    with session_scope() as session:
        return create_key(session, name, list(scopes))[1]


@pytest.fixture(scope="session")
def admin_key(services: Services) -> str:
    return create_api_key("admin", name="test-admin")


@pytest.fixture()
def api(services: Services, admin_key: str) -> Iterator[TestClient]:
    """The real FastAPI app over ASGI, authenticated with an admin key."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {admin_key}"}) as client:
        yield client


@pytest.fixture()
def anonymous_api(services: Services) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app()) as client:
        yield client


def wait_for_status(client: TestClient, photo_ids: list[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    """Poll GET /v1/photos/{id} until every photo is indexed or failed; their JSON bodies by id."""
    deadline = time.monotonic() + timeout
    final: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for photo_id in photo_ids:
            if photo_id in final:
                continue
            body = client.get(f"/v1/photos/{photo_id}").json()
            if body.get("status") in ("indexed", "failed"):
                final[photo_id] = body
        if len(final) == len(photo_ids):
            return final
        time.sleep(0.2)
    missing = [p for p in photo_ids if p not in final]
    raise TimeoutError(f"{len(missing)} photos not done after {timeout}s, e.g. {missing[:3]}")


# Stand-ins of the test moderation prompts (tests/moderation_prompts.yaml).
MINOR_COLOUR = "yellow"
UNSAFE_COLOUR = "brown"


def sample_of(colour: str, shape: str, seed: int, templates: TemplateSet = "heldout") -> SyntheticImage:
    """A synthetic image of one colour and shape, with a caption from `templates`."""
    from evaluation.standins.synthetic import generate

    for offset in range(50):
        for sample in generate(80, seed + offset * 1000, templates=templates):
            if sample.colour == colour and sample.shape == shape:
                return sample
    raise LookupError(f"no {colour} {shape} generated")


def upload(client: TestClient, image: Image.Image, **fields: str) -> httpx2.Response:
    """POST /v1/photos with ``image`` as a JPEG and ``fields`` as the form."""
    from tests.images import jpeg_bytes

    return client.post("/v1/photos", files={"file": ("photo.jpg", jpeg_bytes(image), "image/jpeg")}, data=fields)
