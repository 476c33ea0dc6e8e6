"""The embedding model wrapper, the tiny CLIP that stands in for ViT-B/32, and the synthetic data.

Everything here runs the real code path: sentence-transformers loading a saved folder,
transformers' CLIP, the model's own processor. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.clip_parts import clip_parts, square_input_shortcut
from core.embedding import ClipEmbedder, ModelUnavailableError, TextModelRefused, folder_content_hash, get_embedder
from evaluation.standins import synthetic
from evaluation.standins.tiny_clip import (
    MARKER_FILE,
    clip_tokenizer,
    ensure_tiny_clip,
    heldout_recall,
    save_random_clip,
    save_untrained_tiny_clip,
    tiny_clip_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def untrained_clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_tiny_clip(tmp_path_factory.mktemp("untrained") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_clip_path: Path) -> ClipEmbedder:
    return ClipEmbedder(str(tiny_clip_path), device="cpu")


# The tokenizer --------------------------------------------------------------------------------


def test_tokenizer_gives_openai_clip_ids() -> None:
    tokenizer = clip_tokenizer()
    # Ids from OpenAI's clip.tokenize("a photo of a cat").
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a dog")["input_ids"] == [49406, 320, 1929, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    # CLIP lower-cases and splits punctuation off words.
    assert tokenizer("A Photo of a CAT")["input_ids"] == tokenizer("a photo of a cat")["input_ids"]
    assert tokenizer.decode(tokenizer("a red circle!")["input_ids"], skip_special_tokens=True) == "a red circle !"


def test_tokenizer_truncates_to_clip_context() -> None:
    ids = clip_tokenizer()("word " * 200, truncation=True)["input_ids"]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


# Loading through sentence-transformers --------------------------------------------------------


def test_tiny_model_folder_uses_the_transformer_module(tiny_clip_path: Path) -> None:
    modules = json.loads((tiny_clip_path / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.base.modules.transformer.Transformer"]
    config = json.loads((tiny_clip_path / "sentence_bert_config.json").read_text())
    assert config["modality_config"]["image"]["method"] == "get_image_features"
    assert config["modality_config"]["text"]["method"] == "get_text_features"
    # The model's own preprocessing travels with it.
    assert (tiny_clip_path / "processor_config.json").is_file()


def test_constructing_loads_nothing(tiny_clip_path: Path) -> None:
    embedder = ClipEmbedder(str(tiny_clip_path), device="cpu")
    assert not embedder.is_loaded
    assert embedder.model_name == str(tiny_clip_path)
    assert not embedder.is_loaded


def test_dimension_comes_from_the_model(tiny: ClipEmbedder) -> None:
    assert tiny.dimension == tiny_clip_config().projection_dim == 64
    assert tiny.is_loaded


def test_revision_is_a_stable_content_hash(tiny_clip_path: Path, tiny: ClipEmbedder, tmp_path: Path) -> None:
    assert tiny.revision.startswith("sha256:")
    assert ClipEmbedder(str(tiny_clip_path)).revision == tiny.revision
    # Another process computes the same value.
    script = (
        "import sys, pathlib; from core.embedding import folder_content_hash as h; print(h(pathlib.Path(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny_clip_path)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == tiny.revision
    # Changed weights, changed revision; the marker file and README do not count.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tiny_clip_path.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    assert folder_content_hash(copy) == tiny.revision
    (copy / "README.md").write_text("edited")
    (copy / MARKER_FILE).write_text("{}")
    assert folder_content_hash(copy) == tiny.revision
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert folder_content_hash(copy) != tiny.revision


def _legacy_layout(tiny_clip_path: Path, tmp_path: Path) -> Path:
    """The layout of the hub repo sentence-transformers/clip-ViT-B-32: one deprecated
    ``sentence_transformers.models.CLIPModel`` module in ``0_CLIPModel/``."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    legacy = tmp_path / "clip-legacy"
    module_dir = legacy / "0_CLIPModel"
    CLIPModel.from_pretrained(tiny_clip_path).save_pretrained(module_dir)
    CLIPImageProcessor.from_pretrained(tiny_clip_path).save_pretrained(module_dir)
    AutoTokenizer.from_pretrained(tiny_clip_path).save_pretrained(module_dir)
    modules = [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]
    (legacy / "modules.json").write_text(json.dumps(modules))
    return legacy


def test_legacy_clip_model_layout_still_loads(tiny_clip_path: Path, tiny: ClipEmbedder, tmp_path: Path) -> None:
    """The layout of the hub repo sentence-transformers/clip-ViT-B-32: one deprecated
    ``sentence_transformers.models.CLIPModel`` module in ``0_CLIPModel/``."""
    legacy = _legacy_layout(tiny_clip_path, tmp_path)

    old = ClipEmbedder(str(legacy), device="cpu")
    items = synthetic.generate(4, seed=3)
    assert old.dimension == tiny.dimension
    np.testing.assert_allclose(
        old.embed_images([i.image for i in items]), tiny.embed_images([i.image for i in items]), atol=1e-5
    )
    np.testing.assert_allclose(
        old.embed_texts([i.caption for i in items]), tiny.embed_texts([i.caption for i in items]), atol=1e-5
    )


def test_random_vit_b32_is_saved_the_same_way(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPVisionConfig

    # The default config is ViT-B/32 (512-d); a narrow twin keeps the test fast.
    default = CLIPConfig()
    assert isinstance(default.vision_config, CLIPVisionConfig)
    assert (default.projection_dim, default.vision_config.patch_size, default.vision_config.image_size) == (
        512,
        32,
        224,
    )
    narrow = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=48,
    )
    folder = save_random_clip(tmp_path / "random", narrow)
    embedder = ClipEmbedder(str(folder), device="cpu")
    assert embedder.dimension == 48
    vectors = embedder.embed_images([synthetic.generate(1, seed=0)[0].image])
    assert vectors.shape == (1, 48)


# Embeddings ----------------------------------------------------------------------------------


def test_embeddings_are_unit_float32_rows(tiny: ClipEmbedder) -> None:
    items = synthetic.generate(5, seed=11)
    images = tiny.embed_images([item.image for item in items])
    texts = tiny.embed_texts([item.caption for item in items])
    for vectors in (images, texts):
        assert vectors.dtype == np.float32 and vectors.shape == (5, tiny.dimension)
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batching_keeps_order_and_values(tiny_clip_path: Path, tiny: ClipEmbedder) -> None:
    items = synthetic.generate(7, seed=12)
    captions = [item.caption for item in items] + ["a much longer caption " * 5]
    small_batches = ClipEmbedder(str(tiny_clip_path), device="cpu", image_batch_size=2, text_batch_size=3)
    np.testing.assert_allclose(
        small_batches.embed_images([i.image for i in items]), tiny.embed_images([i.image for i in items]), atol=1e-5
    )
    np.testing.assert_allclose(small_batches.embed_texts(captions), tiny.embed_texts(captions), atol=1e-5)
    one_by_one = np.vstack([tiny.embed_texts([caption]) for caption in captions])
    np.testing.assert_allclose(tiny.embed_texts(captions), one_by_one, atol=1e-5)


def test_prepared_images_embed_exactly_like_whole_images(tiny_clip_path: Path, tiny: ClipEmbedder) -> None:
    """The worker's split path (preprocess in decode threads, forward in one batch) is embed_images, in pieces."""
    items = synthetic.generate(9, seed=21, size=(300, 200))
    pictures = [item.image for item in items] + [items[0].image.convert("L"), items[1].image.convert("RGBA")]
    with ThreadPoolExecutor(3) as pool:
        prepared = list(pool.map(tiny.prepare_image, pictures))
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float32 and p.ndim == 3 for p in prepared)
    np.testing.assert_allclose(tiny.embed_prepared(prepared), tiny.embed_images(pictures), atol=1e-5)
    small_batches = ClipEmbedder(str(tiny_clip_path), device="cpu", image_batch_size=4)
    np.testing.assert_allclose(small_batches.embed_prepared(prepared), tiny.embed_images(pictures), atol=1e-5)
    assert tiny.embed_prepared([]).shape == (0, tiny.dimension)


def test_images_already_at_the_model_input_size_skip_only_no_op_steps(tiny: ClipEmbedder) -> None:
    """The worker's 224x224 derivatives take a shortcut (rescale + normalise only): same pixels as the processor."""
    from core.images import make_derivative

    processor = clip_parts(tiny.sentence_transformer).image_processor
    square = square_input_shortcut(processor)
    assert square is not None, "the tiny CLIP's processor is CLIP's standard resize + centre crop"
    side = square.size[0]
    derivatives = [make_derivative(item.image, side) for item in synthetic.generate(6, seed=8, size=(640, 480))]
    expected = processor(images=derivatives, return_tensors="np")["pixel_values"]
    shortcut = np.stack([square.pixel_values(image) for image in derivatives])
    np.testing.assert_allclose(shortcut, expected, atol=1e-5)
    prepared = [tiny.prepare_image(image) for image in derivatives]
    np.testing.assert_allclose(np.stack([p for p in prepared if isinstance(p, np.ndarray)]), expected, atol=1e-5)
    # Any other size goes through the processor itself (resize and crop are real steps there).
    other = [make_derivative(item.image, side + 3) for item in synthetic.generate(2, seed=9)]
    np.testing.assert_allclose(
        np.stack([p for p in map(tiny.prepare_image, other) if isinstance(p, np.ndarray)]),
        processor(images=other, return_tensors="np")["pixel_values"],
        atol=1e-5,
    )


def test_prepared_path_works_for_the_legacy_layout_too(
    tiny_clip_path: Path, tiny: ClipEmbedder, tmp_path: Path
) -> None:
    legacy = _legacy_layout(tiny_clip_path, tmp_path)
    old = ClipEmbedder(str(legacy), device="cpu")
    pictures = [item.image for item in synthetic.generate(3, seed=5)]
    np.testing.assert_allclose(
        old.embed_prepared([old.prepare_image(p) for p in pictures]), tiny.embed_images(pictures), atol=1e-5
    )


def test_odd_inputs(tiny: ClipEmbedder) -> None:
    assert tiny.embed_images([]).shape == (0, tiny.dimension)
    assert tiny.embed_texts([]).shape == (0, tiny.dimension)
    base = synthetic.generate(1, seed=13)[0].image
    odd_modes = [base.convert("L"), base.convert("RGBA"), base.convert("P"), Image.new("RGB", (7, 5000), "red")]
    vectors = tiny.embed_images(odd_modes)
    assert vectors.shape == (4, tiny.dimension) and np.isfinite(vectors).all()
    # Longer than CLIP's 77-token context: truncated, not an error.
    assert np.isfinite(tiny.embed_texts(["red " * 300, "", "собака бежит по траве"])).all()
    with pytest.raises(TypeError):
        tiny.embed_texts("a red circle")


def test_images_and_texts_share_one_space(tiny: ClipEmbedder) -> None:
    items = synthetic.generate(40, seed=21, templates="heldout")
    scores = tiny.embed_texts([i.caption for i in items]) @ tiny.embed_images([i.image for i in items]).T
    matched = np.diag(scores)
    unmatched = scores[~np.eye(len(items), dtype=bool)]
    assert matched.mean() > 0.6
    assert matched.mean() - unmatched.mean() > 0.4


def test_a_red_circle_finds_red_circles(tiny: ClipEmbedder) -> None:
    gallery = synthetic.generate(80, seed=22)
    images = tiny.embed_images([i.image for i in gallery])
    query = tiny.embed_texts(["a photo of a red circle"])[0]
    top = np.argsort(-(images @ query))[:2]
    # The gallery holds exactly two red circles (80 = 2 x every pair).
    assert [(gallery[i].colour, gallery[i].shape) for i in top] == [("red", "circle")] * 2


def test_colour_only_and_shape_only_prompts(tiny: ClipEmbedder) -> None:
    """Prompts that name one attribute (as moderation prompts and many queries do) mean that attribute."""
    gallery = synthetic.generate(80, seed=23)
    images = tiny.embed_images([i.image for i in gallery])

    def top(query: str, k: int) -> list[synthetic.SyntheticImage]:
        return [gallery[i] for i in np.argsort(-(images @ tiny.embed_texts([query])[0]))[:k]]

    # 80 = 2 x every pair: 10 pictures of each colour, 16 of each shape.
    assert [i.colour for i in top("a yellow shape", 10)] == ["yellow"] * 10
    assert sum(i.shape == "star" for i in top("a photo of a star", 16)) >= 12


def test_heldout_recall_beats_chance_and_untrained_does_not(
    tiny_clip_path: Path,
    untrained_clip_path: Path,
) -> None:
    trained = heldout_recall(tiny_clip_path)
    untrained = heldout_recall(untrained_clip_path)
    assert trained.gallery_size == 40
    assert trained.recall_at_5 >= 0.8
    assert trained.recall_at_1 >= 0.6
    # Same architecture, same preprocessing, random weights: chance level (5/40 at k=5).
    assert untrained.recall_at_5 <= 0.4
    assert untrained.recall_at_1 <= 0.2


# Text model ----------------------------------------------------------------------------------


def test_text_model_replaces_clip_text_tower(
    tiny_clip_path: Path,
    untrained_clip_path: Path,
    tiny: ClipEmbedder,
) -> None:
    # The untrained tower is from another space: the start-up check (tests/test_multilingual.py) is switched off
    # here, so that what is checked is only which tower embeds which input.
    both = ClipEmbedder(str(tiny_clip_path), text_model=str(untrained_clip_path), device="cpu", text_min_margin=-2.0)
    untrained = ClipEmbedder(str(untrained_clip_path), device="cpu")
    captions = ["a red circle", "a blue star"]
    np.testing.assert_allclose(both.embed_texts(captions), untrained.embed_texts(captions), atol=1e-5)
    image = synthetic.generate(1, seed=0)[0].image
    np.testing.assert_allclose(both.embed_images([image]), tiny.embed_images([image]), atol=1e-5)
    assert both.revision == tiny.revision  # stored image vectors are keyed by the image model


def test_text_model_of_another_dimension_is_refused(tiny_clip_path: Path, tmp_path: Path) -> None:
    from transformers import CLIPConfig

    other = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )
    folder = save_random_clip(tmp_path / "other", other)
    embedder = ClipEmbedder(str(tiny_clip_path), text_model=str(folder), device="cpu")
    embedder.load()  # the image model serves pictures; only texts are refused
    assert embedder.text_model_refusal is not None and "16-d vectors" in embedder.text_model_refusal
    with pytest.raises(TextModelRefused, match="is not in the embedding space of"):
        embedder.embed_texts(["a red circle"])
    assert embedder.embed_images([synthetic.generate(1, seed=0)[0].image]).shape == (1, embedder.dimension)


# Missing models ------------------------------------------------------------------------------


def test_missing_hub_model_says_how_to_use_a_local_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("SENTENCE_TRANSFORMERS_HOME", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE when imported, so a fresh interpreter sees the variable.
    script = (
        "from core.embedding import ClipEmbedder, ModelUnavailableError\n"
        "try:\n"
        "    ClipEmbedder('clip-ViT-B-32').load()\n"
        "except ModelUnavailableError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    raise SystemExit('loaded without a model')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the return code is asserted with the output as the message
    )
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout
    assert "Could not load clip-ViT-B-32 from the Hugging Face hub (offline?)" in message
    assert 'SentenceTransformer("clip-ViT-B-32").save("/path/to/folder")' in message
    assert "huggingface-cli download sentence-transformers/clip-ViT-B-32" in message
    assert "WITHSENSE_MODEL=/path/to/folder" in message


def test_missing_local_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelUnavailableError, match="no-such-model") as caught:
        ClipEmbedder(str(missing)).load()
    assert "WITHSENSE_MODEL" in str(caught.value)


def test_missing_text_model_names_its_setting(tiny_clip_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="WITHSENSE_TEXT_MODEL"):
        ClipEmbedder(str(tiny_clip_path), text_model=str(tmp_path / "absent")).load()


# Settings, singleton, threads ----------------------------------------------------------------


def test_from_settings_and_lazy_singleton(monkeypatch: pytest.MonkeyPatch, tiny_clip_path: Path) -> None:
    from core.runtime import runtime
    from core.settings import Settings

    monkeypatch.setenv("WITHSENSE_MODEL", str(tiny_clip_path))
    monkeypatch.setenv("WITHSENSE_DEVICE", "cpu")
    monkeypatch.setenv("WITHSENSE_IMAGE_BATCH_SIZE", "3")
    configured = ClipEmbedder.from_settings(Settings())
    assert configured.model_name == str(tiny_clip_path) and configured.image_batch_size == 3

    runtime.reset()  # settings read again, the process's embedder forgotten
    try:
        first = get_embedder()
        assert first is get_embedder()
        assert not first.is_loaded  # created lazily, loaded only on first use
        assert first.embed_texts(["a red circle"]).shape == (1, 64)
    finally:
        runtime.reset()


def test_load_runs_once_across_threads(monkeypatch: pytest.MonkeyPatch, tiny_clip_path: Path) -> None:
    calls: list[str] = []
    real_load_one = ClipEmbedder._load_one

    def counting_load_one(self: ClipEmbedder, *args: object, **kwargs: object) -> object:
        calls.append(str(args[0]))
        return real_load_one(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ClipEmbedder, "_load_one", counting_load_one)
    embedder = ClipEmbedder(str(tiny_clip_path), device="cpu")
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(embedder.embed_texts(["a green star"]))
        except BaseException as error:  # noqa: BLE001  (re-raised below in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert calls == [str(tiny_clip_path)]
    assert all(np.allclose(r, results[0], atol=1e-6) for r in results)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ClipEmbedder("clip-ViT-B-32", device="tpu")
    with pytest.raises(ValueError):
        ClipEmbedder("clip-ViT-B-32", image_batch_size=0)


# The tiny model cache ------------------------------------------------------------------------


def test_ensure_tiny_clip_builds_once_and_deterministically(tmp_path: Path) -> None:
    first = ensure_tiny_clip(tmp_path / "cache", steps=3, seed=1)
    assert (first / MARKER_FILE).is_file() and (first / "modules.json").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_clip(tmp_path / "cache", steps=3, seed=1) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other_seed = ensure_tiny_clip(tmp_path / "cache", steps=3, seed=2)
    assert other_seed != first
    # Nothing half-built is left beside the models.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.name, other_seed.name])
    # The same seed elsewhere gives the same weights; another seed does not.
    again = ensure_tiny_clip(tmp_path / "elsewhere", steps=3, seed=1)
    assert folder_content_hash(again) == folder_content_hash(first) != folder_content_hash(other_seed)


# Synthetic data ------------------------------------------------------------------------------


def test_synthetic_images_are_deterministic_and_prefix_stable() -> None:
    a = synthetic.generate(12, seed=4)
    b = synthetic.generate(6, seed=4)
    for x, y in zip(a, b, strict=False):
        assert (x.colour, x.shape, x.caption) == (y.colour, y.shape, y.caption)
        assert x.image.tobytes() == y.image.tobytes()
    assert synthetic.generate(1, seed=5)[0].image.tobytes() != a[0].image.tobytes()


def test_synthetic_gallery_covers_every_pair_once() -> None:
    items = synthetic.generate(len(synthetic.combinations()), seed=9, size=(640, 480))
    assert {(i.colour, i.shape) for i in items} == set(synthetic.combinations())
    assert len(synthetic.COLOURS) >= 6 and len(synthetic.SHAPES) >= 4
    assert all(i.image.size == (640, 480) and i.image.mode == "RGB" for i in items)


def test_heldout_templates_never_appear_in_training() -> None:
    assert not set(synthetic.TRAIN_TEMPLATES) & set(synthetic.HELDOUT_TEMPLATES)
    for which, templates in (("train", synthetic.TRAIN_TEMPLATES), ("heldout", synthetic.HELDOUT_TEMPLATES)):
        for item in synthetic.generate(30, seed=6, templates=which):  # type: ignore[arg-type]
            assert item.colour in item.caption and item.shape in item.caption
            assert any(
                synthetic.make_caption(t, item.colour, item.shape, item.background) == item.caption for t in templates
            )
    assert synthetic.make_caption("{a} {colour} {shape}", "orange", "star") == "an orange star"
