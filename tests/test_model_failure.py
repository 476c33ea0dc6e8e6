"""RELIABILITY.md item 29: a model that cannot be loaded says so at once, and everything resumes once it can be.

Against the real stack: an API and a worker whose model folder does not exist yet. /readyz answers 503 naming the
model and the reason, searches answer 503 at once (no request waits on a load), uploads wait as pending with the
reason; then the folder appears, the API's background retry loads it, and the worker indexes the photos that
waited, without the reconciler. And a hub that cannot be reached is asked once, not once per file with retries.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, Services, WorkerProcess, reset_cached_state, upload

pytestmark = pytest.mark.usefixtures("clean_db")


def _poll(fetch, done, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen in {timeout}s; last: {value!r}")
        time.sleep(0.3)
        value = fetch()
    return value


@pytest.fixture()
def missing_model(
    services: Services, own_broker: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """WITHSENSE_MODEL names a folder that does not exist yet, retried every second at most (API and worker)."""
    folder = tmp_path / "models" / "clip"
    monkeypatch.setenv("WITHSENSE_MODEL", str(folder))
    monkeypatch.setenv("WITHSENSE_MODEL_RETRY_MAX_S", "1")
    reset_cached_state()
    try:
        yield folder
    finally:
        monkeypatch.undo()
        reset_cached_state()


def test_a_model_that_appears_later_is_loaded_and_the_waiting_photos_are_indexed(
    services: Services, missing_model: Path, admin_key: str, tiny_clip_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    worker = WorkerProcess(services.home)  # inherits WITHSENSE_MODEL and the retry cap from the environment
    worker.start()
    try:
        with TestClient(create_app(), headers={"Authorization": f"Bearer {admin_key}"}) as api:
            ready = _poll(
                lambda: api.get("/readyz"),
                lambda r: r.status_code == 503 and r.json()["checks"]["model"].startswith("unavailable"),
                60,
                "/readyz naming the failed model",
            )
            reason = ready.json()["checks"]["model"]
            assert str(missing_model) in reason and "no such folder" in reason, reason
            assert ready.json()["checks"]["database"] == "ok" and ready.json()["checks"]["broker"] == "ok"

            # Searches answer 503 at once with the reason, and say when to come back; none waits on a load.
            started = time.monotonic()
            for query in ("a red circle", "a blue square", "a green triangle"):
                refused = api.get("/v1/search", params={"q": query})
                assert refused.status_code == 503, refused.text
                assert str(missing_model) in refused.json()["detail"], refused.json()
                assert int(refused.headers["retry-after"]) >= 1
            # (A bound far below any hub timeout, and far above a loaded test machine's overhead.)
            assert time.monotonic() - started < 15, "a search waited for the model instead of answering 503"
            assert api.post("/v1/embeddings/text", json={"texts": ["a red circle"]}).status_code == 503

            # Uploads need no model: they wait as pending, with the reason on each photo and no attempt used.
            ids = [
                upload(api, Image.new("RGB", (80, 60), colour)).json()["id"]
                for colour in ((200, 30, 30), (30, 30, 200), (30, 160, 60))
            ]
            for photo_id in ids:
                body = _poll(
                    lambda pid=photo_id: api.get(f"/v1/photos/{pid}").json(),
                    lambda b: b["error"] is not None,
                    120,
                    "the model failure on the photo",
                )
                assert body["status"] == "pending" and body["attempts"] == 0, body
                assert body["error"].startswith("indexing attempt failed: ModelUnavailableError"), body

            # The folder appears (copied next to it, then moved into place, as an operator would).
            staging = missing_model.with_name(".clip-copying")
            shutil.copytree(tiny_clip_path, staging)
            staging.rename(missing_model)

            # The API's background retry loads it; nothing else was restarted.
            ready = _poll(lambda: api.get("/readyz"), lambda r: r.status_code == 200, 90, "/readyz 200")
            assert ready.json()["checks"]["model"] == "ok", ready.json()  # never "loading" again after a failure
            assert api.get("/v1/search", params={"q": "a red circle"}).status_code == 200

            # The worker's delayed retry loads it too, and queues the photos that waited: all end indexed.
            for photo_id in ids:
                body = _poll(
                    lambda pid=photo_id: api.get(f"/v1/photos/{pid}").json(),
                    lambda b: b["status"] in ("indexed", "failed"),
                    180,
                    "the waiting photo indexed",
                )
                assert body["status"] == "indexed" and body["error"] is None, body
            # ... by the worker's own retry, which queued them the moment it had the model (the reconciler, at
            # WITHSENSE_RECONCILE_AFTER_S=3600 in the tests, had no part in it).
            assert "queued 3 photos that were waiting for the model" in worker.full_log(), worker.log()
    finally:
        worker.stop()
    # One clear line per reason in the worker's log, not a traceback per task.
    assert worker.full_log().count("Traceback") == 0, worker.log()


class _SilentHub:
    """A TCP server on loopback that reads each request line and never answers: a hub behind a black hole."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.requests: list[str] = []
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)
            connection.settimeout(5)
            try:
                self.requests.append(connection.recv(1024).split(b"\r\n", 1)[0].decode("latin-1"))
            except OSError:
                self.requests.append("(no request line)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self.server.close()


def test_an_unreachable_hub_is_asked_once_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    hub = _SilentHub()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "WITHSENSE_", "SENTENCE_"))}
    env |= {
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.port}",
        "HF_HOME": str(tmp_path / "hf-home"),
        "PYTHONPATH": str(ROOT),
        "NO_PROXY": "127.0.0.1",
    }
    script = (
        "from core.embedding import ClipEmbedder, ModelUnavailableError\n"
        "try:\n"
        "    ClipEmbedder('clip-ViT-B-32', device='cpu').load()\n"
        "except ModelUnavailableError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('loaded without a hub')\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
    finally:
        hub.close()
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert "the hub is unreachable" in message and "WITHSENSE_MODEL=/path/to/folder" in message, message
    # One question about the model, then the clear error: no file downloads, no retries (huggingface_hub may
    # also ask for its own registry of agent harnesses when it sees an agent's environment: not about the model).
    about_the_model = [line for line in hub.requests if "/api/agent-harnesses" not in line]
    assert about_the_model == ["GET /api/models/sentence-transformers/clip-ViT-B-32 HTTP/1.1"], hub.requests
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
