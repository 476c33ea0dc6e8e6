"""One evaluation run: data checks, annotation analysis, labels, models, metrics, report.

    from evaluation import EvaluationConfig, ModelSpec, run_evaluation

    result = run_evaluation(EvaluationConfig(
        dataset_dir=Path("data/seed"), out_dir=Path("reports/eval"),
        models=[ModelSpec.clip("clip-ViT-B-32"),
                ModelSpec.baseline("models/resnet-50", "models/bert-base-uncased")],
    ))
    print(result.report_html, result.models[0].retrieval.recall[5])

Images are prepared exactly as the service indexes them (:func:`core.images.load_rgb`, then
the 224x224 derivative), decoded once and shared by all models.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import GroupKFold
from tqdm.auto import tqdm

import evaluation.annotations as ann
from evaluation.dataset import ValidationReport, load_dataset, query_source_image
from evaluation.labels import (
    RelevanceLabels,
    build_relevance_labels,
    merge_annotations,
)
from evaluation.metrics import (
    RECALL_KS,
    Estimate,
    bootstrap_ci,
    ndcg_at_k,
    recall_curve,
    summarise_ranks,
    target_ranks,
)
from evaluation.minors import (
    DescribesMinor,
    apply_test_policy,
    child_images,
    filter_training_pairs,
    service_policy,
)
from evaluation.models import RetrievalModel
from evaluation.results import EvaluationConfig, EvaluationResult, ModelResult
from evaluation.text import TextCleaningReport, analyse_queries

logger = logging.getLogger(__name__)

DERIVATIVE_SIZE = 224
SCORE_CHUNK = 512
MAX_OTHER_SCORES = 20_000
CURVE_MAX_K = 50


# --------------------------------------------------------------------------- images


class ImageStore:
    """224x224 derivatives decoded once per run, keyed by (split, file name)."""

    def __init__(self, progress: bool) -> None:
        self._images: dict[tuple[str, str], Image.Image] = {}
        self.progress = progress

    def load(self, split: str, folder: Path, names: Sequence[str], report: ValidationReport) -> list[str]:
        """Decode ``names`` from ``folder``; returns those that decoded, reporting the rest."""
        from core.images import ImageRejected, load_rgb, make_derivative

        readable: list[str] = []
        for name in tqdm(names, desc=f"decoding {split} images", unit="img", disable=not self.progress):
            try:
                image = load_rgb(folder / name, draft_size=DERIVATIVE_SIZE)
            except ImageRejected as exc:
                report.add(f"{folder.name}/", None, "unreadable_image", f"{name}: {exc.reason} (left out)", "warning")
                continue
            self._images[(split, name)] = make_derivative(image, DERIVATIVE_SIZE)
            readable.append(name)
        return readable

    def get(self, split: str, names: Sequence[str]) -> list[Image.Image]:
        return [self._images[(split, name)] for name in names]


def _encode_images(
    model: RetrievalModel, images: list[Image.Image], desc: str, progress: bool, batch: int = 64
) -> np.ndarray:
    chunks = [
        model.encode_images(images[start : start + batch])
        for start in tqdm(range(0, len(images), batch), desc=desc, unit="batch", disable=not progress or not images)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)


def _encode_texts(model: RetrievalModel, texts: list[str], desc: str, progress: bool, batch: int = 256) -> np.ndarray:
    chunks = [
        model.encode_texts(texts[start : start + batch])
        for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", disable=not progress or not texts)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)


# --------------------------------------------------------------------------- scoring helpers


def _pair_scores(
    model: RetrievalModel,
    text_features: np.ndarray,
    image_features: np.ndarray,
    text_rows: np.ndarray,
    image_rows: np.ndarray,
) -> np.ndarray:
    """Scores of the pairs (text_rows[i], image_rows[i]), a block of texts at a time."""
    out = np.full(len(text_rows), np.nan)
    unique_texts = np.unique(text_rows)
    for start in range(0, len(unique_texts), SCORE_CHUNK):
        block = unique_texts[start : start + SCORE_CHUNK]
        scores = model.similarity(text_features[block], image_features)
        position = {int(t): i for i, t in enumerate(block)}
        mask = np.isin(text_rows, block)
        rows = np.array([position[int(t)] for t in text_rows[mask]], dtype=np.int64)
        out[mask] = scores[rows, image_rows[mask]]
    return out


def _ndcg_per_query(pairs: pd.DataFrame, scores: np.ndarray, k: int) -> pd.Series:
    """nDCG@k for each query over its judged images (NaN where undefined)."""
    values: dict[str, float] = {}
    frame = pairs.assign(_score=scores)
    for query_id, group in frame.groupby("query_id", sort=True):
        if len(group) < 2:
            continue
        values[str(query_id)] = ndcg_at_k(group["_score"].to_numpy(), group["gain"].to_numpy(), k)
    series = pd.Series(values, dtype=np.float64)
    return series.dropna()


def _chance_ndcg(judged: pd.DataFrame, k: int, seed: int, rounds: int = 100) -> float:
    """Expected nDCG@k of a random ordering of each query's judged images (few judged images per
    query make even chance look high, so the table needs this line)."""
    rng = np.random.default_rng(seed)
    values = []
    for _, group in judged.groupby("query_id", sort=True):
        gains = group["gain"].to_numpy(dtype=np.float64)
        if len(gains) < 2 or gains.max() <= 0:
            continue
        values.append(np.mean([ndcg_at_k(rng.random(len(gains)), gains, k) for _ in range(rounds)]))
    return float(np.mean(values)) if values else float("nan")


def _mean_ci(values: np.ndarray, config: EvaluationConfig) -> Estimate:
    return bootstrap_ci(values, lambda x: x.mean(axis=1), n_resamples=config.bootstrap_resamples, seed=config.seed)


# --------------------------------------------------------------------------- the run


def run_evaluation(config: EvaluationConfig) -> EvaluationResult:
    """Run every step and write the report, per-query CSV, labels and metrics into ``config.out_dir``."""
    from evaluation.report import write_outputs

    started = time.time()
    progress = config.progress
    dataset = load_dataset(config.dataset_dir)
    report = dataset.report
    query_texts = dataset.query_texts()
    describes_minor, check_query, rules_version = service_policy()

    # Text cleaning (train queries are one row per query id; test queries likewise).
    train_text = analyse_queries(dataset.train[["query_id", "query_text"]])
    test_text = analyse_queries(dataset.test_queries[["query_id", "query_text"]])
    train_normalised = set(train_text.normalised.values())
    seen_in_train = sum(1 for t in test_text.normalised.values() if t in train_normalised)

    # Annotations.
    pairs = merge_annotations(dataset.expert, dataset.crowd)
    expert_agreement = ann.expert_agreement(dataset.expert)
    expert_crowd = ann.expert_crowd_agreement(pairs)
    distributions = ann.score_distributions(dataset.expert, dataset.crowd)
    disagreements = ann.disagreement_cases(pairs, query_texts)
    coverage = ann.coverage(dataset.train, pairs)

    # Minors rule on training data: train_dataset.csv rows and the judged pairs.
    _, minors_rows = filter_training_pairs(dataset.train[["image", "query_id"]], query_texts, describes_minor)
    allowed_pairs, minors_pairs = filter_training_pairs(pairs[["image", "query_id"]], query_texts, describes_minor)
    allowed_keys = set(zip(allowed_pairs["image"], allowed_pairs["query_id"], strict=True))

    # Minors rule at test time.
    test_frame, test_policy = apply_test_policy(dataset.test_queries, check_query, describes_minor, rules_version)

    # Images: what the models will see.
    store = ImageStore(progress)
    needed_train = sorted(
        (set(pairs["image"]) | set(dataset.train["image"]) | {query_source_image(q) or "" for q in query_texts})
        & dataset.train_image_files
    )
    train_images = store.load("train", dataset.train_images_dir, needed_train, report)
    gallery = store.load("test", dataset.test_images_dir, sorted(dataset.test_image_files), report)
    train_image_row = {name: i for i, name in enumerate(train_images)}
    gallery_row = {name: i for i, name in enumerate(gallery)}

    test_frame["target_in_gallery"] = test_frame["image"].isin(gallery_row)
    evaluated = test_frame[~test_frame["blocked"] & test_frame["target_in_gallery"]].reset_index(drop=True)
    test_counts = {
        "test queries": len(test_frame),
        "blocked by the policy (disclaimer)": int(test_frame["blocked"].sum()),
        "target image missing or unreadable": int((~test_frame["blocked"] & ~test_frame["target_in_gallery"]).sum()),
        "evaluated": len(evaluated),
        "gallery images": len(gallery),
    }

    train_query_ids = sorted(query_texts)
    text_row = {q: i for i, q in enumerate(train_query_ids)}

    # Expert-judged pairs for nDCG: allowed by the minors rule, with text and a readable image.
    judged = pairs[pairs["has_expert"]].copy()
    judged = judged[
        _pair_mask(judged, allowed_keys) & judged["image"].isin(train_image_row) & judged["query_id"].isin(text_row)
    ].reset_index(drop=True)
    judged["gain"] = judged["expert_score"] - 1.0
    chance_ndcg = _chance_ndcg(judged, config.ndcg_k, config.seed)

    # Similarity of every judged pair we can score, for the imputation model.
    pair_mask = pairs["image"].isin(train_image_row) & pairs["query_id"].isin(text_row)
    pair_text_rows = np.array([text_row[q] for q in pairs.loc[pair_mask, "query_id"]], dtype=np.int64)
    pair_image_rows = np.array([train_image_row[i] for i in pairs.loc[pair_mask, "image"]], dtype=np.int64)

    results: list[ModelResult] = []
    similarity_for_labels: pd.Series | None = None
    similarity_model: str | None = None
    clip_specs = [s for s in config.models if s.kind == "clip"]
    baseline_specs = [s for s in config.models if s.kind == "baseline"]

    for spec in clip_specs:
        result = ModelResult(spec)
        results.append(result)
        began = time.time()
        try:
            from evaluation.models import ClipRetrievalModel

            model = ClipRetrievalModel(spec, device=config.device, cache_folder=config.cache_folder)
        except Exception as exc:  # noqa: BLE001 - recorded in the result and the report, and the CLI exits 1
            logger.error("model %s could not be loaded: %s", spec.name, exc)
            result.error = f"{type(exc).__name__}: {exc}"
            continue
        try:
            image_feats = _encode_images(
                model, store.get("train", train_images), f"{spec.name}: train images", progress
            )
            text_feats = _encode_texts(
                model, [query_texts[q] for q in train_query_ids], f"{spec.name}: train queries", progress
            )
            gallery_feats = _encode_images(model, store.get("test", gallery), f"{spec.name}: test images", progress)
            query_feats = _encode_texts(model, list(evaluated["query_text"]), f"{spec.name}: test queries", progress)
            sims = _pair_scores(model, text_feats, image_feats, pair_text_rows, pair_image_rows)
            if similarity_for_labels is None and len(sims):
                index = pd.MultiIndex.from_frame(pairs.loc[pair_mask, ["image", "query_id"]])
                similarity_for_labels = pd.Series(sims, index=index)
                similarity_model = spec.name
            judged_scores = _pair_scores(
                model,
                text_feats,
                image_feats,
                np.array([text_row[q] for q in judged["query_id"]], dtype=np.int64),
                np.array([train_image_row[i] for i in judged["image"]], dtype=np.int64),
            )
            _score_test(result, model, query_feats, gallery_feats, evaluated, gallery, config)
            _score_ndcg(result, judged, judged_scores, config)
        finally:
            model.close()
            del model
            gc.collect()
        result.seconds = time.time() - began

    labels = build_relevance_labels(
        dataset.expert,
        dataset.crowd,
        similarity=similarity_for_labels,
        expert_weight=config.expert_weight,
        threshold=config.relevant_threshold,
        seed=config.seed,
    )
    training, funnel = _training_pairs(
        labels, query_texts, train_text, allowed_keys, train_image_row, describes_minor, config
    )

    for spec in baseline_specs:
        result = ModelResult(spec)
        results.append(result)
        began = time.time()
        try:
            from evaluation.baseline import PocBaseline

            baseline = PocBaseline(spec, device=config.device, seed=config.seed)
        except Exception as exc:  # noqa: BLE001 - recorded in the result and the report, and the CLI exits 1
            logger.error("baseline %s could not be loaded: %s", spec.name, exc)
            result.error = f"{type(exc).__name__}: {exc}"
            continue
        try:
            image_feats = _encode_images(
                baseline, store.get("train", train_images), f"{spec.name}: train images", progress
            )
            text_feats = _encode_texts(
                baseline, [query_texts[q] for q in train_query_ids], f"{spec.name}: train queries", progress
            )
            gallery_feats = _encode_images(baseline, store.get("test", gallery), f"{spec.name}: test images", progress)
            query_feats = _encode_texts(baseline, list(evaluated["query_text"]), f"{spec.name}: test queries", progress)
            t_rows = np.array([text_row[q] for q in training["query_id"]], dtype=np.int64)
            i_rows = np.array([train_image_row[i] for i in training["image"]], dtype=np.int64)
            weights = training["relevance"].to_numpy(dtype=np.float64)
            if (weights > 0).sum() < 2:
                raise ValueError("fewer than two training pairs with positive relevance: the baseline cannot be fitted")
            baseline.fit(text_feats[t_rows], image_feats[i_rows], weights, image_reference=image_feats)
            result.notes.append(
                f"projection ({spec.head}) fitted on {int((weights > 0).sum())} weighted pairs "
                f"from {training['query_id'].nunique()} queries"
            )
            _score_test(result, baseline, query_feats, gallery_feats, evaluated, gallery, config)
            judged_scores = _cross_fitted_scores(
                baseline, training, judged, train_text, text_feats, image_feats, text_row, train_image_row, config
            )
            _score_ndcg(result, judged, judged_scores, config)
            result.notes.append(f"nDCG@{config.ndcg_k} from {config.baseline_folds}-fold cross-fitting by query")
        except ValueError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            baseline.close()
            del baseline
            gc.collect()
        result.seconds = time.time() - began

    # Keep the order the user asked for.
    order = {id(spec): i for i, spec in enumerate(config.models)}
    results.sort(key=lambda r: order.get(id(r.spec), len(order)))

    evaluation = EvaluationResult(
        config=config,
        dataset=dataset,
        train_text=train_text,
        test_text=test_text,
        test_queries_seen_in_train=seen_in_train,
        expert_agreement=expert_agreement,
        expert_crowd=expert_crowd,
        distributions=distributions,
        disagreements=disagreements,
        coverage=coverage,
        labels=labels,
        labels_similarity_model=similarity_model,
        minors_train_rows=minors_rows,
        minors_judged_pairs=minors_pairs,
        training_funnel=funnel,
        test_policy=test_policy,
        test_frame=test_frame,
        test_counts=test_counts,
        gallery=gallery,
        models=results,
        started=started,
        chance_ndcg=chance_ndcg,
    )
    evaluation.seconds = time.time() - started
    write_outputs(evaluation)
    return evaluation


def _score_test(
    result: ModelResult,
    model: RetrievalModel,
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    evaluated: pd.DataFrame,
    gallery: list[str],
    config: EvaluationConfig,
) -> None:
    """Ranks of each evaluated query's target in the gallery, summaries and per-query rows."""
    gallery_row = {name: i for i, name in enumerate(gallery)}
    targets = np.array([gallery_row[name] for name in evaluated["image"]], dtype=np.int64)
    ranks = np.zeros(len(evaluated), dtype=np.int64)
    target_scores = np.zeros(len(evaluated))
    top_images: list[str] = []
    top_scores: list[float] = []
    top5: list[str] = []
    others: list[np.ndarray] = []
    rng = np.random.default_rng(config.seed)
    for start in range(0, len(evaluated), SCORE_CHUNK):
        stop = min(len(evaluated), start + SCORE_CHUNK)
        scores = np.asarray(model.similarity(query_feats[start:stop], gallery_feats), dtype=np.float64)
        block_targets = targets[start:stop]
        ranks[start:stop] = target_ranks(scores, block_targets)
        target_scores[start:stop] = scores[np.arange(stop - start), block_targets]
        order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
        top_images.extend(gallery[row[0]] for row in order)
        top_scores.extend(float(scores[i, row[0]]) for i, row in enumerate(order))
        top5.extend(" ".join(gallery[j] for j in row) for row in order)
        mask = np.ones_like(scores, dtype=bool)
        mask[np.arange(stop - start), block_targets] = False
        other = scores[mask]
        take = min(other.size, MAX_OTHER_SCORES // max(1, math.ceil(len(evaluated) / SCORE_CHUNK)))
        others.append(rng.choice(other, size=take, replace=False) if take < other.size else other)

    result.ranks = ranks
    result.target_scores = target_scores
    result.other_scores = np.concatenate(others) if others else np.zeros(0)
    result.retrieval = summarise_ranks(
        ranks, len(gallery), ks=RECALL_KS, n_resamples=config.bootstrap_resamples, seed=config.seed
    )
    result.curve = recall_curve(ranks, min(CURVE_MAX_K, max(1, len(gallery))))
    result.per_query = pd.DataFrame(
        {
            "model": result.name,
            "query_id": evaluated["query_id"],
            "query_text": evaluated["query_text"],
            "target_image": evaluated["image"],
            "blocked": False,
            "target_depicts_child": evaluated["target_depicts_child"],
            "rank": ranks,
            "reciprocal_rank": 1.0 / np.maximum(ranks, 1),
            **{f"hit_at_{k}": ranks <= k for k in RECALL_KS},
            "target_score": target_scores,
            "top1_image": top_images,
            "top1_score": top_scores,
            "top5_images": top5,
        }
    )


def _pair_mask(frame: pd.DataFrame, keys: set[tuple[str, str]]) -> np.ndarray:
    """Which rows' (image, query_id) are in ``keys``."""
    return np.array([(i, q) in keys for i, q in zip(frame["image"], frame["query_id"], strict=True)], dtype=bool)


def _score_ndcg(result: ModelResult, judged: pd.DataFrame, scores: np.ndarray, config: EvaluationConfig) -> None:
    per_query = _ndcg_per_query(judged, scores, config.ndcg_k)
    result.ndcg_queries = len(per_query)
    result.ndcg = _mean_ci(per_query.to_numpy(), config)


def _training_pairs(
    labels: RelevanceLabels,
    query_texts: dict[str, str],
    text_report: TextCleaningReport,
    allowed_keys: set[tuple[str, str]],
    train_image_row: dict[str, int],
    describes_minor: DescribesMinor,
    config: EvaluationConfig,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The baseline's training set, with how many pairs each rule removed (in order)."""
    frame = labels.pairs[["image", "query_id", "relevance"]].copy()
    funnel: dict[str, int] = {"judged pairs": len(frame)}
    frame = frame[_pair_mask(frame, allowed_keys)]
    funnel["removed: minors rule"] = funnel["judged pairs"] - len(frame)
    before = len(frame)
    frame = frame[frame["query_id"].isin(query_texts) & frame["image"].isin(train_image_row)]
    funnel["removed: query text or image missing"] = before - len(frame)
    before = len(frame)
    frame = frame[~frame["query_id"].isin(text_report.uninformative)]
    funnel["removed: uninformative query"] = before - len(frame)
    before = len(frame)
    frame = frame.assign(canonical=frame["query_id"].map(lambda q: text_report.canonical.get(q, q)))
    frame = frame.drop_duplicates(["image", "canonical"], keep="first")
    funnel["removed: duplicate query for the same image"] = before - len(frame)
    funnel["labelled training pairs"] = len(frame)

    if config.own_caption_positives:
        kids_images = child_images(query_texts, describes_minor)
        # Each caption truly describes its own image: a free relevance-1 pair the PoC also had.
        kept_queries = set(frame["query_id"])
        own = pd.DataFrame(
            {"query_id": sorted(kept_queries), "image": [query_source_image(q) or "" for q in sorted(kept_queries)]}
        )
        own = own[own["image"].isin(train_image_row)]
        # The same minors rule as for judged pairs: neither the caption nor the image may show a child.
        own = own[~own["query_id"].map(lambda q: describes_minor(query_texts[q])) & ~own["image"].isin(kids_images)]
        existing = set(zip(frame["image"], frame["query_id"], strict=True))
        own = own[~_pair_mask(own, existing)]
        own = own.assign(relevance=1.0, canonical=own["query_id"].map(lambda q: text_report.canonical.get(q, q)))
        frame = pd.concat([frame, own[frame.columns]], ignore_index=True)
        funnel["added: caption with its own image (relevance 1)"] = len(own)
    funnel["training pairs"] = len(frame)
    funnel["training pairs with relevance > 0"] = int((frame["relevance"] > 0).sum())
    return frame.reset_index(drop=True), funnel


def _cross_fitted_scores(
    baseline: object,
    training: pd.DataFrame,
    judged: pd.DataFrame,
    text_report: TextCleaningReport,
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    text_row: dict[str, int],
    image_row: dict[str, int],
    config: EvaluationConfig,
) -> np.ndarray:
    """Scores of judged pairs from heads that never saw the pair's query (or its duplicates).

    The baseline is trained on these very labels, so scoring them in-sample would flatter it.
    """
    from evaluation.baseline import PocBaseline

    assert isinstance(baseline, PocBaseline)
    scores = np.full(len(judged), np.nan)
    if judged.empty:
        return scores
    canonical = judged["query_id"].map(lambda q: text_report.canonical.get(q, q)).to_numpy()
    groups = np.unique(canonical)
    folds = min(config.baseline_folds, len(groups))
    if folds < 2:
        return scores
    for _, test_idx in GroupKFold(n_splits=folds).split(judged, groups=canonical):
        held_out = set(canonical[test_idx])
        part = training[~training["canonical"].isin(held_out)]
        weights = part["relevance"].to_numpy(dtype=np.float64)
        if (weights > 0).sum() < 2:
            continue
        head = baseline.new_head().fit(
            text_feats[[text_row[q] for q in part["query_id"]]],
            image_feats[[image_row[i] for i in part["image"]]],
            weights,
            image_reference=image_feats,
        )
        fold = judged.iloc[test_idx]
        t = np.array([text_row[q] for q in fold["query_id"]], dtype=np.int64)
        i = np.array([image_row[x] for x in fold["image"]], dtype=np.int64)
        for query in np.unique(t):
            mask = t == query
            scores[test_idx[mask]] = head.similarity(text_feats[[query]], image_feats[i[mask]])[0]
    return scores
