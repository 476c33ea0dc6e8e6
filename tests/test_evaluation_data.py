"""Evaluation without models: file formats and their warts, metrics, labels, agreement, text, minors.

Every expected number here is worked out by hand in the test (or in its comment), never read
back from the code under test.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluation.annotations as ann
from evaluation.dataset import (
    ValidationReport,
    load_dataset,
    read_crowd,
    read_expert,
    read_test_queries,
    read_train,
)
from evaluation.labels import aggregate_expert_scores, blend, build_relevance_labels, merge_annotations
from evaluation.metrics import (
    bootstrap_ci,
    dcg_at_k,
    mean_reciprocal_rank,
    median_rank,
    ndcg_at_k,
    recall_at_k,
    recall_curve,
    summarise_ranks,
    target_ranks,
)
from evaluation.minors import PolicyVerdict, apply_test_policy, filter_training_pairs
from evaluation.text import analyse_queries, normalise_text, uninformative_reason

# --------------------------------------------------------------------------- helpers


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def kinds(report: ValidationReport) -> dict[str, int]:
    return dict(report.kinds())


# --------------------------------------------------------------------------- train_dataset.csv


def test_train_with_bom_spaces_duplicates_and_unquoted_commas(tmp_path: Path) -> None:
    text = (
        "image,query_id,query_text\n"
        "a.jpg,b.jpg#0,A dog runs .\n"
        " c.jpg ,b.jpg#0,A dog runs .\n"  # stray spaces
        "a.jpg,b.jpg#0,A dog runs .\n"  # exact duplicate of line 2
        'a.jpg,d.jpg#1,"A man, a dog"\n'  # quoted comma: fine
        "c.jpg,d.jpg#1,A man, a dog\n"  # unquoted comma: joined back
        "e.jpg,not-an-id,Some text\n"
        "f.jpg,g.jpg#0\n"  # a field short
        "a.jpg,d.jpg#1,A different text\n"  # conflicting duplicate of line 5
    )
    report = ValidationReport()
    frame = read_train(write(tmp_path / "train_dataset.csv", b"\xef\xbb\xbf" + text.encode()), report)
    assert kinds(report) == {
        "bom": 1,
        "whitespace": 1,
        "duplicate_row": 1,
        "unquoted_separator": 1,
        "bad_query_id": 1,
        "bad_row": 1,
        "conflicting_duplicate": 1,
    }
    assert list(frame["image"]) == ["a.jpg", "c.jpg", "a.jpg", "c.jpg", "e.jpg"]
    assert frame.loc[3, "query_text"] == "A man, a dog"
    # The header is recognised although it came after a BOM.
    assert "image" not in set(frame["image"])
    # One query id, two texts (line 5 vs the joined line 6 is the same; the conflict was dropped).
    assert frame.loc[frame["query_id"] == "d.jpg#1", "query_text"].nunique() == 1


def test_train_without_header_keeps_first_row(tmp_path: Path) -> None:
    report = ValidationReport()
    frame = read_train(write(tmp_path / "train_dataset.csv", "a.jpg,b.jpg#0,A dog\nc.jpg,b.jpg#0,A dog\n"), report)
    assert len(frame) == 2
    assert kinds(report) == {"missing_header": 1}


def test_train_in_cp1252_is_read_and_reported(tmp_path: Path) -> None:
    report = ValidationReport()
    content = "image,query_id,query_text\na.jpg,b.jpg#0,A caf\xe9 .\n".encode("cp1252")
    frame = read_train(write(tmp_path / "train_dataset.csv", content), report)
    assert frame.loc[0, "query_text"] == "A café ."
    assert kinds(report) == {"encoding": 1}


def test_inconsistent_texts_for_one_query_id_are_reported(tmp_path: Path) -> None:
    report = ValidationReport()
    read_train(
        write(tmp_path / "train_dataset.csv", "image,query_id,query_text\na.jpg,b.jpg#0,A dog\nc.jpg,b.jpg#0,A cat\n"),
        report,
    )
    assert kinds(report) == {"inconsistent_text": 1}


# --------------------------------------------------------------------------- annotations files


def test_crowd_rows_are_checked(tmp_path: Path) -> None:
    text = (
        "a.jpg\tb.jpg#0\t1\t3\t0\n"
        "a.jpg\tc.jpg#0\t0.333333\t1\t2  \n"  # trailing spaces
        "a.jpg\tc.jpg#0\t0.333333\t1\t2\n"  # duplicate
        "a.jpg\td.jpg#0\t0.9\t1\t2\n"  # share disagrees with votes: recomputed to 1/3
        "a.jpg\te.jpg#0\tmany\t1\t2\n"  # not a number
        "a.jpg\tf.jpg#0\t1.5\t\t\n"  # no votes, share out of range
        "a.jpg\tg.jpg#0\t0.5\n"  # too few fields
    )
    report = ValidationReport()
    frame = read_crowd(write(tmp_path / "CrowdAnnotations.tsv", text), report)
    assert kinds(report) == {
        "whitespace": 1,
        "duplicate_row": 1,
        "inconsistent_share": 1,
        "bad_value": 1,
        "out_of_range": 1,
        "bad_row": 1,
    }
    assert list(frame["query_id"]) == ["b.jpg#0", "c.jpg#0", "d.jpg#0"]
    assert frame.loc[2, "crowd_share"] == pytest.approx(1 / 3)


def test_crowd_file_with_a_header_row(tmp_path: Path) -> None:
    report = ValidationReport()
    frame = read_crowd(
        write(tmp_path / "CrowdAnnotations.tsv", "image\tquery_id\tshare\tyes\tno\na.jpg\tb.jpg#0\t0\t0\t3\n"), report
    )
    assert len(frame) == 1
    assert kinds(report) == {"unexpected_header": 1}


def test_expert_scores_out_of_range_or_missing(tmp_path: Path) -> None:
    text = (
        "a.jpg\tb.jpg#0\t1\t2\t2\n"
        "a.jpg\tc.jpg#0\t4\t5\t4\n"  # 5 is not a score: that expert is missing
        "a.jpg\td.jpg#0\t3\t3\n"  # a third score missing
        "a.jpg\te.jpg#0\tx\t0\t2.5\n"  # nothing valid: dropped
    )
    report = ValidationReport()
    frame = read_expert(write(tmp_path / "ExpertAnnotations.tsv", text), report)
    assert list(frame["query_id"]) == ["b.jpg#0", "c.jpg#0", "d.jpg#0"]
    assert math.isnan(frame.loc[1, "expert_2"])
    assert math.isnan(frame.loc[2, "expert_3"])
    assert kinds(report) == {"bad_value": 4, "missing_value": 1, "bad_row": 1}


# --------------------------------------------------------------------------- test_queries.csv


def test_test_queries_with_index_column_keep_the_first_row(tmp_path: Path) -> None:
    text = (
        "|query_id|query_text|image\n"
        "0|a.jpg#0|A dog runs .|a.jpg\n"
        "1|a.jpg#1|A dog | a ball|a.jpg\n"  # a pipe inside the text
        "b.jpg#0|No index here|b.jpg\n"
        "3|c.jpg#0||c.jpg\n"  # empty text: dropped
    )
    report = ValidationReport()
    frame = read_test_queries(write(tmp_path / "test_queries.csv", text), report)
    assert list(frame["query_id"]) == ["a.jpg#0", "a.jpg#1", "b.jpg#0"]
    assert frame.loc[0, "query_text"] == "A dog runs ."
    assert frame.loc[1, "query_text"] == "A dog | a ball"
    assert list(frame["image"]) == ["a.jpg", "a.jpg", "b.jpg"]
    assert kinds(report) == {"unquoted_separator": 1, "whitespace": 1, "missing_index": 1, "empty_text": 1}


@pytest.mark.parametrize(
    "text",
    [
        "query_id|query_text|image\na.jpg#0|A dog|a.jpg\n",  # header without the index column
        "0|a.jpg#0|A dog|a.jpg\n",  # no header at all
        "Unnamed: 0|query_id|query_text|image\n0|a.jpg#0|A dog|a.jpg\n",  # pandas' name for the index
    ],
)
def test_test_queries_variants_lose_no_row(tmp_path: Path, text: str) -> None:
    report = ValidationReport()
    frame = read_test_queries(write(tmp_path / "test_queries.csv", text), report)
    assert frame[["query_id", "query_text", "image"]].values.tolist() == [["a.jpg#0", "A dog", "a.jpg"]]


# --------------------------------------------------------------------------- whole folders


def test_missing_images_files_and_folders_are_reported_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root / "train_dataset.csv", "image,query_id,query_text\na.jpg,b.jpg#0,A dog\nz.jpg,b.jpg#0,A dog\n")
    write(root / "ExpertAnnotations.tsv", "a.jpg\tb.jpg#0\t1\t1\t2\na.jpg\tq.jpg#9\t1\t1\t1\n")
    write(root / "train_images" / "a.jpg", b"not really a jpeg")
    write(root / "train_images" / "b.jpg", b"")
    dataset = load_dataset(root)
    found = kinds(dataset.report)
    assert found["missing_file"] == 2  # CrowdAnnotations.tsv and test_queries.csv
    assert found["missing_dir"] == 1  # test_images/
    assert found["missing_image"] == 1  # z.jpg
    assert found["unknown_query"] == 1  # q.jpg#9 has no text
    assert dataset.report.has_errors
    assert len(dataset.crowd) == 0 and list(dataset.crowd.columns)[:3] == ["image", "query_id", "crowd_share"]
    summary = dataset.report.summary()
    assert set(summary.columns) == {"file", "kind", "severity", "count", "example"}


def test_missing_dataset_folder_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_shipped_demo_dataset_has_the_planted_warts() -> None:
    from evaluation.standins.demo import DEMO_DIR

    dataset = load_dataset(DEMO_DIR)
    found = kinds(dataset.report)
    for kind in ("bom", "whitespace", "duplicate_row", "missing_image"):
        assert found.get(kind, 0) >= 1, kind
    assert not dataset.report.has_errors
    assert len(dataset.train_image_files) <= 60 and len(dataset.test_image_files) <= 40
    assert sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file()) < 1.5 * 1024 * 1024
    assert (DEMO_DIR / "train_dataset.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert (DEMO_DIR / "test_queries.csv").read_text().startswith("|query_id|query_text|image\n0|")


def test_demo_dataset_is_reproducible(tmp_path: Path) -> None:
    from evaluation.standins.demo import DEMO_DIR, build_demo_dataset

    rebuilt = build_demo_dataset(tmp_path / "demo")
    shipped = sorted(p.relative_to(DEMO_DIR) for p in DEMO_DIR.rglob("*") if p.is_file())
    assert shipped == sorted(p.relative_to(rebuilt) for p in rebuilt.rglob("*") if p.is_file())
    for name in ("train_dataset.csv", "CrowdAnnotations.tsv", "ExpertAnnotations.tsv", "test_queries.csv"):
        assert (rebuilt / name).read_bytes() == (DEMO_DIR / name).read_bytes(), name


# --------------------------------------------------------------------------- metrics


def test_ranks_recall_mrr_median_by_hand() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5],  # target 0 is the best: rank 1
            [0.2, 0.2, 0.1],  # target 1 ties with image 0: pessimistic rank 2
            [0.3, 0.8, 0.8],  # target 2 ties with image 1: rank 2
            [0.7, 0.6, 0.5],  # target 2 is last: rank 3
        ]
    )
    ranks = target_ranks(scores, np.array([0, 1, 2, 2]))
    assert ranks.tolist() == [1, 2, 2, 3]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert recall_at_k(ranks, 2) == pytest.approx(3 / 4)
    assert recall_at_k(ranks, 10) == 1.0
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 0.5 + 0.5 + 1 / 3) / 4)
    assert median_rank(ranks) == 2.0
    assert recall_curve(ranks, 3).tolist() == pytest.approx([0.25, 0.75, 1.0])


def test_a_constant_scorer_ranks_every_target_last() -> None:
    ranks = target_ranks(np.zeros((5, 8)), np.arange(5))
    assert ranks.tolist() == [8] * 5
    assert recall_at_k(ranks, 5) == 0.0


def test_ndcg_by_hand() -> None:
    # Model order by score: gains 0, 3, 1. DCG = 0/log2(2) + 3/log2(3) + 1/log2(4).
    # Ideal order: 3, 1, 0. IDCG = 3/log2(2) + 1/log2(3).
    dcg = 3 / math.log2(3) + 1 / 2
    idcg = 3 + 1 / math.log2(3)
    assert ndcg_at_k(np.array([3.0, 2.0, 1.0]), np.array([0.0, 3.0, 1.0]), k=10) == pytest.approx(dcg / idcg)
    # Cut at k=1: the model's first gain is 0.
    assert ndcg_at_k(np.array([3.0, 2.0, 1.0]), np.array([0.0, 3.0, 1.0]), k=1) == 0.0
    assert ndcg_at_k(np.array([0.1, 0.9]), np.array([1.0, 2.0])) == pytest.approx(1.0)
    # Ties are ordered with the lowest gain first: equal scores earn the worst order.
    assert ndcg_at_k(np.array([0.5, 0.5]), np.array([2.0, 0.0])) == pytest.approx(0.0 + (2 / math.log2(3)) / 2)
    assert math.isnan(ndcg_at_k(np.array([0.2, 0.1]), np.array([0.0, 0.0])))
    assert dcg_at_k(np.array([1.0, 1.0, 1.0]), 2) == pytest.approx(1 + 1 / math.log2(3))


def test_bootstrap_interval() -> None:
    values = np.array([0.0, 1.0] * 50)
    est = bootstrap_ci(values, lambda x: x.mean(axis=1), n_resamples=2000, seed=1)
    assert est.value == 0.5
    # Standard error of a mean of 100 fair coins is 0.05: the 95% interval is about +-0.1.
    assert 0.38 < est.low < 0.45 and 0.55 < est.high < 0.62
    assert est == bootstrap_ci(values, lambda x: x.mean(axis=1), n_resamples=2000, seed=1)
    constant = bootstrap_ci(np.ones(10), lambda x: x.mean(axis=1))
    assert (constant.low, constant.value, constant.high) == (1.0, 1.0, 1.0)
    assert math.isnan(bootstrap_ci(np.array([]), lambda x: x.mean(axis=1)).value)


def test_summary_and_chance() -> None:
    summary = summarise_ranks(np.array([1, 2, 2, 3]), gallery_size=40, n_resamples=100)
    assert summary.recall[1].value == pytest.approx(0.25)
    assert summary.mrr.value == pytest.approx((1 + 0.5 + 0.5 + 1 / 3) / 4)
    assert summary.median_rank.value == 2.0
    assert summary.chance_recall(5) == pytest.approx(5 / 40)


# --------------------------------------------------------------------------- labels


def test_expert_aggregation_majority_and_ties() -> None:
    nan = np.nan
    scores = np.array(
        [[4, 4, 1], [1, 2, 4], [2, nan, 3], [3, nan, nan], [nan, nan, nan], [2, 2, 2], [1, 1, 2], [3, 3, nan]]
    )
    result = aggregate_expert_scores(scores)
    expected = [4, 7 / 3, 2.5, 3, nan, 2, 1, 3]
    np.testing.assert_allclose(result, expected, equal_nan=True)


def test_blend_is_the_documented_weighted_mean() -> None:
    # Expert 4 -> 1.0 on the unit scale; 0.6 * 1.0 + 0.4 * 0.5 = 0.8.
    assert blend(np.array([1.0]), np.array([0.5]), 0.6)[0] == pytest.approx(0.8)
    assert blend(np.array([0.0]), np.array([1.0]), 1.0)[0] == 0.0
    with pytest.raises(ValueError):
        blend(np.array([0.0]), np.array([0.0]), 1.5)


def _annotation_frames(
    n_both: int, n_expert_only: int, n_crowd_only: int, seed: int = 0, power: float = 1.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs whose crowd share is the expert unit score to ``power`` (a learnable relation)."""
    rng = np.random.default_rng(seed)
    expert_rows, crowd_rows = [], []
    total = n_both + n_expert_only + n_crowd_only
    for i in range(total):
        score = int(rng.integers(1, 5))
        image, query = f"i{i}.jpg", f"q{i}.jpg#0"
        if i < n_both + n_expert_only:
            expert_rows.append(
                {"image": image, "query_id": query, "expert_1": score, "expert_2": score, "expert_3": score}
            )
        if i < n_both or i >= n_both + n_expert_only:
            share = ((score - 1) / 3) ** power
            crowd_rows.append(
                {"image": image, "query_id": query, "crowd_share": share, "crowd_yes": np.nan, "crowd_no": np.nan}
            )
    return pd.DataFrame(expert_rows), pd.DataFrame(crowd_rows)


def test_imputation_recovers_a_learnable_side_and_reports_held_out_quality() -> None:
    expert, crowd = _annotation_frames(n_both=60, n_expert_only=8, n_crowd_only=8)
    labels = build_relevance_labels(expert, crowd, expert_weight=0.6)
    pairs = labels.pairs
    assert labels.coverage() == {"pairs": 76, "expert_and_crowd": 60, "expert_only": 8, "crowd_only": 8}
    assert int(pairs["crowd_imputed"].sum()) == 8 and int(pairs["expert_imputed"].sum()) == 8
    # The relation is the identity, so the imputed side matches the known one closely.
    crowd_imputed = pairs[pairs["crowd_imputed"]]
    np.testing.assert_allclose(crowd_imputed["crowd_share_filled"], crowd_imputed["expert_unit"], atol=0.05)
    expert_imputed = pairs[pairs["expert_imputed"]]
    np.testing.assert_allclose(expert_imputed["expert_unit_filled"], expert_imputed["crowd_share"], atol=0.05)
    for quality in labels.imputation:
        assert quality.n_training_pairs == 60 and quality.folds == 5
        assert quality.mae < 0.05 < quality.mae_predict_mean
        assert quality.spearman > 0.95
    # Known sides are never overwritten, and relevance is the blend of the filled sides.
    both = pairs[pairs["has_expert"] & pairs["has_crowd"]]
    assert (both["crowd_share_filled"] == both["crowd_share"]).all()
    np.testing.assert_allclose(
        pairs["relevance"], 0.6 * pairs["expert_unit_filled"] + 0.4 * pairs["crowd_share_filled"]
    )
    assert (pairs["relevant"] == (pairs["relevance"] >= 0.5)).all()


def test_imputer_is_chosen_by_held_out_error() -> None:
    # crowd = expert_unit ** 2: taking the expert side as is is off by up to 2/9 on the middle
    # grades, while a ridge model with a squared term fits the relation.
    expert, crowd = _annotation_frames(n_both=80, n_expert_only=10, n_crowd_only=0, power=2.0)
    labels = build_relevance_labels(expert, crowd)
    quality = labels.imputation[0]
    assert quality.target == "crowd_share"
    assert quality.candidates["known side as is"] > 0.05
    assert quality.method == "ridge on the known side"
    assert quality.mae == quality.candidates["ridge on the known side"] < 0.03
    filled = labels.pairs[labels.pairs["crowd_imputed"]]
    np.testing.assert_allclose(filled["crowd_share_filled"], filled["expert_unit"] ** 2, atol=0.05)


def test_imputation_with_too_few_pairs_falls_back_and_says_so() -> None:
    expert, crowd = _annotation_frames(n_both=4, n_expert_only=3, n_crowd_only=0)
    labels = build_relevance_labels(expert, crowd)
    quality = labels.imputation[0]
    assert quality.folds == 0 and "fewer than" in quality.note
    filled = labels.pairs[labels.pairs["crowd_imputed"]]
    assert (filled["crowd_share_filled"] == filled["expert_unit"]).all()


def test_similarity_feature_is_used_when_given() -> None:
    expert, crowd = _annotation_frames(n_both=30, n_expert_only=5, n_crowd_only=0)
    index = pd.MultiIndex.from_arrays([expert["image"], expert["query_id"]])
    similarity = pd.Series(np.linspace(0, 1, len(expert)), index=index)
    labels = build_relevance_labels(expert, crowd, similarity=similarity)
    assert set(labels.imputation[0].candidates) == {
        "known side as is",
        "ridge on the known side",
        "ridge on the known side + similarity",
    }
    assert labels.pairs["similarity"].notna().sum() == len(expert)


# --------------------------------------------------------------------------- agreement


def test_krippendorff_alpha_matches_the_published_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units:
    # alpha nominal 0.743, ordinal 0.815, interval 0.849.
    nan = np.nan
    data = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
        ]
    )
    assert ann.krippendorff_alpha(data, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert ann.krippendorff_alpha(data, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert ann.krippendorff_alpha(data, "interval") == pytest.approx(0.849, abs=5e-4)
    assert math.isnan(ann.krippendorff_alpha(np.ones((3, 5))))  # no variation: undefined


def test_expert_agreement_and_disagreements() -> None:
    expert = pd.DataFrame(
        {
            "image": ["a", "b", "c", "d"],
            "query_id": ["q#0"] * 4,
            "expert_1": [1, 2, 4, 1],
            "expert_2": [1, 2, 4, 4],
            "expert_3": [1, 2, 4, 1],
        }
    )
    agreement = ann.expert_agreement(expert)
    assert agreement.unanimous_share == pytest.approx(3 / 4)
    assert agreement.spread_two_or_more_share == pytest.approx(1 / 4)
    assert agreement.pairwise_alpha["expert_1 vs expert_3"] == pytest.approx(1.0)
    assert agreement.alpha_ordinal < 1.0
    crowd = pd.DataFrame(
        {
            "image": ["a", "b", "c", "e"],
            "query_id": ["q#0"] * 4,
            "crowd_share": [0.0, 1.0, 1.0, 0.5],
            "crowd_yes": 0,
            "crowd_no": 0,
        }
    )
    pairs = merge_annotations(expert, crowd)
    cases = ann.disagreement_cases(pairs, {"q#0": "a query"})
    assert cases["experts"]["image"].tolist() == ["d"]
    # b: experts 2 -> 1/3 on the unit scale, crowd 1.0: a gap of 2/3.
    assert cases["expert_vs_crowd"]["image"].tolist() == ["b"]
    assert cases["expert_vs_crowd"]["query_text"].tolist() == ["a query"]
    train = pd.DataFrame({"image": ["a", "z"], "query_id": ["q#0", "q#0"], "query_text": ["x", "x"]})
    assert ann.coverage(train, pairs) == {
        "judged_pairs": 5,
        "expert_and_crowd": 3,
        "expert_only": 1,
        "crowd_only": 1,
        "train_rows": 2,
        "train_rows_with_expert": 1,
        "train_rows_with_crowd": 1,
        "train_rows_unjudged": 1,
        "judged_pairs_not_in_train": 4,
    }


def test_expert_crowd_agreement_perfect_relation() -> None:
    expert, crowd = _annotation_frames(n_both=20, n_expert_only=0, n_crowd_only=0)
    result = ann.expert_crowd_agreement(merge_annotations(expert, crowd))
    assert result.n_pairs == 20
    assert result.spearman == pytest.approx(1.0)
    assert result.alpha_interval == pytest.approx(1.0)
    assert result.binary_agreement == 1.0


# --------------------------------------------------------------------------- text


def test_normalisation_and_uninformative_queries() -> None:
    assert normalise_text("  A  Dog runs\u00a0on the grass . ") == "a dog runs on the grass"
    assert normalise_text("Two dogs , one black .") == "two dogs, one black"
    assert uninformative_reason("A photo .") is not None
    assert "too short" in (uninformative_reason("a dog") or "")
    assert uninformative_reason("a photo of the image there") == "no content words"
    assert uninformative_reason("A dog runs on the grass .") is None


def test_exact_and_near_duplicates_are_clustered() -> None:
    queries = pd.DataFrame(
        {
            "query_id": ["a#0", "b#0", "c#0", "d#0", "e#0"],
            "query_text": [
                "A dog runs on the grass .",
                "a dog runs on the grass",  # exact duplicate after normalisation
                "A dog runs on grass",  # near duplicate
                "Two children play football",
                "A photo .",
            ],
        }
    )
    report = analyse_queries(queries)
    assert report.exact_duplicate_groups == [["a#0", "b#0"]]
    assert report.near_duplicate_pairs == [("a#0", "c#0")]
    assert report.canonical == {"a#0": "a#0", "b#0": "a#0", "c#0": "a#0", "d#0": "d#0", "e#0": "e#0"}
    assert set(report.uninformative) == {"e#0"}
    assert report.summary()["queries_folded_into_a_duplicate"] == 2


# --------------------------------------------------------------------------- minors


def test_child_pairs_are_removed_from_training_and_counted() -> None:
    from core.policy import get_query_policy

    describes_minor = get_query_policy().describes_minor
    query_texts = {
        "a.jpg#0": "A child holding a red balloon",  # describes a child: its pairs go
        "a.jpg#1": "A red balloon in a park",  # fine, but its image a.jpg depicts a child
        "b.jpg#0": "A dog runs on the grass",
        "c.jpg#0": "A kidney bean salad",  # "kid" must not hit "kidney"
    }
    pairs = pd.DataFrame(
        {
            "image": ["x.jpg", "b.jpg", "a.jpg", "c.jpg", "a.jpg", "b.jpg"],
            "query_id": ["a.jpg#0", "a.jpg#0", "b.jpg#0", "b.jpg#0", "c.jpg#0", "c.jpg#0"],
        }
    )
    kept, report = filter_training_pairs(pairs, query_texts, describes_minor)
    assert report.removed_query_describes_child == 2
    assert report.removed_image_depicts_child == 2  # (a.jpg, b.jpg#0) and (a.jpg, c.jpg#0)
    assert kept.values.tolist() == [["c.jpg", "b.jpg#0"], ["b.jpg", "c.jpg#0"]]
    assert report.summary()["removed_total"] == 4
    assert report.child_images == {"a.jpg"}


def test_test_policy_accuracy_counts_blocked_missed_and_over_blocked() -> None:
    from core.policy import get_query_policy

    describes_minor = get_query_policy().describes_minor
    frame = pd.DataFrame(
        {
            "query_id": ["a#0", "a#1", "b#0", "c#0", "d#0"],
            "query_text": ["A little girl with a kite", "A kite in the sky", "A red car", "A red car", "A blue car"],
            "image": ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        }
    )

    def check(text: str) -> PolicyVerdict:
        # The real policy, plus one deliberate over-block to exercise that count.
        return PolicyVerdict(blocked=describes_minor(text) or text == "A blue car")

    out, report = apply_test_policy(frame, check, describes_minor, "test")
    assert out["blocked"].tolist() == [True, False, False, False, True]
    assert out["target_depicts_child"].tolist() == [True, True, False, False, False]
    assert (report.blocked, report.missed, report.over_blocked, report.correct) == (2, 1, 1, 3)
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.recall == pytest.approx(1 / 2)


def test_rank_buckets_cover_the_gallery_without_gaps() -> None:
    from evaluation.report import rank_buckets

    assert rank_buckets(40) == [(1, 1), (2, 5), (6, 10), (11, 20), (21, 40)]
    assert rank_buckets(100) == [(1, 1), (2, 5), (6, 10), (11, 20), (21, 50), (51, 100)]
    assert rank_buckets(1) == [(1, 1)]
    for gallery in (3, 7, 64, 999, 25_000):
        buckets = rank_buckets(gallery)
        assert buckets[0][0] == 1 and buckets[-1][1] == gallery
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(buckets))
