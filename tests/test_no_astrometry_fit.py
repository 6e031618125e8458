"""Stars without astrometry in the fit: they move the weights and the profile, never the astrometric parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from grasp_dl.data.astrometry import StarData, no_astrometry_rows, star_data
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.prepare import estimate_center
from grasp_dl.data.simulate import simulate_field
from grasp_dl.data.training_catalog import CatalogNeeds
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture
from grasp_dl.mixtures.em import add_stats


@pytest.fixture(scope="module")
def cone() -> tuple[StarData, ClusterFieldMixture]:
    """A simulated M4-like cone (its faint and crowded stars are 2-parameter sources) and a fitted mixture."""
    catalog = simulate_field("m4", n_stars=2000, seed=5)
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    stars = star_data(catalog, center, ("pmra", "pmdec", "parallax"), photometry=True)
    mixture = ClusterFieldMixture(n_field=1, n_starts=1, max_iter=20, seed=0).fit(stars)
    return stars, mixture


def _one_iteration(mixture: ClusterFieldMixture, stars: StarData, extra: torch.Tensor | None):
    """One EM iteration from ``mixture``'s state, with the stars without astrometry (``extra``: their log h_j) or not."""
    mixture = copy.deepcopy(mixture)
    mixture.start_iteration()
    stats = mixture.e_step(mixture.em_batch(stars))
    if extra is not None:
        radius = torch.as_tensor(np.minimum(stars.radius[~stars.has_astrometry], mixture.radius_max_))
        stats = add_stats(stats, mixture.e_step_positional(radius, extra)[0])
    mixture.end_iteration(stats)
    return mixture, stats


def test_stars_without_astrometry_move_the_weights_and_the_profile_not_the_astrometric_parameters(cone):
    stars, fitted = cone
    n_without = int((~stars.has_astrometry).sum())
    assert n_without >= 50
    # their other modality says "cluster" for every one of them
    extra = torch.zeros(n_without, fitted.n_components, dtype=torch.float64)
    extra[:, 0] = 20.0
    alone, _ = _one_iteration(fitted, stars, None)
    both, stats = _one_iteration(fitted, stars, extra)
    # the astrometric parameters come from the stars with astrometry alone
    np.testing.assert_array_equal(both.cluster_mean_, alone.cluster_mean_)
    assert both.sigma_ == alone.sigma_ and both.tau_ == alone.tau_
    np.testing.assert_array_equal(both.field_means_, alone.field_means_)
    np.testing.assert_array_equal(both.field_covariances_, alone.field_covariances_)
    # the weights are every star's: the astrometric mass plus theirs, nearly all of it the cluster's
    everyone = (stats["mass"] + stats["position_mass"]).numpy()
    np.testing.assert_allclose(both.weights_, everyone / everyone.sum(), rtol=1e-9)
    assert float(stats["position_mass"][0]) > 0.9 * n_without
    assert both.weights_[0] > alone.weights_[0] + 0.5 * n_without / len(stars.radius)
    # every star counts in the likelihood, and the profile's scale moves with the extra central mass
    assert round(float(stats["count"])) == len(stars.radius)
    assert both.log_scale_ != alone.log_scale_


def test_a_uniform_other_modality_gives_the_stars_without_astrometry_their_position_alone(cone):
    stars, fitted = cone
    without = stars.subset(~stars.has_astrometry)
    flat = torch.zeros(len(without.radius), fitted.n_components, dtype=torch.float64)
    radius = torch.as_tensor(np.minimum(without.radius, fitted.radius_max_))
    _, q = fitted.e_step_positional(radius, flat)
    np.testing.assert_allclose(q.numpy(), fitted.predict_proba(without), rtol=1e-9)


def test_the_data_module_hands_over_the_2_parameter_rows_beside_the_training_rows(tmp_path):
    catalog = simulate_field("m4", n_stars=1500, seed=6).drop(columns=["truth"])
    module = StellarCatalogDataModule(catalog=catalog, features=["ra", "dec", "pmra", "pmdec", "parallax"])
    module.setup("fit")
    needs = CatalogNeeds(stars="model=multimodal", photometry=True, no_astrometry=True)
    training = module.training_catalog(needs, "cpu")
    without = training.without_astrometry
    expected = no_astrometry_rows(module.prepared.flags, module.prepared.feature_names)
    assert expected.sum() >= 20 and len(without.radius) == int(expected.sum())
    assert not without.has_astrometry.any() and np.isfinite(without.radius).all()
    np.testing.assert_array_equal(without.cmd[:, 0], catalog["phot_g_mean_mag"].to_numpy()[expected])
    assert module.training_catalog(CatalogNeeds(stars="model=xd"), "cpu").without_astrometry is None
