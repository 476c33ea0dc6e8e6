"""A separate text model's start-up check, recorded with the model version it was checked against (issue 14).

Real Postgres, Redis and Celery worker (tests/conftest.py), the real API in-process. The text model that passes is
the tiny multilingual tower distilled from the tiny CLIP (tests/test_multilingual.py); the foreign one is a tiny
CLIP of another seed: same architecture and dimension, another space.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner, Result

from evaluation.standins.synthetic import generate
from evaluation.standins.tiny_clip import save_untrained_tiny_clip
from evaluation.standins.tiny_multilingual import ensure_tiny_multilingual
from tests.conftest import Services, environment, reset_cached_state, upload, wait_for_status
from tests.fixtures_model import TEST_MODEL_CACHE
from tests.images import jpeg_bytes

pytestmark = pytest.mark.usefixtures("clean_db", "worker")


@pytest.fixture(scope="session")
def tiny_multilingual_path(tiny_clip_path: Path) -> Path:
    return ensure_tiny_multilingual(TEST_MODEL_CACHE, tiny_clip_path)


@pytest.fixture()
def restore_active_model(services: Services) -> Iterator[None]:
    """Later tests search with the tiny model: make its row active again whatever this test did."""
    yield
    from db import photos as photo_sql
    from db.engine import session_scope

    with session_scope() as session:
        photo_sql.activate_model(session, photo_sql.find_model(session, os.environ["WITHSENSE_MODEL"]))
    reset_cached_state()


def _api_with(admin_key: str, **env: str) -> Iterator[TestClient]:
    """A fresh API (its own model loader, caches) under these WITHSENSE_* settings, restored afterwards."""
    from api.app import create_app

    with environment(env), TestClient(create_app(), headers={"Authorization": f"Bearer {admin_key}"}) as client:
        yield client


def _records() -> dict[str, list[tuple[str, str, float, float, int]]]:
    """Each registered model version's recorded text models: (name, revision, margin, min_margin, probes)."""
    from sqlalchemy import select

    from db.engine import session_scope
    from db.models import EmbeddingModel, EmbeddingTextModel

    with session_scope() as session:
        rows = session.execute(
            select(EmbeddingModel.revision, EmbeddingTextModel).outerjoin(
                EmbeddingTextModel, EmbeddingTextModel.model_id == EmbeddingModel.id
            )
        ).all()
        found: dict[str, list[tuple[str, str, float, float, int]]] = {}
        for revision, record in rows:
            entries = found.setdefault(revision, [])
            if record is not None:
                entries.append((record.name, record.revision, record.margin, record.min_margin, record.probes))
        return found


def _forget_records(revision: str) -> None:
    """Drop the text-model records of one model version (rows of this session's earlier tests)."""
    from sqlalchemy import delete, select

    from db.engine import session_scope
    from db.models import EmbeddingModel, EmbeddingTextModel

    with session_scope() as session:
        ids = select(EmbeddingModel.id).where(EmbeddingModel.revision == revision).scalar_subquery()
        session.execute(delete(EmbeddingTextModel).where(EmbeddingTextModel.model_id.in_(ids)))


def _cli(*args: str) -> Result:
    from cli.main import app

    return CliRunner().invoke(app, list(args))


def _revision_of(folder: Path) -> str:
    from core.embedding import folder_content_hash

    return folder_content_hash(folder)


def _index_one(api: TestClient, seed: int) -> str:
    photo_id = upload(api, generate(1, seed)[0].image).json()["id"]
    assert wait_for_status(api, [photo_id])[photo_id]["status"] == "indexed"
    return photo_id


def test_a_text_model_that_passes_is_recorded_and_one_from_another_space_refuses_text_search(
    api: TestClient, admin_key: str, tiny_clip_path: Path, tiny_multilingual_path: Path, tmp_path: Path
) -> None:
    photo_id = _index_one(api, seed=5)  # the worker registers the tiny model's version
    version = _revision_of(tiny_clip_path)
    multilingual = (str(tiny_multilingual_path), _revision_of(tiny_multilingual_path))
    _forget_records(version)  # an earlier test's API may have recorded it already: start from none
    assert all(entry[:2] != multilingual for entry in _records()[version])

    for client in _api_with(admin_key, WITHSENSE_TEXT_MODEL=str(tiny_multilingual_path)):
        assert client.get("/v1/search", params={"q": "a red circle"}).status_code == 200
        assert client.get("/readyz").status_code == 200
    recorded = {entry[:2]: entry for entry in _records()[version]}
    assert multilingual in recorded, recorded
    name, revision, margin, min_margin, probes = recorded[multilingual]
    assert margin >= min_margin == pytest.approx(0.2) and probes >= 12
    listing = _cli("models", "list")
    assert listing.exit_code == 0, listing.output
    line = next(line for line in listing.output.splitlines() if version in line and line.startswith("active"))
    assert f"text model: {name}@{revision} (margin {margin:.2f})" in line, line

    foreign = save_untrained_tiny_clip(tmp_path / "foreign", seed=1)
    probe = ("probe.jpg", jpeg_bytes(generate(1, 5)[0].image), "image/jpeg")
    for client in _api_with(admin_key, WITHSENSE_TEXT_MODEL=str(foreign)):
        refused = client.get("/v1/search", params={"q": "a red circle"})
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "text search is unavailable" in detail and "probe agreement margin" in detail, detail
        assert f"recorded for this model version: {name}@{revision}" in detail, detail
        assert refused.headers["Retry-After"] == "300"
        assert client.post("/v1/embeddings/text", json={"texts": ["a red circle"]}).status_code == 503
        # Pictures need no text model: image search still answers, with the photo first.
        by_image = client.post("/v1/search/image", files={"file": probe}, params={"k": 5})
        assert by_image.status_code == 200, by_image.text
        assert by_image.json()["results"][0]["id"] == photo_id
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "not in the embedding space" in ready.text, ready.text
    assert all(entry[0] != str(foreign) for entry in _records()[version])  # a refused text model is never recorded


def _another_version(tiny_clip_path: Path, destination: Path) -> Path:
    """The tiny CLIP with a slightly moved text projection: a new model version in (almost) the same space."""
    shutil.copytree(tiny_clip_path, destination)
    weights = load_file(destination / "model.safetensors")
    generator = torch.Generator().manual_seed(1407)  # not another test's "new version" (same files, same revision)
    name = next(n for n, t in weights.items() if n.endswith("text_projection.weight"))
    weights[name] = weights[name] + 1e-3 * torch.randn(weights[name].shape, generator=generator)
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def _register_as_worker(model: Path, text_model: Path) -> None:
    """What a reindex worker on `model` with WITHSENSE_TEXT_MODEL does first: register its version (and record
    its text model's passed check), through the worker's own code."""
    from services.indexing import registered_model

    with environment({"WITHSENSE_MODEL": str(model), "WITHSENSE_TEXT_MODEL": str(text_model)}):
        registered_model()


def test_a_model_switch_keeps_each_versions_text_models(
    api: TestClient,
    admin_key: str,
    tiny_clip_path: Path,
    tiny_multilingual_path: Path,
    tmp_path: Path,
    restore_active_model: None,
) -> None:
    _index_one(api, seed=6)
    old = _revision_of(tiny_clip_path)
    multilingual = (str(tiny_multilingual_path), _revision_of(tiny_multilingual_path))
    _register_as_worker(tiny_clip_path, tiny_multilingual_path)  # the worker path records it too
    assert multilingual in [entry[:2] for entry in _records()[old]]

    # A new version in the same space: its reindex worker's check passes, and is recorded with the new version.
    upgraded = _another_version(tiny_clip_path, tmp_path / "upgraded")
    _register_as_worker(upgraded, tiny_multilingual_path)
    new = _revision_of(upgraded)
    assert [entry[:2] for entry in _records()[new]] == [multilingual]

    # A version from another space (another seed): the same text model fails there, and nothing is recorded.
    elsewhere = save_untrained_tiny_clip(tmp_path / "elsewhere", seed=2)
    _register_as_worker(elsewhere, tiny_multilingual_path)
    assert _records()[_revision_of(elsewhere)] == []

    switched = _cli("models", "activate", str(upgraded), "--force")
    assert switched.exit_code == 0, switched.output
    assert f"text models recorded for it: {multilingual[0]}@{multilingual[1]}" in switched.output, switched.output
    listing = _cli("models", "list").output
    lines = {rev: next(line for line in listing.splitlines() if f"@{rev} " in line) for rev in (old, new)}
    assert lines[new].startswith("active") and lines[old].startswith("inactive"), listing
    for revision in (old, new):  # each version keeps its own record through the switch
        assert f"text model: {multilingual[0]}@{multilingual[1]}" in lines[revision], listing
    assert "text model: own tower" in next(line for line in listing.splitlines() if _revision_of(elsewhere) in line)

    # An API on the new version with a foreign text model is refused, naming what the new version recorded.
    foreign = save_untrained_tiny_clip(tmp_path / "foreign", seed=1)
    for client in _api_with(admin_key, WITHSENSE_MODEL=str(upgraded), WITHSENSE_TEXT_MODEL=str(foreign)):
        refused = client.get("/v1/search", params={"q": "a red circle"})
        assert refused.status_code == 503, refused.text
        assert f"recorded for this model version: {multilingual[0]}@{multilingual[1]}" in refused.json()["detail"]
    # On the version from another space the multilingual model is refused, and the message says none is recorded.
    switched = _cli("models", "activate", str(elsewhere), "--force")
    assert switched.exit_code == 0 and "no text model is recorded for it yet" in switched.output, switched.output
    settings = {"WITHSENSE_MODEL": str(elsewhere), "WITHSENSE_TEXT_MODEL": str(tiny_multilingual_path)}
    for client in _api_with(admin_key, **settings):
        refused = client.get("/v1/search", params={"q": "a red circle"})
        assert refused.status_code == 503 and "no text model is recorded for this model version yet" in refused.text
