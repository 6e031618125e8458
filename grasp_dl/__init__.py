"""grasp-dl: deep unsupervised clustering of stellar catalogues around globular clusters."""

from grasp_dl.data.catalog import read_catalog
from grasp_dl.data.prepare import create_color_features, prepare_stellar_data

__version__ = "0.1.0"

__all__ = ["create_color_features", "prepare_stellar_data", "read_catalog", "__version__"]
