"""A run killed with SIGKILL in any phase and resumed with ``ckpt_path=last`` predicts as the run it continues.

Each run is a real ``grasp-dl train`` subprocess; the killed one dies mid-epoch
(:class:`hydra_configs.KillAt`), nothing flushed. The predictions compared are those of each run's
final ``last.ckpt``, scored as the train summary and ``grasp-dl predict`` score them.

A run is mostly the start-up of a Python process, so one run is killed at each point in turn (the
first afresh, each resume dying at the next point, the last resume running to the end) rather than
one run per point, and it goes alongside the uninterrupted run (its own directory, one thread each:
``OMP_NUM_THREADS=1``): the machine that runs the suite has two cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: A tiny run: few stars, a few epochs of each phase, no early stop (model.tol=0), no figures.
BASE = [
    "data.simulate.n_stars=2000",
    "model.pretrain_epochs=3",
    "trainer.max_epochs=4",
    "seed=3",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "~callbacks.tensorboard_figures",
]

#: The deep settings and the class name of their clustering phase.
SETTINGS = {
    "dec": (["model=dec", "model.tol=0", "model.update_interval=2"], "DECModule"),
    "idec": (["model=idec", "model.tol=0", "model.update_interval=2"], "DECModule"),
    "vade": (["model=vade"], "VaDEModule"),
    "vade_hard_field": (["model=vade", "experiment=hard_field"], "VaDEModule"),
}


def train_cli(run_dir: Path, overrides: list[str], kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    """``grasp-dl train`` in a subprocess into ``run_dir``; ``kill`` = (phase class, epoch) SIGKILLs it there."""
    args = [sys.executable, "-m", "grasp_dl.cli", "train", *BASE, *overrides, f"hydra.run.dir={run_dir}"]
    if kill is not None:
        phase, epoch = kill
        args += [
            "+callbacks.kill._target_=hydra_configs.KillAt",
            f"+callbacks.kill.phase={phase}",
            f"+callbacks.kill.epoch={epoch}",
        ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=900)


def member_prob(run_dir: Path, overrides: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Member probability and label of every usable star by the run's last.ckpt (as the train summary scores them)."""
    from grasp_dl.inference.predict import load_clustering_module
    from grasp_dl.jobs.train import build_datamodule, catalogue_probabilities

    from hydra_configs import compose_config

    module = load_clustering_module(run_dir / "checkpoints" / "last.ckpt")
    cfg = compose_config("train", [*BASE, *overrides], run_dir)
    q = catalogue_probabilities(module, build_datamodule(cfg)).detach().double().numpy()
    return q[:, module.cluster_group], q.argmax(axis=1)


def killed_at_each_point_and_resumed(run_dir: Path, overrides: list[str], kills: dict[str, tuple[str, int]]) -> Path:
    """One run killed at each of ``kills`` in turn, each time resumed with ckpt_path=last; its directory.

    The first run starts afresh and dies at the first point; each resume goes on from what the kill
    left and dies at the next point (so it checks it got there); the last resume runs to the end.
    """
    resume: list[str] = []
    for name, kill in kills.items():
        killed = train_cli(run_dir, [*overrides, *resume], kill)
        assert killed.returncode == -signal.SIGKILL, f"killed {name}: " + killed.stderr[-3000:]
        resume = ["ckpt_path=last"]
    resumed = train_cli(run_dir, [*overrides, *resume])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_sigkill_in_any_phase_then_resume_predicts_as_the_uninterrupted_run(tmp_path, setting):
    overrides, phase = SETTINGS[setting]
    # mid-pretraining; in the clustering phase's first epoch (before its first checkpoint: the run goes
    # on from the autoencoder's); mid-clustering
    kills = {
        "in_pretraining": ("AutoencoderModule", 1),
        "at_clustering_start": (phase, 0),
        "in_clustering": (phase, 2),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        whole = pool.submit(train_cli, tmp_path / "whole", overrides)
        killed = pool.submit(killed_at_each_point_and_resumed, tmp_path / "killed", overrides, kills)
        whole = whole.result()
        assert whole.returncode == 0, whole.stderr[-3000:]
        expected, labels = member_prob(tmp_path / "whole", overrides)
        got, got_labels = member_prob(killed.result(), overrides)
    delta = float(np.max(np.abs(got - expected)))
    print(f"{setting} killed {', '.join(kills)}: max |delta member_prob| = {delta:.3g}")
    assert delta < 1e-5, f"{setting} killed {', '.join(kills)}: max |delta member_prob| {delta}"
    np.testing.assert_array_equal(got_labels, labels)
