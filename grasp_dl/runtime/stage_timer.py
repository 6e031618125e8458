"""Where a run's wall time goes: named phases, marked as they start, off unless asked for.

A phase is marked when it begins (:func:`mark`) and lasts until the next mark, so the phases of
one process tile its time and add up to the wall time. While timing is off a mark costs one
environment lookup; with ``GRASP_DL_STAGE_TIMES`` naming a file, each mark appends one JSON line
``{"phase": ..., "time": <epoch seconds>, "pid": ...}`` to it.

``scripts/time_to_first_result.py`` sets the variable, runs ``grasp-dl train`` and turns the
marks into a breakdown (:func:`phase_durations`; ``docs/src/speed.md``). The pipeline marks its
own steps, :class:`grasp_dl.jobs.callbacks.StageTimerCallback` Lightning's loop.

This module imports nothing heavy: ``grasp_dl`` imports it first, so its first mark is the
moment the package started importing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: The environment variable that turns timing on: the JSON-lines file the marks go to.
ENV_VAR = "GRASP_DL_STAGE_TIMES"
#: The phase that starts when ``grasp_dl`` begins importing (marked by the package itself).
IMPORT_PHASE = "imports: grasp_dl.cli (numpy, pandas, Hydra)"
#: The phase before the first mark of a timed process: interpreter start-up (added by the caller).
STARTUP_PHASE = "Python start-up"

_IMPORTED_AT = time.time()


def timing_file() -> Path | None:
    """The file marks are appended to, or None while timing is off.

    Returns
    -------
    Path or None
        The value of ``GRASP_DL_STAGE_TIMES`` when it is set and not empty.
    """
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def mark(phase: str, when: float | None = None) -> None:
    """Say that ``phase`` starts now (it lasts until the next mark); nothing happens while timing is off.

    Parameters
    ----------
    phase : str
        A short description of what the run does from now on, e.g. ``"read and prepare the catalogue"``.
    when : float, optional
        The start in epoch seconds (``time.time()``); now by default.
    """
    path = timing_file()
    if path is None:
        return
    record = {"phase": str(phase), "time": time.time() if when is None else float(when), "pid": os.getpid()}
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def read_marks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The marks of a timing file, in time order.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`mark`.

    Returns
    -------
    list of dict
        ``{"phase", "time", "pid"}`` records sorted by time (an absent file gives none).
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(records, key=lambda record: record["time"])


def phase_durations(marks: Iterable[Mapping[str, Any]], start: float, end: float) -> dict[str, float]:
    """Seconds spent in each phase between ``start`` and ``end``, phases in order of first appearance.

    The time before the first mark is :data:`STARTUP_PHASE`; each mark's phase lasts until the next
    mark, the last one until ``end``; a phase marked several times (validation, epochs) adds up.
    So the durations sum to ``end - start``.

    Parameters
    ----------
    marks : iterable of mapping
        Records with ``phase`` and ``time`` (as :func:`read_marks` returns them).
    start : float
        When the process was started (epoch seconds).
    end : float
        When it ended (epoch seconds).

    Returns
    -------
    dict of str to float
        Phase -> seconds.

    Raises
    ------
    ValueError
        If ``end`` is before ``start`` or a mark lies outside ``[start, end]``.
    """
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    ordered = sorted(marks, key=lambda record: record["time"])
    durations: dict[str, float] = {}
    phase, since = STARTUP_PHASE, float(start)
    for record in ordered:
        when = float(record["time"])
        if not start <= when <= end:
            raise ValueError(f"mark {record['phase']!r} at {when} lies outside the run [{start}, {end}]")
        durations[phase] = durations.get(phase, 0.0) + when - since
        phase, since = str(record["phase"]), when
    durations[phase] = durations.get(phase, 0.0) + end - since
    return durations


def mark_package_import() -> None:
    """Mark :data:`IMPORT_PHASE` at the moment this module was imported (``grasp_dl`` calls it first)."""
    mark(IMPORT_PHASE, when=_IMPORTED_AT)
