"""The seed's utilities under the seed's names (``grasp.deep_learning.utils``): re-exports only.

Each name is the one implementation that lives elsewhere in the package; the heavy ones
(torch, Lightning, Hydra, matplotlib) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from grasp_dl.data.prepare import create_color_features, prepare_stellar_data

#: Where each lazily imported utility lives.
LAZY_UTILITIES = {
    "evaluate_clustering": "grasp_dl.metrics",
    "plot_cluster_comparison": "grasp_dl.figures.plotting",
    "gpu_memory_usage": "grasp_dl.runtime.gpu",
    "optimize_hyperparameters": "grasp_dl.jobs.search",
}

__all__ = [
    "create_color_features",
    "evaluate_clustering",  # noqa: F822 (lazy, module __getattr__)
    "gpu_memory_usage",  # noqa: F822
    "optimize_hyperparameters",  # noqa: F822
    "plot_cluster_comparison",  # noqa: F822
    "prepare_stellar_data",
]


def __getattr__(name: str) -> Any:
    """Import a heavier utility only when first used."""
    if name in LAZY_UTILITIES:
        return getattr(importlib.import_module(LAZY_UTILITIES[name]), name)
    raise AttributeError(f"module 'grasp_dl.utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
