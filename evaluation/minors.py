"""The minors rule applied to the data, with the service's own query policy.

The law: nothing that depicts or describes a child under 16 may be shown without parental
consent. The evaluation applies the same :mod:`core.policy` the search API uses, so the
numbers here are the service's behaviour, not a second opinion:

* Training sets: a pair is removed when its query describes a child, or when any caption of
  its image does (the captions are true descriptions, so that image depicts a child).
* Test: a query that the policy blocks gets the disclaimer from the service; those queries
  are counted apart and left out of the retrieval metrics. "Policy accuracy" compares the
  decision with a reference: does the query's target image depict a child, judged from all
  captions of that image. An unblocked query whose target depicts a child is a *miss* (the
  image moderation must catch it); a blocked query whose target does not is *over-blocking*.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from evaluation.dataset import query_source_image

DescribesMinor = Callable[[str], bool]
BlocksQuery = Callable[[str], "PolicyVerdict"]


@dataclass(frozen=True)
class PolicyVerdict:
    """The parts of core.policy's PolicyDecision the evaluation reads."""

    blocked: bool
    category: str | None = None
    matched_terms: tuple[str, ...] = ()


def service_policy() -> tuple[DescribesMinor, BlocksQuery, str]:
    """The service's query policy: (describes_minor, check_query, rules version)."""
    from core.policy import check_query, get_query_policy

    policy = get_query_policy()

    def check(text: str) -> PolicyVerdict:
        decision = check_query(text)
        return PolicyVerdict(blocked=decision.blocked, category=decision.category, matched_terms=decision.matched_terms)

    return policy.describes_minor, check, policy.version


def child_images(query_texts: dict[str, str], describes_minor: DescribesMinor) -> set[str]:
    """Images any of whose captions describes a child (a query id ``<image>#<n>`` is a caption of ``<image>``)."""
    images: set[str] = set()
    for query_id, text in query_texts.items():
        source = query_source_image(query_id)
        if source and describes_minor(text):
            images.add(source)
    return images


@dataclass
class TrainMinorsReport:
    """What the rule removed from one training table."""

    pairs_before: int
    removed_query_describes_child: int
    removed_image_depicts_child: int  # pairs whose query is fine but whose image is a child's
    pairs_after: int
    child_queries: set[str] = field(default_factory=set)
    child_images: set[str] = field(default_factory=set)

    @property
    def removed(self) -> int:
        return self.pairs_before - self.pairs_after

    def summary(self) -> dict[str, int]:
        return {
            "pairs_before": self.pairs_before,
            "removed_query_describes_child": self.removed_query_describes_child,
            "removed_image_depicts_child": self.removed_image_depicts_child,
            "removed_total": self.removed,
            "pairs_after": self.pairs_after,
            "distinct_child_queries": len(self.child_queries),
            "distinct_child_images": len(self.child_images),
        }


def filter_training_pairs(
    pairs: pd.DataFrame,
    query_texts: dict[str, str],
    describes_minor: DescribesMinor,
) -> tuple[pd.DataFrame, TrainMinorsReport]:
    """Remove pairs (``image``, ``query_id``) whose query describes a child or whose image depicts one."""
    kids_images = child_images(query_texts, describes_minor)
    kids_queries = {q for q, t in query_texts.items() if describes_minor(t)}
    query_hit = pairs["query_id"].isin(kids_queries)
    image_hit = pairs["image"].isin(kids_images) & ~query_hit
    kept = pairs[~(query_hit | image_hit)].reset_index(drop=True)
    report = TrainMinorsReport(
        pairs_before=len(pairs),
        removed_query_describes_child=int(query_hit.sum()),
        removed_image_depicts_child=int(image_hit.sum()),
        pairs_after=len(kept),
        child_queries=kids_queries & set(pairs["query_id"]),
        child_images=kids_images & set(pairs["image"]),
    )
    return kept, report


@dataclass(frozen=True)
class TestPolicyReport:
    """The policy's decisions on the test queries against the caption-based reference."""

    n_queries: int
    blocked: int
    target_depicts_child: int
    correct: int
    missed: int  # not blocked, target depicts a child
    over_blocked: int  # blocked, target does not depict a child
    rules_version: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.n_queries if self.n_queries else float("nan")

    @property
    def recall(self) -> float:
        """Share of child-target queries that get the disclaimer."""
        return (
            (self.target_depicts_child - self.missed) / self.target_depicts_child
            if self.target_depicts_child
            else float("nan")
        )

    def summary(self) -> dict[str, float | int | str]:
        return {
            "queries": self.n_queries,
            "blocked (disclaimer shown)": self.blocked,
            "target image depicts a child": self.target_depicts_child,
            "policy accuracy": round(self.accuracy, 4),
            "policy recall on child targets": round(self.recall, 4),
            "missed (child target, not blocked)": self.missed,
            "over-blocked": self.over_blocked,
            "rules version": self.rules_version,
        }


def apply_test_policy(
    test_queries: pd.DataFrame,
    check_query: BlocksQuery,
    describes_minor: DescribesMinor,
    rules_version: str = "unknown",
) -> tuple[pd.DataFrame, TestPolicyReport]:
    """Add ``blocked``, ``policy_category``, ``policy_terms``, ``target_depicts_child`` and
    ``policy_correct`` to a copy of the test queries."""
    frame = test_queries.copy()
    verdicts = [check_query(str(t)) for t in frame["query_text"]]
    frame["blocked"] = [v.blocked for v in verdicts]
    frame["policy_category"] = [v.category or "" for v in verdicts]
    frame["policy_terms"] = [", ".join(v.matched_terms) for v in verdicts]
    kids = {
        image for image, text in zip(frame["image"], frame["query_text"], strict=True) if describes_minor(str(text))
    }
    frame["target_depicts_child"] = frame["image"].isin(kids)
    frame["policy_correct"] = frame["blocked"] == frame["target_depicts_child"]
    report = TestPolicyReport(
        n_queries=len(frame),
        blocked=int(frame["blocked"].sum()),
        target_depicts_child=int(frame["target_depicts_child"].sum()),
        correct=int(frame["policy_correct"].sum()),
        missed=int((~frame["blocked"] & frame["target_depicts_child"]).sum()),
        over_blocked=int((frame["blocked"] & ~frame["target_depicts_child"]).sum()),
        rules_version=rules_version,
    )
    return frame, report
