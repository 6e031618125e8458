"""GRASP helpers: membership columns written back into GRASP tables, and per-group statistics."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
from astropy.table import Table

from grasp_dl.data.arrays import feature_frame, is_feature_array
from grasp_dl.data.catalog import read_catalog
from grasp_dl.errors import CatalogError, ConfigError

if TYPE_CHECKING:
    from grasp_dl.api import DeepClusteringModel

#: Columns the cluster statistics describe when none are named (those a catalogue has).
STATISTICS_COLUMNS = ("ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_mag", "bp_rp")
#: Names of the membership columns written back into GRASP tables.
CLUSTER_COLUMN = "dl_cluster"
PROBABILITY_COLUMN = "dl_probability"


def cluster_statistics(data: Any, labels: Any, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: number of stars, share of the catalogue, and mean and standard deviation of each column.

    Parameters
    ----------
    data : path, DataFrame, Table or array
        A catalogue (anything :func:`grasp_dl.read_catalog` reads) or a feature array.
    labels : array-like
        One group per row of ``data``; -1 holds the stars that were not scored.
    columns : sequence of str, optional
        The columns to describe; by default the astrometry and photometry the catalogue has
        (ra, dec, pmra, pmdec, parallax, G, BP-RP), else every numeric column.

    Returns
    -------
    DataFrame
        Indexed by group: ``n_stars``, ``fraction``, then ``<column>_mean`` and ``<column>_std``.

    Raises
    ------
    ConfigError
        When ``labels`` does not have one entry per row.
    CatalogError
        When a named column is missing.
    """
    if is_feature_array(data):
        table = feature_frame(data, [f"feature_{i}" for i in range(np.shape(data)[1])])
    else:
        table = read_catalog(data)
    groups = np.asarray(labels)
    if len(groups) != len(table):
        raise ConfigError(f"labels has {len(groups)} rows but the catalogue {len(table)}: one label per star")
    if columns is None:
        columns = [c for c in STATISTICS_COLUMNS if c in table.columns] or [
            c for c in table.columns if c != "source_id" and pd.api.types.is_numeric_dtype(table[c])
        ]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CatalogError(f"the catalogue has no column(s) {missing}: choose from {list(table.columns)}")
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
    stats = values.groupby(groups).agg(["mean", "std"])
    stats.columns = [f"{column}_{stat}" for column, stat in stats.columns]
    counts = pd.Series(groups).value_counts().reindex(stats.index)
    stats.insert(0, "n_stars", counts.to_numpy())
    stats.insert(1, "fraction", counts.to_numpy() / len(groups))
    stats.index.name = "group"
    return stats


def _as_model(model: Any) -> DeepClusteringModel:
    """A DeepClusteringModel from a model, a trained clustering module or a checkpoint path."""
    from grasp_dl.api import DeepClusteringModel

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
