"""Where originals and 224x224 derivatives live: their names, and the interface every store implements.

Storage keys are generated here; a client's file name never reaches a path or an object name. The stores
themselves do I/O and live one layer up, in the `storage` package (the local folder under WITHSENSE_HOME, or an
S3-compatible bucket); the services use them only through :class:`PhotoStorage`.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "TIFF": "tif", "BMP": "bmp"}


def new_storage_key(image_format: str) -> str:
    """A fresh relative path such as `3f/2a/3f2a...c1.jpg`, fanned out so no folder grows huge."""
    name = uuid.uuid4().hex
    return f"{name[:2]}/{name[2:4]}/{name}.{EXTENSIONS.get(image_format.upper(), 'bin')}"


def derivative_key(photo_id: uuid.UUID | str) -> str:
    """The derivative's relative name, e.g. `3f/3f2a...c1.jpg` (from the photo id, so it needs no column)."""
    key = uuid.UUID(str(photo_id)).hex
    return f"{key[:2]}/{key}.jpg"


def original_path(settings: Settings, storage_key: str) -> Path:
    """The original's path in the local store."""
    path = (settings.originals_dir / storage_key).resolve()
    # Keys are ours, but a tampered row must still not escape the originals folder.
    if settings.originals_dir.resolve() not in path.parents:
        raise ValueError(f"storage key escapes the originals folder: {storage_key!r}")
    return path


def derivative_path(settings: Settings, photo_id: uuid.UUID | str) -> Path:
    """The derivative's path in the local store."""
    return settings.derivatives_dir / derivative_key(photo_id)


class StorageUnavailable(ConnectionError):
    """The store cannot be reached or refused the request: an upload answers 503 (nothing stored), a worker's
    task is retried. A ConnectionError, so the worker's transient-error retry covers it."""


@dataclass(frozen=True)
class ObjectRead:
    """How an entry point hands a stored object to its client: exactly one of `path`, `chunks`, `redirect_url`."""

    path: Path | None = None  # a file on this host: served as a file
    chunks: Iterable[bytes] | None = None  # streamed from the store; `close` releases the connection
    size: int | None = None
    close: Callable[[], object] | None = None
    redirect_url: str | None = None  # a short-lived presigned URL the client fetches itself


class PhotoStorage(ABC):
    """Originals (by storage key) and derivatives (by photo id), wherever they live."""

    kind: str

    @abstractmethod
    def store_original(self, storage_key: str, spooled: Path) -> None:
        """Store the spooled file (ours to consume) as the original; streamed, never read whole into memory."""

    @abstractmethod
    def original_as_file(self, storage_key: str) -> AbstractContextManager[Path]:
        """A local file with the original's bytes for the duration of the block (FileNotFoundError if missing)."""

    @abstractmethod
    def store_derivative(self, photo_id: uuid.UUID, jpeg: bytes) -> None:
        """Store the 224x224 JPEG; readers never see half of it."""

    @abstractmethod
    def read_derivative(self, photo_id: uuid.UUID) -> bytes:
        """The derivative's bytes (FileNotFoundError if missing)."""

    @abstractmethod
    def serve_derivative(self, photo_id: uuid.UUID) -> ObjectRead:
        """The derivative for a client: a file, a stream, or a presigned URL (FileNotFoundError if missing)."""

    @abstractmethod
    def remove_original(self, storage_key: str) -> str | None:
        """Remove the original; the error (other than 'already gone') for the caller to log, else None."""

    @abstractmethod
    def remove_derivative(self, photo_id: uuid.UUID) -> str | None:
        """Remove the derivative; the error (other than 'already gone'), else None."""

    @abstractmethod
    def problem(self) -> str | None:
        """None when the store can serve, else why not (for /readyz)."""

    def prepare(self) -> None:  # noqa: B027 - optional hook: only some stores have anything to create
        """Create what the store needs (a folder, a bucket) where the settings allow it."""

    def close(self) -> None:  # noqa: B027 - optional hook: only some stores hold connections
        """Release connections (on ``runtime.reset()``)."""

    def remove(self, storage_key: str, photo_id: uuid.UUID) -> list[str]:
        """Remove a photo's original and derivative; the errors for the caller to log."""
        errors = [self.remove_original(storage_key), self.remove_derivative(photo_id)]
        return [error for error in errors if error]
