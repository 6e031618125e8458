"""Trainer settings that Lightning counts in training steps, made to count optimiser steps.

With block training (:mod:`grasp_dl.engine.block_training`) one Lightning training step is a
block of ``data.batches_per_step`` mini-batches with one optimiser step each, and Lightning counts
blocks where its settings name steps or batches. Each such setting means what its name says:

* ``max_steps``: optimiser steps, exactly (a block ends when ``global_step`` reaches it;
  ``global_step`` counts optimiser steps).
* ``limit_train_batches``: a whole number counts mini-batches per epoch (the datamodule yields
  only that many, so Lightning's own limit, counted in blocks, never binds); 0 and 1.0 keep their
  meaning (no training, the whole epoch); another fraction is refused when blocks hold more than
  one mini-batch.
* ``log_every_n_steps``: optimiser steps, rounded up to whole blocks (logging happens at the end
  of a block); the logged metrics carry ``step`` = optimiser steps, so the loggers' x axis is
  optimiser steps.
* ``val_check_interval``: a fraction of the epoch as in Lightning; a whole number (training steps)
  is refused when blocks hold more than one mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from grasp_dl.data.loader import train_batch_limit
from grasp_dl.runtime.errors import ConfigError

__all__ = ["block_trainer_options", "check_block_settings", "train_batch_limit"]

#: What Lightning's Trainer uses when a setting is not given.
LIGHTNING_DEFAULTS = {"limit_train_batches": 1.0, "log_every_n_steps": 50, "val_check_interval": 1.0}


def _setting(settings: Mapping[str, Any], name: str) -> Any:
    value = settings.get(name)
    return LIGHTNING_DEFAULTS[name] if value is None else value


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_block_settings(settings: Mapping[str, Any], batches_per_step: int) -> None:
    """Refuse trainer settings that would count blocks rather than what their names say.

    Parameters
    ----------
    settings : Mapping
        The trainer's keyword arguments (``cfg.trainer``).
    batches_per_step : int
        Mini-batches per Lightning training step (``data.batches_per_step``).

    Raises
    ------
    ConfigError
        For a ``limit_train_batches`` fraction other than 0 and 1.0, a whole-number
        ``val_check_interval`` (both when ``batches_per_step`` > 1), or a negative
        ``log_every_n_steps``.
    """
    train_batch_limit(settings.get("limit_train_batches"), batches_per_step)
    interval = _setting(settings, "val_check_interval")
    if batches_per_step > 1 and _whole(interval):
        raise ConfigError(
            f"trainer.val_check_interval={interval} would count blocks of data.batches_per_step={batches_per_step} "
            "mini-batches: give a fraction of the epoch (e.g. 0.5), or set data.batches_per_step=1"
        )
    every = _setting(settings, "log_every_n_steps")
    if not _whole(every) or every < 0:
        raise ConfigError(f"trainer.log_every_n_steps={every!r} is not valid: give a whole number of at least 0")


def block_trainer_options(settings: Mapping[str, Any], batches_per_step: int) -> dict[str, Any]:
    """Trainer keyword arguments that replace the user's so that they count optimiser steps.

    Parameters
    ----------
    settings : Mapping
        The trainer's keyword arguments (``cfg.trainer``).
    batches_per_step : int
        Mini-batches per Lightning training step (``data.batches_per_step``).

    Returns
    -------
    dict
        ``log_every_n_steps`` in blocks: the optimiser steps asked for, rounded up to whole
        blocks (0, no logging within an epoch, stays 0).

    Raises
    ------
    ConfigError
        As :func:`check_block_settings`.
    """
    check_block_settings(settings, batches_per_step)
    every = _setting(settings, "log_every_n_steps")
    return {"log_every_n_steps": math.ceil(every / max(int(batches_per_step), 1))}
