"""Time to first result: stage timing, the one end-of-run inference, lazy imports, the collector at start and exit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime import stage_timer

from hydra_configs import compose_config

REPO = Path(__file__).resolve().parents[1]

#: A default-model (xd) run of about a second of fitting: a small simulated field, one EM start.
TINY_XD = [
    "model=xd",
    "model.n_starts=1",
    "model.max_iter=20",
    "data.simulate.n_stars=2000",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


def _script():
    spec = importlib.util.spec_from_file_location("time_to_first_result", REPO / "scripts" / "time_to_first_result.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- stage timer


def test_marks_are_written_only_when_timing_is_on(tmp_path, monkeypatch):
    target = tmp_path / "marks.jsonl"
    monkeypatch.delenv(stage_timer.ENV_VAR, raising=False)
    stage_timer.mark("nothing")
    assert stage_timer.timing_file() is None and not target.exists()
    monkeypatch.setenv(stage_timer.ENV_VAR, str(target))
    stage_timer.mark("second", when=20.0)
    stage_timer.mark("first", when=10.0)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["phase"] for line in lines] == ["second", "first"]
    assert [m["phase"] for m in stage_timer.read_marks(target)] == ["first", "second"]  # time order
    assert stage_timer.read_marks(tmp_path / "absent.jsonl") == []


def test_phases_tile_the_run_and_repeated_phases_add_up():
    marks = [
        {"phase": "imports", "time": 1.0},
        {"phase": "validation", "time": 3.0},
        {"phase": "epoch", "time": 4.0},
        {"phase": "validation", "time": 6.0},
        {"phase": "exit", "time": 6.5},
    ]
    durations = stage_timer.phase_durations(marks, start=0.5, end=7.0)
    assert list(durations) == [stage_timer.STARTUP_PHASE, "imports", "validation", "epoch", "exit"]
    assert durations == pytest.approx(
        {stage_timer.STARTUP_PHASE: 0.5, "imports": 2.0, "validation": 1.5, "epoch": 2.0, "exit": 0.5}
    )
    assert sum(durations.values()) == pytest.approx(6.5)
    with pytest.raises(ValueError, match="outside the run"):
        stage_timer.phase_durations(marks, start=2.0, end=7.0)
    with pytest.raises(ValueError, match="before start"):
        stage_timer.phase_durations([], start=2.0, end=1.0)


def test_breakdown_table_takes_medians_and_states_the_load():
    script = _script()
    runs = [
        {"wall": w, "phases": {"a": w - 1, "b": 1.0}, "result_at": w - 0.5, "load_before": load, "load_after": 0.0}
        for w, load in ((3.0, 1.5), (5.0, 2.0), (4.0, 0.5))
    ]
    summary = script.summarise_runs(runs)
    assert summary["wall"] == 4.0 and summary["phases"] == {"a": 3.0, "b": 1.0} and summary["result_at"] == 3.5
    table = script.format_table({"before": summary, "after": summary}, markdown=True)
    lines = table.splitlines()
    assert lines[0] == "| phase (s) | before | after |"
    assert "| a | 3.00 | 3.00 |" in lines and "| 1-min load before each run | 1.5, 2.0, 0.5 | 1.5, 2.0, 0.5 |" in lines


# ----------------------------------------------------------------------------- lazy imports


def test_the_cli_imports_nothing_heavy():
    """The command line starts without torch, Lightning, matplotlib, astropy, sklearn, scipy, TensorBoard, optuna."""
    heavy = ["torch", "lightning", "matplotlib", "astropy", "sklearn", "scipy", "tensorboard", "optuna"]
    proc = _python(f"import sys, grasp_dl.cli; print([m for m in {heavy!r} if m in sys.modules])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_astropy_tables_are_still_read_when_astropy_comes_late():
    code = (
        "import sys, grasp_dl\n"
        "from grasp_dl import read_catalog\n"
        "import pandas as pd\n"
        "read_catalog(pd.DataFrame({'ra': [1.0], 'dec': [2.0]}))\n"
        "assert 'astropy' not in sys.modules\n"
        "from astropy.table import Table\n"
        "frame = read_catalog(Table({'ra': [1.0, 2.0], 'dec': [3.0, 4.0]}))\n"
        "print(list(frame['ra']))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1.0, 2.0]"


# ----------------------------------------------------------------------------- the garbage collector


def test_heavy_imports_freeze_and_resume_a_paused_collector():
    code = (
        "import gc\n"
        "from grasp_dl.runtime import short_process\n"
        "with short_process.heavy_imports():\n"
        "    import json\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0  # not paused: nothing happens\n"
        "short_process.pause_collector()\n"
        "assert not gc.isenabled() and short_process.collector_paused()\n"
        "with short_process.heavy_imports():\n"
        "    import decimal\n"
        "assert gc.isenabled() and not short_process.collector_paused() and gc.get_freeze_count() > 0\n"
        "short_process.resume_collector()\n"
        "assert gc.isenabled()\n"
        "print('ok')\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_only_the_console_entry_point_touches_the_collector(tmp_path, monkeypatch):
    import gc

    from grasp_dl import cli

    frozen = gc.get_freeze_count()
    monkeypatch.setattr(sys, "argv", ["grasp-dl"])
    cli.main(["train", "--cfg", "job", f"hydra.run.dir={tmp_path / 'run'}"])
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    code = (
        "import gc, sys\n"
        "from grasp_dl import cli\n"
        f"sys.argv = ['grasp-dl', 'train', '--cfg', 'job', 'hydra.run.dir={tmp_path / 'run2'}']\n"
        "cli.main()\n"
        "print('STATE', gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "STATE True True" in proc.stdout


# ----------------------------------------------------------------------------- the end-of-run inference


def _count_inference(monkeypatch) -> list[int]:
    calls = [0]
    original = pipeline.catalogue_probabilities

    def counted(module, datamodule):
        calls[0] += 1
        return original(module, datamodule)

    monkeypatch.setattr(pipeline, "catalogue_probabilities", counted)
    return calls


@pytest.mark.slow
def test_end_of_run_inference_runs_once_and_clusters_are_scored_only_for_optimized_metric(
    tmp_path, monkeypatch, capsys
):
    """grasp-dl train without optimized_metric computes no clustering scores and infers once, for the
    summary; with it, the scores and the summary share that one inference; the summaries agree."""
    from grasp_dl import cli

    calls = _count_inference(monkeypatch)
    runs = []  # (result, inferences when pipeline.train returned)
    train = pipeline.train

    def recorded(*args, **kwargs):
        runs.append((train(*args, **kwargs), calls[0]))
        return runs[-1][0]

    def no_scores(*args, **kwargs):
        raise AssertionError("clustering scores computed although nothing shows them")

    monkeypatch.setattr(pipeline, "train", recorded)
    scores = pipeline.clustering_scores
    monkeypatch.setattr(pipeline, "clustering_scores", no_scores)
    capsys.readouterr()
    assert cli.train_task(compose_config("train", TINY_XD, tmp_path / "unscored")) is None
    plain = capsys.readouterr().out
    quiet, inferred = runs[-1]
    assert inferred == 0 and not any(key.startswith("clustering/") for key in quiet.metrics)
    assert calls[0] == 1 and "cluster: group 0" in plain  # the summary's inference
    monkeypatch.setattr(pipeline, "clustering_scores", scores)
    calls[0] = 0
    value = cli.train_task(
        compose_config("train", [*TINY_XD, "optimized_metric=clustering/silhouette"], tmp_path / "scored")
    )
    text = capsys.readouterr().out
    result, _ = runs[-1]
    assert -1.0 <= value <= 1.0 and "clustering/silhouette" in result.metrics
    assert calls[0] == 1
    assert "cluster check:" in text and "cluster: group 0" in text
    assert plain.replace("unscored", "scored") == text
    assert (quiet.probabilities == result.probabilities).all()


# ----------------------------------------------------------------------------- the breakdown script


@pytest.mark.slow
def test_breakdown_covers_every_phase_and_adds_up_to_the_wall_time(tmp_path, capsys):
    script = _script()
    out = tmp_path / "ttfr.json"
    results = script.main([*_sets(TINY_XD[:4]), "--json", str(out)])
    (summary,) = results.values()
    phases = summary["phases"]
    expected = [
        stage_timer.STARTUP_PHASE,
        stage_timer.IMPORT_PHASE,
        "CLI checks, Hydra: compose the config, run directory, logging",
        "imports: torch, Lightning (grasp_dl.jobs.train)",
        "pipeline: read (or simulate) and prepare the catalogue",
        "pipeline: build the Trainer (callbacks, loggers)",
        "XDModule: mixture initialisation",
        "XDModule: sanity check (validation batches)",
        "XDModule: training epochs",
        "summary: end-of-run inference, cluster check, print",
        "process exit (interpreter teardown)",
    ]
    missing = [name for name in expected if name not in phases]
    assert not missing, f"phases missing from the breakdown: {missing}"
    assert "pipeline: clustering scores (silhouette, Davies-Bouldin, Calinski-Harabasz)" not in phases
    assert sum(phases.values()) == pytest.approx(summary["wall"], abs=1e-6)
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases[stage_timer.STARTUP_PHASE] < 0.5 * summary["wall"]  # the marks start early
    assert 0 < summary["result_at"] <= summary["wall"]
    saved = json.loads(out.read_text())
    assert len(saved["runs"][next(iter(results))]) == 1
    printed = capsys.readouterr().out
    assert "XDModule: mixture initialisation" in printed and "wall time (spawn to exit)" in printed


def _sets(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]
