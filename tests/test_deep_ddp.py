"""Every deep model trains under DDP (``trainer=ddp_cpu``: two spawned CPU processes) with nothing else changed.

The module the train job returns must be the run's final checkpoint: what it computed over the
whole catalogue while training (the start, the anchor and its pooled membership, the fit
results) comes back from the spawned workers, so it predicts as ``grasp-dl predict`` would.

``model=dec`` is checked so, and against a single process, by
``test_scale_out.py::test_ddp_on_cpu_agrees_with_a_single_process``; ``model=xd`` by
``test_em_engine.py::test_two_ddp_processes_fit_a_real_field_as_one_does``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grasp_dl.inference.predict import load_clustering_module
from grasp_dl.jobs import train as pipeline

from hydra_configs import compose_config

pytestmark = pytest.mark.slow

BASE = [
    "data.simulate.n_stars=2000",
    "trainer.max_epochs=2",
    "seed=3",
    "trainer=ddp_cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "~callbacks.tensorboard_figures",
]


@pytest.mark.parametrize(
    "overrides",
    [["model=autoencoder"], ["model=idec"], ["model=vade"], ["model=vade", "experiment=hard_field"]],
    ids=["autoencoder", "idec", "vade", "vade_hard_field"],
)
def test_every_deep_model_trains_under_ddp_and_returns_its_checkpoint(tmp_path, overrides):
    if overrides != ["model=autoencoder"]:
        overrides = [*overrides, "model.pretrain_epochs=2"]
    result = pipeline.train(compose_config("train", [*BASE, *overrides], tmp_path))
    assert result.checkpoint is not None and result.checkpoint.is_file()
    assert np.isfinite(result.metrics["train/loss"])
    if overrides == ["model=autoencoder"]:
        return
    stored = load_clustering_module(result.checkpoint)
    module = result.module.eval()
    assert module.fit_results.keys() == stored.fit_results.keys()
    assert "start_vs_end" in module.fit_results  # the anchor's report, computed in the workers
    assert module.cluster_group == stored.cluster_group
    mine = pipeline.catalogue_probabilities(module, result.datamodule)
    theirs = pipeline.catalogue_probabilities(stored, result.datamodule)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert len(mine.argmax(dim=1).unique()) >= 2
