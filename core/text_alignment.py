"""Whether a separate text model (WITHSENSE_TEXT_MODEL) writes its vectors in the image model's space.

A multilingual text tower made for a CLIP (``clip-ViT-B-32-multilingual-v1`` for ``clip-ViT-B-32``) was trained
so that its embedding of a caption lands where the CLIP's own text tower puts it. A text model from another
space (another CLIP, another seed, a plain sentence encoder of the same width) has the right dimension and yet
ranks images at random. The check embeds a fixed set of probe captions with both towers and measures how much
closer each caption's two vectors are to each other than to the other captions' vectors (the margin): about 0 for
a foreign space, well above it for a tower distilled into this one. Pure numpy: the embedder supplies the vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

# Plain captions of everyday photos: any text tower made for a CLIP knows these words.
PROBE_CAPTIONS: tuple[str, ...] = (
    "a photo of a dog",
    "a photo of a cat",
    "a red car parked on the street",
    "a bowl of fruit on a table",
    "a mountain landscape with snow",
    "a city skyline at night",
    "a boat on the sea",
    "a bicycle leaning against a wall",
    "a plate of food",
    "a green field under a blue sky",
    "a red circle",
    "a blue square",
)

# Margin (matched minus mismatched cosine) below which the two models are taken to be in different spaces.
# A foreign space measures about 0 (the tiny CLIP against a twin of another seed: 0.1 at most); a tower distilled
# into the space 0.5 (the tiny multilingual stand-in on the built-in probes) to 0.8 (with the moderation prompts).
DEFAULT_MIN_MARGIN = 0.2


class TextModelMismatchError(ValueError):
    """The text model does not embed into the image model's space (another dimension, or probes far apart)."""


@dataclass(frozen=True)
class TextAlignment:
    """How well the text model agrees with the image model's own text tower on the probe captions."""

    probes: int
    matched_cosine: float  # mean cosine between a probe's two embeddings
    mismatched_cosine: float  # mean cosine between one probe's text-model vector and other probes' reference vectors
    top1: float  # share of probes whose text-model vector is nearest to its own reference vector
    min_margin: float

    @property
    def margin(self) -> float:
        return self.matched_cosine - self.mismatched_cosine

    @property
    def agrees(self) -> bool:
        return self.margin >= self.min_margin

    def describe(self) -> str:
        return (
            f"probe agreement margin {self.margin:.3f} (matched cosine {self.matched_cosine:.3f}, others "
            f"{self.mismatched_cosine:.3f}, nearest-own {self.top1:.2f} over {self.probes} probes; needs "
            f">= {self.min_margin:.2f})"
        )


def probe_texts(extra: Iterable[str] = ()) -> list[str]:
    """The built-in probe captions plus `extra` ones (e.g. the moderation prompts), each once, in order."""
    seen: dict[str, None] = {}
    for text in (*PROBE_CAPTIONS, *extra):
        cleaned = text.strip()
        if cleaned:
            seen.setdefault(cleaned, None)
    return list(seen)


def moderation_prompt_texts(path: Path | None = None) -> list[str]:
    """The moderation prompts (WITHSENSE_MODERATION_PROMPTS, default core/moderation_prompts.yaml) as extra probes:
    the texts whose vectors decide most, in the deployment's own domain. Read without core.moderation (which
    imports the embedder); a broken file gives none here, and the moderator reports it itself."""
    source = path or Path(__file__).with_name("moderation_prompts.yaml")
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        categories = data["categories"].values()
        return [str(t) for category in categories for t in (*category["positive"], *category["negative"])]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return []


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def measure_alignment(
    reference: np.ndarray, candidate: np.ndarray, *, min_margin: float = DEFAULT_MIN_MARGIN
) -> TextAlignment:
    """Compare the probes' vectors from the image model's own text tower (`reference`) and the text model's.

    Both are (probes, dimension); a dimension mismatch is `TextModelMismatchError` at once.
    """
    if reference.ndim != 2 or candidate.ndim != 2:
        raise ValueError("alignment takes two (probes, dimension) arrays")
    if reference.shape[1] != candidate.shape[1]:
        raise TextModelMismatchError(
            f"the text model gives {candidate.shape[1]}-d vectors but the image model {reference.shape[1]}-d"
        )
    if reference.shape[0] != candidate.shape[0] or reference.shape[0] < 2:
        raise ValueError("alignment needs the same two or more probes from both models")
    similarity = _unit_rows(candidate) @ _unit_rows(reference).T
    n = similarity.shape[0]
    matched = float(np.mean(np.diag(similarity)))
    mismatched = float((similarity.sum() - np.trace(similarity)) / (n * n - n))
    top1 = float(np.mean(np.argmax(similarity, axis=1) == np.arange(n)))
    return TextAlignment(n, matched, mismatched, top1, min_margin)


def require_alignment(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    image_model: str,
    text_model: str,
    min_margin: float = DEFAULT_MIN_MARGIN,
) -> TextAlignment:
    """`measure_alignment`, raising `TextModelMismatchError` with both names when the models disagree."""
    try:
        alignment = measure_alignment(reference, candidate, min_margin=min_margin)
    except TextModelMismatchError as exc:
        raise TextModelMismatchError(
            f"WITHSENSE_TEXT_MODEL {text_model} is not in the embedding space of {image_model}: {exc}"
        ) from None
    if not alignment.agrees:
        raise TextModelMismatchError(
            f"WITHSENSE_TEXT_MODEL {text_model} is not in the embedding space of {image_model}: "
            f"{alignment.describe()}. Use a text model trained for this image model (e.g. "
            "sentence-transformers/clip-ViT-B-32-multilingual-v1 for clip-ViT-B-32), or unset WITHSENSE_TEXT_MODEL."
        )
    return alignment
