"""The real-field benchmark's variants: each real cone cut the ways other cones differ (scripts/benchmark_real_fields.py)."""

from __future__ import annotations

import numpy as np
import pytest

from grasp_dl.data.sky import angular_separation

from scripts_loader import load_script


def _script():
    return load_script("benchmark_real_fields")


def test_variants_cut_the_field_and_keep_the_papers_members_with_their_stars() -> None:
    bench = _script()
    field = bench.real_field("djorg1", "auto")
    assert bench.field_variant(field, "full") is field
    by_id = dict(zip(field.catalog["source_id"], field.member, strict=True))
    for variant in ("half_cone", "sample30", "sample10", "faint"):
        cut = bench.field_variant(field, variant)
        assert cut.name == f"djorg1 [{variant}]" and 0 < len(cut.catalog) < len(field.catalog)
        assert len(cut.member) == len(cut.catalog) and cut.member.any()
        # the paper's verdict travels with its star
        assert [by_id[s] for s in cut.catalog["source_id"]] == list(cut.member)
    radius = angular_separation(
        field.catalog["ra"].to_numpy(float), field.catalog["dec"].to_numpy(float), *field.center
    )
    half = bench.field_variant(field, "half_cone")
    assert len(half.catalog) == int((radius < 0.5 * radius.max()).sum())
    assert (bench.field_variant(field, "faint").catalog["phot_g_mean_mag"] > bench.FAINT_G).all()
    share = len(bench.field_variant(field, "sample10").catalog) / len(field.catalog)
    assert 0.07 < share < 0.13
    # the same cut every time, and the centre found again from the stars kept
    again = bench.field_variant(field, "sample10")
    np.testing.assert_array_equal(
        again.catalog["source_id"], bench.field_variant(field, "sample10").catalog["source_id"]
    )
    assert angular_separation(*half.center, *field.center) < 0.01
    with pytest.raises(SystemExit, match="unknown 'tiny'"):
        bench.field_variant(field, "tiny")


def test_a_cluster_free_cone_drops_the_papers_members_and_spreads_the_others_uniformly() -> None:
    bench = _script()
    field = bench.real_field("djorg1", "literature")
    empty = bench.cluster_free_field(field, seed=3, center_mode="literature")
    kept = field.memberprob < bench.EMPTY_MEMBERPROB
    assert len(empty.catalog) == int(kept.sum()) and not empty.member.any()
    # proper motions, parallaxes and photometry stay real, the positions do not
    np.testing.assert_array_equal(empty.catalog["pmra"], field.catalog.loc[kept, "pmra"])
    radius = angular_separation(
        empty.catalog["ra"].to_numpy(float), empty.catalog["dec"].to_numpy(float), *field.center
    )
    cone = angular_separation(field.catalog["ra"].to_numpy(float), field.catalog["dec"].to_numpy(float), *field.center)
    assert radius.max() <= cone.max() * 1.001
    # uniform over the disc: half the stars inside R / sqrt(2)
    assert abs(np.mean(radius < cone.max() / np.sqrt(2)) - 0.5) < 0.05
    again = bench.cluster_free_field(field, seed=3, center_mode="literature")
    np.testing.assert_array_equal(again.catalog["ra"], empty.catalog["ra"])


def test_a_benchmark_field_outside_the_package_reads_its_table_row(tmp_path, monkeypatch) -> None:
    bench = _script()
    catalog, reference = __import__("grasp_dl.data.examples", fromlist=["vb21_field"]).vb21_field("ngc6652")
    catalog.to_csv(tmp_path / "NGC_6652.csv", index=False)
    reference.to_csv(tmp_path / "NGC_6652.ref.csv", index=False)
    monkeypatch.setattr(bench, "MORE_DIRS", (tmp_path,))
    assert bench.more_names() == ["NGC_6652"]
    field = bench.real_field("NGC_6652", "literature")
    assert field.table_name == "NGC_6652" and field.bulge and field.member.sum() > 1000
    assert 0.05 <= field.pm_tolerance < 0.1 and 0.1 < field.sigma_pm < 0.4


def test_a_cone_the_product_refuses_is_a_row_with_no_cluster_not_a_stopped_benchmark() -> None:
    """A cone of 21 stars (19 to fit, 2 held out), as a cluster-free Munoz 1 cone is: refused in one line."""
    from grasp_dl.data.simulate import simulate_field

    bench = _script()
    stars = simulate_field("m4", n_stars=400, seed=3)
    stars = stars[stars["pmra"].notna() & stars["parallax"].notna()].head(21).reset_index(drop=True)
    member = (stars.pop("truth") == "cluster").to_numpy()
    field = bench.Field("tiny", stars, member, (0.0, 0.0), (float(stars["ra"].mean()), float(stars["dec"].mean())))
    scored = bench.api_method("xd")(field, {"set": []})
    assert scored.found is False and "too few stars: 19 with astrometry to fit" in scored.reason
    assert not scored.member_prob.any() and len(scored.member_prob) == 21


def test_the_papers_expected_f1_reads_its_probabilities_as_calibrated(capsys) -> None:
    bench = _script()
    assert bench.paper_expected_f1(np.array([1.0, 1.0, 0.0, 0.0])) == 1.0  # sure labels: nothing to lose
    # members at 0.6 and 0.9, a non-member at 0.3: tp 1.5, fp 0.5, fn 0.3
    assert bench.paper_expected_f1(np.array([0.6, 0.9, 0.3, 0.0])) == pytest.approx(3.0 / 3.8)
    assert np.isnan(bench.paper_expected_f1(np.array([0.1, 0.2])))
    bench.main(["--label-noise", "--fields", "djorg1", "ngc6723"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["field", "members"] and len(lines) == 3
    djorg1 = lines[1].split()
    assert djorg1[:2] == ["djorg1", "(b)"] and 0.5 < float(djorg1[3]) < 0.95  # most of its members are unsure
