"""One relevance label per (image, query) pair from expert scores and crowd votes.

The label, documented here once and shown in the report:

* **Expert score** (1..4): the majority of the three experts when at least two agree;
  otherwise (all three differ, or only two scores and they differ) the mean of the scores.
  Mapped to [0, 1] as ``(score - 1) / 3``.
* **Crowd score**: the share of crowd workers who said the caption matches, already in [0, 1].
* **Blend**: ``relevance = w * expert + (1 - w) * crowd`` with ``w = 0.6`` by default. Experts
  are trained and use a graded scale, so they weigh more; the crowd adds more voters per pair,
  so it still counts. A pair is *relevant* when ``relevance >= 0.5``.
* **Imputation**: a pair judged by only one side gets the other side predicted from the pairs
  judged by both. Three imputers are compared by k-fold cross-validation on those pairs: the
  known side taken as is, a ridge regression on the known score (with its square), and a
  ridge regression that also uses a model's image-text similarity (squares and products
  included). The one with the lowest held-out MAE is used; every candidate's MAE is reported,
  next to the error of predicting the training mean.
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
    """Held-out quality of one imputation direction (all errors on the [0, 1] scale).

    ``candidates`` maps each imputer tried to its cross-validated MAE; ``method`` is the one
    chosen (lowest MAE) and used, and ``mae``/``rmse``/``spearman`` are its held-out scores.
    """

    target: str  # "crowd_share" or "expert_unit"
    method: str
    n_training_pairs: int
    n_imputed: int
    folds: int
    mae: float
    rmse: float
    spearman: float
    mae_predict_mean: float
    candidates: dict[str, float] = field(default_factory=dict)
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


AS_IS = "known side as is"
RIDGE_KNOWN = "ridge on the known side"
RIDGE_KNOWN_SIMILARITY = "ridge on the known side + similarity"


def _candidate_features(known: np.ndarray, similarity: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """Imputers to try, by name, with their feature matrices (None: use the known side as is)."""
    candidates: dict[str, np.ndarray | None] = {AS_IS: None, RIDGE_KNOWN: known[:, None]}
    if similarity is not None:
        missing = np.isnan(similarity)
        # A pair whose similarity cannot be computed (missing image or text) gets the mean plus a flag.
        fill = float(np.nanmean(similarity)) if (~missing).any() else 0.0
        sim = np.where(missing, fill, similarity)
        candidates[RIDGE_KNOWN_SIMILARITY] = np.column_stack([known, sim, missing.astype(np.float64)])
    return candidates


def _imputer(seed: int) -> object:
    # Degree-2 terms let the model bend (crowd shares saturate at 0 and 1); ridge keeps it stable
    # on the few hundred pairs that have both sides.
    return make_pipeline(
        PolynomialFeatures(degree=2, include_bias=False), StandardScaler(), Ridge(alpha=1.0, random_state=seed)
    )


def _cross_validated(
    features: np.ndarray | None, known: np.ndarray, y: np.ndarray, folds: KFold, seed: int
) -> np.ndarray:
    if features is None:
        return np.clip(known, 0.0, 1.0)
    predictions = np.empty_like(y)
    for train_idx, test_idx in folds.split(features):
        model = _imputer(seed)
        model.fit(features[train_idx], y[train_idx])  # type: ignore[attr-defined]
        predictions[test_idx] = np.clip(model.predict(features[test_idx]), 0.0, 1.0)  # type: ignore[attr-defined]
    return predictions


def _fit_direction(
    pairs: pd.DataFrame,
    known_col: str,
    target_col: str,
    known_mask: pd.Series,
    similarity: np.ndarray | None,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, ImputationQuality]:
    """Cross-validate each imputer on the pairs with both sides, keep the best, predict the missing target."""
    both = (pairs["has_expert"] & pairs["has_crowd"]).to_numpy()
    to_fill = (known_mask & pairs[target_col].isna()).to_numpy()
    known = pairs[known_col].to_numpy(dtype=np.float64)
    target = pairs[target_col].to_numpy(dtype=np.float64)
    candidates = _candidate_features(known, similarity)
    predictions = np.full(len(pairs), np.nan)
    y, known_both = target[both], known[both]

    if len(y) < MIN_PAIRS_FOR_IMPUTATION or np.unique(y).size < 2:
        # Too little to learn from: the known side itself is the most honest guess.
        predictions[to_fill] = known[to_fill]
        as_is_mae = float(np.mean(np.abs(known_both - y))) if len(y) else float("nan")
        return predictions, ImputationQuality(
            target=target_col, method=AS_IS, n_training_pairs=len(y), n_imputed=int(to_fill.sum()), folds=0,
            mae=as_is_mae, rmse=float(np.sqrt(np.mean((known_both - y) ** 2))) if len(y) else float("nan"),
            spearman=float("nan"), mae_predict_mean=float(np.mean(np.abs(y - y.mean()))) if len(y) else float("nan"),
            candidates={AS_IS: as_is_mae},
            note=f"fewer than {MIN_PAIRS_FOR_IMPUTATION} pairs with both sides (or a constant target): "
            "the known side is used as is",
        )  # fmt: skip

    n_folds = min(folds, len(y))
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    held_out = {
        name: _cross_validated(None if feats is None else feats[both], known_both, y, splitter, seed)
        for name, feats in candidates.items()
    }
    mae = {name: float(np.mean(np.abs(pred - y))) for name, pred in held_out.items()}
    method = min(mae, key=lambda name: mae[name])
    chosen = held_out[method]
    mean_baseline = np.empty_like(y)
    for train_idx, test_idx in splitter.split(y):
        mean_baseline[test_idx] = y[train_idx].mean()
    rho = spearmanr(chosen, y).statistic if np.ptp(chosen) > 0 else float("nan")

    features = candidates[method]
    if to_fill.any():
        if features is None:
            predictions[to_fill] = np.clip(known[to_fill], 0.0, 1.0)
        else:
            model = _imputer(seed)
            model.fit(features[both], y)  # type: ignore[attr-defined]
            predictions[to_fill] = np.clip(model.predict(features[to_fill]), 0.0, 1.0)  # type: ignore[attr-defined]
    return predictions, ImputationQuality(
        target=target_col,
        method=method,
        n_training_pairs=len(y),
        n_imputed=int(to_fill.sum()),
        folds=n_folds,
        mae=mae[method],
        rmse=float(np.sqrt(np.mean((chosen - y) ** 2))),
        spearman=float(rho),
        mae_predict_mean=float(np.mean(np.abs(mean_baseline - y))),
        candidates=mae,
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

    crowd_pred, crowd_quality = _fit_direction(
        pairs, "expert_unit", "crowd_share", pairs["has_expert"], sim, folds, seed
    )
    expert_pred, expert_quality = _fit_direction(
        pairs, "crowd_share", "expert_unit", pairs["has_crowd"], sim, folds, seed
    )

    pairs["crowd_imputed"] = pairs["has_expert"] & ~pairs["has_crowd"]
    pairs["expert_imputed"] = pairs["has_crowd"] & ~pairs["has_expert"]
    pairs["crowd_share_filled"] = pairs["crowd_share"].where(~pairs["crowd_imputed"], crowd_pred)
    pairs["expert_unit_filled"] = pairs["expert_unit"].where(~pairs["expert_imputed"], expert_pred)
    pairs["relevance"] = blend(
        pairs["expert_unit_filled"].to_numpy(), pairs["crowd_share_filled"].to_numpy(), expert_weight
    )
    pairs["relevant"] = pairs["relevance"] >= threshold
    return RelevanceLabels(
        pairs=pairs, expert_weight=expert_weight, threshold=threshold, imputation=[crowd_quality, expert_quality]
    )
