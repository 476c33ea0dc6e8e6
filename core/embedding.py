"""The one model wrapper used by the API, the workers, evaluation and benchmarks.

``ClipEmbedder`` holds one backend per model family (core/model_backends.py), chosen from the model's own
files (core/model_hub.py:locate_model): sentence-transformers, exactly as ``SentenceTransformer("clip-ViT-B-32")``
loads it for users (a hub name or a local sentence-transformers folder; the default); transformers SigLIP and
SigLIP 2; open_clip (``hf-hub:`` ids and local folders). Images are preprocessed by the model's own processor
and embedded by its image tower (or by the ONNX export of that tower on CPU), texts by its text tower or by a
separate sentence-transformers text model in the same space (WITHSENSE_TEXT_MODEL). Nothing is loaded until
first use, so a Celery parent never holds torch state that a forked child inherits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.clip_parts import NotAClipModelError, VisionExport
from core.model_backends import (
    EmbeddingBackend,
    SentenceTransformerBackend,
    ZeroShotScoring,
    fit_text_context,
    open_backend,
)
from core.model_hub import (
    _COMMIT_HASH,
    HUB_PROBE_TIMEOUT_S,
    ModelUnavailableError,
    _first_line,
    _hub_repo_id,
    folder_content_hash,
    locate_model,
    model_unavailable_reason,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from core.onnx_encoder import OnnxImageEncoder
    from core.onnx_text_encoder import OnnxTextEncoder

from core.runtime import runtime
from core.settings import Settings
from core.text_alignment import TextAlignment, moderation_prompt_texts

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "ClipEmbedder",
    "ModelUnavailableError",
    "TextModelRefused",
    "fit_text_context",
    "folder_content_hash",
    "get_embedder",
    "model_unavailable_reason",
]

logger = logging.getLogger(__name__)


class TextModelRefused(ModelUnavailableError):
    """The separate text model (WITHSENSE_TEXT_MODEL) failed its start-up check: texts are not embedded at all.

    The image model is loaded and serves pictures; only what needs the text model (text queries) is refused, never
    answered by the image model's own tower instead (it cannot read the language the text model was set for).
    """


class ClipEmbedder:
    """Image and text embeddings in one space (a CLIP, SigLIP or open_clip model): float32, L2-normalised,
    shape (n, dimension).

    The name stays from the days of one family; what it wraps is one backend of core/model_backends.py.
    Constructing one is cheap and loads nothing; :meth:`load` (or the first embed call) does.
    """

    def __init__(
        self,
        model: str,
        *,
        text_model: str | None = None,
        revision: str | None = None,
        device: str = "auto",
        cache_folder: str | None = None,
        image_batch_size: int = 32,
        text_batch_size: int = 64,
        image_encoder: str = "torch",
        text_encoder: str = "torch",
        onnx_cache_dir: str | Path | None = None,
        text_probes: Sequence[str] = (),
        text_min_margin: float | None = None,
    ) -> None:
        if image_encoder not in ("torch", "onnx", "onnx-int8"):
            raise ValueError(f"image_encoder must be torch, onnx or onnx-int8, not {image_encoder!r}")
        if text_encoder not in ("torch", "onnx", "onnx-int8"):
            raise ValueError(f"text_encoder must be torch, onnx or onnx-int8, not {text_encoder!r}")
        if (image_encoder != "torch" or text_encoder != "torch") and onnx_cache_dir is None:
            raise ValueError("an ONNX encoder needs onnx_cache_dir (where the exported model is kept)")
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
        if image_batch_size < 1 or text_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        self._name = model
        self._text_name = text_model
        self._requested_revision = revision
        self._requested_device = device
        self._cache_folder = cache_folder
        self.image_batch_size = image_batch_size
        self.text_batch_size = text_batch_size
        self._requested_image_encoder = image_encoder
        self._onnx_cache_dir = Path(onnx_cache_dir) if onnx_cache_dir is not None else None
        self._onnx: OnnxImageEncoder | None = None
        self._requested_text_encoder = text_encoder
        self._onnx_text: OnnxTextEncoder | None = None
        self.text_encoder_fallback: str | None = None  # why the ONNX text encoder asked for is not used
        self._lock = threading.Lock()
        self._backend: EmbeddingBackend | None = None
        self._text_model: SentenceTransformerBackend | None = None
        self._revision: str | None = None
        self._dimension: int | None = None
        # Extra captions for the start-up check of a separate text model (core/text_alignment.py).
        self._text_probes = tuple(text_probes)
        self._text_min_margin = text_min_margin
        self.text_alignment: TextAlignment | None = None
        self._text_revision: str | None = None
        self._text_refusal: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ClipEmbedder:
        """An embedder configured from WITHSENSE_* settings (model, revision, text model, cache, device, batches)."""
        if settings is None:
            from core.settings import get_settings

            settings = get_settings()
        return cls(
            settings.model,
            text_model=settings.text_model,
            revision=settings.model_revision,
            device=settings.device,
            cache_folder=str(settings.model_cache_dir) if settings.model_cache_dir else None,
            image_batch_size=settings.image_batch_size,
            text_batch_size=settings.text_batch_size,
            image_encoder=settings.image_encoder,
            text_encoder=settings.text_encoder,
            onnx_cache_dir=settings.onnx_dir,
            text_probes=moderation_prompt_texts(settings.moderation_prompts) if settings.text_model else (),
            text_min_margin=settings.text_model_min_margin,
        )

    def __repr__(self) -> str:
        state = "loaded" if self._backend is not None else "not loaded"
        return f"ClipEmbedder({self._name!r}, text_model={self._text_name!r}, {state})"

    # Loading ------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._backend is not None

    def _device(self) -> str:
        import torch

        if self._requested_device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self._requested_device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailableError(f"WITHSENSE_DEVICE={self._requested_device} but torch sees no CUDA device")
        return self._requested_device

    def _load_one(self, name: str, setting: str, revision: str | None, device: str) -> EmbeddingBackend:
        source = locate_model(name, setting, revision, self._cache_folder)
        return open_backend(source, setting=setting, device=device, cache_folder=self._cache_folder)

    def load(self) -> None:
        """Load the model(s) once; safe to call from several threads and more than once."""
        if self._backend is not None:
            return
        with self._lock:
            if self._backend is not None:
                return
            device = self._device()
            backend = self._load_one(self._name, "WITHSENSE_MODEL", self._requested_revision, device)
            dimension = backend.dimension
            text_model = None
            alignment = None
            refusal = None
            text_revision = None
            if self._text_name:
                loaded = self._load_one(self._text_name, "WITHSENSE_TEXT_MODEL", None, device)
                if not isinstance(loaded, SentenceTransformerBackend):
                    raise ModelUnavailableError(
                        f"WITHSENSE_TEXT_MODEL={self._text_name} is a {loaded.family} model; a separate text "
                        f"model must be a sentence-transformers text model"
                    )
                text_revision = self._resolve_revision(loaded, self._text_name, None)
                try:
                    alignment = self._check_text_model(backend, loaded)
                except TextModelRefused as exc:
                    # The image model still serves pictures; texts are refused with this reason (core stays
                    # quiet about what the caller does with it: the API answers 503 on text routes).
                    refusal = str(exc)
                    logger.error("%s", refusal)
                else:
                    text_model = loaded
            self._text_model = text_model
            self.text_alignment = alignment
            self._text_revision = text_revision
            self._text_refusal = refusal
            self._dimension = int(dimension)
            self._revision = self._resolve_revision(backend, self._name, self._requested_revision)
            self._onnx = self._open_onnx(backend, device)
            self._onnx_text = self._open_onnx_text(text_model or backend, text_revision or self._revision, device)
            # Published last: other threads treat a non-None backend as "fully loaded".
            self._backend = backend
            logger.info(
                "loaded %s (%s, revision %s, %d-d) on %s; image encoder %s, text encoder %s",
                self._name,
                backend.family,
                self._revision,
                dimension,
                device,
                self._encoder_name(),
                self._text_encoder_name(),
            )

    def _check_text_model(self, backend: EmbeddingBackend, text_model: EmbeddingBackend) -> TextAlignment:
        """Refuse (TextModelRefused) a text model of another dimension, or whose probe captions do not land near
        the image model's own text tower's."""
        from core.text_alignment import DEFAULT_MIN_MARGIN, probe_texts, require_alignment

        if text_model.dimension != backend.dimension:
            raise TextModelRefused(
                f"WITHSENSE_TEXT_MODEL {self._text_name} is not in the embedding space of {self._name}: it gives "
                f"{text_model.dimension}-d vectors but the image model {backend.dimension}-d"
            )
        probes = list(probe_texts(self._text_probes))
        try:
            alignment = require_alignment(
                backend.embed_texts(probes, self.text_batch_size),
                text_model.embed_texts(probes, self.text_batch_size),
                image_model=self._name,
                text_model=str(self._text_name),
                min_margin=DEFAULT_MIN_MARGIN if self._text_min_margin is None else self._text_min_margin,
            )
        except ValueError as exc:  # TextModelMismatchError: a configuration error
            raise TextModelRefused(str(exc)) from exc
        logger.info("text model %s agrees with %s: %s", self._text_name, self._name, alignment.describe())
        return alignment

    def _open_onnx(self, backend: EmbeddingBackend, device: str) -> OnnxImageEncoder | None:
        """The ONNX Runtime image encoder when one is configured and the model runs on CPU."""
        if self._requested_image_encoder == "torch":
            return None
        if device != "cpu":
            logger.warning(
                "WITHSENSE_IMAGE_ENCODER=%s is a CPU path; on %s images are embedded by torch fp16",
                self._requested_image_encoder,
                device,
            )
            return None
        try:
            from core.onnx_encoder import OnnxExportError, OnnxImageEncoder
        except ImportError as exc:
            raise ModelUnavailableError(
                f"WITHSENSE_IMAGE_ENCODER={self._requested_image_encoder} needs ONNX Runtime: "
                f"pip install 'withsense-search[onnx]' ({_first_line(exc)})"
            ) from exc
        assert self._revision is not None and self._onnx_cache_dir is not None
        try:
            export = backend.vision_export()
        except NotAClipModelError as exc:
            raise ModelUnavailableError(f"WITHSENSE_IMAGE_ENCODER={self._requested_image_encoder}: {exc}") from exc
        try:
            return OnnxImageEncoder.from_export(
                export,
                self._revision,
                self._onnx_cache_dir,
                quantize=self._requested_image_encoder == "onnx-int8",
                batch_size=self.image_batch_size,
            )
        except OnnxExportError as exc:
            # The export computes something else than the model: refuse to index with it.
            raise ModelUnavailableError(f"WITHSENSE_IMAGE_ENCODER={self._requested_image_encoder}: {exc}") from exc

    def _open_onnx_text(self, tower: EmbeddingBackend, revision: str, device: str) -> OnnxTextEncoder | None:
        """The ONNX Runtime text encoder when one is asked for, the model runs on CPU, and its export is at parity
        with torch; otherwise None (torch embeds the texts) with the reason logged and kept."""
        wanted = self._requested_text_encoder
        if wanted == "torch" or self._text_refusal is not None:
            return None
        reason = None
        if device != "cpu":
            reason = f"it is a CPU path, and the model runs on {device}"
        else:
            try:
                from core.onnx_encoder import OnnxExportError
                from core.onnx_text_encoder import OnnxTextEncoder
            except ImportError as exc:
                reason = f"it needs ONNX Runtime: pip install 'withsense-search[onnx]' ({_first_line(exc)})"
            else:
                assert self._onnx_cache_dir is not None
                try:
                    return OnnxTextEncoder.from_export(
                        tower.text_export(),
                        revision,
                        self._onnx_cache_dir,
                        quantize=wanted == "onnx-int8",
                        batch_size=self.text_batch_size,
                    )
                except (OnnxExportError, NotAClipModelError) as exc:
                    reason = str(exc)
        self.text_encoder_fallback = reason
        logger.warning("WITHSENSE_TEXT_ENCODER=%s is not used (%s): texts are embedded by torch", wanted, reason)
        return None

    def _resolve_revision(self, backend: EmbeddingBackend, name: str, requested: str | None) -> str:
        """Which weights `name` loaded: the content hash of a local folder, else the hub commit."""
        path = Path(name).expanduser()
        if path.is_dir():
            return folder_content_hash(path)
        commit = backend.commit_hash()
        if isinstance(commit, str) and _COMMIT_HASH.match(commit):
            return commit
        if requested and _COMMIT_HASH.match(requested):
            return requested
        # The hub cache stores each commit in snapshots/<commit>/.
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            _hub_repo_id(name),
            backend.marker_file,
            cache_dir=self._cache_folder,
            revision=requested,
        )
        if isinstance(cached, str):
            snapshot = Path(cached).parent
            if _COMMIT_HASH.match(snapshot.name):
                return snapshot.name
            return folder_content_hash(snapshot)
        raise ModelUnavailableError(f"could not determine which revision of {name} was loaded")

    def _loaded(self) -> EmbeddingBackend:
        self.load()
        assert self._backend is not None
        return self._backend

    @property
    def backend(self) -> EmbeddingBackend:
        """The loaded model's backend (its family's class); loads it."""
        return self._loaded()

    @property
    def family(self) -> str:
        """The model's family: "sentence-transformers", "siglip" or "open_clip" (loads it)."""
        return self._loaded().family

    @property
    def sentence_transformer(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (a TypeError for the other families); loads it."""
        backend = self._loaded()
        if not isinstance(backend, SentenceTransformerBackend):
            raise TypeError(f"{self._name} is a {backend.family} model, not a sentence-transformers one")
        return backend.model

    def vision_export(self) -> VisionExport:
        """The loaded model's image tower for the ONNX exporter (NotAClipModelError when it has none)."""
        return self._loaded().vision_export()

    def zero_shot_scoring(self) -> ZeroShotScoring:
        """How the image model's own scores over prompts are read (softmax for CLIP, sigmoid for SigLIP)."""
        return self._loaded().zero_shot_scoring()

    # Facts about the model ------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """The embedding size, read from the loaded model (512 for ViT-B/32)."""
        self._loaded()
        assert self._dimension is not None
        return self._dimension

    @property
    def model_name(self) -> str:
        """The model as configured: a hub name such as ``clip-ViT-B-32`` or a local folder."""
        return self._name

    @property
    def text_model_name(self) -> str | None:
        """The separate text model, when one is configured."""
        return self._text_name

    @property
    def text_model_revision(self) -> str | None:
        """Which weights the separate text model loaded (as :attr:`revision`), when one is configured (loads)."""
        self._loaded()
        return self._text_revision

    @property
    def text_model_refusal(self) -> str | None:
        """Why the separate text model failed its start-up check (texts are then refused), or None (loads)."""
        self._loaded()
        return self._text_refusal

    @property
    def revision(self) -> str:
        """The hub commit of the loaded model, or ``sha256:<hex>`` of a local folder's files."""
        self._loaded()
        assert self._revision is not None
        return self._revision

    @property
    def image_encoder(self) -> str:
        """What embeds images once loaded: "torch", "onnx" or "onnx-int8" (loads the model)."""
        self._loaded()
        return self._encoder_name()

    @property
    def text_encoder(self) -> str:
        """What embeds texts (queries) once loaded: "torch", "onnx" or "onnx-int8" (loads the model)."""
        self._loaded()
        return self._text_encoder_name()

    def _text_encoder_name(self) -> str:
        if self._onnx_text is None:
            return "torch"
        return "onnx-int8" if self._onnx_text.quantized else "onnx"

    def _encoder_name(self) -> str:
        if self._onnx is None:
            return "torch"
        return "onnx-int8" if self._onnx.quantized else "onnx"

    @property
    def device(self) -> str:
        """Where the model runs (loads it)."""
        return self._loaded().device

    # Embedding ------------------------------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images: float32 (n, dimension), each row of unit length."""
        backend = self._loaded()
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if self._onnx is not None:
            return self._onnx.embed_images(rgb)
        if not rgb:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return backend.embed_images(rgb, self.image_batch_size)

    def prepare_image(self, image: Image.Image) -> np.ndarray | Image.Image:
        """The per-image half of :meth:`embed_images`, safe to run in many threads at once.

        The model's own image processor turns the picture into pixel values (float32, (3, H, W));
        :meth:`embed_prepared` then runs only the forward pass. Models that preprocess pictures themselves
        (non-CLIP sentence-transformers models, SigLIP 2 NaFlex) get the RGB picture back.
        """
        backend = self._loaded()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return backend.prepare_image(rgb)

    def embed_prepared(self, prepared: Sequence[np.ndarray | Image.Image]) -> np.ndarray:
        """Embed what :meth:`prepare_image` returned: the same vectors as ``embed_images`` of the pictures."""
        backend = self._loaded()
        if not prepared:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx is not None and all(isinstance(item, np.ndarray) for item in prepared):
            return self._onnx.embed_pixel_values(np.stack([item for item in prepared if isinstance(item, np.ndarray)]))
        return backend.embed_prepared(prepared, self.image_batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text model when one is set, else with the image model's own text tower.

        A text longer than the model reads (CLIP: 77 tokens) is cut to that length; `truncated_texts` says which.
        `TextModelRefused` when the text model failed its start-up check.
        """
        backend = self._loaded()
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        if self._text_refusal is not None:
            raise TextModelRefused(self._text_refusal)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx_text is not None:
            return self._onnx_text.embed_texts(list(texts))
        return (self._text_model or backend).embed_texts(list(texts), self.text_batch_size)

    def embed_image_model_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the image model's own text tower, whatever WITHSENSE_TEXT_MODEL says.

        The zero-shot moderation prompts are scored this way: their thresholds were calibrated on this tower, and a
        separate (multilingual) text model would silently move every photo's scores.
        """
        backend = self._loaded()
        if isinstance(texts, str):
            raise TypeError("embed_image_model_texts takes a sequence of strings, not one string")
        return backend.embed_texts(list(texts), self.text_batch_size)

    def truncated_texts(self, texts: Sequence[str]) -> list[bool]:
        """For each text, whether `embed_texts` cuts it to the model's context (it reads only the beginning)."""
        backend = self._text_model or self._loaded()
        limit = backend.max_text_tokens
        if limit is None or not texts:
            return [False] * len(texts)
        return [count > limit for count in backend.text_token_counts(list(texts))]


_embedder = runtime.slot("embedder", ClipEmbedder.from_settings)


def get_embedder() -> ClipEmbedder:
    """The process-wide embedder from settings, created on first call (after a Celery fork, not before)."""
    return _embedder.get()
