"""A task that fails as a whole (here: the worker cannot load its model) leaves its reason on the photos."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import WorkerProcess, upload

pytestmark = pytest.mark.usefixtures("clean_db")


def test_a_worker_without_its_model_leaves_the_reason_on_the_photo(api, services, own_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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

    # Back in the queue's hands (the reconciler retries it), with the reason an operator can act on.
    assert body["status"] == "pending", body
    assert body["error"].startswith("indexing attempt failed: ModelUnavailableError"), body
    assert str(missing) in body["error"] and "WITHSENSE_MODEL" in body["error"], body

    # When its attempts are used up, the photo fails with that reason, not a guess about crashes.
    with session_scope() as session:
        claimed = photo_sql.claim_for_indexing(session, [uuid.UUID(photo_id)], max_attempts=1)
    assert claimed == {}
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["status"] == "failed"
    assert body["error"].startswith("gave up after 1 attempts; last error: indexing attempt failed: ModelUnavailableError")

