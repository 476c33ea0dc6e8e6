"""Zero-shot image moderation with the search embedding: scores per category from prompt sets.

Pure computation on vectors plus a versioned prompt file; the worker calls it with the photo's
embedding and the prompts' text embeddings (computed once per process by the same model).

How a category's score is read depends on how the model was trained (``ZeroShotScoring``, given by the model's
backend): a CLIP (softmax loss) compares prompts with each other, so the score is the softmax mass of the
positive prompts at the rules' temperature; a SigLIP (sigmoid loss) judges every (image, prompt) pair on its own,
so the score is the highest ``sigmoid(scale * cos + bias)`` of a positive prompt. There, negatives cannot vote
a positive match away: an image that matches a child prompt stays flagged whatever else it also matches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, Field, model_validator

from core.model_backends import ZeroShotScoring
from core.runtime import runtime

DEFAULT_PROMPTS_PATH = Path(__file__).with_name("moderation_prompts.yaml")

Decision = Literal["clear", "uncertain", "flagged"]


class CategoryRules(BaseModel):
    effect: Literal["minor", "hide"]
    flag_at: float = Field(ge=0, le=1)
    review_at: float = Field(ge=0, le=1)
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> CategoryRules:
        if self.review_at > self.flag_at:
            raise ValueError("review_at must not be above flag_at")
        return self


class ModerationRules(BaseModel):
    version: str = Field(min_length=1)
    temperature: float = Field(gt=0)
    categories: dict[str, CategoryRules] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path | None = None) -> ModerationRules:
        source = path or DEFAULT_PROMPTS_PATH
        return cls.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class CategoryScore:
    category: str
    score: float
    decision: Decision
    effect: str


@dataclass(frozen=True)
class ModerationVerdict:
    classifier_version: str
    scores: tuple[CategoryScore, ...]

    @property
    def depicts_minor(self) -> bool:
        return any(s.effect == "minor" and s.decision == "flagged" for s in self.scores)

    @property
    def unsafe(self) -> bool:
        return any(s.effect == "hide" and s.decision == "flagged" for s in self.scores)

    @property
    def needs_review(self) -> bool:
        """Uncertain about anything, or flagged as unsafe: a person decides."""
        return any(s.decision == "uncertain" for s in self.scores) or self.unsafe


class ZeroShotModerator:
    """Scores image embeddings against the prompt sets; prompt embeddings are computed once.

    ``scoring`` says how the model's scores are read (default: CLIP's softmax at the rules' temperature).
    """

    def __init__(
        self,
        rules: ModerationRules,
        embed_texts: Callable[[Sequence[str]], np.ndarray],
        scoring: ZeroShotScoring | None = None,
    ) -> None:
        self.rules = rules
        self.scoring = scoring if scoring is not None else ZeroShotScoring("softmax", rules.temperature)
        self._prompts: dict[str, tuple[np.ndarray, int]] = {}
        for name, category in rules.categories.items():
            # A copy: the embedder's own array (perhaps cached) is not normalised in place.
            vectors = np.array(embed_texts(category.positive + category.negative), dtype=np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            if not (np.isfinite(vectors).all() and (norms > 0).all()):
                raise ValueError(f"moderation category {name!r}: a prompt embedding is zero or not finite")
            self._prompts[name] = (vectors / norms, len(category.positive))

    def score(self, image_embedding: np.ndarray) -> ModerationVerdict:
        """Score one image embedding; raises ValueError for a zero or non-finite embedding.

        Such an embedding would give NaN scores, which compare as "clear": refusing it keeps a
        broken embedding from passing moderation unseen.
        """
        image = np.asarray(image_embedding, dtype=np.float64)
        norm = float(np.linalg.norm(image))
        if not (np.isfinite(image).all() and norm > 0):
            raise ValueError("cannot moderate an image embedding that is zero or not finite")
        image = image / norm
        results = []
        for name, category in self.rules.categories.items():
            vectors, positives = self._prompts[name]
            cosines = vectors.astype(np.float64) @ image
            if self.scoring.kind == "sigmoid":
                logits = self.scoring.scale * cosines[:positives] + self.scoring.bias
                score = float(np.clip(1.0 / (1.0 + np.exp(-logits.max())), 0.0, 1.0))
            else:
                # The rules' temperature, calibrated with its thresholds, not the model's own logit scale.
                logits = self.rules.temperature * cosines
                logits -= logits.max()
                probabilities = np.exp(logits) / np.exp(logits).sum()
                score = float(np.clip(probabilities[:positives].sum(), 0.0, 1.0))
            decision: Decision = (
                "flagged" if score >= category.flag_at else ("uncertain" if score >= category.review_at else "clear")
            )
            results.append(CategoryScore(name, score, decision, category.effect))
        return ModerationVerdict(self.rules.version, tuple(results))


def load_rules(path: Path | None = None) -> ModerationRules:
    """The prompt sets in `path` (default: the packaged core/moderation_prompts.yaml)."""
    return ModerationRules.load(path)


def _build_moderator() -> ZeroShotModerator:
    from core.embedding import get_embedder
    from core.settings import get_settings

    embedder = get_embedder()
    # The image model's own text tower, never WITHSENSE_TEXT_MODEL: the thresholds were calibrated on it.
    return ZeroShotModerator(
        load_rules(get_settings().moderation_prompts), embedder.embed_image_model_texts, embedder.zero_shot_scoring()
    )


_moderator = runtime.slot("moderator", _build_moderator)


def get_moderator() -> ZeroShotModerator:
    """The process-wide moderator (prompts from WITHSENSE_MODERATION_PROMPTS); its prompt embeddings come from the
    image model's own text tower (not a separate text model), computed once."""
    return _moderator.get()
