"""Model fixtures shared by every test module: a trained tiny CLIP, built once and cached on disk.

Import them into a conftest (``from tests.fixtures_model import tiny_clip_path``) or a test module.
The first run trains the model (about a minute of CPU); later runs reuse the cached folder
until evaluation/standins/tiny_clip.py or evaluation/standins/synthetic.py changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evaluation.standins.tiny_clip import ensure_tiny_clip

# WITHSENSE_TEST_CACHE lets CI keep the model in a cached folder between jobs.
TEST_MODEL_CACHE = Path(
    os.environ.get("WITHSENSE_TEST_CACHE") or Path(__file__).resolve().parents[1] / ".cache" / "test-models"
)


@pytest.fixture(scope="session")
def tiny_clip_path() -> Path:
    """A sentence-transformers folder holding the trained tiny CLIP; point WITHSENSE_MODEL at it."""
    return ensure_tiny_clip(TEST_MODEL_CACHE)
