"""Offline tools: evaluation on the seed dataset, synthetic data and stand-in models.

The evaluation's Python API (imported lazily, so ``evaluation.synthetic`` stays light)::

    from evaluation import EvaluationConfig, ModelSpec, run_evaluation, load_dataset
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluation.dataset import SeedDataset, load_dataset
    from evaluation.demo import DEMO_DIR, build_demo_dataset
    from evaluation.models import ModelSpec
    from evaluation.runner import EvaluationConfig, EvaluationResult, run_evaluation

_EXPORTS = {
    "EvaluationConfig": "evaluation.runner",
    "EvaluationResult": "evaluation.runner",
    "run_evaluation": "evaluation.runner",
    "ModelSpec": "evaluation.models",
    "SeedDataset": "evaluation.dataset",
    "load_dataset": "evaluation.dataset",
    "DEMO_DIR": "evaluation.demo",
    "build_demo_dataset": "evaluation.demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
