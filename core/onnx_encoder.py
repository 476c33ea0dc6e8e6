"""A faster CPU image encoder: a model's image tower (CLIP's vision tower + projection, SigLIP's or open_clip's
ViT) on ONNX Runtime, optionally int8.

Exported once from the loaded model's image tower as its backend gives it (``VisionExport``: so it computes
what ``ClipEmbedder.embed_images`` computes, with the model's own image processor), cached on disk
under a key made of the model revision and the exporter versions, and checked against torch on
a few images before it is used: an export that drifts below ``PARITY_MIN_COSINE`` is refused.

Why it is faster on a CPU:
- the export uses transformers' eager attention so that ONNX Runtime's transformer optimizer can
  fuse each layer's attention, LayerNorm+residual and QuickGELU into single kernels;
- ``quantize=True`` stores the MatMul/Attention weights as int8 and quantises activations
  dynamically (per batch), which on AVX2 CPUs runs the GEMMs about twice as fast as fp32 GEMMs.

Torch stays the path on GPUs (fp16 on cuda); this module is for CPU workers only.
``bench/cpu_encoder.py`` measures the speed-up and the parity side by side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from core.clip_parts import (
    ClipParts,
    ImageProcessor,
    NotAClipModelError,
    VisionExport,
    clip_image_features,
    clip_parts,
    pixel_values,
)

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

# Bump when the export recipe changes: cached exports under an older key are then ignored.
EXPORT_VERSION = 2
OPSET = 17
PARITY_MIN_COSINE = 0.99
FP32_FILE = "vision-fp32.onnx"
INT8_FILE = "vision-int8.onnx"
META_FILE = "export.json"

_export_lock = threading.Lock()


class OnnxExportError(RuntimeError):
    """The model could not be exported, or the export disagrees with torch (parity below the minimum)."""


class LoadedClipEmbedder(Protocol):
    """What :meth:`OnnxImageEncoder.from_embedder` needs of a ``core.embedding.ClipEmbedder``.

    A protocol rather than an import: the embedder imports this module, never the other way round.
    """

    image_batch_size: int

    def load(self) -> None: ...

    def vision_export(self) -> VisionExport: ...

    @property
    def revision(self) -> str: ...


def onnx_clip_parts(model: SentenceTransformer) -> ClipParts:
    """The CLIP model and processor of ``model``; a model without them cannot be exported (OnnxExportError)."""
    try:
        return clip_parts(model)
    except NotAClipModelError as exc:
        raise OnnxExportError(str(exc)) from exc


def sentence_transformer_export(model: SentenceTransformer) -> VisionExport:
    """The image tower of a sentence-transformers CLIP, as the exporter takes it (OnnxExportError without one)."""
    from core.model_backends import _clip_vision_export

    parts = onnx_clip_parts(model)
    return _clip_vision_export(parts.model, parts.image_processor)


def _as_export(model: SentenceTransformer | VisionExport) -> VisionExport:
    return model if isinstance(model, VisionExport) else sentence_transformer_export(model)


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export_key(revision: str, export: VisionExport) -> str:
    """Cache key: the model's revision, its image tower's family and config, the recipe and the exporter versions."""
    payload = json.dumps(
        {
            "revision": revision,
            "family": export.family,
            "tower": dict(export.config),
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            **_versions(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextmanager
def _mha_fast_path_off() -> Iterator[None]:
    """Trace ``torch.nn.MultiheadAttention`` (open_clip's towers) through its plain MatMul/Softmax path.

    In inference its fast path runs one fused kernel, ``aten::_native_multi_head_attention``, which has no ONNX
    form (the export fails with UnsupportedOperatorError); transformers' towers do not use the module.
    """
    import torch

    mha = torch.backends.mha
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def export_vision_model(
    model: SentenceTransformer | VisionExport, out_dir: Path, *, quantize: bool
) -> dict[str, object]:
    """Export the image tower to ``out_dir``: FP32_FILE (fused), and INT8_FILE when ``quantize``.

    Returns what was done (fused operator counts, file sizes), also written to META_FILE.
    """
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    export = _as_export(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    tower = export.build_tower()
    size = export.image_size
    example = torch.zeros(2, 3, size, size)
    raw = out_dir / "vision-raw.onnx"
    with warnings.catch_warnings(), torch.inference_mode(), _mha_fast_path_off():
        # Tracer notes about shape-dependent Python branches: the exported graph fixes 224x224 input,
        # which is what the processor always produces.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (example,),
            str(raw),
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    # CLIP's fusion patterns (attention, LayerNorm + residual, GELU) are those of every ViT tower here.
    optimized = optimize_model(
        str(raw),
        model_type="clip",
        num_heads=export.num_heads,
        hidden_size=export.hidden_size,
        opt_level=0,
    )
    fused = {name: int(count) for name, count in optimized.get_fused_operator_statistics().items() if count}
    optimized.save_model_to_file(str(out_dir / FP32_FILE))
    raw.unlink()
    meta: dict[str, object] = {
        "family": export.family,
        "fused_operators": fused,
        "image_size": size,
        **_versions(),
    }
    if quantize:
        # Per-tensor int8 weights: per-channel measured no faster and no closer to torch here.
        quantize_dynamic(
            str(out_dir / FP32_FILE),
            str(out_dir / INT8_FILE),
            weight_type=QuantType.QInt8,
            per_channel=False,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops lack inferred types
        )
    meta["files_mb"] = {path.name: round(path.stat().st_size / 2**20, 1) for path in out_dir.glob("*.onnx")}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def ensure_export(model: SentenceTransformer | VisionExport, revision: str, cache_dir: Path, *, quantize: bool) -> Path:
    """The cached export folder for this model (or image tower) and revision, exporting it first when needed.

    Exports go to a staging folder next to the cache entry and are renamed into place, so several
    worker processes starting at once never read a half-written file.
    """
    export = _as_export(model)
    return staged_export(
        Path(cache_dir) / f"{export.family}-vision-{export_key(revision, export)}",
        INT8_FILE if quantize else FP32_FILE,
        lambda staging: export_vision_model(export, staging, quantize=quantize),
        f"the {export.family} image tower (int8={quantize})",
    )


def staged_export(target: Path, wanted: str, write: Callable[[Path], object], what: str) -> Path:
    """The cache folder `target` once it holds the file `wanted`, written first by `write(staging)` when missing.

    Exports go to a staging folder next to the cache entry and are renamed into place, so several
    worker processes starting at once never read a half-written file. Shared by the image and text towers.
    """
    if (target / wanted).is_file():
        return target
    with _export_lock:
        if (target / wanted).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            logger.info("exporting %s to ONNX (%s)", what, target)
            write(staging)
            if target.exists():  # an fp32-only export exists and int8 is wanted now: replace it
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / wanted).is_file():  # another process won the race and has what we need
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def session_options(threads: int | None, *, spin: bool) -> onnxruntime.SessionOptions:
    """One intra-op pool of `threads` (default: torch's thread count, which the worker sets per process)."""
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores that the decode pool needs between batches; off unless asked.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class OnnxImageEncoder:
    """Image embeddings on ONNX Runtime: float32, L2-normalised, shape (n, dimension)."""

    def __init__(
        self,
        model_path: Path,
        image_processor: ImageProcessor,
        *,
        threads: int | None = None,
        spin: bool = False,
        batch_size: int = 32,
    ) -> None:
        import onnxruntime

        self.model_path = Path(model_path)
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.quantized = self.model_path.name == INT8_FILE
        self.session = onnxruntime.InferenceSession(
            str(self.model_path), session_options(threads, spin=spin), providers=["CPUExecutionProvider"]
        )
        self._input = self.session.get_inputs()[0].name

    @classmethod
    def from_export(
        cls,
        export: VisionExport,
        revision: str,
        cache_dir: Path,
        *,
        quantize: bool = True,
        threads: int | None = None,
        spin: bool = False,
        batch_size: int = 32,
        check_parity: bool = True,
    ) -> OnnxImageEncoder:
        """Export (or reuse the cached export of) an image tower and open it.

        With `check_parity`, a few test images are embedded by torch and by ONNX Runtime and the
        encoder is refused (OnnxExportError) when any cosine falls below PARITY_MIN_COSINE.
        """
        folder = ensure_export(export, revision, cache_dir, quantize=quantize)
        encoder = cls(
            folder / (INT8_FILE if quantize else FP32_FILE),
            export.image_processor,
            threads=threads,
            spin=spin,
            batch_size=batch_size,
        )
        if check_parity:
            worst = float(parity_cosines(export, encoder, probe_images()).min())
            if worst < PARITY_MIN_COSINE:
                raise OnnxExportError(
                    f"the ONNX export of the image encoder disagrees with torch (cosine {worst:.4f} < "
                    f"{PARITY_MIN_COSINE}); use the torch encoder"
                )
            logger.info("ONNX image encoder %s: parity with torch %.5f", encoder.model_path.name, worst)
        return encoder

    @classmethod
    def from_sentence_transformer(
        cls,
        model: SentenceTransformer,
        revision: str,
        cache_dir: Path,
        *,
        quantize: bool = True,
        threads: int | None = None,
        spin: bool = False,
        batch_size: int = 32,
        check_parity: bool = True,
    ) -> OnnxImageEncoder:
        """:meth:`from_export` for a sentence-transformers CLIP."""
        return cls.from_export(
            sentence_transformer_export(model),
            revision,
            cache_dir,
            quantize=quantize,
            threads=threads,
            spin=spin,
            batch_size=batch_size,
            check_parity=check_parity,
        )

    @classmethod
    def from_embedder(
        cls,
        embedder: LoadedClipEmbedder,
        cache_dir: Path,
        *,
        quantize: bool = True,
        threads: int | None = None,
        spin: bool = False,
        check_parity: bool = True,
    ) -> OnnxImageEncoder:
        """The ONNX encoder for a ClipEmbedder's loaded model, of any family (loads it), with its image batch size."""
        embedder.load()
        try:
            export = embedder.vision_export()
        except NotAClipModelError as exc:
            raise OnnxExportError(str(exc)) from exc
        return cls.from_export(
            export,
            embedder.revision,
            cache_dir,
            quantize=quantize,
            threads=threads,
            spin=spin,
            batch_size=embedder.image_batch_size,
            check_parity=check_parity,
        )

    def pixel_values(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's own preprocessing (resize, centre crop, normalise): float32 (n, 3, H, W)."""
        return pixel_values(self.image_processor, images)

    def embed_pixel_values(self, pixel_values: np.ndarray) -> np.ndarray:
        """Embed preprocessed pixels in batches of `batch_size`: float32 (n, dimension), unit rows."""
        if len(pixel_values) == 0:
            dim = self.session.get_outputs()[0].shape[-1]
            return np.zeros((0, int(dim) if isinstance(dim, int) else 0), dtype=np.float32)
        chunks = [
            self.session.run(
                None, {self._input: np.ascontiguousarray(pixel_values[i : i + self.batch_size], dtype=np.float32)}
            )[0]
            for i in range(0, len(pixel_values), self.batch_size)
        ]
        embeddings: np.ndarray = np.concatenate(chunks).astype(np.float32, copy=False)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit_rows: np.ndarray = embeddings / np.maximum(norms, 1e-12)
        return unit_rows

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images like ``ClipEmbedder.embed_images``: float32 (n, dimension), unit rows."""
        if not images:
            return self.embed_pixel_values(np.zeros((0, 3, 1, 1), dtype=np.float32))
        return self.embed_pixel_values(self.pixel_values(images))


def torch_embed_pixel_values(model: SentenceTransformer | VisionExport, pixel_values: np.ndarray) -> np.ndarray:
    """The reference: the loaded torch model's image features for the same pixels, L2-normalised."""
    if isinstance(model, VisionExport):
        return model.reference(pixel_values)
    return clip_image_features(onnx_clip_parts(model).model, pixel_values)


def parity_cosines(
    model: SentenceTransformer | VisionExport, encoder: OnnxImageEncoder, images: Sequence[Image.Image]
) -> np.ndarray:
    """Per-image cosine between the torch and the ONNX embeddings of the same preprocessed images."""
    pixels = encoder.pixel_values(images)
    reference = torch_embed_pixel_values(model, pixels)
    candidate = encoder.embed_pixel_values(pixels)
    cosines: np.ndarray = np.sum(reference * candidate, axis=1)
    return cosines


def probe_images(count: int = 4, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[Image.Image]:
    """Deterministic test pictures with structure at several scales (smooth colour fields + blocks)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.random((6, 8, 3))
        field = np.kron(coarse, np.ones((size[1] // 6 + 1, size[0] // 8 + 1, 1)))[: size[1], : size[0]]
        field = 0.7 * field + 0.3 * rng.random((size[1], size[0], 3))
        images.append(Image.fromarray((field * 255).astype(np.uint8), mode="RGB"))
    return images
