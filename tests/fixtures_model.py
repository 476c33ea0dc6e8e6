"""Temporary: the session fixture with the tiny trained CLIP (to be replaced by the model owner's version)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.tiny_clip import ensure_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_path() -> Path:
    cache = Path(os.environ.get("WITHSENSE_TEST_CACHE") or Path(__file__).resolve().parents[1] / ".cache" / "test-models")
    return ensure_tiny_clip(cache)
