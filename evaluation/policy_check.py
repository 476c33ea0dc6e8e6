"""How well the query policy reads the ways people type: recall and over-blocking on a labelled list.

    python -m evaluation.policy_check                        # the repository's list, packaged rules
    python -m evaluation.policy_check --split holdout        # only the rows written after the rules
    python -m evaluation.policy_check --model PATH           # + the model's second opinion, per threshold
    python -m evaluation.policy_check --near-words 50        # rare dictionary words the slip step would block

The list (``evaluation/policy_queries.csv``) has one query a row with its ``language`` (en, ru),
``kind`` (slip, symbols, separated, transliteration, slang, school_age, emoji, plain for child
queries; ordinary, lookalike, computing, biology, music, for_children_no_child, age_things for
innocent ones), ``label`` (child or innocent) and ``split``: ``dev`` rows were written before and
while the rules were, ``holdout`` rows afterwards, as a check that the rules generalise.

Recall is the share of child queries blocked; over-blocking the share of innocent queries blocked.
The targets (issue 12) are recall >= 0.98 and over-blocking <= 0.03 in each language; the exit
status is 1 when a target is missed, so the script can gate a change of the rules.

With ``--model`` (a sentence-transformers CLIP name or folder, as WITHSENSE_MODEL) every query is
also embedded and scored against the zero-shot child prompts (core/moderation_prompts.yaml, or
WITHSENSE_MODERATION_PROMPTS); the script prints recall and over-blocking of the rules with the
model's opinion added, per threshold, and the lowest threshold that keeps over-blocking within
target in every language: the value for ``WITHSENSE_POLICY_MODEL_THRESHOLD``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.policy import QueryPolicy

DEFAULT_QUERIES = Path(__file__).with_name("policy_queries.csv")
RECALL_TARGET = 0.98
OVERBLOCK_TARGET = 0.03
LABELS = ("child", "innocent")


@dataclass(frozen=True)
class LabelledQuery:
    language: str
    kind: str
    label: str
    split: str
    query: str


@dataclass(frozen=True)
class Outcome:
    row: LabelledQuery
    blocked: bool
    matched: tuple[str, ...]

    @property
    def wrong(self) -> bool:
        return self.blocked != (self.row.label == "child")


def read_queries(path: Path) -> list[LabelledQuery]:
    """The labelled list; raises ValueError naming the row when a field is missing or a label unknown."""
    rows: list[LabelledQuery] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, record in enumerate(csv.DictReader(handle), start=2):
            try:
                row = LabelledQuery(**{key: record[key].strip() for key in LabelledQuery.__dataclass_fields__})
            except (KeyError, AttributeError) as error:
                raise ValueError(f"{path}:{number}: missing column {error}") from None
            if row.label not in LABELS:
                raise ValueError(f"{path}:{number}: label must be one of {LABELS}, not {row.label!r}")
            rows.append(row)
    return rows


def rate(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def summarise(outcomes: Sequence[Outcome], blocked: Sequence[bool] | None = None) -> dict[str, tuple[float, float]]:
    """Per language: (recall, over-blocking); ``blocked`` overrides each outcome's decision."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # child, child blocked, innocent, innocent blocked
    for index, outcome in enumerate(outcomes):
        is_blocked = outcome.blocked if blocked is None else blocked[index]
        slot = counts[outcome.row.language]
        if outcome.row.label == "child":
            slot[0] += 1
            slot[1] += is_blocked
        else:
            slot[2] += 1
            slot[3] += is_blocked
    return {language: (rate(c[1], c[0]), rate(c[3], c[2])) for language, c in sorted(counts.items())}


def print_report(outcomes: Sequence[Outcome], policy: QueryPolicy) -> bool:
    """Print figures and disagreements; True when every language meets both targets."""
    print(f"query policy {policy.version} ({policy.source}); {len(outcomes)} queries")
    print(f"targets: recall >= {RECALL_TARGET}, over-blocking <= {OVERBLOCK_TARGET}, in each language\n")
    ok = True
    print(f"{'split':8} {'lang':4} {'child':>6} {'recall':>7} {'innocent':>8} {'over-blocking':>13}")
    for split in ("all", *sorted({o.row.split for o in outcomes})):
        chosen = [o for o in outcomes if split in ("all", o.row.split)]
        for language, (recall, overblock) in summarise(chosen).items():
            n_child = sum(o.row.label == "child" and o.row.language == language for o in chosen)
            n_innocent = sum(o.row.label == "innocent" and o.row.language == language for o in chosen)
            verdict = ""
            if split == "all":
                met = recall >= RECALL_TARGET and overblock <= OVERBLOCK_TARGET
                ok &= met
                verdict = "  target met" if met else "  TARGET MISSED"
            print(f"{split:8} {language:4} {n_child:6} {recall:7.3f} {n_innocent:8} {overblock:13.3f}{verdict}")
    print("\nby kind (share decided right):")
    by_kind: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        slot = by_kind[(o.row.label, o.row.kind, o.row.language)]
        slot[0] += 1
        slot[1] += not o.wrong
    for (label, kind, language), (total, right) in sorted(by_kind.items()):
        print(f"  {label:8} {kind:22} {language}  {right:3}/{total:<3} {right / total:.2f}")
    wrong = [o for o in outcomes if o.wrong]
    print(f"\ndisagreements ({len(wrong)}):")
    for o in wrong:
        said = f"blocked by {', '.join(o.matched)}" if o.blocked else "allowed"
        print(f"  [{o.row.split}/{o.row.language}/{o.row.kind}] labelled {o.row.label}, {said}: {o.row.query!r}")
    return ok


def model_curve(outcomes: Sequence[Outcome], model: str, text_model: str | None, prompts: Path | None) -> None:
    """Embed every query, score it against the child prompts, print the curve and the chosen threshold."""
    from core.embedding import ClipEmbedder
    from core.moderation import ZeroShotModerator, load_rules
    from core.policy import model_child_score

    embedder = ClipEmbedder(model, text_model=text_model, device="auto")
    # The prompts by the image model's own text tower, as the service scores them (never a separate text model).
    moderator = ZeroShotModerator(load_rules(Path(prompts) if prompts else None), embedder.embed_image_model_texts)
    vectors = embedder.embed_texts([o.row.query for o in outcomes])
    scores = [model_child_score(vector, moderator) for vector in vectors]
    print(f"\nmodel second opinion: {model}, prompts {moderator.rules.version}")
    print("threshold  lang  model alone: recall over-blocking   rules + model: recall over-blocking")
    chosen: float | None = None
    for step in range(19, 0, -1):
        threshold = step / 20
        alone = summarise(outcomes, [s >= threshold for s in scores])
        combined_blocked = [o.blocked or s >= threshold for o, s in zip(outcomes, scores, strict=True)]
        combined = summarise(outcomes, combined_blocked)
        for language in combined:
            a_recall, a_over = alone[language]
            c_recall, c_over = combined[language]
            print(f"{threshold:9.2f}  {language:4}  {a_recall:19.3f} {a_over:13.3f}   {c_recall:21.3f} {c_over:13.3f}")
        if all(over <= OVERBLOCK_TARGET for _, over in combined.values()):
            chosen = threshold
    if chosen is None:
        print("no threshold keeps over-blocking within target: leave policy_model_check off for this model")
    else:
        print(f"chosen threshold: {chosen:.2f} (the lowest that keeps over-blocking <= {OVERBLOCK_TARGET})")


def near_words(policy: QueryPolicy, limit: int) -> None:
    """Words of wordfreq's lists that the slip step reads as child words: candidates for the allow-list."""
    import wordfreq

    from core.policy import _make_token  # the policy's own reading of one word

    for language in ("en", "ru"):
        found: list[tuple[float, str, str]] = []  # (zipf, word, the child words it is read as)
        for word, frequency in wordfreq.get_frequency_dict(language, wordlist="large").items():
            zipf = math.log10(frequency) + 9
            if zipf < 1.5 or len(word) < 5 or not word.isalpha() or word in policy._single_terms:
                continue
            read_as = policy._slips(_make_token(word))
            if read_as:
                found.append((zipf, word, ", ".join(sorted(read_as))))
        found.sort(reverse=True)
        print(f"{language}: {len(found)} listed words read as slips (most common first)")
        for zipf, word, targets in found[:limit]:
            print(f"  {zipf:4.2f}  {word} -> {targets}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="labelled CSV")
    parser.add_argument("--rules", type=Path, default=None, help="policy rules file (default: the packaged one)")
    parser.add_argument("--split", default="all", help="dev, holdout or all")
    parser.add_argument("--model", default=None, help="also score the model's second opinion with this CLIP")
    parser.add_argument("--text-model", default=None, help="a multilingual text model in the CLIP's space")
    parser.add_argument("--prompts", type=Path, default=None, help="moderation prompts (default: the packaged ones)")
    parser.add_argument("--near-words", type=int, default=0, metavar="N", help="list N words per language")
    args = parser.parse_args(argv)

    policy = QueryPolicy.load(args.rules)
    if args.near_words:
        near_words(policy, args.near_words)
        return 0
    rows = [row for row in read_queries(args.queries) if args.split in ("all", row.split)]
    if not rows:
        print(f"no queries in split {args.split!r}", file=sys.stderr)
        return 2
    outcomes = []
    for row in rows:
        decision = policy.check(row.query)
        outcomes.append(Outcome(row, decision.blocked, decision.matched_terms))
    ok = print_report(outcomes, policy)
    if args.model:
        model_curve(outcomes, args.model, args.text_model, args.prompts)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
