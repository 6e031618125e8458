"""Per-group statistics of a catalogue: counts, shares, and the mean and spread of each column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.arrays import feature_frame, is_feature_array
from grasp_dl.data.catalog import read_catalog
from grasp_dl.runtime.errors import CatalogError, ConfigError

#: Columns the cluster statistics describe when none are named (those a catalogue has).
STATISTICS_COLUMNS = ("ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_mag", "bp_rp")


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
