"""What a ``grasp-dl`` command prints: its own lines once, without the frameworks' chatter.

By default a command silences the few Lightning and PyTorch messages that say nothing to its user
(each matched by its own text, so any other warning still shows), keeps Lightning's informational
lines (``GPU available: ...``, the litlogger tip) out of the console, and prints every log line
once. ``grasp-dl -v COMMAND`` or the override ``hydra.verbose=...`` brings them all back.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

VERBOSE_FLAGS = ("-v", "--verbose")

# (message regex, category) of warnings that a grasp-dl run raises by design and that ask nothing of
# its user. Matched from the start of the message text, so a similar but different warning still shows.
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # the EM mixture phases (model=xd, auto) take no optimiser: the fit runs by design without one
    (r"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer", UserWarning),
    # raised inside Lightning's own pytree helper by newer PyTorch; nothing for a user to change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)

# Lightning's informational loggers: accelerator availability, the litlogger tip, "fit stopped" lines.
# Their warnings (WARNING and above) still show.
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def split_verbose(args: Sequence[str]) -> tuple[bool, list[str]]:
    """Take ``-v`` / ``--verbose`` out of a command line (Hydra does not know them).

    Parameters
    ----------
    args : sequence of str
        The command line after the program name.

    Returns
    -------
    verbose : bool
        Whether one of the flags was given.
    rest : list of str
        The command line without them.
    """
    rest = [arg for arg in args if arg not in VERBOSE_FLAGS]
    return len(rest) != len(args), rest


@contextmanager
def quiet_frameworks(verbose: bool) -> Iterator[None]:
    """Within the block, silence the messages of :data:`QUIET_WARNINGS` and Lightning's info lines.

    Parameters
    ----------
    verbose : bool
        True leaves everything as it is (``-v``, ``hydra.verbose``).
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIGHTNING_INFO_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def log_lines_once() -> None:
    """Stop Lightning printing each of its log lines a second time.

    ``lightning`` gives its logger a console handler of its own while the record also reaches the
    root logger's handlers (Hydra's ``job_logging``, ``conf/hydra/``). Call after Lightning is
    imported; where the root logger has handlers, the records go to them alone (the console and
    the run's log file).
    """
    if not logging.getLogger().handlers:
        return
    logger = logging.getLogger("lightning")
    if not logger.propagate:
        return
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)
