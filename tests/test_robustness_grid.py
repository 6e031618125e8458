"""The robustness grid's fields (grasp_dl.data.simulate.robustness_field_config) and the benchmark's design."""

from __future__ import annotations

import numpy as np
import pytest

from grasp_dl.data.simulate import (
    ROBUSTNESS_PROFILES,
    field_pm_moments,
    load_simulation_config,
    robustness_field_config,
    simulate_catalog,
)
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.runtime.errors import ConfigError

from scripts_loader import load_script


def _radius_arcmin(df) -> np.ndarray:
    xi, eta = gnomonic_project(df["ra"].to_numpy(float), df["dec"].to_numpy(float), *df.attrs["center"])
    return 60.0 * np.hypot(xi, eta)


def test_field_pm_moments_of_a_mixture() -> None:
    one = {"pm_mean": [1.0, 2.0], "pm_sigma": [3.0, 3.0]}
    mean, sigma = field_pm_moments(one)
    assert mean.tolist() == [1.0, 2.0] and sigma == pytest.approx(3.0)
    two = [
        {"weight": 1, "pm_mean": [0.0, 0.0], "pm_sigma": [1.0, 1.0]},
        {"weight": 1, "pm_mean": [2.0, 0.0], "pm_sigma": [1.0, 1.0]},
    ]
    mean, sigma = field_pm_moments(two)
    # var_x = 1 + 1 (the means' spread), var_y = 1: sqrt((2 + 1) / 2)
    assert mean.tolist() == [1.0, 0.0] and sigma == pytest.approx(np.sqrt(1.5))
    with pytest.raises(ConfigError, match="lacks pm_mean"):
        field_pm_moments([{"pm_sigma": [1, 1]}])


@pytest.mark.parametrize("share, n", [(0.01, 5000), (0.2, 5000)])
def test_share_and_size(share: float, n: int) -> None:
    df = simulate_catalog(**robustness_field_config(share, n, 1.0, "compact", "bright", seed=0))
    assert len(df) == n
    assert (df["truth"] == "cluster").sum() == round(share * n)


@pytest.mark.parametrize("offset", [0.3, 3.0])
def test_offset_in_field_dispersions(offset: float) -> None:
    cfg = robustness_field_config(0.1, 5000, offset, "compact", "bright", seed=1)
    mean, sigma = field_pm_moments(load_simulation_config("ngc6558")["field"])
    assert np.hypot(*(np.asarray(cfg["cluster"]["pm_mean"]) - mean)) == pytest.approx(offset * sigma)
    df = simulate_catalog(**cfg)
    members = df[(df["truth"] == "cluster") & df["pmra"].notna()]
    observed = np.array([members["pmra"].median(), members["pmdec"].median()])
    assert np.hypot(*(observed - mean)) / sigma == pytest.approx(offset, abs=0.05)


def test_profiles_compact_and_extended() -> None:
    compact_cfg = robustness_field_config(0.1, 5000, 1.0, "compact", "bright", seed=0)
    extended_cfg = robustness_field_config(0.1, 5000, 1.0, "extended", "bright", seed=0)
    cone = 60.0 * compact_cfg["radius_deg"]
    assert compact_cfg["cluster"]["tidal_radius_arcmin"] < cone < extended_cfg["cluster"]["tidal_radius_arcmin"]
    for cfg, name in ((compact_cfg, "compact"), (extended_cfg, "extended")):
        for key, value in ROBUSTNESS_PROFILES[name].items():
            assert cfg["cluster"][key] == value
    compact, extended = simulate_catalog(**compact_cfg), simulate_catalog(**extended_cfg)
    r_compact = np.median(_radius_arcmin(compact[compact["truth"] == "cluster"]))
    r_extended = np.median(_radius_arcmin(extended[extended["truth"] == "cluster"]))
    assert r_compact < 1.0 and r_extended > 3.0


def test_bright_and_faint_members() -> None:
    bright = simulate_catalog(**robustness_field_config(0.1, 5000, 1.0, "compact", "bright", seed=0))
    faint = simulate_catalog(**robustness_field_config(0.1, 5000, 1.0, "compact", "faint", seed=0))
    b, f = bright[bright["truth"] == "cluster"], faint[faint["truth"] == "cluster"]
    assert (b["phot_g_mean_mag"] > 19).mean() < 0.1
    assert (f["phot_g_mean_mag"] > 19).mean() > 0.5
    assert f["pmra_error"].median() > 2 * b["pmra_error"].median()


def test_bad_cells_raise() -> None:
    with pytest.raises(ConfigError, match="unknown cluster profile"):
        robustness_field_config(0.1, 5000, 1.0, "tiny", "bright")
    with pytest.raises(ConfigError, match="unknown members"):
        robustness_field_config(0.1, 5000, 1.0, "compact", "medium")
    with pytest.raises(ConfigError, match="share must be in"):
        robustness_field_config(1.5, 5000, 1.0, "compact", "bright")


def _script():
    return load_script("benchmark_robustness")


def test_benchmark_design() -> None:
    bench = _script()
    grid = bench.full_grid()
    assert len(grid) == 5 * 3 * 3 * 2 * 2 * 2
    design = bench.default_design(4)
    names = [bench.cell_name(c) for c in design]
    assert len(set(names)) == len(names) == 1 + sum(len(v) - 1 for v in bench.FACTORS.values()) + 4
    assert design[0] == bench.BASE
    # one factor at a time: every variation differs from the base in exactly one factor
    assert all(sum(c[k] != bench.BASE[k] for k in c) == 1 for c in design[1:12])
    picked = bench.select_cells(["share=0.01,0.02", "members=faint", "n=5000"])
    assert len(picked) == 2 * 3 * 2 * 2 and all(c["members"] == "faint" and c["n"] == 5000 for c in picked)
    assert bench.select_cells([names[0]]) == [bench.BASE]
    cfg = robustness_field_config(0.05, 10000, 1.0, "compact", "bright", 0)
    assert cfg["name"] == names[0]


def test_replicates_and_their_table() -> None:
    bench = _script()
    base = dict(bench.BASE)
    cells = bench.replicate_cells([base], 3)
    assert [c["seed"] for c in cells] == [0, bench.REPLICATE_SEED, bench.REPLICATE_SEED + 1, bench.REPLICATE_SEED + 2]
    assert {bench.cell_family(c) for c in cells} == {"share0.05_n10000_off1_compact_bright"}
    assert bench.replicate_cells([base], 0) == [base]

    def row(seed: int, method: str, dpm: float, floor: float, se: float = 0.05, f1: float = 0.9):
        cell = {**base, "seed": seed}
        return bench.Row(bench.cell_name(cell), method, **cell, f1=f1, pm_error=dpm, pm_se=se, oracle_pm_error=floor)

    rows = [
        row(0, "xd", 0.12, 0.08),
        row(100, "xd", 0.04, 0.05),
        row(101, "xd", 0.05, 0.12),
        row(102, "xd", 0.03, 0.02),
    ]
    rows.append(row(0, "gmm", 0.5, 0.08))  # a single run is no distribution: left out
    table = bench.replicate_table(rows, ["xd", "gmm"]).splitlines()
    assert len(table) == 3 and "gmm" not in table[2]
    cells_ = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells_[:3] == ["share0.05_n10000_off1_compact_bright", "xd", "4"]
    assert cells_[5:10] == ["0.060", "0.120", "25%", "0.068", "25%"]
    z = (0.12**2 + 0.04**2 + 0.05**2 + 0.03**2) / 4 / 0.05**2
    assert float(cells_[10]) == pytest.approx(z**0.5, abs=0.005)
    assert bench.replicate_table(rows[:1], ["xd"]) == ""


def test_scores_include_the_calibration_of_member_prob() -> None:
    bench = _script()
    truth = np.r_[np.ones(100, bool), np.zeros(900, bool)]
    sure = bench.Row("c", "m", **bench.BASE)
    bench._scores(sure, truth.astype(float), truth)
    assert sure.f1 == 1.0 and sure.ece == 0.0 and sure.brier == 0.0
    # the same members, every probability pulled towards 0.5: F1 unchanged, calibration worse
    hedged = bench.Row("c", "m", **bench.BASE)
    bench._scores(hedged, np.where(truth, 0.6, 0.4), truth)
    assert hedged.f1 == 1.0 and hedged.ece == pytest.approx(0.4) and hedged.brier == pytest.approx(0.16)
    table = bench.summary_table([sure, hedged], ["m"])
    assert "median ECE" in table and "| 0.200 | 0.400 |" in table
