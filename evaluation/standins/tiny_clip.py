"""Stand-in CLIP models for tests and benchmarks, built here because no model hub is reachable.

- :func:`build_tiny_clip` trains a small transformers ``CLIPModel`` for about a minute on the CPU,
  on :mod:`evaluation.standins.synthetic` images with training captions only (never ``HELDOUT_TEMPLATES``),
  and saves it as a sentence-transformers folder that :class:`core.embedding.ClipEmbedder` loads exactly as it loads
  ``clip-ViT-B-32`` for users. Being trained, its rankings mean something: "a red circle" finds
  red circles, also when worded with held-out templates.
- :func:`save_random_clip` saves the real ViT-B/32 architecture with random weights, for speed
  benchmarks (speed does not depend on the weights).
- :func:`clip_tokenizer` is OpenAI's CLIP BPE tokenizer, rebuilt from the merges file that
  ``open_clip`` ships.

``python -m evaluation.standins.tiny_clip [--seconds 60] [--seed 0]`` builds a model and prints its
held-out Recall@1/@5 next to an untrained model's and chance.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

# transformers 5 exports CLIPTokenizerFast lazily (an alias of CLIPTokenizer) and leaves it out of the names its
# type information declares; it is kept because transformers 4's CLIPTokenizer is the slow one, which takes files.
from transformers import (  # type: ignore[attr-defined]
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
    CLIPVisionConfig,
)

from evaluation.standins import synthetic

logger = logging.getLogger(__name__)

# Bump whenever training, data or the saved layout changes: cached tiny models are then rebuilt.
TINY_CLIP_VERSION = 1
MARKER_FILE = ".withsense-tiny-clip.json"
# Hidden, like the marker, so that neither counts in the folder's content hash (its revision).
TRAINING_REPORT_FILE = ".training.json"

CONTEXT_LENGTH = 77  # OpenAI CLIP's text context
# 32x32 pictures cut into 4x4 patches of 8 pixels: a small ViT learns shapes far faster on a
# coarse grid (a supervised probe: 0.86 shape accuracy after 400 steps, 0.41 at 48x48).
TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8
TRAIN_RENDER_SIZES = ((86, 64), (160, 120))  # smaller than test pictures, to render fast
# Training steps per nominal second: the default 60 s makes 900 steps (one thread), which took
# 71 s on a quiet moment of the shared 2-core build machine (12.7 steps/s) and up to 4 minutes
# while other jobs ran there. 600 steps gave held-out R@1 0.70-0.78 against 0.97-1.0 for 900.
NOMINAL_STEPS_PER_SECOND = 15.0
# Share of training captions that name only the colour or only the shape.
PARTIAL_CAPTION_SHARE = 0.25


@lru_cache(maxsize=1)
def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocabulary and merges, built the way ``clip/simple_tokenizer.py`` builds them."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; it ships CLIP's BPE merges file")
    # Located, not imported: importing open_clip needs torchvision, which this project does not install.
    merges_path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(merges_path) as merges_file:
        lines = merges_file.read().decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP keeps the first 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, [(a, b) for a, b in merges]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def clip_tokenizer() -> CLIPTokenizerFast:
    """OpenAI CLIP's BPE tokenizer (49408 tokens, context 77), rebuilt offline from open_clip's merges."""
    vocab, merges = _bpe_vocab_and_merges()
    return CLIPTokenizerFast(vocab=dict(vocab), merges=list(merges), model_max_length=CONTEXT_LENGTH)


def tiny_clip_config() -> CLIPConfig:
    """A CLIP small enough to train in a minute on two CPU cores, with CLIP's real vocabulary."""
    vocab, _ = _bpe_vocab_and_merges()
    return CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": CONTEXT_LENGTH,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 384,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
        },
        projection_dim=64,
    )


def clip_processor(image_size: int = 224) -> CLIPProcessor:
    """CLIP's processor: the BPE tokenizer plus CLIP's image preprocessing at ``image_size``.

    Resize the short side, then centre-crop, with the normalisation constants that
    ``CLIPImageProcessor`` itself defaults to (OpenAI's): nothing copied by hand.
    """
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())


def save_sentence_transformer(model: CLIPModel, processor: CLIPProcessor, out_dir: Path) -> Path:
    """Save a transformers CLIP as a sentence-transformers folder, the layout ST 6 itself writes.

    The folder holds the Hugging Face files (config, weights, tokenizer, processor config) at its
    root and a ``modules.json`` with one ``sentence_transformers.base.modules.transformer.Transformer``
    module, which routes text to ``get_text_features`` and images to ``get_image_features`` (the
    successor of the deprecated ``sentence_transformers.models.CLIPModel`` module).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="hf-clip-") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        st_model = SentenceTransformer(modules=[Transformer(staging)], device="cpu")
        st_model.save(str(out_dir))
    # The weights are written owner-only (0600); a service running as another user (a container,
    # say) must still be able to read the folder.
    for path in out_dir.rglob("*"):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    return out_dir


def save_random_clip(out_dir: Path, config: CLIPConfig | None = None) -> Path:
    """Save a CLIP with random weights (default: the real ViT-B/32, 512-d) as a sentence-transformers folder.

    For speed benchmarks only: its embeddings rank nothing meaningfully.
    """
    config = config or CLIPConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    # CLIPConfig turns a vision_config given as a dict (or none) into a CLIPVisionConfig.
    image_size = config.vision_config.image_size if isinstance(config.vision_config, CLIPVisionConfig) else None
    if not isinstance(image_size, int):
        raise ValueError(f"a random CLIP needs one square input size, not {image_size!r}")
    return save_sentence_transformer(model, clip_processor(image_size), Path(out_dir))


def save_untrained_tiny_clip(out_dir: Path, *, seed: int = 0) -> Path:
    """The tiny CLIP's architecture and preprocessing with random weights: the baseline that shows
    a recall test can fail."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config()).eval()
    return save_sentence_transformer(model, clip_processor(TINY_IMAGE_SIZE), Path(out_dir))


@dataclass(frozen=True)
class TrainingReport:
    """What one training run did, written next to the model as ``.training.json``."""

    steps: int
    batch_size: int
    threads: int
    setup_seconds: float
    train_seconds: float
    final_loss: float


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def default_threads() -> int:
    """Threads for training: half the cores, at most 4.

    The matrices are tiny, so more threads gain little, and on a busy 2-core machine two
    OpenMP threads spin-wait on each other: one thread measured 30x faster there than two.
    """
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _pixel_values(processor: CLIPProcessor, images: Sequence[synthetic.SyntheticImage]) -> torch.Tensor:
    """Run the model's own image processor once over the training pool."""
    pixels: torch.Tensor = processor.image_processor(images=[item.image for item in images], return_tensors="pt")[
        "pixel_values"
    ]
    return pixels


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror, nudge, tilt and rescale images slightly, within the generator's own variation."""
    n = pixels.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-math.radians(5), math.radians(5))
    scale = 1 / uniform(0.93, 1.07)
    mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift_x, shift_y = uniform(-0.05, 0.05), uniform(-0.05, 0.05)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, shift_x], 1), torch.stack([sin * mirror, cos, shift_y], 1)], 1
    )
    grid = torch.nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    # "border" repeats the backdrop's edge, which is smooth, instead of inventing black corners.
    return torch.nn.functional.grid_sample(pixels, grid, padding_mode="border", align_corners=False)


def _train(model: CLIPModel, processor: CLIPProcessor, *, steps: int, seed: int) -> TrainingReport:
    """CLIP's contrastive loss on synthetic images and training captions (never held-out ones), for ``steps`` steps."""
    setup_started = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    generator = torch.Generator().manual_seed(seed)
    pairs = synthetic.combinations()
    # A pool of rendered images, several per colour/shape pair, at two sizes so that both sharp and
    # smoothed-down pictures are seen; captions are drawn afresh at every step.
    per_pair = 16
    pool = synthetic.generate(len(pairs) * per_pair, seed=10_000 + seed, templates="train", size=TRAIN_RENDER_SIZES[0])
    pool += synthetic.generate(len(pairs) * per_pair, seed=20_000 + seed, templates="train", size=TRAIN_RENDER_SIZES[1])
    pixels = _pixel_values(processor, pool)
    by_pair: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(pool):
        by_pair.setdefault((item.colour, item.shape), []).append(index)
    setup_seconds = time.perf_counter() - setup_started

    # The token table (49408 rows) dwarfs the rest of the model, yet a batch touches a few dozen
    # rows: sparse gradients and SparseAdam update only those, which halves the step time.
    token_embedding = model.text_model.embeddings.token_embedding
    token_embedding.sparse = True
    dense = [p for name, p in model.named_parameters() if p is not token_embedding.weight]
    peak_lr = 2e-3
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(dense, lr=peak_lr, weight_decay=0.05, foreach=True),
        torch.optim.SparseAdam([token_embedding.weight], lr=peak_lr),
    ]
    tokenizer = processor.tokenizer
    # One image per colour/shape pair in every batch. A full caption is then true of its own image
    # only; a colour-only or shape-only caption is true of several, and CLIP's loss counts every
    # image a caption is true of as a positive (and every true caption of an image).
    batch_size = len(pairs)
    partial_share = PARTIAL_CAPTION_SHARE
    warmup = max(1, steps // 20)

    def learning_rate(step: int) -> float:
        # Linear warm-up, then cosine decay to a tenth of the peak.
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    started = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
        order = rng.permutation(len(pairs))
        indices = [int(rng.choice(by_pair[pairs[i]])) for i in order]
        captions, says_colour, says_shape = [], [], []
        for index in indices:
            item = pool[index]
            kind = rng.random()
            if kind < partial_share / 2:
                templates, colour_named, shape_named = synthetic.COLOUR_ONLY_TEMPLATES, True, False
            elif kind < partial_share:
                templates, colour_named, shape_named = synthetic.SHAPE_ONLY_TEMPLATES, False, True
            else:
                templates, colour_named, shape_named = synthetic.TRAIN_TEMPLATES, True, True
            template = templates[int(rng.integers(len(templates)))]
            captions.append(synthetic.make_caption(template, item.colour, item.shape, item.background))
            says_colour.append(colour_named)
            says_shape.append(shape_named)
        # true[i, j]: caption i is true of image j.
        colours = np.array([pool[i].colour for i in indices])
        shapes = np.array([pool[i].shape for i in indices])
        true = ((colours[:, None] == colours[None, :]) | ~np.array(says_colour)[:, None]) & (
            (shapes[:, None] == shapes[None, :]) | ~np.array(says_shape)[:, None]
        )
        targets = torch.from_numpy(true.astype(np.float32))
        text = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        images = _augment(pixels[indices], generator)
        output = model(**text, pixel_values=images)
        loss = (
            torch.nn.functional.cross_entropy(output.logits_per_text, targets / targets.sum(1, keepdim=True))
            + torch.nn.functional.cross_entropy(output.logits_per_image, (targets / targets.sum(0, keepdim=True)).T)
        ) / 2
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dense, 1.0)
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            # CLIP clamps its temperature so logits stay bounded.
            model.logit_scale.clamp_(0, math.log(100))
    token_embedding.sparse = False
    model.eval()
    return TrainingReport(
        steps=steps,
        batch_size=batch_size,
        threads=torch.get_num_threads(),
        setup_seconds=round(setup_seconds, 2),
        train_seconds=round(time.perf_counter() - started, 2),
        final_loss=round(float(loss.detach()), 4),
    )


def steps_for(train_seconds: float) -> int:
    """The fixed number of optimiser steps that ``train_seconds`` stands for (see NOMINAL_STEPS_PER_SECOND)."""
    return max(10, round(train_seconds * NOMINAL_STEPS_PER_SECOND))


def build_tiny_clip(
    out_dir: Path,
    *,
    train_seconds: float = 60.0,
    seed: int = 0,
    steps: int | None = None,
    threads: int | None = None,
) -> Path:
    """Train a tiny CLIP on synthetic shapes and save it to ``out_dir`` as a sentence-transformers folder.

    The number of steps comes from ``train_seconds`` at a fixed nominal speed (``steps_for``),
    not from a clock, so a seed yields the same model on every machine (as far as torch's
    kernels are deterministic); a busy machine takes longer instead of training less. ``steps``
    overrides it. A hidden ``.training.json`` beside the weights records what was done.
    """
    out_dir = Path(out_dir)
    steps = steps if steps is not None else steps_for(train_seconds)
    # A private RNG state: the caller's torch random stream is left as it was.
    with torch.random.fork_rng(devices=[]), _torch_threads(threads or default_threads()):
        torch.manual_seed(seed)
        processor = clip_processor(TINY_IMAGE_SIZE)
        model = CLIPModel(tiny_clip_config())
        report = _train(model, processor, steps=steps, seed=seed)
    save_sentence_transformer(model, processor, out_dir)
    logger.info("tiny CLIP trained: %s", report)
    (out_dir / TRAINING_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
    return out_dir


def _cache_key(params: dict[str, object]) -> str:
    # The training code itself is part of the key: editing it invalidates cached models.
    source = Path(__file__).read_bytes() + Path(synthetic.__file__).read_bytes()
    payload = json.dumps({"version": TINY_CLIP_VERSION, **params}, sort_keys=True).encode() + source
    return hashlib.sha256(payload).hexdigest()[:16]


def cached_tiny_clip(
    cache_dir: Path, *, train_seconds: float = 60.0, seed: int = 0, steps: int | None = None
) -> Path | None:
    """The cached tiny CLIP folder built with these parameters and this code, or None when it is not built yet."""
    params: dict[str, object] = {"train_seconds": train_seconds, "seed": seed, "steps": steps}
    target = Path(cache_dir) / f"tiny-clip-{_cache_key(params)}"
    return target if (target / MARKER_FILE).is_file() else None


def ensure_tiny_clip(cache_dir: Path, *, train_seconds: float = 60.0, seed: int = 0, steps: int | None = None) -> Path:
    """Return a cached tiny CLIP folder built with these parameters and this code, building it if needed.

    The model is built in a temporary folder next to its final place and renamed into it, so a
    crash or a concurrent build never leaves a half-written model behind.
    """
    cached = cached_tiny_clip(cache_dir, train_seconds=train_seconds, seed=seed, steps=steps)
    if cached is not None:
        return cached
    params: dict[str, object] = {"train_seconds": train_seconds, "seed": seed, "steps": steps}
    key = _cache_key(params)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-clip-{key}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-clip-{key}-", dir=cache_dir))
    try:
        build_tiny_clip(staging / "model", train_seconds=train_seconds, seed=seed, steps=steps)
        marker = {"key": key, "version": TINY_CLIP_VERSION, **params}
        (staging / "model" / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        try:
            os.rename(staging / "model", target)
        except OSError:
            # Another process finished first; its model is as good as ours.
            if not (target / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class RecallReport:
    """Text-to-image retrieval on fresh images queried with held-out caption templates."""

    gallery_size: int
    recall_at_1: float
    recall_at_5: float
    chance_at_1: float
    chance_at_5: float


def heldout_recall(model_dir: Path | str, *, seed: int = 12_345, size: tuple[int, int] = (320, 240)) -> RecallReport:
    """Recall@1/@5 of text→image search over a gallery of one fresh image per colour/shape pair.

    Each image is queried with its own caption, written with a held-out template the model never
    trained on; a hit is that image ranking in the top k.
    """
    from core.embedding import ClipEmbedder

    gallery = synthetic.generate(len(synthetic.combinations()), seed=seed, templates="heldout", size=size)
    embedder = ClipEmbedder(str(model_dir), device="cpu")
    images = embedder.embed_images([item.image for item in gallery])
    texts = embedder.embed_texts([item.caption for item in gallery])
    scores = texts @ images.T
    # Rank of the matching image among all gallery images, for each query.
    ranks = (scores > np.diag(scores)[:, None]).sum(axis=1)
    n = len(gallery)
    return RecallReport(
        gallery_size=n,
        recall_at_1=float(np.mean(ranks < 1)),
        recall_at_5=float(np.mean(ranks < 5)),
        chance_at_1=1 / n,
        chance_at_5=5 / n,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Build a tiny CLIP and print its held-out recall next to an untrained twin's and chance."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="nominal training time (fixes the step count, see steps_for)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the model here (default: a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tiny-clip-") as scratch:
        out = args.out or Path(scratch) / "trained"
        started = time.perf_counter()
        build_tiny_clip(out, train_seconds=args.seconds, seed=args.seed)
        built = time.perf_counter() - started
        training = json.loads((out / TRAINING_REPORT_FILE).read_text())
        untrained = save_untrained_tiny_clip(Path(scratch) / "untrained", seed=args.seed)
        trained_recall = heldout_recall(out)
        untrained_recall = heldout_recall(untrained)
    print(
        f"built in {built:.1f} s: {training['steps']} steps of {training['batch_size']} on "
        f"{training['threads']} thread(s), {training['train_seconds']} s training, final loss {training['final_loss']}"
    )
    print(f"gallery: {trained_recall.gallery_size} fresh images, queries in held-out templates")
    print(f"{'':10}{'R@1':>8}{'R@5':>8}")
    print(f"{'trained':10}{trained_recall.recall_at_1:8.3f}{trained_recall.recall_at_5:8.3f}")
    print(f"{'untrained':10}{untrained_recall.recall_at_1:8.3f}{untrained_recall.recall_at_5:8.3f}")
    print(f"{'chance':10}{trained_recall.chance_at_1:8.3f}{trained_recall.chance_at_5:8.3f}")


if __name__ == "__main__":
    main()
