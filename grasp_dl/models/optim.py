"""Optimiser and scheduler from plain ``_partial_`` configs, kept plain so checkpoints load safely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf
from torch import nn

DEFAULT_OPTIMIZER: dict[str, Any] = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def plain_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A DictConfig or mapping as a plain dict.

    Parameters
    ----------
    config : mapping or None
        A config node or mapping.

    Returns
    -------
    dict or None
        None stays None.
    """
    if config is None:
        return None
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def _instantiate_partial(config: Mapping[str, Any]) -> Any:
    """The callable a ``_partial_`` config describes (``_partial_`` is implied if left out)."""
    return hydra.utils.instantiate({**config, "_partial_": True})


def build_optimizers(
    params: Iterable[nn.Parameter],
    optimizer: Mapping[str, Any] | None,
    scheduler: Mapping[str, Any] | None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimiser, plus the scheduler when one is set.

    Frozen parameters (``requires_grad=False``, such as DEC's unused decoder) are left out.
    The scheduler steps once per epoch; the modules step it themselves (they optimise manually,
    :class:`~grasp_dl.engine.block_training.BlockTraining`), a plateau scheduler on the metric
    named by the module's ``scheduler_monitor``.

    Parameters
    ----------
    params : iterable of Parameter
        The module's parameters.
    optimizer, scheduler : mapping or None
        ``_partial_`` configs (``optimizer`` None: Adam, lr 1e-3).

    Returns
    -------
    torch.optim.Optimizer or dict
        The optimiser, or ``{"optimizer", "lr_scheduler"}`` with an epoch-interval scheduler.
    """
    trainable = [p for p in params if p.requires_grad]
    opt = _instantiate_partial(optimizer or DEFAULT_OPTIMIZER)(trainable)
    if not scheduler:
        return opt
    sched = _instantiate_partial(scheduler)(opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
