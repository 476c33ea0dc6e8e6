"""The proof of concept's baseline: frozen image and text encoders joined by a trained projection.

The proof of concept vectorised images with a ResNet-50 and texts with BERT, then trained
Ridge and MLP models on the relevance labels; it reported "average results" and moved to
CLIP. This module rebuilds that baseline so the comparison table shows the difference:

* image features: the pooled output of a vision backbone in Hugging Face format, loaded with
  ``AutoModel`` + ``AutoImageProcessor`` (``microsoft/resnet-50``, a ViT, a ConvNeXt...);
* text features: a sentence-transformers folder (has ``modules.json``), or any Hugging Face
  text encoder (``bert-base-uncased``...) mean-pooled over its tokens;
* the join: a projection from text features to standardised image features, fitted on
  (query, image) pairs weighted by their relevance label (plus each caption's own image as a
  relevance-1 pair), by ridge regression (``head="ridge"``, alpha by generalised
  cross-validation) or a one-hidden-layer MLP (``head="mlp"``). Score = cosine between the
  projected query and the image.

To evaluate the real thing, download once on a machine with internet, then point at the folders::

    huggingface-cli download microsoft/resnet-50 --local-dir models/resnet-50
    huggingface-cli download bert-base-uncased --local-dir models/bert-base-uncased
    withsense eval DATASET --baseline-image models/resnet-50 --baseline-text models/bert-base-uncased
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

from evaluation.models import ModelKind, ModelSpec

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 7))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class ModelFolderError(FileNotFoundError):
    """A baseline encoder path that is not a usable local model folder."""


def _require_folder(path: str, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise ModelFolderError(
            f"{what} {path!r} is not a local model folder (no config.json or modules.json). "
            "Download it once where the hub is reachable, e.g. "
            "`huggingface-cli download microsoft/resnet-50 --local-dir models/resnet-50`, and pass that folder."
        )
    return folder


class FrozenImageEncoder:
    """Pooled features of a frozen vision backbone (Hugging Face folder)."""

    def __init__(self, path: str, *, device: str = "auto", batch_size: int = 32) -> None:
        from transformers import AutoImageProcessor, AutoModel

        folder = _require_folder(path, "image encoder")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        chunks: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = self.processor(images=list(images[start : start + self.batch_size]), return_tensors="pt")
            outputs = self.model(**{k: v.to(self.device) for k, v in batch.items()})
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                # Backbones without a pooler (e.g. ViT without one): average the final tokens/pixels.
                hidden = outputs.last_hidden_state
                pooled = hidden.mean(dim=tuple(range(1, hidden.dim() - 1))) if hidden.dim() > 2 else hidden
            chunks.append(pooled.reshape(pooled.shape[0], -1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


class FrozenTextEncoder:
    """Sentence features of a frozen text encoder: sentence-transformers or mean-pooled Hugging Face."""

    def __init__(self, path: str, *, device: str = "auto", batch_size: int = 64) -> None:
        folder = _require_folder(path, "text encoder")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._sentence_transformer = None
        if (folder / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            self._sentence_transformer = SentenceTransformer(str(folder), device=self.device)
        else:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._sentence_transformer is not None:
            return np.asarray(
                self._sentence_transformer.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True),
                dtype=np.float32,
            )
        chunks: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # Mean over real tokens only: padding must not dilute short queries.
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


class ProjectionHead:
    """Maps text features onto standardised image features; fitted with relevance weights."""

    def __init__(self, kind: Literal["ridge", "mlp"] = "ridge", *, seed: int = 0) -> None:
        if kind not in ("ridge", "mlp"):
            raise ValueError(f"head must be 'ridge' or 'mlp', not {kind!r}")
        self.kind = kind
        self.seed = seed
        self.text_scaler = StandardScaler()
        self.image_scaler = StandardScaler()
        self.regressor: RidgeCV | MLPRegressor | None = None

    def fit(
        self, text_x: np.ndarray, image_y: np.ndarray, weight: np.ndarray, *, image_reference: np.ndarray | None = None
    ) -> ProjectionHead:
        """``text_x[i]`` should land near ``image_y[i]`` with importance ``weight[i]`` (0 = ignore).

        ``image_reference`` (all training images, each once) fixes the image standardisation, so
        images that appear in many pairs do not dominate it.
        """
        keep = np.asarray(weight, dtype=np.float64) > 0
        if keep.sum() < 2:
            raise ValueError("the baseline needs at least two pairs with positive relevance to train on")
        self.image_scaler.fit(image_reference if image_reference is not None else image_y)
        x = self.text_scaler.fit_transform(text_x[keep])
        y = self.image_scaler.transform(image_y[keep])
        w = np.asarray(weight, dtype=np.float64)[keep]
        if self.kind == "ridge":
            self.regressor = RidgeCV(alphas=RIDGE_ALPHAS)
            self.regressor.fit(x, y, sample_weight=w)
        else:
            self.regressor = MLPRegressor(
                hidden_layer_sizes=(256,), alpha=1e-3, max_iter=300, random_state=self.seed, early_stopping=False
            )
            self.regressor.fit(x, y, sample_weight=w)
        return self

    def project(self, text_x: np.ndarray) -> np.ndarray:
        if self.regressor is None:
            raise RuntimeError("fit the projection head before using it")
        return np.asarray(self.regressor.predict(self.text_scaler.transform(text_x)), dtype=np.float64)

    def similarity(self, text_x: np.ndarray, image_x: np.ndarray) -> np.ndarray:
        """Cosine between projected texts and standardised images, (texts, images)."""
        projected = _unit(self.project(text_x))
        images = _unit(self.image_scaler.transform(image_x))
        return projected @ images.T


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


class PocBaseline:
    """The baseline as a retrieval model; call :meth:`fit` (or give a fitted head) before scoring."""

    kind: ModelKind = "baseline"

    def __init__(self, spec: ModelSpec, *, device: str = "auto", seed: int = 0) -> None:
        if spec.image_path is None or spec.text_path is None:
            raise ValueError("the baseline needs an image encoder folder and a text encoder folder")
        self.name = spec.name
        self.spec = spec
        self.seed = seed
        self.image_encoder = FrozenImageEncoder(spec.image_path, device=device)
        self.text_encoder = FrozenTextEncoder(spec.text_path, device=device)
        self.head: ProjectionHead | None = None

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.image_encoder.encode(images)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_encoder.encode(texts)

    def new_head(self) -> ProjectionHead:
        return ProjectionHead(self.spec.head, seed=self.seed)

    def fit(
        self, text_x: np.ndarray, image_y: np.ndarray, weight: np.ndarray, *, image_reference: np.ndarray | None = None
    ) -> None:
        self.head = self.new_head().fit(text_x, image_y, weight, image_reference=image_reference)

    def similarity(self, text_features: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise RuntimeError("the baseline must be fitted on the relevance labels before scoring")
        return self.head.similarity(text_features, image_features)

    def close(self) -> None:
        del self.image_encoder, self.text_encoder
