"""The zero-shot image classifier (core/moderation.py): scores, thresholds, versions, prompt files.

Most tests give the classifier synthetic embeddings: every prompt is its own axis, so the score an
image gets is known exactly and each threshold can be approached from both sides. The last tests
run the trained tiny CLIP with tests/moderation_prompts.yaml (yellow shapes stand in for children,
brown ones for unsafe content). No database: the classifier is pure computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from core.embedding import ClipEmbedder
from core.moderation import (
    DEFAULT_PROMPTS_PATH,
    CategoryRules,
    ModerationRules,
    ModerationVerdict,
    ZeroShotModerator,
    load_rules,
)
from core.settings import Settings
from evaluation.standins.synthetic import render_image

TEST_PROMPTS_PATH = Path(__file__).with_name("moderation_prompts.yaml")
TEMPERATURE = 10.0
FLAG_AT = 0.8
REVIEW_AT = 0.4


def _rules(version: str = "unit-1", **overrides: Any) -> ModerationRules:
    """Two categories of one positive and one negative prompt each, as a prompt file would give them."""
    raw: dict[str, Any] = {
        "version": version,
        "temperature": TEMPERATURE,
        "categories": {
            "minor": {
                "effect": "minor",
                "flag_at": FLAG_AT,
                "review_at": REVIEW_AT,
                "positive": ["a child"],
                "negative": ["an adult"],
            },
            "unsafe": {
                "effect": "hide",
                "flag_at": FLAG_AT,
                "review_at": REVIEW_AT,
                "positive": ["something unsafe"],
                "negative": ["something safe"],
            },
        },
    }
    raw.update(overrides)
    return ModerationRules.model_validate(raw)


class AxisEmbedder:
    """Gives every distinct prompt its own unit axis, so scores can be computed by hand."""

    def __init__(self, dimension: int = 16) -> None:
        self.dimension = dimension
        self.axes: dict[str, int] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            rows[row, self.axes.setdefault(text, len(self.axes))] = 1.0
        return rows

    def axis(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimension)
        vector[self.axes[text]] = 1.0
        return vector


def _part_scoring(embedder: AxisEmbedder, positive: str, negative: str, score: float) -> np.ndarray:
    """A unit vector in the plane of two prompts that, as half of an image, scores ``score``.

    The image is the sum of two such orthogonal parts (one per category), so the classifier
    divides it by sqrt(2). A part at angle t between the axes then gives logits T*cos t/sqrt(2)
    and T*sin t/sqrt(2), and a score of sigmoid(T*(cos t - sin t)/sqrt(2)) = sigmoid(T*cos(t + pi/4)).
    """
    gap = math.log(score / (1.0 - score)) / TEMPERATURE
    angle = math.acos(gap) - math.pi / 4
    return math.cos(angle) * embedder.axis(positive) + math.sin(angle) * embedder.axis(negative)


def _by_category(verdict: ModerationVerdict) -> dict[str, tuple[float, str]]:
    return {s.category: (s.score, s.decision) for s in verdict.scores}


@pytest.fixture()
def axes() -> AxisEmbedder:
    return AxisEmbedder()


@pytest.fixture()
def moderator(axes: AxisEmbedder) -> ZeroShotModerator:
    return ZeroShotModerator(_rules(), axes)


def _minor_image(axes: AxisEmbedder, score: float, unsafe: float = 0.01) -> np.ndarray:
    """An image with the given minor score and (on other axes) the given unsafe score."""
    return _part_scoring(axes, "a child", "an adult", score) + _part_scoring(
        axes, "something unsafe", "something safe", unsafe
    )


# ------------------------------------------------------------------------------- thresholds

THRESHOLD_CASES: list[tuple[float, str]] = [
    (0.99, "flagged"),
    (FLAG_AT + 1e-6, "flagged"),
    (FLAG_AT - 1e-6, "uncertain"),
    (0.6, "uncertain"),
    (REVIEW_AT + 1e-6, "uncertain"),
    (REVIEW_AT - 1e-6, "clear"),
    (0.1, "clear"),
    (0.001, "clear"),
]


@pytest.mark.parametrize(("score", "decision"), THRESHOLD_CASES, ids=[f"{s}->{d}" for s, d in THRESHOLD_CASES])
def test_a_score_is_flagged_uncertain_or_clear_by_the_thresholds(
    axes: AxisEmbedder, moderator: ZeroShotModerator, score: float, decision: str
) -> None:
    # The two categories' axes are orthogonal, so each image sets both scores independently.
    verdict = moderator.score(_minor_image(axes, score))
    minor_score, minor_decision = _by_category(verdict)["minor"]
    assert minor_score == pytest.approx(score, abs=1e-9)
    assert minor_decision == decision
    assert _by_category(verdict)["unsafe"] == (pytest.approx(0.01, abs=1e-9), "clear")


def test_a_score_exactly_at_a_threshold_takes_the_stricter_decision(axes: AxisEmbedder) -> None:
    at_flag = ZeroShotModerator(_rules(categories=_categories(minor_flag_at=0.5, minor_review_at=0.3)), axes)
    at_review = ZeroShotModerator(_rules(categories=_categories(minor_flag_at=0.9, minor_review_at=0.5)), axes)
    # Halfway between the positive and the negative prompt: equal logits, a score of exactly 0.5.
    image = axes.axis("a child") + axes.axis("an adult")
    assert _by_category(at_flag.score(image))["minor"] == (0.5, "flagged")
    assert _by_category(at_review.score(image))["minor"] == (0.5, "uncertain")


def _categories(minor_flag_at: float, minor_review_at: float) -> dict[str, Any]:
    return {
        "minor": {
            "effect": "minor",
            "flag_at": minor_flag_at,
            "review_at": minor_review_at,
            "positive": ["a child"],
            "negative": ["an adult"],
        },
        "unsafe": {
            "effect": "hide",
            "flag_at": FLAG_AT,
            "review_at": REVIEW_AT,
            "positive": ["something unsafe"],
            "negative": ["something safe"],
        },
    }


def test_uncertain_goes_to_review_and_hides_nothing(axes: AxisEmbedder, moderator: ZeroShotModerator) -> None:
    verdict = moderator.score(_minor_image(axes, 0.6))
    assert verdict.needs_review
    assert not verdict.depicts_minor
    assert not verdict.unsafe


def test_a_flagged_minor_is_hidden_without_review(axes: AxisEmbedder, moderator: ZeroShotModerator) -> None:
    verdict = moderator.score(_minor_image(axes, 0.95))
    assert verdict.depicts_minor
    assert not verdict.unsafe
    assert not verdict.needs_review  # parental consent, not a moderator, makes it visible


def test_flagged_unsafe_content_goes_to_review(axes: AxisEmbedder, moderator: ZeroShotModerator) -> None:
    verdict = moderator.score(_minor_image(axes, 0.05, unsafe=0.95))
    assert _by_category(verdict)["unsafe"][1] == "flagged"
    assert verdict.unsafe
    assert verdict.needs_review
    assert not verdict.depicts_minor


def test_uncertain_unsafe_content_goes_to_review_but_is_not_unsafe(
    axes: AxisEmbedder, moderator: ZeroShotModerator
) -> None:
    verdict = moderator.score(_minor_image(axes, 0.05, unsafe=0.5))
    assert verdict.needs_review and not verdict.unsafe and not verdict.depicts_minor


def test_a_clear_image_passes(axes: AxisEmbedder, moderator: ZeroShotModerator) -> None:
    verdict = moderator.score(_minor_image(axes, 0.05, unsafe=0.05))
    assert [s.decision for s in verdict.scores] == ["clear", "clear"]
    assert not (verdict.needs_review or verdict.unsafe or verdict.depicts_minor)


def test_the_score_is_the_probability_mass_of_the_positive_prompts(axes: AxisEmbedder) -> None:
    """Several prompts per side, checked against the softmax written out by hand."""
    rules = _rules(
        categories={
            "minor": {
                "effect": "minor",
                "flag_at": 0.9,
                "review_at": 0.5,
                "positive": ["a child", "a baby", "a toddler"],
                "negative": ["an adult", "a landscape"],
            }
        }
    )
    verdict = ZeroShotModerator(rules, axes).score(axes.axis("a baby"))
    expected = (math.exp(TEMPERATURE) + 2) / (math.exp(TEMPERATURE) + 4)
    assert verdict.scores[0].score == pytest.approx(expected, rel=1e-9)
    assert verdict.scores[0].decision == "flagged"
    on_negative = ZeroShotModerator(rules, axes).score(axes.axis("a landscape"))
    assert on_negative.scores[0].score == pytest.approx(3 / (math.exp(TEMPERATURE) + 4), rel=1e-9)
    assert on_negative.scores[0].decision == "clear"


def test_the_scale_of_an_embedding_does_not_matter(axes: AxisEmbedder, moderator: ZeroShotModerator) -> None:
    image = _minor_image(axes, 0.6)
    scaled = moderator.score(image * 37.5)
    assert [s.decision for s in scaled.scores] == [s.decision for s in moderator.score(image).scores]
    assert [s.score for s in scaled.scores] == pytest.approx([0.6, 0.01], abs=1e-9)


@pytest.mark.parametrize(
    "broken", [np.zeros(16), np.full(16, np.nan), np.r_[np.inf, np.zeros(15)]], ids=["zero", "nan", "inf"]
)
def test_a_broken_embedding_is_refused_not_passed_as_clear(moderator: ZeroShotModerator, broken: np.ndarray) -> None:
    # Its scores would be NaN, and NaN compares as "clear": a child's photo would pass unseen.
    with pytest.raises(ValueError, match="zero or not finite"):
        moderator.score(broken)


def test_a_broken_prompt_embedding_is_refused() -> None:
    def zeros(texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), 4), dtype=np.float32)

    with pytest.raises(ValueError, match=r"'minor'.*zero or not finite"):
        ZeroShotModerator(_rules(), zeros)


def test_the_prompt_embeddings_are_computed_once_and_left_as_given() -> None:
    calls: list[list[str]] = []
    given: list[np.ndarray] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        vectors = np.eye(8, dtype=np.float32)[: len(texts)] * 3.0
        given.append(vectors)
        return vectors

    moderator = ZeroShotModerator(_rules(), embed)
    assert calls == [["a child", "an adult"], ["something unsafe", "something safe"]]
    for image in (np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]):
        moderator.score(image)
    assert len(calls) == 2, "scoring embeds no text"
    assert all(float(v.max()) == 3.0 for v in given), "the embedder's arrays are not normalised in place"


# ------------------------------------------------------------------------------- versions and files


def test_the_verdict_reports_the_classifier_version(axes: AxisEmbedder) -> None:
    assert (
        ZeroShotModerator(_rules("zeroshot-test-42"), axes).score(np.eye(16)[0]).classifier_version
        == "zeroshot-test-42"
    )
    assert ZeroShotModerator(_rules("other-7"), AxisEmbedder()).score(np.eye(16)[0]).classifier_version == "other-7"


def test_the_shipped_and_the_test_prompt_files_load() -> None:
    shipped = ModerationRules.load(DEFAULT_PROMPTS_PATH)
    assert shipped.version == yaml.safe_load(DEFAULT_PROMPTS_PATH.read_text(encoding="utf-8"))["version"]
    assert {c.effect for c in shipped.categories.values()} == {"minor", "hide"}
    for category in shipped.categories.values():
        assert 0 < category.review_at < category.flag_at < 1, "the shipped file has a review band"
    test = ModerationRules.load(TEST_PROMPTS_PATH)
    assert test.version == "test-stand-ins-1"


def test_the_setting_names_the_prompt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(_rules("from-env-3").model_dump()), encoding="utf-8")
    monkeypatch.setenv("WITHSENSE_MODERATION_PROMPTS", str(path))
    assert load_rules(Settings().moderation_prompts).version == "from-env-3"
    monkeypatch.delenv("WITHSENSE_MODERATION_PROMPTS")
    assert load_rules(Settings().moderation_prompts).version == ModerationRules.load(DEFAULT_PROMPTS_PATH).version


def _prompt_file(**changes: Any) -> dict[str, Any]:
    raw = _rules().model_dump()
    for dotted, value in changes.items():
        target = raw
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return raw


BAD_PROMPT_FILES: list[tuple[str, Any, str]] = [
    (
        "review above flag",
        _prompt_file(categories__minor__review_at=0.9),
        r"categories\.minor[\s\S]*review_at must not be above flag_at",
    ),
    ("flag_at above 1", _prompt_file(categories__minor__flag_at=1.5), r"categories\.minor\.flag_at"),
    ("negative threshold", _prompt_file(categories__unsafe__review_at=-0.1), r"categories\.unsafe\.review_at"),
    ("no positive prompts", _prompt_file(categories__minor__positive=[]), r"categories\.minor\.positive"),
    ("no negative prompts", _prompt_file(categories__unsafe__negative=None), r"categories\.unsafe\.negative"),
    ("unknown effect", _prompt_file(categories__minor__effect="blur"), r"categories\.minor\.effect"),
    ("missing threshold", _prompt_file(categories__minor__flag_at=None), r"categories\.minor\.flag_at"),
    ("no categories", _prompt_file(categories={}), r"categories"),
    ("no version", _prompt_file(version=None), r"version"),
    ("zero temperature", _prompt_file(temperature=0), r"temperature"),
    ("a list, not a mapping", ["a child"], r"dictionary"),
]


@pytest.mark.parametrize(("case", "raw", "message"), BAD_PROMPT_FILES, ids=[c for c, _, _ in BAD_PROMPT_FILES])
def test_a_bad_prompt_file_fails_with_a_clear_error(tmp_path: Path, case: str, raw: Any, message: str) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ValidationError, match=message):
        ModerationRules.load(path)


def test_an_unreadable_prompt_file_fails_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        ModerationRules.load(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [unclosed\n", encoding="utf-8")
    with pytest.raises(yaml.YAMLError, match="line 1"):
        ModerationRules.load(broken)


def test_thresholds_are_checked_in_code_too() -> None:
    with pytest.raises(ValidationError, match="review_at must not be above flag_at"):
        CategoryRules(effect="minor", flag_at=0.3, review_at=0.6, positive=["a"], negative=["b"])


# ------------------------------------------------------------------------------- the tiny trained CLIP


@pytest.fixture(scope="module")
def tiny_embedder(tiny_clip_path: Path) -> ClipEmbedder:
    embedder = ClipEmbedder(str(tiny_clip_path), device="cpu")
    embedder.load()
    return embedder


def _embed_shape(embedder: ClipEmbedder, colour: str, shape: str, seed: int) -> np.ndarray:
    image, _ = render_image(colour, shape, np.random.default_rng(seed))
    return embedder.embed_images([image])[0]


@pytest.mark.parametrize(
    ("colour", "shape", "minor", "unsafe"),
    [
        ("yellow", "star", "flagged", "clear"),
        ("yellow", "circle", "flagged", "clear"),
        ("brown", "square", "clear", "flagged"),
        ("blue", "star", "clear", "clear"),
        ("red", "cross", "clear", "clear"),
    ],
)
def test_the_tiny_model_flags_its_stand_ins(
    tiny_embedder: ClipEmbedder, colour: str, shape: str, minor: str, unsafe: str
) -> None:
    rules = ModerationRules.load(TEST_PROMPTS_PATH)
    verdict = ZeroShotModerator(rules, tiny_embedder.embed_texts).score(_embed_shape(tiny_embedder, colour, shape, 3))
    assert verdict.classifier_version == "test-stand-ins-1"
    assert {s.category: s.decision for s in verdict.scores} == {"minor": minor, "unsafe": unsafe}
    assert verdict.depicts_minor is (minor == "flagged")
    assert verdict.unsafe is (unsafe == "flagged")


def test_the_tiny_model_routes_a_score_between_the_thresholds_to_review(tiny_embedder: ClipEmbedder) -> None:
    """The review band placed around a real score: the same image is uncertain, then flagged, then clear."""
    rules = ModerationRules.load(TEST_PROMPTS_PATH)
    image = _embed_shape(tiny_embedder, "yellow", "square", 5)
    score = _by_category(ZeroShotModerator(rules, tiny_embedder.embed_texts).score(image))["minor"][0]
    assert 0.0 < score < 1.0

    def with_band(flag_at: float, review_at: float) -> ModerationVerdict:
        minor = rules.categories["minor"].model_copy(update={"flag_at": flag_at, "review_at": review_at})
        banded = rules.model_copy(update={"categories": {**rules.categories, "minor": minor}})
        return ZeroShotModerator(banded, tiny_embedder.embed_texts).score(image)

    around = with_band(flag_at=(score + 1.0) / 2, review_at=score / 2)
    assert _by_category(around)["minor"][1] == "uncertain"
    assert around.needs_review and not around.depicts_minor
    below = with_band(flag_at=score / 2, review_at=score / 4)
    assert _by_category(below)["minor"][1] == "flagged" and below.depicts_minor and not below.needs_review
    above = with_band(flag_at=(score + 3.0) / 4, review_at=(score + 1.0) / 2)
    assert _by_category(above)["minor"][1] == "clear" and not above.needs_review
