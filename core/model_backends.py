"""One interface over the model families the service embeds with, and one class per family.

:class:`core.embedding.ClipEmbedder` holds one :class:`EmbeddingBackend`, picked by :func:`open_backend` from the
model's own files (:func:`core.model_hub.locate_model`), never from string switches:

- :class:`SentenceTransformerBackend`: a sentence-transformers folder or hub id (``clip-ViT-B-32``, the default);
- :class:`SiglipBackend`: a transformers SigLIP / SigLIP 2 model (``config.json`` with ``model_type`` siglip or
  siglip2, e.g. ``google/siglip2-base-patch16-224``) with its own image processor and tokenizer;
- :class:`OpenClipBackend`: an open_clip model (``hf-hub:`` ids, or a folder with ``open_clip_config.json``).

Every backend gives the same things: the model's own preprocessing of one picture (safe in threads), a forward
pass over prepared pixels, text embeddings (cut to the text tower's context), the dimension, the text context,
how its zero-shot scores are read (softmax over prompts for CLIP, one sigmoid per prompt for SigLIP), and its
image tower as a plain module for the ONNX exporter (:class:`core.clip_parts.VisionExport`).
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image

from core.clip_parts import (
    ImageProcessor,
    NotAClipModelError,
    SquareInputShortcut,
    TextExport,
    VisionExport,
    clip_image_features,
    clip_parts,
    square_input_shortcut,
)
from core.model_hub import (
    _COMMIT_HASH,
    OPEN_CLIP_MARKER,
    ModelSource,
    ModelUnavailableError,
    _first_line,
    _unavailable,
)

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

Prepared = np.ndarray | Image.Image


@dataclass(frozen=True)
class ZeroShotScoring:
    """How the model's own training turns a cosine between an image and a prompt into a probability.

    ``softmax``: CLIP's contrastive loss ranks prompts against each other (a probability over the prompt set);
    ``sigmoid``: SigLIP's loss scores each (image, prompt) pair on its own, ``sigmoid(scale * cos + bias)``.
    """

    kind: Literal["softmax", "sigmoid"]
    scale: float
    bias: float = 0.0


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    import torch

    # Normalise in float32: fp16 norms of 512 components lose precision.
    rows: np.ndarray = torch.nn.functional.normalize(features.float(), p=2, dim=1).cpu().numpy()
    return rows.astype(np.float32, copy=False)


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output holds the features; 4 returned the tensor."""
    features: torch.Tensor = getattr(output, "pooler_output", output)
    return features


class EmbeddingBackend(ABC):
    """A loaded model of one family: image and text embeddings in one space, unit rows of float32."""

    family: ClassVar[str]
    #: The file of a hub snapshot whose folder name is the commit (the revision of a cached hub model).
    marker_file: ClassVar[str]

    dimension: int
    device: str
    #: Tokens the text tower reads; longer texts are cut (None when the tokenizer says nothing).
    max_text_tokens: int | None

    @classmethod
    @abstractmethod
    def load(cls, source: ModelSource, *, setting: str, device: str, cache_folder: str | None) -> EmbeddingBackend:
        """Load the model from `source` onto `device` (fp16 on a GPU); ModelUnavailableError when it cannot be."""

    @abstractmethod
    def prepare_image(self, rgb: Image.Image) -> Prepared:
        """The model's own preprocessing of one RGB picture, safe to run in many threads at once."""

    @abstractmethod
    def embed_prepared(self, prepared: Sequence[Prepared], batch_size: int) -> np.ndarray:
        """One forward pass per batch over what :meth:`prepare_image` returned."""

    def embed_images(self, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
        """Embed RGB pictures (preprocessing, then the forward pass)."""
        return self.embed_prepared([self.prepare_image(image) for image in images], batch_size)

    @abstractmethod
    def embed_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed texts, each cut to :attr:`max_text_tokens`."""

    @abstractmethod
    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        """How many tokens each text is before cutting (special tokens included)."""

    @abstractmethod
    def zero_shot_scoring(self) -> ZeroShotScoring:
        """How this family's scores over prompts are read (see :class:`ZeroShotScoring`)."""

    @abstractmethod
    def vision_export(self) -> VisionExport:
        """The image tower as a plain module, for the ONNX exporter; NotAClipModelError when it has none."""

    def text_export(self) -> TextExport:
        """The text tower as a plain module with its tokenizer, for the ONNX text encoder; NotAClipModelError when
        this family's tower cannot be exported."""
        raise NotAClipModelError(f"the {self.family} text tower has no ONNX export: only torch embeds its texts")

    def commit_hash(self) -> str | None:
        """The hub commit the loaded files came from, when the loader recorded one."""
        return None

    @property
    def image_processor(self) -> ImageProcessor | None:
        """The model's image processor (None when the model preprocesses pictures itself)."""
        return None


def _hub_kwargs(source: ModelSource, cache_folder: str | None) -> dict[str, Any]:
    return {"revision": source.revision, "cache_dir": cache_folder, "local_files_only": source.cached}


# sentence-transformers -----------------------------------------------------------------------------------------


def fit_text_context(model: SentenceTransformer) -> int | None:
    """Cap the tokenizer at what the text tower can read (CLIP: 77 tokens), so a longer text is cut, never an error.

    Some saved tokenizers say they read any length; the position embeddings then overflow on a long query.
    Returns the cap in tokens (None when the model has no text tokenizer).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return None
    declared = getattr(tokenizer, "model_max_length", None)
    positions = None
    first = model[0] if len(model) else None
    config = getattr(getattr(first, "model", None), "config", None) or getattr(first, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        positions = getattr(text_config, "max_position_embeddings", None)
    limits = [n for n in (declared, positions) if isinstance(n, int) and 0 < n < 1_000_000]
    if not limits:
        return None
    cap = min(limits)
    if declared != cap:
        tokenizer.model_max_length = cap
    return cap


def _clip_vision_export(clip_model: Any, image_processor: ImageProcessor) -> VisionExport:
    """A transformers CLIPModel's ``get_image_features`` (vision transformer, pooled token, projection)."""
    import torch

    def build() -> torch.nn.Module:
        class ClipVisionTower(torch.nn.Module):
            def __init__(self, vision_model: torch.nn.Module, projection: torch.nn.Module) -> None:
                super().__init__()
                self.vision_model = vision_model
                self.visual_projection = projection

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                pooled = self.vision_model(pixel_values=pixel_values).pooler_output
                projected: torch.Tensor = self.visual_projection(pooled)
                return projected

        # A float32 CPU copy: the loaded model may be fp16 on a GPU, and must not be touched here.
        vision = copy.deepcopy(clip_model.vision_model).to("cpu", torch.float32).eval()
        projection = copy.deepcopy(clip_model.visual_projection).to("cpu", torch.float32).eval()
        # Eager attention exports as plain MatMul/Softmax, the pattern ONNX Runtime fuses into one
        # Attention kernel; SDPA exports as a pattern it does not recognise (measured: no fusion).
        vision.config._attn_implementation = "eager"
        return ClipVisionTower(vision, projection).eval()

    vision_config = clip_model.vision_model.config
    return VisionExport(
        family="clip",
        build_tower=build,
        reference=lambda pixels: clip_image_features(clip_model, pixels),
        image_processor=image_processor,
        image_size=int(vision_config.image_size),
        num_heads=int(vision_config.num_attention_heads),
        hidden_size=int(vision_config.hidden_size),
        config={
            "vision": vision_config.to_dict(),
            "projection_dim": getattr(clip_model.config, "projection_dim", None),
        },
    )


class SentenceTransformerBackend(EmbeddingBackend):
    """A sentence-transformers model, loaded exactly as ``SentenceTransformer("clip-ViT-B-32")`` loads it.

    CLIP models (both the old ``models.CLIPModel`` module and ST 6's ``Transformer``) are preprocessed with their
    own image processor and run through ``get_image_features`` on pixels; other ST models get pictures whole.
    """

    family = "sentence-transformers"
    marker_file = "modules.json"

    def __init__(self, model: SentenceTransformer) -> None:
        self.model = model
        dimension = model.get_embedding_dimension()
        if dimension is None:
            raise ModelUnavailableError("the model does not report an embedding dimension")
        self.dimension = int(dimension)
        self.device = str(model.device)
        self.max_text_tokens = fit_text_context(model)
        try:
            parts = clip_parts(model)
        except NotAClipModelError:
            self._clip_model: Any = None
            self._image_processor: ImageProcessor | None = None
        else:
            self._clip_model, self._image_processor = parts.model, parts.image_processor
        self._square_input: SquareInputShortcut | None = (
            square_input_shortcut(self._image_processor) if self._image_processor is not None else None
        )

    @classmethod
    def load(
        cls, source: ModelSource, *, setting: str, device: str, cache_folder: str | None
    ) -> SentenceTransformerBackend:
        from huggingface_hub.errors import EntryNotFoundError
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(
                str(source.folder) if source.folder is not None else source.name,
                device=device,
                revision=source.revision if source.folder is None else None,
                cache_folder=cache_folder,
                local_files_only=source.cached,
            )
        except (OSError, EntryNotFoundError) as exc:  # hub errors, missing files, offline mode
            raise _unavailable(source.name, setting, exc) from exc
        if device.startswith("cuda"):
            # Half precision on GPU: twice the throughput, no measurable loss in cosine rankings.
            model.half()
        model.eval()
        return cls(model)

    @property
    def image_processor(self) -> ImageProcessor | None:
        return self._image_processor

    def commit_hash(self) -> str | None:
        commit = getattr(getattr(self.model, "config", None), "_commit_hash", None)
        return commit if isinstance(commit, str) else None

    def prepare_image(self, rgb: Image.Image) -> Prepared:
        if self._image_processor is None:
            return rgb
        if self._square_input is not None and rgb.size == self._square_input.size:
            # Already the model's input size (the worker's 224x224 derivative): resize and crop would be
            # no-ops, so only rescale and normalise remain, as one multiply-add per channel.
            return self._square_input.pixel_values(rgb)
        pixels = self._image_processor(images=[rgb], return_tensors="np")["pixel_values"]
        return np.asarray(pixels[0], dtype=np.float32)

    def embed_prepared(self, prepared: Sequence[Prepared], batch_size: int) -> np.ndarray:
        if self._image_processor is None:
            pictures = [item for item in prepared if isinstance(item, Image.Image)]
            if len(pictures) != len(prepared):
                raise TypeError("embed_prepared takes what prepare_image returned (pictures for this model)")
            return self._encode(pictures, batch_size)
        arrays = [item for item in prepared if isinstance(item, np.ndarray)]
        if len(arrays) != len(prepared):
            raise TypeError("embed_prepared takes what prepare_image returned (pixel arrays for this model)")
        return clip_image_features(self._clip_model, np.stack(arrays), batch_size)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
        # sentence-transformers' own path, as `SentenceTransformer.encode(images)` gives users.
        return self._encode(list(images), batch_size)

    def embed_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self._encode(list(texts), batch_size)

    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not texts:
            return [0] * len(texts)
        return [len(ids) for ids in tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]]

    def _encode(self, inputs: list[Image.Image] | list[str], batch_size: int) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            embeddings: torch.Tensor = self.model.encode(
                inputs,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            return _unit_rows(embeddings)

    def zero_shot_scoring(self) -> ZeroShotScoring:
        scale = getattr(self._clip_model, "logit_scale", None)
        return ZeroShotScoring("softmax", float(scale.exp()) if scale is not None else 100.0)

    def text_export(self) -> TextExport:
        return _sentence_transformer_text_export(self)

    def vision_export(self) -> VisionExport:
        if self._clip_model is None or self._image_processor is None:
            raise NotAClipModelError(
                "no CLIP vision tower found in the model: only CLIP models can use the ONNX encoder"
            )
        return _clip_vision_export(self._clip_model, self._image_processor)


def _eager_attention(module: torch.nn.Module) -> None:
    """Plain MatMul/Softmax attention in every sub-model: the pattern ONNX Runtime's optimizer fuses (SDPA exports
    as one it does not recognise)."""
    for part in module.modules():
        config = getattr(part, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"


def _int64_arrays(features: Any) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(value.cpu().numpy() if hasattr(value, "cpu") else value, dtype=np.int64)
        for name, value in features.items()
        if hasattr(value, "shape")
    }


def _sentence_transformer_text_export(backend: SentenceTransformerBackend) -> TextExport:
    """A whole sentence-transformers text path (CLIP's text tower + projection, or a text model's transformer,
    pooling and dense layers) behind the model's own tokenizer."""
    import torch

    model = backend.model
    preprocess = getattr(model, "preprocess", None) or model.tokenize

    def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
        return _int64_arrays(preprocess(list(texts)))

    input_names = tuple(tokenize(["a"]))
    hf_model = next(
        (
            getattr(m, "model", None) or getattr(m, "auto_model", None)
            for m in model
            if hasattr(m, "model") or hasattr(m, "auto_model")
        ),
        None,
    )
    config = getattr(hf_model, "config", None)
    if config is None:
        raise NotAClipModelError("no transformers model found in the sentence-transformers modules")
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = str(getattr(config, "model_type", ""))

    def build() -> torch.nn.Module:
        class SentenceTransformerTextTower(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
                features: dict[str, Any] = dict(zip(input_names, inputs, strict=True))
                features["modality"] = "text"  # ST 6 multimodal modules dispatch on it; older ones ignore it
                embedding: torch.Tensor = self.inner(features)["sentence_embedding"]
                return embedding

        # A float32 CPU copy: the loaded model may be fp16 on a GPU, and must not be touched here.
        inner = copy.deepcopy(model).to("cpu", torch.float32).eval()
        _eager_attention(inner)
        return SentenceTransformerTextTower(inner).eval()

    return TextExport(
        family="clip" if model_type == "clip" else "sentence-transformers",
        build_tower=build,
        tokenize=tokenize,
        reference=lambda texts: backend.embed_texts(list(texts), max(1, len(texts))),
        input_names=input_names,
        optimizer_type="clip" if model_type == "clip" else "bert",
        num_heads=int(getattr(text_config, "num_attention_heads", 0) or getattr(text_config, "n_heads", 0) or 0),
        hidden_size=int(getattr(text_config, "hidden_size", 0) or getattr(text_config, "dim", 0) or 0),
        config={"model": repr(model)[:20_000], "text": text_config.to_dict(), "max_tokens": backend.max_text_tokens},
    )


# transformers SigLIP / SigLIP 2 --------------------------------------------------------------------------------


class SiglipBackend(EmbeddingBackend):
    """A transformers ``SiglipModel`` (SigLIP, and SigLIP 2 at fixed resolution) or ``Siglip2Model`` (NaFlex).

    Texts are padded to the full context, as SigLIP was trained (its text tower pools the last position); images
    go through the model's own image processor. SigLIP has no projection: the pooled output is the embedding.
    """

    family = "siglip"
    marker_file = "config.json"

    def __init__(self, model: Any, image_processor: ImageProcessor, tokenizer: Any) -> None:
        import torch

        self.model = model
        self._image_processor = image_processor
        self.tokenizer = tokenizer
        parameter = next(model.parameters())
        self.device = str(parameter.device)
        text_config = model.config.text_config
        declared = getattr(tokenizer, "model_max_length", None)
        limits = [n for n in (declared, getattr(text_config, "max_position_embeddings", None)) if isinstance(n, int)]
        limits = [n for n in limits if 0 < n < 1_000_000]
        self.max_text_tokens = min(limits) if limits else None
        # NaFlex (Siglip2Model) takes patches with a mask and their grid shapes instead of a square picture.
        self._naflex = "pixel_attention_mask" in getattr(image_processor, "model_input_names", ())
        with torch.inference_mode():
            self.dimension = int(self.embed_texts(["a"], 1).shape[1])

    @classmethod
    def load(cls, source: ModelSource, *, setting: str, device: str, cache_folder: str | None) -> SiglipBackend:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        where = str(source.folder) if source.folder is not None else source.repo_id
        assert where is not None
        kwargs = {} if source.folder is not None else _hub_kwargs(source, cache_folder)
        try:
            model = AutoModel.from_pretrained(where, **kwargs)
            image_processor = AutoImageProcessor.from_pretrained(where, **kwargs)  # type: ignore[no-untyped-call]
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        except ImportError as exc:  # a tokenizer or processor that needs a package this install lacks
            raise ModelUnavailableError(f"{setting}={source.name} needs a package: {_first_line(exc)}") from exc
        except (OSError, ValueError) as exc:  # missing files, offline
            raise _unavailable(source.name, setting, exc) from exc
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise _unavailable(source.name, setting, f"{type(model).__name__} has no image and text towers")
        model = model.to(device)
        if device.startswith("cuda"):
            model = model.half()
        model.eval()
        return cls(model, image_processor, tokenizer)

    @property
    def image_processor(self) -> ImageProcessor | None:
        return self._image_processor

    def commit_hash(self) -> str | None:
        commit = getattr(self.model.config, "_commit_hash", None)
        return commit if isinstance(commit, str) and _COMMIT_HASH.match(commit) else None

    def prepare_image(self, rgb: Image.Image) -> Prepared:
        if self._naflex:
            return rgb  # patches are cut per batch, with the mask the batch needs
        pixels = self._image_processor(images=[rgb], return_tensors="np")["pixel_values"]
        return np.asarray(pixels[0], dtype=np.float32)

    def embed_prepared(self, prepared: Sequence[Prepared], batch_size: int) -> np.ndarray:
        import torch

        if not prepared:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parameter = next(self.model.parameters())
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(prepared), batch_size):
                batch = list(prepared[start : start + batch_size])
                if self._naflex:
                    inputs = self._image_processor(images=batch, return_tensors="pt")
                    tensors = {
                        key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else None)
                        for key, value in inputs.items()
                    }
                    chunks.append(_unit_rows(_features(self.model.get_image_features(**tensors))))
                    continue
                arrays = [item for item in batch if isinstance(item, np.ndarray)]
                if len(arrays) != len(batch):
                    raise TypeError("embed_prepared takes what prepare_image returned (pixel arrays for this model)")
                pixels = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
                output = self.model.get_image_features(pixel_values=pixels.to(parameter.device, parameter.dtype))
                chunks.append(_unit_rows(_features(output)))
        return np.concatenate(chunks)

    def embed_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        device = next(self.model.parameters()).device
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(
                    texts[start : start + batch_size],
                    padding="max_length",
                    max_length=self.max_text_tokens,
                    truncation=True,
                    return_tensors="pt",
                )
                # SigLIP's text tower was trained without an attention mask; its processor returns none.
                output = self.model.get_text_features(input_ids=tokens["input_ids"].to(device))
                chunks.append(_unit_rows(_features(output)))
        return np.concatenate(chunks)

    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]]

    def zero_shot_scoring(self) -> ZeroShotScoring:
        scale = float(self.model.logit_scale.detach().float().exp())
        bias = float(self.model.logit_bias.detach().float())
        return ZeroShotScoring("sigmoid", scale, bias)

    def text_export(self) -> TextExport:
        import torch

        text_model = self.model.text_model

        def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
            tokens = self.tokenizer(
                list(texts), padding="max_length", max_length=self.max_text_tokens, truncation=True, return_tensors="np"
            )
            return {"input_ids": np.asarray(tokens["input_ids"], dtype=np.int64)}

        def build() -> torch.nn.Module:
            class SiglipTextTower(torch.nn.Module):
                def __init__(self, inner: torch.nn.Module) -> None:
                    super().__init__()
                    self.text_model = inner

                def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                    pooled: torch.Tensor = self.text_model(input_ids=input_ids).pooler_output
                    return pooled

            inner = copy.deepcopy(text_model).to("cpu", torch.float32).eval()
            _eager_attention(inner)
            return SiglipTextTower(inner).eval()

        text_config = text_model.config
        return TextExport(
            family="siglip",
            build_tower=build,
            tokenize=tokenize,
            reference=lambda texts: self.embed_texts(list(texts), max(1, len(texts))),
            input_names=("input_ids",),
            optimizer_type="clip",  # a pre-norm transformer like CLIP's text tower
            num_heads=int(text_config.num_attention_heads),
            hidden_size=int(text_config.hidden_size),
            config={"text": text_config.to_dict(), "max_tokens": self.max_text_tokens},
        )

    def vision_export(self) -> VisionExport:
        import torch

        if self._naflex:
            raise NotAClipModelError("SigLIP 2 NaFlex takes variable patch grids: only the torch encoder embeds it")
        vision_model = self.model.vision_model

        def build() -> torch.nn.Module:
            class SiglipVisionTower(torch.nn.Module):
                def __init__(self, vision: torch.nn.Module) -> None:
                    super().__init__()
                    self.vision_model = vision

                def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                    pooled: torch.Tensor = self.vision_model(pixel_values=pixel_values).pooler_output
                    return pooled

            vision = copy.deepcopy(vision_model).to("cpu", torch.float32).eval()
            vision.config._attn_implementation = "eager"
            return SiglipVisionTower(vision).eval()

        def reference(pixels: np.ndarray) -> np.ndarray:
            return self.embed_prepared(list(pixels), max(1, len(pixels)))

        vision_config = vision_model.config
        return VisionExport(
            family="siglip",
            build_tower=build,
            reference=reference,
            image_processor=self._image_processor,
            image_size=int(vision_config.image_size),
            num_heads=int(vision_config.num_attention_heads),
            hidden_size=int(vision_config.hidden_size),
            config={"vision": vision_config.to_dict()},
        )


# open_clip -----------------------------------------------------------------------------------------------------


class _OpenClipProcessor:
    """open_clip's preprocessing transform behind the image-processor call the encoders use."""

    def __init__(self, transform: Callable[[Image.Image], Any]) -> None:
        self.transform = transform

    def __call__(self, images: Any, return_tensors: str) -> dict[str, Any]:
        pictures = images if isinstance(images, list | tuple) else [images]
        pixels = np.stack([np.asarray(self.transform(image), dtype=np.float32) for image in pictures])
        return {"pixel_values": pixels}


class OpenClipBackend(EmbeddingBackend):
    """An open_clip model: ``hf-hub:org/name`` ids, or a folder with ``open_clip_config.json`` and its weights.

    Loaded with open_clip's own factory (``create_model_and_transforms``, ``get_tokenizer``), so its
    preprocessing and tokenizer are the model's own. open_clip's SigLIP ports (a ``logit_bias``) score with a
    sigmoid, the others with a softmax.
    """

    family = "open_clip"
    marker_file = OPEN_CLIP_MARKER

    def __init__(self, model: Any, preprocess: Callable[[Image.Image], Any], tokenizer: Any, commit: str | None):
        import torch

        self.model = model
        self._image_processor = _OpenClipProcessor(preprocess)
        self.tokenizer = tokenizer
        self._commit = commit
        self.device = str(next(model.parameters()).device)
        context = getattr(tokenizer, "context_length", None) or getattr(model, "context_length", None)
        self.max_text_tokens = int(context) if isinstance(context, int) else None
        with torch.inference_mode():
            self.dimension = int(self.embed_texts(["a"], 1).shape[1])

    @classmethod
    def load(cls, source: ModelSource, *, setting: str, device: str, cache_folder: str | None) -> OpenClipBackend:
        try:
            import open_clip
        except ImportError as exc:  # open_clip imports torchvision, which a CPU-only torch may lack
            raise ModelUnavailableError(
                f"{source.name} is an open_clip model, and open_clip cannot be imported here "
                f"({_first_line(exc)}): install torchvision built for this torch and open_clip_torch"
            ) from exc
        identifier = f"local-dir:{source.folder}"
        commit = None
        try:
            if source.folder is None:
                from huggingface_hub import snapshot_download

                # open_clip downloads files one by one without a revision; fetch the snapshot first so that the
                # revision is the commit read, and cached models never reach for the hub.
                snapshot = Path(
                    snapshot_download(
                        source.repo_id or "",
                        revision=source.revision,
                        cache_dir=cache_folder,
                        local_files_only=source.cached,
                    )
                )
                commit = snapshot.name if _COMMIT_HASH.match(snapshot.name) else None
                identifier = f"local-dir:{snapshot}"
            model, _, preprocess = open_clip.create_model_and_transforms(identifier, device=device)
            tokenizer = open_clip.get_tokenizer(identifier)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _unavailable(source.name, setting, exc) from exc
        if device.startswith("cuda"):
            model = model.half()
        model.eval()
        return cls(model, preprocess, tokenizer, commit)

    @property
    def image_processor(self) -> ImageProcessor | None:
        return self._image_processor

    def commit_hash(self) -> str | None:
        return self._commit

    def prepare_image(self, rgb: Image.Image) -> Prepared:
        return np.asarray(self._image_processor(images=[rgb], return_tensors="np")["pixel_values"][0])

    def embed_prepared(self, prepared: Sequence[Prepared], batch_size: int) -> np.ndarray:
        import torch

        if not prepared:
            return np.zeros((0, self.dimension), dtype=np.float32)
        arrays = [item for item in prepared if isinstance(item, np.ndarray)]
        if len(arrays) != len(prepared):
            raise TypeError("embed_prepared takes what prepare_image returned (pixel arrays for this model)")
        parameter = next(self.model.parameters())
        pixels = np.stack(arrays)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pixels), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
                chunks.append(_unit_rows(self.model.encode_image(batch.to(parameter.device, parameter.dtype))))
        return np.concatenate(chunks)

    def embed_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        device = next(self.model.parameters()).device
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size]).to(device)
                chunks.append(_unit_rows(self.model.encode_text(tokens)))
        return np.concatenate(chunks)

    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers one
        if inner is not None and callable(inner):
            return [len(ids) for ids in inner(list(texts), truncation=False)["input_ids"]]
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode):  # open_clip's SimpleTokenizer: start and end tokens around the BPE ids
            return [len(encode(text)) + 2 for text in texts]
        return [0] * len(texts)

    def zero_shot_scoring(self) -> ZeroShotScoring:
        scale = float(self.model.logit_scale.detach().float().exp())
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            return ZeroShotScoring("sigmoid", scale, float(bias.detach().float()))
        return ZeroShotScoring("softmax", scale)

    def vision_export(self) -> VisionExport:
        import torch

        visual = self.model.visual
        image_size = getattr(visual, "image_size", None)
        size = image_size[0] if isinstance(image_size, tuple | list) else image_size
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if not isinstance(size, int) or not blocks:
            raise NotAClipModelError("only open_clip's own ViT image towers can use the ONNX encoder")
        attention = blocks[0].attn

        def build() -> torch.nn.Module:
            class OpenClipVisionTower(torch.nn.Module):
                def __init__(self, tower: torch.nn.Module) -> None:
                    super().__init__()
                    self.visual = tower

                def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                    features: torch.Tensor = self.visual(pixel_values)
                    return features

            return OpenClipVisionTower(copy.deepcopy(visual).to("cpu", torch.float32).eval()).eval()

        def reference(pixels: np.ndarray) -> np.ndarray:
            return self.embed_prepared(list(pixels), max(1, len(pixels)))

        return VisionExport(
            family="open_clip",
            build_tower=build,
            reference=reference,
            image_processor=self._image_processor,
            image_size=size,
            num_heads=int(attention.num_heads),
            hidden_size=int(attention.embed_dim),
            config={"visual": repr(visual)[:20_000], "state": _state_signature(visual)},
        )


def _state_signature(module: Any) -> str:
    """Shapes of a module's tensors: enough, with the revision, to tell two exports apart."""
    return json.dumps({name: list(tensor.shape) for name, tensor in module.state_dict().items()}, sort_keys=True)


BACKENDS: dict[str, type[EmbeddingBackend]] = {
    backend.family: backend for backend in (SentenceTransformerBackend, SiglipBackend, OpenClipBackend)
}


def open_backend(source: ModelSource, *, setting: str, device: str, cache_folder: str | None) -> EmbeddingBackend:
    """Load `source` with its family's backend."""
    return BACKENDS[source.family].load(source, setting=setting, device=device, cache_folder=cache_folder)
