"""scripts/two_parameter_reference.py: a supervised reference on the 2-parameter stars of a cone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scripts_loader import load_script


@pytest.fixture(scope="module")
def reference():
    return load_script("two_parameter_reference")


def _cone(n: int = 600, seed: int = 0):
    """2-parameter stars whose colour tells a member (BP-RP 0.6) from the field (1.4) and whose radius does not."""
    real = load_script("benchmark_real_fields")
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.3
    radius = 0.1 * np.sqrt(rng.random(n))  # uniform over the cone, members and field alike
    angle = rng.uniform(0, 2 * np.pi, n)
    catalog = pd.DataFrame(
        {
            "ra": 10.0 + radius * np.cos(angle),
            "dec": radius * np.sin(angle),
            "pmra": np.nan,
            "pmdec": np.nan,
            "parallax": np.nan,
            "phot_g_mean_mag": rng.uniform(19, 21, n),
            "bp_rp": np.where(member, 0.6, 1.4) + 0.05 * rng.standard_normal(n),
        }
    )
    return real.Field("toy", catalog, member, (0.0, 0.0), (10.0, 0.0))


def test_the_reference_finds_the_members_the_colour_separates_and_the_radius_does_not(reference):
    f1 = reference.reference_f1(_cone(), folds=3)
    assert set(f1) == {"radius", "radius + CMD"}
    assert f1["radius + CMD"] > 0.95
    assert f1["radius"] < 0.6


def test_stars_with_astrometry_are_left_out_of_the_reference(reference):
    field = _cone()
    catalog = field.catalog.copy()
    catalog.loc[field.member, ["pmra", "pmdec", "parallax"]] = 1.0  # every member now has astrometry
    field = type(field)("toy", catalog, field.member, field.pm, field.center)
    f1 = reference.reference_f1(field, folds=3)  # no member left among the 2-parameter stars: nothing to learn
    assert all(np.isnan(value) for value in f1.values())
