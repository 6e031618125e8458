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
    widened = ClusterFieldMixture(field_min_sd=1.0)._field_floor(cov)
    values, vectors = np.linalg.eigh(widened[:2, :2])
    np.testing.assert_allclose(values, [1.0, 4.0], rtol=1e-10)  # the tight axis at the floor, the wide one kept
    np.testing.assert_allclose(np.abs(vectors.T @ rot), np.eye(2), atol=1e-10)  # same orientation
    np.testing.assert_array_equal(widened[2], cov[2])  # the parallax's row untouched
    assert np.all(np.linalg.eigvalsh(widened) > 0)
    # a component already wider than the floor, or no floor, is left as it is
    np.testing.assert_array_equal(ClusterFieldMixture(field_min_sd=0.2)._field_floor(cov), cov)
    np.testing.assert_array_equal(ClusterFieldMixture(field_min_sd=0.0)._field_floor(cov), cov)


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
    """Member probabilities of the mixture on a shipped bulge field, and the paper's membership and errors."""
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
