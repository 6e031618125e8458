"""Baseline: how well a plain Gaussian mixture recovers the cluster in each simulated field.

For every bundled simulated cone, fit scikit-learn's GaussianMixture (2 and 3 full-covariance
components, random_state=0) to the standardised (xi, eta, pmra, pmdec, parallax) of the stars
with a finite 5/6-parameter astrometric solution, take the component holding the largest
fraction of true cluster stars (an oracle choice, the most favourable to the mixture), and
report member precision, recall and F1 of its hard assignment against ``truth == 'cluster'``
(over the stars it was fitted on). Deep clustering has to beat these numbers.

    python scripts/simulated_fields_gmm_baseline.py [--n-stars N] [--seed S] [--fields m4 ...]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from grasp_dl.data.simulate import SIMULATED_FIELDS, load_simulation_config, simulate_field
from grasp_dl.data.sky import gnomonic_project


def gmm_member_scores(df, center, n_components: int) -> tuple[float, float, float, float]:
    """Oracle-component precision, recall, F1 and cluster share of that component."""
    ok = np.isfinite(df[["parallax", "pmra", "pmdec"]].to_numpy()).all(axis=1)
    d = df[ok]
    xi, eta = gnomonic_project(d["ra"].to_numpy(), d["dec"].to_numpy(), center[0], center[1])
    x = np.column_stack([xi, eta, d["pmra"], d["pmdec"], d["parallax"]])
    x = StandardScaler().fit_transform(x)
    labels = GaussianMixture(n_components, covariance_type="full", random_state=0).fit_predict(x)
    truth = (d["truth"] == "cluster").to_numpy()
    share = [truth[labels == k].mean() if (labels == k).any() else 0.0 for k in range(n_components)]
    best = int(np.argmax(share))
    pred = labels == best
    tp = float((pred & truth).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return precision, recall, f1, share[best]


def main() -> None:
    """Print the baseline table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-stars", type=int, default=None, help="override each config's n_stars")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fields", nargs="*", default=list(SIMULATED_FIELDS))
    args = ap.parse_args()
    print(f"{'field':<10} {'n_rows':>7} {'n_fit':>7} {'n_clus':>6} {'k':>2} {'prec':>6} {'recall':>6} {'F1':>6}")
    for name in args.fields:
        overrides = {"seed": args.seed}
        if args.n_stars:
            overrides["n_stars"] = args.n_stars
        df = simulate_field(name, **overrides)
        center = load_simulation_config(name)["center"]
        ok = np.isfinite(df[["parallax", "pmra", "pmdec"]].to_numpy()).all(axis=1)
        n_cl = int((df.loc[ok, "truth"] == "cluster").sum())
        for k in (2, 3):
            p, r, f1, _ = gmm_member_scores(df, center, k)
            print(f"{name:<10} {len(df):>7} {int(ok.sum()):>7} {n_cl:>6} {k:>2} {p:6.3f} {r:6.3f} {f1:6.3f}")


if __name__ == "__main__":
    main()
