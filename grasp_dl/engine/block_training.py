"""One Lightning training step, several optimiser steps: the framework's per-step cost shared."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor

from grasp_dl.data.loader import Batch, is_block

#: Hooks Lightning's ``manual_backward`` runs around every backward pass.
BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")


def plain_backward_allowed(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether ``loss.backward()`` does all that Lightning's ``manual_backward`` would.

    True on one device in full or bf16 precision (no loss scaling) when neither a callback nor
    the module overrides a hook of the backward pass: then ``manual_backward`` would only call
    empty hooks, which cost about 0.3 ms a step on a CPU (``scripts/benchmark_speed.py``).
    The optimiser step always goes through Lightning's optimiser, which counts it.

    Parameters
    ----------
    trainer : lightning.Trainer
        The trainer running the fit.
    module : lightning.LightningModule
        The module being trained.

    Returns
    -------
    bool
        Whether the plain backward pass may replace ``manual_backward``.
    """
    plugin = trainer.precision_plugin
    plain_precision = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
    hooks_used = any(
        is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in BACKWARD_HOOKS
    )
    hooks_used = hooks_used or any(
        is_overridden(hook, module, L.LightningModule) for hook in (*BACKWARD_HOOKS, "backward")
    )
    return type(trainer.strategy) is SingleDeviceStrategy and plain_precision and not hooks_used


class BlockTraining:
    """Mixin for LightningModules: each ``training_step`` gets a block of mini-batches and takes
    one optimiser step per mini-batch (Lightning's manual optimisation).

    Lightning's automatic loop costs about 1.5 ms a step on a CPU (hooks, closures, progress
    tracking), a third of a step of the default network at batch 256:
    ``scripts/benchmark_speed.py`` measured the product path at 0.77 of a bare PyTorch loop.
    Taking the steps of a block inside one ``training_step`` pays that cost once per block;
    the mini-batches, their order and the optimiser steps are those of the plain loop.

    Only public Lightning API: every optimiser step goes through the ``LightningOptimizer``'s
    ``step()``, so Lightning counts it and ``global_step`` (hence ``max_steps``, checkpoints and
    DEC's ``update_interval``) counts optimiser steps. The backward pass is ``manual_backward``
    (loss scaling, DDP, backward hooks) except where :func:`plain_backward_allowed` shows that
    it would only call empty hooks: then it is ``loss.backward()``. A block ends early when
    ``global_step`` reaches ``trainer.max_steps``, so ``max_steps`` is exact.

    A module implements :meth:`batch_loss` (the loss of one mini-batch) and may override
    :meth:`before_batch` (run before each step; returning False ends the block). Epoch-interval
    learning-rate schedulers are stepped at the end of each training epoch, as Lightning does
    in automatic optimisation; a ReduceLROnPlateau gets the metric ``scheduler_monitor``.
    """

    #: The metric a ReduceLROnPlateau scheduler watches.
    scheduler_monitor = "train/loss"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self._plain_backward = False

    def on_train_start(self) -> None:
        """Decide once per fit whether the backward pass may bypass Lightning's (then empty) hooks."""
        super().on_train_start()  # type: ignore[misc]
        self._plain_backward = plain_backward_allowed(self.trainer, self)  # type: ignore[attr-defined, arg-type]

    def batch_loss(self, batch: Batch) -> Tensor:
        """The training loss of one mini-batch (log its terms with ``log_epoch_mean``)."""
        raise NotImplementedError

    def before_batch(self, batch: Batch) -> bool:
        """Called before each mini-batch's step; return False to end the block (and skip it)."""
        return True

    def training_step(self, block: list[Batch] | Batch, batch_idx: int) -> Tensor | None:
        """One optimiser step per mini-batch of ``block``; returns their star-weighted mean loss.

        Parameters
        ----------
        block : list of Batch, or Batch
            The mini-batches of this training step (one mini-batch counts as a block of one).
        batch_idx : int
            The block's index in the epoch.

        Returns
        -------
        Tensor or None
            The star-weighted mean loss of the steps taken; None when none was taken.
        """
        batches = block if is_block(block) else [block]
        trainer = self.trainer  # type: ignore[attr-defined]
        if trainer.max_steps >= 0:  # end the block where max_steps ends the fit
            batches = batches[: max(trainer.max_steps - trainer.global_step, 0)]
        optimizer = self.optimizers()  # type: ignore[attr-defined]
        losses, sizes = [], []
        for batch in batches:
            if not self.before_batch(batch):
                break
            loss = self.batch_loss(batch)
            optimizer.zero_grad()
            if self._plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)  # type: ignore[attr-defined]
            optimizer.step()  # Lightning's optimiser: global_step counts it
            losses.append(loss.detach())
            sizes.append(len(batch[0]))
        if not losses:
            return None
        # one weighted mean per block, not two tensor operations per step
        weights = torch.tensor(sizes, dtype=torch.float32, device=losses[0].device)
        return torch.stack(losses).float() @ weights / sum(sizes)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's means (EpochMeanLogging) and ``step``, then step the epoch-interval schedulers."""
        super().on_train_epoch_end()  # type: ignore[misc]
        self.log_step()
        self.step_epoch_schedulers()

    def on_validation_epoch_end(self) -> None:
        """Log ``step`` with the validation metrics."""
        super().on_validation_epoch_end()  # type: ignore[misc]
        self.log_step()

    def log_step(self, on_step: bool = False) -> None:
        """Log ``step`` = optimiser steps taken, and ``epoch``, with the values written now.

        Lightning's loggers take a logged ``step`` as the x axis (without it the x axis would be
        Lightning's count of training steps, i.e. blocks); they then add no ``epoch`` of their
        own, so it is logged too (the run history maps steps to epochs with it).

        Parameters
        ----------
        on_step : bool, default False
            True from inside ``training_step`` (with other per-step values), False from an
            epoch-end hook.
        """
        if self.trainer.sanity_checking:  # type: ignore[attr-defined]
            return
        options = {"on_step": on_step, "on_epoch": not on_step, "sync_dist": not on_step}
        self.log("step", float(self.global_step), **options)  # type: ignore[attr-defined]
        self.log("epoch", float(self.current_epoch), **options)  # type: ignore[attr-defined]

    def step_epoch_schedulers(self) -> None:
        """Step every ``interval: epoch`` scheduler; plateau schedulers get their monitored metric."""
        trainer = self.trainer  # type: ignore[attr-defined]
        for config in trainer.lr_scheduler_configs:
            if config.interval != "epoch" or (trainer.current_epoch + 1) % config.frequency:
                continue
            if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                # Lightning's (DDP-averaged) values first, this rank's fresh means as a fallback.
                metrics = {**self.epoch_means(), **trainer.callback_metrics}  # type: ignore[attr-defined]
                monitor = self.scheduler_monitor
                if monitor not in metrics:
                    raise RuntimeError(
                        f"the ReduceLROnPlateau scheduler monitors {monitor!r}, which was not logged this "
                        f"epoch (logged: {', '.join(sorted(metrics)) or 'nothing'}): keep validation on "
                        "(data.val_fraction > 0) or choose another scheduler"
                    )
                config.scheduler.step(torch.as_tensor(metrics[monitor]).item())
            else:
                config.scheduler.step()
