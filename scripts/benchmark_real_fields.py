"""Membership on real Gaia EDR3 fields against Vasiliev & Baumgardt (2021), and on simulated checks.

What it measures
----------------
Real fields (default): the seven bulge-cluster cones shipped in :mod:`grasp_dl.data.examples`
(``vb21_field(name)``), each with the paper's membership probability. Per field and method:

* ``F1``, ``prec``, ``rec`` -- member_prob > 0.5 against the paper's memberprob > 0.5, over every
  catalogue row (a star the method does not score counts as a non-member);
* ``dPM`` -- |mean proper motion - the paper's cluster mean| (mas/yr, Euclidean over pmra and pmdec),
  the mean the product's summary reports: the fitted mixture's cluster mean for ``xd`` and the
  default (``adopt_model_mean``), else the members' average of ``ClusterSummary`` (member_prob >
  0.5, weighted by member_prob / (0.2^2 + error^2));
* ``dPM(fit)`` -- the same for the method's own fitted cluster mean, where it has one (the mixture's
  deconvolved mean); ``-`` otherwise;
* ``dPM(ivw)`` -- the summary's mean with each member's weight also divided by (0.1^2 + its pm error
  variance): faint, poorly measured stars (most contaminants) count less;
* ``members`` -- member_prob > 0.5 (and the paper's count), ``sec`` -- wall time of fit + predict.

Simulated checks (``--simulated``): the project's simulator (``simulate_field``) with overrides
that span what real cones show -- compact and extended clusters, 1 % to 70 % members, faint
members with large errors, a cluster inside the field's proper motions. The truth is the
``truth`` column, the pm reference the simulated ``cluster.pm_mean``.

Methods (``--method``, repeatable)
----------------------------------
* ``xd`` -- :func:`grasp_dl.mixtures.cluster_field.fit_membership`, the product's error-deconvolved
  spatial mixture (``model=xd``), fitted on every star of the cone;
* ``xd-legacy`` -- the original ``SpatialDeconvolvedMixture(3)`` with its built-in start,
  component 0 the cluster (what ``init=xd`` used to start from);
* ``default`` / ``model:<name>`` -- ``DeepClusteringModel`` (the product's notebook facade, i.e.
  ``grasp-dl train``) with no model choice / ``model=<name>``; ``--set`` adds Hydra overrides.
  Slow (trains networks).

The centre is what the product uses when the user gives none (``estimate_center``), unless
``--center literature`` (the paper's centre).

Variants (``--variants``): each real field also cut the ways other cones of the sky differ from
these seven, the paper's members kept where their stars are (``half_cone``: the inner half of
the radius, the cluster a larger share; ``sample30`` / ``sample10``: a random 30 % / 10 % of the
stars, a sparser cone with few members; ``faint``: only stars fainter than G = 18, large errors).
``se`` is the reported standard error of the mean (both axes combined): dPM / se says whether the
error is honest (the paper's mean has its own, and Gaia EDR3 a systematic floor of ~0.025 mas/yr).

Run
---
    python scripts/benchmark_real_fields.py                          # xd on the seven fields
    python scripts/benchmark_real_fields.py --method xd-legacy --method xd
    python scripts/benchmark_real_fields.py --simulated --method xd
    python scripts/benchmark_real_fields.py --method default --fields ngc6522 --set trainer.max_epochs=5
    python scripts/benchmark_real_fields.py --variants full half_cone sample30 sample10 faint
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.astrometry import star_data
from grasp_dl.data.examples import vb21_clusters_path, vb21_field, vb21_names
from grasp_dl.data.prepare import estimate_center
from grasp_dl.data.sky import angular_separation

#: Field name -> row of the VB21 cluster table.
TABLE_NAMES = {
    "djorg1": "Djorg_1",
    "ngc6522": "NGC_6522",
    "ngc6624": "NGC_6624",
    "ngc6637": "NGC_6637_M_69",
    "ngc6652": "NGC_6652",
    "ngc6681": "NGC_6681_M_70",
    "ngc6723": "NGC_6723",
}
THRESHOLD = 0.5


# ----------------------------------------------------------------------------- data
@dataclass
class Field:
    """One catalogue to score, with its reference membership and the reference mean proper motion."""

    name: str
    catalog: pd.DataFrame
    member: np.ndarray  # bool per catalogue row: the reference's members
    pm: tuple[float, float]
    center: tuple[float, float]


def literature_table() -> pd.DataFrame:
    """The VB21 table (name, ra, dec, ..., pmra, pmdec, plx, ...) indexed by name."""
    path = vb21_clusters_path()
    with open(path) as handle:
        header = handle.readline().lstrip("#").split()
    table = pd.read_csv(path, sep=r"\s+", comment="#", names=header)
    return table.set_index("Name")


def real_field(name: str, center_mode: str) -> Field:
    """A shipped real field with the paper's members (memberprob > 0.5) and mean proper motion."""
    catalog, reference = vb21_field(name)
    row = literature_table().loc[TABLE_NAMES[name]]
    prob = catalog[["source_id"]].merge(reference, on="source_id", how="left")["memberprob"].fillna(0.0)
    if center_mode == "literature":
        center = (float(row["ra"]), float(row["dec"]))
    else:
        center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    return Field(name, catalog, prob.to_numpy() > THRESHOLD, (float(row["pmra"]), float(row["pmdec"])), center)


#: Ways of cutting a real field (--variants): label and what is kept.
VARIANTS = {
    "full": "every star",
    "half_cone": "stars within half the cone's radius",
    "sample30": "a random 30% of the stars",
    "sample10": "a random 10% of the stars",
    "faint": "stars fainter than G = 18",
}
FAINT_G = 18.0


def field_variant(field: Field, variant: str, center_mode: str = "auto", seed: int = 0) -> Field:
    """``field`` cut as ``variant`` says (:data:`VARIANTS`), the paper's members kept where their stars are.

    The centre is found again from the stars kept (as the product would, given none), unless
    ``center_mode`` is ``literature``.
    """
    if variant not in VARIANTS:
        raise SystemExit(f"--variants: unknown {variant!r}; choose from {', '.join(VARIANTS)}")
    catalog = field.catalog
    if variant == "full":
        return field
    if variant == "half_cone":
        radius = angular_separation(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), *field.center)
        keep = radius < 0.5 * np.nanmax(radius)
    elif variant == "faint":
        keep = catalog["phot_g_mean_mag"].to_numpy(float) > FAINT_G
    else:
        keep = np.random.default_rng(seed).random(len(catalog)) < int(variant.removeprefix("sample")) / 100.0
    kept = catalog[keep].reset_index(drop=True)
    center = (
        field.center
        if center_mode == "literature"
        else estimate_center(kept["ra"].to_numpy(float), kept["dec"].to_numpy(float))
    )
    return Field(f"{field.name} [{variant}]", kept, field.member[keep], field.pm, center)


#: Simulated checks: (name, bundled field, overrides of simulate_field). Each spans a regime real cones show.
SIMULATED_CASES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ngc6558 3% faint, inside bulge pm", "ngc6558", {"n_stars": 10000}),
    ("ngc6558 1% wide cone", "ngc6558", {"n_stars": 20000, "radius_deg": 0.4, "cluster": {"fraction": 0.01}}),
    ("ngc6558 70% tight cone", "ngc6558", {"n_stars": 8000, "radius_deg": 0.05, "cluster": {"fraction": 0.7}}),
    (
        "ngc6558 extended rc=3'",
        "ngc6558",
        {"n_stars": 10000, "cluster": {"fraction": 0.1, "core_radius_arcmin": 3.0, "tidal_radius_arcmin": 40.0}},
    ),
    ("m4 default", "m4", {"n_stars": 10000}),
    ("m4 2% members", "m4", {"n_stars": 10000, "cluster": {"fraction": 0.02}}),
    ("ngc6397 default", "ngc6397", {"n_stars": 10000}),
    ("47tuc_smc (galaxy behind)", "47tuc_smc", {"n_stars": 10000}),
    (
        "omega-cen-like extended 12%",
        "m4",
        {
            "n_stars": 30000,
            "radius_deg": 0.8,
            "cluster": {"fraction": 0.12, "core_radius_arcmin": 2.4, "tidal_radius_arcmin": 48.0},
        },
    ),
)


def simulated_field(label: str, base: str, overrides: dict[str, Any], seed: int) -> Field:
    """A simulated cone with its truth (``truth == 'cluster'``) and the simulated cluster mean pm."""
    from grasp_dl.data.simulate import load_simulation_config, simulate_field

    catalog = simulate_field(base, seed=seed, **overrides)
    config = load_simulation_config(base)
    pm = overrides.get("cluster", {}).get("pm_mean", config["cluster"]["pm_mean"])
    center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    member = catalog["truth"].to_numpy() == "cluster"
    return Field(f"{label} s{seed}", catalog.drop(columns="truth"), member, (float(pm[0]), float(pm[1])), center)


# ----------------------------------------------------------------------------- methods
@dataclass
class Scored:
    """What a method returns: member probability per catalogue row, and its own cluster mean pm if any."""

    member_prob: np.ndarray
    fitted_pm: tuple[float, float] | None = None
    info: str = ""
    #: the mean the product's summary reports for this method (None: compute it from the memberships)
    reported_pm: tuple[float, float] | None = None
    #: its standard error, both axes combined (NaN: the summary's members' error)
    reported_pm_se: float = float("nan")


def method_xd(field: Field, options: dict[str, Any]) -> Scored:
    """The product's error-deconvolved spatial mixture (model=xd)."""
    from grasp_dl.mixtures.cluster_field import fit_membership

    stars = star_data(field.catalog, field.center, ("pmra", "pmdec", "parallax"))
    result = fit_membership(stars, **options)
    fitted = tuple(float(v) for v in result.cluster_mean[:2])
    cov = result.mixture.cluster_mean_cov_
    se = float(np.hypot(*np.sqrt(np.diag(cov)[:2]))) if cov is not None else float("nan")
    # model=xd's summary reports the fitted mean (grasp_dl.membership.rules.adopt_model_mean) and its error
    return Scored(result.member_prob, fitted, result.describe(), reported_pm=fitted, reported_pm_se=se)


def method_xd_legacy(field: Field, options: dict[str, Any]) -> Scored:
    """SpatialDeconvolvedMixture(3) with its built-in start; component 0 is the cluster."""
    from grasp_dl.mixtures.deconvolution import SpatialDeconvolvedMixture

    stars = star_data(field.catalog, field.center, ("pmra", "pmdec", "parallax"))
    mixture = SpatialDeconvolvedMixture(3, **options).fit(stars)
    return Scored(mixture.predict_proba(stars)[:, 0], tuple(mixture.means_[0, :2]))


def api_method(model: str | None) -> Callable[[Field, dict[str, Any]], Scored]:
    """``DeepClusteringModel`` with ``model`` (None: the product default) and the ``--set`` overrides."""

    def run(field: Field, options: dict[str, Any]) -> Scored:
        import tempfile

        from grasp_dl.api import DeepClusteringModel

        params: dict[str, Any] = {"progress_bar": False, "overrides": list(options.get("set", ()))}
        if model is not None:
            params["model"] = model
        with tempfile.TemporaryDirectory() as tmp:
            estimator = DeepClusteringModel(output_dir=tmp, **params).fit(field.catalog)
            table, summary = estimator.predict_table(field.catalog)
        group = summary.get("cluster_group")
        # dPM(fit) of a product run is the mean the product's summary reports
        reported = (summary.get("mean_pmra"), summary.get("mean_pmdec"))
        fitted = reported if None not in reported else None
        info = f"group {group}, mean from the {summary.get('mean_source', 'members')}"
        se = float(np.hypot(summary.get("mean_pmra_error", np.nan), summary.get("mean_pmdec_error", np.nan)))
        member_prob = np.nan_to_num(table["member_prob"].to_numpy(float))
        return Scored(member_prob, fitted, info, reported_pm=fitted, reported_pm_se=se)

    return run


def method_for(name: str) -> Callable[[Field, dict[str, Any]], Scored]:
    """The scoring function of a ``--method`` name."""
    if name == "xd":
        return method_xd
    if name == "xd-legacy":
        return method_xd_legacy
    if name == "default":
        return api_method(None)
    if name.startswith("model:"):
        return api_method(name.split(":", 1)[1])
    raise SystemExit(f"unknown --method {name!r}: use xd, xd-legacy, default or model:<name>")


# ----------------------------------------------------------------------------- scoring
@dataclass
class Row:
    """One method on one field."""

    field: str
    method: str
    f1: float
    precision: float
    recall: float
    pm_error: float
    pm_error_fit: float
    pm_error_ivw: float
    members: int
    reference_members: int
    seconds: float
    info: str
    pm_se: float = float("nan")


def summary_mean_pm(catalog: pd.DataFrame, member_prob: np.ndarray, inverse_variance: bool = False) -> np.ndarray:
    """The product summary's mean pm: member_prob-weighted over member_prob > 0.5 (finite pm only).

    ``inverse_variance`` also divides each weight by (0.1^2 + the star's mean pm error variance), mas/yr.
    """
    pm = catalog[["pmra", "pmdec"]].to_numpy(float)
    w = np.where(member_prob > THRESHOLD, member_prob, 0.0) * np.isfinite(pm).all(axis=1)
    if inverse_variance:
        var = 0.5 * (catalog["pmra_error"].to_numpy(float) ** 2 + catalog["pmdec_error"].to_numpy(float) ** 2)
        w = np.nan_to_num(w / (0.01 + var))
    if w.sum() == 0:
        return np.full(2, np.nan)
    return (w[:, None] * np.nan_to_num(pm)).sum(0) / w.sum()


def product_mean_pm(catalog: pd.DataFrame, member_prob: np.ndarray) -> np.ndarray:
    """The product summary's members' mean pm (:class:`grasp_dl.membership.rules.ClusterSummary`)."""
    from grasp_dl.membership.rules import cluster_summary

    predictions = pd.DataFrame({"label": np.zeros(len(catalog), int), "member_prob": np.nan_to_num(member_prob)})
    summary = cluster_summary(predictions, catalog.reset_index(drop=True), None, 0)
    return np.array([summary["mean_pmra"], summary["mean_pmdec"]], float)


def score(field: Field, method: str, options: dict[str, Any]) -> Row:
    """Run one method on one field and compare with the reference."""
    start = time.perf_counter()
    scored = method_for(method)(field, options)
    seconds = time.perf_counter() - start
    predicted = np.nan_to_num(scored.member_prob) > THRESHOLD
    tp = float((predicted & field.member).sum())
    precision = tp / max(predicted.sum(), 1)
    recall = tp / max(field.member.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    truth = np.asarray(field.pm)
    reported = (
        scored.reported_pm if scored.reported_pm is not None else product_mean_pm(field.catalog, scored.member_prob)
    )
    pm_error = float(np.linalg.norm(np.asarray(reported, float) - truth))
    fit_error = float(np.linalg.norm(np.asarray(scored.fitted_pm) - truth)) if scored.fitted_pm else float("nan")
    ivw_error = float(np.linalg.norm(summary_mean_pm(field.catalog, scored.member_prob, True) - truth))
    return Row(
        field.name,
        method,
        f1,
        precision,
        recall,
        pm_error,
        fit_error,
        ivw_error,
        int(predicted.sum()),
        int(field.member.sum()),
        seconds,
        scored.info,
        scored.reported_pm_se,
    )


def print_table(rows: Sequence[Row]) -> None:
    """A fixed-width table, one line per field and method."""
    print(
        f"{'field':34s} {'method':10s} {'F1':>6s} {'prec':>6s} {'rec':>6s} {'dPM':>7s} {'se':>6s} {'dPM(fit)':>8s} {'dPM(ivw)':>8s} "
        f"{'members':>8s} {'ref':>6s} {'sec':>6s}  info"
    )
    for r in rows:
        fit = f"{r.pm_error_fit:8.3f}" if np.isfinite(r.pm_error_fit) else f"{'-':>8s}"
        print(
            f"{r.field:34s} {r.method:10s} {r.f1:6.3f} {r.precision:6.3f} {r.recall:6.3f} {r.pm_error:7.3f} "
            f"{r.pm_se:6.3f} {fit} {r.pm_error_ivw:8.3f} {r.members:8d} {r.reference_members:6d} {r.seconds:6.1f}  {r.info}"
        )
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        f1 = [r.f1 for r in mine]
        pm = [r.pm_error for r in mine]
        fit = [r.pm_error_fit for r in mine if np.isfinite(r.pm_error_fit)]
        ivw = [r.pm_error_ivw for r in mine]
        z = [r.pm_error / r.pm_se for r in mine if np.isfinite(r.pm_se) and r.pm_se > 0]
        print(
            f"-- {method}: F1 min {min(f1):.3f} median {np.median(f1):.3f}; dPM max {max(pm):.3f} "
            f"(fit {max(fit) if fit else float('nan'):.3f}, ivw {max(ivw):.3f}); "
            f"fields with F1 >= 0.85 and dPM < 0.1: {sum(r.f1 >= 0.85 and r.pm_error < 0.1 for r in mine)}/"
            f"{len(mine)}; rms dPM / se {float(np.sqrt(np.mean(np.square(z)))) if z else float('nan'):.2f}; "
            f"total {sum(r.seconds for r in mine):.1f} s"
        )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", help="xd (default), xd-legacy, default, model:<name>")
    parser.add_argument("--fields", nargs="*", help=f"real fields (default: all of {', '.join(vb21_names())})")
    parser.add_argument("--simulated", action="store_true", help="run the simulated checks instead")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="simulation seeds (--simulated)")
    parser.add_argument("--center", choices=("auto", "literature"), default="auto")
    parser.add_argument("--set", action="append", default=[], help="Hydra override for default / model:<name>")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--variants", nargs="+", default=["full"], help=f"real fields cut these ways too: {', '.join(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    methods = args.method or ["xd"]
    if args.simulated:
        fields = (
            simulated_field(label, base, overrides, seed)
            for seed in args.seeds
            for label, base, overrides in SIMULATED_CASES
        )
    else:
        fields = (
            field_variant(real_field(name, args.center), variant, args.center)
            for name in (args.fields or vb21_names())
            for variant in args.variants
        )
    rows = []
    for field in fields:
        for method in methods:
            options: dict[str, Any] = {"set": args.set} if method in ("default",) or method.startswith("model:") else {}
            rows.append(score(field, method, options))
            r = rows[-1]
            print(f"  {r.field} {r.method}: F1 {r.f1:.3f} dPM {r.pm_error:.3f} ({r.seconds:.1f} s)", file=sys.stderr)
    print_table(rows)
    if args.output:
        args.output.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()
