"""A faster CPU text encoder for queries: the text tower that embeds them on ONNX Runtime, fp32 or int8.

The image encoder's counterpart (core/onnx_encoder.py), for APIs on CPUs, where the text tower is most of a
query's cost. Exported once from the tower ``ClipEmbedder.embed_texts`` uses (the image model's own text tower, or
the separate WITHSENSE_TEXT_MODEL), as its backend gives it (``core.clip_parts.TextExport``: the module, its
tokenizer, the torch reference), cached on disk under a key of the model revision and the exporter versions, and
checked against torch on fixed probe texts before it is used (each text alone, as a query comes, and all in one
padded batch): an export whose cosine falls below ``PARITY_MIN_COSINE`` is refused, and the embedder falls back to
torch with the reason in the log (``ClipEmbedder.load``), so a bad export costs speed, never rankings.

Tokenisation stays the model's own (in Python, before the session): only the transformer runs in ONNX Runtime.
``bench/text_encoder.py`` measures the tower and the API side by side with torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from core.clip_parts import TextExport
from core.onnx_encoder import OPSET, OnnxExportError, _versions, session_options, staged_export

logger = logging.getLogger(__name__)

# Bump when the export recipe changes: cached exports under an older key are then ignored.
EXPORT_VERSION = 1
PARITY_MIN_COSINE = 0.99
FP32_FILE = "text-fp32.onnx"
INT8_FILE = "text-int8.onnx"
META_FILE = "export.json"

# Probe texts for the parity check: everyday queries, other scripts, punctuation only, and one longer than any
# text tower reads (cut to the context the same way by the same tokenizer on both sides).
PARITY_TEXTS: tuple[str, ...] = (
    "a photo of a dog",
    "a red car parked on the street at night",
    "a bowl of fruit on a wooden table, seen from above",
    "красный круг на сером фоне",
    "山の上の雪",
    "?!",
    "x",
    " ".join(["a very long description of a mountain landscape with snow and a lake"] * 12),
)

_export_lock = threading.Lock()


def export_key(revision: str, export: TextExport) -> str:
    payload = json.dumps(
        {
            "revision": revision,
            "family": export.family,
            "tower": dict(export.config),
            "inputs": list(export.input_names),
            "export_version": EXPORT_VERSION,
            "opset": OPSET,
            **_versions(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def export_text_model(export: TextExport, out_dir: Path, *, quantize: bool) -> dict[str, object]:
    """Export the text tower to ``out_dir``: FP32_FILE (fused), and INT8_FILE when ``quantize``."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    out_dir.mkdir(parents=True, exist_ok=True)
    tower = export.build_tower()
    example = export.tokenize(["a photo of a dog", "a red car parked on the street"])
    raw = out_dir / "text-raw.onnx"
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer notes about Python branches on shapes
        torch.onnx.export(
            tower,
            tuple(torch.from_numpy(example[name]) for name in export.input_names),
            str(raw),
            input_names=list(export.input_names),
            output_names=["text_embeds"],
            dynamic_axes={
                **{name: {0: "batch", 1: "tokens"} for name in export.input_names},
                "text_embeds": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    optimized = optimize_model(
        str(raw),
        model_type=export.optimizer_type,
        num_heads=export.num_heads,
        hidden_size=export.hidden_size,
        opt_level=0,
    )
    fused = {name: int(count) for name, count in optimized.get_fused_operator_statistics().items() if count}
    optimized.save_model_to_file(str(out_dir / FP32_FILE))
    raw.unlink()
    meta: dict[str, object] = {"family": export.family, "fused_operators": fused, **_versions()}
    if quantize:
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


def ensure_text_export(export: TextExport, revision: str, cache_dir: Path, *, quantize: bool) -> Path:
    """The cached export folder of this text tower and revision, exported first when needed (staged, renamed)."""

    def write(staging: Path) -> None:
        try:
            export_text_model(export, staging, quantize=quantize)
        except OnnxExportError:
            raise
        except Exception as exc:  # any exporter failure means: this tower stays on torch
            raise OnnxExportError(f"the text tower could not be exported: {type(exc).__name__}: {exc}") from exc

    return staged_export(
        Path(cache_dir) / f"{export.family}-text-{export_key(revision, export)}",
        INT8_FILE if quantize else FP32_FILE,
        write,
        f"the {export.family} text tower (int8={quantize})",
    )


class OnnxTextEncoder:
    """Text embeddings on ONNX Runtime: float32, L2-normalised, shape (n, dimension). Thread-safe."""

    def __init__(
        self,
        model_path: Path,
        tokenize: Callable[[Sequence[str]], dict[str, np.ndarray]],
        *,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        import onnxruntime

        self.model_path = Path(model_path)
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.quantized = self.model_path.name == INT8_FILE
        # No spinning: an API's request threads share the cores, and a spinning pool burns them between queries.
        self.session = onnxruntime.InferenceSession(
            str(self.model_path), session_options(threads, spin=False), providers=["CPUExecutionProvider"]
        )
        self._inputs = [item.name for item in self.session.get_inputs()]
        self.parity: float | None = None

    @classmethod
    def from_export(
        cls,
        export: TextExport,
        revision: str,
        cache_dir: Path,
        *,
        quantize: bool = True,
        threads: int | None = None,
        batch_size: int = 64,
        check_parity: bool = True,
    ) -> OnnxTextEncoder:
        """Export (or reuse the cached export of) a text tower and open it.

        With `check_parity`, the probe texts are embedded by torch and by ONNX Runtime (each alone, and all in one
        padded batch) and the encoder is refused (OnnxExportError) when any cosine falls below PARITY_MIN_COSINE.
        """
        folder = ensure_text_export(export, revision, cache_dir, quantize=quantize)
        encoder = cls(
            folder / (INT8_FILE if quantize else FP32_FILE), export.tokenize, threads=threads, batch_size=batch_size
        )
        if check_parity:
            worst = float(text_parity_cosines(export, encoder, PARITY_TEXTS).min())
            if worst < PARITY_MIN_COSINE:
                raise OnnxExportError(
                    f"the ONNX export of the text tower disagrees with torch (cosine {worst:.4f} < {PARITY_MIN_COSINE})"
                )
            encoder.parity = worst
            logger.info("ONNX text encoder %s: parity with torch %.5f", encoder.model_path.name, worst)
        return encoder

    def embed_tokens(self, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """One forward pass over tokenizer arrays; unit rows."""
        feed = {name: np.ascontiguousarray(tokens[name], dtype=np.int64) for name in self._inputs}
        embeddings = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit_rows: np.ndarray = embeddings / np.maximum(norms, 1e-12)
        return unit_rows

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches of `batch_size`, tokenised by the model's own tokenizer: (n, dimension)."""
        texts = list(texts)
        if not texts:
            dim = self.session.get_outputs()[0].shape[-1]
            return np.zeros((0, int(dim) if isinstance(dim, int) else 0), dtype=np.float32)
        return np.concatenate(
            [
                self.embed_tokens(self.tokenize(texts[start : start + self.batch_size]))
                for start in range(0, len(texts), self.batch_size)
            ]
        )


def text_parity_cosines(export: TextExport, encoder: OnnxTextEncoder, texts: Sequence[str]) -> np.ndarray:
    """Per-text cosine between torch and ONNX Runtime: each text alone, then all of them in one padded batch."""
    texts = list(texts)
    reference = export.reference(texts)
    alone = np.concatenate([encoder.embed_tokens(export.tokenize([text])) for text in texts])
    together = encoder.embed_tokens(export.tokenize(texts))
    cosines: np.ndarray = np.concatenate([np.sum(reference * alone, axis=1), np.sum(reference * together, axis=1)])
    return cosines
