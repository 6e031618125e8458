"""The measuring stick of a membership model against ``model=xd`` (issue 24): real skies made hard, simulated truth, time.

What it measures
----------------
Four modes, each a table per field and method and a summary per method; any method runs in each.

* **Agreement** (default): F1 of member_prob > 0.5 against the published memberprob > 0.5
  (Vasiliev & Baumgardt 2021) on the real fields, every star; the summary gives the median F1
  and the median per-field difference to the baseline (``--baseline``, default ``xd``).
* **Degraded-bright** (``--degrade LEVEL ...``): in each real field the stars with G < 17.5 whose
  published membership is certain (memberprob < 0.02 or > 0.98) get their proper motions and
  parallax re-drawn with errors of LEVEL (mas/yr, mas) and their BP-RP perturbed by 0.03 mag
  (:func:`degrade_bright`), their error columns set to match (and, with ``--state-colour-error``,
  a ``bp_rp_error`` column that says which colours were perturbed); the faint stars stay as they
  are. Truth for the degraded stars: memberprob > 0.98. Per field: F1 and ECE (:func:`expected_calibration_error`) on the degraded
  stars, F1 on every star against memberprob > 0.5, and the ECE of the degraded stars outside
  the core (:func:`outside_core`: beyond the published members' median radius; inside it, the
  paper's certain non-members include crowded stars whose astrometry it judged corrupted, which
  the re-drawn errors make look sound). Summary: the median F1 gain over the baseline on the
  degraded stars, the worst field's gain, the share of fields more than 0.02 below it, the median
  ECE (and outside the core) -- over fields with at least ``--min-members`` degraded members.
* **Simulated** (``--simulated``): simulated cones with truth (:data:`SIMULATED_KINDS`), their
  2-parameter sources (no proper motion or parallax) included. F1 on the 2-parameter stars
  against ``position`` (the product's current answer for them, model=xd's position-alone
  score, :mod:`grasp_dl.inference.no_astrometry`), and F1 / ECE on every star. A 2-parameter
  star a method leaves unscored counts as a non-member; the ``flag`` column says how they were
  scored. ``--score-no-astrometry`` gives every product method's unscored 2-parameter stars the
  position-alone score (predict's ``score_no_astrometry``).
* **Timing** (``--timing``): wall time of the fit alone on a simulated 10^4-star bulge-like cone,
  per method, one after another, with the thread count the caller sets (OMP_NUM_THREADS); the
  ratio to the baseline.

Methods (``--method``, repeatable)
----------------------------------
Those of ``scripts/benchmark_real_fields.py`` (``xd``: the mixture fitted directly; ``default``;
``model:<name>``: ``DeepClusteringModel(model=<name>)``, the product's notebook facade) and
``position`` (``model:xd`` whose 2-parameter stars are scored from their position alone), and
``oracle-cmd``, a reference: ``xd`` with a CMD density ratio fitted to the reference's own
memberships (:func:`oracle_cmd`), the most a CMD could add to the astrometry.
Hydra overrides: ``--set K=V`` for every product method, or after the method's name for one,
e.g. ``--method "model:vade experiment=hard_field"``. A model or config option this checkout
does not have stops the run with one line before any field is loaded.

Run
---
    python scripts/benchmark_multimodal.py --method xd                       # agreement, 31 fields
    python scripts/benchmark_multimodal.py --degrade 0.5 1.0 --method xd --method "model:multimodal experiment=multimodal"
    python scripts/benchmark_multimodal.py --simulated --method xd --method position --method model:multimodal
    python scripts/benchmark_multimodal.py --timing --method xd --method model:xd --method model:multimodal
    python scripts/benchmark_multimodal.py --degrade 1.0 --fields djorg1 ngc6652 --json /tmp/degraded.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_real_fields as real  # noqa: E402  (a sibling script, not part of the package)

#: Stars brighter than this (G) with a certain published membership are degraded.
BRIGHT_G = 17.5
#: A published membership below the first or above the second is certain.
CERTAIN = (0.02, 0.98)
#: The columns re-drawn, each with its ``*_error``.
DEGRADED_QUANTITIES = ("pmra", "pmdec", "parallax")
#: Standard deviation (mag) of the noise added to a degraded star's BP-RP.
COLOUR_SCATTER = 0.03
#: A member probability above this is a member.
THRESHOLD = real.THRESHOLD
#: Bins of the expected calibration error (equal widths over [0, 1]).
ECE_BINS = 10
#: A field this far below the baseline's F1 on the degraded stars counts as worse.
WORSE_BY = 0.02
#: Simulated cones: label, bundled simulation config, overrides of simulate_field (10^4 stars each;
#: None: the robustness grid's faint, compact cell, filled in by :func:`simulated_kinds`).
SIMULATED_KINDS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("M4-like", "m4", {"n_stars": 10000}),
    ("bulge-like", "ngc6558", {"n_stars": 10000}),
    ("faint members", "ngc6558", None),
)
#: The cone of the timing mode: a simulated bulge-like field of this many stars.
TIMING_STARS = 10000
#: The method whose 2-parameter stars are scored from their position alone.
POSITION = "position"
#: A reference, not a model: ``xd``'s memberships with a CMD density ratio fitted to the reference's
#: own memberships (:func:`oracle_cmd`): what a perfectly learnt CMD could add to the astrometry.
ORACLE = "oracle-cmd"
#: Gaussian components of each of the oracle's two CMD densities.
ORACLE_COMPONENTS = 8


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One ``--method``: its label in the tables, the scoring name, and its own Hydra overrides."""

    label: str
    name: str
    overrides: tuple[str, ...] = ()

    @property
    def through_product(self) -> bool:
        """Whether it runs through ``DeepClusteringModel`` (and takes Hydra overrides)."""
        return self.name == "default" or self.name.startswith("model:")


def parse_method(text: str) -> Method:
    """``"model:vade experiment=hard_field"`` -> Method; ``position`` is ``model:xd`` scoring 2-parameter stars.

    Raises
    ------
    SystemExit
        For a method name the real-field benchmark does not know, or overrides on a method that takes none.
    """
    name, *overrides = text.split() or [""]
    scoring = {POSITION: "model:xd", ORACLE: "xd"}.get(name, name)
    try:
        real.method_for(scoring)
    except SystemExit:
        raise SystemExit(
            f"unknown --method {name!r}: use xd, xd-legacy, default, {POSITION}, {ORACLE} or model:<name>"
        ) from None
    method = Method(text.strip(), name if name in (POSITION, ORACLE) else scoring, tuple(overrides))
    if overrides and not (method.through_product or name == POSITION):
        raise SystemExit(f"--method {text!r}: only default, position and model:<name> take Hydra overrides")
    return method


def check_available(methods: Sequence[Method], sets: Sequence[str]) -> None:
    """Stop with one line when a method's model, or a ``group=option`` override, is not in this checkout."""
    from grasp_dl.api import MODELS
    from grasp_dl.runtime.config import conf_dir

    for method in methods:
        if method.name.startswith("model:") and method.name.split(":", 1)[1] not in MODELS:
            model = method.name.split(":", 1)[1]
            raise SystemExit(
                f"--method {method.label}: model={model} is not registered in this checkout "
                f"(known: {', '.join(MODELS)}); run it on a branch that has it"
            )
    for method in methods:
        for override in [*sets, *method.overrides] if method.through_product or method.name == POSITION else []:
            group, _, option = override.lstrip("+~").partition("=")
            if (conf_dir() / group).is_dir() and not (conf_dir() / group / f"{option}.yaml").is_file():
                raise SystemExit(
                    f"--method {method.label}: {group}={option} is not a config of this checkout "
                    f"(conf/{group}/{option}.yaml is missing); run it on a branch that has it"
                )


def run_method(
    method: Method, field: real.Field, sets: Sequence[str], score_no_astrometry: bool = False
) -> tuple[real.Scored, float]:
    """Score ``field`` with ``method``; the result and the wall time of fit + predict.

    ``score_no_astrometry``: a product method's 2-parameter stars get the position-alone score
    where it leaves them unscored (``position`` always does).
    """
    product = method.through_product or method.name == POSITION
    positions = score_no_astrometry or method.name == POSITION
    options: dict[str, Any] = {"set": [*sets, *method.overrides], "score_no_astrometry": positions} if product else {}
    scoring = "model:xd" if method.name == POSITION else method.name
    if method.name == ORACLE:  # built on xd, or on position where the cone has 2-parameter stars
        two_parameter = two_parameter_rows(field.catalog).any()
        scoring, options = ("model:xd", {"set": [], "score_no_astrometry": True}) if two_parameter else ("xd", {})
    start = time.perf_counter()
    scored = real.method_for(scoring)(field, options)
    if method.name == ORACLE:
        scored = replace(scored, member_prob=oracle_cmd(field, np.asarray(scored.member_prob, float)))
    return scored, time.perf_counter() - start


def oracle_cmd(field: real.Field, member_prob: np.ndarray) -> np.ndarray:
    """``member_prob`` with its odds times a CMD density ratio fitted to ``field``'s reference memberships.

    :func:`run_method` gives it ``xd``'s memberships, or ``position``'s on a cone with 2-parameter
    stars (the product's answer for those, which the simulated mode compares against).

    The densities of BP-RP given G of the reference's members and of its other stars are Gaussian
    mixtures of (G, BP-RP) of up to :data:`ORACLE_COMPONENTS` components (at least 5 stars each),
    divided by their marginal in G, fitted to every star with photometry, the scored ones included:
    what a CMD could add to the astrometric memberships with labels no unsupervised model has, not
    a method. A group of fewer than 2 such stars leaves ``member_prob`` as it is; stars without
    photometry keep ``member_prob``, unscored ones (NaN) stay unscored.
    """
    from scipy.special import logsumexp
    from scipy.stats import norm
    from sklearn.mixture import GaussianMixture

    cmd = field.catalog[["phot_g_mean_mag", "bp_rp"]].to_numpy(float)
    labels = field.member if field.memberprob is None else np.asarray(field.memberprob, float) > THRESHOLD
    ok = np.isfinite(cmd).all(1)

    if min((ok & labels).sum(), (ok & ~labels).sum()) < 2:  # nothing to fit one density to
        return np.array(member_prob, float)

    def log_density(rows: np.ndarray) -> np.ndarray:
        components = int(np.clip(rows.sum() // 5, 1, ORACLE_COMPONENTS))  # at least 5 stars a component
        mixture = GaussianMixture(components, random_state=0).fit(cmd[rows])
        mean, sd = mixture.means_[:, 0], np.sqrt(mixture.covariances_[:, 0, 0])
        marginal = logsumexp(np.log(mixture.weights_) + norm.logpdf(cmd[ok, :1], mean, sd), axis=1)
        return mixture.score_samples(cmd[ok]) - marginal

    cluster, others = log_density(ok & labels), log_density(ok & ~labels)
    out = np.array(member_prob, float)
    scored = np.isfinite(out[ok])
    p = np.clip(out[ok][scored], 1e-12, 1.0 - 1e-12)
    log_odds = np.log(p / (1.0 - p)) + (cluster - others)[scored]
    out[np.flatnonzero(ok)[scored]] = 1.0 / (1.0 + np.exp(-log_odds))
    return out


# ----------------------------------------------------------------------------- degradation
def degradable(catalog: pd.DataFrame, memberprob: np.ndarray) -> np.ndarray:
    """Rows brighter than :data:`BRIGHT_G` whose published membership is certain (:data:`CERTAIN`)."""
    g = catalog["phot_g_mean_mag"].to_numpy(float)
    prob = np.asarray(memberprob, float)
    return (g < BRIGHT_G) & ((prob < CERTAIN[0]) | (prob > CERTAIN[1]))


def degrade_bright(
    catalog: pd.DataFrame, memberprob: np.ndarray, level: float, seed: int = 0, colour_error: bool = False
) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``catalog`` whose bright, certain stars look like faint ones; and which rows those are.

    For each row of :func:`degradable`: each of pmra, pmdec and parallax whose error is below
    ``level`` gets N(0, level^2 - error^2) added and its error set to ``level`` (one at or above
    ``level`` is left as it is), the pmra/pmdec correlation becomes 0, and BP-RP gets
    N(0, :data:`COLOUR_SCATTER`^2) (BP too where the catalogue has it, so that BP - RP agrees).
    With ``colour_error`` the colour's error is stated as the astrometry's is: ``bp_rp_error`` is
    Gaia's typical error at the star's G and the added scatter in quadrature (NaN on the other rows,
    whose errors the catalogue does not state). The same ``seed`` gives the same catalogue;
    ``catalog`` is not changed.

    Raises
    ------
    SystemExit
        If ``level`` is not positive or a needed column is missing.
    """
    if not np.isfinite(level) or level <= 0:
        raise SystemExit(f"--degrade: the error level must be a positive number of mas(/yr), got {level!r}")
    needed = ["phot_g_mean_mag", "bp_rp", *DEGRADED_QUANTITIES, *(f"{q}_error" for q in DEGRADED_QUANTITIES)]
    missing = [c for c in needed if c not in catalog.columns]
    if missing:
        raise SystemExit(f"--degrade needs the columns {', '.join(missing)}; the catalogue lacks them")
    chosen = degradable(catalog, memberprob)
    rows = np.flatnonzero(chosen)
    rng = np.random.default_rng(seed)
    out = catalog.copy()
    for quantity in DEGRADED_QUANTITIES:
        value = out[quantity].to_numpy(float, copy=True)
        error = out[f"{quantity}_error"].to_numpy(float, copy=True)
        noise = rng.standard_normal(rows.size)
        worse = level > error[rows]
        extra = np.sqrt(np.where(worse, level**2 - error[rows] ** 2, 0.0))
        value[rows] += noise * extra
        error[rows] = np.where(worse, level, error[rows])
        out[quantity], out[f"{quantity}_error"] = value, error
    if "pmra_pmdec_corr" in out.columns:
        corr = out["pmra_pmdec_corr"].to_numpy(float, copy=True)
        corr[rows] = 0.0
        out["pmra_pmdec_corr"] = corr
    if "parallax_over_error" in out.columns:
        out["parallax_over_error"] = out["parallax"] / out["parallax_error"]
    shift = COLOUR_SCATTER * rng.standard_normal(rows.size)
    for column in ("bp_rp", "phot_bp_mean_mag"):
        if column in out.columns:
            values = out[column].to_numpy(float, copy=True)
            values[rows] += shift
            out[column] = values
    if colour_error:
        from grasp_dl.models.cmd_density import gaia_photometric_variance

        stated = (
            out["bp_rp_error"].to_numpy(float, copy=True) if "bp_rp_error" in out.columns else np.full(len(out), np.nan)
        )
        _, typical = gaia_photometric_variance(out["phot_g_mean_mag"].to_numpy(float)[rows])
        before = np.where(np.isfinite(stated[rows]), stated[rows] ** 2, typical)
        stated[rows] = np.sqrt(before + COLOUR_SCATTER**2)
        out["bp_rp_error"] = stated
    return out, chosen


def outside_core(catalog: pd.DataFrame, memberprob: np.ndarray, center: Sequence[float]) -> np.ndarray:
    """Rows at or beyond the published members' (memberprob > 0.5) median radius from ``center``.

    Every row when the field has no published member.
    """
    from grasp_dl.data.sky import gnomonic_project

    xi, eta = gnomonic_project(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), *center)
    radius = np.hypot(xi, eta)
    members = np.asarray(memberprob, float) > THRESHOLD
    if not members.any():
        return np.ones(len(catalog), bool)
    return radius >= np.median(radius[members])


# ----------------------------------------------------------------------------- scores
def f1_score(member_prob: np.ndarray, truth: np.ndarray) -> float:
    """F1 of member_prob > 0.5 (NaN: a non-member) against ``truth``; NaN when ``truth`` has no member."""
    truth = np.asarray(truth, bool)
    if not truth.any():
        return float("nan")
    predicted = np.nan_to_num(np.asarray(member_prob, float)) > THRESHOLD
    tp = float((predicted & truth).sum())
    return 2.0 * tp / float(predicted.sum() + truth.sum())


def expected_calibration_error(member_prob: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over equal-width bins of |mean prob - share of members| x the bin's share.

    A probability of 1 falls in the last bin; NaN counts as 0 (a non-member, as in the F1). NaN
    for no stars.
    """
    prob = np.clip(np.nan_to_num(np.asarray(member_prob, float)), 0.0, 1.0)
    truth = np.asarray(truth, float)
    if prob.size == 0:
        return float("nan")
    which = np.minimum((prob * bins).astype(int), bins - 1)
    # per bin: |sum of probabilities - number of members| = count x |mean prob - share of members|
    gap = np.abs(np.bincount(which, prob, bins) - np.bincount(which, truth, bins))
    return float(gap.sum() / prob.size)


@dataclass
class Summary:
    """One method's numbers against the baseline over the fields both scored."""

    method: str
    fields: int
    median: float
    median_gain: float
    worst_gain: float
    worst_field: str
    share_worse: float
    median_ece: float = float("nan")
    median_ece_outside: float = float("nan")


def summarise(
    rows: Sequence[Any],
    method: str,
    baseline: str,
    value: str,
    ece: str | None = None,
    min_members: int = 0,
    ece_outside: str | None = None,
) -> Summary:
    """``method``'s ``value`` (a row attribute) and its gain over ``baseline``'s, paired by field.

    A field counts where the method's value is finite and the row's ``members`` (truth members)
    is at least ``min_members``; the gains, the worst field and ``share_worse`` (the share of
    fields more than :data:`WORSE_BY` below the baseline) over those the baseline scored too.
    """
    base = {r.field: getattr(r, value) for r in rows if r.method == baseline}
    mine = [r for r in rows if r.method == method and r.members >= min_members and np.isfinite(getattr(r, value))]
    paired = [r for r in mine if np.isfinite(base.get(r.field, np.nan))]
    gains = np.array([getattr(r, value) - base[r.field] for r in paired])
    worst = int(np.argmin(gains)) if paired else -1
    nan = float("nan")
    return Summary(
        method,
        len(mine),
        float(np.median([getattr(r, value) for r in mine])) if mine else nan,
        float(np.median(gains)) if paired else nan,
        float(gains[worst]) if paired else nan,
        paired[worst].field if paired else "-",
        float(np.mean(gains < -WORSE_BY)) if paired else nan,
        float(np.nanmedian([getattr(r, ece) for r in mine])) if ece and mine else nan,
        float(np.nanmedian([getattr(r, ece_outside) for r in mine])) if ece_outside and mine else nan,
    )


# ----------------------------------------------------------------------------- rows
@dataclass
class AgreementRow:
    """One method on one real field, undegraded."""

    field: str
    method: str
    f1: float
    members: int
    predicted: int
    seconds: float


@dataclass
class DegradedRow:
    """One method on one real field degraded at ``level``."""

    field: str
    method: str
    level: float
    degraded: int
    members: int  # degraded stars that are members (memberprob > 0.98)
    f1_degraded: float
    ece_degraded: float
    f1_all: float
    seconds: float
    ece_outside_core: float = float("nan")  # ECE of the degraded stars outside the core (outside_core)


@dataclass
class SimulatedRow:
    """One method on one simulated cone."""

    field: str
    method: str
    two_parameter: int
    members: int  # 2-parameter stars that are members
    scored: int  # 2-parameter stars whose flag is not missing:... (the product leaves those unscored)
    flags: dict[str, int] = field(default_factory=dict)  # the 2-parameter stars' flags
    f1_two_parameter: float = float("nan")
    f1_all: float = float("nan")
    ece_all: float = float("nan")
    seconds: float = float("nan")


@dataclass
class TimingRow:
    """One method's fit on the timing cone."""

    method: str
    fit_seconds: float
    total_seconds: float
    ratio: float = float("nan")


def real_fields(names: Sequence[str] | None) -> list[real.Field]:
    """The named real fields (default: the shipped seven and every field of the real benchmark's folders)."""
    names = names or real.vb21_names() + real.more_names()
    return [real.real_field(name, "auto") for name in names]


def agreement_rows(fields: Sequence[real.Field], methods: Sequence[Method], sets: Sequence[str]) -> list[AgreementRow]:
    """Every method on every field as it is."""
    rows = []
    for fld in fields:
        for method in methods:
            scored, seconds = run_method(method, fld, sets)
            f1 = f1_score(scored.member_prob, fld.member)
            predicted = int((np.nan_to_num(scored.member_prob) > THRESHOLD).sum())
            rows.append(AgreementRow(fld.name, method.label, f1, int(fld.member.sum()), predicted, seconds))
            progress(rows[-1])
    return rows


def degraded_rows(
    fields: Sequence[real.Field],
    methods: Sequence[Method],
    levels: Sequence[float],
    sets: Sequence[str],
    seed: int,
    colour_error: bool = False,
) -> list[DegradedRow]:
    """Every method on every field degraded at each level (:func:`degrade_bright`)."""
    rows = []
    for fld in fields:
        for level in levels:
            catalog, chosen = degrade_bright(fld.catalog, fld.memberprob, level, seed, colour_error)
            degraded = replace(fld, catalog=catalog)
            truth = fld.memberprob[chosen] > CERTAIN[1]
            outside = outside_core(fld.catalog, fld.memberprob, fld.center)[chosen]
            for method in methods:
                scored, seconds = run_method(method, degraded, sets)
                prob = np.asarray(scored.member_prob, float)
                rows.append(
                    DegradedRow(
                        fld.name,
                        method.label,
                        float(level),
                        int(chosen.sum()),
                        int(truth.sum()),
                        f1_score(prob[chosen], truth),
                        expected_calibration_error(prob[chosen], truth),
                        f1_score(prob, fld.member),
                        seconds,
                        expected_calibration_error(prob[chosen][outside], truth[outside]),
                    )
                )
                progress(rows[-1])
    return rows


def simulated_kinds() -> list[tuple[str, str, dict[str, Any]]]:
    """:data:`SIMULATED_KINDS` with the faint-member cone filled in from the robustness grid."""
    from grasp_dl.data.simulate import robustness_field_config

    faint = robustness_field_config(0.05, 10000, 1.0, "compact", "faint")
    faint = {k: v for k, v in faint.items() if k not in ("seed", "name")}
    return [(label, base, faint if overrides is None else overrides) for label, base, overrides in SIMULATED_KINDS]


def two_parameter_rows(catalog: pd.DataFrame) -> np.ndarray:
    """Rows with a position but no proper motion or parallax (Gaia's 2-parameter solutions)."""
    astrometry = catalog[list(DEGRADED_QUANTITIES)].to_numpy(float)
    return np.isnan(astrometry).all(axis=1) & catalog[["ra", "dec"]].notna().all(axis=1).to_numpy()


def simulated_rows(
    methods: Sequence[Method], sets: Sequence[str], seeds: Sequence[int], score_no_astrometry: bool = False
) -> list[SimulatedRow]:
    """Every method on every simulated cone (:func:`simulated_kinds`) and seed (``score_no_astrometry``: run_method's)."""
    rows = []
    for seed in seeds:
        for label, base, overrides in simulated_kinds():
            fld = real.simulated_field(label, base, overrides, seed)
            two = two_parameter_rows(fld.catalog)
            for method in methods:
                scored, seconds = run_method(method, fld, sets, score_no_astrometry)
                prob = np.asarray(scored.member_prob, float)
                flags = scored.flags[two] if scored.flags is not None else np.full(two.sum(), "-")
                rows.append(
                    SimulatedRow(
                        fld.name,
                        method.label,
                        int(two.sum()),
                        int(fld.member[two].sum()),
                        int(sum(not f.startswith("missing") for f in map(str, flags))),
                        dict(Counter(map(str, flags)).most_common()),
                        f1_score(prob[two], fld.member[two]),
                        f1_score(prob, fld.member),
                        expected_calibration_error(prob, fld.member),
                        seconds,
                    )
                )
                progress(rows[-1])
    return rows


def timing_rows(methods: Sequence[Method], sets: Sequence[str], baseline: str, repeats: int) -> list[TimingRow]:
    """Each method's fit on a simulated bulge-like cone of :data:`TIMING_STARS` stars, the fastest of ``repeats``."""
    fld = real.simulated_field("timing bulge-like", "ngc6558", {"n_stars": TIMING_STARS}, 0)
    rows = []
    for method in methods:
        fits, totals = [], []
        for _ in range(repeats):
            scored, seconds = run_method(method, fld, sets)
            fits.append(scored.fit_seconds if np.isfinite(scored.fit_seconds) else seconds)
            totals.append(seconds)
        rows.append(TimingRow(method.label, min(fits), min(totals)))
        print(f"  {method.label}: fit {rows[-1].fit_seconds:.1f} s", file=sys.stderr, flush=True)
    base = {r.method: r.fit_seconds for r in rows}.get(baseline, float("nan"))
    for r in rows:
        r.ratio = r.fit_seconds / base
    return rows


def progress(row: Any) -> None:
    """One line per scored field on stderr, while the run goes."""
    text = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in asdict(row).items())
    print(f"  {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tables
def number(value: float, digits: int = 3) -> str:
    """A table cell: ``-`` for NaN."""
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def markdown(header: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    """A pipe table (reads in a terminal and pastes into the docs)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def summary_table(summaries: Sequence[Summary], what: str, baseline: str, outside: bool = False) -> str:
    """The summary lines per method against the baseline (``outside``: with the median ECE outside the core)."""
    return markdown(
        [
            "method",
            "fields",
            f"median {what}",
            f"median gain over {baseline}",
            "worst gain (field)",
            f"fields < {baseline} - {WORSE_BY}",
            "median ECE",
            *(["median ECE outside core"] if outside else []),
        ],
        [
            [
                s.method,
                s.fields,
                number(s.median),
                f"{s.median_gain:+.3f}" if np.isfinite(s.median_gain) else "-",
                f"{number(s.worst_gain)} ({s.worst_field})",
                f"{s.share_worse:.0%}" if s.fields else "-",
                number(s.median_ece),
                *([number(s.median_ece_outside)] if outside else []),
            ]
            for s in summaries
        ],
    )


def report(mode: str, rows: Sequence[Any], methods: Sequence[str], baseline: str, min_members: int) -> list[Summary]:
    """Print the mode's table and its summary; return the summaries."""
    if mode == "agreement":
        print(
            markdown(
                ["field", "method", "F1", "members", "predicted", "sec"],
                [[r.field, r.method, number(r.f1), r.members, r.predicted, number(r.seconds, 1)] for r in rows],
            )
        )
        summaries = [summarise(rows, m, baseline, "f1") for m in methods]
        print("\nAgreement with the published members (F1, every star):")
        print(summary_table(summaries, "F1", baseline))
        return summaries
    if mode == "degraded":
        summaries = []
        for level in dict.fromkeys(r.level for r in rows):
            at = [r for r in rows if r.level == level]
            print(f"\nDegraded bright stars at {level:g} mas(/yr):")
            print(
                markdown(
                    [
                        "field",
                        "method",
                        "degraded",
                        "members",
                        "F1 degraded",
                        "ECE degraded",
                        "ECE outside core",
                        "F1 all",
                        "sec",
                    ],
                    [
                        [
                            r.field,
                            r.method,
                            r.degraded,
                            r.members,
                            number(r.f1_degraded),
                            number(r.ece_degraded),
                            number(r.ece_outside_core),
                            number(r.f1_all),
                            number(r.seconds, 1),
                        ]
                        for r in at
                    ],
                )
            )
            level_summaries = [
                summarise(at, m, baseline, "f1_degraded", "ece_degraded", min_members, "ece_outside_core")
                for m in methods
            ]
            print(f"\nSummary at {level:g}, fields with >= {min_members} degraded members (F1 on the degraded stars):")
            print(summary_table(level_summaries, "F1", baseline, outside=True))
            summaries += level_summaries
        return summaries
    print(
        markdown(
            ["field", "method", "2-par", "members", "scored", "F1 2-par", "F1 all", "ECE all", "sec", "flags"],
            [
                [
                    r.field,
                    r.method,
                    r.two_parameter,
                    r.members,
                    r.scored,
                    number(r.f1_two_parameter),
                    number(r.f1_all),
                    number(r.ece_all),
                    number(r.seconds, 1),
                    ", ".join(f"{k} {v}" for k, v in r.flags.items()),
                ]
                for r in rows
            ],
        )
    )
    summaries = [summarise(rows, m, POSITION, "f1_two_parameter", "ece_all") for m in methods]
    print(f"\nF1 on the 2-parameter stars against {POSITION} (the product's position-alone score):")
    print(summary_table(summaries, "F1 2-par", POSITION))
    return summaries


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", help="xd (default), position, default, model:<name> [K=V ...]")
    parser.add_argument("--set", action="append", default=[], help="Hydra override for every product method")
    parser.add_argument("--fields", nargs="*", help="real fields (default: the 31 of the real-field benchmark)")
    parser.add_argument("--degrade", type=float, nargs="+", help="error levels (mas/yr, mas) of the bright stars")
    parser.add_argument("--seed", type=int, default=0, help="seed of the degradation")
    parser.add_argument(
        "--state-colour-error",
        action="store_true",
        help="--degrade: a bp_rp_error column states the degraded stars' colour errors (the scatter added)",
    )
    parser.add_argument("--min-members", type=int, default=10, help="degraded members a field needs to count")
    parser.add_argument("--simulated", action="store_true", help="simulated cones with 2-parameter stars")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="simulation seeds (--simulated)")
    parser.add_argument(
        "--score-no-astrometry",
        action="store_true",
        help="--simulated: product methods score the 2-parameter stars they leave out from their position",
    )
    parser.add_argument("--timing", action="store_true", help="fit time on a 10^4-star cone")
    parser.add_argument("--repeats", type=int, default=1, help="fits per method (--timing; the fastest counts)")
    parser.add_argument("--baseline", default="xd", help="the method the others are compared with")
    parser.add_argument("--json", type=Path, help="write the rows and summaries as JSON here")
    args = parser.parse_args(argv)
    if sum([bool(args.degrade), args.simulated, args.timing]) > 1:
        raise SystemExit("choose one of --degrade, --simulated and --timing")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    methods = [parse_method(text) for text in args.method or ["xd"]]
    check_available(methods, args.set)
    labels = [m.label for m in methods]
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    if not args.simulated and args.baseline not in labels:
        print(
            f"note: --baseline {args.baseline!r} is not among the methods, so no gains or ratios "
            f"(add --method {args.baseline!r})",
            file=sys.stderr,
        )
    if args.simulated:
        mode = "simulated"
        if POSITION not in [m.name for m in methods]:
            methods.append(parse_method(POSITION))
            labels.append(POSITION)
        rows: list[Any] = simulated_rows(methods, args.set, args.seeds, args.score_no_astrometry)
    elif args.timing:
        mode = "timing"
        rows = timing_rows(methods, args.set, args.baseline, args.repeats)
    elif args.degrade:
        mode = "degraded"
        rows = degraded_rows(
            real_fields(args.fields), methods, args.degrade, args.set, args.seed, args.state_colour_error
        )
    else:
        mode = "agreement"
        rows = agreement_rows(real_fields(args.fields), methods, args.set)
    if mode == "timing":
        print(f"Fit on a simulated {TIMING_STARS}-star bulge-like cone:")
        print(
            markdown(
                ["method", "fit s", "fit + predict s", f"fit / {args.baseline}"],
                [[r.method, number(r.fit_seconds, 1), number(r.total_seconds, 1), number(r.ratio, 2)] for r in rows],
            )
        )
        summaries: list[Summary] = []
    else:
        summaries = report(mode, rows, labels, args.baseline, args.min_members)
    result = {"mode": mode, "rows": [asdict(r) for r in rows], "summaries": [asdict(s) for s in summaries]}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()
