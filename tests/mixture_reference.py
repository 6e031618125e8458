"""The recorded fit of the one mixture with every switch at its default (tests/data/mixtures/default_fit.json).

The record was written by the code before the ablation switches became options of the mixture, so
the test that compares with it shows the default path unchanged. Regenerate only for an intended
change of the default: ``PYTHONPATH=. python tests/mixture_reference.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from grasp_dl.data.astrometry import StarData, star_data
from grasp_dl.data.prepare import estimate_center
from grasp_dl.data.simulate import simulate_field
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture

RECORD = Path(__file__).parent / "data" / "mixtures" / "default_fit.json"
#: Options that keep the fit small; the ablation switches are left at their defaults.
OPTIONS: dict[str, Any] = {"n_field": 2, "n_starts": 2, "max_iter": 40, "seed": 0, "null_test": True}


def reference_stars() -> StarData:
    """A small simulated bulge cone with Gaia-like errors, parallax and photometry."""
    catalog = simulate_field("ngc6558", n_stars=1500, seed=0)
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    return star_data(catalog, center, ("pmra", "pmdec", "parallax"))


def reference_fit(**options: Any) -> tuple[dict[str, Any], np.ndarray]:
    """The fitted state and the component probabilities of :func:`reference_stars`."""
    stars = reference_stars()
    mixture = ClusterFieldMixture(**{**OPTIONS, **options}).fit(stars)
    return mixture.get_state(), mixture.predict_proba(stars)


if __name__ == "__main__":
    state, proba = reference_fit()
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({"state": state, "proba": proba.tolist()}))
    print(f"wrote {RECORD}: {proba.shape[0]} stars, {state['n_iter']} iterations")
