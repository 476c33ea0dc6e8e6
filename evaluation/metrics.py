"""Retrieval metrics: ranks, Recall@k, MRR, median rank, bootstrap intervals, graded nDCG@k.

Ties are broken against the model everywhere: a target that scores the same as another
image is ranked below it. A model that gives every image the same score therefore ranks
every target last instead of first, so a degenerate model can never look good.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RECALL_KS: tuple[int, ...] = (1, 5, 10)


def target_ranks(scores: np.ndarray, target_index: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target image in its row of ``scores`` (queries x gallery).

    rank = 1 + (images scoring higher) + (other images scoring the same): pessimistic ties.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target_index = np.asarray(target_index, dtype=np.int64)
    if scores.ndim != 2 or target_index.shape != (scores.shape[0],):
        raise ValueError("scores must be (queries, gallery) and target_index (queries,)")
    if scores.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    target = scores[np.arange(scores.shape[0]), target_index][:, None]
    higher = (scores > target).sum(axis=1)
    ties = (scores == target).sum(axis=1) - 1
    return (1 + higher + ties).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose target is in the top k."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(1.0 / ranks)) if ranks.size else float("nan")


def median_rank(ranks: np.ndarray) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.median(ranks)) if ranks.size else float("nan")


def recall_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """Recall@k for k = 1..max_k (index 0 is k=1)."""
    ranks = np.asarray(ranks)
    ks = np.arange(1, max_k + 1)
    if ranks.size == 0:
        return np.full(max_k, np.nan)
    return (ranks[None, :] <= ks[:, None]).mean(axis=1)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap percentile confidence interval."""

    value: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        if np.isnan(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile bootstrap over queries.

    ``statistic`` maps an array of shape (resamples, n) to (resamples,) along axis 1, e.g.
    ``lambda x: x.mean(axis=1)``; it is also applied to the original sample for the point value.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    point = float(statistic(values[None, :])[0])
    if n_resamples <= 0 or values.size == 1:
        return Estimate(point, point, point)
    rng = np.random.default_rng(seed)
    estimates = np.empty(n_resamples)
    # Batches keep memory flat for large query sets (1000 x 50k indices would be 400 MB).
    batch = max(1, min(n_resamples, 2_000_000 // values.size))
    for start in range(0, n_resamples, batch):
        stop = min(n_resamples, start + batch)
        index = rng.integers(0, values.size, size=(stop - start, values.size))
        estimates[start:stop] = statistic(values[index])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(estimates, [alpha, 1.0 - alpha])
    return Estimate(point, float(low), float(high))


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=1)


def _median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=1)


@dataclass(frozen=True)
class RetrievalSummary:
    """Text-to-image metrics over one set of queries, each with its bootstrap interval."""

    n_queries: int
    gallery_size: int
    recall: dict[int, Estimate]
    mrr: Estimate
    median_rank: Estimate

    def chance_recall(self, k: int) -> float:
        """Recall@k of a model that ranks the gallery at random (one target per query)."""
        return min(1.0, k / self.gallery_size) if self.gallery_size else float("nan")


def summarise_ranks(
    ranks: np.ndarray,
    gallery_size: int,
    *,
    ks: Sequence[int] = RECALL_KS,
    n_resamples: int = 1000,
    seed: int = 0,
) -> RetrievalSummary:
    """Recall@k, MRR and median rank with bootstrap intervals, all from the same resamples' seed."""
    ranks = np.asarray(ranks, dtype=np.float64)
    recall = {k: bootstrap_ci((ranks <= k).astype(np.float64), _mean, n_resamples=n_resamples, seed=seed) for k in ks}
    return RetrievalSummary(
        n_queries=int(ranks.size),
        gallery_size=gallery_size,
        recall=recall,
        mrr=bootstrap_ci(1.0 / ranks if ranks.size else ranks, _mean, n_resamples=n_resamples, seed=seed),
        median_rank=bootstrap_ci(ranks, _median, n_resamples=n_resamples, seed=seed),
    )


def dcg_at_k(gains_in_rank_order: np.ndarray, k: int) -> float:
    """Discounted cumulative gain with linear gains: sum of gain_i / log2(i + 1), i = 1..k."""
    gains = np.asarray(gains_in_rank_order, dtype=np.float64)[:k]
    return float(np.sum(gains / np.log2(np.arange(2, gains.size + 2))))


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """nDCG@k of one query over its judged images only (a condensed list).

    ``gains`` are graded relevance values (here the aggregated expert score minus 1, so 0..3).
    Images are ordered by score, ties with the lowest gain first (pessimistic). NaN when the
    query has no positive gain (the ideal DCG is 0 and the ratio is undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    gains = np.asarray(gains, dtype=np.float64)
    if scores.shape != gains.shape:
        raise ValueError("scores and gains must have the same shape")
    ideal = dcg_at_k(np.sort(gains)[::-1], k)
    if ideal <= 0:
        return float("nan")
    order = np.lexsort((gains, -scores))  # primary key: score descending; then gain ascending
    return dcg_at_k(gains[order], k) / ideal
