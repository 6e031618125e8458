"""Python's cyclic garbage collector in a process that runs one command and ends (``grasp-dl ...``).

Importing torch and Lightning creates hundreds of thousands of long-lived objects that the
collector would walk again and again, and once more at exit; none is ever garbage. So the
command line

1. pauses the collector until the command's modules are imported
   (:func:`pause_collector`, :func:`heavy_imports`),
2. then freezes what exists (``gc.freeze``: still freed by reference counting, never walked
   again) and turns the collector back on for the command's own garbage,
3. and freezes everything again before the interpreter exits (:func:`freeze_for_exit`).

Only the console entry point does this (``grasp_dl.cli.main`` without ``argv``): an in-process
call (tests, notebooks) keeps its collector as it was. Nothing here changes what a command
computes; the time it saves is in ``docs/src/speed.md``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_paused = False


def pause_collector() -> None:
    """Turn the cyclic collector off until :func:`heavy_imports` or :func:`resume_collector` (if it was on)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_collector() -> None:
    """Turn the collector back on if :func:`pause_collector` turned it off (idempotent)."""
    global _paused
    if _paused:
        gc.enable()
        _paused = False


def collector_paused() -> bool:
    """Whether :func:`pause_collector` has the collector off now.

    Returns
    -------
    bool
    """
    return _paused


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import a command's modules; then, if the collector was paused, freeze what exists and resume it.

    Does nothing special when the collector was not paused (an in-process call).

    Yields
    ------
    None
    """
    try:
        yield
    finally:
        if _paused:
            gc.freeze()
            resume_collector()


def freeze_for_exit() -> None:
    """Freeze every object, so the interpreter's teardown does not walk them (call just before exit)."""
    gc.freeze()
