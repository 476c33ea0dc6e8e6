"""Switching search to a new model: reindex with a worker on it, activate, and no API ever ranks across models."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from cli.local_services import LocalRedis
from tests.conftest import (
    MINOR_COLOUR,
    UNSAFE_COLOUR,
    Services,
    WorkerProcess,
    reset_cached_state,
    upload,
    wait_for_status,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_db")]


def _another_model(tiny_clip_path: Path, destination: Path) -> Path:
    """The tiny CLIP with slightly different weights: a new revision that still ranks like the old one."""
    shutil.copytree(tiny_clip_path, destination)
    weights = load_file(destination / "model.safetensors")
    generator = torch.Generator().manual_seed(7)
    name = next(n for n, t in weights.items() if n.endswith("text_projection.weight"))
    weights[name] = weights[name] + 1e-3 * torch.randn(weights[name].shape, generator=generator)
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def _coverage() -> dict[str, tuple[bool, int, int]]:
    from db import photos as photo_sql
    from db.engine import session_scope

    with session_scope() as session:
        return {m.name: (m.active, m.embedded, m.indexed) for m in photo_sql.model_coverage(session)}


def _cli(*args: str) -> Result:
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def _wait_for_coverage(name: str, embedded: int, timeout: float = 120.0) -> tuple[bool, int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _coverage().get(name)
        if state and state[1] == embedded:
            return state
        time.sleep(0.3)
    raise AssertionError(f"{name} covers {_coverage().get(name)}, not {embedded} photos")


@pytest.fixture()
def restore_active_model(services: Services) -> Iterator[None]:
    """Later tests search with the tiny model: make its row active again whatever this test did."""
    yield
    from db import photos as photo_sql
    from db.engine import session_scope

    with session_scope() as session:
        photo_sql.activate_model(session, photo_sql.find_model(session, os.environ["WITHSENSE_MODEL"]))
    reset_cached_state()


def test_model_upgrade_reindexes_then_switches_search_and_never_mixes_models(
    api: TestClient,
    services: Services,
    own_broker: LocalRedis,
    tiny_clip_path: Path,
    tmp_path: Path,
    restore_active_model: None,
) -> None:
    old_model = os.environ["WITHSENSE_MODEL"]
    new_model = str(_another_model(tiny_clip_path, tmp_path / "clip-v2"))
    # The running worker, on the current model; it trusts its answer to "which model is active" for 0.5 s.
    workers = [WorkerProcess(services.home, extra_env={"WITHSENSE_ACTIVE_MODEL_TTL_S": "0.5"})]
    workers[0].start()
    try:
        colours = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (240, 220, 20)]
        assert all(c not in (MINOR_COLOUR, UNSAFE_COLOUR) for c in colours)
        ids = [upload(api, Image.new("RGB", (120, 90), c)).json()["id"] for c in colours]
        assert {b["status"] for b in wait_for_status(api, ids).values()} == {"indexed"}

        # The upgrade worker consumes only `reindex`; it registers the new model, inactive.
        workers.append(WorkerProcess(services.home, queues="reindex", extra_env={"WITHSENSE_MODEL": new_model}))
        workers[1].start()
        result = _cli("reindex", "--batch-size", "3")
        assert result.exit_code == 0, result.output
        assert "4 indexed photos queued" in result.output
        assert _wait_for_coverage(new_model, 4) == (False, 4, 4)
        assert "is registered but not active" in workers[1].full_log()
        assert api.get("/v1/search", params={"q": "a red photo"}).status_code == 200  # search still on the old model

        # A photo indexed meanwhile by the old worker has no new vector: activation is refused, then reindex fills it.
        late = upload(api, Image.new("RGB", (120, 90), (250, 130, 10))).json()["id"]
        assert wait_for_status(api, [late])[late]["status"] == "indexed"
        searchable = {r["id"] for r in api.get("/v1/search", params={"q": "a photo", "k": 10}).json()["results"]}
        assert late in searchable and len(searchable) >= 4  # what moderation lets through, found with the old model
        refused = _cli("models", "activate", new_model)
        assert refused.exit_code == 1 and "1 of 5 indexed photos have no vector" in refused.output, refused.output
        assert _cli("reindex").exit_code == 0
        assert _wait_for_coverage(new_model, 5) == (False, 5, 5)
        listed = _cli("models", "list")
        assert f"inactive  {new_model}@" in listed.output and "covers 5/5" in listed.output, listed.output

        activated = _cli("models", "activate", new_model)
        assert activated.exit_code == 0 and "is now the active model" in activated.output, activated.output
        assert _coverage()[new_model][0] is True and _coverage()[old_model][0] is False

        # A worker still on the old model refuses new uploads instead of indexing them out of search's sight.
        time.sleep(1.0)  # past the worker's cached answer to "which model is active" (WITHSENSE_ACTIVE_MODEL_TTL_S)
        waiting = upload(api, Image.new("RGB", (120, 90), (120, 40, 160))).json()["id"]
        deadline = time.monotonic() + 60
        while api.get(f"/v1/photos/{waiting}").json()["error"] is None and time.monotonic() < deadline:
            time.sleep(0.3)
        body = api.get(f"/v1/photos/{waiting}").json()
        assert body["status"] == "pending" and body["attempts"] == 0, body
        assert "ModelNotActive" in body["error"] and "is not the active model" in body["error"], body
    finally:
        for worker in workers:
            worker.stop()

    # The API still on the old model refuses to rank with it (503 naming both models), and says so in /readyz;
    # `withsense search` on the old model refuses the same way (the same service call).
    reset_cached_state()
    refused_cli = _cli("search", "a red photo")
    assert refused_cli.exit_code == 1, refused_cli.output
    assert "the active model" in refused_cli.output and new_model in refused_cli.output, refused_cli.output
    with TestClient(api.app, headers=dict(api.headers)) as old_api:
        old_api.get("/v1/search", params={"q": "warm up the model"})
        refused_search = old_api.get("/v1/search", params={"q": "a red photo"})
        assert refused_search.status_code == 503, refused_search.text
        assert "the active model" in refused_search.json()["detail"] and new_model in refused_search.json()["detail"]
        assert old_api.post("/v1/embeddings/text", json={"texts": ["a red photo"]}).status_code == 503
        ready = old_api.get("/readyz")
        assert ready.status_code == 503 and "withsense models activate" in ready.json()["checks"]["model"]

    # An API on the new model finds every photo, the late one included.
    os.environ["WITHSENSE_MODEL"] = new_model
    reset_cached_state()
    try:
        with TestClient(api.app, headers=dict(api.headers)) as new_api:
            found = new_api.get("/v1/search", params={"q": "a photo", "k": 10})
            assert found.status_code == 200, found.text
            assert {r["id"] for r in found.json()["results"]} == searchable
            ready = new_api.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["model"] == "ok", ready.text
    finally:
        os.environ["WITHSENSE_MODEL"] = old_model
        reset_cached_state()
