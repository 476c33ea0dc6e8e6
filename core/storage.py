"""Where originals and 224x224 derivatives live under WITHSENSE_HOME.

Storage keys are generated here; a client's file name never reaches a path.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from core.settings import Settings

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}


def new_storage_key(image_format: str) -> str:
    """A fresh relative path such as `3f/2a/3f2a...c1.jpg`, fanned out so no folder grows huge."""
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name[2:4]}/{name}.{EXTENSIONS.get(image_format.upper(), 'bin')}"


def original_path(settings: Settings, storage_key: str) -> Path:
    path = (settings.originals_dir / storage_key).resolve()
    # Keys are ours, but a tampered row must still not escape the originals folder.
    if settings.originals_dir.resolve() not in path.parents:
        raise ValueError(f"storage key escapes the originals folder: {storage_key!r}")
    return path


def derivative_path(settings: Settings, photo_id: uuid.UUID | str) -> Path:
    key = uuid.UUID(str(photo_id)).hex
    return settings.derivatives_dir / key[:2] / f"{key}.jpg"


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_into_place(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)


def remove_quietly(*paths: Path) -> list[str]:
    """Remove files; return the errors (other than 'already gone') for the caller to log."""
    errors: list[str] = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    return errors
