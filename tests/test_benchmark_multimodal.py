"""The multi-modal benchmark's measuring stick: degradation, scores, summaries, one small run (scripts/benchmark_multimodal.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from grasp_dl.models.cmd_density import gaia_photometric_variance

from scripts_loader import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmark_multimodal")


def _catalog(n: int = 4000, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    """A field of n stars: G over 12-21, small errors but a tenth above 1 mas(/yr), memberships certain or not."""
    rng = np.random.default_rng(seed)
    error = rng.uniform(0.02, 0.3, (n, 3))
    error[rng.random(n) < 0.1] = 1.5
    catalog = pd.DataFrame(
        {
            "source_id": np.arange(n) + 10**15,
            "ra": rng.uniform(0, 0.1, n),
            "dec": rng.uniform(0, 0.1, n),
            "pmra": rng.normal(-2, 3, n),
            "pmdec": rng.normal(-5, 3, n),
            "parallax": rng.normal(0.2, 0.3, n),
            "pmra_error": error[:, 0],
            "pmdec_error": error[:, 1],
            "parallax_error": error[:, 2],
            "pmra_pmdec_corr": rng.uniform(-0.3, 0.3, n),
            "phot_g_mean_mag": rng.uniform(12, 21, n),
            "bp_rp": rng.uniform(0.5, 2.0, n),
        },
        index=np.arange(n) + 7,  # not a RangeIndex: the degradation works by position
    )
    memberprob = rng.choice([0.0, 0.01, 0.03, 0.5, 0.97, 0.99, 1.0], n)
    return catalog, memberprob


def test_degradation_redraws_the_bright_certain_stars_only(bench) -> None:
    catalog, memberprob = _catalog()
    before = catalog.copy()
    level = 1.0
    out, chosen = bench.degrade_bright(catalog, memberprob, level, seed=3, colour_error=True)
    pd.testing.assert_frame_equal(catalog, before)  # the input is not changed
    bright = catalog["phot_g_mean_mag"].to_numpy() < 17.5
    certain = (memberprob < 0.02) | (memberprob > 0.98)
    np.testing.assert_array_equal(chosen, bright & certain)
    assert 0 < chosen.sum() < (bright).sum()
    # faint stars and uncertain bright ones: every column as it was, their colour error not stated
    pd.testing.assert_frame_equal(out.loc[~chosen, catalog.columns], catalog[~chosen])
    assert out.loc[~chosen, "bp_rp_error"].isna().all()
    for quantity in ("pmra", "pmdec", "parallax"):
        error = catalog[f"{quantity}_error"].to_numpy()
        worse = chosen & (error < level)
        kept = chosen & (error >= level)
        assert worse.sum() > 300 and kept.sum() > 20
        np.testing.assert_array_equal(out.loc[worse, f"{quantity}_error"], level)
        # the added noise has the variance level^2 - error^2: unit normal once divided by its width
        z = (out[quantity] - catalog[quantity]).to_numpy()[worse] / np.sqrt(level**2 - error[worse] ** 2)
        assert abs(z.mean()) < 0.15 and abs(z.std() - 1.0) < 0.1
        # already as poor as the level: left as it is
        np.testing.assert_array_equal(out.loc[kept, quantity], catalog.loc[kept, quantity])
        np.testing.assert_array_equal(out.loc[kept, f"{quantity}_error"], catalog.loc[kept, f"{quantity}_error"])
    assert (out.loc[chosen, "pmra_pmdec_corr"] == 0).all()
    colour = (out["bp_rp"] - catalog["bp_rp"]).to_numpy()[chosen]
    assert abs(colour.std() - 0.03) < 0.005 and abs(colour.mean()) < 0.005
    # the colour's error is stated like the astrometry's: Gaia's typical error and the scatter in quadrature
    _, typical = gaia_photometric_variance(catalog["phot_g_mean_mag"].to_numpy()[chosen])
    np.testing.assert_allclose(out.loc[chosen, "bp_rp_error"], np.sqrt(typical + 0.03**2))
    assert (out.loc[chosen, "bp_rp_error"] > 0.03).all()
    # not stated (the default): the same catalogue without the column
    hidden, _ = bench.degrade_bright(catalog, memberprob, level, seed=3)
    pd.testing.assert_frame_equal(hidden, out.drop(columns="bp_rp_error"))
    # the same seed gives the same field, another seed another
    again, _ = bench.degrade_bright(catalog, memberprob, level, seed=3, colour_error=True)
    pd.testing.assert_frame_equal(again, out)
    other, _ = bench.degrade_bright(catalog, memberprob, level, seed=4, colour_error=True)
    assert not np.allclose(other.loc[chosen, "pmra"], out.loc[chosen, "pmra"])


def test_degradation_rejects_a_bad_level_or_a_missing_column(bench) -> None:
    catalog, memberprob = _catalog(200)
    with pytest.raises(SystemExit, match="positive number"):
        bench.degrade_bright(catalog, memberprob, 0.0)
    with pytest.raises(SystemExit, match="bp_rp"):
        bench.degrade_bright(catalog.drop(columns="bp_rp"), memberprob, 1.0)


def test_f1_and_ece_on_known_inputs(bench) -> None:
    prob = np.array([0.05, 0.15, 0.95, 1.0])
    truth = np.array([False, True, True, True])
    # bins 0, 1 and 9: |0.05 - 0| + |0.15 - 1| + |1.95 - 2|, over 4 stars
    assert bench.expected_calibration_error(prob, truth) == pytest.approx((0.05 + 0.85 + 0.05) / 4)
    # calibrated: 30 % members among stars at 0.3, none at 0.0
    calibrated = np.r_[np.full(10, 0.3), np.zeros(10)]
    assert bench.expected_calibration_error(calibrated, np.r_[np.ones(3), np.zeros(17)] > 0) == pytest.approx(0.0)
    # NaN counts as 0 (a non-member); no stars -> NaN
    assert bench.expected_calibration_error(np.array([np.nan, 1.0]), np.array([True, True])) == pytest.approx(0.5)
    assert np.isnan(bench.expected_calibration_error(np.array([]), np.array([], bool)))
    # F1: 2 of 3 predicted are members, 2 of 4 members found -> 2 * 2 / (3 + 4)
    member_prob = np.array([0.9, 0.8, 0.7, 0.1, np.nan, 0.2])
    truth = np.array([True, True, False, True, True, False])
    assert bench.f1_score(member_prob, truth) == pytest.approx(4 / 7)
    assert np.isnan(bench.f1_score(member_prob, np.zeros(6, bool)))


def test_outside_the_core_is_beyond_the_published_members_median_radius(bench) -> None:
    # members at 1'-4' from the centre (median 2.5'), non-members spread to 6'
    radius = np.r_[np.linspace(1, 4, 7), np.linspace(0.5, 6, 12)] / 60
    catalog = pd.DataFrame({"ra": 10 + radius / np.cos(np.radians(-30)), "dec": np.full(len(radius), -30.0)})
    memberprob = np.r_[np.full(7, 0.99), np.zeros(12)]
    outside = bench.outside_core(catalog, memberprob, (10.0, -30.0))
    assert np.array_equal(outside, radius >= 2.5 / 60 - 1e-9)
    assert bench.outside_core(catalog, np.zeros(len(radius)), (10.0, -30.0)).all()  # no member: every row


def test_the_summary_pairs_fields_with_the_baseline(bench) -> None:
    def row(field, method, value, members=50, ece=0.1):
        return SimpleNamespace(field=field, method=method, f1=value, members=members, ece=ece)

    rows = [
        row("a", "xd", 0.80),
        row("b", "xd", 0.60),
        row("c", "xd", 0.90),
        row("d", "xd", 0.50, members=3),
        row("a", "new", 0.85, ece=0.01),
        row("b", "new", 0.57, ece=0.03),
        row("c", "new", 0.95, ece=0.02),
        row("d", "new", 0.10, members=3),  # too few members: left out
        row("e", "new", 0.70),  # the baseline did not score it: in the median, not in the gains
        row("f", "new", np.nan),  # undefined: left out
    ]
    s = bench.summarise(rows, "new", "xd", "f1", "ece", min_members=10)
    assert s.fields == 4 and s.median == pytest.approx(np.median([0.85, 0.57, 0.95, 0.70]))
    assert s.median_gain == pytest.approx(0.05)  # gains +0.05, -0.03, +0.05
    assert s.worst_gain == pytest.approx(-0.03) and s.worst_field == "b"
    assert s.share_worse == pytest.approx(1 / 3)
    assert s.median_ece == pytest.approx(np.median([0.01, 0.03, 0.02, 0.1]))
    alone = bench.summarise(rows, "new", "absent", "f1")
    assert alone.fields == 5 and np.isnan(alone.median_gain) and alone.worst_field == "-"


def test_methods_parse_and_a_missing_model_or_config_stops_in_one_line(bench) -> None:
    method = bench.parse_method("model:vade experiment=hard_field")
    assert method.name == "model:vade" and method.overrides == ("experiment=hard_field",)
    assert method.through_product
    assert bench.parse_method("position").name == "position"
    with pytest.raises(SystemExit, match="unknown --method 'knn'"):
        bench.parse_method("knn")
    with pytest.raises(SystemExit, match="only default, position and model"):
        bench.parse_method("xd experiment=hard_field")
    with pytest.raises(SystemExit, match="model=nosuchmodel is not registered"):
        bench.check_available([bench.parse_method("model:nosuchmodel")], [])
    with pytest.raises(SystemExit, match="experiment=nosuch is not a config"):
        bench.check_available([bench.parse_method("model:vade")], ["experiment=nosuch"])
    bench.check_available([bench.parse_method("model:vade experiment=hard_field"), bench.parse_method("xd")], [])


def test_each_method_gets_its_overrides_and_position_scores_the_two_parameter_stars(bench, monkeypatch) -> None:
    calls = []

    def method_for(name):
        return lambda field, options: calls.append((name, options)) or bench.real.Scored(np.zeros(1))

    monkeypatch.setattr(bench.real, "method_for", method_for)
    field = SimpleNamespace(name="f")
    for text in ("xd", "position", "model:vade experiment=hard_field"):
        bench.run_method(bench.parse_method(text), field, ["trainer.max_epochs=2"])
    bench.run_method(bench.parse_method("model:vade"), field, [], score_no_astrometry=True)
    assert calls == [
        ("xd", {}),
        ("model:xd", {"set": ["trainer.max_epochs=2"], "score_no_astrometry": True}),
        ("model:vade", {"set": ["trainer.max_epochs=2", "experiment=hard_field"], "score_no_astrometry": False}),
        ("model:vade", {"set": [], "score_no_astrometry": True}),
    ]


def test_two_parameter_rows_are_those_without_any_astrometry(bench) -> None:
    catalog, _ = _catalog(6)
    catalog.iloc[0, catalog.columns.get_indexer(["pmra", "pmdec", "parallax"])] = np.nan
    catalog.iloc[1, catalog.columns.get_indexer(["pmra"])] = np.nan  # damaged, not a 2-parameter solution
    np.testing.assert_array_equal(bench.two_parameter_rows(catalog), [True, False, False, False, False, False])


def test_a_small_degraded_run_prints_its_tables_and_writes_json(bench, tmp_path, capsys) -> None:
    out = tmp_path / "run.json"
    result = bench.main(
        ["--degrade", "1.0", "--fields", "djorg1", "--method", "xd", "--method", "oracle-cmd", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    field = bench.real.real_field("djorg1", "auto")
    chosen = bench.degradable(field.catalog, field.memberprob)
    members = int((field.memberprob[chosen] > 0.98).sum())
    assert "Degraded bright stars at 1 mas" in printed and f"| djorg1 | xd | {chosen.sum()} | {members} |" in printed
    saved = json.loads(out.read_text())
    assert saved["mode"] == "degraded" and len(saved["rows"]) == 2 == len(result["rows"])
    row, oracle = saved["rows"]
    # the CMD fitted to the paper's own memberships adds to the astrometry (djorg1: 0.632 -> 0.700)
    assert oracle["method"] == "oracle-cmd" and oracle["f1_degraded"] > row["f1_degraded"]
    assert row["degraded"] == chosen.sum() and row["members"] == members >= 10
    assert 0.0 <= row["ece_degraded"] <= 1.0 and 0.0 <= row["ece_outside_core"] <= 1.0
    assert "| ECE outside core |" in printed and "median ECE outside core" in printed
    assert 0.0 < row["f1_degraded"] < row["f1_all"] <= 1.0  # the degraded stars are harder than the rest
    summary = saved["summaries"][0]
    assert summary["method"] == "xd" and summary["fields"] == 1 and summary["median_gain"] == 0.0
    assert summary["median_ece_outside"] == row["ece_outside_core"]


def test_the_simulated_kinds_include_a_faint_member_cone(bench) -> None:
    kinds = bench.simulated_kinds()
    assert [label for label, _, _ in kinds] == ["M4-like", "bulge-like", "faint members"]
    _, base, faint = kinds[2]
    assert base == "ngc6558" and faint["n_stars"] == 10000 and "seed" not in faint
    assert faint["cluster"]["fraction"] == 0.05 and faint["cluster"]["distance_kpc"] > 10


def test_simulated_rows_score_the_two_parameter_stars_by_their_truth(bench, monkeypatch) -> None:
    from grasp_dl.data.simulate import simulate_field

    catalog = simulate_field("m4", n_stars=600, seed=2)
    truth = (catalog["truth"] == "cluster").to_numpy()
    field = bench.real.Field("tiny", catalog.drop(columns="truth"), truth, (0.0, 0.0), (0.0, 0.0))
    two = bench.two_parameter_rows(field.catalog)
    assert two.sum() > 10 and (truth & two).any()
    monkeypatch.setattr(bench.real, "simulated_field", lambda *args: field)
    monkeypatch.setattr(bench, "SIMULATED_KINDS", bench.SIMULATED_KINDS[:1])

    def knows_the_truth_but_skips_the_two_parameter_stars(field, options):
        flags = np.where(two, "missing:pmra+pmdec+parallax", "")
        return bench.real.Scored(np.where(two, np.nan, truth.astype(float)), flags=flags)

    monkeypatch.setattr(bench.real, "method_for", lambda name: knows_the_truth_but_skips_the_two_parameter_stars)
    (row,) = bench.simulated_rows([bench.parse_method("model:vade")], [], [0])
    assert row.two_parameter == two.sum() and row.members == (truth & two).sum() and row.scored == 0
    assert row.flags == {"missing:pmra+pmdec+parallax": int(two.sum())}
    assert row.f1_two_parameter == 0.0 and row.ece_all == pytest.approx((truth & two).sum() / len(truth))
    assert row.f1_all == pytest.approx(2 * (truth & ~two).sum() / ((truth & ~two).sum() + truth.sum()))


def test_timing_reports_the_fit_against_the_baseline(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench.real, "simulated_field", lambda *args: SimpleNamespace(name="cone"))
    fits = {"xd": 2.0, "model:vade": 5.0}
    monkeypatch.setattr(
        bench.real,
        "method_for",
        lambda name: lambda field, options: bench.real.Scored(np.zeros(1), fit_seconds=fits[name]),
    )
    rows = bench.timing_rows([bench.parse_method("xd"), bench.parse_method("model:vade")], [], "xd", repeats=2)
    assert [(r.method, r.fit_seconds, r.ratio) for r in rows] == [("xd", 2.0, 1.0), ("model:vade", 5.0, 2.5)]


def test_a_baseline_not_run_is_named_and_bad_repeats_stop(bench, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench.real, "simulated_field", lambda *args: SimpleNamespace(name="cone"))
    monkeypatch.setattr(
        bench.real, "method_for", lambda name: lambda field, options: bench.real.Scored(np.zeros(1), fit_seconds=3.0)
    )
    result = bench.main(["--timing", "--method", "model:vade"])
    assert "--baseline 'xd' is not among the methods" in capsys.readouterr().err
    assert np.isnan(result["rows"][0]["ratio"])
    with pytest.raises(SystemExit, match="--repeats must be at least 1"):
        bench.main(["--timing", "--repeats", "0"])
    with pytest.raises(SystemExit, match="choose one of"):
        bench.main(["--timing", "--simulated"])


def test_the_oracle_multiplies_the_odds_by_the_cmd_ratio_of_the_reference_members(bench) -> None:
    from benchmark_real_fields import Field

    rng = np.random.default_rng(0)
    n = 600
    member = np.arange(n) < 200
    g = rng.uniform(14, 19, n)
    colour = np.where(member, 0.8, 1.6) + 0.05 * rng.standard_normal(n)  # two sequences, 0.8 mag apart
    catalog = pd.DataFrame({"phot_g_mean_mag": g, "bp_rp": colour})
    catalog.loc[:4, "bp_rp"] = np.nan  # no photometry: kept as scored
    field = Field("two sequences", catalog, member, (0.0, 0.0), (0.0, 0.0), memberprob=np.where(member, 0.99, 0.01))
    astrometry = np.full(n, 0.5)  # the astrometry cannot tell them apart
    astrometry[10] = np.nan  # unscored: stays unscored
    got = bench.oracle_cmd(field, astrometry)
    np.testing.assert_array_equal(got[:5], 0.5)
    assert np.isnan(got[10])
    rows = np.isfinite(got) & np.isfinite(catalog["bp_rp"].to_numpy())
    assert (got[rows & member] > 0.99).all() and (got[rows & ~member] < 0.01).all()
    # a handful of members: fewer components; none: nothing to learn
    few = Field("few", catalog, np.arange(n) < 12, (0.0, 0.0), (0.0, 0.0), memberprob=(np.arange(n) < 12) * 1.0)
    got = bench.oracle_cmd(few, np.full(n, 0.5))  # 7 members with photometry: one component
    assert np.isfinite(got).all() and (got[5:12] > 0.5).all() and (got[200:] < 0.5).all()
    none = Field("none", catalog, np.zeros(n, bool), (0.0, 0.0), (0.0, 0.0), memberprob=np.zeros(n))
    np.testing.assert_array_equal(bench.oracle_cmd(none, astrometry), astrometry)
    assert bench.parse_method("oracle-cmd").name == "oracle-cmd"
    with pytest.raises(SystemExit, match="Hydra overrides"):
        bench.parse_method("oracle-cmd model.cmd_iter=3")
