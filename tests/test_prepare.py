"""prepare_stellar_data / create_color_features: features, flags, mask round-trip, cuts."""

import numpy as np
import pandas as pd
import pytest

from grasp_dl import create_color_features, prepare_stellar_data
from grasp_dl.data.feature_matrix import PreparedFeatures
from grasp_dl.data.prepare import PreparedCatalog, estimate_center
from grasp_dl.runtime.errors import CatalogError, ConfigError


def _cone(n=400, ra0=10.0, dec0=-20.0, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "source_id": np.arange(n, dtype=np.int64) + 1000,
            "ra": ra0 + rng.normal(0, 0.1, n) / np.cos(np.radians(dec0)),
            "dec": dec0 + rng.normal(0, 0.1, n),
            "pmra": rng.normal(2, 1, n),
            "pmdec": rng.normal(-3, 1, n),
            "parallax": rng.normal(0.5, 0.2, n),
            "parallax_error": np.full(n, 0.1),
            "ruwe": np.full(n, 1.0),
            "phot_g_mean_mag": rng.uniform(14, 20, n),
            "phot_bp_mean_mag": rng.uniform(14, 20, n),
            "phot_rp_mean_mag": rng.uniform(14, 20, n),
        }
    )


def test_unpacks_like_the_seed_and_positions_become_offsets():
    df = _cone()
    X, names = prepare_stellar_data(df, center=(10.0, -20.0))
    assert names == ["xi", "eta", "pmra", "pmdec", "parallax"]
    assert X.shape == (400, 5) and X.dtype == np.float32 and X.catalog_rows.mask.all()
    # offsets are in degrees on the sky: the cos(dec) stretch of RA is gone
    assert abs(X[:, 0].std() - 0.1) < 0.02 and abs(X[:, 1].std() - 0.1) < 0.02
    np.testing.assert_allclose(X[:, 2], df["pmra"], rtol=1e-6)


def test_missing_astrometry_is_flagged_and_mask_maps_back():
    df = _cone()
    df.loc[[3, 7, 11], ["parallax", "pmra", "pmdec"]] = np.nan
    df.loc[20, "pmra"] = np.nan
    prepared = prepare_stellar_data(df, center=(10.0, -20.0))
    assert prepared.n_usable == 396 and prepared.n_rows == 400
    assert not prepared.mask[[3, 7, 11, 20]].any()
    assert prepared.flags[3] == "missing:pmra+pmdec+parallax"
    assert prepared.flags[20] == "missing:pmra"
    assert prepared.cuts == {"missing:pmra+pmdec+parallax": 3, "missing:pmra": 1, "outlier": 0}
    # mask round trip: the usable rows of the input are exactly the matrix rows, in order
    np.testing.assert_allclose(prepared.features[:, 2], df.loc[prepared.mask, "pmra"], rtol=1e-6)


def test_quality_cuts_count_rows_and_are_off_by_default():
    df = _cone()
    df.loc[:9, "ruwe"] = 2.0
    df.loc[10:14, "parallax_error"] = 10.0
    assert prepare_stellar_data(df, center=(10, -20), outlier_removal=False).n_usable == 400
    prepared = prepare_stellar_data(
        df, center=(10, -20), ruwe_max=1.4, parallax_over_error_min=1.0, mag_range=(None, 19.0)
    )
    # cuts are applied in order; each counts the rows it removed that no earlier cut had
    bad_ruwe = df.ruwe > 1.4
    bad_poe = ~bad_ruwe & (df.parallax / df.parallax_error < 1.0)
    faint = ~bad_ruwe & ~bad_poe & (df.phot_g_mean_mag > 19)
    assert prepared.cuts["ruwe>1.4"] == 10
    assert prepared.cuts["parallax_over_error<1"] == bad_poe.sum() >= 5
    assert prepared.cuts["phot_g_mean_mag outside [None, 19.0]"] == faint.sum() > 0
    assert not prepared.mask[:15].any()
    assert prepared.n_usable == 400 - sum(prepared.cuts.values())


def test_outliers_are_flagged_not_dropped_silently():
    df = _cone()
    df.loc[5, "pmra"] = 500.0
    prepared = prepare_stellar_data(df, center=(10, -20))
    assert prepared.flags[5] == "outlier" and prepared.cuts["outlier"] == 1
    assert prepare_stellar_data(df, center=(10, -20), outlier_removal=False).mask[5]


def test_center_estimated_across_ra_zero():
    rng = np.random.default_rng(2)
    ra = (rng.normal(0.0, 0.05, 3000)) % 360.0
    dec = rng.normal(45.0, 0.05, 3000)
    ra0, dec0 = estimate_center(np.r_[ra, rng.uniform(359, 361, 1000) % 360], np.r_[dec, rng.uniform(44, 46, 1000)])
    assert min(ra0, 360 - ra0) < 0.02 and abs(dec0 - 45.0) < 0.02
    prepared = prepare_stellar_data(pd.DataFrame({"ra": ra, "dec": dec}), features=["ra", "dec"])
    assert abs(np.median(prepared.features[:, 0])) < 0.01


def test_color_features_from_short_and_gaia_names():
    df = _cone(10).rename(columns={"phot_g_mean_mag": "G", "phot_bp_mean_mag": "BP", "phot_rp_mean_mag": "RP"})
    out = create_color_features(df, magnitude_columns=["G", "BP", "RP"])
    np.testing.assert_allclose(out["bp_rp"], df["BP"] - df["RP"])
    np.testing.assert_allclose(out["g_rp"], df["G"] - df["RP"])
    np.testing.assert_allclose(out["bp_g"], df["BP"] - df["G"])
    assert "bp_rp" not in df.columns  # input untouched
    out2 = create_color_features(_cone(10))
    assert {"bp_rp", "bp_g", "g_rp"} <= set(out2.columns)
    with pytest.raises(CatalogError, match="magnitude column 'X'"):
        create_color_features(df, magnitude_columns=["X", "BP", "RP"])


def test_colour_and_radius_features_are_derived():
    prepared = prepare_stellar_data(_cone(), features=["radius", "bp_rp", "phot_g_mean_mag"], center=(10, -20))
    assert prepared.feature_names == ["radius", "bp_rp", "phot_g_mean_mag"]
    assert (prepared.features[:, 0] >= 0).all()


def test_bad_input_messages():
    df = _cone()
    with pytest.raises(CatalogError, match="pmra"):
        prepare_stellar_data(df.drop(columns=["pmra"]))
    df_str = df.copy()
    df_str["parallax"] = "abc"
    with pytest.raises(CatalogError, match="parallax"):
        prepare_stellar_data(df_str)
    with pytest.raises(CatalogError):
        prepare_stellar_data(df.iloc[:0])
    with pytest.raises(ConfigError, match="no features"):
        prepare_stellar_data(df, features=[])
    all_nan = df.copy()
    all_nan["pmra"] = np.nan
    with pytest.raises(CatalogError, match="no usable star"):
        prepare_stellar_data(all_nan)


def test_real_pal13_export(pal13_path):
    prepared = prepare_stellar_data(pal13_path)
    assert prepared.n_rows == 123
    assert 0 < prepared.n_usable < 123
    assert any(flag.startswith("missing:") for flag in prepared.cuts)
    ra0, dec0 = prepared.center
    assert abs(ra0 - 346.685) < 0.03 and abs(dec0 - 12.772) < 0.03


def test_two_values_with_the_rest_as_attributes_and_a_round_trip_through_pickle():
    import copy
    import pickle

    df = _cone()
    df.loc[[3, 7], ["parallax", "pmra", "pmdec"]] = np.nan
    prepared = prepare_stellar_data(df, center=(10.0, -20.0))
    assert isinstance(prepared, tuple) and len(prepared) == 2
    X, names = prepared
    assert X is prepared.features and names is prepared.feature_names and prepared[0] is X
    with pytest.raises(ValueError, match="not enough values"):
        _features, _names, _mask = prepared
    assert prepared.center == (10.0, -20.0) and prepared.cuts["missing:pmra+pmdec+parallax"] == 2
    assert prepared.flags[3] == "missing:pmra+pmdec+parallax" and prepared.flags[0] == ""
    # the matrix knows which catalogue rows it holds
    assert isinstance(X, PreparedFeatures) and X.catalog_rows.mask is prepared.mask
    assert X.catalog_rows.n_rows == 400 and X.catalog_rows.n_prepared == 398
    for clone in (pickle.loads(pickle.dumps(prepared)), copy.deepcopy(prepared)):
        assert isinstance(clone, PreparedCatalog) and clone.feature_names == names
        np.testing.assert_array_equal(clone.features, X)
        np.testing.assert_array_equal(clone.features.catalog_rows.mask, prepared.mask)
        assert clone.cuts == prepared.cuts and clone.center == prepared.center
    assert "rows=400" in repr(prepared) and "398x5" in repr(prepared)


def test_a_prepared_catalog_rejects_a_mask_that_does_not_fit_its_features():
    with pytest.raises(ValueError, match="3 feature rows but the mask keeps 2"):
        PreparedCatalog(np.zeros((3, 1)), ["a"], np.array([True, True, False]), np.array(["", "", "x"]), None)
