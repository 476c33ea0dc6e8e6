"""One relevance label per (image, query) pair from expert scores and crowd votes.

The label, documented here once and shown in the report:

* **Expert score** (1..4): the majority of the three experts when at least two agree;
  otherwise (all three differ, or only two scores and they differ) the mean of the scores.
  Mapped to [0, 1] as ``(score - 1) / 3``.
* **Crowd score**: the share of crowd workers who said the caption matches, already in [0, 1].
* **Blend**: ``relevance = w * expert + (1 - w) * crowd`` with ``w = 0.6`` by default. Experts
  are trained and use a graded scale, so they weigh more; the crowd adds more voters per pair,
  so it still counts. A pair is *relevant* when ``relevance >= 0.5``.
* **Imputation**: a pair judged by only one side gets the other side predicted by a small
  model (ridge regression on the known score, the model's image-text similarity when one is
  given, and their squares and product) trained on the pairs judged by both. Its quality is
  measured by k-fold cross-validation on those pairs and reported next to two naive
  predictors (the training mean, and the known side taken as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from evaluation.dataset import EXPERT_COLUMNS, EXPERT_MAX, EXPERT_MIN

DEFAULT_EXPERT_WEIGHT = 0.6
RELEVANT_THRESHOLD = 0.5
MIN_PAIRS_FOR_IMPUTATION = 10


def aggregate_expert_scores(scores: np.ndarray) -> np.ndarray:
    """Per row of ``scores`` (n, experts; NaN = missing): the majority score, ties by the mean.

    ``[4, 4, 1] -> 4``; ``[1, 2, 4] -> 2.333``; ``[2, NaN, 3] -> 2.5``; ``[3, NaN, NaN] -> 3``;
    a row with no score gives NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError("scores must be a 2-d array (pairs, experts)")
    out = np.full(scores.shape[0], np.nan)
    for i, row in enumerate(scores):
        valid = row[~np.isnan(row)]
        if valid.size == 0:
            continue
        values, counts = np.unique(valid, return_counts=True)
        best = counts.max()
        # A majority needs strictly more than half the available votes; otherwise it is a tie.
        if best * 2 > valid.size:
            out[i] = values[counts.argmax()]
        else:
            out[i] = valid.mean()
    return out


def expert_to_unit(score: np.ndarray | float) -> np.ndarray | float:
    """Map the 1..4 expert scale onto [0, 1]."""
    return (np.asarray(score, dtype=np.float64) - EXPERT_MIN) / (EXPERT_MAX - EXPERT_MIN)


def blend(expert_unit: np.ndarray, crowd_share: np.ndarray, expert_weight: float = DEFAULT_EXPERT_WEIGHT) -> np.ndarray:
    """The documented blend of the two [0, 1] scores."""
    if not 0.0 <= expert_weight <= 1.0:
        raise ValueError("expert_weight must be in [0, 1]")
    return expert_weight * np.asarray(expert_unit, dtype=np.float64) + (1.0 - expert_weight) * np.asarray(
        crowd_share, dtype=np.float64
    )


def merge_annotations(expert: pd.DataFrame, crowd: pd.DataFrame) -> pd.DataFrame:
    """Outer join of the two sides on (image, query_id), with ``has_expert``/``has_crowd`` and
    the aggregated expert score (``expert_score``, 1..4, and ``expert_unit``, 0..1)."""
    left = expert[["image", "query_id", *EXPERT_COLUMNS]].copy()
    left["has_expert"] = True
    right = crowd[["image", "query_id", "crowd_share", "crowd_yes", "crowd_no"]].copy()
    right["has_crowd"] = True
    merged = left.merge(right, on=["image", "query_id"], how="outer")
    merged["has_expert"] = merged["has_expert"].astype("boolean").fillna(False).astype(bool)
    merged["has_crowd"] = merged["has_crowd"].astype("boolean").fillna(False).astype(bool)
    for column in (*EXPERT_COLUMNS, "crowd_share", "crowd_yes", "crowd_no"):
        merged[column] = pd.to_numeric(merged[column], errors="coerce").astype(np.float64)
    merged["expert_score"] = aggregate_expert_scores(merged[list(EXPERT_COLUMNS)].to_numpy())
    merged["expert_unit"] = expert_to_unit(merged["expert_score"].to_numpy())
    return merged.sort_values(["image", "query_id"]).reset_index(drop=True)


@dataclass(frozen=True)
class ImputationQuality:
    """Held-out quality of one imputation direction (all errors on the [0, 1] scale)."""

    target: str  # "crowd_share" or "expert_unit"
    features: tuple[str, ...]
    n_training_pairs: int
    n_imputed: int
    folds: int
    mae: float
    rmse: float
    spearman: float
    mae_predict_mean: float
    mae_known_side_as_is: float
    note: str = ""


@dataclass
class RelevanceLabels:
    """The per-pair table and how it was made."""

    pairs: pd.DataFrame
    expert_weight: float
    threshold: float
    imputation: list[ImputationQuality] = field(default_factory=list)

    def coverage(self) -> dict[str, int]:
        p = self.pairs
        return {
            "pairs": len(p),
            "expert_and_crowd": int((p["has_expert"] & p["has_crowd"]).sum()),
            "expert_only": int((p["has_expert"] & ~p["has_crowd"]).sum()),
            "crowd_only": int((~p["has_expert"] & p["has_crowd"]).sum()),
        }


def _features(known: np.ndarray, similarity: np.ndarray | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if similarity is None:
        return known[:, None], ("known",)
    missing = np.isnan(similarity)
    # A pair whose similarity cannot be computed (missing image or text) gets the mean plus a flag.
    fill = float(np.nanmean(similarity)) if (~missing).any() else 0.0
    sim = np.where(missing, fill, similarity)
    return np.column_stack([known, sim, missing.astype(np.float64)]), ("known", "similarity", "similarity_missing")


def _imputer(seed: int) -> object:
    # Degree-2 terms let the model bend (crowd shares saturate at 0 and 1); ridge keeps it stable
    # on the few hundred pairs that have both sides.
    return make_pipeline(PolynomialFeatures(degree=2, include_bias=False), StandardScaler(), Ridge(alpha=1.0, random_state=seed))


def _fit_direction(
    pairs: pd.DataFrame,
    known_col: str,
    target_col: str,
    known_mask: pd.Series,
    similarity: np.ndarray | None,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, ImputationQuality]:
    """Cross-validate, then fit on all pairs with both sides and predict the missing target."""
    both = (pairs["has_expert"] & pairs["has_crowd"]).to_numpy()
    to_fill = (known_mask & pairs[target_col].isna()).to_numpy()
    known = pairs[known_col].to_numpy(dtype=np.float64)
    target = pairs[target_col].to_numpy(dtype=np.float64)
    features, names = _features(known, similarity)
    predictions = np.full(len(pairs), np.nan)

    x, y = features[both], target[both]
    n_folds = min(folds, len(y))
    if len(y) < MIN_PAIRS_FOR_IMPUTATION or np.unique(y).size < 2:
        # Too little to learn from: the known side itself is the most honest guess.
        predictions[to_fill] = known[to_fill]
        identity_mae = float(np.mean(np.abs(known[both] - y))) if len(y) else float("nan")
        return predictions, ImputationQuality(
            target_col, names, int(len(y)), int(to_fill.sum()), 0, identity_mae, float("nan"), float("nan"),
            float(np.mean(np.abs(y - y.mean()))) if len(y) else float("nan"), identity_mae,
            note=f"fewer than {MIN_PAIRS_FOR_IMPUTATION} pairs with both sides (or a constant target): "
            "the known side is used as is",
        )  # fmt: skip

    held_out = np.empty_like(y)
    mean_baseline = np.empty_like(y)
    for train_idx, test_idx in KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x):
        model = _imputer(seed)
        model.fit(x[train_idx], y[train_idx])  # type: ignore[attr-defined]
        held_out[test_idx] = np.clip(model.predict(x[test_idx]), 0.0, 1.0)  # type: ignore[attr-defined]
        mean_baseline[test_idx] = y[train_idx].mean()
    errors = held_out - y
    rho = spearmanr(held_out, y).statistic if np.ptp(held_out) > 0 else float("nan")

    model = _imputer(seed)
    model.fit(x, y)  # type: ignore[attr-defined]
    if to_fill.any():
        predictions[to_fill] = np.clip(model.predict(features[to_fill]), 0.0, 1.0)  # type: ignore[attr-defined]
    return predictions, ImputationQuality(
        target=target_col,
        features=names,
        n_training_pairs=int(len(y)),
        n_imputed=int(to_fill.sum()),
        folds=n_folds,
        mae=float(np.mean(np.abs(errors))),
        rmse=float(np.sqrt(np.mean(errors**2))),
        spearman=float(rho),
        mae_predict_mean=float(np.mean(np.abs(mean_baseline - y))),
        mae_known_side_as_is=float(np.mean(np.abs(x[:, 0] - y))),
    )


def build_relevance_labels(
    expert: pd.DataFrame,
    crowd: pd.DataFrame,
    *,
    similarity: pd.Series | None = None,
    expert_weight: float = DEFAULT_EXPERT_WEIGHT,
    threshold: float = RELEVANT_THRESHOLD,
    folds: int = 5,
    seed: int = 0,
) -> RelevanceLabels:
    """Merge both sides, impute the missing side, and blend into ``relevance`` / ``relevant``.

    ``similarity`` (optional) is a model's image-text cosine indexed by (image, query_id); pairs
    without one are flagged to the imputer rather than dropped.

    Columns added: ``expert_unit_filled``, ``crowd_share_filled``, ``expert_imputed``,
    ``crowd_imputed``, ``similarity``, ``relevance`` (0..1) and ``relevant`` (bool).
    """
    pairs = merge_annotations(expert, crowd)
    sim: np.ndarray | None = None
    if similarity is not None:
        index = pd.MultiIndex.from_frame(pairs[["image", "query_id"]])
        sim = similarity.reindex(index).to_numpy(dtype=np.float64)
        if np.isnan(sim).all():
            sim = None
    pairs["similarity"] = sim if sim is not None else np.nan

    crowd_pred, crowd_quality = _fit_direction(pairs, "expert_unit", "crowd_share", pairs["has_expert"], sim, folds, seed)
    expert_pred, expert_quality = _fit_direction(pairs, "crowd_share", "expert_unit", pairs["has_crowd"], sim, folds, seed)

    pairs["crowd_imputed"] = pairs["has_expert"] & ~pairs["has_crowd"]
    pairs["expert_imputed"] = pairs["has_crowd"] & ~pairs["has_expert"]
    pairs["crowd_share_filled"] = pairs["crowd_share"].where(~pairs["crowd_imputed"], crowd_pred)
    pairs["expert_unit_filled"] = pairs["expert_unit"].where(~pairs["expert_imputed"], expert_pred)
    pairs["relevance"] = blend(pairs["expert_unit_filled"].to_numpy(), pairs["crowd_share_filled"].to_numpy(), expert_weight)
    pairs["relevant"] = pairs["relevance"] >= threshold
    return RelevanceLabels(pairs=pairs, expert_weight=expert_weight, threshold=threshold, imputation=[crowd_quality, expert_quality])
