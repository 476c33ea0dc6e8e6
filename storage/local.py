"""The local store: originals and derivatives in folders under WITHSENSE_HOME (one host, or a shared mount)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from core.storage import ObjectRead, PhotoStorage, derivative_path, original_path


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


def _remove(path: Path) -> str | None:
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc}"
    return None


class LocalStorage(PhotoStorage):
    """Files under WITHSENSE_HOME/originals and WITHSENSE_HOME/derivatives."""

    kind = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def store_original(self, storage_key: str, spooled: Path) -> None:
        destination = original_path(self.settings, storage_key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, destination)  # the spool is on the same file system: a rename, no copy

    @contextmanager
    def original_as_file(self, storage_key: str) -> Iterator[Path]:
        path = original_path(self.settings, storage_key)
        if not path.exists():  # anything else (a special file, no permission) is for the decoder to refuse
            raise FileNotFoundError(str(path))
        yield path

    def store_derivative(self, photo_id: uuid.UUID, jpeg: bytes) -> None:
        write_atomically(derivative_path(self.settings, photo_id), jpeg)

    def read_derivative(self, photo_id: uuid.UUID) -> bytes:
        return derivative_path(self.settings, photo_id).read_bytes()

    def serve_derivative(self, photo_id: uuid.UUID) -> ObjectRead:
        path = derivative_path(self.settings, photo_id)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return ObjectRead(path=path, size=path.stat().st_size)

    def remove_original(self, storage_key: str) -> str | None:
        return _remove(original_path(self.settings, storage_key))

    def remove_derivative(self, photo_id: uuid.UUID) -> str | None:
        return _remove(derivative_path(self.settings, photo_id))

    def problem(self) -> str | None:
        for folder in (self.settings.originals_dir, self.settings.derivatives_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                return f"photo folder unusable: {folder}: {exc}"
            if not os.access(folder, os.W_OK):
                return f"photo folder not writable: {folder}"
        return None

    def prepare(self) -> None:
        for folder in (self.settings.originals_dir, self.settings.derivatives_dir, self.settings.spool_dir):
            folder.mkdir(parents=True, exist_ok=True)
