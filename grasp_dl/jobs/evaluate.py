"""``grasp-dl evaluate``: metrics of a predictions table against a known truth, saved beside it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from grasp_dl.data.catalog import read_catalog, require_columns
from grasp_dl.runtime.errors import CatalogError
from grasp_dl.runtime.io_policy import StagedOutputs, check_output_file, refuse_overwriting_inputs, strict_json
from grasp_dl.runtime.run_dir import metrics_path, reliability_path

log = logging.getLogger(__name__)


def align_truth(predictions: pd.DataFrame, truth: pd.DataFrame, truth_column: str) -> np.ndarray:
    """The truth labels in the order of the predictions: by ``source_id`` when both have it, else by row.

    Parameters
    ----------
    predictions : DataFrame
        The table written by ``grasp-dl predict``.
    truth : DataFrame
        A catalogue holding the true group of every star.
    truth_column : str
        The column of ``truth`` with the true groups.

    Returns
    -------
    ndarray
        One true label per prediction row.

    Raises
    ------
    CatalogError
        When ``truth_column`` is missing, the truth repeats a ``source_id``, a predicted ``source_id`` is not in the truth, or the
        row counts differ without ``source_id`` to match them.
    """
    require_columns(truth, [truth_column], source="the truth table")
    if "source_id" in predictions.columns and "source_id" in truth.columns:
        repeated = truth["source_id"].duplicated(keep=False)
        if repeated.any():
            example = truth.loc[repeated, "source_id"].iloc[0]
            raise CatalogError(
                f"the truth table has {int(repeated.sum())} rows sharing {truth.loc[repeated, 'source_id'].nunique()} "
                f"source_id(s) (e.g. {example}), so a star's true group is ambiguous (ids written as floats, e.g. "
                "6.0e+18, collide this way): give a truth table with one row per source_id, ids as integers"
            )
        lookup = truth.set_index("source_id")[truth_column]
        missing = ~predictions["source_id"].isin(lookup.index)
        if missing.any():
            raise CatalogError(
                f"{int(missing.sum())} predicted source_id(s) are not in the truth table "
                f"(e.g. {predictions.loc[missing, 'source_id'].iloc[0]}): evaluate against the same catalogue"
            )
        return lookup.loc[predictions["source_id"]].to_numpy()
    if len(truth) != len(predictions):
        raise CatalogError(
            f"the truth table has {len(truth)} rows and the predictions {len(predictions)}, and no "
            "source_id to match them: evaluate against the catalogue that was predicted"
        )
    return truth[truth_column].to_numpy()


def evaluate_command(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    """``grasp-dl evaluate``: metrics of a predictions table against the truth, saved as JSON.

    With member probabilities and members in the truth, the reliability diagram is saved too
    (``<stem>.metrics.reliability.png``).

    Parameters
    ----------
    cfg : DictConfig
        A composed ``evaluate`` config (``conf/evaluate.yaml``): ``predictions``, ``truth``,
        ``truth_column``, ``truth_member_label`` and ``output``.

    Returns
    -------
    tuple
        The metrics and the JSON file they were saved in (``output``, by default
        ``<predictions stem>.metrics.json``).

    Raises
    ------
    CatalogError
        When a table cannot be read or the truth does not match the predictions.
    """
    from grasp_dl.metrics import evaluate_clustering

    output = Path(cfg.output) if cfg.get("output") else metrics_path(cfg.predictions)
    refuse_overwriting_inputs(
        {"output": output, "the reliability diagram": reliability_path(output)},
        {"predictions": cfg.predictions, "truth": cfg.truth},
    )
    check_output_file(output)
    predictions = read_catalog(cfg.predictions, required=["label"])
    truth = read_catalog(cfg.truth)
    true_labels = align_truth(predictions, truth, cfg.truth_column)
    member_prob = predictions["member_prob"].to_numpy(float) if "member_prob" in predictions else None
    if member_prob is not None:
        member_prob = np.nan_to_num(member_prob, nan=0.0)
    metrics = evaluate_clustering(
        true_labels,
        predictions["label"].to_numpy(),
        member_label=cfg.truth_member_label,
        member_prob=member_prob,
    )
    outputs = {"output": output}
    if "brier" in metrics:
        outputs["the reliability diagram"] = reliability_path(output)
    with StagedOutputs(outputs) as staged:
        staged.temp("output").write_text(strict_json(metrics))
        if "brier" in metrics:
            scored = predictions["label"].to_numpy() >= 0
            is_member = np.asarray(true_labels).astype(str) == str(cfg.truth_member_label)
            write_reliability_diagram(member_prob[scored], is_member[scored], staged.temp("the reliability diagram"))
        staged.commit()
    return metrics, output


def write_reliability_diagram(member_prob: np.ndarray, is_member: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Save the reliability diagram of member probabilities and say where.

    Parameters
    ----------
    member_prob : ndarray
        Member probability per scored star.
    is_member : ndarray of bool
        Whether each star is a true member.
    path : str or PathLike
        The PNG to write.

    Returns
    -------
    Path
        ``path``.
    """
    from grasp_dl.figures.plotting import reliability_diagram

    path = Path(path)
    reliability_diagram(member_prob, is_member).savefig(path, dpi=120)
    log.info("reliability diagram: %s", path)
    return path
