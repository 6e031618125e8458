"""The layout of a run directory and of the files written beside predictions, in one place.

A ``grasp-dl train`` run directory (``paths.output_dir``) holds::

    checkpoints/last.ckpt, best.ckpt       the final phase (callbacks.model_checkpoint.dirpath)
    checkpoints/autoencoder/last.ckpt      the autoencoder phase of a clustering model
    tensorboard/, tensorboard/autoencoder/ TensorBoard logs of each phase
    csv/<version>/metrics.csv              CSV logs (the facade's clustering phase: csv/clustering)

and ``grasp-dl predict`` writes ``<stem>.summary.json`` beside ``<stem>.parquet``, ``grasp-dl
evaluate`` ``<stem>.metrics.json`` and ``<stem>.metrics.reliability.png``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Folder of the checkpoints below the run directory (the default ``model_checkpoint.dirpath``).
CHECKPOINTS = "checkpoints"
#: The checkpoint Lightning's ModelCheckpoint writes last (``save_last: true``).
LAST_CHECKPOINT = "last.ckpt"
#: The earlier phase of a clustering model: its checkpoint and log sub-folder.
AUTOENCODER_PHASE = "autoencoder"
#: The facade's CSV log version of the clustering phase.
CLUSTERING_PHASE = "clustering"
#: Folders of the TensorBoard and CSV loggers below the run directory.
TENSORBOARD = "tensorboard"
CSV = "csv"
#: Suffixes of the files written beside a predictions table.
SUMMARY_SUFFIX = ".summary.json"
METRICS_SUFFIX = ".metrics.json"
RELIABILITY_SUFFIX = ".reliability.png"


@dataclass(frozen=True)
class RunDir:
    """Where one training run keeps its checkpoints and logs.

    Parameters
    ----------
    root : Path
        The run directory (``paths.output_dir``).
    checkpoints : Path
        The final phase's checkpoint folder (``callbacks.model_checkpoint.dirpath``); the
        autoencoder phase writes into its ``autoencoder`` sub-folder.
    """

    root: Path
    checkpoints: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> RunDir:
        """The default layout below ``root`` (checkpoints in ``root/checkpoints``).

        Parameters
        ----------
        root : str or PathLike
            The run directory.

        Returns
        -------
        RunDir
            Its layout.
        """
        root = Path(root)
        return cls(root, root / CHECKPOINTS)

    @classmethod
    def from_config(cls, cfg: Any) -> RunDir:
        """The layout a training config writes: ``paths.output_dir`` and the checkpoint callback's ``dirpath``.

        Parameters
        ----------
        cfg : DictConfig
            A composed ``train`` config.

        Returns
        -------
        RunDir
            Its layout; ``root/checkpoints`` when no checkpoint callback sets a ``dirpath``.
        """
        root = Path(cfg.paths.output_dir)
        callback = (cfg.get("callbacks") or {}).get("model_checkpoint")
        dirpath = callback.get("dirpath") if callback else None
        return cls(root, Path(dirpath) if dirpath else root / CHECKPOINTS)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike[str]) -> RunDir | None:
        """The run directory a checkpoint was written into, when it sits in the default layout.

        Parameters
        ----------
        checkpoint : str or PathLike
            A checkpoint file, e.g. ``RUN/checkpoints/last.ckpt``.

        Returns
        -------
        RunDir or None
            ``RunDir.at(RUN)``, or None for a checkpoint outside a ``checkpoints`` folder.
        """
        folder = Path(checkpoint).parent
        return cls.at(folder.parent) if folder.name == CHECKPOINTS else None

    def phase_checkpoints(self, phase: str | None = None) -> Path:
        """The checkpoint folder of ``phase`` (None or the final phase: :attr:`checkpoints`).

        Parameters
        ----------
        phase : str, optional
            An earlier phase, e.g. ``"autoencoder"``.

        Returns
        -------
        Path
            The folder.
        """
        return self.checkpoints / phase if phase else self.checkpoints

    def last_checkpoint(self, phase: str | None = None) -> Path:
        """``last.ckpt`` of ``phase`` (None: the final phase).

        Parameters
        ----------
        phase : str, optional
            An earlier phase, e.g. ``"autoencoder"``.

        Returns
        -------
        Path
            The checkpoint path (it may not exist).
        """
        return self.phase_checkpoints(phase) / LAST_CHECKPOINT

    def tensorboard(self, phase: str | None = None) -> Path:
        """The TensorBoard folder of ``phase`` (None: the final phase, the folder ``--logdir`` takes).

        Parameters
        ----------
        phase : str, optional
            An earlier phase, e.g. ``"autoencoder"``.

        Returns
        -------
        Path
            The folder.
        """
        return self.root / TENSORBOARD / (phase or "")

    def csv_metrics(self, version: str) -> Path:
        """The ``metrics.csv`` of a CSV logger version (``""`` for the command line's final phase).

        Parameters
        ----------
        version : str
            The logger version: a phase name or ``""``.

        Returns
        -------
        Path
            The file (it may not exist).
        """
        return self.root / CSV / version / "metrics.csv"


def phase_dirpath(dirpath: str, phase: str) -> str:
    """The checkpoint ``dirpath`` of an earlier ``phase`` given the final phase's.

    Parameters
    ----------
    dirpath : str
        The final phase's ``model_checkpoint.dirpath``.
    phase : str
        The earlier phase, e.g. ``"autoencoder"``.

    Returns
    -------
    str
        ``dirpath/phase``.
    """
    return f"{dirpath}/{phase}"


def summary_path(output: str | os.PathLike[str]) -> Path:
    """Where the cluster summary of a predictions table goes: ``<stem>.summary.json`` beside it.

    Parameters
    ----------
    output : str or PathLike
        The predictions table, e.g. ``members.parquet``.

    Returns
    -------
    Path
        e.g. ``members.summary.json``.
    """
    output = Path(output)
    return output.with_name(output.stem + SUMMARY_SUFFIX)


def figure_path(output: str | os.PathLike[str]) -> Path:
    """Where ``grasp-dl predict`` draws its diagnostic figure: ``<stem>.png`` beside the predictions table.

    Parameters
    ----------
    output : str or PathLike
        The predictions table, e.g. ``members.parquet``.

    Returns
    -------
    Path
        e.g. ``members.png``.
    """
    output = Path(output)
    return output.with_name(output.stem + ".png")


def metrics_path(predictions: str | os.PathLike[str]) -> Path:
    """Where ``grasp-dl evaluate`` saves the metrics of a predictions table: ``<stem>.metrics.json`` beside it.

    Parameters
    ----------
    predictions : str or PathLike
        The predictions table, e.g. ``members.parquet``.

    Returns
    -------
    Path
        e.g. ``members.metrics.json``.
    """
    predictions = Path(predictions)
    return predictions.with_name(predictions.stem + METRICS_SUFFIX)


def reliability_path(metrics: str | os.PathLike[str]) -> Path:
    """Where the reliability diagram goes beside a metrics file (``x.metrics.json`` -> ``x.metrics.reliability.png``).

    Parameters
    ----------
    metrics : str or PathLike
        The metrics JSON file.

    Returns
    -------
    Path
        The PNG path.
    """
    return Path(metrics).with_suffix(RELIABILITY_SUFFIX)
