"""Tiny stand-ins of the other model families, trained at run time like the tiny CLIP (no model hub here).

- :func:`ensure_tiny_siglip`: a transformers ``SiglipModel`` from a small ``SiglipConfig``, with a word-level
  tokenizer trained at run time on the training captions (the ``tokenizers`` library), SigLIP's own image
  processor, trained with SigLIP's sigmoid loss; saved as a transformers folder (``config.json`` with
  ``model_type`` siglip), the layout ``google/siglip2-base-patch16-224`` has.
- :func:`ensure_tiny_open_clip`: an open_clip ViT from a model config registered from a dict, with open_clip's
  own CLIP tokenizer and preprocessing, trained with CLIP's softmax loss; saved as an open_clip folder
  (``open_clip_config.json`` + ``open_clip_model.safetensors``), the layout of ``hf-hub:`` repositories.
- :func:`save_random_siglip` / :func:`save_random_open_clip`: the real SigLIP B/16 and open_clip ViT-B-32
  architectures with random weights, for speed benchmarks.

Both train on :mod:`evaluation.standins.synthetic` images with training captions only, batches of one image per
colour/shape pair, and are cached in WITHSENSE_TEST_CACHE under a key of this code (like ``ensure_tiny_clip``).
``python -m evaluation.standins.tiny_families --family siglip`` builds one and prints its held-out recall.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.standins import synthetic
from evaluation.standins.tiny_clip import (
    PARTIAL_CAPTION_SHARE,
    TINY_IMAGE_SIZE,
    TINY_PATCH_SIZE,
    TRAIN_RENDER_SIZES,
    TrainingReport,
    _augment,
    _torch_threads,
    default_threads,
    heldout_recall,
    steps_for,
)

# Bump whenever training, data or the saved layout changes: cached models are then rebuilt.
TINY_FAMILIES_VERSION = 1
MARKER_FILE = ".withsense-tiny-model.json"
TRAINING_REPORT_FILE = ".training.json"
SIGLIP_CONTEXT = 16  # tokens: the longest synthetic caption has 11 words
OPEN_CLIP_CONTEXT = 32
TINY_OPEN_CLIP_NAME = "withsense-tiny-vit"

TextEncoder = Callable[[list[str]], torch.Tensor]
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]


def _training_pool(
    prepare: Callable[[list[Any]], torch.Tensor], seed: int
) -> tuple[list[synthetic.SyntheticImage], torch.Tensor]:
    """Several rendered images per colour/shape pair at two sizes, preprocessed once by the model's own processor."""
    pairs = synthetic.combinations()
    per_pair = 16
    pool = synthetic.generate(len(pairs) * per_pair, seed=10_000 + seed, templates="train", size=TRAIN_RENDER_SIZES[0])
    pool += synthetic.generate(len(pairs) * per_pair, seed=20_000 + seed, templates="train", size=TRAIN_RENDER_SIZES[1])
    return pool, prepare([item.image for item in pool])


def train_pairs(
    model: torch.nn.Module,
    *,
    encode_images: ImageEncoder,
    encode_texts: TextEncoder,
    prepare_images: Callable[[list[Any]], torch.Tensor],
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loss_kind: str,
    steps: int,
    seed: int,
    after_step: Callable[[], None] | None = None,
) -> TrainingReport:
    """Contrastive training on synthetic pictures and training captions, the tiny CLIP's recipe for any family.

    Every batch holds one picture per colour/shape pair; a quarter of the captions name only the colour or the
    shape, and every picture such a caption is true of counts as a positive. ``loss_kind`` "softmax" is CLIP's
    loss (cross-entropy both ways), "sigmoid" SigLIP's (one binary decision per pair).
    """
    setup_started = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    generator = torch.Generator().manual_seed(seed)
    pairs = synthetic.combinations()
    pool, pixels = _training_pool(prepare_images, seed)
    by_pair: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(pool):
        by_pair.setdefault((item.colour, item.shape), []).append(index)
    setup_seconds = time.perf_counter() - setup_started
    parameters = [p for p in model.parameters() if p.requires_grad]
    peak_lr = 2e-3
    optimizer = torch.optim.AdamW(parameters, lr=peak_lr, weight_decay=0.05, foreach=True)
    warmup = max(1, steps // 20)

    def learning_rate(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    started = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        order = rng.permutation(len(pairs))
        indices = [int(rng.choice(by_pair[pairs[i]])) for i in order]
        captions, says_colour, says_shape = [], [], []
        for index in indices:
            item = pool[index]
            kind = rng.random()
            if kind < PARTIAL_CAPTION_SHARE / 2:
                templates, colour_named, shape_named = synthetic.COLOUR_ONLY_TEMPLATES, True, False
            elif kind < PARTIAL_CAPTION_SHARE:
                templates, colour_named, shape_named = synthetic.SHAPE_ONLY_TEMPLATES, False, True
            else:
                templates, colour_named, shape_named = synthetic.TRAIN_TEMPLATES, True, True
            template = templates[int(rng.integers(len(templates)))]
            captions.append(synthetic.make_caption(template, item.colour, item.shape, item.background))
            says_colour.append(colour_named)
            says_shape.append(shape_named)
        colours = np.array([pool[i].colour for i in indices])
        shapes = np.array([pool[i].shape for i in indices])
        true = ((colours[:, None] == colours[None, :]) | ~np.array(says_colour)[:, None]) & (
            (shapes[:, None] == shapes[None, :]) | ~np.array(says_shape)[:, None]
        )
        targets = torch.from_numpy(true.astype(np.float32))
        text = torch.nn.functional.normalize(encode_texts(captions), dim=-1)
        image = torch.nn.functional.normalize(encode_images(_augment(pixels[indices], generator)), dim=-1)
        per_text = logits(text, image)  # (captions, images)
        if loss_kind == "sigmoid":
            # SigLIP: every (caption, picture) pair is its own yes/no question.
            loss = -torch.nn.functional.logsigmoid((2 * targets - 1) * per_text).sum() / len(captions)
        else:
            loss = (
                torch.nn.functional.cross_entropy(per_text, targets / targets.sum(1, keepdim=True))
                + torch.nn.functional.cross_entropy(per_text.T, (targets / targets.sum(0, keepdim=True)).T)
            ) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step()
    model.eval()
    return TrainingReport(
        steps=steps,
        batch_size=len(pairs),
        threads=torch.get_num_threads(),
        setup_seconds=round(setup_seconds, 2),
        train_seconds=round(time.perf_counter() - started, 2),
        final_loss=round(float(loss.detach()), 4),
    )


# SigLIP --------------------------------------------------------------------------------------------------------


def caption_tokenizer(context: int = SIGLIP_CONTEXT) -> Any:
    """A word-level tokenizer trained at run time on the training captions (unknown words become ``<unk>``),
    with SigLIP's conventions: lower case, ``</s>`` at the end, padded with ``<pad>`` to the full context."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    captions = [
        synthetic.make_caption(template, colour, shape, background)
        for template in synthetic.TRAIN_TEMPLATES + synthetic.COLOUR_ONLY_TEMPLATES + synthetic.SHAPE_ONLY_TEMPLATES
        for colour in synthetic.COLOURS
        for shape in synthetic.SHAPES
        for background in synthetic.BACKGROUNDS
    ]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        model_max_length=context,
    )


def tiny_siglip_config(vocab_size: int) -> Any:
    """A SigLIP small enough to train in a minute on two CPU cores: 32x32 pictures in 4x4 patches, 96-d space."""
    from transformers import SiglipConfig

    return SiglipConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": SIGLIP_CONTEXT,
            "projection_size": 96,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": None,
        },
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 384,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
        },
    )


def siglip_image_processor(image_size: int) -> Any:
    """SigLIP's own preprocessing (resize to a square, rescale, normalise to [-1, 1]) at ``image_size``."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": image_size, "width": image_size})


def _save_siglip(model: Any, image_processor: Any, tokenizer: Any, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_siglip(out_dir: Path, *, train_seconds: float = 60.0, seed: int = 0, steps: int | None = None) -> Path:
    """Train a tiny SigLIP on synthetic shapes with SigLIP's sigmoid loss and save it as a transformers folder."""
    from transformers import SiglipModel

    steps = steps if steps is not None else steps_for(train_seconds)
    with torch.random.fork_rng(devices=[]), _torch_threads(default_threads()):
        torch.manual_seed(seed)
        tokenizer = caption_tokenizer()
        image_processor = siglip_image_processor(TINY_IMAGE_SIZE)
        model = SiglipModel(tiny_siglip_config(len(tokenizer)))
        with torch.no_grad():
            # The SigLIP paper's start: t' = log 10, b = -10 (most pairs in a batch are negatives).
            model.logit_scale.fill_(math.log(10))
            model.logit_bias.fill_(-10.0)

        def encode_texts(captions: list[str]) -> torch.Tensor:
            tokens = tokenizer(captions, padding="max_length", max_length=SIGLIP_CONTEXT, truncation=True)
            ids = torch.tensor(tokens["input_ids"])
            output: torch.Tensor = model.get_text_features(input_ids=ids).pooler_output
            return output

        def encode_images(pixels: torch.Tensor) -> torch.Tensor:
            output: torch.Tensor = model.get_image_features(pixel_values=pixels).pooler_output
            return output

        def prepare(images: list[Any]) -> torch.Tensor:
            pixels: torch.Tensor = image_processor(images=images, return_tensors="pt")["pixel_values"]
            return pixels

        def logits(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            return text @ image.T * model.logit_scale.exp() + model.logit_bias

        report = train_pairs(
            model,
            encode_images=encode_images,
            encode_texts=encode_texts,
            prepare_images=prepare,
            logits=logits,
            loss_kind="sigmoid",
            steps=steps,
            seed=seed,
        )
    _save_siglip(model, image_processor, tokenizer, out_dir)
    (Path(out_dir) / TRAINING_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
    return Path(out_dir)


def save_random_siglip(out_dir: Path) -> Path:
    """SigLIP B/16 at 224 (``SiglipConfig()`` defaults, 768-d) with random weights, for speed benchmarks."""
    from transformers import SiglipConfig, SiglipModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = SiglipConfig()
        model = SiglipModel(config).eval()
    image_size = getattr(config.vision_config, "image_size", None)
    if not isinstance(image_size, int):
        raise ValueError(f"SigLIP's default config has no square input size ({image_size!r})")
    # The tokenizer only has to fill SigLIP's 64-token context: text speed does not depend on its vocabulary.
    return _save_siglip(model, siglip_image_processor(image_size), caption_tokenizer(64), out_dir)


# open_clip -----------------------------------------------------------------------------------------------------


def tiny_open_clip_config() -> dict[str, object]:
    """An open_clip model config (the dict open_clip's JSON configs hold): the tiny CLIP's sizes."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 3, "width": 96, "head_width": 24, "patch_size": 8},
        "text_cfg": {"context_length": OPEN_CLIP_CONTEXT, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    }


def _register_open_clip(name: str, config: dict[str, object]) -> None:
    """Register a model config from a dict, as open_clip's own JSON files are registered."""
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = config


def _save_open_clip(model: Any, config: dict[str, object], preprocess_cfg: dict[str, object], out_dir: Path) -> Path:
    """The layout ``open_clip.push_to_hf_hub`` writes: open_clip_config.json and open_clip_model.safetensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir


def build_tiny_open_clip(
    out_dir: Path, *, train_seconds: float = 60.0, seed: int = 0, steps: int | None = None
) -> Path:
    """Train a tiny open_clip ViT on synthetic shapes with CLIP's loss and save it as an open_clip folder."""
    import open_clip

    steps = steps if steps is not None else steps_for(train_seconds)
    config = tiny_open_clip_config()
    _register_open_clip(TINY_OPEN_CLIP_NAME, config)
    with torch.random.fork_rng(devices=[]), _torch_threads(default_threads()):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(TINY_OPEN_CLIP_NAME)
        tokenizer = open_clip.get_tokenizer(TINY_OPEN_CLIP_NAME)

        def prepare(images: list[Any]) -> torch.Tensor:
            return torch.stack([preprocess(image) for image in images])

        def logits(text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            return text @ image.T * model.logit_scale.exp()

        def clamp() -> None:
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))

        report = train_pairs(
            model,
            encode_images=model.encode_image,
            encode_texts=lambda captions: model.encode_text(tokenizer(captions)),
            prepare_images=prepare,
            logits=logits,
            loss_kind="softmax",
            steps=steps,
            seed=seed,
            after_step=clamp,
        )
    visual = model.visual
    preprocess_cfg = {
        "size": TINY_IMAGE_SIZE,
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }
    _save_open_clip(model, config, preprocess_cfg, out_dir)
    (Path(out_dir) / TRAINING_REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
    return Path(out_dir)


def save_random_open_clip(out_dir: Path, name: str = "ViT-B-32") -> Path:
    """An open_clip architecture from its packaged config (default ViT-B-32, 512-d) with random weights."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(name)
    config = open_clip.get_model_config(name)
    assert config is not None
    preprocess_cfg = {
        "size": model.visual.image_size[0],
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
    }
    return _save_open_clip(model, config, preprocess_cfg, out_dir)


# Caching -------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., Path]] = {"siglip": build_tiny_siglip, "open_clip": build_tiny_open_clip}


def _cache_key(family: str, params: dict[str, object]) -> str:
    # The training code itself is part of the key: editing it invalidates cached models.
    from evaluation.standins import tiny_clip

    source = Path(__file__).read_bytes() + Path(synthetic.__file__).read_bytes() + Path(tiny_clip.__file__).read_bytes()
    payload = json.dumps({"version": TINY_FAMILIES_VERSION, "family": family, **params}, sort_keys=True).encode()
    return hashlib.sha256(payload + source).hexdigest()[:16]


def ensure_tiny_model(
    family: str, cache_dir: Path, *, train_seconds: float = 60.0, seed: int = 0, steps: int | None = None
) -> Path:
    """A cached tiny model of `family` ("siglip" or "open_clip") built with these parameters and this code.

    Built in a temporary folder next to its final place and renamed into it, so a crash or a concurrent build
    never leaves a half-written model behind.
    """
    params: dict[str, object] = {"train_seconds": train_seconds, "seed": seed, "steps": steps}
    key = _cache_key(family, params)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-{family.replace('_', '-')}-{key}"
    if (target / MARKER_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tiny-{family}-{key}-", dir=cache_dir))
    try:
        BUILDERS[family](staging / "model", train_seconds=train_seconds, seed=seed, steps=steps)
        (staging / "model" / MARKER_FILE).write_text(json.dumps({"key": key, "family": family, **params}, indent=2))
        for path in (staging / "model").rglob("*"):
            path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_tiny_siglip(cache_dir: Path, **kwargs: Any) -> Path:
    """The cached tiny SigLIP (see :func:`ensure_tiny_model`)."""
    return ensure_tiny_model("siglip", cache_dir, **kwargs)


def ensure_tiny_open_clip(cache_dir: Path, **kwargs: Any) -> Path:
    """The cached tiny open_clip model (see :func:`ensure_tiny_model`)."""
    return ensure_tiny_model("open_clip", cache_dir, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """Build a tiny model of one family and print its held-out recall."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--family", choices=sorted(BUILDERS), default="siglip")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiny-model-") as scratch:
        out = args.out or Path(scratch) / "trained"
        started = time.perf_counter()
        BUILDERS[args.family](out, train_seconds=args.seconds, seed=args.seed)
        built = time.perf_counter() - started
        report = heldout_recall(out)
    print(f"{args.family}: built in {built:.1f} s, {json.loads((out / TRAINING_REPORT_FILE).read_text())}")
    print(f"held-out R@1 {report.recall_at_1:.3f}  R@5 {report.recall_at_5:.3f}  (gallery {report.gallery_size})")


if __name__ == "__main__":
    main()
