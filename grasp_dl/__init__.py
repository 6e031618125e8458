"""grasp-dl: deep unsupervised clustering of stellar catalogues around globular clusters."""

from grasp_dl.data.catalog import read_catalog
from grasp_dl.data.prepare import create_color_features, prepare_stellar_data

__version__ = "0.1.0"

__all__ = [
    "create_color_features",
    "evaluate_clustering",
    "optimize_hyperparameters",
    "prepare_stellar_data",
    "read_catalog",
    "__version__",
]

_LAZY = {
    "optimize_hyperparameters": "grasp_dl.search",
    "evaluate_clustering": "grasp_dl.metrics",
    "DeepClusteringModel": "grasp_dl.api",
}


def __getattr__(name: str):
    """Import the heavier entry points (torch, Lightning, Hydra) only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grasp_dl' has no attribute {name!r}")
