"""The process's long-lived objects: one reset rebuilds them from the environment; wired settings take effect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.pool import QueuePool

from tests.conftest import Services, WorkerProcess, reset_cached_state, upload, wait_for_status


@pytest.fixture()
def restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    reset_cached_state()


def test_one_reset_rebuilds_settings_engine_and_policy_from_the_environment(
    services: Services, restore_environment: None, tmp_path: Path
) -> None:
    from core.policy import get_query_policy
    from core.runtime import runtime
    from core.settings import get_settings
    from db.engine import get_engine

    settings, engine, policy = get_settings(), get_engine(), get_query_policy()
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    with engine.connect():
        pass
    assert pool.checkedin() == 1
    assert get_settings() is settings and get_engine() is engine, "built once per process"

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        'version: "reset-1"\nadult_age: 16\ngroup_age_limit: 18\ngrade_limit: 9\nparadigms: {}\n'
        "languages:\n  en:\n    terms:\n      sprog: [sprog]\nage_patterns: []\n",
        encoding="utf-8",
    )
    os.environ["WITHSENSE_POLICY_FILE"] = str(rules)
    os.environ["WITHSENSE_HNSW_EF_SEARCH"] = "321"
    assert get_query_policy() is policy, "the environment is read once, not on every call"
    runtime.reset()

    assert pool.checkedin() == 0, "the old engine's connections were closed"
    assert get_settings() is not settings and get_settings().hnsw_ef_search == 321
    assert get_engine() is not engine
    assert get_query_policy().version == "reset-1" and get_query_policy().check("a sprog").blocked


def test_public_base_url_names_the_thumbnails(
    api: TestClient, worker: WorkerProcess, clean_db: None, restore_environment: None
) -> None:
    photo_id = upload(api, Image.new("RGB", (64, 48), (200, 40, 40))).json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"
    assert api.get(f"/v1/photos/{photo_id}").json()["thumbnail_url"].startswith("http://testserver/v1/photos/")

    os.environ["WITHSENSE_PUBLIC_BASE_URL"] = "https://photos.example.com/search-api"
    from core.settings import reload_settings

    reload_settings()
    body = api.get(f"/v1/photos/{photo_id}").json()
    assert body["thumbnail_url"] == f"https://photos.example.com/search-api/v1/photos/{photo_id}/thumbnail"
