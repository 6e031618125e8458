"""Training-step values logged as per-epoch means without a ``self.log`` call on every step."""

from __future__ import annotations

from typing import Any

from torch import Tensor


class EpochMeanLogging:
    """Mixin for LightningModules: sum a step's values on the device, log their means once per epoch.

    ``self.log(..., on_epoch=True)`` in every ``training_step`` goes through Lightning's result
    collection each time, and with three to five values a step that costs as much as a whole
    training step of the default network at batch 256 on a CPU (``scripts/benchmark_speed.py``).
    Here a step adds its detached values, weighted by the batch size, to running sums on the
    device (no host synchronisation), and ``on_train_epoch_end`` logs the per-star means through
    ``self.log`` (averaged over DDP ranks, whose shards are of equal size), before the
    checkpoint and early-stopping callbacks read them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_sums: dict[str, Tensor] = {}
        self._epoch_stars: dict[str, int] = {}
        self._epoch_prog_bar: set[str] = set()
        self._last_epoch_means: dict[str, Tensor] = {}

    def log_epoch_mean(self, name: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
        """Add one step's value to the epoch's mean.

        Parameters
        ----------
        name : str
            The metric's name, e.g. ``train/loss``.
        value : Tensor
            A scalar averaged over ``batch_size`` stars.
        batch_size : int
            Stars in the step.
        prog_bar : bool
            Show the mean in the progress bar.
        """
        weighted = value.detach().float() * batch_size
        if name in self._epoch_sums:
            self._epoch_sums[name].add_(weighted)
            self._epoch_stars[name] += batch_size
        else:
            self._epoch_sums[name] = weighted
            self._epoch_stars[name] = batch_size
        if prog_bar:
            self._epoch_prog_bar.add(name)

    def epoch_means(self) -> dict[str, Tensor]:
        """The means logged at the end of the last training epoch (this rank's, before DDP averaging).

        Returns
        -------
        dict of str to Tensor
        """
        return dict(self._last_epoch_means)

    def on_train_epoch_end(self) -> None:
        """Log the means of this epoch's training-step values and start the next epoch afresh,
        then run the next class's hook (a block-training scheduler step reads these means)."""
        self._last_epoch_means = {name: total / self._epoch_stars[name] for name, total in self._epoch_sums.items()}
        for name, mean in self._last_epoch_means.items():
            self.log(name, mean, prog_bar=name in self._epoch_prog_bar, sync_dist=True)  # type: ignore[attr-defined]
        self._epoch_sums.clear()
        self._epoch_stars.clear()
        super().on_train_epoch_end()  # type: ignore[misc]
