"""GRASP helpers: membership columns written back into GRASP tables, and per-group statistics."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
from astropy.table import Table

from grasp_dl.api import DeepClusteringModel
from grasp_dl.data.statistics import cluster_statistics
from grasp_dl.runtime.errors import CatalogError, ConfigError

__all__ = ["add_membership_columns", "cluster_statistics"]

#: Names of the membership columns written back into GRASP tables.
CLUSTER_COLUMN = "dl_cluster"
PROBABILITY_COLUMN = "dl_probability"


def _as_model(model: Any) -> DeepClusteringModel:
    """A DeepClusteringModel from a model, a trained clustering module or a checkpoint path."""
    if isinstance(model, DeepClusteringModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return DeepClusteringModel.load(model)
    if isinstance(model, L.LightningModule):
        return DeepClusteringModel.from_module(model)
    raise ConfigError(
        f"cannot predict with a {type(model).__name__}: pass a DeepClusteringModel, a trained DEC/VaDE "
        "module or a checkpoint path"
    )


def _with_columns(table: Any, labels: np.ndarray, prob: np.ndarray, inplace: bool) -> Any:
    """``table`` (DataFrame or astropy Table) with the membership columns set, copied unless ``inplace``."""
    out = table if inplace else table.copy()
    out[CLUSTER_COLUMN] = labels
    out[PROBABILITY_COLUMN] = prob
    return out


def add_membership_columns(
    sample_or_table: Any,
    model: Any,
    *,
    center: str | Sequence[float] | None = None,
    inplace: bool = False,
) -> Any:
    """Write ``dl_cluster`` (group, -1 if not scored) and ``dl_probability`` (member_prob, NaN if not scored).

    Parameters
    ----------
    sample_or_table : DataFrame, Table or GRASP sample
        A DataFrame or astropy Table of Gaia columns, or an object whose ``.data`` holds one.
    model : DeepClusteringModel, LightningModule or path
        A fitted model, a trained DEC/VaDE module or a checkpoint path.
    center : 'auto' or [ra, dec], optional
        As in :meth:`DeepClusteringModel.predict_table` ('auto' for another cluster's cone).
    inplace : bool, default False
        Change the given object (its ``.data`` for a sample) instead of a copy.

    Returns
    -------
    Same kind as ``sample_or_table``
        With both columns, the rows in their order.

    Raises
    ------
    CatalogError
        When ``sample_or_table`` is neither a table nor holds one.
    ConfigError
        When ``model`` is none of the accepted kinds.
    """
    inner = getattr(sample_or_table, "data", None)
    wrapped = not isinstance(sample_or_table, (pd.DataFrame, Table)) and isinstance(inner, (pd.DataFrame, Table))
    table = inner if wrapped else sample_or_table
    if not isinstance(table, (pd.DataFrame, Table)):
        raise CatalogError(
            f"add_membership_columns takes a DataFrame, an astropy Table or an object whose .data holds one, "
            f"got a {type(sample_or_table).__name__}: for a file, read it first with grasp_dl.read_catalog(path)"
        )
    predictions, _ = _as_model(model).predict_table(table, center)
    labels = predictions["label"].to_numpy()
    prob = predictions["member_prob"].to_numpy(dtype=float)
    new_table = _with_columns(table, labels, prob, inplace)
    if not wrapped:
        return new_table
    sample = sample_or_table if inplace else copy.copy(sample_or_table)
    sample.data = new_table
    return sample
