"""The Gaia DR3 cone simulator: reproducibility, columns, physics of each component, configs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grasp_dl.data import simulate as sim
from grasp_dl.data.simulate import (
    COLUMNS,
    SIMULATED_FIELDS,
    TRUTH_LABELS,
    gaia_parallax_error,
    king_cumulative,
    load_simulation_config,
    simulate_catalog,
    simulate_field,
)
from grasp_dl.data.sky import angular_separation, gnomonic_deproject, gnomonic_project
from grasp_dl.runtime.errors import ConfigError

FLOAT_COLUMNS = [c for c in COLUMNS if c not in ("source_id", "astrometric_params_solved", "truth")]
ASTROMETRY = ["parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error"]


def _minimal(**changes):
    """A small, fast custom configuration (cluster + one field population)."""
    cfg = {
        "n_stars": 4000,
        "seed": 3,
        "center": [120.0, -30.0],
        "radius_deg": 0.4,
        "cluster": {
            "fraction": 0.3,
            "distance_kpc": 3.0,
            "pm_mean": [4.0, -6.0],
            "pm_dispersion": 0.3,
            "core_radius_arcmin": 1.0,
            "tidal_radius_arcmin": 20.0,
        },
        "field": {
            "pm_mean": [-2.0, -3.0],
            "pm_sigma": [3.0, 3.0],
            "distance": {"dist": "gamma", "shape": 3.0, "scale_kpc": 1.0},
        },
    }
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def m4() -> pd.DataFrame:
    """The bundled M4 field at a reduced size."""
    return simulate_field("m4", n_stars=8000, seed=0)


@pytest.fixture(scope="module")
def tuc() -> pd.DataFrame:
    """The 47 Tuc + SMC field at a reduced size."""
    return simulate_field("47tuc_smc", n_stars=8000, seed=0)


def _radius_arcmin(df: pd.DataFrame, center) -> np.ndarray:
    return angular_separation(df["ra"], df["dec"], center[0], center[1]) * 60.0


# ----------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_frame():
    a = simulate_field("ngc6397", n_stars=3000, seed=7)
    b = simulate_field("ngc6397", n_stars=3000, seed=7)
    pd.testing.assert_frame_equal(a, b)


def test_different_seed_gives_different_frame():
    a = simulate_field("ngc6397", n_stars=3000, seed=7)
    b = simulate_field("ngc6397", n_stars=3000, seed=8)
    assert len(a) == len(b) == 3000
    assert not np.allclose(a["ra"].to_numpy(), b["ra"].to_numpy())
    assert (a["truth"].to_numpy() != b["truth"].to_numpy()).any()


# ----------------------------------------------------------------------------- schema
def test_columns_and_dtypes(m4):
    assert list(m4.columns) == list(COLUMNS)
    assert len(m4) == 8000
    assert m4["source_id"].dtype == np.int64
    assert m4["source_id"].is_unique and (m4["source_id"] > 0).all()
    for col in FLOAT_COLUMNS:
        assert m4[col].dtype == np.float64, col
    assert pd.api.types.is_integer_dtype(m4["astrometric_params_solved"])
    assert set(m4["astrometric_params_solved"].unique()) == {3, 31, 95}
    assert pd.api.types.is_string_dtype(m4["truth"])
    assert set(m4["truth"].unique()) <= set(TRUTH_LABELS)
    assert m4["ra"].between(0.0, 360.0, inclusive="left").all()
    assert m4["dec"].between(-90.0, 90.0).all()
    np.testing.assert_allclose(m4["bp_rp"], m4["phot_bp_mean_mag"] - m4["phot_rp_mean_mag"])
    # photometric errors stated as Gaia states them: flux signal-to-noise, falling with G (BP at G = 20: 0.063 mag)
    sigma_bp = 1.0857 / m4["phot_bp_mean_flux_over_error"]
    order = np.argsort(m4["phot_g_mean_mag"].to_numpy())
    assert (np.diff(sigma_bp.to_numpy()[order]) >= 0).all()
    at_20 = np.abs(m4["phot_g_mean_mag"] - 20.0) < 0.01
    np.testing.assert_allclose(sigma_bp[at_20], 0.063, rtol=0.03)
    five_six = m4["astrometric_params_solved"] != 3
    np.testing.assert_allclose(
        m4.loc[five_six, "parallax_over_error"], m4.loc[five_six, "parallax"] / m4.loc[five_six, "parallax_error"]
    )
    corr = m4.loc[five_six, "pmra_pmdec_corr"]
    assert corr.between(-0.5, 0.5).all() and corr.std() > 0.05
    assert m4.attrs["center"] == pytest.approx((245.8967, -26.5258))


def test_all_stars_inside_the_cone_and_brighter_than_the_limit():
    cfg = _minimal(mag_limit=19.5)
    df = simulate_catalog(**cfg)
    assert df["phot_g_mean_mag"].max() <= 19.5
    assert df["phot_g_mean_mag"].min() > 5.0
    assert (_radius_arcmin(df, cfg["center"]) <= cfg["radius_deg"] * 60.0 + 1e-6).all()


# ----------------------------------------------------------------------------- truth and physics
def test_truth_fractions_follow_the_config(tuc):
    counts = tuc["truth"].value_counts()
    cfg = load_simulation_config("47tuc_smc")
    assert counts["cluster"] == round(cfg["cluster"]["fraction"] * 8000)
    assert counts["galaxy"] == round(cfg["galaxy"]["fraction"] * 8000)
    assert counts["field"] == 8000 - counts["cluster"] - counts["galaxy"]


def test_cluster_is_concentrated(m4):
    r = _radius_arcmin(m4, (245.8967, -26.5258))
    is_cl = (m4["truth"] == "cluster").to_numpy()
    assert np.median(r[is_cl]) < 0.35 * np.median(r[~is_cl])
    # the field is uniform in area: half of it lies beyond radius_deg / sqrt(2)
    assert np.median(r[~is_cl]) == pytest.approx(30.0 / np.sqrt(2.0), rel=0.05)


def test_cluster_radii_follow_the_king_profile():
    cfg = _minimal(n_stars=6000, field=[])
    cfg["cluster"]["fraction"] = 1.0
    df = simulate_catalog(**cfg)
    r = _radius_arcmin(df, cfg["center"])
    rc, rt = 1.0, 20.0
    for radius in (0.5, 1.0, 3.0, 8.0):
        expected = king_cumulative(np.array(radius), rc, rt) / king_cumulative(np.array(rt), rc, rt)
        assert np.mean(r < radius) == pytest.approx(float(expected), abs=0.025)
    assert r.max() <= rt + 1e-6


def test_cluster_mean_proper_motion_and_parallax_of_bright_stars(m4):
    cfg = load_simulation_config("m4")["cluster"]
    bright = m4[(m4["truth"] == "cluster") & (m4["phot_g_mean_mag"] < 18.0) & (m4["astrometric_params_solved"] != 3)]
    assert len(bright) > 100
    assert bright["pmra"].mean() == pytest.approx(cfg["pm_mean"][0], abs=0.1)
    assert bright["pmdec"].mean() == pytest.approx(cfg["pm_mean"][1], abs=0.1)
    assert bright["parallax"].median() == pytest.approx(1.0 / cfg["distance_kpc"], abs=0.03)
    # the internal dispersion shows through for stars with small errors
    assert 0.25 < bright["pmra"].std() < 0.8


def test_cmd_cluster_is_a_narrow_sequence_and_field_is_broad(m4):
    g = m4["phot_g_mean_mag"].to_numpy()
    c = m4["bp_rp"].to_numpy()
    sel = (g > 17.0) & (g < 18.0)  # the cluster's upper main sequence
    is_cl = (m4["truth"] == "cluster").to_numpy()
    assert np.std(c[sel & is_cl]) < 0.1
    assert np.std(c[sel & ~is_cl]) > 0.25


def test_errors_follow_the_gaia_dr3_curve():
    # the typical values the DR3 documentation quotes
    for g, expected in ((15.0, 0.02), (17.0, 0.07), (20.0, 0.5), (21.0, 1.3)):
        assert gaia_parallax_error(g) == pytest.approx(expected, rel=0.1)
    assert np.all(np.diff(gaia_parallax_error(np.linspace(12, 21, 50))) > 0)


def test_errors_grow_with_magnitude(m4):
    ok = m4[m4["astrometric_params_solved"] != 3]
    bins = pd.cut(ok["phot_g_mean_mag"], [14.0, 16.0, 18.0, 19.5, 20.5, 21.0])
    med = ok.groupby(bins, observed=True)[["parallax_error", "pmra_error", "pmdec_error"]].median()
    assert len(med) == 5
    assert (med.diff().iloc[1:] > 0).all().all()
    assert 0.5 < med["pmra_error"].iloc[-1] < 2.0
    # the scatter of the observed values matches the quoted errors (pulls ~ N(0, 1))
    cl = ok[(ok["truth"] == "cluster") & (ok["ruwe"] < 1.4)]
    pulls = (cl["parallax"] - 1.0 / 1.85) / cl["parallax_error"]
    assert pulls.std() == pytest.approx(1.0, abs=0.15)


def test_faint_stars_include_two_parameter_solutions(m4):
    solved = m4["astrometric_params_solved"]
    two = solved == 3
    faint = m4["phot_g_mean_mag"] > 20.5
    assert two[faint].mean() > 0.2
    assert two[m4["phot_g_mean_mag"] < 18.0].mean() < 0.02
    assert m4.loc[two, ASTROMETRY + ["parallax_over_error", "pmra_pmdec_corr", "ruwe"]].isna().all().all()
    assert np.isfinite(m4.loc[~two, ASTROMETRY + ["ruwe"]].to_numpy()).all()
    assert (solved[faint] == 95).mean() > 0.2  # 6-parameter solutions dominate at the faint end


def test_ruwe_is_near_one_with_a_tail(m4):
    ruwe = m4["ruwe"].dropna()
    assert ruwe.median() == pytest.approx(1.01, abs=0.04)
    assert 0.01 < (ruwe > 1.4).mean() < 0.12
    assert ruwe.max() > 3.0


def test_crowded_core_loses_faint_stars_and_astrometry():
    cfg = _minimal(n_stars=6000, field=[])
    cfg["cluster"].update(fraction=1.0, crowding_strength=5.0, crowding_radius_arcmin=1.0)
    crowded = simulate_catalog(**cfg)
    cfg["cluster"]["crowding_strength"] = 0.0
    clean = simulate_catalog(**cfg)
    r_crowd = _radius_arcmin(crowded, cfg["center"])
    r_clean = _radius_arcmin(clean, cfg["center"])
    assert np.mean(r_crowd < 1.0) < 0.8 * np.mean(r_clean < 1.0)
    core = crowded[r_crowd < 1.0]
    outer = crowded[r_crowd > 5.0]
    assert (core["astrometric_params_solved"] == 3).mean() > (outer["astrometric_params_solved"] == 3).mean()
    assert core["ruwe"].median() > outer["ruwe"].median()


def test_galaxy_is_tight_distant_and_denser_towards_its_centre(tuc):
    gal = tuc[(tuc["truth"] == "galaxy") & (tuc["astrometric_params_solved"] != 3)]
    cfg = load_simulation_config("47tuc_smc")["galaxy"]
    assert gal["pmra"].median() == pytest.approx(cfg["pm_mean"][0], abs=0.1)
    assert gal["parallax"].median() == pytest.approx(1.0 / cfg["distance_kpc"], abs=0.05)
    assert gal["phot_g_mean_mag"].min() > 15.0
    d = angular_separation(gal["ra"], gal["dec"], *cfg["center"])
    d0 = angular_separation(6.0236, -72.0813, *cfg["center"])
    assert np.mean(d < d0) > 0.55  # more of the galaxy on the side facing its centre


def test_tails_lie_along_the_position_angle():
    cfg = _minimal(
        n_stars=3000,
        radius_deg=1.0,
        tails={"fraction": 0.2, "position_angle_deg": 60.0, "width_arcmin": 2.0, "pm_gradient": [0.5, 0.0]},
    )
    df = simulate_catalog(**cfg)
    tl = df[df["truth"] == "tails"]
    assert len(tl) == 600
    xi, eta = gnomonic_project(tl["ra"], tl["dec"], *cfg["center"])
    pa = np.radians(60.0)
    along = xi * np.sin(pa) + eta * np.cos(pa)
    across = -xi * np.cos(pa) + eta * np.sin(pa)
    assert np.std(across) * 60.0 < 3.0
    assert np.abs(along).min() * 60.0 >= 0.6 * 20.0 - 0.5
    bright = tl["astrometric_params_solved"] != 3
    slope = np.polyfit(along[bright], tl.loc[bright, "pmra"], 1)[0]
    assert slope == pytest.approx(0.5, abs=0.25)


# ----------------------------------------------------------------------------- sky geometry
def test_gnomonic_hand_checked_values():
    xi, eta = gnomonic_project(245.0, -25.0, 245.0, -26.0)  # 1 deg north on the centre's meridian
    assert float(xi) == pytest.approx(0.0, abs=1e-12)
    assert float(eta) == pytest.approx(np.degrees(np.tan(np.radians(1.0))), rel=1e-12)
    assert float(eta) == pytest.approx(1.0, abs=2e-4)
    xi, _ = gnomonic_project(10.1, 0.0, 10.0, 0.0)
    assert float(xi) > 0  # east is +xi
    ra, dec = gnomonic_deproject(0.0, 0.0, 359.9, -72.0)
    assert (float(ra), float(dec)) == pytest.approx((359.9, -72.0))


@pytest.mark.parametrize("ra0,dec0", [(0.05, 10.0), (359.95, -30.0), (6.0236, -72.0813), (123.0, -89.7), (200.0, 89.9)])
def test_gnomonic_round_trip(ra0, dec0):
    rng = np.random.default_rng(1)
    xi = rng.uniform(-1.0, 1.0, 500)
    eta = rng.uniform(-1.0, 1.0, 500)
    ra, dec = gnomonic_deproject(xi, eta, ra0, dec0)
    assert ((ra >= 0) & (ra < 360)).all()
    xi2, eta2 = gnomonic_project(ra, dec, ra0, dec0)
    np.testing.assert_allclose(xi2, xi, atol=1e-9)
    np.testing.assert_allclose(eta2, eta, atol=1e-9)
    # angular distances from the centre are exact: rho = arctan(sqrt(xi^2 + eta^2))
    rho = np.degrees(np.arctan(np.radians(np.hypot(xi, eta))))
    np.testing.assert_allclose(angular_separation(ra, dec, ra0, dec0), rho, atol=1e-9)


def test_cone_across_ra_zero_is_continuous():
    df = simulate_catalog(**_minimal(center=[0.1, -5.0], n_stars=2000))
    assert (df["ra"] > 359.0).any() and (df["ra"] < 1.0).any()
    assert (angular_separation(df["ra"], df["dec"], 0.1, -5.0) <= 0.4 + 1e-9).all()


# ----------------------------------------------------------------------------- configs and errors
@pytest.mark.parametrize("name", SIMULATED_FIELDS)
def test_each_bundled_config_loads_and_simulates(name):
    cfg = load_simulation_config(name)
    assert cfg["name"] == name and "_target_" not in cfg
    df = simulate_field(name, n_stars=3000, seed=1)
    assert len(df) == 3000
    labels = set(df["truth"].unique())
    assert {"cluster", "field"} <= labels
    assert ("galaxy" in labels) == (cfg.get("galaxy") is not None)
    assert (df["truth"] == "cluster").sum() >= 60
    default_cluster = round(cfg["cluster"]["fraction"] * cfg["n_stars"])
    assert default_cluster >= 300  # a few hundred members at the default size


def test_overrides_merge_into_nested_sections():
    df = simulate_field("m4", n_stars=2000, cluster={"fraction": 0.25})
    assert (df["truth"] == "cluster").sum() == 500
    assert df.attrs["name"] == "m4"


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="bogus_key"):
        simulate_field("m4", n_stars=1000, cluster={"bogus_key": 1})
    with pytest.raises((ConfigError, TypeError), match="wrong_top"):
        simulate_field("m4", wrong_top=3)
    with pytest.raises(TypeError, match="wrong_top"):
        simulate_catalog(**_minimal(wrong_top=3))
    cfg = _minimal()
    cfg["field"]["pm_meen"] = [0, 0]
    with pytest.raises(ConfigError, match="pm_meen"):
        simulate_catalog(**cfg)
    cfg = _minimal()
    cfg["cluster"]["cmd"] = {"model": "isochrone", "hb_colour": [0, 1]}
    with pytest.raises(ConfigError, match="hb_colour"):
        simulate_catalog(**cfg)


def test_unknown_key_in_a_config_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "simulation").mkdir()
    (tmp_path / "simulation" / "odd.yaml").write_text("n_stars: 10\nclustr: {}\n")
    monkeypatch.setattr(sim, "conf_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match="clustr"):
        load_simulation_config("odd")
    with pytest.raises(ConfigError, match="no simulation config 'nope'"):
        load_simulation_config("nope")


def test_bad_fractions_raise():
    cfg = _minimal()
    cfg["cluster"]["fraction"] = 1.5
    with pytest.raises(ConfigError, match="fraction"):
        simulate_catalog(**cfg)
    cfg = _minimal()
    cfg["cluster"]["fraction"] = -0.1
    with pytest.raises(ConfigError, match="fraction"):
        simulate_catalog(**cfg)
    cfg = _minimal(galaxy={"fraction": 0.8, "distance_kpc": 60.0, "pm_mean": [0.7, -1.2]})
    with pytest.raises(ConfigError, match="sum to"):
        simulate_catalog(**cfg)
    cfg = _minimal(field=[])
    with pytest.raises(ConfigError, match="field"):
        simulate_catalog(**cfg)


def test_field_populations_share_the_remainder_by_weight():
    pop = _minimal()["field"]
    cfg = _minimal(n_stars=1000, field=[dict(pop, weight=3.0), dict(pop, weight=1.0, pm_mean=[20.0, 20.0])])
    df = simulate_catalog(**cfg)
    field = df[(df["truth"] == "field") & (df["astrometric_params_solved"] != 3)]
    far = (field["pmra"] > 10).sum() / len(field)
    assert far == pytest.approx(0.25, abs=0.05)
