"""Per-epoch training history of a run directory, read back from its CSV or TensorBoard logs."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from grasp_dl.runtime.run_dir import AUTOENCODER_PHASE, CLUSTERING_PHASE, RunDir

#: Per phase: the CSV log versions to try (the command line's, the facade's), then the
#: TensorBoard sub-folder (None: the final phase's folder).
PHASE_LOGS: dict[str, tuple[tuple[str, ...], str | None]] = {
    AUTOENCODER_PHASE: ((AUTOENCODER_PHASE,), AUTOENCODER_PHASE),
    CLUSTERING_PHASE: (("", CLUSTERING_PHASE), None),
}


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=["phase", "epoch"])


def history_from_csv(path: str | os.PathLike[str], phase: str) -> pd.DataFrame:
    """One row per epoch (the last value of each metric) from a Lightning CSVLogger ``metrics.csv``.

    Parameters
    ----------
    path : str or PathLike
        The ``metrics.csv`` file.
    phase : str
        The phase name written in the ``phase`` column.

    Returns
    -------
    DataFrame
        Columns ``phase``, ``epoch`` and one per metric; empty (with those two columns) when the
        file is missing or holds no epoch.
    """
    path = Path(path)
    if not path.is_file():
        return _empty()
    frame = pd.read_csv(path).drop(columns=["step"], errors="ignore")
    if "epoch" not in frame.columns or frame.empty:
        return _empty()
    # Epoch-level metrics carry their epoch; step-level ones (the learning rate) may not.
    frame = frame.dropna(subset=["epoch"]).groupby("epoch", as_index=False).last().dropna(axis=1, how="all")
    frame["epoch"] = frame["epoch"].astype(int)
    frame.insert(0, "phase", phase)
    return frame


def phase_history(run_dir: RunDir, phase: str) -> pd.DataFrame:
    """One phase's history from the first CSV log found, else from its TensorBoard events.

    Parameters
    ----------
    run_dir : RunDir
        The run's layout.
    phase : str
        ``"autoencoder"`` or ``"clustering"``.

    Returns
    -------
    DataFrame
        As :func:`history_from_csv`; empty when neither log exists.
    """
    from grasp_dl.figures.tensorboard import read_scalars

    csv_versions, tensorboard_phase = PHASE_LOGS[phase]
    for version in csv_versions:
        frame = history_from_csv(run_dir.csv_metrics(version), phase)
        if not frame.empty:
            return frame
    return read_scalars(run_dir.tensorboard(tensorboard_phase), phase)


def run_history(run_dir: str | os.PathLike[str] | RunDir) -> pd.DataFrame | None:
    """Per-epoch history of a ``grasp-dl train`` run directory from its CSV or TensorBoard logs.

    Parameters
    ----------
    run_dir : str, PathLike or RunDir
        The run directory (default layout) or its layout.

    Returns
    -------
    DataFrame or None
        The autoencoder's rows then the clustering phase's; None when neither phase logged.
    """
    layout = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    frames = [phase_history(layout, phase) for phase in PHASE_LOGS]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else None
