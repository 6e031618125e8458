"""Files ``grasp-dl predict`` writes: the per-star table and its JSON cluster summary beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from grasp_dl.data.catalog import write_catalog
from grasp_dl.runtime.errors import ConfigError
from grasp_dl.runtime.io_policy import check_output_file
from grasp_dl.runtime.run_dir import summary_path

#: Formats of a predictions table written by ``grasp-dl predict`` (streamed in chunks).
PREDICTION_SUFFIXES = (".parquet", ".csv")


def prediction_output(output: str | os.PathLike[str]) -> Path:
    """Check that ``output`` is a .parquet or .csv path and create its folder.

    Parameters
    ----------
    output : str or PathLike
        Where the predictions table goes.

    Returns
    -------
    Path
        ``output`` as a Path.

    Raises
    ------
    ConfigError
        When the suffix is neither .parquet nor .csv, or the folder is not writable or the path an
        existing directory.
    """
    output = Path(output)
    if output.suffix.lower() not in PREDICTION_SUFFIXES:
        raise ConfigError(f"output {output} must end in .parquet or .csv")
    return check_output_file(output)


def write_summary(summary: dict[str, Any], output: str | os.PathLike[str]) -> Path:
    """Write the cluster summary as ``<output stem>.summary.json`` beside the predictions (atomically).

    Parameters
    ----------
    summary : dict
        The JSON-serialisable summary (see :class:`grasp_dl.membership.rules.ClusterSummary`).
    output : str or PathLike
        The predictions table the summary belongs to.

    Returns
    -------
    Path
        The summary file.
    """
    path = summary_path(output)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_predictions(
    table: pd.DataFrame, summary: dict[str, Any], output: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write an in-memory per-star table (atomically) and its JSON summary beside it.

    Parameters
    ----------
    table : DataFrame
        The per-star predictions (:func:`grasp_dl.inference.predict.predict_catalog`).
    summary : dict
        The cluster summary.
    output : str or PathLike
        A .parquet or .csv path.

    Returns
    -------
    tuple of Path
        The table and the summary file.

    Raises
    ------
    ConfigError
        When ``output`` is neither .parquet nor .csv.
    """
    output = prediction_output(output)
    write_catalog(table, output)
    return output, write_summary(summary, output)
