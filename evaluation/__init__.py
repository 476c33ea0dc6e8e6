"""Offline tools: evaluation on the seed dataset format, and (in :mod:`evaluation.standins`) the stand-ins.

The evaluation's Python API (imported lazily, so that importing a light submodule stays light)::

    from evaluation import EvaluationConfig, ModelSpec, run_evaluation, load_dataset

The stand-ins (synthetic data, the tiny CLIP, the demo dataset) are not part of this API: they live in
:mod:`evaluation.standins`, which the production image leaves out.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evaluation.dataset import SeedDataset, load_dataset
    from evaluation.models import ModelSpec
    from evaluation.results import EvaluationConfig, EvaluationResult
    from evaluation.runner import run_evaluation

_EXPORTS = {
    "EvaluationConfig": "evaluation.results",
    "EvaluationResult": "evaluation.results",
    "run_evaluation": "evaluation.runner",
    "ModelSpec": "evaluation.models",
    "SeedDataset": "evaluation.dataset",
    "load_dataset": "evaluation.dataset",
}

__all__ = ["EvaluationConfig", "EvaluationResult", "ModelSpec", "SeedDataset", "load_dataset", "run_evaluation"]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
