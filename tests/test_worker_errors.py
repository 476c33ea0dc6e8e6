"""A task that fails as a whole (here: the worker cannot load its model) leaves its reason on the photos."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.local_services import LocalRedis
from tests.conftest import Services, WorkerProcess, upload

pytestmark = pytest.mark.usefixtures("clean_db")


def test_a_worker_without_its_model_leaves_the_reason_on_the_photo(
    api: TestClient, services: Services, own_broker: LocalRedis, tmp_path: Path
) -> None:
    from db import photos as photo_sql
    from db.engine import session_scope

    missing = tmp_path / "no-model-here"
    worker = WorkerProcess(services.home, extra_env={"WITHSENSE_MODEL": str(missing)})
    worker.start()
    try:
        response = upload(api, Image.new("RGB", (96, 96), (10, 120, 200)))
        assert response.status_code == 202, response.text
        photo_id = response.json()["id"]
        deadline = time.monotonic() + 120
        body = api.get(f"/v1/photos/{photo_id}").json()
        while body["error"] is None and time.monotonic() < deadline:
            time.sleep(0.3)
            body = api.get(f"/v1/photos/{photo_id}").json()
    finally:
        worker.stop()

    # Still pending (the reconciler queues it again), with the reason an operator can act on, and no
    # attempt used: the photo is not at fault.
    assert body["status"] == "pending" and body["attempts"] == 0, body
    assert body["error"].startswith("indexing attempt failed: ModelUnavailableError"), body
    assert str(missing) in body["error"] and "WITHSENSE_MODEL" in body["error"], body

    # Should the photo later use up its attempts (say, a worker crashes on it), it fails with that reason.
    from sqlalchemy import text

    with session_scope() as session:
        session.execute(text("UPDATE photos SET attempts = 1 WHERE id = :id"), {"id": photo_id})
        claimed = photo_sql.claim_for_indexing(session, [uuid.UUID(photo_id)], max_attempts=1)
    assert claimed == {}
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["status"] == "failed"
    assert body["error"].startswith(
        "gave up after 1 attempts; last error: indexing attempt failed: ModelUnavailableError"
    )
