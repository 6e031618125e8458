"""Bounded crowding and broad field components: the pieces that keep far bulge stars out of the cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grasp_dl.data.astrometry import star_data
from grasp_dl.data.examples import vb21_field
from grasp_dl.data.prepare import estimate_center
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture, fit_membership
from grasp_dl.models.xd import XDModule
from grasp_dl.runtime.errors import ConfigError

#: The settings before the bounded crowding: uncapped inflation, free field widths, the null refitting beta.
UNBOUNDED = {"eta_max": None, "field_min_sd": 0.0, "hold_crowding_in_null": False}


def test_the_field_floor_widens_a_tight_ellipse_along_its_tight_axis_only():
    angle = 0.6
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov = np.eye(3) * 0.04
    cov[:2, :2] = rot @ np.diag([0.3**2, 2.0**2]) @ rot.T  # a flat "field" as tight as a cluster on one axis
    cov[0, 2] = cov[2, 0] = 0.01
    at_cluster = np.zeros(3)  # a component on the cluster's proper motion (the floor's reach)

    def floored(floor: float) -> np.ndarray:
        mixture = ClusterFieldMixture(field_min_sd=floor)
        mixture.cluster_mean_ = at_cluster
        return mixture._field_floor(cov, at_cluster)

    widened = floored(1.0)
    values, vectors = np.linalg.eigh(widened[:2, :2])
    np.testing.assert_allclose(values, [1.0, 4.0], rtol=1e-10)  # the tight axis at the floor, the wide one kept
    np.testing.assert_allclose(np.abs(vectors.T @ rot), np.eye(2), atol=1e-10)  # same orientation
    np.testing.assert_array_equal(widened[2], cov[2])  # the parallax's row untouched
    assert np.all(np.linalg.eigvalsh(widened) > 0)
    # a component already wider than the floor, or no floor, is left as it is
    np.testing.assert_array_equal(floored(0.2), cov)
    np.testing.assert_array_equal(floored(0.0), cov)


def test_eta_min_scales_every_error_and_eta_max_bounds_the_density_term_above_it():
    mixture = ClusterFieldMixture(eta_min=1.1, eta_max=2.0)
    mixture.beta_ = 0.0
    ratio = torch.tensor([0.0, 1.0, 50.0], dtype=torch.float64)
    np.testing.assert_allclose(mixture._eta2_t(ratio).numpy(), 1.21)  # GaiaTools' 1.1 on every star
    mixture.beta_ = 1.0
    np.testing.assert_allclose(mixture._eta2_t(ratio).numpy(), [1.21, 2.21, 4.0])  # capped at the centre
    for bad in ({"eta_min": 0.9}, {"eta_min": 1.5, "eta_max": 1.2}):
        with pytest.raises(ValueError, match="eta_min"):
            ClusterFieldMixture(**bad)
    with pytest.raises(ConfigError, match="eta_min"):
        XDModule(5, eta_min=1.5, eta_max=1.2)
    with pytest.raises(ConfigError, match="field_min_sd"):
        XDModule(5, field_min_sd=-1.0)


def _fit_against_the_paper(name: str, **options):
    """Member probabilities of the mixture on a shipped bulge field, and the paper's membership and errors.

    The bounded crowding as it was measured (the field's floor at 1.0 mas/yr, no outlier group) unless
    ``options`` say otherwise.
    """
    options = {"cluster_outliers": False, "outliers_predicted": True, "field_min_sd": 1.0, **options}
    catalog, reference = vb21_field(name)
    published = catalog[["source_id"]].merge(reference, how="left")["memberprob"].fillna(0).to_numpy() > 0.5
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    result = fit_membership(star_data(catalog, center, ("pmra", "pmdec", "parallax")), **options)
    offset = np.hypot(*(catalog[["pmra", "pmdec"]].to_numpy(float) - result.cluster_mean[:2]).T)
    error = np.hypot(catalog["pmra_error"].to_numpy(float), catalog["pmdec_error"].to_numpy(float)) / np.sqrt(2)
    return result.member_prob > 0.5, published, offset / error


@pytest.mark.slow
def test_the_bounded_inflation_keeps_far_bulge_stars_out_and_a_dense_cluster_keeps_its_centre():
    # NGC 6522 in Baade's window: uncapped, the crowding coefficient inflates the central errors
    # several-fold and names stars many of their own errors from the cluster's motion
    old, published, far = _fit_against_the_paper("ngc6522", **UNBOUNDED)
    new, _, _ = _fit_against_the_paper("ngc6522")
    precision = lambda m: (m & published).sum() / m.sum()  # noqa: E731
    assert precision(new) > precision(old) + 0.05, (precision(old), precision(new))
    assert (new & ~published & (far > 4)).sum() < 0.6 * (old & ~published & (far > 4)).sum()
    assert (new & published).sum() > 0.95 * published.sum()
    # NGC 6652, dense: a tight cap alone lets a flat field Gaussian sit on the cluster's motion and
    # take the scattered members of its centre; the floor on the field's width keeps them
    capped, published, _ = _fit_against_the_paper("ngc6652", eta_max=1.3, field_min_sd=0.0)
    new, _, _ = _fit_against_the_paper("ngc6652")
    assert (capped & published).sum() < 0.9 * published.sum()
    assert (new & published).sum() > 0.97 * published.sum()


@pytest.mark.slow
def test_the_default_outlier_group_lifts_baades_window_precision_and_keeps_its_members():
    # NGC 6522: the BIC keeps the outlier group, the cluster's dispersion leaves the tails, and the extra
    # members far from the cluster's motion go (precision 0.845 without it, docs/src/trust.md)
    plain, published, far = _fit_against_the_paper("ngc6522")
    default = {"cluster_outliers": "auto", "outliers_predicted": False, "field_min_sd": 1.0}  # the defaults
    auto, _, _ = _fit_against_the_paper("ngc6522", **default)
    precision = lambda m: (m & published).sum() / m.sum()  # noqa: E731
    assert precision(auto) > max(0.88, precision(plain) + 0.03), (precision(plain), precision(auto))
    assert (auto & published).sum() > 0.95 * published.sum()
    assert (auto & ~published & (far > 3)).sum() < (plain & ~published & (far > 3)).sum()


# ----------------------------------------------------------------------------- outliers on the cluster's profile

#: Small fits: one field component, one start.
SMALL = {"n_field": 1, "n_starts": 1, "max_iter": 80, "seed": 0}


def _cluster_with_blends(n_field: int = 3000, n_core: int = 400, n_blend: int = 100, seed: int = 0):
    """A concentrated cluster (pm dispersion 0.2 mas/yr, precise stars) whose centre also holds stars with
    corrupted astrometry (the same profile, pm scattered by 1.5 mas/yr), in a flat field (pm dispersion 4)."""
    from grasp_dl.data.astrometry import StarData, error_covariances

    rng = np.random.default_rng(seed)
    n = n_field + n_core + n_blend
    kind = np.repeat([0, 1, 2], [n_core, n_blend, n_field])  # core, blend, field
    plummer = 0.02 * np.sqrt(rng.random(n) ** -1.0 - 1.0)
    radius = np.minimum(np.where(kind < 2, plummer, 0.3 * np.sqrt(rng.random(n))), 0.3)
    spread = np.choose(kind, [0.2, 1.5, 4.0])[:, None]
    values = np.array([1.0, -2.0]) + spread * rng.standard_normal((n, 2))
    values[kind == 2] -= [1.0, -2.0]
    err = rng.uniform(0.03, 0.3, n)
    values += err[:, None] * rng.standard_normal((n, 2))
    return StarData(values, error_covariances(err, err), radius), kind


def test_an_outlier_component_on_the_profile_keeps_the_dispersion_off_the_tails_and_names_no_blend():
    stars, kind = _cluster_with_blends()
    plain = ClusterFieldMixture(cluster_outliers=False, **SMALL).fit(stars)
    robust = ClusterFieldMixture(cluster_outliers=True, outliers_predicted=True, **SMALL).fit(stars)
    # without it the blends at the centre widen the cluster's Gaussian; with it the core keeps the 0.2 mas/yr
    assert plain.sigma_ > 0.24, plain.sigma_
    assert abs(robust.sigma_ - 0.2) < 0.03, robust.sigma_
    assert robust.n_components == plain.n_components + 1 and 1.2 < robust.outlier_sd_ < 1.8  # the blends' 1.5
    assert 0.1 < robust.weights_[-1] / (robust.weights_[0] + robust.weights_[-1]) < 0.35  # 100 of 500
    proba = robust.predict_proba(stars)
    assert ((proba[:, 0] > 0.5) & (kind == 0)).sum() > 0.93 * (kind == 0).sum()
    # the blends far from the cluster's motion are the component's (the last column), not the field's
    far = (kind == 1) & (np.hypot(*(stars.values - robust.cluster_mean_).T) > 1.0)
    assert proba.shape[1] == robust.n_components and proba[far, -1].mean() > 0.6
    assert (proba[far, 0] > 0.5).mean() < 0.1
    # with outliers_predicted off every star is scored as if its astrometry were sound
    robust.outliers_predicted = False
    clean = robust.predict_proba(stars)
    assert (clean[:, -1] == 0).all() and np.allclose(clean.sum(1), 1.0)
    assert (clean[:, 0] >= proba[:, 0] - 1e-12).all()


def test_the_outlier_statistics_add_up_and_the_state_restores_the_component():
    import json

    from grasp_dl.mixtures.em import add_stats

    stars, _ = _cluster_with_blends(n_field=1200, n_core=200, n_blend=50)
    mixture = ClusterFieldMixture(cluster_outliers=True, **{**SMALL, "max_iter": 3}).fit(stars)
    mixture.start_iteration()  # iteration 4: no beta candidates; the first iteration's are checked below
    batch = mixture.em_batch(stars)
    for iteration in (mixture.n_iter_, 1):
        mixture.n_iter_ = iteration - 1
        mixture.start_iteration()
        whole = mixture.e_step(batch)
        assert {"o_b", "o_ss"} <= set(whole) and whole["mass"].shape == (mixture.n_components,)
        half = len(batch) // 2
        parts = add_stats(mixture.e_step(batch.rows(slice(0, half))), mixture.e_step(batch.rows(slice(half, None))))
        for key, value in whole.items():
            torch.testing.assert_close(parts[key], value, rtol=1e-10, atol=1e-8, msg=key)
    state = json.loads(json.dumps(mixture.get_state()))
    restored = ClusterFieldMixture().set_state(state)  # the state says it has the component
    assert restored.cluster_outliers and restored.outlier_sd_ == mixture.outlier_sd_
    np.testing.assert_array_equal(restored.predict_proba(stars), mixture.predict_proba(stars))
    assert np.isfinite(mixture.null_log_likelihood_ratio(batch))
    # the Lightning module passes the options on and counts the component among its groups
    module = XDModule(5, cluster_outliers=True, outlier_min_sd=0.5, outliers_predicted=False, n_clusters=4)
    built = module.new_mixture()
    assert built.cluster_outliers and built.outlier_min_sd == 0.5 and not built.outliers_predicted
    assert built.n_field == 2  # four groups: the cluster, two field components, the outliers
    with pytest.raises(ConfigError, match="cluster_outliers"):
        XDModule(5, cluster_outliers=True, n_clusters=2)


def test_auto_outliers_keep_the_component_where_the_bic_prefers_it_and_only_there():
    with_blends, _ = _cluster_with_blends()
    clean, _ = _cluster_with_blends(n_blend=0, seed=1)
    auto = {**SMALL, "n_field": None, "cluster_outliers": "auto"}
    chosen = ClusterFieldMixture(**auto).fit(with_blends)
    assert chosen.cluster_outliers and 1.2 < chosen.outlier_sd_ < 1.8  # the blends' 1.5 mas/yr
    assert abs(chosen.sigma_ - 0.2) < 0.03, chosen.sigma_
    labels = [row["start"] for row in chosen.selection_]
    assert labels[-1] == "best + outliers"  # one more exploratory fit, the last
    plain = ClusterFieldMixture(**auto).fit(clean)
    assert not plain.cluster_outliers and plain.n_components == 1 + plain.n_field_
    assert plain.selection_[-1]["bic"] > min(row["bic"] for row in plain.selection_[:-1])
    assert plain.outlier_stars() == 0.0
    assert chosen.outlier_stars() == pytest.approx(chosen.weights_[-1] * len(with_blends.radius))
    # model=xd hands the count to the verdict with the null's ratio
    module = XDModule(5, cluster_outliers="auto")
    module.mixture, chosen.log_likelihood_ratio_ = chosen, 50.0
    assert module.null_options()["outlier_stars"] == pytest.approx(chosen.outlier_stars())
    module.mixture, plain.log_likelihood_ratio_ = plain, 50.0
    assert "outlier_stars" not in module.null_options()
    with pytest.raises(ValueError, match="cluster_outliers"):
        ClusterFieldMixture(cluster_outliers="sometimes")


def test_auto_outliers_in_model_xd_only_where_the_bic_chooses_the_field_too():
    built = XDModule(5, cluster_outliers="auto").new_mixture()
    assert built.outliers_auto and not built.cluster_outliers and built.n_field is None
    assert XDModule(5, cluster_outliers="auto").hparams.cluster_outliers == "auto"
    fixed = XDModule(5, cluster_outliers="auto", n_clusters=4).new_mixture()  # n_clusters fixes the groups
    assert not fixed.outliers_auto and not fixed.cluster_outliers and fixed.n_field == 3
    assert XDModule(5, cluster_outliers="auto", n_clusters=2).new_mixture().n_field == 1  # a refit's hparams
    with pytest.raises(ConfigError, match="true, false or auto"):
        XDModule(5, cluster_outliers="maybe")


def test_the_null_verdict_counts_the_outlier_stars_in_its_sqrt_rule():
    from grasp_dl.membership.guards import check_plausibility

    rng = np.random.default_rng(0)
    n = 2000
    prob = np.zeros(n)
    prob[:200] = 0.99  # 200 members: sqrt(200) = 14.1 is needed
    radius = np.where(prob > 0.5, 0.01, 0.1) * rng.random(n)
    alone = check_plausibility(prob, radius, log_likelihood_ratio=16.0)
    assert alone["cluster_found"], alone["cluster_reason"]
    # 500 more stars on the cluster's profile (its outlier component): sqrt(700) = 26.5 is needed
    with_outliers = check_plausibility(prob, radius, log_likelihood_ratio=16.0, outlier_stars=500.0)
    assert not with_outliers["cluster_found"]
    assert "needs >= 26.5" in with_outliers["cluster_reason"]
    assert with_outliers["diagnostics"]["min_log_likelihood_ratio"] == pytest.approx(np.sqrt(700.0))


@pytest.mark.slow
def test_a_background_galaxy_as_tight_as_a_cluster_stays_in_the_field(monkeypatch):
    """The SMC behind 47 Tuc (simulated, pm dispersion 0.1 mas/yr, flat over the cone, 4.7 mas/yr from the
    cluster's motion): a floor of 1.0 mas/yr on every field component's width leaves none that can hold it, so
    the cluster's takes it; the floor on the components near the cluster's motion alone leaves it to the field."""
    from grasp_dl.data.simulate import simulate_field
    from grasp_dl.mixtures import cluster_field

    catalog = simulate_field("47tuc_smc", n_stars=10000, seed=0)
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    stars = star_data(catalog.drop(columns="truth"), center, ("pmra", "pmdec", "parallax"))
    truth = catalog["truth"].to_numpy() == "cluster"
    f1 = lambda m: 2 * (m & truth).sum() / (m.sum() + truth.sum())  # noqa: E731
    default = fit_membership(stars)
    assert f1(default.member_prob > 0.5) > 0.9 and np.hypot(*(default.cluster_mean[:2] - [5.25, -2.53])) < 0.1
    monkeypatch.setattr(cluster_field, "FIELD_FLOOR_REACH", np.inf)  # the floor on every field component
    floored = fit_membership(stars)
    assert f1(floored.member_prob > 0.5) < 0.2  # the SMC named the cluster
