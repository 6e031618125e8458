"""What grasp-dl may write, and where: the input/output policy of every command.

- An output never replaces an input of the same command (paths compared once resolved, so
  ``dir/../dir/x.csv`` and links are caught).
- An output must be a writable file path, not a directory; this is checked before any work.
- Temporary files are removed on every failure path: SIGTERM is turned into ``SystemExit`` so
  the writers' clean-up (``finally`` / ``except BaseException``) runs on it too.
- A run directory that already holds a finished run is refused unless the user says
  ``overwrite=true`` (its checkpoints are then removed first) or resumes it with ``ckpt_path``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from grasp_dl.runtime.errors import ConfigError

__all__ = [
    "check_output_file",
    "finished_run_checkpoints",
    "install_sigterm_cleanup",
    "prepare_run_dir",
    "refuse_finished_run_dir_early",
    "refuse_overwriting_inputs",
    "same_file",
    "written_checkpoint",
]

PathLike = str | os.PathLike[str]


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file (resolved paths equal, or one file through links)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def refuse_overwriting_inputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]) -> None:
    """Refuse a command whose output would replace one of its inputs.

    Parameters
    ----------
    outputs, inputs
        Option name (as the user typed it, e.g. ``output``, ``data.path``) -> path; ``None`` entries
        and in-memory inputs (anything not a path) are skipped.

    Raises
    ------
    ConfigError
        Naming both options and the path, when an output and an input are the same file.
    """
    for out_name, out_path in outputs.items():
        if not isinstance(out_path, (str, os.PathLike)):
            continue
        for in_name, in_path in inputs.items():
            if isinstance(in_path, (str, os.PathLike)) and same_file(out_path, in_path):
                raise ConfigError(
                    f"{out_name}={out_path} is the same file as {in_name}={in_path}: writing it would replace "
                    f"the input; choose another {out_name}"
                )


def check_output_file(path: PathLike, option: str = "output") -> Path:
    """Check before any work that ``path`` can be written as a file; create its directory if missing.

    Parameters
    ----------
    path
        The output file.
    option
        The option that named it, used in messages.

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    ConfigError
        When ``path`` is an existing directory, its parent cannot be created, or the parent is
        not writable (checked by creating and removing a hidden probe file, so it holds for root
        and read-only file systems too).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{option}={path} is an existing directory: give a file name inside it, e.g. {path / 'predictions.parquet'}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{option}={path}: cannot create its directory {path.parent} ({exc.strerror or exc}): choose another {option}"
        ) from exc
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{option}={path}: the directory {path.parent} is not writable ({exc.strerror or exc}): choose another {option}"
        ) from exc
    return path


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_sigterm_cleanup() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` in the main thread, so temporary files are cleaned up.

    Without it the process dies at once and a half-written ``.tmp`` file stays beside the output.
    Only the default handler is replaced (one installed by a launcher or by Lightning is kept).
    """
    try:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _raise_system_exit)
    except ValueError:  # not the main thread: leave signals alone
        pass


def finished_run_checkpoints(output_dir: PathLike) -> list[Path]:
    """The checkpoints a finished (or interrupted) run left in ``output_dir``, sorted."""
    return sorted((Path(output_dir) / "checkpoints").rglob("*.ckpt"))


def prepare_run_dir(output_dir: PathLike, *, overwrite: bool = False, ckpt_path: Any = None) -> None:
    """Refuse to train into a run directory that holds a run, unless resuming it or told to overwrite.

    Parameters
    ----------
    output_dir
        The run directory (``hydra.run.dir``).
    overwrite
        Remove the previous run's checkpoints first, so that this run's ``last.ckpt`` is the file
        reported as the final model (Lightning would otherwise write ``last-v1.ckpt``).
    ckpt_path
        A resume request: 'last' or a checkpoint path continues the run instead.

    Raises
    ------
    ConfigError
        When the directory holds checkpoints and neither ``overwrite`` nor ``ckpt_path`` is given.
    """
    found = finished_run_checkpoints(output_dir)
    if not found or ckpt_path:
        return
    if not overwrite:
        shown = ", ".join(str(p.relative_to(output_dir)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(
            f"hydra.run.dir={output_dir} already holds a run ({shown}): choose a new hydra.run.dir, resume it "
            "with ckpt_path=last, or replace it with overwrite=true"
        )
    shutil.rmtree(Path(output_dir) / "checkpoints")


def refuse_finished_run_dir_early(overrides: Sequence[str]) -> None:
    """:func:`prepare_run_dir`'s refusal, from the command line, before Hydra writes into the directory.

    Hydra writes ``.hydra/config.yaml`` into the run directory before the task starts, so a
    refusal from inside the task would already have replaced the previous run's config. When
    ``hydra.run.dir=DIR`` is given explicitly (timestamped default directories are new anyway),
    the check runs here first. Multirun sweeps are left to the check inside each job.

    Parameters
    ----------
    overrides
        The command's Hydra overrides, as typed.

    Raises
    ------
    ConfigError
        As :func:`prepare_run_dir`, when DIR holds a run and neither ``overwrite=true`` nor ``ckpt_path`` is given.
    """
    if any(arg in ("-m", "--multirun") for arg in overrides):
        return
    values: dict[str, str] = {}
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    run_dir = values.get("hydra.run.dir")
    resuming = values.get("ckpt_path", "null").lower() not in ("", "null", "none")
    overwrite = values.get("overwrite", "false").lower() in ("true", "1", "yes")
    if run_dir and not resuming and not overwrite:
        prepare_run_dir(run_dir)


def written_checkpoint(trainer: Any) -> Path | None:
    """The last checkpoint this trainer wrote (``last.ckpt``, or ``last-v1.ckpt`` next to an old one), if any."""
    callback = getattr(trainer, "checkpoint_callback", None)
    path = getattr(callback, "last_model_path", "") if callback is not None else ""
    return Path(path) if path and Path(path).is_file() else None
