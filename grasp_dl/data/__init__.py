"""Catalogue reading, feature preparation, scaling, simulation and the Lightning DataModule."""

from grasp_dl.data.catalog import read_catalog
from grasp_dl.data.prepare import create_color_features, prepare_stellar_data

__all__ = ["create_color_features", "prepare_stellar_data", "read_catalog"]
