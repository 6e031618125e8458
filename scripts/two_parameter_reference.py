"""How well the 2-parameter stars of the simulated cones can be classified at all: a supervised reference (issue 24).

The multi-modal benchmark (``scripts/benchmark_multimodal.py --simulated``) scores each method's F1 on the
2-parameter sources (no proper motion or parallax) against ``position``, the product's position-alone
score. This script asks what the data allow: a gradient-boosted classifier given the answers (the
simulation's truth), cross-validated in ``--folds`` folds over the cone's own 2-parameter stars, from
their radius alone and from their radius, G and BP-RP (the same information ``model=multimodal`` has for
them, with labels it never sees). Its F1 at probability 0.5 is a reference, not a bound: a model that
learns the cluster's sequence from every star of the cone can do better, a few hundred labels worse.

Run
---
    python scripts/two_parameter_reference.py                  # the benchmark's cones, seeds 0 and 1
    python scripts/two_parameter_reference.py --seeds 0 --folds 10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_multimodal as bench  # noqa: E402
import benchmark_real_fields as real  # noqa: E402

#: The classifier's inputs: the radius alone, then with the photometry.
FEATURE_SETS = {"radius": (0,), "radius + CMD": (0, 1, 2)}


def reference_f1(field: real.Field, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Cross-validated F1 of a supervised classifier on ``field``'s 2-parameter stars, per feature set.

    Parameters
    ----------
    field : Field
        A simulated cone with its truth (``member``).
    folds : int
        Folds of the cross-validation (stratified, shuffled with ``seed``).
    seed : int
        Seed of the folds and the classifier.

    Returns
    -------
    dict
        Feature set name -> F1 of probability > 0.5 against the truth, over the 2-parameter stars;
        NaN where they hold fewer members (or non-members) than folds.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from grasp_dl.data.sky import gnomonic_project

    catalog = field.catalog
    two = bench.two_parameter_rows(catalog)
    xi, eta = gnomonic_project(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), *field.center)
    x = np.column_stack([np.hypot(xi, eta), catalog["phot_g_mean_mag"], catalog["bp_rp"]])[two]
    y = np.asarray(field.member, bool)[two]
    if min(int(y.sum()), int((~y).sum())) < folds:  # too few of a class to put one in every fold
        return dict.fromkeys(FEATURE_SETS, float("nan"))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = {}
    for name, columns in FEATURE_SETS.items():
        model = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
        prob = cross_val_predict(model, x[:, list(columns)], y, cv=split, method="predict_proba")[:, 1]
        out[name] = bench.f1_score(prob, y)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference's F1 per simulated cone and seed, and its median gain of the CMD over the radius."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="simulation seeds")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    args = parser.parse_args(argv)
    print("| field | 2-par | members | " + " | ".join(f"F1 {name}" for name in FEATURE_SETS) + " |")
    print("|---|---|---|" + "---|" * len(FEATURE_SETS))
    gains = []
    for seed in args.seeds:
        for label, base, overrides in bench.simulated_kinds():
            field = real.simulated_field(label, base, overrides, seed)
            two = bench.two_parameter_rows(field.catalog)
            f1 = reference_f1(field, args.folds)
            gains.append(f1["radius + CMD"] - f1["radius"])
            cells = " | ".join(f"{value:.3f}" for value in f1.values())
            print(f"| {field.name} | {int(two.sum())} | {int(field.member[two].sum())} | {cells} |", flush=True)
    print(f"\nmedian gain of the CMD over the radius alone: {np.median(gains):+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
