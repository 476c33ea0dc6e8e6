"""`withsense finetune`: a new model version trained on (image, text) pairs with CLIP's contrastive loss.

Pairs come from a seed-format dataset (each caption with its own image, and the pairs the experts judged
relevant; pairs that describe children removed by the service's own policy, as `withsense eval` does) or from the
catalogue (titles of the photos search shows anyone, none of a minor, as weak captions; their 224x224
derivatives as images). By default only the text tower is trained (LiT): the image tower, and so every stored
image vector, stays as it is, and `withsense models adopt` registers the result sharing the base's vectors (no
re-index). `--whole-model` trains both towers; that model needs `withsense reindex`.

A held-out share of the images decides early stopping (held-out text-to-image Recall@5, checked every
`eval_every` steps) and gives the before/after report. A checkpoint is written at every check, so a killed run
continues from it when started again with the same output folder. Only CLIP models saved as sentence-transformers
folders (`clip-ViT-B-32` and the like) can be fine-tuned here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image

from core.finetuned import FinetuneMode, FinetuneRecord, write_record

CHECKPOINT_DIR = ".finetune-checkpoint"
REPORT_FILE = ".finetune-report.md"


@dataclass(frozen=True)
class Pair:
    """One training example: an image file and a text true of it."""

    image: str
    caption: str


@dataclass
class FinetuneConfig:
    base_model: str
    out: Path
    mode: FinetuneMode = "text"
    max_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-5  # ViT-B/32-sized text towers; a tiny model from scratch takes ~5e-4
    eval_every: int = 50
    patience: int = 4
    heldout_share: float = 0.2
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclass(frozen=True)
class HeldoutScores:
    recall_at_1: float
    recall_at_5: float
    queries: int
    images: int


@dataclass
class FinetuneResult:
    out: Path
    before: HeldoutScores
    after: HeldoutScores
    steps: int
    best_step: int
    stopped_early: bool
    resumed_from: int | None
    train_pairs: int
    heldout_pairs: int
    funnel: dict[str, int] = field(default_factory=dict)

    def report(self) -> str:
        """The before/after report in Markdown (evaluation/report.py's renderer)."""
        import pandas as pd

        from evaluation.report import Block, render_markdown

        table = pd.DataFrame(
            [
                {"model": "before (base)", "R@1": self.before.recall_at_1, "R@5": self.before.recall_at_5},
                {"model": "after (fine-tuned)", "R@1": self.after.recall_at_1, "R@5": self.after.recall_at_5},
            ]
        )
        blocks = [
            Block("h2", "Fine-tuning: held-out text-to-image retrieval before and after"),
            Block(
                "p",
                f"{self.heldout_pairs} held-out captions over {self.after.images} held-out images; trained on "
                f"{self.train_pairs} pairs for {self.steps} steps (best at step {self.best_step}"
                f"{', stopped early' if self.stopped_early else ''}"
                f"{f', resumed from step {self.resumed_from}' if self.resumed_from else ''}).",
            ),
            Block("table", table=table),
            Block("list", "Training pairs", items=tuple(f"{k}: {v}" for k, v in self.funnel.items())),
        ]
        return render_markdown(blocks)


# Data ---------------------------------------------------------------------------------------------------------


def dataset_pairs(root: Path) -> tuple[list[Pair], dict[str, int]]:
    """(image, caption) pairs of a seed-format dataset, minus every pair that describes or shows a child.

    Each caption with its own image, and the judged pairs the experts rated 3 or 4 of 4 on average.
    """
    import pandas as pd

    from evaluation.dataset import EXPERT_COLUMNS, load_dataset, query_source_image
    from evaluation.minors import filter_training_pairs, service_policy

    dataset = load_dataset(root)
    texts = dataset.query_texts()
    own = dataset.train[["image", "query_id"]]
    own = own[[query_source_image(q) == image for image, q in zip(own["image"], own["query_id"], strict=True)]]
    expert = dataset.expert
    judged = expert[expert[list(EXPERT_COLUMNS)].mean(axis=1) >= 3][["image", "query_id"]]
    frame = pd.concat([own, judged], ignore_index=True).drop_duplicates(["image", "query_id"])
    describes_minor, _check, _version = service_policy()
    kept, minors = filter_training_pairs(frame, texts, describes_minor)
    kept = kept[kept["image"].isin(dataset.train_image_files) & kept["query_id"].isin(texts)]
    pairs = [
        Pair(str(dataset.train_image_path(image)), texts[q])
        for image, q in zip(kept["image"], kept["query_id"], strict=True)
    ]
    funnel = {
        "caption and judged pairs": len(frame),
        "removed: describes a child": minors.removed_query_describes_child,
        "removed: shows a child": minors.removed_image_depicts_child,
        "training pairs": len(pairs),
    }
    return pairs, funnel


def catalogue_pairs() -> tuple[list[Pair], dict[str, int]]:
    """The catalogue's titles as weak captions of their derivatives: visible, non-minor, indexed photos only.

    A title the query policy blocks (it describes a child) is left out as well.
    """
    from core.policy import check_query
    from core.settings import get_settings
    from core.storage import derivative_path
    from db.engine import session_scope
    from db.finetune import catalogue_captions

    settings = get_settings()
    with session_scope() as session:
        rows = catalogue_captions(session)
    pairs, blocked, missing = [], 0, 0
    for row in rows:
        if check_query(row.caption).blocked:
            blocked += 1
            continue
        path = derivative_path(settings, row.photo_id)
        if not path.is_file():
            missing += 1
            continue
        pairs.append(Pair(str(path), row.caption))
    funnel = {
        "visible photos with a title": len(rows),
        "removed: title describes a child": blocked,
        "removed: derivative missing": missing,
        "training pairs": len(pairs),
    }
    return pairs, funnel


def split_pairs(pairs: Sequence[Pair], share: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training, held-out) pairs, split by image so that no held-out image is ever trained on."""
    images = sorted({p.image for p in pairs})
    if len(images) < 4:
        raise ValueError(f"fine-tuning needs pairs of at least 4 images, not {len(images)}")
    order = np.random.default_rng([seed, 99]).permutation(len(images))
    count = min(len(images) - 2, max(2, round(len(images) * share)))
    heldout = {images[i] for i in order[:count]}
    return [p for p in pairs if p.image not in heldout], [p for p in pairs if p.image in heldout]


# Training -----------------------------------------------------------------------------------------------------


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def _positives(captions: Sequence[str], images: Sequence[str]) -> np.ndarray:
    """true[i, j]: caption i is true of image j (its own image, or an image with the same caption)."""
    keys = np.array([_normalised(c) for c in captions])
    ids = np.array(list(images))
    return (keys[:, None] == keys[None, :]) | (ids[:, None] == ids[None, :])


def _write_atomically(path: Path, save: Callable[[Path], None]) -> None:
    partial = path.with_name(path.name + ".partial")
    save(partial)
    os.replace(partial, path)


def finetune(config: FinetuneConfig, pairs: Sequence[Pair], funnel: dict[str, int] | None = None) -> FinetuneResult:
    """Train, early-stop on the held-out split, save the best model at `config.out` with its record and report.

    Resumes from `config.out`'s checkpoint when there is one (the pairs and split are the checkpoint's own).
    """
    import torch
    from tqdm.auto import tqdm

    from core.clip_parts import clip_parts, pixel_values
    from core.embedding import ClipEmbedder, folder_content_hash

    out = Path(config.out)
    checkpoint_dir = out / CHECKPOINT_DIR
    state_path = checkpoint_dir / "state.pt"
    resumed: dict[str, Any] | None = None
    if state_path.is_file():
        resumed = torch.load(state_path, map_location="cpu", weights_only=False)
        pairs = [Pair(**p) for p in resumed["pairs"]]
        funnel = dict(resumed["funnel"])
    train, heldout = split_pairs(pairs, config.heldout_share, config.seed)

    embedder = ClipEmbedder(config.base_model, device=config.device)
    base_revision = embedder.revision
    st_model = embedder.sentence_transformer
    st_model.float()  # trained in float32, also on a GPU (the service's fp16 is for inference)
    parts = clip_parts(st_model)
    model = parts.model
    device = next(model.parameters()).device
    if device.type == "cpu":
        # Small matrices: on a busy machine more OpenMP threads spin-wait on each other more than they help.
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) // 2)))
    tokenizer = st_model.tokenizer

    image_paths = sorted({p.image for p in pairs})
    row_of = {path: i for i, path in enumerate(image_paths)}

    def load(path: str) -> Image.Image:
        with Image.open(path) as picture:
            return picture.convert("RGB")

    pixels = torch.from_numpy(pixel_values(parts.image_processor, [load(p) for p in image_paths]))

    def image_features(rows: Sequence[int], *, grad: bool) -> torch.Tensor:
        batch = pixels[list(rows)].to(device)
        with torch.set_grad_enabled(grad):
            output = model.get_image_features(pixel_values=batch)
            features: torch.Tensor = getattr(output, "pooler_output", output)
        return torch.nn.functional.normalize(features.float(), dim=1)

    def text_features(texts: Sequence[str], *, grad: bool) -> torch.Tensor:
        tokens = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.set_grad_enabled(grad):
            output = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            features: torch.Tensor = getattr(output, "pooler_output", output)
        return torch.nn.functional.normalize(features.float(), dim=1)

    def evaluate() -> HeldoutScores:
        model.eval()
        rows = sorted({row_of[p.image] for p in heldout})
        with torch.inference_mode():
            images = torch.cat([image_features(rows[i : i + 256], grad=False) for i in range(0, len(rows), 256)])
            captions = sorted({p.caption for p in heldout})
            texts = torch.cat([text_features(captions[i : i + 256], grad=False) for i in range(0, len(captions), 256)])
        scores = (texts @ images.T).cpu().numpy()
        true = np.zeros_like(scores, dtype=bool)
        column = {row: j for j, row in enumerate(rows)}
        index = {c: i for i, c in enumerate(captions)}
        for pair in heldout:
            true[index[pair.caption], column[row_of[pair.image]]] = True
        # A caption is found when one of the images it is true of ranks first (in the top five).
        best_true = np.where(true, scores, -np.inf).max(axis=1)
        rank = (np.where(true, -np.inf, scores) > best_true[:, None]).sum(axis=1)
        return HeldoutScores(float(np.mean(rank < 1)), float(np.mean(rank < 5)), len(captions), len(rows))

    text_only = config.mode == "text"
    for name, parameter in model.named_parameters():
        trains_text = name.startswith(("text_model.", "text_projection."))
        parameter.requires_grad = trains_text or (not text_only and name != "logit_scale")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.learning_rate, weight_decay=0.01)
    frozen_images = image_features(list(range(len(image_paths))), grad=False).detach() if text_only else None

    step, best_step, bad_checks = 0, 0, 0
    before = evaluate()
    best_score = before.recall_at_5 + before.recall_at_1 / 100  # R@5 first, R@1 breaks ties
    best_state = {n: p.detach().clone() for n, p in trainable.items()}
    rng = np.random.default_rng([config.seed, 5])
    if resumed is not None:
        model.load_state_dict(resumed["model"], strict=False)
        optimizer.load_state_dict(resumed["optimizer"])
        step, best_step, bad_checks = int(resumed["step"]), int(resumed["best_step"]), int(resumed["bad_checks"])
        best_score = float(resumed["best_score"])
        best_state = resumed["best_state"]
        before = HeldoutScores(**resumed["before"])
        rng.bit_generator.state = resumed["rng"]
        if text_only:
            frozen_images = image_features(list(range(len(image_paths))), grad=False).detach()
    resumed_from = step if resumed is not None else None

    def save_checkpoint() -> None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "pairs": [asdict(p) for p in pairs],
            "funnel": funnel or {},
            "model": {n: p.detach().cpu() for n, p in trainable.items()},
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_step": best_step,
            "bad_checks": bad_checks,
            "best_score": best_score,
            "best_state": {n: t.cpu() for n, t in best_state.items()},
            "before": asdict(before),
            "rng": rng.bit_generator.state,
        }
        _write_atomically(state_path, lambda path: torch.save(state, path))

    scale = model.logit_scale.exp().detach()
    batch_size = min(config.batch_size, len(train))
    stopped_early = False
    warmup = max(1, config.max_steps // 20)
    with tqdm(
        total=config.max_steps, initial=step, desc="fine-tuning", unit="step", disable=not config.progress
    ) as bar:
        while step < config.max_steps:
            factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * step / config.max_steps))
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * max(factor, 0.05)
            model.train()
            chosen = [train[int(i)] for i in rng.choice(len(train), size=batch_size, replace=False)]
            rows = [row_of[p.image] for p in chosen]
            texts = text_features([p.caption for p in chosen], grad=True)
            images = frozen_images[rows] if frozen_images is not None else image_features(rows, grad=True)
            true = torch.from_numpy(_positives([p.caption for p in chosen], [p.image for p in chosen])).float()
            true = true.to(device)
            logits = scale * texts @ images.T
            loss = (
                torch.nn.functional.cross_entropy(logits, true / true.sum(1, keepdim=True))
                + torch.nn.functional.cross_entropy(logits.T, (true / true.sum(0, keepdim=True)).T)
            ) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if step % config.eval_every == 0 or step == config.max_steps:
                scores = evaluate()
                score = scores.recall_at_5 + scores.recall_at_1 / 100
                if score > best_score:
                    best_score, best_step, bad_checks = score, step, 0
                    best_state = {n: p.detach().clone() for n, p in trainable.items()}
                else:
                    bad_checks += 1
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", heldout_r5=f"{scores.recall_at_5:.3f}")
                save_checkpoint()
                if bad_checks >= config.patience:
                    stopped_early = True
                    break

    model.load_state_dict(best_state, strict=False)
    after = evaluate()
    staging = out.with_name(f".{out.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)
    st_model.save(str(staging))
    for path in staging.rglob("*"):
        path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o644))
    dimension = embedder.dimension
    write_record(staging, FinetuneRecord(config.base_model, base_revision, config.mode, dimension, step, best_step))
    result = FinetuneResult(
        out, before, after, step, best_step, stopped_early, resumed_from, len(train), len(heldout), funnel or {}
    )
    (staging / REPORT_FILE).write_text(result.report(), encoding="utf-8")
    # The checkpoint goes with the finished run; the saved model replaces the folder in one rename.
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    (out / ".finetune-result.json").write_text(
        json.dumps({"revision": folder_content_hash(out), "finished_at": time.time()}), encoding="utf-8"
    )
    return result


# The command ---------------------------------------------------------------------------------------------------


def finetune_command(
    out: Annotated[Path, typer.Argument(help="Folder to save the new model version in (and to resume from).")],
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", help="A seed-format dataset folder; default: the catalogue's titles (weak captions)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The base model (default: WITHSENSE_MODEL).")
    ] = None,
    whole_model: Annotated[
        bool,
        typer.Option(
            "--whole-model", help="Train the image tower too (the new version then needs `withsense reindex`)."
        ),
    ] = False,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, max=1_000_000)] = 600,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, max=65536)] = 64,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=1e-7, max=1.0)] = 2e-5,
    eval_every: Annotated[
        int, typer.Option("--eval-every", min=1, help="Held-out check (and checkpoint) every N steps.")
    ] = 50,
    patience: Annotated[int, typer.Option("--patience", min=1, help="Stop after N checks without improvement.")] = 4,
    heldout_share: Annotated[float, typer.Option("--heldout-share", min=0.05, max=0.5)] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda (default: WITHSENSE_DEVICE).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a new model version on (image, text) pairs; text tower only unless --whole-model. Kill and rerun it
    with the same OUT to continue from its last checkpoint."""
    from core.settings import get_settings

    settings = get_settings()
    if dataset is not None:
        pairs, funnel = dataset_pairs(dataset)
    elif (Path(out) / CHECKPOINT_DIR / "state.pt").is_file():
        pairs, funnel = [], {}  # the checkpoint holds the pairs it was started with
    else:
        pairs, funnel = catalogue_pairs()
    config = FinetuneConfig(
        base_model=model or settings.model,
        out=out,
        mode="whole" if whole_model else "text",
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        eval_every=eval_every,
        patience=patience,
        heldout_share=heldout_share,
        seed=seed,
        device=device or settings.device,
        progress=not quiet,
    )
    try:
        result = finetune(config, pairs, funnel)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(result.report())
    if config.mode == "text":
        next_steps = (
            f"Text tower only: register it sharing the stored image vectors with `withsense models adopt {out}`, "
            f"then `withsense models activate {out}` and point APIs and workers at it (WITHSENSE_MODEL={out})."
        )
    else:
        next_steps = (
            f"Whole model: start a worker with WITHSENSE_MODEL={out} on `-Q reindex`, run `withsense reindex`, then "
            f"`withsense models activate {out}`."
        )
    typer.echo(f"saved {out}. {next_steps}")
