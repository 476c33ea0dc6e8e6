"""The ONNX Runtime image encoder agrees with torch on the tiny trained CLIP (parity only, no timing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from core.embedding import ClipEmbedder  # noqa: E402
from core.onnx_encoder import (  # noqa: E402
    FP32_FILE, INT8_FILE, PARITY_MIN_COSINE, OnnxExportError, OnnxImageEncoder, _clip_parts, ensure_export,
)
from evaluation.synthetic import generate  # noqa: E402


@pytest.fixture(scope="module")
def embedder(tiny_clip_path: Path) -> ClipEmbedder:
    model = ClipEmbedder(str(tiny_clip_path), device="cpu", image_batch_size=8)
    model.load()
    return model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def images() -> list:  # type: ignore[type-arg]
    # Every colour/shape pair once, in two sizes, so preprocessing (resize + crop) is exercised too.
    return [s.image for s in generate(40, seed=321)] + [s.image for s in generate(8, seed=9, size=(1024, 768))]


@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "int8"])
def test_onnx_embeddings_match_torch(embedder: ClipEmbedder, cache_dir: Path, images: list, quantize: bool) -> None:  # type: ignore[type-arg]
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


def test_onnx_keeps_the_ranking_of_the_trained_model(embedder: ClipEmbedder, cache_dir: Path, images: list) -> None:  # type: ignore[type-arg]
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
    model = embedder._model
    assert model is not None
    first = ensure_export(model, embedder.revision, cache_dir, quantize=True)
    stamp = (first / INT8_FILE).stat().st_mtime_ns
    second = ensure_export(model, embedder.revision, cache_dir, quantize=True)
    assert second == first
    assert (second / INT8_FILE).stat().st_mtime_ns == stamp
    # Another revision of the model is another export.
    other = ensure_export(model, embedder.revision + "-other", cache_dir, quantize=False)
    assert other != first
    assert not list(cache_dir.glob(".clip-vision-*")), "staging folders must not be left behind"


def test_batches_and_empty_input(embedder: ClipEmbedder, cache_dir: Path, images: list) -> None:  # type: ignore[type-arg]
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


def test_a_model_without_a_vision_tower_is_refused() -> None:
    with pytest.raises(OnnxExportError, match="no CLIP vision tower"):
        _clip_parts([object()])  # type: ignore[arg-type]
