"""The CLIP pieces inside a sentence-transformers model, shared by the torch and the ONNX image encoders.

:class:`core.embedding.ClipEmbedder` (torch) and :class:`core.onnx_encoder.OnnxImageEncoder` both preprocess
pictures with the model's own image processor and read the same vision tower; the helpers that find those
pieces and run them live here, so that neither encoder reaches into the other's private helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPModel


class NotAClipModelError(RuntimeError):
    """The sentence-transformers model holds no CLIP vision tower, or no processor to preprocess images with."""


class ImageProcessor(Protocol):
    """What both encoders use of a Hugging Face image processor (``CLIPImageProcessor`` and its kin)."""

    # Any: transformers' processors take and return loosely typed values (a BatchFeature of arrays).
    def __call__(self, images: Any, return_tensors: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class VisionExport:
    """A model's image tower as the ONNX exporter needs it, given by each family's backend.

    ``build_tower()`` returns a fresh float32 CPU module from pixels (n, 3, H, W) to the (unnormalised) image
    features; ``reference(pixels)`` is what the loaded torch model gives for the same pixels (unit rows), the
    parity check's reference.
    """

    family: str
    build_tower: Callable[[], torch.nn.Module]
    reference: Callable[[np.ndarray], np.ndarray]
    image_processor: ImageProcessor
    image_size: int
    num_heads: int
    hidden_size: int
    # What defines the tower besides the revision (its config), for the export cache key.
    config: Mapping[str, object]


@dataclass(frozen=True)
class TextExport:
    """A text tower as the ONNX exporter needs it, given by each family's backend.

    ``build_tower()`` returns a fresh float32 CPU module from the tokenizer's arrays (in ``input_names`` order) to
    the (unnormalised) text features; ``tokenize(texts)`` is the model's own tokenizer (int64 arrays, cut to the
    tower's context); ``reference(texts)`` is what the loaded torch model gives (unit rows).
    """

    family: str
    build_tower: Callable[[], torch.nn.Module]
    tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]]
    reference: Callable[[Sequence[str]], np.ndarray]
    input_names: tuple[str, ...]
    # onnxruntime.transformers.optimizer's model type whose fusions fit the tower ("clip", "bert").
    optimizer_type: str
    num_heads: int
    hidden_size: int
    # What defines the tower besides the revision (its config), for the export cache key.
    config: Mapping[str, object]


@dataclass(frozen=True)
class ClipParts:
    """The Hugging Face CLIP model and the image processor that came with it."""

    model: CLIPModel
    image_processor: ImageProcessor


def clip_parts(model: SentenceTransformer) -> ClipParts:
    """The Hugging Face CLIPModel and its processor inside a sentence-transformers model.

    Both layouts carry them as ``.model`` and ``.processor``: ST 6's ``Transformer`` module and the
    older ``sentence_transformers.models.CLIPModel`` module. Raises :class:`NotAClipModelError` otherwise.
    """
    for module in model:
        hf_model = getattr(module, "model", None)
        if hf_model is not None and hasattr(hf_model, "vision_model") and hasattr(hf_model, "visual_projection"):
            processor = getattr(module, "processor", None)
            if processor is None:
                raise NotAClipModelError("the CLIP module has no processor to preprocess images with")
            # A CLIPProcessor carries its image half as .image_processor; an image processor is its own.
            return ClipParts(model=hf_model, image_processor=getattr(processor, "image_processor", processor))
    raise NotAClipModelError("no CLIP vision tower found in the model: only CLIP models can use the ONNX encoder")


def pixel_values(image_processor: ImageProcessor, images: Sequence[Image.Image]) -> np.ndarray:
    """The model's own preprocessing (resize, centre crop, rescale, normalise) of RGB pictures: float32 (n, 3, H, W)."""
    rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
    return np.asarray(image_processor(images=rgb, return_tensors="np")["pixel_values"], dtype=np.float32)


def clip_image_features(clip_model: CLIPModel, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """A Hugging Face CLIP model's image features for preprocessed pixels (n, 3, H, W): float32, unit rows."""
    import torch

    parameter = next(clip_model.parameters())
    step = batch_size or max(1, len(pixels))
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(pixels), step):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start : start + step]))
            output = clip_model.get_image_features(pixel_values=batch.to(parameter.device, parameter.dtype))
            # transformers 5 returns a ModelOutput whose pooler_output holds the projected features.
            features: torch.Tensor = getattr(output, "pooler_output", output)
            # Normalise in float32: fp16 norms of 512 components lose precision.
            chunks.append(torch.nn.functional.normalize(features.float(), p=2, dim=1).cpu())
    features_array: np.ndarray = torch.cat(chunks).numpy().astype(np.float32, copy=False)
    return features_array


@dataclass(frozen=True)
class SquareInputShortcut:
    """For a picture already at the model's square input size: ``pixels * scale + offset`` per channel.

    CLIP's usual preprocessing resizes the short side, centre-crops to a square, rescales and
    normalises; for an image of exactly the crop size the first two steps are no-ops, so one
    multiply-add per channel gives the processor's pixels (the worker's 224x224 derivatives).
    """

    size: tuple[int, int]
    scale: np.ndarray
    offset: np.ndarray

    def pixel_values(self, image: Image.Image) -> np.ndarray:
        """Float32 (3, H, W) pixels of an RGB picture of :attr:`size`, as the processor would give them."""
        pixels = np.asarray(image, dtype=np.float32)
        pixels *= self.scale
        pixels += self.offset
        return pixels.transpose(2, 0, 1)


def square_input_shortcut(image_processor: object) -> SquareInputShortcut | None:
    """The shortcut when the processor is CLIP's standard resize + centre-crop to one square size + rescale +
    normalise (tested against the processor), else None."""
    size, crop = getattr(image_processor, "size", None), getattr(image_processor, "crop_size", None)
    edge = getattr(size, "shortest_edge", None) if size is not None else None
    height = getattr(crop, "height", None) if crop is not None else None
    width = getattr(crop, "width", None) if crop is not None else None
    standard = (
        getattr(image_processor, "do_resize", False)
        and getattr(image_processor, "do_center_crop", False)
        and getattr(image_processor, "do_rescale", False)
        and getattr(image_processor, "do_normalize", False)
        and not getattr(image_processor, "do_pad", False)
        and isinstance(edge, int)
        and edge == height == width
    )
    if not standard or not isinstance(edge, int):
        return None
    mean = np.asarray(getattr(image_processor, "image_mean", None), dtype=np.float32)
    std = np.asarray(getattr(image_processor, "image_std", None), dtype=np.float32)
    if mean.shape != (3,) or std.shape != (3,):
        return None
    rescale_factor = getattr(image_processor, "rescale_factor", None)
    if not isinstance(rescale_factor, int | float):
        return None
    return SquareInputShortcut(size=(edge, edge), scale=np.float32(rescale_factor) / std, offset=-mean / std)
