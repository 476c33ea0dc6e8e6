"""The evaluation report: one self-contained HTML file and a Markdown twin, plus CSV/JSON outputs.

Both documents are rendered from the same list of blocks, so they never disagree. The HTML
embeds its plots as base64 PNGs (open it anywhere, offline); the Markdown links the same PNGs
from ``figures/``.

Files written into the output folder::

    report.html  report.md  figures/*.png
    per_query.csv        one row per (model, test query): rank, hits, top results; blocked queries too
    labels.csv           one row per judged pair: expert/crowd scores, imputations, blended relevance
    validation_issues.csv  every problem the loaders found
    metrics.json         the headline numbers
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from evaluation.dataset import EXPERT_COLUMNS
from evaluation.metrics import RECALL_KS
from evaluation.results import EvaluationResult, ModelResult, write_metrics_json


@dataclass
class Block:
    """One piece of the report: a heading, a paragraph, a table or a figure."""

    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure" | "list"
    text: str = ""
    table: pd.DataFrame | None = None
    figure: str = ""  # file name under figures/
    png: bytes = b""
    items: tuple[str, ...] = ()


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        if math.isnan(float(value)):
            return "n/a"
        return f"{float(value):.{digits}f}"
    return str(value)


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- figures


def _fig_expert_scores(result: EvaluationResult) -> bytes:
    dist = result.distributions
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    width = 0.25
    for i, column in enumerate(EXPERT_COLUMNS):
        counts = dist[column]
        axes[0].bar(np.array(counts.index) + (i - 1) * width, counts.to_numpy(), width, label=column.replace("_", " "))
    axes[0].set_xticks([1, 2, 3, 4])
    axes[0].set_xlabel("expert score (1 = no match, 4 = full match)")
    axes[0].set_ylabel("pairs")
    axes[0].set_title("Expert scores")
    axes[0].legend(fontsize=8)
    shares = pd.to_numeric(result.dataset.crowd["crowd_share"], errors="coerce").dropna()
    axes[1].hist(shares, bins=np.linspace(0, 1, 11), color="#4c72b0", edgecolor="white")
    axes[1].set_xlabel("share of crowd workers who said 'matches'")
    axes[1].set_ylabel("pairs")
    axes[1].set_title("Crowd shares")
    return _png(fig)


def _fig_agreement(result: EvaluationResult) -> bytes:
    agreement = result.expert_agreement
    names = ["3 experts"] + [k.replace("expert_", "e") for k in agreement.pairwise_alpha] + ["experts vs crowd"]
    values = [agreement.alpha_ordinal, *agreement.pairwise_alpha.values(), result.expert_crowd.alpha_interval]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    colours = ["#4c72b0"] * (len(values) - 1) + ["#dd8452"]
    axes[0].bar(names, [0 if math.isnan(v) else v for v in values], color=colours)
    axes[0].axhline(0.667, color="grey", linestyle="--", linewidth=1)
    axes[0].text(-0.4, 0.68, "0.667: tentative", ha="left", va="bottom", fontsize=7, color="grey")
    axes[0].set_ylim(min(0.0, *[v for v in values if not math.isnan(v)], 0.0) - 0.05, 1.0)
    axes[0].set_ylabel("Krippendorff's alpha")
    axes[0].set_title("Agreement (experts: ordinal; vs crowd: interval)")
    axes[0].tick_params(axis="x", labelsize=7, rotation=15)
    both = result.labels.pairs[result.labels.pairs["has_expert"] & result.labels.pairs["has_crowd"]]
    groups = [both.loc[np.isclose(both["expert_score"], s), "crowd_share"].to_numpy() for s in (1, 2, 3, 4)]
    labels = [f"{s}\n(n={len(g)})" for s, g in zip((1, 2, 3, 4), groups, strict=True)]
    non_empty = [(g, lab) for g, lab in zip(groups, labels, strict=True) if len(g)]
    if non_empty:
        axes[1].boxplot([g for g, _ in non_empty], tick_labels=[lab for _, lab in non_empty])
    axes[1].set_xlabel("aggregated expert score (pairs with a whole-number score)")
    axes[1].set_ylabel("crowd share")
    axes[1].set_title("Crowd share by expert score")
    return _png(fig)


def _fig_imputation(result: EvaluationResult) -> bytes:
    pairs = result.labels.pairs
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].hist(pairs["relevance"].dropna(), bins=np.linspace(0, 1, 21), color="#55a868", edgecolor="white")
    axes[0].axvline(result.labels.threshold, color="black", linestyle="--", linewidth=1)
    axes[0].set_xlabel("blended relevance")
    axes[0].set_ylabel("pairs")
    axes[0].set_title("Relevance labels (dashed: 'relevant' threshold)")
    kinds = {
        "both sides": pairs["has_expert"] & pairs["has_crowd"],
        "crowd imputed": pairs["crowd_imputed"],
        "expert imputed": pairs["expert_imputed"],
    }
    axes[1].bar(list(kinds), [int(mask.sum()) for mask in kinds.values()], color=["#4c72b0", "#dd8452", "#c44e52"])
    axes[1].set_ylabel("pairs")
    axes[1].set_title("Where each label's sides came from")
    return _png(fig)


def _fig_recall_curves(result: EvaluationResult) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    gallery = len(result.gallery)
    for model in _scored(result):
        assert model.curve is not None
        ax.plot(np.arange(1, len(model.curve) + 1), model.curve, marker="o", markersize=3, label=model.name)
    if gallery:
        ks = np.arange(1, min(50, gallery) + 1)
        ax.plot(ks, np.minimum(1.0, ks / gallery), color="grey", linestyle="--", label="chance")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Text-to-image Recall@k ({gallery} test images)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def rank_buckets(gallery: int) -> list[tuple[int, int]]:
    """Rank ranges for the rank plot: 1, 2-5, 6-10, 11-20, 21-50, ... up to the gallery size."""
    edges = [1, 2, 6, 11, 21, 51, 101, 201, 501, 1001, 2001, 5001, 10001]
    buckets = []
    for low, high in zip(edges, [*edges[1:], None], strict=True):
        if low > gallery:
            break
        top = gallery if high is None or high - 1 >= gallery else high - 1
        buckets.append((low, top))
        if top == gallery:
            break
    return buckets


def _fig_rank_distribution(result: EvaluationResult) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4))
    buckets = rank_buckets(max(1, len(result.gallery)))
    labels = [str(low) if low == high else f"{low}-{high}" for low, high in buckets]
    models = _scored(result)
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        assert model.ranks is not None
        shares = [np.mean((model.ranks >= low) & (model.ranks <= high)) for low, high in buckets]
        ax.bar(np.arange(len(buckets)) + (i - (len(models) - 1) / 2) * width, shares, width, label=model.name)
    ax.set_xticks(np.arange(len(buckets)), labels)
    ax.set_xlabel("rank of the target image (1 = first)")
    ax.set_ylabel("share of queries")
    ax.set_title("Where the target image lands")
    ax.legend(fontsize=8)
    return _png(fig)


def _fig_score_histograms(result: EvaluationResult) -> bytes:
    models = _scored(result)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        assert model.target_scores is not None and model.other_scores is not None
        both = np.concatenate([model.target_scores, model.other_scores])
        low, high = float(both.min()), float(both.max())
        bins = np.linspace(low, high if high > low else low + 1e-6, 31)
        ax.hist(model.other_scores, bins=bins, density=True, alpha=0.6, label="other images", color="#8c8c8c")
        ax.hist(model.target_scores, bins=bins, density=True, alpha=0.6, label="target image", color="#dd8452")
        ax.set_title(model.name, fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density")
    fig.suptitle("Scores of the target vs the other images, per query", y=1.04)
    return _png(fig)


def _scored(result: EvaluationResult) -> list[ModelResult]:
    return [m for m in result.models if m.retrieval is not None and m.ranks is not None and len(m.ranks)]


# --------------------------------------------------------------------------- tables


def comparison_table(result: EvaluationResult) -> pd.DataFrame:
    """Models x headline metrics (point estimate and 95% bootstrap interval), with a chance row."""
    rows: list[dict[str, str]] = []
    k = result.config.ndcg_k
    for model in result.models:
        row = {"model": model.name, "kind": model.spec.kind}
        if model.error:
            row["error"] = model.error
        if model.retrieval is not None:
            for r in RECALL_KS:
                row[f"Recall@{r}"] = model.retrieval.recall[r].format()
            row["MRR"] = model.retrieval.mrr.format()
            row["median rank"] = model.retrieval.median_rank.format(1)
        if model.ndcg is not None:
            row[f"nDCG@{k} (train, expert-judged)"] = model.ndcg.format()
        rows.append(row)
    gallery = len(result.gallery)
    if gallery:
        chance = {"model": "chance (random ranking)", "kind": ""}
        for r in RECALL_KS:
            chance[f"Recall@{r}"] = f"{min(1.0, r / gallery):.3f}"
        chance["MRR"] = f"{np.mean(1.0 / np.arange(1, gallery + 1)):.3f}"
        chance["median rank"] = f"{(gallery + 1) / 2:.1f}"
        if not math.isnan(result.chance_ndcg):
            chance[f"nDCG@{k} (train, expert-judged)"] = f"{result.chance_ndcg:.3f}"
        rows.append(chance)
    frame = pd.DataFrame(rows).fillna("")
    if "error" in frame:
        frame = frame[[c for c in frame.columns if c != "error"] + ["error"]]
    return frame


def _dict_table(data: Mapping[str, object], key: str = "what", value: str = "count") -> pd.DataFrame:
    return pd.DataFrame({key: [str(k).replace("_", " ") for k in data], value: [_fmt(v) for v in data.values()]})


def _imputation_table(result: EvaluationResult) -> pd.DataFrame:
    rows = []
    for q in result.labels.imputation:
        row: dict[str, object] = {
            "predicts": "crowd share (from experts)" if q.target == "crowd_share" else "expert score (from crowd)",
            "pairs to learn from": q.n_training_pairs,
            "pairs imputed": q.n_imputed,
            "imputer used": q.method,
            "held-out MAE": _fmt(q.mae),
            "RMSE": _fmt(q.rmse),
            "Spearman": _fmt(q.spearman),
            "MAE predicting the mean": _fmt(q.mae_predict_mean),
        }
        row.update({f"MAE: {name}": _fmt(value) for name, value in q.candidates.items()})
        row["note"] = q.note or f"{q.folds}-fold cross-validation"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _disagreement_table(frame: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    shown = frame.head(limit).copy()
    for column in shown.columns:
        if column in EXPERT_COLUMNS:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:g}")
        elif shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: _fmt(v, 2))
    return shown


# --------------------------------------------------------------------------- blocks


def build_blocks(result: EvaluationResult) -> list[Block]:
    """The report's content, in order."""
    config = result.config
    blocks: list[Block] = [Block("h1", config.title)]
    when = datetime.fromtimestamp(result.started, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks.append(
        Block(
            "p",
            f"Dataset: `{config.dataset_dir}`. Run at {when}, {result.seconds:.0f} s. "
            f"Models: {', '.join(m.name for m in result.models) or 'none (data analysis only)'}. "
            f"Intervals are 95% percentile bootstrap intervals over queries ({config.bootstrap_resamples} resamples).",
        )
    )

    # Headline.
    blocks.append(Block("h2", "1. Model comparison"))
    if result.models:
        blocks.append(
            Block(
                "p",
                f"Text-to-image retrieval over the {len(result.gallery)} test images: each test query has one target "
                f"image. {result.test_counts.get('evaluated', 0)} queries evaluated; "
                f"{result.test_policy.blocked} blocked by the content policy are counted in section 6 instead. "
                f"nDCG@{config.ndcg_k} ranks the expert-judged images of each train query (graded gains).",
            )
        )
        blocks.append(Block("table", table=comparison_table(result)))
        for model in result.models:
            notes = [*model.notes] + ([f"error: {model.error}"] if model.error else [])
            if notes:
                blocks.append(Block("list", text=model.name, items=tuple(notes)))
        if _scored(result):
            blocks.append(
                Block(
                    "figure",
                    "Recall@k per model; dashed: chance.",
                    figure="recall_at_k.png",
                    png=_fig_recall_curves(result),
                )
            )
            blocks.append(
                Block(
                    "figure",
                    "Rank of the target image per query.",
                    figure="rank_distribution.png",
                    png=_fig_rank_distribution(result),
                )
            )
            blocks.append(
                Block(
                    "figure",
                    "A model that separates the two distributions ranks well.",
                    figure="score_histograms.png",
                    png=_fig_score_histograms(result),
                )
            )
    else:
        blocks.append(Block("p", "No model was evaluated: pass --model (and/or the baseline options)."))

    # Data checks.
    blocks.append(Block("h2", "2. Data checks"))
    ds = result.dataset
    blocks.append(
        Block(
            "table",
            table=pd.DataFrame(
                {
                    "table": [
                        "train_dataset.csv",
                        "CrowdAnnotations.tsv",
                        "ExpertAnnotations.tsv",
                        "test_queries.csv",
                        "train_images/",
                        "test_images/",
                    ],
                    "rows / files kept": [
                        len(ds.train),
                        len(ds.crowd),
                        len(ds.expert),
                        len(ds.test_queries),
                        len(ds.train_image_files),
                        len(ds.test_image_files),
                    ],
                }
            ),
        )
    )
    summary = result.validation.summary()
    if len(summary):
        blocks.append(
            Block(
                "p",
                "Problems found (each repaired, kept or dropped as its message says; "
                "all are in validation_issues.csv):",
            )
        )
        blocks.append(Block("table", table=summary))
    else:
        blocks.append(Block("p", "No problems found in the files."))

    # Annotations.
    blocks.append(Block("h2", "3. Annotations"))
    blocks.append(Block("h3", "Coverage"))
    blocks.append(Block("table", table=_dict_table(result.coverage, "pairs", "count")))
    blocks.append(
        Block("figure", "Score distributions.", figure="score_distributions.png", png=_fig_expert_scores(result))
    )
    blocks.append(Block("h3", "Agreement"))
    ea, ec = result.expert_agreement, result.expert_crowd
    agreement_rows = {
        "Krippendorff's alpha, 3 experts (ordinal)": ea.alpha_ordinal,
        **{f"alpha, {k.replace('_', ' ')} (ordinal)": v for k, v in ea.pairwise_alpha.items()},
        "experts unanimous (share of pairs)": ea.unanimous_share,
        "experts 2+ points apart (share of pairs)": ea.spread_two_or_more_share,
        "expert vs crowd: pairs with both": ec.n_pairs,
        "expert vs crowd: Spearman": ec.spearman,
        "expert vs crowd: Pearson": ec.pearson,
        "expert vs crowd: Krippendorff's alpha (interval, both on 0..1)": ec.alpha_interval,
        "expert vs crowd: same side of 0.5": ec.binary_agreement,
        "expert vs crowd: Cohen's kappa at 0.5": ec.binary_kappa,
    }
    blocks.append(Block("table", table=_dict_table(agreement_rows, "measure", "value")))
    blocks.append(
        Block(
            "p", "Alpha reads as: 1 perfect agreement, 0 no better than chance; 0.8+ is reliable, 0.667-0.8 tentative."
        )
    )
    blocks.append(Block("figure", "Agreement.", figure="agreement.png", png=_fig_agreement(result)))
    for key, title in (
        ("experts", "experts 2+ points apart"),
        ("expert_vs_crowd", "experts and crowd 0.5+ apart (0..1 scale)"),
    ):
        frame = result.disagreements[key]
        shown = f"{len(frame)} pairs" + (", the 10 largest shown" if len(frame) > 10 else "")
        blocks.append(Block("h3", f"Disagreements: {title} ({shown})"))
        if len(frame):
            blocks.append(Block("table", table=_disagreement_table(frame)))
        else:
            blocks.append(Block("p", "None."))

    # Labels.
    blocks.append(Block("h2", "4. Relevance labels"))
    labels = result.labels
    blocks.append(
        Block(
            "p",
            "Experts: the majority score when at least two of three agree, otherwise the mean; mapped to 0..1 as "
            f"(score - 1) / 3. Crowd: the share of workers who said the caption matches. Blend: relevance = "
            f"{labels.expert_weight:g} x expert + {1 - labels.expert_weight:g} x crowd; relevant when relevance >= "
            f"{labels.threshold:g}. A pair judged by one side only gets the other side from the imputer with the "
            "lowest cross-validated error on the pairs judged by both: the known side as is, a ridge model on "
            "the known side, or one that also uses "
            + (
                f"{result.labels_similarity_model}'s image-text similarity"
                if result.labels_similarity_model
                else "a model's similarity (no model given)"
            )
            + ". Every candidate's held-out error is below.",
        )
    )
    pairs = labels.pairs
    blocks.append(
        Block(
            "table",
            table=_dict_table(
                {
                    "labelled pairs": len(pairs),
                    "relevant (share)": float(pairs["relevant"].mean()) if len(pairs) else float("nan"),
                    "mean relevance": float(pairs["relevance"].mean()) if len(pairs) else float("nan"),
                    "crowd side imputed": int(pairs["crowd_imputed"].sum()),
                    "expert side imputed": int(pairs["expert_imputed"].sum()),
                },
                "labels",
                "value",
            ),
        )
    )
    blocks.append(Block("table", table=_imputation_table(result)))
    blocks.append(Block("figure", "Labels.", figure="labels.png", png=_fig_imputation(result)))

    # Text cleaning.
    blocks.append(Block("h2", "5. Query text cleaning"))
    blocks.append(
        Block(
            "p",
            "Texts are compared after normalisation (Unicode NFKC, lower case, single spaces, no space before "
            "punctuation, no final full stop). Near duplicates: different texts with the same content words (up to a "
            "plural s, word order and stop words). "
            "Uninformative: fewer than 3 words, or no content word (stop words and words like 'photo' do not count). "
            "Duplicates and uninformative queries are dropped from the baseline's training set (section 7); "
            "test queries are only reported.",
        )
    )
    train_summary, test_summary = result.train_text.summary(), result.test_text.summary()
    text_rows: list[tuple[str, int | str, int | str]] = [
        (key.replace("_", " "), train_summary[key], test_summary[key]) for key in train_summary
    ]
    text_rows.append(("test queries also in train (same normalised text)", "", result.test_queries_seen_in_train))
    blocks.append(Block("table", table=pd.DataFrame(text_rows, columns=["", "train", "test"])))
    examples = [f"uninformative: {q} ({reason})" for q, reason in list(result.train_text.uninformative.items())[:5]]
    examples += [f"exact duplicates: {', '.join(group)}" for group in result.train_text.exact_duplicate_groups[:5]]
    examples += [f"near duplicates: {a} ~ {b}" for a, b in result.train_text.near_duplicate_pairs[:5]]
    if examples:
        blocks.append(Block("list", text="Examples (train)", items=tuple(examples)))

    # Minors.
    blocks.append(Block("h2", "6. The minors rule"))
    blocks.append(
        Block(
            "p",
            "The service's own query policy (core.policy, rules version "
            f"{result.test_policy.rules_version}) decides. Training data: a pair is removed when its query "
            "describes a child or any caption of its image does. Test: a blocked query gets the disclaimer "
            "and is left out of the retrieval metrics. Policy accuracy compares blocking with whether the "
            "query's target image depicts a child (judged from all captions of that image): a miss is an "
            "unblocked query whose target depicts a child (left to the image moderation); over-blocking is "
            "a blocked query whose target does not.",
        )
    )
    minors = pd.DataFrame(
        {
            "train_dataset.csv rows": result.minors_train_rows.summary(),
            "judged pairs": result.minors_judged_pairs.summary(),
        }
    )
    minors.index = [str(name).replace("_", " ") for name in minors.index]
    blocks.append(Block("table", table=minors.reset_index(names="")))
    blocks.append(Block("table", table=_dict_table(result.test_policy.summary(), "test queries", "value")))
    blocks.append(Block("table", table=_dict_table(result.test_counts, "retrieval evaluation", "count")))

    # Training set.
    blocks.append(Block("h2", "7. The baseline's training set"))
    blocks.append(
        Block(
            "p",
            "The proof of concept's baseline (frozen image and text encoders joined by a ridge or MLP "
            "projection) trains on these pairs, weighted by relevance. Its nDCG on the train split is "
            "cross-fitted: each query is scored by a projection that never saw it or its duplicates.",
        )
    )
    blocks.append(Block("table", table=_dict_table(result.training_funnel, "step", "pairs")))

    # Method.
    blocks.append(Block("h2", "8. How the numbers are computed"))
    blocks.append(
        Block(
            "list",
            text="Definitions",
            items=(
                "Rank: 1 + images scoring higher than the target + other images scoring the same (ties count "
                "against the model, so a constant scorer ranks every target last).",
                "Recall@k: share of queries whose target is in the top k. MRR: mean of 1/rank. Median rank: "
                "median over queries.",
                f"nDCG@{config.ndcg_k}: per train query, its expert-judged images ranked by the model; gain = "
                "aggregated expert score - 1 (0..3), DCG = sum gain / log2(position + 1), divided by the ideal DCG; "
                "queries with fewer than two judged images or no positive gain are skipped.",
                "Images are prepared as the service indexes them: EXIF-upright RGB, shorter side to 224, centre crop.",
                "Files: per_query.csv, labels.csv, validation_issues.csv, metrics.json next to this report.",
            ),
        )
    )
    return blocks


# --------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #4c72b0;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f3f8}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[Block], title: str) -> str:
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
    ]
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            out.append(f"<{block.kind}>{_inline(block.text)}</{block.kind}>")
        elif block.kind == "p":
            out.append(f"<p>{_inline(block.text)}</p>")
        elif block.kind == "table" and block.table is not None:
            out.append(_html_table(block.table))
        elif block.kind == "figure":
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f"<figure><img alt='{html.escape(block.figure)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{_inline(block.text)}</figcaption></figure>"
            )
        elif block.kind == "list":
            items = "".join(f"<li>{_inline(i)}</li>" for i in block.items)
            out.append(f"<p><strong>{_inline(block.text)}</strong></p><ul>{items}</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _md_cell(value: object) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.text}\n")
        elif block.kind == "h2":
            out.append(f"## {block.text}\n")
        elif block.kind == "h3":
            out.append(f"### {block.text}\n")
        elif block.kind == "p":
            out.append(block.text + "\n")
        elif block.kind == "table" and block.table is not None:
            frame = block.table
            out.append("| " + " | ".join(_md_cell(c) for c in frame.columns) + " |")
            out.append("|" + "---|" * len(frame.columns))
            for row in frame.itertuples(index=False):
                out.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
            out.append("")
        elif block.kind == "figure":
            out.append(f"![{block.text}](figures/{block.figure})\n")
        elif block.kind == "list":
            out.append(f"**{block.text}**\n")
            out.extend(f"- {item}" for item in block.items)
            out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- files


def per_query_frame(result: EvaluationResult) -> pd.DataFrame:
    """All models' per-query rows, plus the blocked queries (no rank: the service shows the disclaimer)."""
    frames = []
    blocked = result.test_frame[result.test_frame["blocked"]]
    for model in result.models:
        if model.per_query is None:
            continue
        frames.append(model.per_query)
        if len(blocked):
            frames.append(
                pd.DataFrame(
                    {
                        "model": model.name,
                        "query_id": blocked["query_id"],
                        "query_text": blocked["query_text"],
                        "target_image": blocked["image"],
                        "blocked": True,
                        "target_depicts_child": blocked["target_depicts_child"],
                        "policy_terms": blocked["policy_terms"],
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["model", "query_id", "query_text", "target_image", "blocked", "rank"])
    return pd.concat(frames, ignore_index=True)


def write_outputs(result: EvaluationResult) -> None:
    """Write the report, figures, CSVs and metrics.json; sets the paths on ``result``."""
    out = Path(result.config.out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(result)
    for block in blocks:
        if block.kind == "figure":
            (figures / block.figure).write_bytes(block.png)
    result.report_html = out / "report.html"
    result.report_md = out / "report.md"
    result.per_query_csv = out / "per_query.csv"
    result.metrics_json = out / "metrics.json"
    result.report_html.write_text(render_html(blocks, result.config.title), encoding="utf-8")
    result.report_md.write_text(render_markdown(blocks), encoding="utf-8")
    per_query_frame(result).to_csv(result.per_query_csv, index=False)
    result.labels.pairs.to_csv(out / "labels.csv", index=False)
    result.validation.to_frame().to_csv(out / "validation_issues.csv", index=False)
    write_metrics_json(result, result.metrics_json)
