"""Plausibility guards: a group is the cluster only if concentrated on the sky and tight in proper motion."""

import numpy as np
import pandas as pd
import pytest

from grasp_dl.inference.predict import predict_command
from grasp_dl.membership.guards import (
    MAX_PM_DISPERSION_RATIO,
    MAX_RADIUS_RATIO,
    StarSample,
    apply_verdict,
    check_plausibility,
    check_table,
    no_cluster_warning,
    pm_dispersion,
    radial_profile,
    weighted_median,
    zero_member_prob_file,
)
from grasp_dl.membership.rules import choose_cluster_group, decide_cluster_group
from grasp_dl.membership.summary import ClusterSummary

NAMES = ["xi", "eta", "pmra", "pmdec", "parallax"]
CONE = 0.2  # degrees


def _disc(rng, n, radius=CONE):
    """Positions spread evenly over a cone of ``radius`` degrees."""
    r = radius * np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi)])


def _plummer(rng, n, a, radius=CONE):
    """Positions of a Plummer cluster of scale radius ``a`` degrees, truncated at ``radius``."""
    out = []
    while sum(len(o) for o in out) < n:
        u = rng.uniform(0, 1, 4 * n)
        r = a * np.sqrt(u / (1 - u))
        r = r[r < radius]
        phi = rng.uniform(0, 2 * np.pi, len(r))
        out.append(np.column_stack([r * np.cos(phi), r * np.sin(phi)]))
    return np.vstack(out)[:n]


def _field(rng, n):
    return np.column_stack([_disc(rng, n), rng.normal(-3, 3, (n, 2)), rng.normal(0.3, 0.3, n)])


def _cluster(rng, n, a=0.02):
    return np.column_stack([_plummer(rng, n, a), rng.normal(2, 0.15, (n, 2)), rng.normal(0.12, 0.05, n)])


def test_field_only_catalogue_finds_no_cluster():
    rng = np.random.default_rng(0)
    features = _field(rng, 5000)
    # a 2-group split of a pure field: the pm core against the pm wings (the wings hold the rest)
    core = np.hypot(features[:, 2] + 3, features[:, 3] + 3) < 2.0
    prob = np.column_stack([core, ~core]).astype(float)
    for group in (0, 1):
        check = check_plausibility(prob[:, group], np.hypot(features[:, 0], features[:, 1]), features[:, 2:4])
        assert check["cluster_found"] is False
        assert "not concentrated on the sky" in check["cluster_reason"]
    group, check = decide_cluster_group(prob, features, NAMES)
    assert check["cluster_found"] is False and group in (0, 1)


def test_a_group_of_90_percent_spread_evenly_is_not_a_cluster():
    rng = np.random.default_rng(1)
    features = _field(rng, 6000)
    # the candidate: 90% of the stars, tight in pm (a cold stream-like group) but spread over the whole cone
    features[:5400, 2:4] = rng.normal(1.0, 0.2, (5400, 2))
    member = np.zeros(6000)
    member[:5400] = 0.95
    check = check_plausibility(member, np.hypot(features[:, 0], features[:, 1]), features[:, 2:4])
    assert check["cluster_found"] is False
    d = check["diagnostics"]
    assert d["cluster_share"] == pytest.approx(0.9)
    assert d["radius_ratio"] > MAX_RADIUS_RATIO and d["pm_dispersion_ratio"] < MAX_PM_DISPERSION_RATIO
    given = ClusterSummary.from_dict(
        {"cluster_group": 0, "n_members": 5400, "sum_member_prob": 5130.0, "mean_pmra": 1.0}
    )
    summary = apply_verdict(given, check)
    assert summary.n_members == 0 and summary.sum_member_prob == 0 and np.isnan(summary.mean("pmra"))
    assert given.n_members == 5400 and given.mean("pmra") == 1.0 and given.cluster_found is None  # not changed
    assert no_cluster_warning(summary).startswith("warning: no cluster found")


def test_a_tight_cone_where_the_cluster_holds_70_percent_still_finds_it():
    rng = np.random.default_rng(2)
    features = np.vstack([_cluster(rng, 7000, a=0.05), _field(rng, 3000)])
    truth = np.repeat([1, 0], [7000, 3000])
    prob = np.column_stack([truth == 0, truth == 1]).astype(float)
    group, check = decide_cluster_group(prob, features, NAMES)
    assert group == 1 and check["cluster_found"] is True, check["cluster_reason"]
    d = check["diagnostics"]
    assert d["cluster_share"] == pytest.approx(0.7)
    assert d["radius_ratio"] < MAX_RADIUS_RATIO and d["pm_dispersion_ratio"] < MAX_PM_DISPERSION_RATIO
    assert d["tests"] == ["spatial", "proper_motion"]
    assert choose_cluster_group(prob, features, NAMES) == 1


def test_the_plausible_group_wins_over_a_better_scoring_implausible_one():
    rng = np.random.default_rng(3)
    field = _field(rng, 4000)
    cluster = _cluster(rng, 300, a=0.01)
    cluster[:, 2:4] = rng.normal(2, 0.6, (300, 2))
    # a "galaxy" spread over the cone but extremely tight in pm: best pm score, fails the spatial test
    galaxy = np.column_stack([_disc(rng, 2000), rng.normal(0.5, 0.005, (2000, 2)), rng.normal(0, 0.05, 2000)])
    features = np.vstack([field, cluster, galaxy])
    labels = np.repeat([0, 1, 2], [4000, 300, 2000])
    group, check = decide_cluster_group(np.eye(3)[labels], features, NAMES)
    assert group == 1 and check["cluster_found"]


def test_deconvolution_removes_measurement_errors_from_the_dispersion():
    rng = np.random.default_rng(4)
    n = 20000
    errors = np.full((n, 2), 1.0)
    pm = rng.normal(0, 0.2, (n, 2)) + rng.normal(0, 1.0, (n, 2))
    w = np.ones(n)
    assert pm_dispersion(pm, w) == pytest.approx(np.hypot(0.2, 1.0), rel=0.03)
    assert pm_dispersion(pm, w, errors) == pytest.approx(0.2, abs=0.03)
    # errors larger than the spread: clipped at 0, never NaN
    assert pm_dispersion(rng.normal(0, 0.5, (100, 2)), np.ones(100), np.full((100, 2), 3.0)) == 0.0


def test_helpers_weighted_median_and_profile():
    assert weighted_median(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 10.0])) == 3.0
    assert np.isnan(weighted_median(np.array([1.0]), np.array([0.0])))
    rng = np.random.default_rng(5)
    r = np.hypot(*_disc(rng, 40000).T)
    profile = radial_profile(r, np.zeros(len(r)), n_bins=5)
    assert len(profile["edges_arcmin"]) == 6 and profile["edges_arcmin"][-1] == pytest.approx(CONE * 60, rel=0.01)
    density = np.array(profile["other_density_per_arcmin2"])
    expected = 40000 / (np.pi * (CONE * 60) ** 2)
    np.testing.assert_allclose(density, expected, rtol=0.1)  # a flat field is flat
    assert profile["member_density_per_arcmin2"] == [0.0] * 5


def test_too_few_members_or_no_other_stars_cannot_be_judged():
    rng = np.random.default_rng(6)
    features = _field(rng, 1000)
    radius = np.hypot(features[:, 0], features[:, 1])
    few = np.zeros(1000)
    few[np.argsort(radius)[:5]] = 1.0
    check = check_plausibility(few, radius, features[:, 2:4])
    assert not check["cluster_found"] and "only 5 stars" in check["cluster_reason"]
    every = np.ones(1000)
    check = check_plausibility(every, radius, features[:, 2:4])
    assert not check["cluster_found"] and "no other stars" in check["cluster_reason"]


def _catalogue(rng, n_cluster, n_field, center=(250.0, -30.0)):
    pos = np.vstack([_plummer(rng, n_cluster, 0.02), _disc(rng, n_field)])
    dec0 = np.radians(center[1])
    table = pd.DataFrame(
        {
            "ra": center[0] + pos[:, 0] / np.cos(dec0),
            "dec": center[1] + pos[:, 1],
            "pmra": np.r_[rng.normal(2, 0.1, n_cluster), rng.normal(-3, 3, n_field)],
            "pmdec": np.r_[rng.normal(-1, 0.1, n_cluster), rng.normal(-3, 3, n_field)],
            "pmra_error": 0.3,
            "pmdec_error": 0.3,
        }
    )
    member = np.r_[np.full(n_cluster, 0.9), np.full(n_field, 0.01)]
    return table, member


def test_the_sample_of_a_stream_judges_like_the_whole_catalogue():
    rng = np.random.default_rng(7)
    table, member = _catalogue(rng, 500, 9500)
    whole = check_table(member, table, (250.0, -30.0))
    assert whole["cluster_found"] and whole["diagnostics"]["pm_dispersion_deconvolved"]
    sample = StarSample(size=4000, seed=0)
    predictions = pd.DataFrame({"label": np.zeros(len(table), int), "member_prob": member})
    predictions.loc[::97, "label"] = -1  # unscored rows never enter the sample
    for start in range(0, len(table), 1500):
        sample.update(predictions.iloc[start : start + 1500], table.iloc[start : start + 1500])
    assert len(sample.rows) == 4000 and sample.n_seen == int((predictions["label"] >= 0).sum())
    check = sample.check((250.0, -30.0))
    assert check["cluster_found"]
    for key in ("radius_ratio", "pm_dispersion_ratio"):
        assert check["diagnostics"][key] == pytest.approx(whole["diagnostics"][key], abs=0.08)
    # the profile of the sample is scaled back to the whole catalogue
    total = sum(
        d * np.pi * (b**2 - a**2)
        for d, a, b in zip(
            check["diagnostics"]["radial_profile"]["other_density_per_arcmin2"],
            check["diagnostics"]["radial_profile"]["edges_arcmin"][:-1],
            check["diagnostics"]["radial_profile"]["edges_arcmin"][1:],
            strict=True,
        )
    )
    assert total == pytest.approx((1 - member[predictions["label"] >= 0]).sum(), rel=0.05)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_zeroing_a_streamed_file_keeps_everything_else(tmp_path, suffix):
    from grasp_dl.data.catalog import write_catalog

    table = pd.DataFrame(
        {
            "source_id": np.arange(5, dtype=np.int64) + 10**18,
            "label": [0, 1, -1, 0, 1],
            "prob_0": [0.9, 0.2, np.nan, 0.6, 0.1],
            "member_prob": [0.9, 0.2, np.nan, 0.6, 0.1],
            "flag": ["", "", "missing:pmra", "", ""],
        }
    )
    path = tmp_path / f"p{suffix}"
    write_catalog(table, path)
    zero_member_prob_file(path, chunk_size=2)
    back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(table.columns)
    np.testing.assert_array_equal(back["source_id"], table["source_id"])
    assert back.loc[[0, 1, 3, 4], "member_prob"].eq(0).all() and np.isnan(back.loc[2, "member_prob"])
    np.testing.assert_allclose(back["prob_0"], table["prob_0"])
    assert back["flag"].fillna("").tolist() == table["flag"].tolist()
    assert not list(tmp_path.glob("*zeroed*"))


def _stars(rng, n_cluster=400, n_field=4000):
    table, member = _catalogue(rng, n_cluster, n_field)
    table["phot_g_mean_mag"] = rng.uniform(13, 20, len(table))
    table["bp_rp"] = rng.uniform(0.5, 2.0, len(table))
    table["member_prob"] = member
    return table


def _is_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    return image


def test_diagnostic_figure_has_four_panels_and_the_verdict(tmp_path):
    from grasp_dl.figures.diagnostics import diagnostic_figure, write_diagnostic_figure

    rng = np.random.default_rng(8)
    stars = _stars(rng)
    summary = ClusterSummary(cluster_group=0, n_members=400).with_verdict(
        check_table(stars["member_prob"].to_numpy(), stars, (250.0, -30.0))
    )
    fig = diagnostic_figure(stars, summary, (250.0, -30.0))
    titles = [ax.get_title() for ax in fig.axes]
    for title in ("proper motions", "sky", "colour-magnitude diagram", "radial profile"):
        assert title in titles
    assert "400 members" in fig._suptitle.get_text()
    _is_png(write_diagnostic_figure(stars, summary, tmp_path / "ok.png", (250.0, -30.0)))
    # no cluster: said in the title; a catalogue without photometry gets a panel that says so
    summary = ClusterSummary(cluster_group=0, cluster_found=False, cluster_reason="not concentrated on the sky")
    fig = diagnostic_figure(stars.drop(columns=["phot_g_mean_mag", "bp_rp"]), summary, None)
    assert "NO CLUSTER FOUND" in fig._suptitle.get_text()
    assert any("no G magnitude" in t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A DEC checkpoint trained by the real pipeline on a small simulated M4-like field (a few seconds)."""
    from grasp_dl.jobs import train as pipeline

    from hydra_configs import TINY, compose_config

    cfg = compose_config("train", TINY + ["data.simulate.seed=5"], tmp_path_factory.mktemp("run"))
    return pipeline.train(cfg).checkpoint


@pytest.mark.slow
def test_predict_writes_the_figure_and_zeroes_a_field_without_cluster(trained_checkpoint, tmp_path):
    from grasp_dl.cli import predict_task
    from grasp_dl.data.catalog import read_catalog, write_catalog
    from grasp_dl.data.simulate import simulate_field

    from hydra_configs import compose_config

    cone = simulate_field("m4", n_stars=3000, seed=12)
    write_catalog(cone, tmp_path / "cone.csv")
    field = cone[cone["truth"] != "cluster"].reset_index(drop=True)
    write_catalog(field, tmp_path / "field.csv")

    def predict(catalog, output, *extra):
        cfg = compose_config(
            "predict", [f"ckpt_path={trained_checkpoint}", f"data.path={catalog}", f"output={output}", *extra], tmp_path
        )
        return predict_command(cfg), cfg

    (summary, output, _), _ = predict(tmp_path / "cone.csv", tmp_path / "cone_members.parquet", "chunk_size=700")
    assert summary["cluster_found"], summary["cluster_reason"]
    assert summary["figure"] == str(tmp_path / "cone_members.png")
    _is_png(tmp_path / "cone_members.png")
    d = summary["diagnostics"]
    assert d["radius_ratio"] < 0.7 and d["pm_dispersion_ratio"] < 0.5 and d["pm_dispersion_deconvolved"]
    (_, _, _), _ = predict(tmp_path / "cone.csv", tmp_path / "nofig.parquet", "figures=false")
    assert not (tmp_path / "nofig.png").exists()
    # the same model on the field alone: no group is a cluster -> members 0, said plainly, streamed or not
    (summary, output, _), cfg = predict(tmp_path / "field.csv", tmp_path / "field_members.csv", "chunk_size=500")
    assert summary["cluster_found"] is False and summary["n_members"] == 0 and summary["sum_member_prob"] == 0
    assert summary["cluster_reason"] and "radial_profile" in summary["diagnostics"]
    table = read_catalog(output)
    scored = table["label"] >= 0
    assert scored.sum() > 2000 and (table.loc[scored, "member_prob"] == 0).all()
    assert len(table) == len(field) and (table["source_id"].to_numpy() == field["source_id"].to_numpy()).all()
    _is_png(tmp_path / "field_members.png")
    from grasp_dl.inference.predict import load_clustering_module, predict_catalog

    out, in_memory = predict_catalog(load_clustering_module(trained_checkpoint), field)
    assert in_memory["cluster_found"] is False and (out.loc[out["label"] >= 0, "member_prob"] == 0).all()
    # a cluster named at prediction sets the centre and brings the literature comparison
    _, named = predict_catalog(load_clustering_module(trained_checkpoint), cone, cluster="M 4")
    assert named["center"] == [245.897, -26.526] and named["literature"]["name"] == "NGC_6121_M_4"
    assert named["cluster_found"] and np.isfinite(named["literature"]["pm_offset_sigma"])
    # a group the user names is judged too, but its memberships are kept
    module = load_clustering_module(trained_checkpoint)
    out, chosen = predict_catalog(module, field, cluster_group=module.cluster_group)
    assert chosen["cluster_found"] is False and "kept" in chosen["cluster_reason"]
    np.testing.assert_array_equal(out["member_prob"], out[f"prob_{module.cluster_group}"])
    # the command line prints a one-line warning
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        predict_task(cfg)
    warnings = [line for line in printed.getvalue().splitlines() if line.startswith("warning: no cluster found")]
    assert len(warnings) == 1


def test_the_decision_judges_a_bounded_subset_of_a_large_catalogue(monkeypatch):
    import grasp_dl.membership.rules as membership

    rng = np.random.default_rng(9)
    features = np.vstack([_cluster(rng, 600, a=0.02), _field(rng, 9400)])
    truth = np.repeat([1, 0], [600, 9400])
    prob = np.column_stack([truth == 0, truth == 1]).astype(float)
    full_group, full = decide_cluster_group(prob, features, NAMES)
    monkeypatch.setattr(membership, "GUARD_SAMPLE", 3000)
    group, sub = decide_cluster_group(prob, features, NAMES)
    assert group == full_group == 1 and sub["cluster_found"] and full["cluster_found"]
    assert sub["diagnostics"]["n_judged"] == 3000 and full["diagnostics"]["n_judged"] == 10000
    assert sub["diagnostics"]["radius_ratio"] == pytest.approx(full["diagnostics"]["radius_ratio"], abs=0.1)


def test_a_cluster_in_front_of_a_tighter_background_galaxy_is_still_found():
    """47 Tuc before the SMC: the galaxy is tighter in pm than the cluster, but spread over the cone."""
    rng = np.random.default_rng(10)
    cluster = _cluster(rng, 1500, a=0.03)
    cluster[:, 2:4] = rng.normal([5.2, -2.5], 0.5, (1500, 2))
    galaxy = np.column_stack([_disc(rng, 5500), rng.normal([1.2, -1.2], 0.1, (5500, 2)), rng.normal(0.0, 0.02, 5500)])
    features = np.vstack([cluster, galaxy, _field(rng, 3000)])
    labels = np.repeat([0, 1, 2], [1500, 5500, 3000])
    group, check = decide_cluster_group(np.eye(3)[labels], features, NAMES)
    assert group == 0 and check["cluster_found"], check["cluster_reason"]
    # the galaxy alone, as a candidate, is tight but not concentrated
    galaxy_check = check_plausibility((labels == 1).astype(float), np.hypot(*features[:, :2].T), features[:, 2:4])
    assert not galaxy_check["cluster_found"] and "not concentrated" in galaxy_check["cluster_reason"]


def test_the_cluster_mean_line_gives_errors_and_whose_estimate_it_is():
    from grasp_dl.membership.guards import astrometry_line, report_lines

    summary = {
        "cluster_group": 0,
        "cluster_found": True,
        "n_members": 120,
        "mean_pmra": -12.5,
        "mean_pmra_error": 0.02,
        "mean_pmdec": -19.0,
        "mean_pmdec_error": 0.03,
        "mean_source": "model",
    }
    line = astrometry_line(ClusterSummary.from_dict(summary))
    assert line == (
        "cluster mean: pmra -12.500 ± 0.020, pmdec -19.000 ± 0.030 mas/yr "
        "(fitted by the model to every star; statistical errors)"
    )
    assert line in report_lines(ClusterSummary.from_dict(summary))
    members = astrometry_line(
        ClusterSummary.from_dict(
            {**summary, "mean_source": "members", "mean_parallax": 0.54, "mean_parallax_error": 0.01}
        )
    )
    assert members.endswith(
        ", parallax 0.540 ± 0.010 mas (weighted mean of the 120 stars with member_prob > 0.5; statistical errors)"
    )
    # no cluster: no mean to report
    assert astrometry_line(ClusterSummary.from_dict({**summary, "cluster_found": False})) is None
    assert astrometry_line(ClusterSummary.from_dict({**summary, "mean_pmra": float("nan")})) is None
    assert astrometry_line(ClusterSummary.from_dict({**summary, "mean_pmdec_error": float("nan")})).startswith(
        "cluster mean: pmra -12.500 ± 0.020, pmdec -19.000 mas/yr"
    )
