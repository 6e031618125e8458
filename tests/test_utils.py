"""grasp_dl.utils and the top level re-export the seed's utilities (one implementation each),
and optimize_hyperparameters works without Optuna."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import grasp_dl
from grasp_dl import utils
from grasp_dl.jobs import search
from grasp_dl.runtime.errors import GraspDLError, MissingDependencyError
from grasp_dl.runtime.optional import import_optional

SEED_UTILITIES = {
    "prepare_stellar_data": "grasp_dl.data.prepare",
    "create_color_features": "grasp_dl.data.prepare",
    "evaluate_clustering": "grasp_dl.metrics",
    "plot_cluster_comparison": "grasp_dl.figures.plotting",
    "gpu_memory_usage": "grasp_dl.runtime.gpu",
    "optimize_hyperparameters": "grasp_dl.jobs.search",
}


@pytest.mark.parametrize("name", sorted(SEED_UTILITIES))
def test_each_seed_utility_is_one_object_under_three_names(name):
    import importlib

    home = getattr(importlib.import_module(SEED_UTILITIES[name]), name)
    assert getattr(utils, name) is home and getattr(grasp_dl, name) is home
    assert home.__module__ == SEED_UTILITIES[name]  # defined there, not copied
    assert name in utils.__all__ and name in grasp_dl.__all__ and name in dir(grasp_dl)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="grasp_dl.utils"):
        utils.not_a_utility  # noqa: B018
    with pytest.raises(AttributeError, match="'grasp_dl'"):
        grasp_dl.not_a_utility  # noqa: B018


def test_importing_the_light_utilities_loads_no_torch():
    code = (
        "import sys; from grasp_dl.utils import prepare_stellar_data, create_color_features; "
        "import grasp_dl; print('torch' in sys.modules, 'optuna' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_missing_extra_is_named_in_the_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'grasp-dl\[sweep\]'") as error:
        import_optional("optuna", "the TPE sampler")
    assert isinstance(error.value, GraspDLError) and isinstance(error.value, ImportError)


def test_a_tpe_budget_without_optuna_fails_before_any_training(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    monkeypatch.setattr(search, "_datamodule", lambda *a: pytest.fail("no data should be prepared"))
    with pytest.raises(MissingDependencyError, match=r"n_trials=.*grasp-dl\[sweep\]"):
        search.optimize_hyperparameters("m4", n_trials=3, output_dir=tmp_path)


def test_the_grid_without_optuna_visits_every_combination_in_order_and_keeps_the_first_best(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    space = {"n_clusters": [2, 3], "latent_dim": [4, 8], "hidden_dims": [0, 1]}
    scores = {(3, 4, 1): 0.9, (3, 8, 0): 0.9, (2, 4, 0): float("nan")}
    seen = []

    def run(number, params):
        seen.append((number, tuple(params.values())))
        return scores.get(tuple(params.values()), 0.1)

    best, value = search._grid_search(space, run, maximize=True)
    assert [n for n, _ in seen] == list(range(8)) and len({p for _, p in seen}) == 8
    assert best == {"n_clusters": 3, "latent_dim": 4, "hidden_dims": 1} and value == 0.9
    best, value = search._grid_search(space, lambda n, p: -scores.get(tuple(p.values()), 0.1), maximize=False)
    assert value == -0.9 and best["n_clusters"] == 3


def test_the_search_result_reads_as_the_seed_best_params_dict():
    result = search.SearchResult({"n_clusters": 3, "latent_dim": 8, "hidden_dims": [32, 16]}, 0.5, pd.DataFrame())
    assert result["n_clusters"] == 3 and dict(result) == result.best_params and len(result) == 3
    assert result.sampler == "grid"


@pytest.mark.slow
def test_optimize_hyperparameters_on_a_feature_array_without_optuna(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    X, _ = grasp_dl.prepare_stellar_data(grasp_dl.data.simulate.simulate_field("m4", n_stars=1500, seed=2))
    result = search.optimize_hyperparameters(
        X,
        n_clusters_range=[2, 3],
        latent_dims=[4],
        hidden_dims_options=[[16, 8]],
        output_dir=tmp_path,
        overrides=["trainer.max_epochs=1", "model.pretrain_epochs=1", "trainer.enable_progress_bar=false"],
    )
    assert result.sampler == "grid" and list(result.trials["n_clusters"]) == [2, 3]
    assert np.isfinite(result.best_value) and result.best_value == result.trials["clustering/silhouette"].max()


def test_the_command_line_names_the_extra_of_a_missing_hydra_plugin(monkeypatch, capsys):
    from grasp_dl import cli

    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_optuna_sweeper", None)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "-m", "hparams_search=optuna"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "grasp-dl: error: hparams_search=optuna needs hydra_optuna_sweeper" in err
    assert "pip install 'grasp-dl[sweep]'" in err
