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
