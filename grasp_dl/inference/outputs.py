"""Files ``grasp-dl predict`` writes: the per-star table and its JSON cluster summary beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from grasp_dl.data.catalog import write_catalog
from grasp_dl.runtime.errors import ConfigError
from grasp_dl.runtime.io_policy import StagedOutputs, check_output_file, strict_json
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


def summary_json(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a cluster summary as strict JSON (non-finite numbers as ``null``) to ``path`` itself.

    Parameters
    ----------
    summary : dict
        The summary (see :class:`grasp_dl.membership.rules.ClusterSummary`).
    path : str or PathLike
        The file to write (a temporary file of :class:`~grasp_dl.runtime.io_policy.StagedOutputs`).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.write_text(strict_json(summary))
    return path


def write_summary(summary: dict[str, Any], output: str | os.PathLike[str]) -> Path:
    """Write the cluster summary as ``<output stem>.summary.json`` beside the predictions (atomically).

    The JSON is strict: a value that is not a finite number (no cluster found) is ``null``.

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
    with StagedOutputs({"output's summary": path}) as staged:
        summary_json(summary, staged.temp("output's summary"))
        staged.commit()
    return path


def write_predictions(
    table: pd.DataFrame, summary: dict[str, Any], output: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write an in-memory per-star table and its JSON summary beside it, both checked first and moved together.

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
        When ``output`` is neither .parquet nor .csv, or an output is a directory or not writable.
    """
    output = prediction_output(output)
    with StagedOutputs({"output": output, "output's summary": summary_path(output)}) as staged:
        write_catalog(table, staged.temp("output"))
        summary_json(summary, staged.temp("output's summary"))
        staged.commit()
    return output, summary_path(output)
