"""The evaluation end to end: `withsense eval --demo` on the shipped synthetic dataset.

Real components throughout: the tiny trained CLIP (the session fixture `tiny_clip_path`) and an
untrained twin loaded by core.embedding.ClipEmbedder, the baseline's stand-in ResNet and BERT
loaded through transformers, the service's content policy. The command is run through Typer's
CliRunner on a small app that registers it the way cli/main.py does.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from evaluation.cli import eval_command
from evaluation.standins.demo import DEMO_DIR

CHANCE_AT_5 = 5 / 40  # 40 test images, one target per query

app = typer.Typer()
app.command("eval")(eval_command)


@app.callback()
def _root() -> None:
    """A group, so that `eval` is a subcommand as in the real CLI."""


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evaluation.standins.tiny_clip import save_random_clip, tiny_clip_config

    return save_random_clip(tmp_path_factory.mktemp("random-clip") / "model", tiny_clip_config())


@pytest.fixture(scope="module")
def baseline_encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from evaluation.standins.baseline_encoders import build_tiny_image_encoder, build_tiny_text_encoder

    root = tmp_path_factory.mktemp("baseline")
    return build_tiny_image_encoder(root / "cnn"), build_tiny_text_encoder(root / "bert")


@pytest.fixture(scope="module")
def demo_run(
    tiny_clip_path: Path,
    random_clip: Path,
    baseline_encoders: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("eval") / "report"
    image_encoder, text_encoder = baseline_encoders
    result = CliRunner().invoke(
        app,
        [
            "eval", "--demo",
            "--model", str(tiny_clip_path), "--model", str(random_clip),
            "--baseline-image", str(image_encoder), "--baseline-text", str(text_encoder),
            "--out", str(out), "--bootstrap", "300", "--device", "cpu", "--quiet",
        ],
    )  # fmt: skip
    return result, out


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _model(metrics: dict, path: Path) -> dict:
    (entry,) = [m for m in metrics["models"] if m["name"] == path.name]
    return entry


def test_demo_command_writes_every_output(demo_run: tuple[object, Path]) -> None:
    result, out = demo_run
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    for name in ("report.html", "report.md", "per_query.csv", "labels.csv", "validation_issues.csv", "metrics.json"):
        assert (out / name).is_file(), name
    assert "Recall@5" in result.output and "report.html" in result.output  # type: ignore[attr-defined]


def test_trained_model_is_well_above_chance_and_random_model_is_not(
    demo_run: tuple[object, Path], tiny_clip_path: Path, random_clip: Path
) -> None:
    _, out = demo_run
    metrics = _metrics(out)
    trained = _model(metrics, tiny_clip_path)
    untrained = _model(metrics, random_clip)
    assert trained["queries"] == untrained["queries"] == 75 and trained["gallery"] == 40
    assert trained["chance_recall@5"] == pytest.approx(CHANCE_AT_5)
    # Well above chance: the whole 95% interval is at least twice chance.
    assert trained["recall@5"]["low"] > 2 * CHANCE_AT_5, trained
    # Random weights: not distinguishable from chance by much.
    assert untrained["recall@5"]["value"] < 2 * CHANCE_AT_5, untrained
    assert untrained["recall@5"]["low"] <= CHANCE_AT_5 + 0.05
    assert trained["mrr"]["value"] > untrained["mrr"]["value"]
    assert trained["median_rank"]["value"] < untrained["median_rank"]["value"]
    for entry in (trained, untrained):
        assert 0.0 <= entry["ndcg@10"]["low"] <= entry["ndcg@10"]["value"] <= entry["ndcg@10"]["high"] <= 1.0
        assert entry["ndcg_queries"] > 10


def test_recall_agrees_with_an_independent_computation(demo_run: tuple[object, Path], tiny_clip_path: Path) -> None:
    """Embed the demo test set directly and rank with numpy: the report's numbers must match."""
    from core.embedding import ClipEmbedder
    from core.images import load_rgb, make_derivative
    from core.policy import check_query

    _, out = demo_run
    queries = pd.read_csv(DEMO_DIR / "test_queries.csv", sep="|", index_col=0)
    gallery = sorted(p.name for p in (DEMO_DIR / "test_images").iterdir())
    queries = queries[queries["image"].isin(gallery)]
    queries = queries[[not check_query(t).blocked for t in queries["query_text"]]]
    embedder = ClipEmbedder(str(tiny_clip_path), device="cpu")
    images = embedder.embed_images([make_derivative(load_rgb(DEMO_DIR / "test_images" / g)) for g in gallery])
    texts = embedder.embed_texts(list(queries["query_text"]))
    scores = texts @ images.T
    target = np.array([gallery.index(i) for i in queries["image"]])
    target_scores = scores[np.arange(len(target)), target]
    ranks = 1 + (scores > target_scores[:, None]).sum(axis=1) + (scores == target_scores[:, None]).sum(axis=1) - 1

    per_query = pd.read_csv(out / "per_query.csv")
    mine = per_query[(per_query["model"] == tiny_clip_path.name) & ~per_query["blocked"]].set_index("query_id")
    assert sorted(mine.index) == sorted(queries["query_id"])
    expected = pd.Series(ranks, index=queries["query_id"])
    # Ranks can differ by one where two images score within float error of each other.
    assert (mine.loc[expected.index, "rank"].to_numpy() - expected.to_numpy()).__abs__().max() <= 1
    assert mine["hit_at_5"].mean() == pytest.approx(
        _model(_metrics(out), tiny_clip_path)["recall@5"]["value"], abs=1e-6
    )
    assert abs(np.mean(ranks <= 5) - mine["hit_at_5"].mean()) <= 2 / len(ranks)


def test_policy_and_minors_counts_on_the_demo_set(demo_run: tuple[object, Path]) -> None:
    _, out = demo_run
    metrics = _metrics(out)
    test = metrics["minors"]["test"]
    # The demo plants 5 child captions among the test queries (2 images with two each, one with
    # one) and one ordinary caption of a child's image that no text policy can block.
    assert test["blocked (disclaimer shown)"] == 5
    assert test["missed (child target, not blocked)"] == 1
    assert test["over-blocked"] == 0
    assert test["policy accuracy"] == pytest.approx(80 / 81, abs=1e-4)
    assert metrics["test_counts"] == {
        "test queries": 81,
        "blocked by the policy (disclaimer)": 5,
        "target image missing or unreadable": 1,
        "evaluated": 75,
        "gallery images": 40,
    }
    for table in ("train_rows", "judged_pairs"):
        minors = metrics["minors"][table]
        assert minors["removed_query_describes_child"] > 0 and minors["removed_image_depicts_child"] > 0
        assert minors["distinct_child_images"] == 2
    funnel = metrics["training_funnel"]
    assert funnel["removed: minors rule"] == metrics["minors"]["judged_pairs"]["removed_total"]
    assert funnel["removed: uninformative query"] > 0
    assert funnel["removed: duplicate query for the same image"] > 0

    per_query = pd.read_csv(out / "per_query.csv")
    blocked = per_query[per_query["blocked"]]
    assert len(blocked) == 5 * 3  # every model lists the blocked queries, without a rank
    assert blocked["rank"].isna().all()
    assert (per_query.groupby("model").size() == 80).all()


def test_baseline_is_trained_and_evaluated(demo_run: tuple[object, Path]) -> None:
    _, out = demo_run
    metrics = _metrics(out)
    (baseline,) = [m for m in metrics["models"] if m["kind"] == "baseline"]
    assert baseline["error"] is None
    assert baseline["queries"] == 75
    assert 0.0 <= baseline["recall@5"]["value"] <= 1.0
    assert any("cross-fitting" in note for note in baseline["notes"])
    # The imputation used the first CLIP model's similarity and reports its held-out error.
    for quality in metrics["imputation"]:
        assert "ridge on the known side + similarity" in quality["candidates"]
        assert quality["n_training_pairs"] > 50
        assert quality["mae"] == min(quality["candidates"].values())


def test_report_is_self_contained_and_complete(demo_run: tuple[object, Path], tiny_clip_path: Path) -> None:
    _, out = demo_run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6
    assert not re.search(r"""(src|href)=['"]https?:""", html), "the report must open offline"
    for heading in (
        "Model comparison",
        "Data checks",
        "Annotations",
        "Relevance labels",
        "Query text cleaning",
        "The minors rule",
    ):
        assert heading in html
    for text in (tiny_clip_path.name, "chance (random ranking)", "Krippendorff", "bom", "missing_image", "nDCG@10"):
        assert text in html, text
    markdown = (out / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", markdown)
    assert len(figures) >= 6
    for figure in figures:
        assert (out / figure).stat().st_size > 1000
    assert "| chance (random ranking) |" in markdown
    labels = pd.read_csv(out / "labels.csv")
    assert {"relevance", "relevant", "expert_imputed", "crowd_imputed"} <= set(labels.columns)
    assert labels["relevance"].between(0, 1).all()


def test_a_broken_dataset_still_gives_a_report(tiny_clip_path: Path, tmp_path: Path) -> None:
    """No crowd file, an unreadable test image and a missing train image: reported, never raised."""
    from evaluation import EvaluationConfig, ModelSpec, run_evaluation

    root = tmp_path / "broken"
    shutil.copytree(DEMO_DIR, root)
    (root / "CrowdAnnotations.tsv").unlink()
    broken_test = sorted((root / "test_images").iterdir())[0]
    broken_test.write_bytes(b"\xff\xd8 this is not a complete jpeg")
    sorted((root / "train_images").iterdir())[0].unlink()

    result = run_evaluation(
        EvaluationConfig(
            dataset_dir=root, out_dir=tmp_path / "out", models=[ModelSpec.clip(str(tiny_clip_path))],
            device="cpu", bootstrap_resamples=50, progress=False,
        )
    )  # fmt: skip
    kinds = result.validation.kinds()
    assert kinds["missing_file"] == 1 and kinds["unreadable_image"] == 1 and kinds["missing_image"] >= 1
    assert result.gallery == sorted(p.name for p in (root / "test_images").iterdir() if p != broken_test)
    (model,) = result.models
    assert model.error is None and model.retrieval is not None
    assert model.retrieval.gallery_size == 39
    # With no crowd side nothing can be learnt: the expert side is used as is, and the report says so.
    assert "fewer than" in result.labels.imputation[0].note
    assert result.report_html is not None and result.report_html.is_file()


def test_an_unloadable_model_is_reported_and_the_command_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--demo",
            "--model",
            str(tmp_path / "no-such-model"),
            "--out",
            str(out),
            "--quiet",
            "--bootstrap",
            "10",
        ],
    )
    assert result.exit_code == 1
    assert "no-such-model" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "no-such-model" in metrics["models"][0]["error"]
    assert "error: " in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "DATASET_DIR"),
        (["somewhere", "--demo"], "not both"),
        (["--demo", "--baseline-image", "x"], "--baseline-text"),
        (["--demo", "--baseline-image", "x", "--baseline-text", "y", "--baseline-head", "svm"], "ridge or mlp"),
        (["/no/such/dataset"], "does not exist"),
        (["--demo", "--model", "clip-ViT-B-32+"], "IMAGE_MODEL+TEXT_MODEL"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_clip_with_a_separate_text_model_is_evaluated_as_one_model(
    tiny_clip_path: Path, random_clip: Path, tmp_path: Path
) -> None:
    """`--model IMAGE+TEXT`: the image tower of one model, queries embedded by the other, once the text model is
    in the image model's space (the start-up check); one from another space is reported, not evaluated."""
    import shutil

    text_tower = shutil.copytree(tiny_clip_path, tmp_path / "text-tower")  # the same space, under another name
    out = tmp_path / "out"
    arguments = ["eval", "--demo", "--model", str(tiny_clip_path), "--out", str(out), "--quiet", "--bootstrap", "10"]
    result = CliRunner().invoke(app, [*arguments, "--model", f"{tiny_clip_path}+{text_tower}"])
    assert result.exit_code == 0, result.output
    models = {m["name"]: m for m in json.loads((out / "metrics.json").read_text())["models"]}
    paired = f"{tiny_clip_path.name} + {text_tower.name}"
    assert set(models) == {tiny_clip_path.name, paired}
    # Queries from the same text tower, loaded as a separate model, rank exactly as the model's own.
    assert models[paired]["recall@5"]["value"] == pytest.approx(models[tiny_clip_path.name]["recall@5"]["value"])

    foreign = CliRunner().invoke(app, [*arguments, "--model", f"{tiny_clip_path}+{random_clip}"])
    assert foreign.exit_code != 0
    assert "not in the embedding space" in foreign.output
