"""Photo stores, the file-side counterpart of db/: the local folder and S3-compatible object storage.

Layer: services -> storage -> core. The services reach the store of this process through :func:`get_storage`,
a runtime slot chosen by WITHSENSE_STORAGE (built lazily, after a Celery fork, and rebuilt by ``runtime.reset()``).
"""

from __future__ import annotations

from core.runtime import runtime
from core.settings import get_settings
from core.storage import PhotoStorage


def _storage_from_settings() -> PhotoStorage:
    settings = get_settings()
    if settings.storage == "s3":
        from storage.s3 import S3Storage

        return S3Storage(settings)
    from storage.local import LocalStorage

    return LocalStorage(settings)


_storage = runtime.slot("photo-storage", _storage_from_settings, close=lambda store: store.close())


def get_storage() -> PhotoStorage:
    """This process's photo store (WITHSENSE_STORAGE: `local` by default, or `s3`)."""
    return _storage.get()
