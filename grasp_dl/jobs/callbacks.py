"""Lightning callbacks of grasp-dl: a progress bar with throughput, RNG state in checkpoints, stage timing."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from grasp_dl.data.loader import batch_stars


class StarsPerSecondProgressBar(TQDMProgressBar):
    """TQDM progress bar that shows 'Epoch i/n' and the training throughput in stars per second."""

    def __init__(self, refresh_rate: int = 10, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._epoch_start = 0.0
        self._stars = 0

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        self._epoch_start = time.perf_counter()
        self._stars = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stars += batch_stars(batch)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @property
    def stars_per_second(self) -> float:
        """Stars trained per second so far in this epoch (this process)."""
        elapsed = time.perf_counter() - self._epoch_start
        return self._stars / elapsed if elapsed > 0 and self._stars else 0.0

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        metrics = super().get_metrics(trainer, pl_module)
        if self._stars:
            metrics["stars/s"] = f"{self.stars_per_second:,.0f}"
        return metrics


class RNGStateCheckpoint(L.Callback):
    """Save the Python, NumPy and torch random states in checkpoints and restore them on resume.

    Dropout masks come from torch's global generator; without this a resumed run draws other
    masks than the run it continues, and does not end where an uninterrupted run would.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),  # noqa: NPY002 (the global state is what gets restored)
            "python": _python_state_to_plain(random.getstate()),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        np.random.set_state(_numpy_state_from_plain(states["numpy"]))  # noqa: NPY002
        random.setstate(_python_state_from_plain(states["python"]))


# Plain containers (lists, ints, tensors) so checkpoints still load with torch.load(weights_only=True).
def _numpy_state_to_plain(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class StageTimerCallback(L.Callback):
    """Mark the phases of Lightning's loop for :mod:`grasp_dl.runtime.stage_timer` (nothing while timing is off).

    ``scripts/time_to_first_result.py`` adds it with ``+callbacks.stage_timer._target_=grasp_dl.jobs.callbacks.StageTimerCallback``.
    Each phase is named after the module being fitted (``XDModule: validation``), so the phases of a
    two-phase model stay apart. Lightning runs checkpoint callbacks after the others, so the time
    from the end of validation to the end of the epoch holds the checkpoint writing.
    """

    @staticmethod
    def _mark(pl_module: L.LightningModule, phase: str) -> None:
        from grasp_dl.runtime.stage_timer import mark

        mark(f"{type(pl_module).__name__}: {phase}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._mark(pl_module, "Lightning set-up (strategy, optimisers)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module, "fit start (training catalogue)")

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module, "sanity check (validation batches)")

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module, "Lightning loop start")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module, "training epochs")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._mark(pl_module, "validation")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._mark(pl_module, "checkpoints, early stopping, epoch end")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark(pl_module, "Lightning fit end, teardown")
