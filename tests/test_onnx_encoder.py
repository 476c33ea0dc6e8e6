"""The ONNX Runtime image encoder agrees with torch on the tiny trained CLIP, and WITHSENSE_IMAGE_ENCODER selects it
(parity and ranking only, no timing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from cli.local_services import LocalRedis
from core.embedding import ClipEmbedder, ModelUnavailableError
from core.onnx_encoder import (
    FP32_FILE,
    INT8_FILE,
    PARITY_MIN_COSINE,
    OnnxExportError,
    OnnxImageEncoder,
    ensure_export,
    onnx_clip_parts,
)
from core.settings import Settings
from evaluation.standins.baseline_encoders import build_tiny_text_encoder
from evaluation.standins.synthetic import SyntheticImage, generate
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, Services, WorkerProcess, upload, wait_for_status


@pytest.fixture(scope="module")
def embedder(tiny_clip_path: Path) -> ClipEmbedder:
    model = ClipEmbedder(str(tiny_clip_path), device="cpu", image_batch_size=8)
    model.load()
    return model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    # Every colour/shape pair once, in two sizes, so preprocessing (resize + crop) is exercised too.
    return [s.image for s in generate(40, seed=321)] + [s.image for s in generate(8, seed=9, size=(1024, 768))]


@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "int8"])
def test_onnx_embeddings_match_torch(
    embedder: ClipEmbedder, cache_dir: Path, images: list[Image.Image], quantize: bool
) -> None:
    encoder = OnnxImageEncoder.from_embedder(embedder, cache_dir, quantize=quantize)
    assert encoder.model_path.name == (INT8_FILE if quantize else FP32_FILE)

    reference = embedder.embed_images(images)
    candidate = encoder.embed_images(images)

    assert candidate.shape == reference.shape == (len(images), embedder.dimension)
    assert candidate.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(candidate, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(reference * candidate, axis=1)
    assert cosines.min() >= PARITY_MIN_COSINE, f"worst image cosine {cosines.min():.4f}"
    if not quantize:
        assert cosines.min() >= 0.9999  # fp32 differs from torch only by kernel rounding


def test_onnx_keeps_the_ranking_of_the_trained_model(
    embedder: ClipEmbedder, cache_dir: Path, images: list[Image.Image]
) -> None:
    """Image-to-image neighbours (what search uses) stay the same under int8."""
    encoder = OnnxImageEncoder.from_embedder(embedder, cache_dir, quantize=True)
    reference = embedder.embed_images(images)
    candidate = encoder.embed_images(images)
    ref_scores = reference @ reference.T
    onnx_scores = candidate @ reference.T
    np.fill_diagonal(ref_scores, -np.inf)
    np.fill_diagonal(onnx_scores, -np.inf)
    agreement = np.mean(ref_scores.argmax(axis=1) == onnx_scores.argmax(axis=1))
    assert agreement >= 0.9


def test_export_is_cached_and_reused(embedder: ClipEmbedder, cache_dir: Path) -> None:
    model = embedder.sentence_transformer
    first = ensure_export(model, embedder.revision, cache_dir, quantize=True)
    stamp = (first / INT8_FILE).stat().st_mtime_ns
    second = ensure_export(model, embedder.revision, cache_dir, quantize=True)
    assert second == first
    assert (second / INT8_FILE).stat().st_mtime_ns == stamp
    # Another revision of the model is another export.
    other = ensure_export(model, embedder.revision + "-other", cache_dir, quantize=False)
    assert other != first
    assert not list(cache_dir.glob(".clip-vision-*")), "staging folders must not be left behind"


def test_batches_and_empty_input(embedder: ClipEmbedder, cache_dir: Path, images: list[Image.Image]) -> None:
    encoder = OnnxImageEncoder.from_embedder(embedder, cache_dir, quantize=True)
    assert encoder.embed_images([]).shape[0] == 0
    encoder.batch_size = 3  # several batches plus a remainder give the same rows as one batch
    split = encoder.embed_images(images[:10])
    encoder.batch_size = 64
    whole = encoder.embed_images(images[:10])
    # Dynamic int8 quantisation scales activations per batch, so components move a little with the split;
    # the rows must stay in order and point the same way.
    np.testing.assert_allclose(split, whole, atol=5e-2)
    assert np.sum(split * whole, axis=1).min() >= 0.999


def test_a_model_without_a_vision_tower_is_refused(tmp_path: Path) -> None:
    """A text-only sentence-transformers model (a tiny BERT) has nothing to export: a clear refusal."""
    from sentence_transformers import SentenceTransformer

    folder = build_tiny_text_encoder(tmp_path / "bert")
    with pytest.raises(OnnxExportError, match="no CLIP vision tower"):
        onnx_clip_parts(SentenceTransformer(str(folder), device="cpu"))
    embedder = ClipEmbedder(str(folder), device="cpu", image_encoder="onnx", onnx_cache_dir=tmp_path / "onnx")
    with pytest.raises(ModelUnavailableError, match="WITHSENSE_IMAGE_ENCODER=onnx: no CLIP vision tower"):
        embedder.load()


# Selecting the encoder with WITHSENSE_IMAGE_ENCODER ------------------------------------------------------


@pytest.mark.parametrize("choice", ["onnx", "onnx-int8"])
def test_the_setting_puts_onnx_behind_embed_images(
    tiny_clip_path: Path,
    embedder: ClipEmbedder,
    cache_dir: Path,
    images: list[Image.Image],
    choice: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WITHSENSE_IMAGE_ENCODER", choice)
    monkeypatch.setenv("WITHSENSE_ONNX_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("WITHSENSE_MODEL", str(tiny_clip_path))
    monkeypatch.setenv("WITHSENSE_DEVICE", "cpu")
    fast = ClipEmbedder.from_settings(Settings())
    assert fast.image_encoder == choice
    assert embedder.image_encoder == "torch"

    reference = embedder.embed_images(images)
    candidate = fast.embed_images(images)
    assert candidate.shape == reference.shape
    assert np.sum(reference * candidate, axis=1).min() >= PARITY_MIN_COSINE
    # The worker's path (preprocessing in decode threads, then one ONNX run) gives the same vectors.
    np.testing.assert_allclose(fast.embed_prepared([fast.prepare_image(i) for i in images]), candidate, atol=1e-5)
    # Text never goes through ONNX: the query side is the torch model's, bit for bit.
    captions = ["a red circle", "a blue square on grey"]
    np.testing.assert_array_equal(fast.embed_texts(captions), embedder.embed_texts(captions))


def test_an_unknown_encoder_setting_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WITHSENSE_IMAGE_ENCODER", "tensorrt")
    with pytest.raises(ValidationError, match=r"torch.*onnx.*onnx-int8"):
        Settings()
    with pytest.raises(ValueError, match="image_encoder must be torch, onnx or onnx-int8"):
        ClipEmbedder("clip-ViT-B-32", image_encoder="int4", onnx_cache_dir="/tmp")


@pytest.mark.usefixtures("clean_db")
def test_a_worker_on_onnx_int8_indexes_photos_that_text_search_finds(
    api: TestClient, services: Services, own_broker: LocalRedis, cache_dir: Path
) -> None:
    """Upload -> Redis -> a worker with WITHSENSE_IMAGE_ENCODER=onnx-int8 -> Postgres -> /v1/search."""

    def one_per_concept(seed: int) -> dict[tuple[str, str], SyntheticImage]:
        chosen: dict[tuple[str, str], SyntheticImage] = {}
        for sample in generate(600, seed, templates="heldout"):
            if sample.colour not in (MINOR_COLOUR, UNSAFE_COLOUR):
                chosen.setdefault((sample.colour, sample.shape), sample)
        return chosen

    gallery, queries = one_per_concept(4242), one_per_concept(2424)
    # Its own broker (own_broker), so the session's torch worker never takes these uploads.
    worker = WorkerProcess(
        services.home, extra_env={"WITHSENSE_IMAGE_ENCODER": "onnx-int8", "WITHSENSE_ONNX_CACHE_DIR": str(cache_dir)}
    )
    worker.start()
    try:
        ids = {}
        for concept, sample in gallery.items():
            response = upload(api, sample.image)
            assert response.status_code == 202, response.text
            ids[response.json()["id"]] = concept
        final = wait_for_status(api, list(ids))
        assert all(body["status"] == "indexed" for body in final.values()), [b["error"] for b in final.values()]
        assert "image encoder onnx-int8" in worker.log_path.read_text(), worker.log()
    finally:
        worker.stop()

    hits = 0
    for concept, query in queries.items():
        body = api.get("/v1/search", params={"q": query.caption, "k": 5}).json()
        hits += concept in [ids[r["id"]] for r in body["results"]]
    assert hits / len(queries) >= 0.6, f"Recall@5 {hits}/{len(queries)} through the int8 worker"
