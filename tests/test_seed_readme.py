"""The seed's README code blocks run as written, ``grasp.deep_learning`` -> ``grasp_dl`` the only change.

Each block below is the seed README's text, verbatim (package path included); :func:`run_block`
makes the one substitution and executes it in a namespace that holds what the README leaves to
the reader: ``cluster_data`` (a simulated M4-like cone with 2-parameter stars), ``ground_truth``
(its ``truth`` column), ``data``, and for the GRASP block a stand-in ``grasp.core.Cluster``.
Two seed lines cannot run as they are: the GPU block's ``torch.cuda.get_device_name()`` needs a
GPU (that block runs whole under the ``gpu`` marker), and the GRASP block's
``# ... training code ...`` elides the training (filled in with the Basic block's calls).
"""

from __future__ import annotations

import sys
import tempfile
import types

import numpy as np
import pandas as pd
import pytest
import torch

import grasp_dl
from grasp_dl.data.simulate import simulate_field
from grasp_dl.jobs import search

# ----------------------------------------------------------------------------- the seed's blocks

BASIC_USAGE = """
import numpy as np
from grasp.deep_learning import DeepClusteringModel, prepare_stellar_data

# Load your globular cluster data
stellar_data, feature_names = prepare_stellar_data(
    cluster_data,
    features=['ra', 'dec', 'pmra', 'pmdec', 'parallax'],
    outlier_removal=True
)

# Initialize model
model = DeepClusteringModel(
    input_dim=5,
    latent_dim=8,
    n_clusters=3,
    device='auto'  # Automatically use GPU if available
)

# Prepare data
train_loader, val_loader = model.prepare_data(stellar_data, batch_size=256)

# Train the model
model.pretrain_autoencoder(train_loader, val_loader, epochs=50)
model.train_deep_clustering(train_loader, epochs=30)

# Get cluster predictions
predicted_labels, cluster_probs = model.predict_clusters(stellar_data)
"""

ADVANCED_FEATURES = """
# Use color features for better clustering
from grasp.deep_learning.utils import create_color_features

cluster_data_with_colors = create_color_features(
    cluster_data,
    magnitude_columns=['G', 'BP', 'RP']
)

# Comprehensive evaluation
from grasp.deep_learning.utils import evaluate_clustering, plot_cluster_comparison

metrics = evaluate_clustering(
    true_labels=ground_truth,
    predicted_labels=predicted_labels,
    data=stellar_data
)

# Visualize results
model.plot_latent_space(stellar_data, labels=predicted_labels)
plot_cluster_comparison(stellar_data, ground_truth, predicted_labels, feature_names)
"""

GPU_ACCELERATION = """
# Check GPU availability
import torch
print(f"CUDA available: {torch.cuda.is_available()}")
print(f"GPU: {torch.cuda.get_device_name()}")

# Monitor GPU memory usage
from grasp.deep_learning.utils import gpu_memory_usage
gpu_memory_usage()
"""
#: The GPU block's grasp lines: they run on any machine.
GPU_MEMORY = GPU_ACCELERATION[GPU_ACCELERATION.index("# Monitor GPU memory usage") :]

MEMORY_OPTIMIZATION = """
# Use smaller batch sizes
train_loader, _ = model.prepare_data(data, batch_size=128)

# Reduce model complexity
model = DeepClusteringModel(
    input_dim=5,
    latent_dim=4,
    hidden_dims=[32, 16]  # Smaller architecture
)
"""

HYPERPARAMETER_OPTIMIZATION = """
from grasp.deep_learning.utils import optimize_hyperparameters

best_params = optimize_hyperparameters(
    data=stellar_data,
    n_clusters_range=[2, 3, 4, 5],
    latent_dims=[4, 8, 16],
    hidden_dims_options=[[32, 16], [64, 32, 16]]
)
"""

GRASP_INTEGRATION = """
from grasp.core import Cluster
from grasp.deep_learning import DeepClusteringModel

# Load cluster using GRASP
cluster = Cluster("NGC6121")  # M4 globular cluster

# Apply deep learning clustering
stellar_data, features = prepare_stellar_data(cluster.data)
model = DeepClusteringModel(input_dim=len(features), n_clusters=3)

# Train and predict
# ... training code ...
labels, probs = model.predict_clusters(stellar_data)

# Add results back to cluster data
cluster.data['dl_cluster'] = labels
cluster.data['dl_probability'] = probs.max(axis=1)
"""
#: What the GRASP block elides, in the Basic block's words (short epochs: the block is about the columns).
GRASP_TRAINING = """train_loader, val_loader = model.prepare_data(stellar_data, batch_size=256)
model.pretrain_autoencoder(train_loader, val_loader, epochs=3)
model.train_deep_clustering(train_loader, epochs=3)"""

N_STARS = 3000


def run_block(block: str, namespace: dict) -> dict:
    """Execute a seed README block with the package path changed, and nothing else."""
    exec(compile(block.replace("grasp.deep_learning", "grasp_dl"), "<seed README>", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.fixture(scope="module")
def cluster_data() -> pd.DataFrame:
    """A small simulated M4-like cone: G/BP/RP magnitudes, 2-parameter stars, a truth column."""
    return simulate_field("m4", n_stars=N_STARS, seed=3)


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    """Run outputs (outputs/notebook/...) go to tmp_path."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def basic(cluster_data, tmp_path_factory) -> dict:
    """The namespace after the Basic Usage block (it trains 50 + 30 epochs, as written)."""
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path_factory.mktemp("basic"))
    try:
        return run_block(BASIC_USAGE, {"cluster_data": cluster_data.copy()})
    finally:
        mp.undo()


# ----------------------------------------------------------------------------- fast blocks


def test_data_preparation_unpacks_to_two_values_as_in_the_seed(cluster_data):
    ns = run_block(BASIC_USAGE[: BASIC_USAGE.index("# Initialize model")], {"cluster_data": cluster_data})
    stellar_data, feature_names = ns["stellar_data"], ns["feature_names"]
    assert feature_names == ["xi", "eta", "pmra", "pmdec", "parallax"]
    prepared = grasp_dl.prepare_stellar_data(
        cluster_data, features=["ra", "dec", "pmra", "pmdec", "parallax"], outlier_removal=True
    )
    np.testing.assert_array_equal(stellar_data, prepared.features)
    assert len(stellar_data) == prepared.mask.sum() < len(cluster_data)  # 2-parameter stars left out
    assert np.isfinite(stellar_data).all()


def test_the_utils_imports_and_create_color_features_run_as_written(cluster_data):
    block = ADVANCED_FEATURES[: ADVANCED_FEATURES.index("metrics = ")]
    ns = run_block(block, {"cluster_data": cluster_data})
    colours = ns["cluster_data_with_colors"]
    np.testing.assert_allclose(colours["bp_g"], cluster_data["phot_bp_mean_mag"] - cluster_data["phot_g_mean_mag"])
    assert ns["plot_cluster_comparison"] is grasp_dl.figures.plotting.plot_cluster_comparison
    assert ns["evaluate_clustering"] is grasp_dl.metrics.evaluate_clustering


def test_gpu_memory_usage_runs_as_written():
    ns = run_block(GPU_MEMORY, {})
    usage = ns["gpu_memory_usage"]()
    assert usage["available"] == torch.cuda.is_available()
    assert {"allocated_mb", "reserved_mb", "total_mb"} <= set(usage)


@pytest.mark.gpu
def test_the_whole_gpu_block_runs_on_a_gpu(capsys):
    run_block(GPU_ACCELERATION, {})
    assert "CUDA available: True" in capsys.readouterr().out


def test_memory_optimisation_runs_as_written(cluster_data):
    stellar_data, _ = grasp_dl.prepare_stellar_data(cluster_data)
    model = grasp_dl.DeepClusteringModel(input_dim=5, epochs=1, pretrain_epochs=1)
    ns = run_block(
        MEMORY_OPTIMIZATION, {"model": model, "data": stellar_data, "DeepClusteringModel": grasp_dl.DeepClusteringModel}
    )
    assert ns["train_loader"].batch_size == 128
    assert model.n_features_in_ == 5
    smaller = ns["model"]
    assert (smaller.input_dim, smaller.latent_dim, list(smaller.hidden_dims)) == (5, 4, [32, 16])


# ----------------------------------------------------------------------------- blocks that train


@pytest.mark.slow
def test_basic_usage_runs_as_written_and_predicts_per_catalogue_row(basic, cluster_data):
    labels, probs = basic["predicted_labels"], basic["cluster_probs"]
    assert labels.shape == (len(cluster_data),) and probs.shape == (len(cluster_data), 3)
    kept = basic["stellar_data"].catalog_rows.mask
    assert (labels[~kept] == -1).all() and np.isnan(probs[~kept]).all()
    assert (labels[kept] >= 0).all() and np.allclose(probs[kept].sum(axis=1), 1, atol=1e-5)
    # The same numbers as scoring the bare matrix, one row per array row.
    bare_labels, _ = basic["model"].predict_clusters(np.asarray(basic["stellar_data"]))
    np.testing.assert_array_equal(labels[kept], bare_labels)


@pytest.mark.slow
def test_advanced_features_run_as_written(basic):
    ns = dict(basic)
    ns["ground_truth"] = ns["cluster_data"]["truth"]  # per catalogue row, as a user's table holds it
    run_block(ADVANCED_FEATURES, ns)
    metrics = ns["metrics"]
    assert metrics["n_scored"] == len(ns["stellar_data"]) and metrics["n_unscored"] == 0
    assert 0 <= metrics["ari"] <= 1 and np.isfinite(metrics["silhouette"])
    # Truth given per row of the feature matrix works the same way.
    kept = ns["stellar_data"].catalog_rows.mask
    again = grasp_dl.evaluate_clustering(
        ns["ground_truth"].to_numpy()[kept], ns["predicted_labels"], ns["stellar_data"]
    )
    assert again["ari"] == metrics["ari"]


@pytest.mark.slow
def test_hyperparameter_optimisation_runs_as_written_without_optuna(basic, monkeypatch, tmp_path):
    """The whole 24-combination grid, each trial shrunk to one epoch per phase (the config fixtures' way)."""
    monkeypatch.setitem(sys.modules, "optuna", None)  # the plain install: no [sweep] extra
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the trials' run directories
    compose = search._compose
    monkeypatch.setattr(
        search,
        "_compose",
        lambda overrides, output_dir: compose(
            [
                *overrides,
                "trainer.max_epochs=1",
                "model.pretrain_epochs=1",
                "trainer.enable_progress_bar=false",
                "logger=csv",
            ],
            output_dir,
        ),
    )
    ns = run_block(HYPERPARAMETER_OPTIMIZATION, {"stellar_data": basic["stellar_data"]})
    best = ns["best_params"]
    assert best.sampler == "grid" and len(best.trials) == 4 * 3 * 2
    assert best["n_clusters"] in (2, 3, 4, 5) and best.best_params["hidden_dims"] in ([32, 16], [64, 32, 16])
    assert best.best_value == best.trials["clustering/silhouette"].max()


class _Cluster:
    """A stand-in for GRASP's ``grasp.core.Cluster``: ``.data`` is the cone's DataFrame."""

    def __init__(self, name: str) -> None:
        assert name == "NGC6121"
        self.name = name
        self.data = simulate_field("m4", n_stars=N_STARS, seed=5)


@pytest.mark.slow
def test_grasp_integration_runs_as_written_with_rows_lacking_astrometry(monkeypatch):
    grasp = types.ModuleType("grasp")
    core = types.ModuleType("grasp.core")
    core.Cluster = _Cluster
    grasp.core = core
    monkeypatch.setitem(sys.modules, "grasp", grasp)
    monkeypatch.setitem(sys.modules, "grasp.core", core)
    block = GRASP_INTEGRATION.replace("# ... training code ...", GRASP_TRAINING)
    assert block.count("\n") == GRASP_INTEGRATION.count("\n") + 2  # only the elided line is filled in
    ns = run_block(block, {"prepare_stellar_data": grasp_dl.prepare_stellar_data})
    data = ns["cluster"].data
    no_astrometry = data["pmra"].isna()
    assert no_astrometry.sum() > 100  # the cone has 2-parameter stars, left out of the features
    assert (data.loc[no_astrometry, "dl_cluster"] == -1).all()
    assert data.loc[no_astrometry, "dl_probability"].isna().all()
    scored = data["dl_cluster"] >= 0
    assert scored.sum() == len(ns["stellar_data"])
    assert data.loc[scored, "dl_probability"].between(1 / 3 - 1e-6, 1 + 1e-6).all()
    # Row alignment: the scored rows carry the model's results for the feature matrix, in order.
    bare_labels, bare_probs = ns["model"].predict_clusters(np.asarray(ns["stellar_data"]))
    np.testing.assert_array_equal(data.loc[scored, "dl_cluster"].to_numpy(), bare_labels)
    np.testing.assert_allclose(data.loc[scored, "dl_probability"].to_numpy(), bare_probs.max(axis=1))
