"""Annotation analysis: score distributions, agreement, disagreement cases and coverage."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import krippendorff
import numpy as np
import pandas as pd
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import cohen_kappa_score

from evaluation.dataset import EXPERT_COLUMNS, EXPERT_MAX, EXPERT_MIN

EXPERT_DOMAIN = tuple(range(EXPERT_MIN, EXPERT_MAX + 1))

MeasurementLevel = Literal["nominal", "ordinal", "interval", "ratio"]


def krippendorff_alpha(
    reliability: np.ndarray, level: MeasurementLevel = "ordinal", domain: Sequence[float] | None = None
) -> float:
    """Krippendorff's alpha for (raters, units) data with NaN for missing ratings.

    NaN when it is undefined: fewer than two pairable ratings, or no variation at all (every
    rating the same value, so expected disagreement is zero).
    """
    data = np.asarray(reliability, dtype=np.float64)
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2).sum()
    observed = np.unique(data[~np.isnan(data)])
    if pairable == 0 or observed.size < 2:
        return float("nan")
    value_domain = None if domain is None else list(domain)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=value_domain))


@dataclass(frozen=True)
class ExpertAgreement:
    n_pairs: int
    alpha_ordinal: float
    pairwise_alpha: dict[str, float]
    unanimous_share: float
    spread_two_or_more_share: float  # some experts 2+ points apart (e.g. 1 and 3)


def expert_agreement(expert: pd.DataFrame) -> ExpertAgreement:
    """Ordinal Krippendorff's alpha among the three experts, overall and for each pair of experts."""
    scores = expert[list(EXPERT_COLUMNS)].to_numpy(dtype=np.float64)
    pairwise = {
        f"{a} vs {b}": krippendorff_alpha(expert[[a, b]].to_numpy(dtype=np.float64).T, "ordinal", EXPERT_DOMAIN)
        for a, b in itertools.combinations(EXPERT_COLUMNS, 2)
    }
    complete = scores[~np.isnan(scores).any(axis=1)]
    spread = np.ptp(complete, axis=1) if len(complete) else np.zeros(0)
    return ExpertAgreement(
        n_pairs=len(scores),
        alpha_ordinal=krippendorff_alpha(scores.T, "ordinal", EXPERT_DOMAIN),
        pairwise_alpha=pairwise,
        unanimous_share=float(np.mean(spread == 0)) if spread.size else float("nan"),
        spread_two_or_more_share=float(np.mean(spread >= 2)) if spread.size else float("nan"),
    )


@dataclass(frozen=True)
class ExpertCrowdAgreement:
    """Agreement between the aggregated expert score and the crowd share on pairs with both."""

    n_pairs: int
    spearman: float
    pearson: float
    alpha_interval: float  # both sides on [0, 1], as two raters on an interval scale
    binary_agreement: float  # expert_unit >= 0.5 vs crowd_share >= 0.5
    binary_kappa: float


def expert_crowd_agreement(pairs: pd.DataFrame, threshold: float = 0.5) -> ExpertCrowdAgreement:
    """``pairs`` from :func:`evaluation.labels.merge_annotations`."""
    both = pairs[pairs["has_expert"] & pairs["has_crowd"]]
    e = both["expert_unit"].to_numpy(dtype=np.float64)
    c = both["crowd_share"].to_numpy(dtype=np.float64)
    if len(both) < 3 or np.ptp(e) == 0 or np.ptp(c) == 0:
        # Correlations are undefined for constant inputs; say so instead of warning.
        rho = r = float("nan")
    else:
        rho = float(spearmanr(e, c).statistic)
        r = float(pearsonr(e, c).statistic)
    eb, cb = e >= threshold, c >= threshold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = (
            float(cohen_kappa_score(eb, cb))
            if len(both) and (eb.any() or cb.any()) and not (eb.all() and cb.all())
            else float("nan")
        )
    return ExpertCrowdAgreement(
        n_pairs=len(both),
        spearman=rho,
        pearson=r,
        alpha_interval=krippendorff_alpha(np.vstack([e, c]), "interval") if len(both) else float("nan"),
        binary_agreement=float(np.mean(eb == cb)) if len(both) else float("nan"),
        binary_kappa=kappa,
    )


def score_distributions(expert: pd.DataFrame, crowd: pd.DataFrame) -> dict[str, pd.Series]:
    """Counts of each expert's scores (1..4) and of the crowd shares (rounded to 2 places)."""
    out: dict[str, pd.Series] = {}
    for column in EXPERT_COLUMNS:
        values = pd.to_numeric(expert[column], errors="coerce").dropna().astype(int)
        out[column] = values.value_counts().reindex(EXPERT_DOMAIN, fill_value=0)
    shares = pd.to_numeric(crowd["crowd_share"], errors="coerce").dropna().round(2)
    out["crowd_share"] = shares.value_counts().sort_index()
    return out


def disagreement_cases(
    pairs: pd.DataFrame, query_texts: dict[str, str], limit: int | None = None
) -> dict[str, pd.DataFrame]:
    """The worst disagreements, for a person to look at.

    ``experts``: pairs where experts are 2+ points apart. ``expert_vs_crowd``: pairs with both
    sides whose [0, 1] scores differ by 0.5 or more. Largest disagreements first.
    """
    columns = ["image", "query_id", "query_text", *EXPERT_COLUMNS, "expert_score", "crowd_share"]
    frame = pairs.copy()
    frame["query_text"] = frame["query_id"].map(query_texts).fillna("")
    scores = frame[list(EXPERT_COLUMNS)].to_numpy(dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows with no expert score are all-NaN
        frame["expert_spread"] = np.nanmax(scores, axis=1) - np.nanmin(scores, axis=1)
    experts = frame[frame["expert_spread"] >= 2].sort_values("expert_spread", ascending=False, kind="stable")
    both = frame[frame["has_expert"] & frame["has_crowd"]].copy()
    both["gap"] = (both["expert_unit"] - both["crowd_share"]).abs()
    crowd = both[both["gap"] >= 0.5].sort_values("gap", ascending=False, kind="stable")
    experts = experts[[*columns, "expert_spread"]]
    crowd = crowd[[*columns, "gap"]]
    if limit is not None:
        experts, crowd = experts.head(limit), crowd.head(limit)
    return {"experts": experts.reset_index(drop=True), "expert_vs_crowd": crowd.reset_index(drop=True)}


def coverage(train: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, int]:
    """How many pairs each side judged, and how many rows of train_dataset.csv have a judgement."""
    keys = set(zip(pairs["image"], pairs["query_id"], strict=True))
    expert_keys = set(
        zip(pairs.loc[pairs["has_expert"], "image"], pairs.loc[pairs["has_expert"], "query_id"], strict=True)
    )
    crowd_keys = set(
        zip(pairs.loc[pairs["has_crowd"], "image"], pairs.loc[pairs["has_crowd"], "query_id"], strict=True)
    )
    train_keys = set(zip(train["image"], train["query_id"], strict=True))
    return {
        "judged_pairs": len(keys),
        "expert_and_crowd": len(expert_keys & crowd_keys),
        "expert_only": len(expert_keys - crowd_keys),
        "crowd_only": len(crowd_keys - expert_keys),
        "train_rows": len(train_keys),
        "train_rows_with_expert": len(train_keys & expert_keys),
        "train_rows_with_crowd": len(train_keys & crowd_keys),
        "train_rows_unjudged": len(train_keys - keys),
        "judged_pairs_not_in_train": len(keys - train_keys),
    }
