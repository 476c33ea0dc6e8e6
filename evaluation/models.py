"""The models an evaluation compares, behind one small interface.

A model turns images and texts into features and scores every (text, image) combination.
CLIP models (anything :class:`core.embedding.ClipEmbedder` loads, the very code path of the
service) score by cosine similarity; the proof of concept's baseline (:mod:`evaluation.baseline`)
must be fitted on the relevance labels first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

ModelKind = Literal["clip", "baseline"]


class RetrievalModel(Protocol):
    """What the evaluation needs from a model."""

    name: str
    kind: ModelKind

    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def similarity(self, text_features: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        """Scores of shape (texts, images); higher means more relevant."""
        ...

    def close(self) -> None:
        """Release the weights (the next model needs the memory)."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate.

    ``kind="clip"``: ``path`` is a sentence-transformers model name or folder (image and text),
    ``text_path`` an optional text-only model in the same space (as WITHSENSE_TEXT_MODEL).
    ``kind="baseline"``: ``image_path`` a vision backbone folder, ``text_path`` a text encoder
    folder, ``head`` the projection ("ridge" or "mlp").
    """

    name: str
    kind: ModelKind
    path: str | None = None
    text_path: str | None = None
    image_path: str | None = None
    head: Literal["ridge", "mlp"] = "ridge"
    revision: str | None = None

    @staticmethod
    def clip(
        path: str, *, text_path: str | None = None, name: str | None = None, revision: str | None = None
    ) -> ModelSpec:
        label = name or _short_name(path) + (f" + {_short_name(text_path)}" if text_path else "")
        return ModelSpec(name=label, kind="clip", path=path, text_path=text_path, revision=revision)

    @staticmethod
    def baseline(
        image_path: str, text_path: str, *, head: Literal["ridge", "mlp"] = "ridge", name: str | None = None
    ) -> ModelSpec:
        label = name or f"PoC baseline ({_short_name(image_path)} + {_short_name(text_path)}, {head})"
        return ModelSpec(name=label, kind="baseline", image_path=image_path, text_path=text_path, head=head)


def _short_name(path: str) -> str:
    # A local folder is named by its last part; a hub name is already short.
    candidate = Path(path)
    return candidate.name if candidate.exists() else path


class ClipRetrievalModel:
    """A CLIP-style model loaded by the service's own wrapper; scores are cosine similarities."""

    kind: ModelKind = "clip"

    def __init__(self, spec: ModelSpec, *, device: str = "auto", cache_folder: str | None = None) -> None:
        from core.embedding import ClipEmbedder
        from core.text_alignment import TextModelMismatchError

        if spec.path is None:
            raise ValueError("a CLIP model spec needs a path or model name")
        self.name = spec.name
        self._embedder = ClipEmbedder(
            spec.path, text_model=spec.text_path, revision=spec.revision, device=device, cache_folder=cache_folder
        )
        self._embedder.load()
        refusal = self._embedder.text_model_refusal
        if refusal is not None:  # a service would refuse every query of this pairing: nothing to evaluate
            raise TextModelMismatchError(refusal)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return np.asarray(self._embedder.embed_images(images), dtype=np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._embedder.embed_texts(texts), dtype=np.float32)

    def similarity(self, text_features: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        # The embedder returns L2-normalised vectors, so the dot product is the cosine.
        return text_features @ image_features.T

    def close(self) -> None:
        del self._embedder
