"""Where a model comes from: a local folder or the Hugging Face hub, asked at most once, and which family it is.

Shared by the embedder (core/embedding.py) and the model backends (core/model_backends.py): a missing model
fails fast with one error that says how to point the setting at a local copy, and a model's family is read
from its own files (``modules.json``, ``open_clip_config.json``, ``config.json``'s ``model_type``), never
guessed from its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
# Documentation does not change what a model computes; left out of a local folder's content hash.
_UNHASHED_NAMES = frozenset({"README.md"})


class ModelUnavailableError(RuntimeError):
    """The embedding model could not be loaded: not cached and the hub unreachable, or a bad path."""


OPEN_CLIP_PREFIX = "hf-hub:"  # open_clip's own way of naming a hub model
# The file that tells each family's folder apart; config.json is read for its model_type.
ST_MARKER = "modules.json"
OPEN_CLIP_MARKER = "open_clip_config.json"
HF_CONFIG = "config.json"
MARKER_FILES = (ST_MARKER, OPEN_CLIP_MARKER, HF_CONFIG)

Family = Literal["sentence-transformers", "siglip", "open_clip"]
# transformers model types that the SigLIP backend loads (SigLIP 2's fixed-resolution checkpoints are "siglip").
SIGLIP_MODEL_TYPES = frozenset({"siglip", "siglip2"})


def _hub_repo_id(name: str) -> str:
    """The hub repository a model name stands for: ``hf-hub:org/name`` for open_clip, else what
    sentence-transformers resolves a bare name to."""
    if name.startswith(OPEN_CLIP_PREFIX):
        return name[len(OPEN_CLIP_PREFIX) :]
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
        if not any((path / marker).exists() for marker in MARKER_FILES):
            return f"{name} is not a model folder (no {', '.join(MARKER_FILES)})"
        return None
    # sentence-transformers' rule for bare names without importing it (its BERT-era exceptions are no CLIP models).
    if name.startswith(OPEN_CLIP_PREFIX):
        repo_id = name[len(OPEN_CLIP_PREFIX) :]
    else:
        repo_id = name if "/" in name else f"sentence-transformers/{name}"
    check = _hub_problem(repo_id, revision, cache_folder)
    return f"{name} is not in the local model cache and {check.problem}" if check.problem else None


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
    saver = (
        ""
        if name.startswith(OPEN_CLIP_PREFIX) or "/" in name
        else f'with `SentenceTransformer("{name}").save("/path/to/folder")` or '
    )
    return ModelUnavailableError(
        f"Could not load {name} from the Hugging Face hub (offline?). Download it on a machine with "
        f"internet access, {saver}"
        f"with `huggingface-cli download {repo_id} --local-dir /path/to/folder` (`hf download` in newer "
        f"huggingface_hub), copy the folder here and set {setting}=/path/to/folder. "
        f"Cause: {_first_line(cause)}"
    )


# One request, answered or not within this many seconds, decides whether the hub can be reached at all.
HUB_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubCheck:
    """What one look at the cache (and at most one request to the hub) found out about a hub model."""

    cached: bool
    problem: str | None
    # The repository's file names when the hub answered (None when it was not asked): they tell the family.
    files: frozenset[str] | None = None


def _hub_problem(repo_id: str, revision: str | None, cache_folder: str | None) -> HubCheck:
    """Whether the model is in the local cache, why the hub cannot provide it when it is not, and its files.

    One short request at most (none for a cached model): without it, every file of the model is fetched with its
    own timeouts and retries (minutes of log noise per attempt) before the one clear error.
    """
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    for marker in MARKER_FILES:
        cached = try_to_load_from_cache(repo_id, marker, cache_dir=cache_folder, revision=revision)
        if isinstance(cached, str):
            return HubCheck(True, None)
    if _hub_offline():
        return HubCheck(False, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        return HubCheck(False, f"{repo_id} is not on the hub ({_first_line(exc)})")
    except Exception as exc:  # noqa: BLE001 - any failure of the one request means: not reachable now
        return HubCheck(False, f"the hub is unreachable ({_first_line(exc)})")
    return HubCheck(False, None, frozenset(sibling.rfilename for sibling in info.siblings or ()))


def _hub_preflight(name: str, setting: str, revision: str | None, cache_folder: str | None) -> HubCheck:
    """Fail fast on a hub model that cannot be had; ``cached`` when it is in the local cache (loaded without the hub).

    A cached model is read from the cache alone: its revision names the vectors in the index, so it must not
    change under a running service (WITHSENSE_MODEL_REVISION pins another). Offline (HF_HUB_OFFLINE) and not
    cached, or the hub unreachable in one short request: ModelUnavailableError.
    """
    check = _hub_problem(_hub_repo_id(name), revision, cache_folder)
    if check.problem:
        raise _unavailable(name, setting, f"{check.problem}, and the model is not in the local cache")
    return check


@dataclass(frozen=True)
class ModelSource:
    """A model to load: a local folder, or a hub repository (cached or to be downloaded), and its family."""

    name: str  # as configured (WITHSENSE_MODEL)
    family: Family
    folder: Path | None  # a local folder, or None for a hub model
    repo_id: str | None  # the hub repository, or None for a folder
    revision: str | None  # the requested hub revision
    cached: bool  # a hub model read from the local cache alone


def _family_from_files(files: set[str] | frozenset[str], read_config: object) -> Family | None:
    """The family that a model's file names (and its config.json's model_type, read on demand) say it is.

    Any other transformers folder is sentence-transformers' (which wraps it with a pooling module), as before.
    """
    if ST_MARKER in files:
        return "sentence-transformers"
    if OPEN_CLIP_MARKER in files:
        return "open_clip"
    if HF_CONFIG in files and callable(read_config):
        config = read_config()
        model_type = config.get("model_type") if isinstance(config, dict) else None
        return "siglip" if model_type in SIGLIP_MODEL_TYPES else "sentence-transformers"
    return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def locate_model(name: str, setting: str, revision: str | None, cache_folder: str | None) -> ModelSource:
    """Where `name` is and which family it is, asking the hub at most once (ModelUnavailableError when it cannot
    be had). A folder's family comes from its files; ``hf-hub:`` names are open_clip's; a hub id's family from
    the cached files, else from the repository's file list."""
    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.is_dir():
        raise _unavailable(name, setting, "no such folder")
    if path.is_dir():
        files = {child.name for child in path.iterdir()}
        family = _family_from_files(files, lambda: _read_json(path / HF_CONFIG))
        if family is None:
            raise _unavailable(
                name,
                setting,
                f"not a model folder (no {', '.join(MARKER_FILES)})",
            )
        return ModelSource(name, family, path, None, None, False)
    check = _hub_preflight(name, setting, revision, cache_folder)
    repo_id = _hub_repo_id(name)
    if name.startswith(OPEN_CLIP_PREFIX):
        return ModelSource(name, "open_clip", None, repo_id, revision, check.cached)
    if check.cached:
        from huggingface_hub import try_to_load_from_cache

        found = {
            marker
            for marker in MARKER_FILES
            if isinstance(try_to_load_from_cache(repo_id, marker, cache_dir=cache_folder, revision=revision), str)
        }

        def cached_config() -> object:
            hit = try_to_load_from_cache(repo_id, HF_CONFIG, cache_dir=cache_folder, revision=revision)
            return _read_json(Path(hit)) if isinstance(hit, str) else None

        family = _family_from_files(found, cached_config)
    else:
        repo_files = check.files or frozenset({ST_MARKER})

        def hub_config() -> object:
            from huggingface_hub import hf_hub_download

            try:
                return _read_json(Path(hf_hub_download(repo_id, HF_CONFIG, revision=revision, cache_dir=cache_folder)))
            except Exception as exc:  # any failure to fetch the config: the model cannot be had
                raise _unavailable(name, setting, exc) from exc

        family = _family_from_files(repo_files, hub_config)
    # A repository of no known family is tried as sentence-transformers, which also wraps plain transformers models.
    return ModelSource(name, family or "sentence-transformers", None, repo_id, revision, check.cached)


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
