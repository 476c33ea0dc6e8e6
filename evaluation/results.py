"""What an evaluation run is given and what it finds: the types that the runner fills and the report renders.

A module of its own so that :mod:`evaluation.runner` (which computes a result) and :mod:`evaluation.report`
(which renders one) both import these types, and neither imports the other for them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import evaluation.annotations as ann
from evaluation.dataset import SeedDataset, ValidationReport
from evaluation.labels import DEFAULT_EXPERT_WEIGHT, RELEVANT_THRESHOLD, RelevanceLabels
from evaluation.metrics import Estimate, RetrievalSummary
from evaluation.minors import TestPolicyReport, TrainMinorsReport
from evaluation.models import ModelSpec
from evaluation.text import TextCleaningReport


@dataclass
class EvaluationConfig:
    """Everything a run needs; the CLI builds one from its options."""

    dataset_dir: Path
    out_dir: Path
    models: list[ModelSpec] = field(default_factory=list)
    device: str = "auto"
    cache_folder: str | None = None
    bootstrap_resamples: int = 1000
    seed: int = 0
    expert_weight: float = DEFAULT_EXPERT_WEIGHT
    relevant_threshold: float = RELEVANT_THRESHOLD
    ndcg_k: int = 10
    baseline_folds: int = 5
    own_caption_positives: bool = True
    progress: bool = True
    title: str = "With Sense photo search: offline evaluation"


@dataclass
class ModelResult:
    """The metrics of one model (``error`` set, and the rest empty, when it could not run)."""

    spec: ModelSpec
    retrieval: RetrievalSummary | None = None
    ndcg: Estimate | None = None
    ndcg_queries: int = 0
    curve: np.ndarray | None = None
    ranks: np.ndarray | None = None
    target_scores: np.ndarray | None = None
    other_scores: np.ndarray | None = None
    per_query: pd.DataFrame | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class EvaluationResult:
    """What a run found; :mod:`evaluation.report` renders it."""

    config: EvaluationConfig
    dataset: SeedDataset
    train_text: TextCleaningReport
    test_text: TextCleaningReport
    test_queries_seen_in_train: int
    expert_agreement: ann.ExpertAgreement
    expert_crowd: ann.ExpertCrowdAgreement
    distributions: dict[str, pd.Series]
    disagreements: dict[str, pd.DataFrame]
    coverage: dict[str, int]
    labels: RelevanceLabels
    labels_similarity_model: str | None
    minors_train_rows: TrainMinorsReport
    minors_judged_pairs: TrainMinorsReport
    training_funnel: dict[str, int]
    test_policy: TestPolicyReport
    test_frame: pd.DataFrame
    test_counts: dict[str, int]
    gallery: list[str]
    models: list[ModelResult]
    started: float
    chance_ndcg: float = float("nan")
    seconds: float = 0.0
    report_html: Path | None = None
    report_md: Path | None = None
    per_query_csv: Path | None = None
    metrics_json: Path | None = None

    @property
    def validation(self) -> ValidationReport:
        return self.dataset.report

    def model(self, name: str) -> ModelResult:
        for result in self.models:
            if result.name == name:
                return result
        raise KeyError(name)


def metrics_summary(result: EvaluationResult) -> dict[str, object]:
    """The headline numbers as plain JSON-able values (also written to metrics.json)."""
    models: list[dict[str, object]] = []
    for m in result.models:
        entry: dict[str, object] = {
            "name": m.name,
            "kind": m.spec.kind,
            "error": m.error,
            "seconds": round(m.seconds, 1),
        }
        if m.retrieval is not None:
            r = m.retrieval
            for k, est in r.recall.items():
                entry[f"recall@{k}"] = _est(est)
                entry[f"chance_recall@{k}"] = r.chance_recall(k)
            entry["mrr"] = _est(r.mrr)
            entry["median_rank"] = _est(r.median_rank)
            entry["queries"] = r.n_queries
            entry["gallery"] = r.gallery_size
        if m.ndcg is not None:
            entry[f"ndcg@{result.config.ndcg_k}"] = _est(m.ndcg)
            entry["ndcg_queries"] = m.ndcg_queries
        entry["notes"] = m.notes
        models.append(entry)
    return {
        "dataset": str(result.config.dataset_dir),
        "validation_issues": dict(result.validation.kinds()),
        "coverage": result.coverage,
        "expert_alpha_ordinal": _num(result.expert_agreement.alpha_ordinal),
        "expert_crowd_spearman": _num(result.expert_crowd.spearman),
        "label_blend": {"expert_weight": result.labels.expert_weight, "threshold": result.labels.threshold},
        "imputation": [
            {
                k: _num(v) if isinstance(v, float) else {n: _num(x) for n, x in v.items()} if isinstance(v, dict) else v
                for k, v in q.__dict__.items()
            }
            for q in result.labels.imputation
        ],
        "text_cleaning": {"train": result.train_text.summary(), "test": result.test_text.summary()},
        "minors": {
            "train_rows": result.minors_train_rows.summary(),
            "judged_pairs": result.minors_judged_pairs.summary(),
            "test": result.test_policy.summary(),
        },
        "training_funnel": result.training_funnel,
        "test_counts": result.test_counts,
        f"chance_ndcg@{result.config.ndcg_k}": _num(result.chance_ndcg),
        "models": models,
        "seconds": round(result.seconds, 1),
    }


def _num(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


def _est(estimate: Estimate) -> dict[str, float | None]:
    return {"value": _num(estimate.value), "low": _num(estimate.low), "high": _num(estimate.high)}


def write_metrics_json(result: EvaluationResult, path: Path) -> None:
    path.write_text(json.dumps(metrics_summary(result), indent=2, ensure_ascii=False))
