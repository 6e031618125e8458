"""Checks of command options that must hold before any data is read or any epoch runs.

Each check raises :class:`~grasp_dl.runtime.errors.ConfigError` with one line naming the option, the
value given and the fix, so that ``grasp-dl`` prints it as ``grasp-dl: error: ...``.
"""

from __future__ import annotations

import math
from typing import Any

from grasp_dl.runtime.errors import ConfigError

__all__ = [
    "check_center",
    "check_learning_rates",
    "check_predict_options",
    "check_seed",
    "check_train_options",
    "positive_int",
]


def positive_int(value: Any, option: str, *, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum``, or a one-line error naming ``option``.

    Parameters
    ----------
    value
        What the user gave (an int, or text from the command line).
    option
        The option's name in messages, e.g. ``chunk_size``.
    minimum
        The smallest value allowed.

    Returns
    -------
    int
        The value.

    Raises
    ------
    ConfigError
        When ``value`` is not a whole number (booleans and fractions included) or is below ``minimum``.
    """
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
    if number is None or number < minimum:
        raise ConfigError(f"{option}={value!r} is not valid: give a whole number of at least {minimum}")
    return number


def check_train_options(cfg: Any) -> None:
    """Options of ``grasp-dl train`` that would otherwise fail late (after a phase) or silently.

    Parameters
    ----------
    cfg
        The composed train config.

    Raises
    ------
    ConfigError
        ``trainer.max_epochs`` 0 or below (-1, Lightning's "no limit", and null are allowed),
        ``model.pretrain_epochs`` below 1 when no ``model.pretrained_ckpt`` is given, or
        ``model.n_clusters`` not 'auto', not null (a model that chooses it) and not a whole number of at least 2.
    """
    max_epochs = cfg.trainer.get("max_epochs") if "trainer" in cfg else None
    if max_epochs is not None and max_epochs != -1:
        positive_int(max_epochs, "trainer.max_epochs")
    check_seed(cfg.get("seed"))
    data = cfg.get("data") or {}
    check_center(data.get("center") if hasattr(data, "get") else None)
    model = cfg.get("model") or {}
    check_learning_rates(model)
    if "pretrain" in model and not model.get("pretrained_ckpt"):
        positive_int(model.get("pretrain_epochs"), "model.pretrain_epochs")
    if model.get("n_clusters") not in (None, "auto"):
        k = model.get("n_clusters")
        try:
            positive_int(k, "model.n_clusters", minimum=2)
        except ConfigError:
            raise ConfigError(
                f"model.n_clusters={k!r} is not valid: give at least 2 groups (the cluster and the field), or auto"
            ) from None


def check_predict_options(cfg: Any) -> int:
    """Options of ``grasp-dl predict`` checked before the checkpoint is loaded; returns ``chunk_size``.

    Raises
    ------
    ConfigError
        When ``chunk_size`` is not a positive whole number.
    """
    return positive_int(cfg.get("chunk_size"), "chunk_size")


def check_center(center: Any, option: str = "data.center") -> Any:
    """``center`` as given, once checked: None, 'auto', or exactly two finite numbers (ra, dec in degrees).

    Raises
    ------
    ConfigError
        For a list of another length (a third value would otherwise be dropped silently), values
        that are not numbers, or a dec beyond +-90 degrees.
    """
    if center is None or isinstance(center, str):
        if isinstance(center, str) and center != "auto":
            raise ConfigError(f"{option}={center!r} is not valid: give auto, [ra, dec] in degrees, or null")
        return center
    try:
        values = [float(v) for v in center]
    except (TypeError, ValueError):
        raise ConfigError(f"{option}={center!r} is not valid: give [ra, dec] in degrees, auto, or null") from None
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or abs(values[1]) > 90:
        raise ConfigError(
            f"{option}={list(center)} is not valid: give exactly two finite numbers [ra, dec] in degrees "
            "(dec within +-90), auto, or null"
        )
    return values


def check_seed(seed: Any) -> None:
    """``seed`` must be null or a whole number numpy and torch accept (0 to 2**32 - 1).

    Raises
    ------
    ConfigError
        Otherwise, naming the range.
    """
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is not valid: give a whole number from 0 to {2**32 - 1}, or null")


def check_learning_rates(node: Any, prefix: str = "model") -> None:
    """Every ``lr`` below ``node`` (the model config, its pre-training phase and optimisers) must be a positive finite number.

    Raises
    ------
    ConfigError
        Naming the option, for a learning rate that is NaN, infinite, zero, negative or not a number.
    """
    if not hasattr(node, "items"):
        return
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if key == "lr" and value is not None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
                raise ConfigError(f"{name}={value!r} is not valid: give a positive finite learning rate, e.g. 1e-3")
        elif hasattr(value, "items"):
            check_learning_rates(value, name)
