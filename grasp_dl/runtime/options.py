"""Checks of command options that must hold before any data is read or any epoch runs.

Each check raises :class:`~grasp_dl.runtime.errors.ConfigError` with one line naming the option, the
value given and the fix, so that ``grasp-dl`` prints it as ``grasp-dl: error: ...``.
"""

from __future__ import annotations

from typing import Any

from grasp_dl.runtime.errors import ConfigError

__all__ = ["check_predict_options", "check_train_options", "positive_int"]


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
    model = cfg.get("model") or {}
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
