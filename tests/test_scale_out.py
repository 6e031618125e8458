"""One code path for CPU, DDP and mixed precision; multirun sweeps; reproducibility; resume.

Every test here trains end to end (several runs each), so the module is ``slow``; the composed
trainer, logger and callback configs are checked without training in ``test_configs.py``.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from sklearn.metrics import adjusted_rand_score

from grasp_dl import optimize_hyperparameters
from grasp_dl.inference.predict import load_clustering_module
from grasp_dl.jobs import train as pipeline

from hydra_configs import TINY, compose_config

pytestmark = pytest.mark.slow

SMALL = [o for o in TINY if not o.startswith("data.simulate.n_stars")] + ["data.simulate.n_stars=2500"]


def _labels(result):
    return result.module.predict_proba(result.datamodule.data).argmax(dim=1).numpy()


def test_ddp_on_cpu_agrees_with_a_single_process(tmp_path):
    """DEC under DDP finds the single process's partition and returns its final checkpoint (the other
    deep models under DDP: test_deep_ddp.py)."""
    # two groups (cluster and field): a partition both runs must find, whatever the batch split
    overrides = SMALL + ["model.n_clusters=2"]
    single = pipeline.train(compose_config("train", overrides, tmp_path / "single"))
    ddp = pipeline.train(compose_config("train", overrides + ["trainer=ddp_cpu"], tmp_path / "ddp"))
    assert ddp.checkpoint == tmp_path / "ddp" / "checkpoints" / "last.ckpt" and ddp.checkpoint.is_file()
    assert adjusted_rand_score(_labels(single), _labels(ddp)) > 0.9
    # what the spawned workers computed over the whole catalogue comes back as the checkpoint has it
    assert np.isfinite(ddp.metrics["train/loss"])
    stored = load_clustering_module(ddp.checkpoint)
    module = ddp.module.eval()
    assert module.fit_results.keys() == stored.fit_results.keys() and "start_vs_end" in module.fit_results
    assert module.cluster_group == stored.cluster_group
    mine = pipeline.catalogue_probabilities(module, ddp.datamodule)
    torch.testing.assert_close(mine, pipeline.catalogue_probabilities(stored, ddp.datamodule), rtol=0, atol=1e-6)


def result_monitor(model: str) -> str:
    """The validation metric a model logs under its own name (conf/model/<model>.yaml monitor)."""
    return "val/entropy" if model in ("dec", "idec") else "val/loss"


@pytest.mark.parametrize("model", ["dec", "vade"])
def test_bf16_mixed_precision_runs_end_to_end_with_finite_losses(tmp_path, model):
    # five autoencoder epochs: after two, VaDE's mixture can start on a latent space too crude to
    # hold more than one group, whatever the precision (seen with 32-true as well on some CPUs)
    overrides = SMALL + ["trainer.precision=bf16-mixed", f"model={model}", "model.pretrain_epochs=5"]
    result = pipeline.train(compose_config("train", overrides, tmp_path))
    assert np.isfinite(result.metrics["train/loss"]) and np.isfinite(result.metrics[result_monitor(model)])
    q = result.module.predict_proba(result.datamodule.data)
    assert torch.isfinite(q).all() and len(np.unique(_labels(result))) >= 2


def test_same_seed_same_results_on_cpu(tmp_path):
    first = pipeline.train(compose_config("train", SMALL, tmp_path / "a"))
    second = pipeline.train(compose_config("train", SMALL, tmp_path / "b"))
    data = first.datamodule.data
    torch.testing.assert_close(first.module.predict_proba(data), second.module.predict_proba(data), rtol=0, atol=0)


def test_resume_after_a_crash_ends_where_an_uninterrupted_run_does(tmp_path):
    overrides = SMALL + ["model.pretrain_epochs=4", "trainer.max_epochs=3"]
    uninterrupted = pipeline.train(compose_config("train", overrides, tmp_path / "whole"))
    crashed = compose_config("train", overrides, tmp_path / "crash")
    with open_dict(crashed):
        crashed.callbacks.crash = {"_target_": "hydra_configs.CrashAfterEpoch", "epoch": 1}
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.train(crashed)
    assert (tmp_path / "crash" / "checkpoints" / "autoencoder" / "last.ckpt").is_file()
    assert not (tmp_path / "crash" / "checkpoints" / "last.ckpt").exists()
    resumed = pipeline.train(compose_config("train", overrides + ["ckpt_path=last"], tmp_path / "crash"))
    data = uninterrupted.datamodule.data
    torch.testing.assert_close(resumed.module.predict_proba(data), uninterrupted.module.predict_proba(data))
    # an explicit clustering checkpoint resumes the clustering phase, not the autoencoder phase
    from grasp_dl.jobs.train import resume_point

    final = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    assert resume_point(str(final), tmp_path, two_phase=True).final == str(final)
    # a finished clustering phase resumes from its own checkpoint and trains on
    more_overrides = SMALL + ["trainer.max_epochs=5", "ckpt_path=last"]
    more = pipeline.train(compose_config("train", more_overrides, tmp_path / "crash"))
    assert torch.load(tmp_path / "crash" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 4
    assert more.module.cluster_group >= 0


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grasp_dl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_multirun_gives_each_job_its_own_directory(tmp_path):
    """One sweep over the trainer: a one-process job and a DDP job (two spawned workers), each its own
    directory, each trained as its trainer says (the DDP rank that checkpoints saw half the batches)."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "train",
        "-m",
        "model=dec",
        "trainer=cpu,ddp_cpu",
        "trainer.max_epochs=1",
        "model.pretrain_epochs=1",
        "data.simulate.n_stars=2000",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {}
    for job, trainer in (("0", "cpu"), ("1", "ddp_cpu")):
        ckpt = sweep_dir / job / "checkpoints" / "last.ckpt"
        assert ckpt.is_file(), sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ckpt"))
        assert f"trainer={trainer}" in (sweep_dir / job / ".hydra" / "overrides.yaml").read_text()
        steps[trainer] = torch.load(ckpt, weights_only=True)["global_step"]
        assert list((sweep_dir / job / "tensorboard").glob("events.out.tfevents.*"))
    assert 0 < steps["ddp_cpu"] < steps["cpu"], steps
    # nothing scattered outside the jobs' directories
    assert {p.name for p in tmp_path.iterdir()} == {"sweep"}
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]


def test_optuna_sweep_from_the_command_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [
        "train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.max_epochs=1",
        "model.pretrain_epochs=1",
        "data.simulate.n_stars=2000",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (sweep_dir / "optimization_results.yaml").is_file()
    assert "best_value" in (sweep_dir / "optimization_results.yaml").read_text()


def test_optimize_hyperparameters_in_process(tmp_path):
    result = optimize_hyperparameters(
        "m4",
        n_clusters_range=[2, 3],
        latent_dims=[4],
        hidden_dims_options=[[32, 16]],
        overrides=[
            "trainer.max_epochs=1",
            "model.pretrain_epochs=1",
            "trainer.enable_progress_bar=false",
            "data.simulate.n_stars=2000",
        ],
        output_dir=tmp_path,
    )
    assert len(result.trials) == 2 and set(result.trials["n_clusters"]) == {2, 3}
    assert result.best_value == result.trials["clustering/silhouette"].max()
    assert result.best_params["hidden_dims"] == [32, 16] and result.best_params["n_clusters"] in (2, 3)
