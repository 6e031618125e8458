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
    python scripts/benchmark_real_fields.py --simulated --method xd
    python scripts/benchmark_real_fields.py --method default --fields ngc6522 --set trainer.max_epochs=5
    python scripts/benchmark_real_fields.py --variants full half_cone sample30 sample10 faint
    python scripts/benchmark_real_fields.py --sky --empty 0 --option null_test=true   # 31 fields + cluster-free
    python scripts/benchmark_real_fields.py --simulated --no-real --empty 0 1 --option null_test=true
    python scripts/benchmark_real_fields.py --sky --label-noise    # how sure the paper's own labels are

The whole sky (``--sky``): the seven shipped fields and every field of :data:`MORE_DIRS` (24 more,
not shipped), each matched to its row of the VB21 table by name. The summary gives, on fields of
>= 50 published members, how many are found (the verdict), the median F1 and the share >= 0.9, the
bulge fields' precision (|l| < 20, |b| < 12 deg) and the share whose mean pm is within
max(0.05, 2 sigma of the paper's mean) (``tol``). ``--empty SEED``: each field also made
cluster-free (:func:`cluster_free_field`): the stars of memberprob >= 0.05 dropped, the others'
positions spread uniformly over the cone; any cluster named there is false. ``--option KEY=VALUE``
sets a :class:`~grasp_dl.mixtures.cluster_field.ClusterFieldMixture` option (JSON value);
``--named`` starts the cluster from the table's row, as ``data.cluster=NAME`` does.
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
    memberprob: np.ndarray | None = None  # the reference's membership probability per row (real fields)
    table_name: str | None = None  # the row of the VB21 table (real fields)
    bulge: bool = False
    pm_tolerance: float = 0.05  # max(0.05, 2 sigma of the paper's mean), mas/yr
    sigma_pm: float | None = None  # the paper's line-of-sight dispersion / distance / 4.74, mas/yr


def literature_table() -> pd.DataFrame:
    """The VB21 table (name, ra, dec, ..., pmra, pmdec, plx, ...) indexed by name."""
    path = vb21_clusters_path()
    with open(path) as handle:
        header = handle.readline().lstrip("#").split()
    table = pd.read_csv(path, sep=r"\s+", comment="#", names=header)
    return table.set_index("Name")


#: Folders of benchmark fields outside the package (``NAME.csv`` + ``NAME.ref.csv``, NAME a row of the table).
MORE_DIRS = (Path("/work/shared/data/vb21_more"),)


def more_names(folders: Sequence[Path] | None = None) -> list[str]:
    """Field names (the table's) of the benchmark folders that exist (default :data:`MORE_DIRS`)."""
    folders = MORE_DIRS if folders is None else folders
    return sorted(
        path.name.removesuffix(".csv")
        for folder in folders
        if folder.is_dir()
        for path in folder.glob("*.csv")
        if not path.name.endswith(".ref.csv")
    )


def load_field(name: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Catalogue, reference and table name of a shipped field or of one in :data:`MORE_DIRS`."""
    if name in TABLE_NAMES:
        catalog, reference = vb21_field(name)
        return catalog, reference, TABLE_NAMES[name]
    for folder in MORE_DIRS:
        if (folder / f"{name}.csv").is_file():
            return pd.read_csv(folder / f"{name}.csv"), pd.read_csv(folder / f"{name}.ref.csv"), name
    raise SystemExit(f"unknown field {name!r}")


def galactic(ra: float, dec: float) -> tuple[float, float]:
    """Galactic (l, b) in degrees, l in (-180, 180], of an ICRS position in degrees."""
    rot = np.array(
        [
            [-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
            [0.4941094278755837, -0.4448296299600112, 0.7469822444972189],
            [-0.8676661490190047, -0.1980763734312015, 0.4559837761750669],
        ]
    )
    a, d = np.radians(ra), np.radians(dec)
    x = rot @ np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    lon = float(np.degrees(np.arctan2(x[1], x[0])))
    return (lon - 360.0 if lon > 180.0 else lon), float(np.degrees(np.arcsin(x[2])))


def is_bulge(ra: float, dec: float) -> bool:
    """Toward the bulge: |l| < 20 deg and |b| < 12 deg (the crowded, bulge-dominated skies)."""
    lon, lat = galactic(ra, dec)
    return abs(lon) < 20.0 and abs(lat) < 12.0


def real_field(name: str, center_mode: str) -> Field:
    """A real field with the paper's members (memberprob > 0.5) and mean proper motion."""
    catalog, reference, table_name = load_field(name)
    row = literature_table().loc[table_name]
    prob = catalog[["source_id"]].merge(reference, on="source_id", how="left")["memberprob"].fillna(0.0)
    if center_mode == "literature":
        center = (float(row["ra"]), float(row["dec"]))
    else:
        center = estimate_center(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float))
    sigma_pm = float(row["sigma"]) / float(row["dist"]) / 4.74
    pm_tolerance = max(0.05, 2.0 * float(np.hypot(row["pmra_e"], row["pmdec_e"])))
    return Field(
        name,
        catalog,
        prob.to_numpy() > THRESHOLD,
        (float(row["pmra"]), float(row["pmdec"])),
        center,
        memberprob=prob.to_numpy(),
        table_name=table_name,
        bulge=is_bulge(float(row["ra"]), float(row["dec"])),
        pm_tolerance=pm_tolerance,
        sigma_pm=sigma_pm,
    )


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
    return Field(
        f"{label} s{seed}",
        catalog.drop(columns="truth"),
        member,
        (float(pm[0]), float(pm[1])),
        center,
        memberprob=member.astype(float),
    )


#: Stars whose reference membership is at least this are dropped from a cluster-free cone.
EMPTY_MEMBERPROB = 0.05


def cluster_free_field(field: Field, seed: int = 0, center_mode: str = "auto") -> Field:
    """``field`` with its cluster taken out: a real cone where no position carries information.

    Every star of reference memberprob >= :data:`EMPTY_MEMBERPROB` is dropped and the others are
    spread uniformly over the cone (the disc of the catalogue's largest radius around its centre),
    seeded; their proper motions, parallaxes and photometry stay real. No star is a member, so any
    cluster named in it is a false detection.
    """
    from grasp_dl.data.sky import gnomonic_deproject, gnomonic_project

    keep = np.nan_to_num(field.memberprob, nan=0.0) < EMPTY_MEMBERPROB
    kept = field.catalog[keep].reset_index(drop=True).copy()
    ra0, dec0 = field.center
    xi, eta = gnomonic_project(field.catalog["ra"].to_numpy(float), field.catalog["dec"].to_numpy(float), ra0, dec0)
    radius_max = float(np.nanmax(np.hypot(xi, eta)))
    rng = np.random.default_rng(seed)
    r = radius_max * np.sqrt(rng.random(len(kept)))
    phi = 2.0 * np.pi * rng.random(len(kept))
    ra, dec = gnomonic_deproject(r * np.cos(phi), r * np.sin(phi), ra0, dec0)
    kept["ra"], kept["dec"] = ra, dec
    center = (
        (ra0, dec0) if center_mode == "literature" else estimate_center(np.asarray(ra, float), np.asarray(dec, float))
    )
    return Field(
        f"{field.name} [empty s{seed}]",
        kept,
        np.zeros(len(kept), bool),
        field.pm,
        center,
        table_name=field.table_name,
        bulge=field.bulge,
        pm_tolerance=field.pm_tolerance,
        sigma_pm=field.sigma_pm,
    )


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
    #: the method's own verdict (None: the guards on the catalogue judge) and its reason
    found: bool | None = None
    reason: str = ""
    #: the product table's ``flag`` per row (methods run through the product; None otherwise)
    flags: np.ndarray | None = None
    #: wall time of the fit alone, without predicting (NaN: not measured apart)
    fit_seconds: float = float("nan")


def method_xd(field: Field, options: dict[str, Any]) -> Scored:
    """The product's error-deconvolved spatial mixture (model=xd)."""
    from grasp_dl.mixtures.cluster_field import fit_membership

    options = dict(options)
    threshold = options.pop("lnlr_threshold", None)
    center = field.center
    named = options.pop("named", None)
    if named is not None:  # data.cluster=NAME: the table's centre, mean and dispersion start the cluster
        row = literature_table().loc[named]
        center = (float(row["ra"]), float(row["dec"]))
        options.setdefault("start_pm", [float(row["pmra"]), float(row["pmdec"]), float(row["plx"])])
        options.setdefault("sigma_prior", float(row["sigma"]) / float(row["dist"]) / 4.74)
    stars = star_data(field.catalog, center, ("pmra", "pmdec", "parallax"), photometry=bool(options.get("photometry")))
    try:
        result = fit_membership(stars, **options)
    except ValueError as error:  # too few stars: the product names no cluster
        return Scored(np.zeros(len(field.catalog)), None, str(error), found=False, reason=str(error))
    fitted = tuple(float(v) for v in result.cluster_mean[:2])
    cov = result.mixture.cluster_mean_cov_
    se = float(np.hypot(*np.sqrt(np.diag(cov)[:2]))) if cov is not None else float("nan")
    # model=xd's summary reports the fitted mean (grasp_dl.membership.rules.adopt_model_mean) and its error
    found = reason = None
    if result.mixture.null_test:
        from grasp_dl.membership.guards import check_table

        kwargs = {} if threshold is None else {"min_log_likelihood_ratio": float(threshold)}
        check = check_table(
            result.member_prob,
            field.catalog,
            center,
            log_likelihood_ratio=result.mixture.log_likelihood_ratio_,
            null_permutations=result.mixture.null_permutations_,
            outlier_stars=result.mixture.outlier_stars(),
            **kwargs,
        )
        found, reason = bool(check["cluster_found"]), str(check["cluster_reason"])
    return Scored(
        result.member_prob,
        fitted,
        result.describe(),
        reported_pm=fitted,
        reported_pm_se=se,
        found=found,
        reason=reason or "",
    )


def api_method(model: str | None) -> Callable[[Field, dict[str, Any]], Scored]:
    """``DeepClusteringModel`` with ``model`` (None: the product default) and the ``--set`` overrides.

    ``options``: ``set`` (Hydra overrides) and ``score_no_astrometry`` (predict's option of that name).
    """

    def run(field: Field, options: dict[str, Any]) -> Scored:
        import tempfile

        from grasp_dl.api import DeepClusteringModel

        params: dict[str, Any] = {"progress_bar": False, "overrides": list(options.get("set", ()))}
        if model is not None:
            params["model"] = model
        from grasp_dl.runtime.errors import CatalogError

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            try:
                estimator = DeepClusteringModel(output_dir=tmp, **params).fit(field.catalog)
            except CatalogError as error:  # too few stars: the product refuses the cone, it names no cluster
                return Scored(np.zeros(len(field.catalog)), None, str(error), found=False, reason=str(error))
            fit_seconds = time.perf_counter() - start
            table, summary = estimator.predict_table(
                field.catalog, score_no_astrometry=bool(options.get("score_no_astrometry", False))
            )
        group = summary.get("cluster_group")
        # dPM(fit) of a product run is the mean the product's summary reports
        reported = (summary.get("mean_pmra"), summary.get("mean_pmdec"))
        fitted = reported if None not in reported else None
        info = f"group {group}, mean from the {summary.get('mean_source', 'members')}"
        se = float(np.hypot(summary.get("mean_pmra_error", np.nan), summary.get("mean_pmdec_error", np.nan)))
        member_prob = np.nan_to_num(table["member_prob"].to_numpy(float))
        return Scored(
            member_prob,
            fitted,
            info,
            reported_pm=fitted,
            reported_pm_se=se,
            flags=table["flag"].to_numpy(str),
            fit_seconds=fit_seconds,
        )

    return run


def method_for(name: str) -> Callable[[Field, dict[str, Any]], Scored]:
    """The scoring function of a ``--method`` name."""
    if name == "xd":
        return method_xd
    if name == "default":
        return api_method(None)
    if name.startswith("model:"):
        return api_method(name.split(":", 1)[1])
    raise SystemExit(f"unknown --method {name!r}: use xd, default or model:<name>")


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
    found: bool = True
    reason: str = ""
    bulge: bool = False
    pm_tolerance: float = 0.05


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
    found, reason = verdict(field, scored)
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
        found,
        reason,
        field.bulge,
        field.pm_tolerance,
    )


def verdict(field: Field, scored: Scored) -> tuple[bool, str]:
    """Whether the product would name a cluster: the method's own verdict, else the guards on the catalogue."""
    if scored.found is not None:
        return bool(scored.found), scored.reason
    from grasp_dl.membership.guards import check_table

    check = check_table(np.nan_to_num(scored.member_prob), field.catalog, field.center)
    return bool(check["cluster_found"]), str(check["cluster_reason"])


def paper_expected_f1(memberprob: np.ndarray) -> float:
    """F1 of the paper's own members (memberprob > 0.5) against the truth, were its probabilities calibrated.

    Expected true positives sum p over its members, false positives 1 - p over them, false
    negatives p over the others: what its labels' own uncertainty allows any method that agrees with
    the truth to score against them (NaN without a member).
    """
    p = np.clip(np.nan_to_num(np.asarray(memberprob, float)), 0.0, 1.0)
    member = p > THRESHOLD
    tp, fp, fn = p[member].sum(), (1.0 - p[member]).sum(), p[~member].sum()
    return float(2.0 * tp / (2.0 * tp + fp + fn)) if member.any() else float("nan")


def print_label_noise(names: Sequence[str], min_members: int = 50) -> None:
    """Per real field of >= ``min_members`` published members: the paper's expected F1, its 0.2 < p < 0.8 per member."""
    print(f"{'field':18s} {'members':>8s} {'expected F1':>12s} {'unsure/members':>14s}")
    for name in names:
        field = real_field(name, "auto")
        if field.member.sum() < min_members:
            continue
        p = field.memberprob
        unsure = float(((p > 0.2) & (p < 0.8)).sum() / field.member.sum())
        bulge = " (b)" if field.bulge else ""
        print(f"{name + bulge:18s} {int(field.member.sum()):8d} {paper_expected_f1(p):12.3f} {unsure:14.2f}")


def print_table(rows: Sequence[Row]) -> None:
    """A fixed-width table, one line per field and method, then each method's summary."""
    print(
        f"{'field':34s} {'method':10s} {'found':>5s} {'F1':>6s} {'prec':>6s} {'rec':>6s} {'dPM':>7s} {'tol':>5s} "
        f"{'se':>6s} {'dPM(fit)':>8s} {'members':>8s} {'ref':>6s} {'sec':>6s}  info"
    )
    for r in rows:
        fit = f"{r.pm_error_fit:8.3f}" if np.isfinite(r.pm_error_fit) else f"{'-':>8s}"
        name = f"{r.field}{' (b)' if r.bulge else ''}"
        print(
            f"{name:34s} {r.method:10s} {'yes' if r.found else 'NO':>5s} {r.f1:6.3f} {r.precision:6.3f} "
            f"{r.recall:6.3f} {r.pm_error:7.3f} {r.pm_tolerance:5.3f} {r.pm_se:6.3f} {fit} {r.members:8d} "
            f"{r.reference_members:6d} {r.seconds:6.1f}  {r.info}" + ("" if r.found else f" | {r.reason}")
        )
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        print(sky_summary(mine, method))


#: Clusters with at least this many published members count in the sky targets.
MIN_REFERENCE = 50


def sky_summary(rows: Sequence[Row], method: str) -> str:
    """The issue's numbers: on fields of >= MIN_REFERENCE published members, and on cluster-free cones."""
    real = [r for r in rows if r.reference_members >= MIN_REFERENCE]
    empty = [r for r in rows if r.reference_members == 0]
    lines = [f"-- {method}: {len(rows)} fields, {sum(r.seconds for r in rows):.0f} s"]
    if real:
        # F1 and pm agreement of a cluster not found count as failures (the product names no cluster)
        f1 = np.array([r.f1 if r.found else 0.0 for r in real])
        pm_ok = [r.found and r.pm_error <= r.pm_tolerance for r in real]
        bulge = [f"{r.field.split(' ')[0]} {r.precision:.2f}" for r in real if r.bulge]
        lines.append(
            f"   >= {MIN_REFERENCE} members: {len(real)} fields; found {sum(r.found for r in real)}/{len(real)}; "
            f"median F1 {np.median(f1):.3f}; F1 >= 0.9 on {np.mean(f1 >= 0.9):.0%} ({int((f1 >= 0.9).sum())}); "
            f"pm within max(0.05, 2 sigma) on {np.mean(pm_ok):.0%} ({sum(pm_ok)})"
        )
        if bulge:
            lines.append(f"   bulge precision: {', '.join(bulge)}")
    small = [r for r in rows if 0 < r.reference_members < MIN_REFERENCE]
    if small:
        lines.append(
            "   < 50 members: "
            + ", ".join(f"{r.field} {'found' if r.found else 'NOT found'} F1 {r.f1:.2f}" for r in small)
        )
    if empty:
        named = [r for r in empty if r.found]
        lines.append(
            f"   cluster-free cones: a cluster named in {len(named)}/{len(empty)}"
            + (f" ({', '.join(f'{r.field} {r.members}' for r in named)})" if named else "")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", help="xd (default), default, model:<name>")
    parser.add_argument("--fields", nargs="*", help=f"real fields (default: all of {', '.join(vb21_names())})")
    parser.add_argument(
        "--sky", action="store_true", help=f"the shipped fields and every field of {', '.join(map(str, MORE_DIRS))}"
    )
    parser.add_argument(
        "--empty", type=int, nargs="*", default=[], help="also each field made cluster-free with these seeds"
    )
    parser.add_argument("--named", action="store_true", help="xd: start from the table's row (data.cluster=NAME)")
    parser.add_argument("--no-real", action="store_true", help="only the cluster-free cones (with --empty)")
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE for the xd mixture (JSON values)")
    parser.add_argument("--simulated", action="store_true", help="run the simulated checks instead")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="simulation seeds (--simulated)")
    parser.add_argument("--center", choices=("auto", "literature"), default="auto")
    parser.add_argument("--set", action="append", default=[], help="Hydra override for default / model:<name>")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--label-noise",
        action="store_true",
        help="print the paper's own expected F1 on each real field (its memberprob read as calibrated) and stop",
    )
    parser.add_argument(
        "--variants", nargs="+", default=["full"], help=f"real fields cut these ways too: {', '.join(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    names = args.fields or (vb21_names() + more_names() if args.sky else vb21_names())
    if args.label_noise:
        print_label_noise(names)
        return []
    methods = args.method or ["xd"]
    xd_options = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.option)}
    if args.simulated:
        fields = (
            field
            for seed in args.seeds
            for label, base, overrides in SIMULATED_CASES
            for sim in [simulated_field(label, base, overrides, seed)]
            for field in ([] if args.no_real else [sim])
            + [cluster_free_field(sim, empty, args.center) for empty in args.empty]
        )
    else:
        fields = (
            field
            for name in names
            for base in [real_field(name, args.center)]
            for field in (
                ([] if args.no_real else [field_variant(base, variant, args.center) for variant in args.variants])
                + [cluster_free_field(base, seed, args.center) for seed in args.empty]
            )
        )
    rows = []
    for field in fields:
        for method in methods:
            options: dict[str, Any] = (
                {"set": args.set} if method in ("default",) or method.startswith("model:") else dict(xd_options)
            )
            if method == "xd" and args.named and field.table_name:
                options["named"] = field.table_name
            rows.append(score(field, method, options))
            r = rows[-1]
            print(
                f"  {r.field} {r.method}: found {r.found} F1 {r.f1:.3f} prec {r.precision:.3f} dPM {r.pm_error:.3f} "
                f"members {r.members}/{r.reference_members} ({r.seconds:.1f} s) {r.info}",
                file=sys.stderr,
                flush=True,
            )
    print_table(rows)
    if args.output:
        args.output.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()
