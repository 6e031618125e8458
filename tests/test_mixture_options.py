"""The one mixture's ablation switches (spatial, use_errors, photometry): each changes what it should,
the default path is unchanged, and the colour-magnitude histogram behind the photometry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mixture_reference import RECORD, reference_fit

from grasp_dl.data.astrometry import StarData, error_covariances
from grasp_dl.inference.predict import load_clustering_module, predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture
from grasp_dl.mixtures.cmd_histogram import CMD_BINS, CmdHistogram
from grasp_dl.mixtures.em import add_stats
from grasp_dl.models.ingredients import XD_DEFAULTS, xd_options, xd_start_mixture
from grasp_dl.models.start_pool import restore_start_mixture, start_cluster_probability_stars, start_pool_state

from hydra_configs import TINY, compose_config

#: Small fits: one field component, one start.
#: ... without the outlier group the BIC may add (each test is about one switch of the plain mixture)
SMALL = {"n_field": 1, "n_starts": 1, "max_iter": 60, "seed": 0, "cluster_outliers": False}


def _toy_stars(n: int = 2000, seed: int = 0, photometry: bool = False) -> tuple[StarData, np.ndarray]:
    """A concentrated cluster (10 %, pm dispersion 0.2 mas/yr) in a flat field (pm dispersion 3), errors
    up to 1.5 mas/yr; with ``photometry`` the members lie on one colour, the field spreads over many."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) < n // 10
    radius = np.minimum(np.where(truth, 0.02 * np.sqrt(rng.random(n) ** -1.0 - 1.0), 0.3 * np.sqrt(rng.random(n))), 0.3)
    intrinsic = np.where(truth[:, None], rng.normal([1.0, -2.0], 0.2, (n, 2)), rng.normal(0.0, 3.0, (n, 2)))
    err = rng.uniform(0.05, 1.5, n)
    values = intrinsic + err[:, None] * rng.standard_normal((n, 2))
    cmd = None
    if photometry:
        colour = np.where(truth, 0.8 + 0.02 * rng.standard_normal(n), rng.uniform(0.5, 2.5, n))
        cmd = np.column_stack([rng.uniform(14, 20, n), colour])
    return StarData(values, error_covariances(err, err), radius, cmd), truth


def _f1(member: np.ndarray, truth: np.ndarray) -> float:
    return 2.0 * float((member & truth).sum()) / float(member.sum() + truth.sum())


def _probe(radius: list[float], cmd: list[list[float]] | None = None) -> StarData:
    """Stars at the cluster's proper motion with 0.8 mas/yr errors, at ``radius``."""
    n = len(radius)
    values = np.tile([1.0, -2.0], (n, 1))
    return StarData(values, error_covariances(np.full(n, 0.8), np.full(n, 0.8)), np.array(radius), cmd)


# ----------------------------------------------------------------------------- the default path


def _assert_same_numbers(got: object, want: object, path: str = "state") -> None:
    """Nested dicts / lists of the same keys and lengths, numbers equal to 1e-10 (relative): the last bits may
    differ between CPUs and BLAS builds, a changed fit does not."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for key in want:
            _assert_same_numbers(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_numbers(g, w, f"{path}[{i}]")
    elif isinstance(want, (int, float)) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12), path
    else:
        assert got == want, path


def test_the_default_path_is_the_recorded_fit():
    record = json.loads(RECORD.read_text())
    state, proba = reference_fit()
    _assert_same_numbers(json.loads(json.dumps(state)), record["state"])
    np.testing.assert_allclose(proba, np.asarray(record["proba"]), rtol=1e-10, atol=1e-12)
    # the switches named at their defaults are the same path
    same_state, same_proba = reference_fit(spatial=True, use_errors=True, photometry=False)
    assert same_state == state and np.array_equal(same_proba, proba)


def test_init_xd_builds_the_one_mixture_with_the_switches_as_options():
    mixture = xd_start_mixture(3, 7, xd_options({"spatial": False, "photometry": True}))
    assert isinstance(mixture, ClusterFieldMixture)
    assert (mixture.n_field, mixture.seed, mixture.max_iter) == (2, 7, XD_DEFAULTS["max_iter"])
    assert (mixture.spatial, mixture.use_errors, mixture.photometry) == (False, True, True)


# ----------------------------------------------------------------------------- one test per switch


def test_use_errors_off_is_a_plain_mixture_whose_cluster_absorbs_the_errors():
    stars, truth = _toy_stars()
    deconvolved = ClusterFieldMixture(**SMALL).fit(stars)
    plain = ClusterFieldMixture(use_errors=False, **SMALL).fit(stars)
    assert abs(deconvolved.sigma_ - 0.2) < 0.08  # the intrinsic dispersion
    assert plain.sigma_ > 0.4  # widened by the errors it does not know
    assert plain.beta_ == 0.0 and plain.n_parameters() == deconvolved.n_parameters() - 1  # no crowding term
    np.testing.assert_allclose(deconvolved.cluster_mean_, [1.0, -2.0], atol=0.1)
    member = deconvolved.predict_proba(stars)[:, 0] > 0.5
    assert (member & truth).sum() > 0.85 * truth.sum() and (member & ~truth).sum() < 0.2 * truth.sum()
    # the plain mixture scores a star the same whatever its error; the deconvolved one does not
    precise, loose = _probe([0.05]), _probe([0.05])
    loose.covariances = error_covariances(np.full(1, 1.5), np.full(1, 1.5))
    precise.covariances = error_covariances(np.full(1, 0.05), np.full(1, 0.05))
    precise.values = loose.values = np.array([[1.8, -2.0]])  # 0.8 mas/yr off the cluster's motion
    assert plain.predict_proba(precise)[0, 0] == plain.predict_proba(loose)[0, 0]
    assert deconvolved.predict_proba(loose)[0, 0] > deconvolved.predict_proba(precise)[0, 0] + 0.3


def test_spatial_off_leaves_the_cluster_flat_over_the_cone():
    stars, truth = _toy_stars()
    spatial = ClusterFieldMixture(**SMALL).fit(stars)
    flat = ClusterFieldMixture(spatial=False, **SMALL).fit(stars)
    p_spatial = spatial.predict_proba(_probe([0.005, 0.25]))[:, 0]
    p_flat = flat.predict_proba(_probe([0.005, 0.25]))[:, 0]
    assert p_spatial[0] > p_spatial[1] + 0.3 and 0.005 < math.exp(spatial.log_scale_) < 0.1
    assert p_flat[0] == pytest.approx(p_flat[1], abs=1e-12)  # the radius tells it nothing
    assert flat.n_parameters() == spatial.n_parameters() - 2  # no scale, no slope
    # the cluster is still found by its proper motion alone, with fewer of its members told from the field
    np.testing.assert_allclose(flat.cluster_mean_, [1.0, -2.0], atol=0.15)
    recall = [((m.predict_proba(stars)[:, 0] > 0.5) & truth).sum() for m in (spatial, flat)]
    assert recall[0] > recall[1]


def test_photometry_on_favours_stars_on_the_cluster_sequence():
    stars, truth = _toy_stars(photometry=True)
    with_cmd = ClusterFieldMixture(photometry=True, **SMALL).fit(stars)
    without = ClusterFieldMixture(**SMALL).fit(stars)
    probe = _probe([0.05, 0.05], [[17.0, 0.8], [17.0, 2.2]])
    on_sequence, off_sequence = with_cmd.predict_proba(probe)[:, 0]
    assert on_sequence > off_sequence + 0.3
    assert without.predict_proba(probe)[0, 0] == without.predict_proba(probe)[1, 0]
    # the members' sequence tells more of them from the field
    f1 = [_f1(m.predict_proba(stars)[:, 0] > 0.5, truth) for m in (with_cmd, without)]
    assert f1[0] > f1[1]
    # a star without astrometry is scored from its radius and its photometry
    no_astrometry = StarData(np.full((2, 2), np.nan), np.full((2, 2, 2), np.nan), np.array([0.01, 0.01]), probe.cmd)
    p = with_cmd.predict_proba(no_astrometry)[:, 0]
    assert np.isfinite(p).all() and p[0] > p[1]


def test_photometry_statistics_add_up_and_its_state_round_trips():
    stars, _ = _toy_stars(photometry=True)
    mixture = ClusterFieldMixture(photometry=True, **{**SMALL, "max_iter": 3}).fit(stars)
    mixture.start_iteration()
    batch = mixture.em_batch(stars)
    whole = mixture.e_step(batch)
    half = len(batch) // 2
    parts = add_stats(
        mixture.e_step(batch.rows(slice(0, half))), mixture.e_step(batch.rows(torch.arange(half, len(batch))))
    )
    torch.testing.assert_close(parts["cmd_counts"], whole["cmd_counts"], rtol=1e-10, atol=1e-8)
    assert whole["cmd_counts"].shape == (mixture.n_components, CMD_BINS[0] * CMD_BINS[1])
    restored = ClusterFieldMixture(photometry=True).set_state(json.loads(json.dumps(mixture.get_state())))
    np.testing.assert_array_equal(restored.predict_proba(stars), mixture.predict_proba(stars))
    # the null test keeps each star's photometry with its astrometry: only the positions are shuffled
    assert math.isfinite(mixture.null_log_likelihood_ratio(batch))


def test_photometry_without_magnitudes_and_colours_says_what_is_missing():
    stars, _ = _toy_stars()
    with pytest.raises(ValueError, match="phot_g_mean_mag, bp_rp"):
        ClusterFieldMixture(photometry=True, **SMALL).fit(stars)
    fitted = ClusterFieldMixture(**SMALL).fit(stars)
    with pytest.raises(ValueError, match="not fitted with photometry"):
        ClusterFieldMixture(photometry=True).load_state_dict(fitted.state_dict())
    # a batch made by hand, without the stars' bins, is refused rather than scored without them
    photometric, _ = _toy_stars(photometry=True)
    mixture = ClusterFieldMixture(photometry=True, **{**SMALL, "max_iter": 1}).fit(photometric)
    batch = mixture.em_batch(photometric)
    batch.cmd_bin = None
    with pytest.raises(ValueError, match="em_batch"):
        mixture.e_step(batch)


# ----------------------------------------------------------------------------- the kept start


def test_an_ablated_start_is_kept_with_its_switches_and_scores_alike_after_loading():
    stars, _ = _toy_stars()
    for options in ({"spatial": False}, {"use_errors": False}):
        mixture = ClusterFieldMixture(**SMALL, **options).fit(stars)
        record = json.loads(json.dumps(start_pool_state(mixture, 0)))
        assert record["use_errors"] is mixture.use_errors
        restored = restore_start_mixture(record)
        assert (restored.spatial, restored.use_errors) == (mixture.spatial, mixture.use_errors)
        np.testing.assert_array_equal(
            start_cluster_probability_stars(restored, 0, stars), start_cluster_probability_stars(mixture, 0, stars)
        )
    assert start_pool_state(ClusterFieldMixture(photometry=True), 0) is None  # cannot be scored from features
    default = start_pool_state(ClusterFieldMixture(**SMALL).fit(stars), 0)
    assert set(default["settings"]) == {"crowding", "dispersion_profile", "free_slope"}  # as before the switches


def test_a_start_of_the_retired_second_mixture_says_to_retrain():
    old = {"kind": "spatial_deconvolved", "settings": {"n_components": 3}, "state": {}, "group": 0}
    with pytest.raises(ValueError, match="retrain"):
        restore_start_mixture(old)


# ----------------------------------------------------------------------------- the histogram


def test_the_histogram_is_a_normalised_density_that_batches_can_sum():
    rng = np.random.default_rng(0)
    cmd = np.column_stack([rng.uniform(14, 20, 3000), rng.normal(1.0, 0.3, 3000)])
    cmd[:5] = np.nan
    weights = np.column_stack([np.full(3000, 0.3), np.full(3000, 0.7)])
    weights[cmd[:, 1] < 1.0] = [0.9, 0.1]
    histogram = CmdHistogram.spanning(cmd).fit(cmd, weights)
    area = np.outer(np.diff(histogram.edges[0]), np.diff(histogram.edges[1])).ravel()
    np.testing.assert_allclose((np.exp(histogram.log_density_) * area).sum(1), 1.0)
    log_density = histogram.log_density(cmd)
    assert log_density.shape == (3000, 2) and (log_density[:5] == 0).all()  # no photometry, no information
    blue = np.array([[17.0, 0.8]])
    assert histogram.log_density(blue)[0, 0] > histogram.log_density(blue)[0, 1]
    index = torch.as_tensor(histogram.bin_index(cmd))
    w = torch.as_tensor(weights)
    parts = histogram.counts(index[:1000], w[:1000]) + histogram.counts(index[1000:], w[1000:])
    torch.testing.assert_close(parts, histogram.counts(index, w))
    assert float(parts.sum()) == pytest.approx(weights[5:].sum())
    with pytest.raises(ValueError, match="phot_g_mean_mag and bp_rp"):
        CmdHistogram.spanning(np.full((10, 2), np.nan))
    with pytest.raises(RuntimeError, match="not fitted"):
        CmdHistogram.spanning(cmd).log_density(cmd)


@pytest.mark.slow
@pytest.mark.parametrize("switch", ["model.xd.photometry=true", "model.xd.spatial=false"])
def test_a_deep_model_trains_and_predicts_from_an_ablated_start(switch, tmp_path):
    result = pipeline.train(compose_config("train", [*TINY, "model.init=xd", switch], tmp_path))
    start = result.module.fit_results["xd_fit"]
    assert ("cmd_histogram" in start) is switch.startswith("model.xd.photometry")
    table, _ = predict_catalog(load_clustering_module(result.checkpoint), result.datamodule.table)
    assert table["member_prob"].notna().any()
