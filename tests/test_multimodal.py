"""model=multimodal: the astrometric mixture times neural CMD densities (science, train, predict, resume, DDP)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from grasp_dl.data.simulate import simulate_field
from grasp_dl.inference.no_astrometry import FLAG_NO_ASTROMETRY
from grasp_dl.inference.predict import load_clustering_module, predict_catalog, predict_to_file
from grasp_dl.jobs import train as pipeline
from grasp_dl.mixtures.cluster_field import FIELD_RANGE, ClusterFieldMixture
from grasp_dl.models.cmd_density import CMDDensityEnsemble, gaia_photometric_variance
from grasp_dl.models.multimodal import MultiModalModule, gaussian_cmd_nll
from grasp_dl.models.xd import XDModule
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import compose_config

#: A short fit: a few astrometric iterations, a few joint ones.
SHORT = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "callbacks.tensorboard_figures=null",
    "model.max_iter=8",
    "model.cmd_iter=4",
    "model.cmd_start_steps=100",
]
#: Astrometric columns blanked for a 2-parameter source.
ASTROMETRIC = ["parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error", "pmra_pmdec_corr"]


def _f1(member_prob: np.ndarray, truth: np.ndarray) -> float:
    predicted = np.nan_to_num(member_prob) > 0.5
    return 2 * float((predicted & truth).sum()) / max(float(predicted.sum() + truth.sum()), 1.0)


def degraded_field(seed: int = 0, n_stars: int = 6000, share: float = 0.5) -> tuple[pd.DataFrame, np.ndarray]:
    """A simulated bulge cone (NGC 6558-like) where ``share`` of the stars brighter than G = 19 have their proper
    motions re-drawn with 1 mas/yr errors (the error columns set to match): the astrometry of those stars no
    longer tells a member from the bulge, their CMD still does. Returns the catalogue and the degraded rows."""
    catalog = simulate_field("ngc6558", n_stars=n_stars, seed=seed)
    rng = np.random.default_rng(seed + 100)
    bright = (catalog["phot_g_mean_mag"] < 19.0) & catalog["pmra"].notna()
    degraded = bright.to_numpy() & (rng.random(len(catalog)) < share)
    for column in ("pmra", "pmdec"):
        error = catalog.loc[degraded, f"{column}_error"].to_numpy()
        extra = np.sqrt(np.maximum(1.0 - error**2, 0.0))
        catalog.loc[degraded, column] += extra * rng.standard_normal(int(degraded.sum()))
        catalog.loc[degraded, f"{column}_error"] = 1.0
    catalog.loc[degraded, "pmra_pmdec_corr"] = 0.0
    return catalog, degraded


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """model=xd and experiment=multimodal trained through the Hydra entry on one degraded field."""
    root = tmp_path_factory.mktemp("multimodal")
    catalog, degraded = degraded_field()
    path = root / "cone.csv"
    catalog.drop(columns=["truth"]).to_csv(path, index=False)
    data = ["data=catalog", f"data.path={path}"]
    multimodal = pipeline.train(compose_config("train", ["experiment=multimodal", *data, *SHORT], root / "mm"))
    xd = pipeline.train(compose_config("train", ["model=xd", *data, *SHORT[:3], "model.max_iter=12"], root / "xd"))
    return {"catalog": catalog, "degraded": degraded, "multimodal": multimodal, "xd": xd, "root": root}


# ----------------------------------------------------------------------------- the CMD densities


def _one_gaussian_ensemble(means: list[tuple[float, float]], widths: list[tuple[float, float]]) -> CMDDensityEnsemble:
    """Members of one Gaussian each, the same at every position: member m at ``means[m]``, ``widths[m]``."""
    ensemble = CMDDensityEnsemble(len(means), n_components=1, hidden=4)
    with torch.no_grad():
        for weight in ensemble.weights:
            weight.zero_()
        bias = ensemble.biases[-1].view(len(means), 1, 6)
        for m, ((g, colour), (wg, wc)) in enumerate(zip(means, widths, strict=True)):
            bias[m, 0, 1:3] = torch.tensor([g, colour])
            bias[m, 0, 3:5] = torch.log(torch.tensor([wg, wc]))
    return ensemble


def test_the_photometric_errors_widen_a_faint_stars_density():
    ensemble = _one_gaussian_ensemble([(0.0, 0.0)], [(0.01, 0.01)])  # one narrow component at the origin
    context = torch.zeros(3, 2)
    points = torch.tensor([[0.0, 0.0], [0.0, 0.1], [0.0, 0.3]])
    bright = torch.stack(gaia_photometric_variance(torch.full((3,), 15.0)), 1)
    faint = torch.stack(gaia_photometric_variance(torch.full((3,), 20.5)), 1)
    exact, lp_bright, lp_faint = (ensemble.log_prob(points, context, v)[0] for v in (None, bright, faint))
    # on the sequence a faint star's density is lower, 0.1 and 0.3 mag off it much higher: its errors spread it
    assert lp_faint[0] < lp_bright[0] <= exact[0]
    assert (lp_faint[1:] > lp_bright[1:] + 5.0).all()
    # Gaia's errors: a few mmag when bright, ~0.1 mag in BP-RP at G = 20.5
    var_g, var_colour = gaia_photometric_variance(np.array([15.0, 20.5]))
    assert np.sqrt(var_colour[0]) < 0.01 and 0.08 < np.sqrt(var_colour[1]) < 0.15
    assert np.sqrt(var_g).max() < 0.01


def test_the_colour_given_magnitude_density_is_the_joint_over_the_magnitudes_marginal():
    torch.manual_seed(1)
    ensemble = CMDDensityEnsemble(2, n_components=3, hidden=4)
    with torch.no_grad():
        ensemble.biases[-1].normal_(0.0, 0.5)
    colours = torch.linspace(-12.0, 12.0, 4001)
    for g in (-1.0, 0.3):
        points = torch.stack([torch.full_like(colours, g), colours], 1)
        context = torch.zeros(len(points), 2)
        noise = torch.full((len(points), 2), 0.01)
        with torch.no_grad():
            conditional = ensemble.log_prob(points, context, noise, conditional=True).double()
            joint = ensemble.log_prob(points, context, noise).double()
        step = float(colours[1] - colours[0])
        # a density of the colour: it integrates to 1 over the colour at every magnitude, for every member
        assert torch.exp(conditional).sum(1).mul(step).numpy() == pytest.approx([1.0, 1.0], abs=1e-3)
        # and it is the joint density over its marginal in the magnitude (the joint integrated over the colour)
        marginal = torch.logsumexp(joint, 1) + math.log(step)
        assert torch.allclose(conditional, joint - marginal[:, None], atol=1e-3)


def test_a_groups_luminosity_function_alone_moves_the_joint_cmd_term_but_not_the_colour_given_magnitude():
    """Two groups with one colour distribution, one bright and one faint: only the joint density prefers one."""
    ensemble = _one_gaussian_ensemble([(-1.0, 0.0), (1.0, 0.0)], [(0.5, 0.2), (0.5, 0.2)])
    points = torch.tensor([[1.0, 0.0], [1.0, 0.3], [-1.0, -0.2]])  # faint stars, then a bright one
    context = torch.zeros(3, 2)
    with torch.no_grad():
        joint = ensemble.log_prob(points, context)
        conditional = ensemble.log_prob(points, context, conditional=True)
    assert (joint[1, :2] - joint[0, :2] > 5.0).all()  # the faint group wins the faint stars by its magnitudes
    assert torch.allclose(conditional[0], conditional[1], atol=1e-5)  # the colours alone: no preference


def test_the_module_scores_the_colour_given_the_magnitude_by_default():
    module = MultiModalModule(5, ensemble_size=1, n_clusters=2)
    assert module.hparams.colour_given_magnitude and not module.hparams.position_conditioning
    inputs = module.cmd_inputs(_stars(np.array([[17.0, 1.0], [19.5, 1.4]]), np.zeros((2, 2))))
    points, context, noise = inputs["points"], inputs["context"], inputs["noise"]
    log_scale = torch.log(module.cmd_scale).double()  # mag per standardised unit: the densities are per mag
    conditional = module.cmd.log_prob(points, context, noise, members=2, conditional=True).double() - log_scale[1]
    assert torch.allclose(module.member_log_densities(inputs, 2).view(2, -1), conditional)
    module.hparams.colour_given_magnitude = False
    joint = module.cmd.log_prob(points, context, noise, members=2).double() - log_scale.sum()
    assert torch.allclose(module.member_log_densities(inputs, 2).view(2, -1), joint)
    assert not torch.allclose(joint, conditional)


def test_the_warm_ups_cmd_term_is_the_same_kind_of_density_as_the_joint_phases():
    """multimodal/nll (the checkpoint's monitor) adds a Gaussian's CMD term in the warm-up: of BP-RP given G
    when the joint phase scores the colour given G, so the two phases' values compare."""
    rng = np.random.default_rng(0)
    g = rng.normal(0.0, 1.5, 5000)
    points = torch.as_tensor(np.stack([g, 0.3 * g + rng.normal(0.0, 0.2, 5000)], 1))
    joint, conditional = gaussian_cmd_nll(points, False), gaussian_cmd_nll(points, True)
    # the colour given G is a Gaussian of sd 0.2 about the line; G's own density (sd 1.5) is what the joint adds
    assert conditional == pytest.approx(0.5 * math.log(2 * math.pi * 0.2**2) + 0.5, abs=0.03)
    assert joint - conditional == pytest.approx(0.5 * math.log(2 * math.pi * 1.5**2) + 0.5, abs=0.03)


def test_a_checkpoint_from_before_the_option_keeps_scoring_the_joint_cmd_it_learnt():
    module = MultiModalModule(5, ensemble_size=1, n_clusters=2)
    saved = {k: v for k, v in module.hparams.items() if k != "colour_given_magnitude"}
    module.on_load_checkpoint({"hyper_parameters": dict(saved), "state_dict": {}})
    assert module.hparams.colour_given_magnitude is False
    module = MultiModalModule(5, ensemble_size=1, n_clusters=2)
    module.on_load_checkpoint({"hyper_parameters": dict(module.hparams), "state_dict": {}})
    assert module.hparams.colour_given_magnitude is True


@pytest.mark.slow
def test_the_cluster_density_learns_the_narrow_cluster_sequence(fitted):
    module: MultiModalModule = fitted["multimodal"].module
    catalog = fitted["catalog"]
    cluster = catalog[(catalog["truth"] == "cluster") & (catalog["phot_g_mean_mag"] < 19.5)]
    cluster = cluster[cluster["bp_rp"].notna()]
    assert len(cluster) > 50
    cmd = cluster[["phot_g_mean_mag", "bp_rp"]].to_numpy(float)
    position = np.zeros((len(cmd), 2))
    k = module.hparams.n_clusters
    on = module.member_log_densities(module.cmd_inputs(_stars(cmd, position)), k)  # (k, sets, stars)
    shifted = cmd + np.array([0.0, 0.4])  # 0.4 mag redder: off the sequence, among the bulge's stars
    off = module.member_log_densities(module.cmd_inputs(_stars(shifted, position)), k)
    # every set's cluster density puts its mass on the sequence
    assert (on[0] > off[0]).double().mean() > 0.8
    # and there the cluster's density beats every field component's: by e^0.86 to e^1.30 (mean log ratio) in
    # four fits of this cone (the short fit here and the full one, with the 2-parameter stars in the fit or not)
    assert float((on[0] - on[1:].max(0).values).mean()) > 0.5


def test_a_stated_colour_error_widens_that_stars_cmd_density_and_an_unstated_one_keeps_gaias(fitted):
    module: MultiModalModule = fitted["multimodal"].module
    catalog = fitted["catalog"]
    cluster = catalog[(catalog["truth"] == "cluster") & (catalog["phot_g_mean_mag"] < 18.5) & catalog["bp_rp"].notna()]
    assert len(cluster) > 30
    off = cluster[["phot_g_mean_mag", "bp_rp"]].to_numpy(float) + np.array([0.0, 0.15])  # 0.15 mag off the sequence
    position = np.zeros((len(off), 2))
    k = module.hparams.n_clusters

    def cluster_density(variance: np.ndarray | None) -> torch.Tensor:
        stars = _stars(off, position)
        stars.cmd_variance = variance
        return module.member_log_densities(module.cmd_inputs(stars), k)[0]

    unstated = cluster_density(None)
    torch.testing.assert_close(cluster_density(np.full((len(off), 2), np.nan)), unstated)  # NaN: Gaia's typical
    stated = cluster_density(np.column_stack([np.full(len(off), np.nan), np.full(len(off), 0.15**2)]))
    # a colour whose catalogue says it is 0.15 mag uncertain is no longer far off the cluster's sequence (mean log
    # ratio 1.8 and 88 % of the stars in this fit; a star 0.15 mag off may land on a broad part of the sequence)
    assert float((stated - unstated).mean()) > 1.0
    assert float((stated > unstated).double().mean()) > 0.75


def test_predict_reads_the_catalogues_colour_errors(fitted):
    module = load_clustering_module(fitted["multimodal"].checkpoint)
    catalog = fitted["catalog"].drop(columns=["truth"])
    plain, _ = predict_catalog(module, catalog)
    blurred, _ = predict_catalog(module, catalog.assign(bp_rp_error=1.0))  # every colour uninformative
    moved = np.abs(blurred["member_prob"].to_numpy() - plain["member_prob"].to_numpy())
    assert np.nanmax(moved) > 0.1
    # grasp-dl predict reads a file chunk by chunk, only the columns it uses: the colour errors among them
    path = fitted["root"] / "blurred.csv"
    catalog.assign(bp_rp_error=1.0).to_csv(path, index=False)
    predict_to_file(module, path, fitted["root"] / "blurred_out.csv", chunk_size=2500)
    streamed = pd.read_csv(fitted["root"] / "blurred_out.csv")
    np.testing.assert_allclose(streamed["member_prob"], blurred["member_prob"], atol=1e-6)


def _stars(cmd: np.ndarray, position: np.ndarray):
    from grasp_dl.data.astrometry import StarData

    n = len(cmd)
    return StarData(np.full((n, 3), np.nan), np.full((n, 3, 3), np.nan), np.hypot(*position.T), cmd, position)


# ----------------------------------------------------------------------------- what the CMD adds


@pytest.mark.slow
def test_the_cmd_recovers_more_members_with_degraded_proper_motions_than_model_xd(fitted):
    catalog, degraded = fitted["catalog"], fitted["degraded"]
    truth = (catalog["truth"] == "cluster").to_numpy()
    tables = {}
    for name in ("xd", "multimodal"):
        module = load_clustering_module(fitted[name].checkpoint)
        tables[name], _ = predict_catalog(module, catalog)
    f1 = {name: _f1(t["member_prob"].to_numpy()[degraded], truth[degraded]) for name, t in tables.items()}
    recovered = {name: float(t["member_prob"].to_numpy()[degraded & truth].mean()) for name, t in tables.items()}
    assert truth[degraded].sum() >= 20
    # 32 degraded members, one star 0.03 of F1: measured 0.857 against 0.833 with the default (the 2-parameter
    # stars in the fit), 0.935 fitted to the stars with astrometry alone (the next test fits that one too)
    assert f1["multimodal"] >= f1["xd"], f1
    assert recovered["multimodal"] > recovered["xd"] + 0.03, recovered  # their mean membership: 0.81 against 0.75
    # and it does not lose the members the astrometry finds
    whole = {name: _f1(t["member_prob"].to_numpy(), truth) for name, t in tables.items()}
    assert whole["multimodal"] > whole["xd"] - 0.02, whole


@pytest.mark.slow
def test_two_parameter_stars_get_position_and_cmd_memberships_flagged_better_than_position_alone(fitted):
    catalog = fitted["catalog"].copy()
    rng = np.random.default_rng(7)
    blank = rng.random(len(catalog)) < 0.2  # 2-parameter sources of every magnitude, besides the faint ones
    catalog.loc[blank, ASTROMETRIC] = np.nan
    module = load_clustering_module(fitted["multimodal"].checkpoint)
    # a few stars fainter or brighter than any the CMD densities learnt from: they keep the position alone
    low, high = (float(v) for v in module.magnitude_range)
    beyond = np.zeros(len(catalog), dtype=bool)
    beyond[rng.choice(np.flatnonzero(~blank & catalog["pmra"].isna().to_numpy()), 10, replace=False)] = True
    catalog.loc[beyond, "phot_g_mean_mag"] = np.where(np.arange(10) % 2, high + 0.5, low - 0.5)
    table, _ = predict_catalog(module, catalog, score_no_astrometry=True)
    two = catalog["pmra"].isna().to_numpy()
    assert (table.loc[two, "flag"] == FLAG_NO_ASTROMETRY).all()
    truth = (catalog["truth"] == "cluster").to_numpy()[two]
    with_cmd = table.loc[two, "member_prob"].to_numpy()
    probs = table.loc[two, [f"prob_{j}" for j in range(module.hparams.n_clusters)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    # position alone: the same astrometric mixture's radius term, no CMD
    from grasp_dl.data.astrometry import star_data

    center = module.hparams.preprocessing["center"]
    stars = star_data(catalog[two], center, ("pmra", "pmdec", "parallax"), photometry=True)
    alone = module.fitted_mixture().predict_proba(stars)[:, 0]
    blanked = blank[two]
    assert truth[blanked].sum() >= 20
    f1_cmd, f1_alone = _f1(with_cmd[blanked], truth[blanked]), _f1(alone[blanked], truth[blanked])
    assert f1_cmd > f1_alone + 0.05, (f1_cmd, f1_alone)  # measured +0.10 here; the issue asks >= +0.1
    np.testing.assert_allclose(with_cmd[beyond[two]], alone[beyond[two]], atol=1e-6)


@pytest.mark.slow
def test_fitting_the_2_parameter_stars_undoes_the_crowdings_selection_of_faint_members(fitted):
    """The cone's own 2-parameter sources (faint, crowded: mostly cluster stars in the core) and the fit.

    Fitted to the stars with astrometry alone, the weights under-count the cluster's faint members, whose
    astrometry the crowded core took; fitted to every star, the cluster's weight is its share of all stars.
    A joint density of G and BP-RP fitted to the stars with astrometry alone also learns a luminosity
    function without those members and misses them (measured F1 0.72; 0.82 when it was fitted to every
    star); the colour's density given G (the default) does not depend on how many faint members kept their
    astrometry, and finds them either way (0.85 fitted to the stars with astrometry, 0.84 to every star).
    Cluster weights: 0.029 fitted to every star, 0.024 to those with astrometry; true share 0.030.
    """
    catalog, root = fitted["catalog"], fitted["root"]
    data = ["data=catalog", f"data.path={root / 'cone.csv'}"]
    runs = {"all stars": fitted["multimodal"]}
    for name, options in (
        ("astrometric only", ["model.fit_no_astrometry=false"]),
        ("joint density, astrometric only", ["model.fit_no_astrometry=false", "model.colour_given_magnitude=false"]),
    ):
        config = compose_config(
            "train", ["experiment=multimodal", *data, *SHORT, *options], root / name.replace(" ", "_")
        )
        runs[name] = pipeline.train(config)
    two = catalog["pmra"].isna().to_numpy()
    truth = (catalog["truth"] == "cluster").to_numpy()
    assert two.sum() > 500 and truth[two].sum() >= 30
    f1, share = {}, {}
    for name, result in runs.items():
        table, _ = predict_catalog(result.module, catalog.drop(columns=["truth"]), score_no_astrometry=True)
        f1[name] = _f1(table["member_prob"].to_numpy()[two], truth[two])
        share[name] = float(result.module.fitted_mixture().weights_[0])
    assert abs(f1["all stars"] - f1["astrometric only"]) < 0.05, f1
    assert min(f1["all stars"], f1["astrometric only"]) > f1["joint density, astrometric only"] + 0.05, f1
    # fitted to the stars with astrometry alone the CMD finds the degraded bright members as before (0.935)
    degraded = fitted["degraded"]
    xd, _ = predict_catalog(fitted["xd"].module, catalog.drop(columns=["truth"]))
    alone, _ = predict_catalog(runs["astrometric only"].module, catalog.drop(columns=["truth"]))
    f1_xd = _f1(xd["member_prob"].to_numpy()[degraded], truth[degraded])
    assert _f1(alone["member_prob"].to_numpy()[degraded], truth[degraded]) > f1_xd + 0.05
    assert abs(share["all stars"] - truth.mean()) < abs(share["astrometric only"] - truth.mean()), share
    assert abs(share["all stars"] - truth.mean()) < 0.25 * truth.mean(), share


@pytest.mark.slow
def test_member_prob_std_is_the_ensembles_spread_positive_and_bounded(fitted):
    module = load_clustering_module(fitted["multimodal"].checkpoint)
    table, _ = predict_catalog(module, fitted["catalog"])
    scored = table["label"] >= 0
    std = table.loc[scored, "member_prob_std"].to_numpy()
    prob = table.loc[scored, "member_prob"].to_numpy()
    assert np.isfinite(std).all() and (std >= 0).all()
    assert (std <= np.sqrt(prob * (1 - prob)) + 1e-9).all()  # a spread of values in [0, 1] around their mean
    uncertain = (prob > 0.1) & (prob < 0.9)
    assert uncertain.sum() > 5 and np.median(std[uncertain]) > 1e-3
    # five pairs of densities, each with its own start: they differ
    lp = module.member_log_densities(module.cmd_inputs(module_stars(module, fitted)), module.hparams.n_clusters)
    assert float((lp[0] - lp[0].mean(0)).abs().mean()) > 1e-3


def module_stars(module: MultiModalModule, fitted: dict):
    from grasp_dl.data.astrometry import star_data

    return star_data(fitted["catalog"], module.hparams.preprocessing["center"], ("pmra", "pmdec", "parallax"), True)


# ----------------------------------------------------------------------------- the product


@pytest.mark.slow
def test_train_and_predict_through_the_hydra_entry_keep_everything_in_the_checkpoint(fitted):
    result = fitted["multimodal"]
    module = result.module
    assert isinstance(module, MultiModalModule) and module.cluster_group == 0 and module.joint_phase
    assert result.setting == "setting: model=multimodal"
    raw = torch.load(result.checkpoint, weights_only=True)
    assert "xd_mixture" in raw["fit_results"] and any(key.startswith("cmd.") for key in raw["state_dict"])
    assert len(raw["optimizer_states"]) == 2  # the M-step's L-BFGS and the CMD networks' Adam
    loaded = MultiModalModule.load_from_checkpoint(result.checkpoint)
    stars = module_stars(loaded, fitted)
    np.testing.assert_allclose(loaded.predict_proba_stars(stars), module.predict_proba_stars(stars), atol=1e-6)
    assert isinstance(fitted["xd"].module, XDModule) and not isinstance(fitted["xd"].module, MultiModalModule)


@pytest.mark.slow
def test_a_killed_fit_resumed_from_last_ends_where_the_uninterrupted_fit_does(tmp_path):
    from hydra_configs import CrashAtEpochStart  # noqa: F401  (the callback the config names)

    catalog = simulate_field("m4", n_stars=1500, seed=3)
    path = tmp_path / "cone.csv"
    catalog.to_csv(path, index=False)
    run = ["model=multimodal", "data=catalog", f"data.path={path}", *SHORT, "model.max_iter=3"]
    whole = pipeline.train(compose_config("train", run, tmp_path / "whole"))
    crashed = compose_config("train", run, tmp_path / "crash")
    with open_dict(crashed):  # the warm-up's 3 iterations and 2 joint ones done
        crashed.callbacks.crash = {"_target_": "hydra_configs.CrashAtEpochStart", "epoch": 5}
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.train(crashed)
    saved = torch.load(tmp_path / "crash" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["fit_results"]["xd_mixture"]["n_iter"] == 5 and int(saved["state_dict"]["cmd_phase_start"]) == 3
    resumed = pipeline.train(compose_config("train", [*run, "ckpt_path=last"], tmp_path / "crash"))
    stars = whole.module.train_catalog.stars
    a, b = whole.module.predict_proba_stars(stars), resumed.module.predict_proba_stars(stars)
    assert resumed.module.fitted_mixture().n_iter_ == whole.module.fitted_mixture().n_iter_
    assert np.abs(a[:, 0] - b[:, 0]).max() < 1e-4


def test_a_catalogue_without_photometry_fails_before_training_naming_the_columns_and_the_fix(tmp_path):
    catalog = simulate_field("m4", n_stars=1500, seed=0).drop(
        columns=["phot_g_mean_mag", "bp_rp", "phot_bp_mean_mag", "phot_rp_mean_mag"]
    )
    path = tmp_path / "cone.csv"
    catalog.to_csv(path, index=False)
    cfg = compose_config("train", ["experiment=multimodal", "data=catalog", f"data.path={path}", *SHORT], tmp_path)
    with pytest.raises(
        CatalogError, match=r"model=multimodal needs the photometry column\(s\) 'phot_g_mean_mag'"
    ) as error:
        pipeline.train(cfg)
    assert "'bp_rp'" in str(error.value) and "model=xd" in str(error.value)  # every missing column, and the fix


def test_bad_options_raise_config_errors_naming_them():
    with pytest.raises(ConfigError, match="ensemble_size"):
        MultiModalModule(5, ensemble_size=0)
    with pytest.raises(ConfigError, match="outlier_fraction"):
        MultiModalModule(5, outlier_fraction=1.0)
    with pytest.raises(ConfigError, match="cmd_lr"):
        MultiModalModule(5, cmd_lr=0.0)


def test_the_cluster_outliers_get_their_own_cmd_density_and_stay_out_of_the_fields_shape():
    """model.cluster_outliers adds a component the CMD densities must count, and it is not field."""
    module = MultiModalModule(5, cluster_outliers=True, outlier_fraction=0.1)
    # the BIC may choose the most field components: the cluster, FIELD_RANGE[1] fields and the outliers
    assert module.hparams.cmd_groups == 1 + FIELD_RANGE[1] + 1
    assert MultiModalModule(5).hparams.cmd_groups == 1 + FIELD_RANGE[1]
    mixture = ClusterFieldMixture(cluster_outliers=True)
    mixture.n_field_, mixture.weights_ = 2, np.array([0.5, 0.2, 0.2, 0.1])
    module.mixture = mixture
    log_h = torch.tensor([[-50.0], [-2.0], [-2.0], [5.0]], dtype=torch.float64)  # the outliers' density is high
    cluster = float(module.floored(log_h)[0, 0])
    # the cluster's floor is 10 % of the two field components' density, whatever the outliers' is
    assert cluster == pytest.approx(math.log(0.1) - 2.0, abs=1e-9)


@pytest.mark.slow
def test_two_ddp_processes_give_the_members_one_process_gives(tmp_path):
    catalog = simulate_field("m4", n_stars=1500, seed=4)
    path = tmp_path / "cone.csv"
    catalog.to_csv(path, index=False)
    run = ["model=multimodal", "data=catalog", f"data.path={path}", *SHORT, "model.max_iter=4", "model.cmd_iter=3"]
    single = pipeline.train(compose_config("train", run, tmp_path / "single"))
    ddp = pipeline.train(compose_config("train", [*run, "trainer=ddp_cpu"], tmp_path / "ddp"))
    stars = single.module.train_catalog.stars
    a, b = single.module.predict_proba_stars(stars)[:, 0], ddp.module.predict_proba_stars(stars)[:, 0]
    assert 2 * ((a > 0.5) & (b > 0.5)).sum() / ((a > 0.5).sum() + (b > 0.5).sum()) >= 0.99
    assert np.abs(a - b).max() < 0.05
    assert int(ddp.module.cmd_phase_start) == int(single.module.cmd_phase_start) >= 1


def test_early_stopping_never_cuts_an_em_model_short(tmp_path):
    """The EM models stop on their own tolerance: early stopping's patience is their whole run."""
    for model, overrides in (("xd", ["model=xd"]), ("multimodal", ["experiment=multimodal"])):
        cfg = compose_config("train", overrides, tmp_path / model)
        assert cfg.callbacks.early_stopping.patience == cfg.model.max_epochs, model
    assert compose_config("train", ["model=dec"], tmp_path / "dec").callbacks.early_stopping.patience == 10


@pytest.mark.slow
def test_a_fit_stopped_in_the_warm_up_predicts_every_row_from_its_astrometry(tmp_path):
    catalog = simulate_field("m4", n_stars=1500, seed=2)
    path = tmp_path / "cone.csv"
    catalog.drop(columns=["truth"]).to_csv(path, index=False)
    run = ["experiment=multimodal", "data=catalog", f"data.path={path}", *SHORT, "trainer.max_epochs=2"]
    result = pipeline.train(compose_config("train", run, tmp_path / "run"))
    assert not result.module.joint_phase  # two epochs: still in model=xd's warm-up
    table, _ = predict_catalog(result.module, catalog.drop(columns=["truth"]))
    scored = table["label"].to_numpy() >= 0
    assert scored.mean() > 0.9 and np.isfinite(table.loc[scored, "member_prob"]).all()
    assert "member_prob_std" not in table.columns  # no ensemble yet: no spread is claimed
