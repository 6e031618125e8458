"""Time to first result: where the wall time of the default ``grasp-dl train`` goes, phase by phase.

It runs ``grasp-dl train`` (the bundled example, the default model; extra overrides with --set)
as a user does, one process per run, into a temporary run directory, with stage timing on
(:mod:`grasp_dl.runtime.stage_timer`: the environment variable ``GRASP_DL_STAGE_TIMES`` and the callback
:class:`grasp_dl.jobs.callbacks.StageTimerCallback`). Each phase lasts from its mark to the next one, so
the phases add up to the process's wall time: from the moment it is spawned (Python start-up)
to the moment it has exited (interpreter teardown included).

--checkout runs the grasp_dl of other checkouts (put first on PYTHONPATH) in the same session,
interleaved run by run (A, B, A, B, ...), so that a before/after comparison sees the same machine
load; a checkout without stage timing reports its wall time only. The 1-minute load average
(``uptime``) is printed with every number: on a shared machine the seconds are only comparable
side by side.

    python scripts/time_to_first_result.py
    python scripts/time_to_first_result.py --repeats 3 --checkout /tmp/before . --markdown
    python scripts/time_to_first_result.py --set model=dec --set trainer.max_epochs=2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grasp_dl.runtime.stage_timer import ENV_VAR, STARTUP_PHASE, phase_durations, read_marks  # noqa: E402

#: The callback that marks Lightning's loop, added to the run's callbacks.
CALLBACK_OVERRIDE = "+callbacks.stage_timer._target_=grasp_dl.jobs.callbacks.StageTimerCallback"
#: The phase during which the result has been printed (the user has it from then on).
RESULT_PRINTED = "Hydra job end"


def grasp_dl_command() -> list[str]:
    """The ``grasp-dl`` console script beside this Python, or ``python -m grasp_dl.cli`` without one."""
    script = shutil.which("grasp-dl", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "grasp_dl.cli"]


def run_once(checkout: Path, overrides: list[str], workdir: Path) -> dict[str, Any]:
    """One timed ``grasp-dl train`` with ``checkout``'s grasp_dl.

    Parameters
    ----------
    checkout : Path
        A grasp-dl checkout (its directory holds ``grasp_dl/``).
    overrides : list of str
        Extra Hydra overrides.
    workdir : Path
        An empty directory for the run directory, the marks and the output.

    Returns
    -------
    dict
        ``wall`` (seconds), ``phases`` (phase -> seconds), ``result_at`` (seconds from spawn to the
        printed result, None without stage timing), ``load_before`` and ``load_after`` (1-minute
        load averages) and ``command``.

    Raises
    ------
    RuntimeError
        If the run fails.
    """
    marks_file = workdir / "marks.jsonl"
    env = dict(os.environ)
    env[ENV_VAR] = str(marks_file)
    env["PYTHONPATH"] = os.pathsep.join([str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])])
    # stage timing lives in grasp_dl/runtime/ (grasp_dl/ in checkouts before the layered layout)
    timed = any((checkout / "grasp_dl" / where / "stage_timer.py").is_file() for where in ("runtime", "."))
    command = [*grasp_dl_command(), "train", f"hydra.run.dir={workdir / 'run'}", *overrides]
    if timed:
        command.append(CALLBACK_OVERRIDE)
    load_before = os.getloadavg()[0]
    with (workdir / "stdout.txt").open("w") as out, (workdir / "stderr.txt").open("w") as err:
        start = time.time()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=workdir)
        code = process.wait()
        end = time.time()
    if code != 0:
        tail = (workdir / "stderr.txt").read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed with exit code {code}:\n{tail}")
    marks = [m for m in read_marks(marks_file) if m["pid"] == process.pid]
    phases = phase_durations(marks, start, end)
    printed = [m["time"] for m in marks if m["phase"] == RESULT_PRINTED]
    return {
        "wall": end - start,
        "phases": phases,
        "result_at": printed[0] - start if printed else None,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "command": command,
    }


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs of one checkout: wall, time to the printed result, each phase.

    Parameters
    ----------
    runs : list of dict
        What :func:`run_once` returned for each run.

    Returns
    -------
    dict
        ``wall``, ``result_at``, ``phases`` (medians), ``loads`` (1-minute load before each run), ``runs``.
    """
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run["phases"]))
    printed = [run["result_at"] for run in runs if run["result_at"] is not None]
    return {
        "wall": statistics.median(run["wall"] for run in runs),
        "result_at": statistics.median(printed) if printed else None,
        "phases": {name: statistics.median(run["phases"].get(name, 0.0) for run in runs) for name in names},
        "loads": [round(run["load_before"], 2) for run in runs],
        "runs": len(runs),
    }


def format_table(results: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """The breakdown table: one row per phase, one column (seconds) per checkout.

    Parameters
    ----------
    results : dict
        Checkout label -> :func:`summarise_runs`.
    markdown : bool
        A Markdown table (for the README) instead of aligned text.

    Returns
    -------
    str
    """
    labels = list(results)
    phases: dict[str, None] = {STARTUP_PHASE: None}
    for summary in results.values():
        phases.update(dict.fromkeys(summary["phases"]))

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    rows = [[phase, *(seconds(results[label]["phases"].get(phase)) for label in labels)] for phase in phases]
    rows.append(["**wall time (spawn to exit)**", *(seconds(results[label]["wall"]) for label in labels)])
    rows.append(["result printed after", *(seconds(results[label]["result_at"]) for label in labels)])
    rows.append(["1-min load before each run", *(", ".join(map(str, results[label]["loads"])) for label in labels)])
    header = ["phase (s)", *labels]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
    )


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the timed trainings and print the breakdown table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` by default).

    Returns
    -------
    dict
        Checkout label -> :func:`summarise_runs`.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", nargs="+", type=Path, default=[REPO], help="grasp-dl checkouts to time")
    parser.add_argument("--labels", nargs="+", help="column names of the checkouts (default: their folder names)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per checkout (medians are reported)")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE", help="an extra Hydra override")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", type=Path, help="also write the results (every run) to this file")
    args = parser.parse_args(argv)
    checkouts = [path.resolve() for path in args.checkout]
    labels = args.labels or [path.name for path in checkouts]
    if len(labels) != len(checkouts):
        parser.error(f"--labels gives {len(labels)} names for {len(checkouts)} checkouts")
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="grasp-dl-ttfr-") as tmp:
        for repeat in range(args.repeats):
            for label, checkout in zip(labels, checkouts, strict=True):
                workdir = Path(tmp) / f"{label}-{repeat}"
                workdir.mkdir()
                run = run_once(checkout, args.set, workdir)
                runs[label].append(run)
                print(
                    f"{label} run {repeat + 1}: {run['wall']:.2f} s (1-min load {run['load_before']:.2f})", flush=True
                )
    results = {label: summarise_runs(label_runs) for label, label_runs in runs.items()}
    print(f"command: grasp-dl train {' '.join(args.set)}".rstrip())
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}, {os.cpu_count()} CPUs")
    print(format_table(results, markdown=args.markdown))
    if args.json:
        args.json.write_text(json.dumps({"summary": results, "runs": runs}, indent=2, default=str))
    return results


if __name__ == "__main__":
    main()
