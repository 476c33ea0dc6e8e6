"""The ONNX Runtime text encoder (WITHSENSE_TEXT_ENCODER) agrees with torch for each family's text tower, falls back
to torch when its export disagrees, and the API answers the same top results with it (parity and rankings only,
no timing: bench/text_encoder.py measures the speed)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.embedding import ClipEmbedder
from core.onnx_text_encoder import FP32_FILE, INT8_FILE, PARITY_MIN_COSINE, ensure_text_export, export_key
from evaluation.standins.synthetic import SyntheticImage, generate
from evaluation.standins.tiny_clip import save_untrained_tiny_clip
from evaluation.standins.tiny_families import ensure_tiny_model
from evaluation.standins.tiny_multilingual import ensure_tiny_multilingual, heldout_russian_caption
from tests.conftest import MINOR_COLOUR, UNSAFE_COLOUR, environment, upload, wait_for_status
from tests.fixtures_model import TEST_MODEL_CACHE

ENCODERS = [pytest.param("onnx", id="fp32"), pytest.param("onnx-int8", id="int8")]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-text")


@pytest.fixture(scope="module", params=["clip", "siglip", "clip+multilingual"])
def towers(request: pytest.FixtureRequest, tiny_clip_path: Path) -> tuple[str, str | None]:
    """(model, text model) whose query tower is exported: each family's own text tower, and a separate text model."""
    if request.param == "siglip":
        return str(ensure_tiny_model("siglip", TEST_MODEL_CACHE)), None
    if request.param == "clip+multilingual":
        return str(tiny_clip_path), str(ensure_tiny_multilingual(TEST_MODEL_CACHE, tiny_clip_path))
    return str(tiny_clip_path), None


def _held_out(seed: int) -> list[SyntheticImage]:
    chosen: dict[tuple[str, str], SyntheticImage] = {}
    for sample in generate(400, seed, templates="heldout"):
        if sample.colour not in (MINOR_COLOUR, UNSAFE_COLOUR):
            chosen.setdefault((sample.colour, sample.shape), sample)
    return list(chosen.values())


@pytest.mark.parametrize("encoder", ENCODERS)
def test_onnx_text_embeddings_match_torch_and_keep_the_ranking(
    towers: tuple[str, str | None], onnx_cache: Path, encoder: str
) -> None:
    model, text_model = towers
    torch_side = ClipEmbedder(model, text_model=text_model, device="cpu")
    onnx_side = ClipEmbedder(
        model, text_model=text_model, device="cpu", text_encoder=encoder, onnx_cache_dir=onnx_cache
    )
    assert onnx_side.text_encoder == encoder and onnx_side.text_encoder_fallback is None
    assert torch_side.text_encoder == "torch"
    gallery = _held_out(seed=4321)
    captions = [sample.caption for sample in gallery]
    if text_model is not None:
        captions += [heldout_russian_caption(sample, i) for i, sample in enumerate(gallery)]
    captions += ["a red circle " * 40, "?!"]  # cut to the context; punctuation only
    reference, candidate = torch_side.embed_texts(captions), onnx_side.embed_texts(captions)
    assert candidate.shape == reference.shape and candidate.dtype == np.float32
    cosines = np.sum(reference * candidate, axis=1)
    assert cosines.min() >= PARITY_MIN_COSINE, cosines.min()
    if encoder == "onnx":
        assert cosines.min() >= 0.9999, cosines.min()
    # The same images rank first for each caption (the image side is torch in both).
    images = torch_side.embed_images([sample.image for sample in gallery])
    agree = np.mean(np.argmax(reference @ images.T, axis=1) == np.argmax(candidate @ images.T, axis=1))
    assert agree >= 0.95, agree
    # Moderation prompts stay on the image model's own torch tower whatever the text encoder.
    prompts = ["a photo of a child", "a photo of a landscape"]
    np.testing.assert_array_equal(
        onnx_side.embed_image_model_texts(prompts), torch_side.embed_image_model_texts(prompts)
    )
    print(f"{model.rsplit('/', 1)[-1]} text={text_model is not None} {encoder}: min cosine {cosines.min():.5f}")


def test_the_export_is_cached_and_an_export_that_disagrees_falls_back_to_torch(
    tiny_clip_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    embedder = ClipEmbedder(str(tiny_clip_path), device="cpu", text_encoder="onnx-int8", onnx_cache_dir=cache)
    assert embedder.text_encoder == "onnx-int8"
    export = embedder.backend.text_export()
    folder = ensure_text_export(export, embedder.revision, cache, quantize=True)
    assert {path.name for path in folder.glob("*.onnx")} == {FP32_FILE, INT8_FILE}
    stamp = (folder / INT8_FILE).stat().st_mtime_ns
    assert ensure_text_export(export, embedder.revision, cache, quantize=True) == folder  # reused, not redone
    assert (folder / INT8_FILE).stat().st_mtime_ns == stamp

    # A cached export of other weights under this model's key (a stale or damaged cache): parity refuses it and
    # torch embeds the texts, with the reason logged.
    other = ClipEmbedder(str(save_untrained_tiny_clip(tmp_path / "other", seed=3)), device="cpu")
    other_folder = ensure_text_export(
        other.backend.text_export(), other.revision, tmp_path / "other-cache", quantize=True
    )
    shutil.rmtree(folder)
    shutil.copytree(other_folder, folder)
    assert folder.name.endswith(export_key(embedder.revision, export))
    caplog.set_level(logging.WARNING, logger="core.embedding")
    fallen = ClipEmbedder(str(tiny_clip_path), device="cpu", text_encoder="onnx-int8", onnx_cache_dir=cache)
    assert fallen.text_encoder == "torch"
    assert fallen.text_encoder_fallback is not None and "disagrees with torch" in fallen.text_encoder_fallback
    assert "WITHSENSE_TEXT_ENCODER=onnx-int8 is not used" in caplog.text
    plain = ClipEmbedder(str(tiny_clip_path), device="cpu")
    np.testing.assert_array_equal(fallen.embed_texts(["a red circle"]), plain.embed_texts(["a red circle"]))


def test_an_unknown_text_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="text_encoder must be torch, onnx or onnx-int8"):
        ClipEmbedder("m", text_encoder="tensorrt", onnx_cache_dir="/tmp")


def _api_with(admin_key: str, **env: str) -> Iterator[TestClient]:
    from api.app import create_app

    with environment(env), TestClient(create_app(), headers={"Authorization": f"Bearer {admin_key}"}) as client:
        yield client


def _top(client: TestClient, queries: list[str]) -> list[list[str]]:
    tops = []
    for text in queries:
        response = client.get("/v1/search", params={"q": text, "k": 5})
        assert response.status_code == 200, response.text
        tops.append([hit["id"] for hit in response.json()["results"]])
    return tops


@pytest.mark.usefixtures("clean_db", "worker")
@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_api_answers_the_same_top_results_with_onnx_as_with_torch(
    api: TestClient, admin_key: str, tmp_path: Path, encoder: str
) -> None:
    gallery = _held_out(seed=2468)
    ids = [upload(api, sample.image).json()["id"] for sample in gallery]
    assert {body["status"] for body in wait_for_status(api, ids).values()} == {"indexed"}
    queries = [sample.caption for sample in _held_out(seed=97531)]
    with_torch = _top(api, queries)
    for client in _api_with(admin_key, WITHSENSE_TEXT_ENCODER=encoder, WITHSENSE_ONNX_CACHE_DIR=str(tmp_path)):
        with_onnx = _top(client, queries)
        assert client.get("/readyz").status_code == 200
    first = np.mean([a[0] == b[0] for a, b in zip(with_torch, with_onnx, strict=True)])
    same = np.mean([a == b for a, b in zip(with_torch, with_onnx, strict=True)])
    print(f"{encoder}: same first result {first:.2f}, same top 5 in order {same:.2f} over {len(queries)} queries")
    assert first == 1.0
    assert same >= (1.0 if encoder == "onnx" else 0.8)
