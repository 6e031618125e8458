"""What grasp-dl may write, and where: the input/output policy of every command.

- An output never replaces an input of the same command (paths compared resolved, links caught).
- An output must be a writable file path, not a directory, checked before any work.
- All outputs of one command are checked before the first is written, written to uniquely named
  temporary files beside them (``.<name>.<pid>.<random>.tmp<suffix>``) and moved into place
  together (:class:`StagedOutputs`). Temporary files are removed on every failure path (SIGTERM
  becomes ``SystemExit``); those of a killed process are removed by the next run to that output.
- A run directory holding a finished run is refused unless ``overwrite=true`` (its checkpoints
  are removed first) or ``ckpt_path`` resumes it.
- A run directory and an output are locked for the length of a run (:class:`RunLock`); a lock
  left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from grasp_dl.runtime.errors import ConfigError

__all__ = [
    "RunLock",
    "StagedOutputs",
    "check_output_file",
    "check_run_dir_early",
    "finished_run_checkpoints",
    "install_sigterm_cleanup",
    "prepare_run_dir",
    "refuse_finished_run_dir_early",
    "refuse_overwriting_inputs",
    "remove_stale_temps",
    "same_file",
    "strict_json",
    "temp_file",
    "written_checkpoint",
]

PathLike = str | os.PathLike[str]


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file (resolved paths equal, or one file through links)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.resolve() == pb.resolve():
            return True
    except (OSError, RuntimeError):  # a symlink loop: compared by name only
        return pa.absolute() == pb.absolute()
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
    values = _override_values(overrides)
    run_dir = values.get("hydra.run.dir")
    if run_dir:
        RunLock(run_dir, "hydra.run.dir", directory=True).refuse_if_held()
    resuming = values.get("ckpt_path", "null").lower() not in ("", "null", "none")
    overwrite = values.get("overwrite", "false").lower() in ("true", "1", "yes")
    if run_dir and not resuming and not overwrite:
        prepare_run_dir(run_dir)


def _override_values(overrides: Sequence[str]) -> dict[str, str]:
    """``key=value`` overrides as a mapping (quotes and a leading ``+`` dropped)."""
    values: dict[str, str] = {}
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    return values


def check_run_dir_early(overrides: Sequence[str]) -> None:
    """Refuse, before Hydra creates it, a run directory that cannot be created or written.

    Hydra makes the run directory (``hydra.run.dir``, by default ``outputs/<command>/<time>``
    below the current directory) before the command starts and fails with a traceback when it
    cannot. A multirun's directories are left to Hydra, and Hydra's flags (``--cfg``, ``--help``)
    write none.

    Parameters
    ----------
    overrides
        The command's Hydra overrides, as typed.

    Raises
    ------
    ConfigError
        When ``hydra.run.dir`` is given and cannot be created or written, or, without it, when the
        current directory (or its ``outputs`` folder) is not writable.
    """
    if any(arg.startswith("-") for arg in overrides):  # a multirun, or --help/--cfg/--info: no run directory here
        return
    run_dir = _override_values(overrides).get("hydra.run.dir")
    if run_dir and "${" not in run_dir:
        problem = _not_writable(Path(run_dir).expanduser(), create=True)
        if problem:
            raise ConfigError(f"hydra.run.dir={run_dir}: cannot create or write it ({problem}): choose another")
        return
    if run_dir:
        return
    cwd = Path.cwd()
    outputs = cwd / "outputs"
    problem = _not_writable(outputs if outputs.is_dir() else cwd, create=False)
    if problem:
        raise ConfigError(
            f"the current directory {cwd} is not writable ({problem}), and grasp-dl keeps each run's log and "
            "config in outputs/ below it: run from a writable directory or give hydra.run.dir=<a writable folder>"
        )


def _not_writable(directory: Path, *, create: bool) -> str | None:
    """Why files cannot be created in ``directory`` (made first with ``create``), or None when they can."""
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".grasp-dl.probe-"):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def written_checkpoint(trainer: Any) -> Path | None:
    """The last checkpoint this trainer wrote (``last.ckpt``, or ``last-v1.ckpt`` next to an old one), if any."""
    callback = getattr(trainer, "checkpoint_callback", None)
    path = getattr(callback, "last_model_path", "") if callback is not None else ""
    return Path(path) if path and Path(path).is_file() else None


# --------------------------------------------------------------------------- temporary files


def _temp_suffix(path: Path) -> str:
    """The suffix a temporary file keeps so that writers still see the format (``.csv.gz`` whole)."""
    suffixes = path.suffixes[-2:] if path.name.lower().endswith(".gz") else path.suffixes[-1:]
    return "".join(suffixes)


def temp_file(path: PathLike) -> Path:
    """Create an empty temporary file with a unique name beside ``path`` and return its path.

    The name, ``.<name>.<pid>.<random>.tmp<suffix>``, carries the writer's process id (so that
    :func:`remove_stale_temps` can tell a killed writer's file from a running one's) and ends in
    the output's suffix (so that format-by-suffix writers still work). It is created atomically
    (``tempfile.mkstemp``), so it never replaces a file already there.

    Parameters
    ----------
    path
        The output the temporary file will replace.

    Returns
    -------
    Path
        The temporary file (empty, closed).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{_temp_suffix(path)}"
    )
    os.close(fd)
    # mkstemp makes the file private (0600); the output it becomes gets the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` (see :func:`temp_file`) whose writing process is gone.

    A process killed with SIGKILL cannot clean up; the next run to the same output does. Files
    of a live process, and any file not named by the temporary-file pattern, are left alone.

    Parameters
    ----------
    path
        An output file.

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.+{re.escape(path.name)}\.(\d+)\.\w+\.tmp")
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(1))) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def strict_json(value: Any) -> str:
    """``value`` as strict JSON: non-finite floats become ``null`` (``NaN`` is not JSON), numpy scalars numbers.

    Parameters
    ----------
    value
        Plain containers, numbers, strings (numpy scalars and arrays allowed).

    Returns
    -------
    str
        Indented JSON text ending in a newline.
    """

    def clean(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {str(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        if hasattr(item, "tolist") and not isinstance(item, (str, bytes)):
            return clean(item.tolist())
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return item

    return json.dumps(clean(value), indent=2, allow_nan=False) + "\n"


class StagedOutputs:
    """Every file one command writes: checked before the first is written, written to temporary files, moved together.

    Use as a context manager; :meth:`temp` gives the temporary file of an output, :meth:`commit`
    moves all of them into place. A failure (or SIGTERM, see :func:`install_sigterm_cleanup`)
    before the commit removes every temporary file and leaves every output as it was.

    Parameters
    ----------
    outputs
        Option name (as in messages, e.g. ``output``, ``output's summary``) -> output path;
        ``None`` entries are skipped.

    Raises
    ------
    ConfigError
        From the constructor, when an output is an existing directory or cannot be written
        (:func:`check_output_file`).
    """

    def __init__(self, outputs: Mapping[str, PathLike | None]) -> None:
        self.outputs = {name: Path(path) for name, path in outputs.items() if path is not None}
        for name, path in self.outputs.items():
            check_output_file(path, name)
        self.temps: dict[str, Path] = {}

    def temp(self, name: str) -> Path:
        """The temporary file standing in for output ``name`` (created on first use)."""
        if name not in self.temps:
            self.temps[name] = temp_file(self.outputs[name])
        return self.temps[name]

    def commit(self) -> None:
        """Move every written temporary file over its output (empty, unused ones are dropped)."""
        for name, tmp in list(self.temps.items()):
            if tmp.exists() and tmp.stat().st_size > 0:
                os.replace(tmp, self.outputs[name])
            else:
                tmp.unlink(missing_ok=True)
            del self.temps[name]

    def discard(self) -> None:
        """Remove every temporary file."""
        for tmp in self.temps.values():
            tmp.unlink(missing_ok=True)
        self.temps.clear()

    def __enter__(self) -> StagedOutputs:
        for path in self.outputs.values():
            remove_stale_temps(path)
        return self

    def __exit__(self, *_: Any) -> None:
        self.discard()


# --------------------------------------------------------------------------- locks


class RunLock:
    """A lock file holding the owner's process id, so that two runs never write the same place at once.

    ``<target>/.grasp-dl.lock`` for a directory (a run directory), ``.<name>.lock`` beside a file
    (an output). Created atomically (``O_EXCL``); a lock whose process is gone is taken over.
    Use as a context manager; the lock file is removed on exit.

    Parameters
    ----------
    target
        The run directory or the output file.
    option
        The option that named it, used in messages (``hydra.run.dir``, ``output``).
    directory
        Whether ``target`` is a directory (created when missing).
    """

    def __init__(self, target: PathLike, option: str, *, directory: bool = False) -> None:
        self.target = Path(target)
        self.option = option
        self.path = self.target / ".grasp-dl.lock" if directory else self.target.with_name(f".{self.target.name}.lock")
        self.directory = directory
        self.held = False

    def holder(self) -> int | None:
        """The process id of a live holder of the lock other than a stale one, or None."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        pid = int(text) if text.isdigit() else -1
        return pid if _pid_alive(pid) else None

    def refuse_if_held(self) -> None:
        """Raise the one-line refusal when a live process holds the lock (without taking it)."""
        pid = self.holder()
        if pid is not None:
            raise ConfigError(
                f"{self.option}={self.target} is in use by another grasp-dl run (process {pid}, lock file "
                f"{self.path}): wait for it to end or choose another {self.option}"
            )

    def acquire(self) -> None:
        """Take the lock, taking over one left by a dead process.

        Raises
        ------
        ConfigError
            When a live process holds it, or the lock file cannot be created.
        """
        try:
            (self.target if self.directory else self.target.parent).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{self.option}={self.target}: cannot create {'it' if self.directory else 'its directory'} "
                f"({exc.strerror or exc}): choose another {self.option}"
            ) from exc
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self.refuse_if_held()
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its process is gone
                continue
            except OSError as exc:
                raise ConfigError(
                    f"{self.option}={self.target}: cannot write there ({exc.strerror or exc}): choose another "
                    f"{self.option}"
                ) from exc
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self.held = True
            return
        self.refuse_if_held()
        raise ConfigError(f"{self.option}={self.target}: could not take the lock {self.path}: try again")

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            with contextlib.suppress(OSError):
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()
