"""model=xd: the cluster + field mixture (science) and XDModule (train, checkpoint, predict, load)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from grasp_dl.api import DeepClusteringModel
from grasp_dl.data.astrometry import StarData, star_data
from grasp_dl.data.examples import vb21_field
from grasp_dl.data.prepare import estimate_center
from grasp_dl.data.simulate import load_simulation_config, simulate_field
from grasp_dl.inference.predict import load_clustering_module, predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.mixtures.cluster_field import (
    ClusterFieldMixture,
    pack,
    packed_inverse,
    packed_logpdf,
    packed_logpdf_rows,
    unpack,
)
from grasp_dl.models.xd import XDModule
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import compose_config

XD_TINY = [
    "model=xd",
    "data.simulate.n_stars=3000",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def _stars(catalog: pd.DataFrame):
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    return star_data(catalog, center, ("pmra", "pmdec", "parallax"))


def _f1(member_prob: np.ndarray, truth: np.ndarray) -> float:
    predicted = np.nan_to_num(member_prob) > 0.5
    tp = float((predicted & truth).sum())
    return 2 * tp / max(predicted.sum() + truth.sum(), 1)


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("d", [2, 3])
def test_closed_form_inverse_and_density_match_numpy(d):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, d, d))
    cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d)
    inv, logdet = packed_inverse(pack(cov), d)
    np.testing.assert_allclose(unpack(inv, d), np.linalg.inv(cov), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(cov)[1], rtol=1e-10)
    diff = rng.normal(size=(50, d))
    from scipy.stats import multivariate_normal

    expected = [multivariate_normal(np.zeros(d), c).logpdf(x) for x, c in zip(diff, cov, strict=False)]
    np.testing.assert_allclose(packed_logpdf(diff.T, pack(cov), d), expected, rtol=1e-8)


@pytest.mark.parametrize("d", [2, 3])
def test_candidate_densities_from_broadcast_rows_are_bit_for_bit_those_of_the_stacked_covariances(d):
    """The E-step's candidate scales change only the proper-motion diagonal: the other packed rows are
    passed once, (1, n), and broadcast; every value is the same floating-point expression as before."""
    rng = np.random.default_rng(1)
    n, candidates = 257, 13
    a = rng.normal(size=(n, d, d))
    err = torch.as_tensor(pack(a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d)))  # (m, n)
    g = torch.as_tensor(rng.uniform(0.01, 0.5, size=(candidates, n)))
    diff = torch.as_tensor(rng.normal(size=(d, 1, n)))
    diag = (0, 2) if d == 2 else (0, 3, 5)
    stacked = err[:, None, :].expand(-1, candidates, -1).clone()
    rows = list(err[:, None, :].unbind(0))
    for k in diag[:2]:
        stacked[k] += g
        rows[k] = rows[k] + g
    if d == 3:
        stacked[diag[2]] += 0.04**2
        rows[diag[2]] = rows[diag[2]] + 0.04**2
    assert rows[1].shape == (1, n)
    assert torch.equal(packed_logpdf_rows(diff, rows, d), packed_logpdf(diff, stacked, d))


# ----------------------------------------------------------------------------- science


def test_fitted_mixture_recovers_the_simulated_cluster_mean_pm_within_its_error():
    catalog = simulate_field("m4", n_stars=5000, seed=3)
    truth = np.asarray(load_simulation_config("m4")["cluster"]["pm_mean"], float)
    stars = _stars(catalog)
    mixture = ClusterFieldMixture(seed=0).fit(stars)
    q = mixture.predict_proba(stars)[:, 0]
    has = stars.has_astrometry
    # Standard error of the deconvolved mean: the inverse of the summed per-star precisions (per axis).
    var = mixture.sigma_**2 + stars.covariances[has][:, [0, 1], [0, 1]]
    error = 1.0 / np.sqrt((q[has, None] / var).sum(0))
    offset = np.abs(mixture.cluster_mean_[:2] - truth)
    assert (offset < 3.0 * error + 0.01).all(), (mixture.cluster_mean_, truth, error)
    assert _f1(q, catalog["truth"].to_numpy() == "cluster") > 0.9


def _model_field(seed: int, n_cluster: int, separation: float, n_field: int = 1500):
    """Stars drawn from the mixture's own model: a flat field (pm sd 2 mas/yr) and a Plummer cluster."""
    rng = np.random.default_rng(seed)
    u = rng.random(n_cluster)
    radius = np.r_[0.2 * np.sqrt(rng.random(n_field)), np.minimum(0.01 * np.sqrt(u / (1 - u)), 0.2)]
    mean = np.array([separation, 0.0])
    pm = np.concatenate([rng.normal(0, 2.0, (n_field, 2)), mean + rng.normal(0, 0.4, (n_cluster, 2))])
    pm += rng.normal(0, 0.1, pm.shape)
    return StarData(pm, np.tile(np.eye(2) * 0.01, (len(pm), 1, 1)), radius), mean


def test_the_fitted_means_standard_error_counts_the_uncertain_memberships():
    options = {"n_field": 1, "n_starts": 1, "max_iter": 60, "crowding": False, "dispersion_profile": False}
    # 40 members a field dispersion's half from the field's mean: memberships are uncertain
    z, z_members = [], []
    for seed in range(40):
        stars, mean = _model_field(seed, 40, 1.0)
        mixture = ClusterFieldMixture(seed=seed, **options).fit(stars)
        error = np.sqrt(np.diag(mixture.cluster_mean_cov_))
        members_error = np.sqrt(mixture.sigma_**2 + 0.01) / np.sqrt(mixture.predict_proba(stars)[:, 0].sum())
        z.append((mixture.cluster_mean_ - mean) / error)
        z_members.append((mixture.cluster_mean_ - mean) / members_error)
    rms, rms_members = np.sqrt(np.mean(np.square(z))), np.sqrt(np.mean(np.square(z_members)))
    assert 0.8 < rms < 1.2, rms  # the error is honest...
    assert rms_members > 1.15 and rms_members > rms + 0.08  # ...where the members' alone understates it
    # certain memberships: the error is the members' own, sqrt(sigma^2 + e^2) / sqrt(N)
    stars, _ = _model_field(0, 400, 20.0)
    mixture = ClusterFieldMixture(**options).fit(stars)
    np.testing.assert_allclose(np.sqrt(np.diag(mixture.cluster_mean_cov_)), math.sqrt(0.17) / 20, rtol=0.15)
    # kept with the state; a state written before it was kept restores without it
    state = mixture.state_dict()
    restored = ClusterFieldMixture().load_state_dict(state)
    np.testing.assert_allclose(restored.cluster_mean_cov_, mixture.cluster_mean_cov_)
    old = {k: v for k, v in state.items() if k != "cluster_mean_cov"}
    assert ClusterFieldMixture().load_state_dict(old).cluster_mean_cov_ is None


def test_a_two_percent_cluster_far_in_the_fields_wings_is_found():
    # M4-like: its proper motion sits beyond the field's 98th percentile and it is only 2% of the cone
    # (a start from the centre's median motion and a Gaussian mixture of the rest named a field group).
    catalog = simulate_field("m4", n_stars=10000, seed=0, cluster={"fraction": 0.02})
    truth = catalog["truth"].to_numpy() == "cluster"
    stars = _stars(catalog)
    new = ClusterFieldMixture(seed=0).fit(stars)
    assert _f1(new.predict_proba(stars)[:, 0], truth) > 0.85
    assert np.hypot(*(new.cluster_mean_[:2] - np.array([-12.5, -19.0]))) < 0.3


def test_a_crowded_real_field_keeps_the_whole_cluster_in_one_component():
    """NGC 6652 (Gaia EDR3): a mixture of three free Gaussians splits the cluster into a concentrated broad
    component and a flat narrow one; the physical cluster model keeps it whole."""
    catalog, reference = vb21_field("ngc6652")
    published = catalog[["source_id"]].merge(reference, how="left")["memberprob"].fillna(0).to_numpy() > 0.5
    stars = _stars(catalog)
    mixture = ClusterFieldMixture(seed=0).fit(stars)
    assert _f1(mixture.predict_proba(stars)[:, 0], published) > 0.9
    # VB21's mean proper motion of NGC 6652: (-5.484, -4.274) mas/yr.
    assert np.hypot(*(mixture.cluster_mean_[:2] - np.array([-5.484, -4.274]))) < 0.1
    assert mixture.beta_ > 0.1  # the crowded core's errors were scaled up


@pytest.mark.slow
def test_a_cone_dominated_by_a_concentrated_cluster_keeps_its_wings_with_a_free_profile_slope():
    # 70% members in a 3' cone around a King cluster of high concentration (c = 2.5): its wings fall
    # slower than Plummer's r^-4, and a flat "field" Gaussian at the cluster's own motion took them.
    catalog = simulate_field("ngc6558", n_stars=8000, seed=0, radius_deg=0.05, cluster={"fraction": 0.7})
    truth = catalog["truth"].to_numpy() == "cluster"
    stars = _stars(catalog)
    plummer = ClusterFieldMixture(free_slope=False, field_min_sd=0.0, seed=0).fit(stars)
    assert _f1(plummer.predict_proba(stars)[:, 0], truth) < 0.8
    # the floor on the field's width (1 mas/yr, the default) leaves no flat Gaussian that tight
    floored = ClusterFieldMixture(free_slope=False, seed=0).fit(stars)
    assert _f1(floored.predict_proba(stars)[:, 0], truth) > 0.9
    free = ClusterFieldMixture(seed=0).fit(stars)
    assert _f1(free.predict_proba(stars)[:, 0], truth) > 0.9 and free.slope_ < 4.0


def test_the_fit_is_seeded_and_its_state_restores_the_same_probabilities():
    catalog = simulate_field("ngc6397", n_stars=3000, seed=1)
    stars = _stars(catalog)
    first = ClusterFieldMixture(seed=4).fit(stars)
    second = ClusterFieldMixture(seed=4).fit(stars)
    np.testing.assert_array_equal(first.predict_proba(stars), second.predict_proba(stars))
    restored = ClusterFieldMixture(n_field=first.n_field_).load_state_dict(first.state_dict())
    np.testing.assert_allclose(restored.predict_proba(stars), first.predict_proba(stars), rtol=1e-12)
    # Stars without astrometry are scored from their radius alone, between 0 and 1.
    no_pm = stars.values.copy()
    no_pm[:10] = np.nan
    from grasp_dl.data.astrometry import StarData

    prob = first.predict_proba(StarData(no_pm, stars.covariances, stars.radius))[:10, 0]
    assert np.isfinite(prob).all() and ((prob > 0) & (prob < 1)).all()


# ----------------------------------------------------------------------------- XDModule


def test_bad_xd_options_and_a_network_start_raise_config_errors():
    with pytest.raises(ConfigError, match="n_clusters"):
        XDModule(5, n_clusters=1)
    with pytest.raises(ConfigError, match="n_starts"):
        XDModule(5, n_starts=0)
    with pytest.raises(ConfigError, match="not fitted"):
        XDModule(5).fitted_mixture()


def test_missing_error_columns_fail_before_training_naming_model_xd(tmp_path):
    catalog = simulate_field("m4", n_stars=2000, seed=0).drop(columns=["pmra_error"])
    path = tmp_path / "cone.csv"
    catalog.to_csv(path, index=False)
    cfg = compose_config(
        "train", ["model=xd", "data=catalog", f"data.path={path}", "trainer.accelerator=cpu"], tmp_path
    )
    with pytest.raises(CatalogError, match="model=xd"):
        pipeline.train(cfg)


@pytest.mark.slow
def test_model_xd_round_trips_through_train_predict_and_load(tmp_path):
    cfg = compose_config("train", XD_TINY, tmp_path)
    result = pipeline.train(cfg)
    module = result.module
    assert isinstance(module, XDModule) and module.cluster_group == 0
    assert result.checkpoint is not None
    raw = torch.load(result.checkpoint, weights_only=True)
    assert "xd_mixture" in raw["fit_results"] and raw["hyper_parameters"]["n_clusters"] == module.hparams.n_clusters
    # train's summary reports the mean predict reports: the model's fit, with its own error
    fitted = module.cluster_astrometry()
    assert f"cluster mean: pmra {fitted['xd_mean_pmra']:.3f} ± {fitted['xd_mean_pmra_error']:.3f}" in (
        pipeline.summarise(result, cfg)
    )

    catalog = simulate_field("m4", n_stars=3000, seed=5)
    loaded = load_clustering_module(result.checkpoint)
    assert isinstance(loaded, XDModule)
    table, summary = predict_catalog(loaded, catalog)
    k = loaded.hparams.n_clusters
    assert list(table.columns[:2]) == ["source_id", "label"]
    assert {f"prob_{j}" for j in range(k)} | {"member_prob", "entropy"} <= set(table.columns)
    scored = table["label"] >= 0
    np.testing.assert_allclose(table.loc[scored, [f"prob_{j}" for j in range(k)]].sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(table["member_prob"].to_numpy(), table["prob_0"].to_numpy())
    assert _f1(table["member_prob"].to_numpy(), catalog["truth"].to_numpy() == "cluster") > 0.85
    truth = np.asarray(load_simulation_config("m4")["cluster"]["pm_mean"], float)
    assert math.hypot(summary["xd_mean_pmra"] - truth[0], summary["xd_mean_pmdec"] - truth[1]) < 0.15
    # the reported mean is the fit's, and so is its standard error (the members' is kept beside it)
    assert summary["mean_source"] == "model" and summary["mean_pmra"] == summary["xd_mean_pmra"]
    assert summary["mean_pmra_error"] == summary["xd_mean_pmra_error"] > 0
    assert summary["mean_pmdec_error_members"] > 0

    # The notebook facade loads the same checkpoint and predicts the same table.
    estimator = DeepClusteringModel.load(result.checkpoint)
    again, _ = estimator.predict_table(catalog)
    pd.testing.assert_frame_equal(again, table)


@pytest.mark.slow
def test_deep_clustering_model_fits_model_xd_without_an_autoencoder(tmp_path):
    catalog = simulate_field("ngc6397", n_stars=3000, seed=2)
    estimator = DeepClusteringModel(model="xd", output_dir=tmp_path, progress_bar=False, epochs=1)
    estimator.fit(catalog)
    assert isinstance(estimator.module_, XDModule) and estimator.autoencoder_ is None
    with pytest.raises(ConfigError, match="no autoencoder phase"):
        estimator.pretrain_autoencoder()
    labels = estimator.predict(catalog)
    assert len(labels) == len(catalog) and (labels == 0).sum() > 0.5 * (catalog["truth"] == "cluster").sum()


def test_a_cluster_without_weight_has_no_mean_error_and_no_crash():
    stars, _ = _model_field(0, 40, 1.0)
    mixture = ClusterFieldMixture(n_field=1, n_starts=1, max_iter=5, crowding=False).fit(stars)
    mixture.weights_ = np.array([1e-300, 1.0])  # a cluster no star belongs to: no information on its mean
    mixture.start_iteration()
    assert mixture._mean_covariance(mixture.e_step(mixture.em_batch(stars))) is None
    mixture.cluster_mean_cov_ = None
    module = XDModule.__new__(XDModule)
    module.mixture = mixture
    astrometry = XDModule.cluster_astrometry(module)
    assert "xd_mean_pmra" in astrometry and "xd_mean_pmra_error" not in astrometry


def test_model_xd_takes_large_e_step_batches_and_its_fallback_trains_a_network_on_small_ones(tmp_path):
    assert compose_config("train", ["model=xd"], tmp_path).data.batch_size == 65536
    assert compose_config("train", ["model=dec"], tmp_path).data.batch_size == 256
    assert compose_config("train", ["model=xd", "data.batch_size=512"], tmp_path).data.batch_size == 512
    catalog = simulate_field("m4", n_stars=600, seed=0).drop(columns=["pmra_error"])
    path = tmp_path / "cone.csv"
    catalog.to_csv(path, index=False)
    for overrides, expected in (([], 256), (["data.batch_size=100"], 100)):
        cfg = compose_config(
            "train",
            ["data=catalog", f"data.path={path}", "trainer.accelerator=cpu", *overrides],
            tmp_path / str(expected),
        )
        datamodule = pipeline.instantiate_datamodule(cfg)
        assert datamodule.batch_size == (65536 if not overrides else 100)  # model=auto is model=xd until it checks
        datamodule.setup("fit")  # the catalogue has no pmra_error: model=xd cannot run
        assert "fell back to model=dec" in pipeline._check_or_fall_back(cfg, datamodule)
        assert datamodule.batch_size == expected


def test_model_xd_scores_2_parameter_stars_with_its_own_spatial_profile(tmp_path):
    from grasp_dl.models.base import ClusteringModule

    catalog = simulate_field("ngc6558", n_stars=10000, seed=0)  # bulge-like: 2-parameter stars in the crowded core
    estimator = DeepClusteringModel(model="xd", output_dir=tmp_path, progress_bar=False).fit(catalog)
    module = estimator.module_
    table, _ = estimator.predict_table(catalog, score_no_astrometry=True)
    two = (catalog[["pmra", "pmdec", "parallax"]].isna().all(axis=1)).to_numpy()
    assert two.sum() > 500 and (table.loc[two, "flag"] == "scored:no_astrometry").all()
    truth = (catalog["truth"] == "cluster").to_numpy()[two]
    center = module.hparams.preprocessing["center"]
    stars = star_data(catalog[two], center, ("pmra", "pmdec", "parallax"))
    # the mixture's own score of a star without astrometry: its profile (fitted slope) against the field's
    own = module.fitted_mixture().predict_proba(stars)[:, module.cluster_group]
    np.testing.assert_allclose(module.position_member_prob(stars.radius), own, rtol=1e-6)
    np.testing.assert_allclose(table.loc[two, "member_prob"], own, rtol=1e-5)
    # better than the generic Plummer fit to the memberships that scored them before: F1 0.732 against 0.656
    generic = ClusteringModule.position_member_prob(module, stars.radius)
    assert _f1(own, truth) > _f1(generic, truth) + 0.03
    # reloaded from its checkpoint it scores them alike
    reloaded = load_clustering_module(estimator.checkpoint_)
    np.testing.assert_allclose(reloaded.position_member_prob(stars.radius), own, rtol=1e-6)
