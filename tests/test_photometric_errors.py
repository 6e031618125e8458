"""Photometric errors as the catalogue states them: read, carried with the stars, used by the CMD densities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grasp_dl.data.astrometry import MAG_PER_SNR, StarData, photometric_variances, star_data


def _cone(n: int = 5, **columns: list[float]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "ra": 10 + 0.01 * rng.standard_normal(n),
            "dec": -20 + 0.01 * rng.standard_normal(n),
            **{c: rng.standard_normal(n) for c in ("pmra", "pmdec", "parallax")},
            **{f"{c}_error": np.full(n, 0.1) for c in ("pmra", "pmdec", "parallax")},
            "phot_g_mean_mag": np.linspace(15, 20, n),
            "bp_rp": np.full(n, 1.0),
        }
    )
    return table.assign(**columns)


def test_a_catalogue_without_photometric_errors_states_none():
    assert photometric_variances(_cone()) is None
    assert star_data(_cone(), (10, -20), photometry=True).cmd_variance is None


def test_the_colour_error_column_is_read_as_is_and_bad_values_are_not_stated():
    table = _cone(bp_rp_error=[0.05, np.nan, -1.0, 0.0, 0.2])
    got = photometric_variances(table)
    assert got.shape == (5, 2) and np.isnan(got[:, 0]).all()  # G's error not stated
    np.testing.assert_allclose(got[[0, 4], 1], [0.05**2, 0.2**2])
    assert np.isnan(got[1:4, 1]).all()  # missing, negative, zero: the model's typical error is used there


def test_gaias_flux_signal_to_noise_gives_the_magnitude_errors():
    # S/N 100 in G: 1.0857 / 100 mag; BP and RP at S/N 50 and 20 add in quadrature
    table = _cone(
        phot_g_mean_flux_over_error=[100.0] * 5,
        phot_bp_mean_flux_over_error=[50.0] * 5,
        phot_rp_mean_flux_over_error=[20.0] * 5,
    )
    got = photometric_variances(table)
    np.testing.assert_allclose(got[:, 0], (MAG_PER_SNR / 100) ** 2)
    np.testing.assert_allclose(got[:, 1], (MAG_PER_SNR / 50) ** 2 + (MAG_PER_SNR / 20) ** 2)
    assert MAG_PER_SNR == pytest.approx(1.0857, abs=1e-4)


def test_a_stated_magnitude_error_wins_over_the_flux_signal_to_noise_where_both_are_given():
    table = _cone(bp_rp_error=[0.3, np.nan, 0.3, 0.3, 0.3], phot_bp_mean_flux_over_error=[10.0] * 5)
    table["phot_rp_mean_flux_over_error"] = 10.0
    got = photometric_variances(table)[:, 1]
    assert got[0] == pytest.approx(0.09)
    assert got[1] == pytest.approx(2 * (MAG_PER_SNR / 10) ** 2)  # no magnitude error: from the fluxes


def test_the_stars_carry_their_stated_errors_through_subsets_and_concatenation():
    stars = star_data(_cone(bp_rp_error=[0.1, 0.2, 0.3, 0.4, 0.5]), (10, -20), photometry=True)
    np.testing.assert_allclose(stars.cmd_variance[:, 1], np.array([0.1, 0.2, 0.3, 0.4, 0.5]) ** 2)
    part = stars.subset(np.array([4, 0]))
    np.testing.assert_allclose(part.cmd_variance[:, 1], [0.25, 0.01])
    unstated = star_data(_cone(3), (10, -20), photometry=True)
    joined = StarData.concatenate([part, unstated])
    assert joined.cmd_variance.shape == (5, 2)
    np.testing.assert_allclose(joined.cmd_variance[:2, 1], [0.25, 0.01])
    assert np.isnan(joined.cmd_variance[2:]).all()
    assert StarData.concatenate([unstated, unstated]).cmd_variance is None
    # without photometry nothing photometric is collected
    assert star_data(_cone(bp_rp_error=[0.1] * 5), (10, -20)).cmd_variance is None


def test_a_photometric_error_column_of_text_is_one_line_naming_it_and_the_fix():
    from grasp_dl.runtime.errors import CatalogError

    table = _cone(bp_rp_error=["0.1", "n/a", "0.2", "x", "0.3"])
    with pytest.raises(CatalogError, match=r"'bp_rp_error'.*not numeric.*'n/a'.*drop it \(the model then uses Gaia"):
        photometric_variances(table)
    with pytest.raises(CatalogError, match="phot_g_mean_flux_over_error.*True/False"):
        photometric_variances(_cone(phot_g_mean_flux_over_error=[True] * 5))
