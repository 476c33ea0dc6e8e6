"""The one CLIP model wrapper used by the API, the workers, evaluation and benchmarks.

Loading goes through sentence-transformers exactly as ``SentenceTransformer("clip-ViT-B-32")``
does for users: a hub name (resolved to ``sentence-transformers/clip-ViT-B-32``) or a local
sentence-transformers folder. Old folders use the ``sentence_transformers.models.CLIPModel``
module, new ones the ``Transformer`` module ST 6 recommends; both route images to the model's
``get_image_features`` and text to ``get_text_features``, preprocessing with the model's own
processor config. Nothing is loaded until first use, so a Celery parent never holds torch state
that a forked child inherits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.clip_parts import (
    ImageProcessor,
    NotAClipModelError,
    SquareInputShortcut,
    clip_image_features,
    clip_parts,
    square_input_shortcut,
)

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPModel

    from core.onnx_encoder import OnnxImageEncoder

from core.runtime import runtime
from core.settings import Settings
from core.text_alignment import TextAlignment, moderation_prompt_texts

logger = logging.getLogger(__name__)

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
# Documentation does not change what a model computes; left out of a local folder's content hash.
_UNHASHED_NAMES = frozenset({"README.md"})


class ModelUnavailableError(RuntimeError):
    """The embedding model could not be loaded: not cached and the hub unreachable, or a bad path."""


def _hub_repo_id(name: str) -> str:
    """The hub repository sentence-transformers resolves a bare model name to."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.util.misc import ORIGINAL_TRANSFORMER_MODELS
    except ImportError:  # older sentence-transformers kept it elsewhere; the list only holds BERT-era names
        ORIGINAL_TRANSFORMER_MODELS = []

    organisation = getattr(SentenceTransformer, "default_huggingface_organization", "sentence-transformers")
    if organisation and "/" not in name and name.lower() not in ORIGINAL_TRANSFORMER_MODELS:
        return f"{organisation}/{name}"
    return name


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a folder rather than a hub id (ST reads more than one "/" as a path)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set since (the stack's own check reads it late)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {
        "1",
        "ON",
        "YES",
        "TRUE",
    }


def model_unavailable_reason(name: str, cache_folder: str | None = None, revision: str | None = None) -> str | None:
    """Why `name` cannot be loaded, found without loading it (no torch, for `withsense up`'s summary): a missing
    folder, or a hub model that is not in the local cache while the hub is offline or unreachable (the loader's
    own check, :func:`_hub_problem`). None when loading may go ahead."""
    path = Path(name).expanduser()
    if _looks_like_path(name) or path.exists():
        if not path.is_dir():
            return f"no such folder: {name}"
        if not ((path / "modules.json").exists() or (path / "config.json").exists()):
            return f"{name} is not a sentence-transformers model folder (no modules.json or config.json)"
        return None
    # sentence-transformers' rule for bare names without importing it (its BERT-era exceptions are no CLIP models).
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    _cached, problem = _hub_problem(repo_id, revision, cache_folder)
    return f"{name} is not in the local model cache and {problem}" if problem else None


def _first_line(cause: BaseException | str) -> str:
    text = str(cause).strip().splitlines()
    summary = text[0] if text else ""
    return f"{type(cause).__name__}: {summary}" if isinstance(cause, BaseException) else summary


def _unavailable(name: str, setting: str, cause: BaseException | str) -> ModelUnavailableError:
    """The one error for a model that cannot be loaded, saying how to point at a local copy."""
    if _looks_like_path(name) or Path(name).expanduser().exists():
        return ModelUnavailableError(
            f"Could not load the model folder {name!r} ({_first_line(cause)}). Set {setting} to a folder "
            f'saved with `SentenceTransformer("clip-ViT-B-32").save("/path/to/folder")` or downloaded with '
            f"`huggingface-cli download sentence-transformers/clip-ViT-B-32 --local-dir /path/to/folder`."
        )
    repo_id = _hub_repo_id(name)
    return ModelUnavailableError(
        f"Could not load {name} from the Hugging Face hub (offline?). Download it on a machine with "
        f'internet access, with `SentenceTransformer("{name}").save("/path/to/folder")` or '
        f"`huggingface-cli download {repo_id} --local-dir /path/to/folder` (`hf download` in newer "
        f"huggingface_hub), copy the folder here and set {setting}=/path/to/folder. "
        f"Cause: {_first_line(cause)}"
    )


# One request, answered or not within this many seconds, decides whether the hub can be reached at all.
HUB_PROBE_TIMEOUT_S = 5.0


def _hub_problem(repo_id: str, revision: str | None, cache_folder: str | None) -> tuple[bool, str | None]:
    """(whether the model is in the local cache, why the hub cannot provide it when it is not).

    One short request at most (none for a cached model): without it, every file of the model is fetched with its
    own timeouts and retries (minutes of log noise per attempt) before the one clear error.
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    cached = try_to_load_from_cache(repo_id, "modules.json", cache_dir=cache_folder, revision=revision)
    if isinstance(cached, str):
        return True, None
    if _hub_offline():
        return False, "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        return False, f"{repo_id} is not on the hub ({_first_line(exc)})"
    except Exception as exc:  # noqa: BLE001 - any failure of the one request means: not reachable now
        return False, f"the hub is unreachable ({_first_line(exc)})"
    return False, None


def _hub_preflight(name: str, setting: str, revision: str | None, cache_folder: str | None) -> bool:
    """Fail fast on a hub model that cannot be had; True when it is in the local cache (loaded without the hub).

    A cached model is read from the cache alone: its revision names the vectors in the index, so it must not
    change under a running service (WITHSENSE_MODEL_REVISION pins another). Offline (HF_HUB_OFFLINE) and not
    cached, or the hub unreachable in one short request: ModelUnavailableError.
    """
    cached, problem = _hub_problem(_hub_repo_id(name), revision, cache_folder)
    if problem:
        raise _unavailable(name, setting, f"{problem}, and the model is not in the local cache")
    return cached


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


def folder_content_hash(folder: Path) -> str:
    """A hash of the files that define a model folder (config, tokenizer, weights), stable across processes.

    Hidden files (markers, caches) and documentation are left out.
    """
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.name not in _UNHASHED_NAMES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()[:16]


class ClipEmbedder:
    """CLIP image and text embeddings in one space: float32, L2-normalised, shape (n, dimension).

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
        onnx_cache_dir: str | Path | None = None,
        text_probes: Sequence[str] = (),
        text_min_margin: float | None = None,
    ) -> None:
        if image_encoder not in ("torch", "onnx", "onnx-int8"):
            raise ValueError(f"image_encoder must be torch, onnx or onnx-int8, not {image_encoder!r}")
        if image_encoder != "torch" and onnx_cache_dir is None:
            raise ValueError("an ONNX image encoder needs onnx_cache_dir (where the exported model is kept)")
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
        self._clip_model: CLIPModel | None = None
        self._image_processor: ImageProcessor | None = None
        self._square_input: SquareInputShortcut | None = None
        self._lock = threading.Lock()
        self._model: SentenceTransformer | None = None
        self._text_model: SentenceTransformer | None = None
        self._revision: str | None = None
        self._dimension: int | None = None
        # Extra captions for the start-up check of a separate text model (core/text_alignment.py).
        self._text_probes = tuple(text_probes)
        self._text_min_margin = text_min_margin
        self.text_alignment: TextAlignment | None = None

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
            onnx_cache_dir=settings.onnx_dir,
            text_probes=moderation_prompt_texts(settings.moderation_prompts) if settings.text_model else (),
            text_min_margin=settings.text_model_min_margin,
        )

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return f"ClipEmbedder({self._name!r}, text_model={self._text_name!r}, {state})"

    # Loading ------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _device(self) -> str:
        import torch

        if self._requested_device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self._requested_device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailableError(f"WITHSENSE_DEVICE={self._requested_device} but torch sees no CUDA device")
        return self._requested_device

    def _load_one(self, name: str, setting: str, revision: str | None, device: str) -> SentenceTransformer:
        from huggingface_hub.errors import EntryNotFoundError
        from sentence_transformers import SentenceTransformer

        path = Path(name).expanduser()
        if _looks_like_path(name) and not path.is_dir():
            raise _unavailable(name, setting, "no such folder")
        source = str(path) if path.is_dir() else name
        local_only = False if path.is_dir() else _hub_preflight(name, setting, revision, self._cache_folder)
        try:
            model = SentenceTransformer(
                source,
                device=device,
                revision=None if path.is_dir() else revision,
                cache_folder=self._cache_folder,
                local_files_only=local_only,
            )
        except (OSError, EntryNotFoundError) as exc:  # hub errors, missing files, offline mode
            raise _unavailable(name, setting, exc) from exc
        fit_text_context(model)
        if device.startswith("cuda"):
            # Half precision on GPU: twice the throughput, no measurable loss in cosine rankings.
            model.half()
        model.eval()
        return model

    def load(self) -> None:
        """Load the model(s) once; safe to call from several threads and more than once."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            device = self._device()
            model = self._load_one(self._name, "WITHSENSE_MODEL", self._requested_revision, device)
            dimension = model.get_embedding_dimension()
            if dimension is None:
                raise ModelUnavailableError(f"{self._name} does not report an embedding dimension")
            text_model = None
            if self._text_name:
                text_model = self._load_one(self._text_name, "WITHSENSE_TEXT_MODEL", None, device)
                text_dimension = text_model.get_embedding_dimension()
                if text_dimension != dimension:
                    raise ModelUnavailableError(
                        f"text model {self._text_name} gives {text_dimension}-d vectors but {self._name} gives "
                        f"{dimension}-d: they are not in the same embedding space"
                    )
            alignment = self._check_text_model(model, text_model) if text_model is not None else None
            self._text_model = text_model
            self.text_alignment = alignment
            self._dimension = int(dimension)
            self._revision = self._resolve_revision(model)
            self._clip_model, self._image_processor = self._clip_parts(model)
            self._square_input = square_input_shortcut(self._image_processor) if self._image_processor else None
            self._onnx = self._open_onnx(model, device)
            # Published last: other threads treat a non-None model as "fully loaded".
            self._model = model
            logger.info(
                "loaded %s (revision %s, %d-d) on %s; image encoder %s",
                self._name,
                self._revision,
                dimension,
                device,
                self._encoder_name(),
            )

    def _check_text_model(self, model: SentenceTransformer, text_model: SentenceTransformer) -> TextAlignment:
        """Refuse a text model whose probe captions do not land near the image model's own text tower's."""
        from core.text_alignment import DEFAULT_MIN_MARGIN, probe_texts, require_alignment

        probes = probe_texts(self._text_probes)
        try:
            alignment = require_alignment(
                self._raw_encode(model, probes),
                self._raw_encode(text_model, probes),
                image_model=self._name,
                text_model=str(self._text_name),
                min_margin=DEFAULT_MIN_MARGIN if self._text_min_margin is None else self._text_min_margin,
            )
        except ValueError as exc:  # TextModelMismatchError: a configuration error, reported like a missing model
            raise ModelUnavailableError(str(exc)) from exc
        logger.info("text model %s agrees with %s: %s", self._text_name, self._name, alignment.describe())
        return alignment

    @staticmethod
    def _raw_encode(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts` from one loaded model, usable while `load` still holds its lock."""
        import torch

        with torch.inference_mode():
            vectors = model.encode(texts, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False)
            vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
        return vectors.cpu().numpy().astype(np.float32, copy=False)

    @staticmethod
    def _clip_parts(model: SentenceTransformer) -> tuple[CLIPModel | None, ImageProcessor | None]:
        """The Hugging Face CLIP model and its image processor, for the threaded preprocessing path."""
        try:
            parts = clip_parts(model)
        except NotAClipModelError:
            return None, None
        return parts.model, parts.image_processor

    def _open_onnx(self, model: SentenceTransformer, device: str) -> OnnxImageEncoder | None:
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
            return OnnxImageEncoder.from_sentence_transformer(
                model,
                self._revision,
                self._onnx_cache_dir,
                quantize=self._requested_image_encoder == "onnx-int8",
                batch_size=self.image_batch_size,
            )
        except OnnxExportError as exc:
            # The export computes something else than the model: refuse to index with it.
            raise ModelUnavailableError(f"WITHSENSE_IMAGE_ENCODER={self._requested_image_encoder}: {exc}") from exc

    def _resolve_revision(self, model: SentenceTransformer) -> str:
        path = Path(self._name).expanduser()
        if path.is_dir():
            return folder_content_hash(path)
        config = getattr(model, "config", None)
        commit = getattr(config, "_commit_hash", None) if config is not None else None
        if isinstance(commit, str) and _COMMIT_HASH.match(commit):
            return commit
        if self._requested_revision and _COMMIT_HASH.match(self._requested_revision):
            return self._requested_revision
        # The hub cache stores each commit in snapshots/<commit>/.
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            _hub_repo_id(self._name),
            "modules.json",
            cache_dir=self._cache_folder,
            revision=self._requested_revision,
        )
        if isinstance(cached, str):
            snapshot = Path(cached).parent
            if _COMMIT_HASH.match(snapshot.name):
                return snapshot.name
            return folder_content_hash(snapshot)
        raise ModelUnavailableError(f"could not determine which revision of {self._name} was loaded")

    def _loaded(self) -> SentenceTransformer:
        self.load()
        assert self._model is not None
        return self._model

    @property
    def sentence_transformer(self) -> SentenceTransformer:
        """The loaded sentence-transformers model of images (and text, unless a text model is set); loads it."""
        return self._loaded()

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

    def _encoder_name(self) -> str:
        if self._onnx is None:
            return "torch"
        return "onnx-int8" if self._onnx.quantized else "onnx"

    @property
    def device(self) -> str:
        """Where the model runs (loads it)."""
        return str(self._loaded().device)

    # Embedding ------------------------------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images: float32 (n, dimension), each row of unit length."""
        model = self._loaded()
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        if self._onnx is not None:
            return self._onnx.embed_images(rgb)
        return self._encode(model, rgb, self.image_batch_size)

    def prepare_image(self, image: Image.Image) -> np.ndarray | Image.Image:
        """The per-image half of :meth:`embed_images`, safe to run in many threads at once.

        For CLIP models, the model's own image processor turns the picture into pixel values
        (float32, (3, H, W)); :meth:`embed_prepared` then runs only the forward pass. Other models
        get the RGB picture back and are embedded by sentence-transformers as a whole.
        """
        self.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if self._image_processor is None:
            return rgb
        if self._square_input is not None and rgb.size == self._square_input.size:
            # Already the model's input size (the worker's 224x224 derivative): resize and crop would be
            # no-ops, so only rescale and normalise remain, as one multiply-add per channel.
            return self._square_input.pixel_values(rgb)
        pixels = self._image_processor(images=[rgb], return_tensors="np")["pixel_values"]
        return np.asarray(pixels[0], dtype=np.float32)

    def embed_prepared(self, prepared: Sequence[np.ndarray | Image.Image]) -> np.ndarray:
        """Embed what :meth:`prepare_image` returned: the same vectors as ``embed_images`` of the pictures."""
        model = self._loaded()
        if not prepared:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._image_processor is None:
            pictures = [item for item in prepared if isinstance(item, Image.Image)]
            if len(pictures) != len(prepared):
                raise TypeError("embed_prepared takes what prepare_image returned (pictures for this model)")
            return self._encode(model, pictures, self.image_batch_size)
        arrays = [item for item in prepared if isinstance(item, np.ndarray)]
        if len(arrays) != len(prepared):
            raise TypeError("embed_prepared takes what prepare_image returned (pixel arrays for this model)")
        pixels = np.stack(arrays)
        if self._onnx is not None:
            return self._onnx.embed_pixel_values(pixels)
        return self._forward_pixels(pixels)

    def _forward_pixels(self, pixels: np.ndarray) -> np.ndarray:
        assert self._clip_model is not None
        return clip_image_features(self._clip_model, pixels, self.image_batch_size)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text model when one is set, else with CLIP's text tower.

        A text longer than the model reads (CLIP: 77 tokens) is cut to that length; `truncated_texts` says which.
        """
        model = self._loaded()
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        return self._encode(self._text_model or model, list(texts), self.text_batch_size)

    def embed_image_model_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the image model's own text tower, whatever WITHSENSE_TEXT_MODEL says.

        The zero-shot moderation prompts are scored this way: their thresholds were calibrated on this tower, and a
        separate (multilingual) text model would silently move every photo's scores.
        """
        model = self._loaded()
        if isinstance(texts, str):
            raise TypeError("embed_image_model_texts takes a sequence of strings, not one string")
        return self._encode(model, list(texts), self.text_batch_size)

    def truncated_texts(self, texts: Sequence[str]) -> list[bool]:
        """For each text, whether `embed_texts` cuts it to the model's context (it reads only the beginning)."""
        model = self._text_model or self._loaded()
        tokenizer = getattr(model, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        if tokenizer is None or not isinstance(limit, int) or not texts:
            return [False] * len(texts)
        counted = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
        return [len(ids) > limit for ids in counted]

    def _encode(self, model: SentenceTransformer, inputs: list[Image.Image] | list[str], batch_size: int) -> np.ndarray:
        import torch

        if not inputs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            embeddings: torch.Tensor = model.encode(
                inputs,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            # Normalise in float32: fp16 norms of 512 components lose precision.
            embeddings = torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)
        return embeddings.cpu().numpy().astype(np.float32, copy=False)


_embedder = runtime.slot("embedder", ClipEmbedder.from_settings)


def get_embedder() -> ClipEmbedder:
    """The process-wide embedder from settings, created on first call (after a Celery fork, not before)."""
    return _embedder.get()
