"""``withsense eval``: the offline evaluation from the command line.

Registered by the main CLI as ``app.command("eval")(eval_command)``. Examples::

    withsense eval data/seed --model clip-ViT-B-32 --out reports/seed
    withsense eval data/seed --model models/clip-ViT-B-32 --model models/my-finetuned-clip \\
        --baseline-image models/resnet-50 --baseline-text models/bert-base-uncased
    withsense eval --demo                       # the shipped synthetic set, configured model
    withsense eval --demo --model builtin:tiny-clip --model builtin:random-clip \\
        --baseline-image builtin:tiny-cnn --baseline-text builtin:tiny-bert   # fully offline

``builtin:`` names build small local stand-ins (no download): ``tiny-clip`` (the trained tiny
CLIP the tests use), ``random-clip`` (the same architecture, random weights), ``tiny-cnn`` and
``tiny-bert`` (random frozen encoders for the baseline). They live under
``$WITHSENSE_HOME/models``. They, and ``--demo``, come from :mod:`evaluation.standins`, which only a
development checkout has (the production image and the wheel leave it out); without it they stop
with one line that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from evaluation.models import ModelSpec

BUILTIN_PREFIX = "builtin:"
BUILTIN_CLIPS = ("tiny-clip", "random-clip")
BUILTIN_BASELINE_IMAGE = ("tiny-cnn",)
BUILTIN_BASELINE_TEXT = ("tiny-bert",)


STANDINS_PACKAGE = "evaluation.standins"


@contextmanager
def _standins(what: str) -> Iterator[None]:
    """Around an import of the stand-ins: where this install has none, stop with one line that says so."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == STANDINS_PACKAGE or exc.name.startswith(STANDINS_PACKAGE + ".")):
            raise
        typer.echo(
            f"error: {what} needs the test stand-ins ({STANDINS_PACKAGE}), which this installation leaves out "
            "(the production image and the wheel do); run it from a development checkout (make install)",
            err=True,
        )
        raise typer.Exit(code=2) from None


def _models_dir() -> Path:
    from core.settings import get_settings

    return Path(get_settings().home) / "models"


def resolve_clip(value: str) -> ModelSpec:
    """A ``--model`` value as a spec: a name, a folder, ``IMAGE+TEXT`` (a CLIP with a separate text model in
    its space, e.g. ``clip-ViT-B-32+clip-ViT-B-32-multilingual-v1``), or ``builtin:tiny-clip`` /
    ``builtin:random-clip``."""
    if "+" in value and not value.startswith(BUILTIN_PREFIX) and not Path(value).exists():
        image, _, text = value.partition("+")
        if not image.strip() or not text.strip():
            raise typer.BadParameter(f"{value!r}: write IMAGE_MODEL+TEXT_MODEL with both parts")
        return ModelSpec.clip(image.strip(), text_path=text.strip())
    if not value.startswith(BUILTIN_PREFIX):
        return ModelSpec.clip(value)
    name = value.removeprefix(BUILTIN_PREFIX)
    if name == "tiny-clip":
        with _standins(value):
            from evaluation.standins.tiny_clip import ensure_tiny_clip

        typer.echo("building (or reusing) the tiny CLIP stand-in: about a minute the first time", err=True)
        return ModelSpec.clip(str(ensure_tiny_clip(_models_dir())), name="tiny CLIP (trained stand-in)")
    if name == "random-clip":
        with _standins(value):
            from evaluation.standins.tiny_clip import save_random_clip, tiny_clip_config

        folder = _models_dir() / "random-tiny-clip"
        if not (folder / "modules.json").is_file():
            save_random_clip(folder, tiny_clip_config())
        return ModelSpec.clip(str(folder), name="tiny CLIP (random weights)")
    raise typer.BadParameter(
        f"unknown built-in model {value!r}; choose from {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_CLIPS)}"
    )


def resolve_encoder(value: str, side: Literal["image", "text"]) -> str:
    """A baseline encoder folder, building ``builtin:tiny-cnn`` / ``builtin:tiny-bert`` when asked."""
    if not value.startswith(BUILTIN_PREFIX):
        return value
    name = value.removeprefix(BUILTIN_PREFIX)
    with _standins(value):
        from evaluation.standins.baseline_encoders import build_tiny_image_encoder, build_tiny_text_encoder

    if side == "image" and name in BUILTIN_BASELINE_IMAGE:
        return str(build_tiny_image_encoder(_models_dir() / "tiny-cnn"))
    if side == "text" and name in BUILTIN_BASELINE_TEXT:
        return str(build_tiny_text_encoder(_models_dir() / "tiny-bert"))
    choices = BUILTIN_BASELINE_IMAGE if side == "image" else BUILTIN_BASELINE_TEXT
    raise typer.BadParameter(
        f"unknown built-in {side} encoder {value!r}; choose {', '.join(BUILTIN_PREFIX + c for c in choices)}"
    )


def eval_command(
    dataset_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Folder in the seed layout (train_dataset.csv, CrowdAnnotations.tsv, ExpertAnnotations.tsv, "
            "test_queries.csv, train_images/, test_images/)."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="sentence-transformers CLIP name or folder, or IMAGE+TEXT for a CLIP with a separate text "
            "model in its space; repeat to compare. Default: WITHSENSE_MODEL (+ WITHSENSE_TEXT_MODEL).",
        ),
    ] = None,
    baseline_image: Annotated[
        str | None, typer.Option("--baseline-image", help="Baseline image encoder folder (e.g. microsoft/resnet-50).")
    ] = None,
    baseline_text: Annotated[
        str | None, typer.Option("--baseline-text", help="Baseline text encoder folder (e.g. bert-base-uncased).")
    ] = None,
    baseline_head: Annotated[str, typer.Option("--baseline-head", help="Baseline projection: ridge or mlp.")] = "ridge",
    demo: Annotated[bool, typer.Option("--demo", help="Evaluate on the shipped synthetic demo dataset.")] = False,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write report.html, report.md, per_query.csv...")
    ] = Path("reports/eval"),
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu or cuda (default: WITHSENSE_DEVICE).")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the confidence intervals.")
    ] = 1000,
    expert_weight: Annotated[
        float, typer.Option("--expert-weight", min=0.0, max=1.0, help="Weight of the experts in the relevance blend.")
    ] = 0.6,
    seed: Annotated[int, typer.Option("--seed", help="Seed for bootstrap, cross-validation and the baseline.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Evaluate text-to-image search on a seed-format dataset and write an HTML + Markdown report."""
    from core.settings import get_settings
    from evaluation.results import EvaluationConfig
    from evaluation.runner import run_evaluation

    if demo and dataset_dir is not None:
        raise typer.BadParameter("give either DATASET_DIR or --demo, not both")
    if not demo and dataset_dir is None:
        raise typer.BadParameter("give a DATASET_DIR, or --demo for the shipped synthetic dataset")
    if (baseline_image is None) != (baseline_text is None):
        raise typer.BadParameter("the baseline needs both --baseline-image and --baseline-text")
    if baseline_head not in ("ridge", "mlp"):
        raise typer.BadParameter("--baseline-head must be ridge or mlp")
    if demo:
        dataset_dir = _demo_dataset(out)
    assert dataset_dir is not None
    if not dataset_dir.is_dir():
        raise typer.BadParameter(f"dataset folder {dataset_dir} does not exist")

    settings = get_settings()
    specs = (
        [resolve_clip(m) for m in model or []]
        if model
        else [ModelSpec.clip(settings.model, text_path=settings.text_model, revision=settings.model_revision)]
    )
    if baseline_image is not None and baseline_text is not None:
        specs.append(
            ModelSpec.baseline(
                resolve_encoder(baseline_image, "image"),
                resolve_encoder(baseline_text, "text"),
                head="mlp" if baseline_head == "mlp" else "ridge",
            )
        )
    config = EvaluationConfig(
        dataset_dir=dataset_dir,
        out_dir=out,
        models=_unique_names(specs),
        device=device or settings.device,
        cache_folder=str(settings.model_cache_dir) if settings.model_cache_dir else None,
        bootstrap_resamples=bootstrap,
        expert_weight=expert_weight,
        seed=seed,
        progress=not quiet,
    )
    result = run_evaluation(config)

    from evaluation.report import comparison_table

    typer.echo(comparison_table(result).to_string(index=False))
    typer.echo(f"\nvalidation issues: {dict(result.validation.kinds()) or 'none'}")
    typer.echo(f"report: {result.report_html}\n        {result.report_md}\nper-query results: {result.per_query_csv}")
    failed = [m for m in result.models if m.error]
    for m in failed:
        typer.echo(f"error: {m.name}: {m.error}", err=True)
    if failed:
        raise typer.Exit(code=1)


def _demo_dataset(out: Path) -> Path:
    """The shipped demo dataset, rebuilt next to the report if this checkout lacks it."""
    with _standins("--demo"):
        from evaluation.standins.demo import DEMO_DIR, build_demo_dataset

    if (DEMO_DIR / "train_dataset.csv").is_file():
        return DEMO_DIR
    typer.echo(f"the demo dataset is not installed; building it into {out / 'demo_dataset'}", err=True)
    return build_demo_dataset(out / "demo_dataset")


def _unique_names(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Two models with the same display name would overwrite each other's rows: number them."""
    seen: dict[str, int] = {}
    unique: list[ModelSpec] = []
    for spec in specs:
        count = seen.get(spec.name, 0)
        seen[spec.name] = count + 1
        unique.append(replace(spec, name=f"{spec.name} ({count + 1})") if count else spec)
    return unique
