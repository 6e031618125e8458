"""grasp-dl: deep unsupervised clustering of stellar catalogues around globular clusters."""

from grasp_dl.data.catalog import read_catalog
from grasp_dl.data.prepare import create_color_features, prepare_stellar_data
from grasp_dl.runtime import stage_timer as _stage_timer  # first: the time-to-first-result breakdown starts here
from grasp_dl.utils import LAZY_UTILITIES

_stage_timer.mark_package_import()

__version__ = "0.1.0"

__all__ = [
    "DeepClusteringModel",
    "__version__",
    "add_membership_columns",
    "create_color_features",
    "evaluate_clustering",
    "gpu_memory_usage",
    "optimize_hyperparameters",
    "plot_cluster_comparison",
    "prepare_stellar_data",
    "read_catalog",
]

#: The heavier entry points (torch, Lightning, Hydra, matplotlib), imported when first used:
#: the seed's utilities (as in grasp_dl.utils) and the notebook facade.
_LAZY = {
    **LAZY_UTILITIES,
    "DeepClusteringModel": "grasp_dl.api",
    "add_membership_columns": "grasp_dl.grasp",
}


def __getattr__(name: str):
    """Import the heavier entry points (torch, Lightning, Hydra) only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grasp_dl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
