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
from grasp_dl.models.graph_step import GraphStep, graph_step_for

#: Hooks Lightning runs around every backward pass and optimiser step of manual optimisation.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def direct_steps_allowed(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether ``loss.backward()`` and the plain optimiser step do all that Lightning's would.

    True on one device in full or bf16 precision (no loss scaling) when no callback and not the
    module override a hook of the step and the optimiser keeps Lightning's step counters; then
    Lightning's backward and step would only call empty hooks, which cost about 0.4 ms a step on
    a CPU (a tenth of a step of the default network at batch 256; ``scripts/benchmark_speed.py``).
    """
    plugin = trainer.precision_plugin
    plain_precision = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
    hooks_used = any(is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in STEP_HOOKS)
    module_hooks = (*STEP_HOOKS, "backward", "optimizer_step", "optimizer_zero_grad")
    hooks_used = hooks_used or any(is_overridden(hook, module, L.LightningModule) for hook in module_hooks)
    optimizers = trainer.strategy._lightning_optimizers
    counters = all(hasattr(opt, "_on_before_step") and hasattr(opt, "_on_after_step") for opt in optimizers)
    return type(trainer.strategy) is SingleDeviceStrategy and plain_precision and not hooks_used and counters


class BlockTraining:
    """Mixin for LightningModules: each ``training_step`` gets a block of mini-batches and takes
    one optimiser step per mini-batch (Lightning's manual optimisation).

    Lightning's automatic loop costs about 1.5 ms a step on a CPU (hooks, closures, progress
    tracking), a third of a step of the default network at batch 256:
    ``scripts/benchmark_speed.py`` measured the product path at 0.77 of a bare PyTorch loop.
    Taking the steps of a block inside one ``training_step`` pays that cost once per block;
    the mini-batches, their order and the optimiser steps are those of the plain loop, and
    ``global_step`` still counts optimiser steps. Backward and step go through Lightning
    (``manual_backward``, the wrapped optimiser), so loss scaling and DDP work as before, except
    where :func:`direct_steps_allowed` shows that Lightning would only call empty hooks: then
    the step is ``loss.backward()`` and the optimiser's own ``step`` between Lightning's step
    counters.

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
        self._direct_steps = False
        # CUDA-graph steps (grasp_dl/models/graph_step.py), decided at the start of each fit.
        self._graph_step: GraphStep | None = None

    def on_train_start(self) -> None:
        """Decide once per fit whether steps may bypass Lightning's (then empty) hooks."""
        super().on_train_start()  # type: ignore[misc]
        self._direct_steps = direct_steps_allowed(self.trainer, self)  # type: ignore[attr-defined, arg-type]
        # --- graphs (grasp_dl/models/graph_step.py): None unless the `graphs` setting captures steps
        self._graph_step = graph_step_for(self, self.trainer)  # type: ignore[arg-type]

    def batch_loss(self, batch: Batch) -> Tensor:
        """The training loss of one mini-batch (log its terms with ``log_epoch_mean``)."""
        raise NotImplementedError

    def before_batch(self, batch: Batch) -> bool:
        """Called before each mini-batch's step; return False to end the block (and skip it)."""
        return True

    def training_step(self, block: list[Batch] | Batch, batch_idx: int) -> Tensor | None:
        """One optimiser step per mini-batch of ``block``; returns their star-weighted mean loss."""
        batches = block if is_block(block) else [block]
        optimizer = self.optimizers()  # type: ignore[attr-defined]
        if self._graph_step is not None:  # --- graphs: captured steps (grasp_dl/models/graph_step.py)
            return self._graph_step.run_block(batches, optimizer)
        total, stars = None, 0
        for batch in batches:
            if not self.before_batch(batch):
                break
            loss = self.batch_loss(batch)
            optimizer.zero_grad()
            if self._direct_steps:
                loss.backward()
                optimizer._on_before_step()
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                self.manual_backward(loss)  # type: ignore[attr-defined]
                optimizer.step()
            weighted = loss.detach() * len(batch[0])
            total = weighted if total is None else total + weighted
            stars += len(batch[0])
        return None if total is None else total / stars

    def on_train_epoch_end(self) -> None:
        """Log the epoch's means (EpochMeanLogging), then step the epoch-interval schedulers."""
        super().on_train_epoch_end()  # type: ignore[misc]
        self.step_epoch_schedulers()

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
