"""The notebook facade: the CLI's training and prediction, the seed's methods, GRASP helpers, figures."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.table import Table
from matplotlib.figure import Figure
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from grasp_dl import DeepClusteringModel
from grasp_dl.api import NotFittedError
from grasp_dl.data.simulate import simulate_field
from grasp_dl.figures.plotting import (
    plot_cluster_comparison,
    plot_cmd,
    plot_latent_space,
    plot_membership,
    plot_proper_motions,
    plot_sky,
    plot_training_history,
)
from grasp_dl.grasp import add_membership_columns, cluster_statistics
from grasp_dl.inference.predict import load_clustering_module, predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime.errors import CatalogError, ConfigError, GraspDLError
from grasp_dl.runtime.gpu import gpu_memory_usage

from hydra_configs import TINY, compose_config

SEED = 5  # the simulated field of both the CLI run and the facade
#: The constructor arguments of the ``stepwise`` model (besides its output_dir).
STEPWISE_PARAMS = {"device": "cpu", "progress_bar": False}
CLUSTER_COLUMN_NAMES = {"dl_cluster", "dl_probability"}


def _renders(fig: Figure) -> bool:
    """A Figure that draws to PNG without a display."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return isinstance(fig, Figure) and buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def field() -> pd.DataFrame:
    """The simulated M4-like cone the CLI run of TINY simulates (its 2-parameter stars go unscored)."""
    return simulate_field("m4", n_stars=3000, seed=SEED)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A DEC checkpoint written by the real CLI pipeline (pipeline.train on the composed config)."""
    out = tmp_path_factory.mktemp("cli")
    return pipeline.train(compose_config("train", TINY + [f"data.simulate.seed={SEED}"], out))


@pytest.fixture(scope="module")
def stepwise(field, tmp_path_factory):
    """The same training through the seed's methods: prepare_data, pretrain_autoencoder, train_deep_clustering."""
    model = DeepClusteringModel(**STEPWISE_PARAMS, output_dir=tmp_path_factory.mktemp("facade"))
    train_loader, val_loader = model.prepare_data(field, batch_size=256)
    ae_history = model.pretrain_autoencoder(train_loader, val_loader, epochs=2)
    dec_history = model.train_deep_clustering(train_loader, epochs=2)
    return model, ae_history, dec_history


# ----------------------------------------------------------------------------- construction


def test_init_does_no_work_and_composes_the_cli_config(tmp_path):
    model = DeepClusteringModel(n_clusters=4, latent_dim=4, hidden_dims=[32, 16], model="idec", output_dir=tmp_path)
    assert not [name for name in vars(model) if name.endswith("_")]
    assert model.get_params()["n_clusters"] == 4 and "DeepClusteringModel(" in repr(model)
    cfg = model.compose_config()
    assert cfg.model.n_clusters == 4 and cfg.model.variant == "idec"
    assert cfg.model.pretrain.latent_dim == 4 and list(cfg.model.pretrain.hidden_dims) == [32, 16]
    assert cfg.paths.output_dir == str(tmp_path) and "csv" in cfg.logger and "tensorboard" in cfg.logger
    assert cfg.callbacks.tensorboard_figures.every_n_epochs == 5
    gpu = DeepClusteringModel(device="cuda:1", output_dir=tmp_path).compose_config()
    assert gpu.trainer.accelerator == "gpu" and list(gpu.trainer.devices) == [1]
    custom = DeepClusteringModel(model="dec", overrides=["model.kernel=dec"], output_dir=tmp_path).compose_config()
    assert custom.model.kernel == "dec"
    # the default is the CLI's default setting; its step-by-step deep phases train DEC
    default = DeepClusteringModel(output_dir=tmp_path)
    assert default.compose_config().model._target_.endswith("XDModule")
    # the batch size is the model's own unless given: model=xd's E-step batches, a network's 256
    assert default.compose_config().data.batch_size == 65536 and model.compose_config().data.batch_size == 256
    assert DeepClusteringModel(batch_size=128, output_dir=tmp_path).compose_config().data.batch_size == 128
    # its fallback is DEC with this estimator's network sizes
    fallback = (
        DeepClusteringModel(n_clusters=2, latent_dim=4, output_dir=tmp_path).compose_config().model.fallback_model
    )
    assert fallback._target_.endswith("DECModule") and fallback.n_clusters == 2 and fallback.pretrain.latent_dim == 4
    assert default.compose_config(deep=True).model._target_.endswith("DECModule")
    with pytest.raises(ConfigError, match="unknown model"):
        DeepClusteringModel(model="kmeans").compose_config()
    with pytest.raises(ConfigError, match="unknown device"):
        DeepClusteringModel(device="tpu").compose_config()


@pytest.mark.slow
def test_unfitted_and_misused_models_say_what_to_do(field, stepwise, tmp_path):
    model = DeepClusteringModel(device="cpu")
    with pytest.raises(NotFittedError, match="fit"):
        model.predict(field)
    with pytest.raises(NotFittedError, match="prepare_data"):
        model.pretrain_autoencoder(epochs=1)
    with pytest.raises(NotFittedError, match="fit"):
        _ = model.cluster_group_
    with pytest.raises(NotFittedError, match="fit"):
        model.save_model(tmp_path / "model.ckpt")
    with pytest.raises(SklearnNotFittedError):  # scikit-learn's own check agrees
        check_is_fitted(model)
    assert issubclass(NotFittedError, GraspDLError) and issubclass(NotFittedError, SklearnNotFittedError)
    prepared = DeepClusteringModel(device="cpu", output_dir=tmp_path)
    prepared.prepare_data(field)
    with pytest.raises(NotFittedError, match="pretrain_autoencoder"):
        prepared.train_deep_clustering()
    trained, _, _ = stepwise
    foreign = trained.datamodule_.predict_dataloader()
    with pytest.raises(ConfigError, match="does not come from prepare_data"):
        trained.train_deep_clustering(foreign, epochs=1)
    with pytest.raises(ConfigError, match="input_dim=3"):
        DeepClusteringModel(input_dim=3, output_dir="unused").prepare_data(field)


# ----------------------------------------------------------------------------- the CLI's behaviour


@pytest.mark.slow
def test_step_by_step_training_is_the_cli_run(field, cli_run, stepwise):
    model, ae_history, dec_history = stepwise
    cli_table, cli_summary = predict_catalog(load_clustering_module(cli_run.checkpoint), field)
    table, summary = model.predict_table(field)
    pd.testing.assert_frame_equal(table, cli_table)
    assert summary == cli_summary
    assert list(ae_history["epoch"]) == [0, 1] and list(dec_history["epoch"]) == [0, 1]
    assert {"train/loss", "val/loss"} <= set(ae_history.columns) and "val/entropy" in dec_history.columns
    assert list(model.history_["phase"]) == ["autoencoder"] * 2 + ["clustering"] * 2
    assert model.checkpoint_.is_file() and str(model.checkpoint_) in model.summary_
    assert model.feature_names_ == ["xi", "eta", "pmra", "pmdec", "parallax"] and model.n_features_in_ == 5
    assert 0 <= model.cluster_group_ < 3 and "clustering/silhouette" in model.metrics_


@pytest.mark.slow
def test_estimator_rules_hold_after_training_and_loading(stepwise, tmp_path):
    """Constructor arguments stay as given; everything training or loading sets ends in '_'."""
    model, _, _ = stepwise
    given = DeepClusteringModel(**STEPWISE_PARAMS, output_dir=model.output_dir).get_params()
    assert model.get_params() == given
    params = set(given)
    state = [name for name in vars(model) if name not in params and not name.startswith("_")]
    assert state and all(name.endswith("_") for name in state), state
    assert {"module_", "autoencoder_", "datamodule_", "history_", "checkpoint_", "n_clusters_"} <= set(state)
    check_is_fitted(model)
    # a checkpoint of other sizes fills the fitted attributes, never the constructor's
    loaded = DeepClusteringModel(n_clusters=5, latent_dim=2, hidden_dims=(8,), model="vade", device="cpu")
    before = loaded.get_params()
    loaded.load_model(model.checkpoint_)
    assert loaded.get_params() == before
    assert (loaded.n_clusters_, loaded.latent_dim_, loaded.hidden_dims_, loaded.model_) == (3, 8, (64, 32, 16), "dec")
    assert all(name.endswith("_") for name in vars(loaded) if name not in params and not name.startswith("_"))


@pytest.mark.slow
def test_load_cli_checkpoint_predicts_identically_and_reads_its_history(field, cli_run):
    model = DeepClusteringModel.load(cli_run.checkpoint, device="cpu")
    expected, _ = predict_catalog(load_clustering_module(cli_run.checkpoint), field)
    pd.testing.assert_frame_equal(model.predict_table(field)[0], expected)
    assert model.model_ == "dec" and model.n_clusters_ == 3 and model.latent_dim_ == 8
    # the run's TensorBoard logs give the history of both phases
    assert set(model.history_["phase"]) == {"autoencoder", "clustering"}
    assert model.history_["train/loss"].notna().all()
    assert _renders(model.plot_training_history())


@pytest.mark.slow
def test_load_vade_cli_checkpoint_predicts_identically(field, tmp_path):
    result = pipeline.train(compose_config("train", TINY + ["model=vade", f"data.simulate.seed={SEED}"], tmp_path))
    model = DeepClusteringModel.load(result.checkpoint, device="cpu")
    expected, _ = predict_catalog(load_clustering_module(result.checkpoint), field)
    table, _ = model.predict_table(field)
    pd.testing.assert_frame_equal(table, expected)
    assert model.model_ == "vade" and model.model == "auto" and "member_prob_std" in table.columns
    labels, prob = model.predict_clusters(field)
    np.testing.assert_array_equal(labels, expected["label"])
    assert model.get_latent_representation(field).shape == (len(field), 8)


# ----------------------------------------------------------------------------- predictions


@pytest.mark.slow
def test_prediction_methods_agree_row_for_row(field, stepwise):
    model, _, _ = stepwise
    table, _ = model.predict_table(field)
    labels, prob = model.predict_clusters(field)
    assert labels.shape == (len(field),) and prob.shape == (len(field), 3)
    np.testing.assert_array_equal(labels, model.predict(field))
    np.testing.assert_array_equal(prob, model.predict_proba(field))
    unscored = labels == -1
    assert unscored.any() and np.isnan(prob[unscored]).all()
    np.testing.assert_allclose(prob[~unscored].sum(axis=1), 1.0, atol=1e-5)
    latent = model.get_latent_representation(field)
    assert latent.shape == (len(field), 8)
    np.testing.assert_array_equal(np.isnan(latent).all(axis=1), unscored)
    # the facade prepares a catalogue exactly as predict_catalog: same groups from its latent points
    with torch.no_grad():
        q = model.module_.assign(torch.from_numpy(latent[~unscored]).float()).numpy()
    np.testing.assert_array_equal(q.argmax(axis=1), labels[~unscored])


@pytest.mark.slow
def test_evaluate_and_cluster_statistics(field, stepwise):
    model, _, _ = stepwise
    metrics = model.evaluate_clustering(field, "truth")
    assert metrics == model.evaluate_clustering(field, field["truth"].to_numpy())
    assert metrics["n_scored"] + metrics["n_unscored"] == len(field)
    assert metrics["member_f1"] > 0.6 and 0 <= metrics["brier"] < 0.2 and "silhouette" in metrics
    stats = model.cluster_statistics(field)
    assert stats["n_stars"].sum() == len(field) and -1 in stats.index
    np.testing.assert_allclose(stats["fraction"].sum(), 1.0)
    cluster = stats[stats["is_cluster"]]
    assert len(cluster) == 1 and cluster.index[0] == model.cluster_group_
    assert abs(cluster["pmra_mean"].iloc[0] - (-12.51)) < 1.5 and {"pmdec_std", "parallax_mean"} <= set(stats.columns)
    plain = cluster_statistics(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), [0, 0, 1])
    expected_columns = ["n_stars", "fraction", "feature_0_mean", "feature_0_std", "feature_1_mean", "feature_1_std"]
    assert list(plain.columns) == expected_columns
    assert plain.loc[0, "feature_1_mean"] == 3.0 and plain.loc[1, "n_stars"] == 1
    with pytest.raises(ConfigError, match="one label per star"):
        cluster_statistics(field, [0, 1])


@pytest.mark.slow
def test_save_and_load_round_trip(field, stepwise, tmp_path):
    model, _, _ = stepwise
    path = model.save_model(tmp_path / "sub" / "model.ckpt")
    raw = torch.load(path, map_location="cpu", weights_only=True)  # safe loading, as grasp-dl predict does
    assert "centers" in raw["state_dict"] and raw["hyper_parameters"]["preprocessing"]["feature_names"]
    expected, _ = model.predict_table(field)
    pd.testing.assert_frame_equal(predict_catalog(load_clustering_module(path), field)[0], expected)
    fresh = DeepClusteringModel(n_clusters=5, latent_dim=2, device="cpu").load_model(path)
    assert fresh.n_clusters_ == 3 and fresh.latent_dim_ == 8 and fresh.checkpoint_ == path
    assert fresh.n_clusters == 5 and fresh.latent_dim == 2  # the constructor's arguments stay as given
    pd.testing.assert_frame_equal(fresh.predict_table(field)[0], expected)
    output, summary_path = model.save_predictions(field, tmp_path / "members.ecsv")
    written = Table.read(output, format="ascii.ecsv")
    assert len(written) == len(field) and list(written["label"]) == list(expected["label"])
    assert summary_path == tmp_path / "members.summary.json"
    assert json.loads(summary_path.read_text())["cluster_group"] == model.cluster_group_
    # <stem>.summary.json, the name grasp-dl predict gives: a dotted name keeps its dots
    _, dotted = model.save_predictions(field, tmp_path / "members.v2.csv")
    assert dotted.name == "members.v2.summary.json"
    # predictions written over the catalogue they score are refused, and the catalogue is kept
    cone = tmp_path / "cone.csv"
    field.to_csv(cone, index=False)
    before = cone.read_bytes()
    with pytest.raises(ConfigError, match="same file as data"):
        model.save_predictions(cone, cone)
    assert cone.read_bytes() == before


@pytest.mark.slow
def test_fit_on_a_feature_array(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    X = np.concatenate([c + rng.normal(size=(400, 3)) for c in centres])
    truth = np.repeat([0, 1, 2], 400)
    model = DeepClusteringModel(
        latent_dim=2,
        hidden_dims=[16],
        pretrain_epochs=3,
        epochs=2,
        device="cpu",
        progress_bar=False,
        output_dir=tmp_path,
        features=["pmra", "pmdec", "parallax"],
    )
    assert model.fit(X) is model
    assert model.feature_names_ == ["pmra", "pmdec", "parallax"]
    labels = model.predict(X)
    assert labels.shape == (1200,) and (labels >= 0).all()
    assert model.evaluate_clustering(X, truth)["ari"] > 0.5
    assert set(model.history_["phase"]) == {"autoencoder", "clustering"} and model.autoencoder_ is not None
    X_gap = X.copy()
    X_gap[0, 1] = np.nan
    assert model.predict(X_gap)[0] == -1
    with pytest.raises(ConfigError, match="3 features"):
        model.predict(X[:, :2])
    generic = DeepClusteringModel(device="cpu")._array_feature_names(3)
    assert generic == ["feature_0", "feature_1", "feature_2"]  # ra/dec cannot come from an array


@pytest.mark.slow
def test_catalogue_model_refuses_a_feature_array(field, stepwise):
    model, _, _ = stepwise
    with pytest.raises(ConfigError, match="sky positions"):
        model.predict(np.zeros((4, 5)))


# ----------------------------------------------------------------------------- GRASP


class GraspSample:
    """What GRASP's samples look like: a table in ``.data`` plus other state."""

    def __init__(self, data, name="Pal 13"):
        self.data = data
        self.name = name


@pytest.mark.slow
def test_add_membership_columns_keeps_kind_and_order(field, stepwise):
    model, _, _ = stepwise
    expected, _ = model.predict_table(field)
    shuffled = field.sample(frac=1.0, random_state=1)  # a non-default index must not matter
    out = add_membership_columns(shuffled, model)
    assert isinstance(out, pd.DataFrame) and CLUSTER_COLUMN_NAMES <= set(out.columns)
    assert "dl_cluster" not in shuffled.columns  # a copy by default
    assert (out.index == shuffled.index).all()
    by_source = expected.set_index("source_id")
    np.testing.assert_array_equal(out["dl_cluster"], by_source.loc[out["source_id"], "label"])
    # the same stars in another order go through the network in other batches: equal to float precision
    expected_prob = by_source.loc[out["source_id"], "member_prob"]
    np.testing.assert_allclose(out["dl_probability"], expected_prob, rtol=1e-5, atol=1e-7)
    unscored = out["dl_cluster"] == -1
    assert unscored.any() and out.loc[unscored, "dl_probability"].isna().all()

    table = Table.from_pandas(field.drop(columns=["truth"]))
    out_table = add_membership_columns(table, model)
    assert isinstance(out_table, Table) and "dl_cluster" not in table.colnames
    np.testing.assert_array_equal(out_table["dl_cluster"], expected["label"])

    sample = GraspSample(field.copy())
    same = add_membership_columns(sample, model, inplace=True)
    assert same is sample and "dl_probability" in sample.data.columns
    other = add_membership_columns(GraspSample(table), model.checkpoint_)  # a checkpoint path works too
    assert isinstance(other, GraspSample) and other.name == "Pal 13" and isinstance(other.data, Table)
    np.testing.assert_array_equal(other.data["dl_cluster"], expected["label"])
    with pytest.raises(CatalogError, match="read_catalog"):
        add_membership_columns("cone.csv", model)


def test_gpu_memory_usage_reports_the_device():
    usage = gpu_memory_usage()
    assert {"available", "device", "name", "allocated_mb", "reserved_mb", "total_mb", "free_mb"} <= set(usage)
    if torch.cuda.is_available():
        assert usage["available"] and usage["total_mb"] > 0 and usage["device"].startswith("cuda")
    else:
        assert not usage["available"] and usage["device"] == "cpu" and "no GPU" in usage["name"]
        assert usage["allocated_mb"] == usage["total_mb"] == 0.0


# ----------------------------------------------------------------------------- figures


@pytest.mark.slow
def test_facade_figures_render_headless(field, stepwise):
    model, _, _ = stepwise
    history = model.plot_training_history()
    assert [ax.get_title() for ax in history.axes] == ["autoencoder", "clustering"]
    latent = model.plot_latent_space(field, labels="truth")
    assert {t.get_text() for t in latent.axes[0].get_legend().get_texts()} == set(field["truth"].unique())
    tsne = model.plot_latent_space(field, method="tsne", max_points=200)
    assert "t-SNE" in tsne.axes[0].get_xlabel()
    members = model.plot_members(field)
    titles = [ax.get_title() for ax in members.axes]
    assert {"proper motions", "sky", "colour-magnitude diagram"} <= set(titles)
    assert all(_renders(fig) for fig in (history, latent, tsne, members))
    with pytest.raises(ConfigError, match="tsne"):
        model.plot_latent_space(field, method="umap")


def test_plotting_functions_return_figures(field):
    rng = np.random.default_rng(1)
    prob = rng.uniform(size=len(field))
    prob[:10] = np.nan  # unscored stars are drawn in grey
    pm = plot_proper_motions(field["pmra"], field["pmdec"], prob)
    assert pm.axes[0].get_xlim()[1] < np.nanmax(field["pmra"])  # zoomed on the bulk, not the tails
    sky = plot_sky(field["ra"], field["dec"], labels=field["truth"], frame="radec")
    assert sky.axes[0].xaxis_inverted()  # east to the left
    cmd = plot_cmd(field["bp_rp"], field["phot_g_mean_mag"], prob)
    assert cmd.axes[0].yaxis_inverted()  # bright stars up
    both = plot_membership(field, prob, center=field.attrs["center"])
    assert len([ax for ax in both.axes if ax.get_label() != "<colorbar>"]) == 3
    latent = plot_latent_space(rng.normal(size=(300, 4)), labels=rng.integers(0, 3, 300))
    assert "PC1" in latent.axes[0].get_xlabel()
    history = pd.DataFrame({"phase": ["autoencoder"] * 3, "epoch": [0, 1, 2], "train/loss": [3.0, 2.0, 1.0]})
    assert len(plot_training_history(history).axes[0].get_lines()) == 1
    features = field[["pmra", "pmdec", "parallax"]].to_numpy()
    predicted = rng.integers(-1, 3, len(field))
    comparison = plot_cluster_comparison(features, field["truth"], predicted, ["pmra", "pmdec", "parallax"])
    assert len(comparison.axes) == 4 and comparison.axes[0].get_title() == "true groups"
    assert all(_renders(fig) for fig in (pm, sky, cmd, both, latent, comparison))
    with pytest.raises(ConfigError, match="one label per row"):
        plot_cluster_comparison(features, field["truth"][:5], field["truth"], ["a", "b", "c"])
    with pytest.raises(ConfigError, match="no training history"):
        plot_training_history(pd.DataFrame())
    with pytest.raises(ConfigError, match="frame"):
        plot_sky([0.0], [0.0], frame="galactic")


def test_the_estimator_names_the_model_it_holds() -> None:
    from grasp_dl.models.dec import DECModule
    from grasp_dl.models.vade import VaDEModule
    from grasp_dl.models.xd import XDModule

    cases = [
        (XDModule(5, n_clusters=3), "xd"),
        (DECModule(5), "dec"),
        (DECModule(5, variant="idec"), "idec"),
        (VaDEModule(5), "vade"),
    ]
    for module, name in cases:
        estimator = DeepClusteringModel()
        estimator._set_module(module, None)
        assert estimator.model_ == name, type(module).__name__
