"""Hard-field ingredients: measurement errors, spatial concentration, photometry, stars without
astrometry, n_clusters=auto; each changes the model's input or loss as documented."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from grasp_dl import DeepClusteringModel
from grasp_dl.data.astrometry import StarData, error_covariances, star_data
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.prepare import prepare_stellar_data
from grasp_dl.data.simulate import load_simulation_config, simulate_field
from grasp_dl.inference.no_astrometry import FLAG_NO_ASTROMETRY, no_astrometry_rows
from grasp_dl.inference.predict import load_clustering_module, predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture
from grasp_dl.mixtures.profile import plummer_log_density
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule
from grasp_dl.models.model_selection import choose_n_clusters
from grasp_dl.models.spatial import RadialPrior, radius_from_features
from grasp_dl.models.vade import VaDEModule
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import TINY, compose_config


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )


def _toy_stars(n: int = 3000, seed: int = 0) -> tuple[StarData, np.ndarray]:
    """A concentrated cluster (10%, PM dispersion 0.2) in a flat field (PM dispersion 3), with
    heteroscedastic errors up to 1.5 mas/yr; returns the stars and the truth."""
    rng = np.random.default_rng(seed)
    n_c = n // 10
    truth = np.zeros(n, bool)
    truth[:n_c] = True
    radius = np.where(truth, 0.02 * np.sqrt(rng.random(n) ** -1.0 - 1.0), 0.3 * np.sqrt(rng.random(n)))
    radius = np.minimum(radius, 0.3)
    intrinsic = np.where(truth[:, None], rng.normal([1.0, -2.0], 0.2, (n, 2)), rng.normal([0.0, 0.0], 3.0, (n, 2)))
    err = rng.uniform(0.05, 1.5, n)
    values = intrinsic + err[:, None] * rng.standard_normal((n, 2))
    return StarData(values, error_covariances(err, err), radius), truth


# ----------------------------------------------------------------------------- inputs


def test_log_radius_feature_is_the_log10_of_the_radius():
    df = simulate_field("m4", n_stars=500, seed=1)
    center = load_simulation_config("m4")["center"]
    prepared = prepare_stellar_data(df, features=["radius", "log_radius", "pmra"], center=center)
    radius, log_radius = prepared.features[:, 0].astype(float), prepared.features[:, 1].astype(float)
    np.testing.assert_allclose(log_radius, np.log10(np.maximum(radius, 1e-5)), rtol=1e-5)


def test_error_covariances_hold_errors_and_correlation():
    cov = error_covariances(np.array([1.0, 2.0]), np.array([3.0, 1.0]), np.array([0.5, 0.0]), np.array([0.1, 0.2]))
    assert cov.shape == (2, 3, 3)
    np.testing.assert_allclose(cov[0], [[1.0, 1.5, 0.0], [1.5, 9.0, 0.0], [0.0, 0.0, 0.01]])
    np.testing.assert_allclose(cov[1, 2, 2], 0.04)


def test_missing_error_column_is_named_with_the_fix():
    df = simulate_field("m4", n_stars=300, seed=2).drop(columns=["pmra_error"])
    with pytest.raises(CatalogError, match="pmra_error.*switch model.init=xd off"):
        star_data(df, (245.8967, -26.5258), what="model.init=xd")
    dm = StellarCatalogDataModule(catalog=df, center=[245.8967, -26.5258])
    dm.setup()
    with pytest.raises(CatalogError, match="pmra_error.*model.noise_augmentation"):
        dm.noise_factors()


def test_noise_factors_are_each_stars_error_in_scaled_units():
    df = simulate_field("m4", n_stars=1500, seed=3)
    dm = StellarCatalogDataModule(catalog=df, val_fraction=0.0)
    dm.setup()
    factors = dm.noise_factors("all").numpy()
    names = dm.feature_names
    rows = df.iloc[dm.usable_rows()]
    scale = np.asarray(dm.scaler.scale_)
    # pmra is the first error axis: its factor is pmra_error / scale; xi and eta get no noise
    np.testing.assert_allclose(
        factors[:, names.index("pmra"), 0], rows["pmra_error"] / scale[names.index("pmra")], rtol=1e-4
    )
    np.testing.assert_allclose(
        factors[:, names.index("parallax"), 2], rows["parallax_error"] / scale[names.index("parallax")], rtol=1e-4
    )
    assert (factors[:, names.index("xi")] == 0).all() and (factors[:, names.index("eta")] == 0).all()


def test_noise_augmentation_perturbs_the_astrometry_by_each_stars_errors():
    df = simulate_field("m4", n_stars=1500, seed=3)
    dm = StellarCatalogDataModule(catalog=df, val_fraction=0.0)
    dm.setup()
    module = DECModule(dm.input_dim, noise_augmentation=True)
    module._noise = dm.noise_factors("train")
    x, index = dm.data[:200], torch.arange(200)
    draws = torch.stack([module.augment(x, index) for _ in range(400)])
    spread = draws.std(0)
    names = dm.feature_names
    expected = module._noise[index][:, names.index("pmra"), 0]
    np.testing.assert_allclose(spread[:, names.index("pmra")], expected, rtol=0.2)
    assert torch.equal(draws[:, :, names.index("xi")], x[:, names.index("xi")].expand(400, -1))
    assert torch.equal(DECModule(dm.input_dim).augment(x, index), x)  # off: unchanged


# ----------------------------------------------------------------------------- the deconvolved mixture
# (its ablation switches: tests/test_mixture_options.py)

#: A small fit of the one mixture: one start.
SMALL_FIT = {"n_starts": 1, "max_iter": 60, "seed": 0}


def test_plummer_density_is_normalised_over_the_cone():
    r = np.linspace(0, 0.5, 200001)
    density = np.exp(plummer_log_density(r, math.log(0.03), 0.5))
    assert np.trapezoid(2 * np.pi * r * density, r) == pytest.approx(1.0, rel=1e-3)


def test_stars_without_astrometry_are_scored_from_position_alone():
    stars, _ = _toy_stars()
    mixture = ClusterFieldMixture(n_field=1, **SMALL_FIT).fit(stars)
    probe = StarData(np.full((2, 2), np.nan), np.full((2, 2, 2), np.nan), np.array([0.001, 0.28]))
    p = mixture.predict_proba(probe)[:, 0]
    assert np.isfinite(p).all() and p[0] > p[1] and 0 < p[1] < p[0] < 1


def test_bic_prefers_the_true_number_of_components():
    stars, _ = _toy_stars()
    bics = [ClusterFieldMixture(n_field=k, **SMALL_FIT).fit(stars).bic() for k in (1, 2)]
    assert bics[0] < bics[1]


# ----------------------------------------------------------------------------- the radial prior


def _preprocessing(names, center, scale):
    return {"feature_names": names, "scaler": {"method": "robust", "center": center, "scale": scale}}


def test_radial_prior_reads_the_radius_back_from_scaled_features():
    prep = _preprocessing(["xi", "eta", "pmra"], [0.1, -0.1, 0.0], [0.2, 0.3, 1.0])
    raw = np.array([[0.3, 0.4, 5.0], [0.0, 0.0, 1.0]])
    scaled = (raw - np.array([0.1, -0.1, 0.0])) / np.array([0.2, 0.3, 1.0])
    np.testing.assert_allclose(radius_from_features(scaled, prep), [0.5, 0.0], atol=1e-12)
    prior = RadialPrior(3)
    assert (prior(torch.tensor(scaled, dtype=torch.float32)) == 0).all()  # inactive until configured
    prior.configure(prep, group=1, radius_max=0.6, log_scale=math.log(0.05))
    out = prior(torch.tensor(scaled, dtype=torch.float32))
    flat = -math.log(math.pi * 0.36)
    out = out.detach()
    np.testing.assert_allclose(out[:, [0, 2]].numpy(), flat, rtol=1e-5)
    np.testing.assert_allclose(
        out[:, 1].numpy(), plummer_log_density(np.array([0.5, 0.0]), math.log(0.05), 0.6), rtol=1e-4
    )
    with pytest.raises(ConfigError, match="spatial_prior needs the position"):
        RadialPrior(2).configure(_preprocessing(["pmra", "pmdec"], [0, 0], [1, 1]), 0, 1.0, 0.0)


@pytest.mark.parametrize("module_class", [DECModule, VaDEModule])
def test_spatial_prior_raises_the_cluster_probability_near_the_centre(module_class):
    prep = _preprocessing(["xi", "eta", "pmra", "pmdec"], [0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 1.0, 1.0])
    module = module_class(4, n_clusters=2, spatial_prior=True, preprocessing=prep, latent_dim=2, hidden_dims=[4])
    module.eval()
    z = torch.zeros(2, 2)
    x = torch.tensor([[0.01, 0.0, 0.0, 0.0], [2.5, 0.0, 0.0, 0.0]])  # 0.001 deg and 0.25 deg out
    before = module.assign(z, x) if module_class is DECModule else module.posterior(z, x)
    module.radial_prior.configure(prep, group=0, radius_max=0.3, log_scale=math.log(0.02))
    after = module.assign(z, x) if module_class is DECModule else module.posterior(z, x)
    torch.testing.assert_close(before[0], before[1])
    assert after[0, 0] > before[0, 0] + 0.3 and after[1, 0] < before[1, 0]


def test_spatial_prior_needs_the_mixture_kernel():
    with pytest.raises(ConfigError, match="spatial_prior needs model.kernel=mixture"):
        DECModule(5, kernel="dec", spatial_prior=True)


def test_vade_elbo_uses_the_radius_dependent_weight():
    prep = _preprocessing(["xi", "eta", "pmra"], [0.0, 0.0, 0.0], [0.1, 0.1, 1.0])
    module = VaDEModule(3, n_clusters=2, spatial_prior=True, preprocessing=prep, latent_dim=2, hidden_dims=[4])
    module.eval()
    module.mixture_means.data = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])  # distinct groups: gamma != pi
    x = torch.tensor([[0.01, 0.0, 0.3], [2.5, 0.0, -0.2]])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    before = module.elbo_terms(x, gen())["kl_c"]
    module.radial_prior.configure(prep, group=0, radius_max=0.3, log_scale=math.log(0.02))
    after = module.elbo_terms(x, gen())["kl_c"]
    assert not torch.isclose(before, after)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def hard_field_run(tmp_path_factory):
    """experiment=hard_field with n_clusters=auto through the real pipeline (VaDE)."""
    out = tmp_path_factory.mktemp("hard")
    overrides = TINY + [
        "model=vade",
        "experiment=hard_field",
        "model.n_clusters=auto",
        "model.n_clusters_range=[2,3]",
        "model.noise_augmentation=true",
        "model.xd.use_errors=true",
    ]
    result = pipeline.train(compose_config("train", overrides, out))
    return result


@pytest.mark.slow
def test_auto_n_clusters_stores_its_curve_in_the_checkpoint(hard_field_run):
    result = hard_field_run
    curve = result.module.fit_results["n_clusters_curve"]
    assert curve["k"] == [2, 3] and len(curve["bic"]) == 2
    assert curve["chosen"] == curve["k"][int(np.argmin(curve["bic"]))] == result.module.hparams.n_clusters
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert state["fit_results"]["n_clusters_curve"] == curve and "n_clusters_curve" not in state["hyper_parameters"]
    assert load_clustering_module(result.checkpoint).fit_results["n_clusters_curve"] == curve
    assert state["hyper_parameters"]["init"] == "xd" and state["hyper_parameters"]["spatial_prior"] is True
    assert "n_clusters=auto chose" in pipeline.summarise(result, compose_config("train", TINY, result.output_dir))


def test_choose_n_clusters_on_the_features_without_xd():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.3, (300, 2)) for c in ((0, 0), (5, 0), (0, 5))])

    class Data:
        def split_tensor(self, split, device):
            return torch.tensor(blobs)

    k, curve = choose_n_clusters(Data(), {"init": "gmm_features", "n_clusters_range": [2, 4]})
    assert k == 3 and curve["k"] == [2, 3, 4] and "Gaussian mixture" in curve["criterion"]
    with pytest.raises(ConfigError, match="n_clusters_range"):
        choose_n_clusters(Data(), {"n_clusters_range": [1, 3]})


@pytest.mark.slow
def test_reloaded_hard_field_checkpoint_scores_2_parameter_stars_from_position(hard_field_run):
    module = load_clustering_module(hard_field_run.checkpoint)
    assert module.radial_prior.active and np.isfinite(module.position_model.numpy()).all()
    df = simulate_field("m4", n_stars=2000, seed=11)
    df.loc[[0, 10], "pmra"] = np.nan  # a damaged row: not a 2-parameter solution, stays unscored
    plain, _ = predict_catalog(module, df)
    scored, summary = predict_catalog(module, df, score_no_astrometry=True)
    two_param = (df["pmra"].isna() & df["pmdec"].isna() & df["parallax"].isna()).to_numpy()
    assert two_param.sum() > 10 and len(scored) == len(df)
    assert (plain.loc[two_param, "label"] == -1).all()
    assert (scored.loc[two_param, "flag"] == FLAG_NO_ASTROMETRY).all()
    p = scored.loc[two_param, "member_prob"].to_numpy()
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(scored.loc[two_param, "member_prob_std"], np.sqrt(p * (1 - p)), rtol=1e-6)
    assert (scored.loc[[0, 10], "label"] == -1).all() and scored.loc[0, "flag"] == "missing:pmra"
    rest = ~two_param
    pd.testing.assert_frame_equal(scored[rest], plain[rest])
    assert summary["n_scored"] == int((scored["label"] >= 0).sum())
    # the notebook facade scores them the same way
    from_api, _ = DeepClusteringModel.from_module(module).predict_table(df, score_no_astrometry=True)
    pd.testing.assert_frame_equal(from_api, scored)
    # closer to the centre, a higher position-only member probability
    r = np.array([0.0, 0.1, 0.4])
    assert np.all(np.diff(module.position_member_prob(r)) < 0)


def test_no_astrometry_rows_are_only_full_2_parameter_rows():
    flags = np.array(["missing:pmra+pmdec+parallax", "missing:pmra", "", "ruwe>1.4"], dtype=object)
    np.testing.assert_array_equal(
        no_astrometry_rows(flags, ["xi", "eta", "pmra", "pmdec", "parallax"]), [True, False, False, False]
    )


@pytest.mark.slow
def test_full_configuration_beats_the_plain_one_on_a_small_hard_field():
    """On a small NGC 6558-like field (the cluster's PM inside the bulge's) the hard-field VaDE
    (init=xd, spatial prior, noise augmentation) finds the cluster; the plain one does not."""
    cfg = load_simulation_config("ngc6558") | {"n_stars": 8000, "seed": 1}
    dm = StellarCatalogDataModule(simulate=cfg, seed=0)
    dm.setup()
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask] == "cluster"
    L.seed_everything(0, verbose=False)
    ae = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    _trainer(3).fit(ae, datamodule=dm)
    f1 = {}
    for name, settings in {
        "plain": {},
        "full": {"init": "xd", "spatial_prior": True, "noise_augmentation": True},
    }.items():
        L.seed_everything(0, verbose=False)
        module = VaDEModule.from_autoencoder(ae, n_clusters=3, n_init=4, kl_warmup_epochs=1, **settings)
        _trainer(3).fit(module, datamodule=dm)
        q = module.predict_proba(dm.data)
        member = q[:, module.decide_cluster_group(dm.data, q)].numpy() > 0.5
        f1[name] = 2 * (member & truth).sum() / (member.sum() + truth.sum())
    assert f1["full"] > 0.45 and f1["full"] > f1["plain"] + 0.3, f1


@pytest.mark.slow
def test_member_prob_std_is_the_spread_of_the_pooled_membership(hard_field_run):
    """The uncertainty column describes member_prob as reported: the start's pool applied to every draw."""
    from grasp_dl.inference.predict import prepare_for_module, prepared_star_data

    module = load_clustering_module(hard_field_run.checkpoint)
    assert module.pool_uses_errors  # experiment=hard_field pools with its error-aware start
    df = simulate_field("m4", n_stars=1500, seed=12)
    out, _ = predict_catalog(module, df)
    ready = prepare_for_module(module, df, None)
    x = torch.from_numpy(ready.scaled)
    start, weight = module.pool_start(x, prepared_star_data(module, ready))
    rows = torch.from_numpy(np.flatnonzero(ready.prepared.mask))
    g = module.cluster_group
    pooled = module.predict_proba_samples(x, rows=rows, pool=(start, weight))[1][:, g].numpy()
    own = module.predict_proba_samples(x, rows=rows)[1][:, g].numpy()
    reported = out.loc[ready.prepared.mask, "member_prob_std"].to_numpy()
    np.testing.assert_allclose(reported, pooled, atol=1e-6)
    assert np.abs(reported - own).max() > 1e-3
    # where the start is sure of a star, the pooled membership hardly moves between draws
    sure = (start > 0.999) | (start < 0.001)
    assert sure.sum() > 100 and np.median(reported[sure]) <= np.median(own[sure])
