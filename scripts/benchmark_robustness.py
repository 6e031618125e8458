"""Robustness benchmark: member F1 and proper-motion error over a grid of simulated fields.

The grid (issue 14, item 5)
---------------------------
Every cell is a simulated Gaia DR3 cone from the project's simulator
(:func:`grasp_dl.data.simulate.robustness_field_config`: the bulge + disc field of
``conf/simulation/ngc6558.yaml`` with its cluster replaced), varying

* ``share``   cluster share of the stars: 1%, 2%, 5%, 10%, 20%;
* ``n``       catalogue size: 5k, 10k, 50k;
* ``offset``  the cluster's mean proper motion 0.3, 1 or 3 field dispersions from the field's mean;
* ``profile`` compact (core 0.05', tidal 8', the 12' cone reaches past it) or extended (core 3',
              tidal 45', the cone well inside it);
* ``members`` bright (a near cluster, members brighter than G ~ 19) or faint (most members fainter
              than G = 19, with proper-motion errors of 0.3-1.3 mas/yr);
* ``seed``    0 and 1.

The full factorial is 360 cells (``--full``). By default a documented design runs instead: the
base cell (5%, 10k, 1 dispersion, compact, bright, seed 0), every factor varied one at a time
from it (11 cells), and ``--sample`` cells (default 4) drawn at random (seed 2026) from the rest of
the factorial. ``--cells`` picks cells by name (``share0.02_n10000_off1_compact_faint_s0``) or by
``factor=value`` filters over the factorial (``--cells share=0.01,0.02 members=faint``).

Methods
-------
* ``xd``       the error-deconvolved spatial mixture, ``model=xd`` through the product path
               (conf/model/xd.yaml; only a tree without it fits the ``init=xd`` start mixture
               directly, component 0 the cluster);
* ``vade_hard`` ``model=vade experiment=hard_field``;
* ``dec_hard``  ``model=dec experiment=hard_field``;
* ``default``  ``grasp-dl train`` with no model choice: ``model=auto`` (conf/model/auto.yaml), which
               trains ``model=xd`` on these catalogues (they have error columns) and would fall back
               to ``model.fallback_model`` without them; the setting it trained is printed per cell;
* ``gmm``      scikit-learn GaussianMixture (3 components, full covariance) on the standardised
               features, its cluster named by the project's rule;
* ``vade_hard_noanchor``, ``dec_hard_noanchor`` (not in the default list): the hard-field models
  with the start anchor off (``model.anchor.weight=0 model.anchor.fallback=false``), to measure
  what the anchor (``grasp_dl/models/anchoring.py``) changes.

Deep models run the product path: ``grasp_dl.jobs.train.train`` on ``conf/train.yaml`` composed by
Hydra with the method's overrides, ``--ae-epochs`` autoencoder and ``--epochs`` clustering epochs
(short by default), no logger or callbacks; each cell's data module is built once and shared.
Predictions come from ``grasp_dl.inference.predict.predict_catalog`` (what ``grasp-dl predict`` writes).

Per cell and method: member F1, precision and recall of member_prob > 0.5 against the truth on
the scored stars (those with astrometry), the calibration of member_prob (expected calibration
error over 15 bins and the Brier score), the mean proper-motion error |summary mean - truth|
(mas/yr) with the summary's standard error, the same estimator's dPM given the true members (the
cell's sampling floor: no membership does better on average), ``cluster_found`` (the summary's when the guards set it; else whether the named group
passes the plausibility check: members' median radius < 0.7 of the other stars' and their
proper-motion dispersion < half of theirs), and for deep models the start against the end
(start F1 against the truth on the training stars, agreement F1 of the two memberships, what the
anchor did). Output: a markdown table per cell, a summary table per method, the checks of the
issue's targets, the command and the wall time; ``--csv`` writes every row.

    python scripts/benchmark_robustness.py                         # the default design
    python scripts/benchmark_robustness.py --cells share=0.01,0.02 members=faint --methods vade_hard vade_hard_noanchor
    python scripts/benchmark_robustness.py --full --ae-epochs 20 --epochs 20
    python scripts/benchmark_robustness.py --cells share0.01_n10000_off1_compact_bright_s0 --replicates 15

``--replicates K`` runs every chosen cell on K further realisations (simulation seeds 100, 101,
...) and tabulates, per cell and method, dPM over them against the same estimator given the true
members: with a hundred members the cluster's own mean scatters by ~0.05 mas/yr, so whether one
realisation lands under 0.1 mas/yr says little; the share of realisations over it, set beside the
true members' share, says whether a method adds error of its own. ``rms z`` (dPM over the
summary's standard error) checks that the reported uncertainty is honest.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FACTORS: dict[str, tuple[Any, ...]] = {
    "share": (0.01, 0.02, 0.05, 0.10, 0.20),
    "n": (5000, 10000, 50000),
    "offset": (0.3, 1.0, 3.0),
    "profile": ("compact", "extended"),
    "members": ("bright", "faint"),
    "seed": (0, 1),
}
BASE: dict[str, Any] = {"share": 0.05, "n": 10000, "offset": 1.0, "profile": "compact", "members": "bright", "seed": 0}
METHODS = ("xd", "vade_hard", "dec_hard", "default", "gmm")
EXTRA_METHODS = ("vade_hard_noanchor", "dec_hard_noanchor")
#: Hydra overrides of each product method.
OVERRIDES: dict[str, list[str]] = {
    "xd": ["model=xd"],
    "vade_hard": ["model=vade", "experiment=hard_field"],
    "dec_hard": ["model=dec", "experiment=hard_field"],
    "default": [],
    "vade_hard_noanchor": [
        "model=vade",
        "experiment=hard_field",
        "model.anchor.weight=0",
        "model.anchor.fallback=false",
    ],
    "dec_hard_noanchor": ["model=dec", "experiment=hard_field", "model.anchor.weight=0", "model.anchor.fallback=false"],
}
SAMPLE_SEED = 2026
#: First simulation seed of --replicates (the grid's own seeds are 0 and 1).
REPLICATE_SEED = 100
#: The issue's proper-motion target (mas/yr).
PM_TARGET = 0.1


# ----------------------------------------------------------------------------- the design
def cell_name(cell: dict[str, Any]) -> str:
    """The cell's name, as the simulator's config names it."""
    return (
        f"share{cell['share']:g}_n{int(cell['n'])}_off{cell['offset']:g}_{cell['profile']}_"
        f"{cell['members']}_s{int(cell['seed'])}"
    )


def full_grid() -> list[dict[str, Any]]:
    """Every cell of the factorial, in a fixed order."""
    keys = list(FACTORS)
    return [dict(zip(keys, values, strict=False)) for values in itertools.product(*FACTORS.values())]


def default_design(n_sample: int) -> list[dict[str, Any]]:
    """Base cell, one-factor-at-a-time variations of it, and ``n_sample`` random other cells."""
    cells = [dict(BASE)]
    for key, values in FACTORS.items():
        for value in values:
            if value != BASE[key]:
                cells.append({**BASE, key: value})
    names = {cell_name(c) for c in cells}
    rest = [c for c in full_grid() if cell_name(c) not in names]
    rng = np.random.default_rng(SAMPLE_SEED)
    picks = rng.choice(len(rest), size=min(n_sample, len(rest)), replace=False) if n_sample > 0 else []
    return cells + [rest[i] for i in sorted(picks)]


def replicate_cells(cells: Sequence[dict[str, Any]], replicates: int) -> list[dict[str, Any]]:
    """``cells`` and, after each, ``replicates`` further realisations of it (seeds REPLICATE_SEED, +1, ...)."""
    out = []
    for cell in cells:
        out.append(dict(cell))
        out.extend({**cell, "seed": REPLICATE_SEED + j} for j in range(replicates))
    return out


def cell_family(cell: dict[str, Any] | Any) -> str:
    """The cell's name without its seed: what its realisations share."""
    factors = cell if isinstance(cell, dict) else asdict(cell)
    return cell_name({**factors, "seed": 0}).removesuffix("_s0")


def _parse_value(key: str, text: str) -> Any:
    kind = type(FACTORS[key][0])
    return kind(float(text)) if kind is int else kind(text)


def select_cells(specs: Sequence[str]) -> list[dict[str, Any]]:
    """Cells named in ``specs``, or the factorial filtered by ``factor=v1,v2`` specs."""
    grid = full_grid()
    by_name = {cell_name(c): c for c in grid}
    named = [by_name[s] for s in specs if s in by_name]
    filters = [s for s in specs if s not in by_name]
    if not filters:
        return named
    wanted: dict[str, set[Any]] = {}
    for spec in filters:
        if "=" not in spec or spec.split("=", 1)[0] not in FACTORS:
            raise SystemExit(f"--cells: {spec!r} is neither a cell name nor factor=value ({', '.join(FACTORS)})")
        key, values = spec.split("=", 1)
        wanted[key] = {_parse_value(key, v) for v in values.split(",")}
    return named + [c for c in grid if all(c[k] in v for k, v in wanted.items())]


# ----------------------------------------------------------------------------- running
@dataclass
class Row:
    """One method on one cell."""

    cell: str
    method: str
    share: float
    n: int
    offset: float
    profile: str
    members: str
    seed: int
    f1: float = math.nan
    precision: float = math.nan
    recall: float = math.nan
    n_members: int = 0
    n_true: int = 0
    pm_error: float = math.nan
    pm_se: float = math.nan
    ece: float = math.nan
    brier: float = math.nan
    oracle_pm_error: float = math.nan
    cluster_found: bool | None = None
    found_source: str = ""
    plausible: bool | None = None
    radius_ratio: float | None = None
    pm_dispersion_ratio: float | None = None
    start_f1: float | None = None
    end_f1_train: float | None = None
    agreement: float | None = None
    anchor_action: str = ""
    seconds: float = math.nan
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def quiet() -> None:
    """Silence Lightning's info logs and the usual warnings so the tables stay readable."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "grasp_dl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def has_model_xd() -> bool:
    """Whether the product has ``model=xd`` (conf/model/xd.yaml)."""
    from grasp_dl.runtime.config import conf_dir

    return (Path(conf_dir()) / "model" / "xd.yaml").is_file()


def compose(method: str, cell: dict[str, Any], args: argparse.Namespace, out: str) -> Any:
    """conf/train.yaml composed as ``grasp-dl train`` would with the method's overrides, made short and quiet."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from grasp_dl.data.simulate import robustness_field_config
    from grasp_dl.runtime.config import conf_dir

    overrides = [
        *OVERRIDES[method],
        "data=ngc6558",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        f"seed={cell['seed']}",
        *args.set,
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.logger = None
        cfg.callbacks = None
        cfg.data.simulate = robustness_field_config(
            cell["share"], cell["n"], cell["offset"], cell["profile"], cell["members"], cell["seed"]
        )
        if "pretrain_epochs" in cfg.model:
            cfg.model.pretrain_epochs = args.ae_epochs
    return cfg


def _scores(row: Row, member_prob: np.ndarray, truth: np.ndarray) -> None:
    member = member_prob > 0.5
    tp = float((member & truth).sum())
    row.n_members, row.n_true = int(member.sum()), int(truth.sum())
    row.precision = tp / max(float(member.sum()), 1.0)
    row.recall = tp / max(float(truth.sum()), 1.0)
    row.f1 = 2.0 * tp / max(float(member.sum() + truth.sum()), 1.0)
    if len(truth):
        from grasp_dl.metrics import brier_score, expected_calibration_error

        row.ece = expected_calibration_error(member_prob, truth)
        row.brier = brier_score(member_prob, truth)


def _plausibility(row: Row, member_prob: np.ndarray, dm: Any) -> None:
    from grasp_dl.models.anchoring import group_check

    check = group_check(member_prob, dm.scaler.inverse_transform(dm.data.numpy()), dm.feature_names)
    row.plausible = check.passes
    row.radius_ratio, row.pm_dispersion_ratio = check.radius_ratio, check.pm_dispersion_ratio


def _pm(row: Row, summary: dict[str, Any], truth_pm: np.ndarray) -> None:
    """dPM = |summary mean - truth| and its standard error (the summary's, both axes combined)."""
    row.pm_error = float(np.hypot(summary["mean_pmra"] - truth_pm[0], summary["mean_pmdec"] - truth_pm[1]))
    row.pm_se = float(np.hypot(summary.get("mean_pmra_error", math.nan), summary.get("mean_pmdec_error", math.nan)))


def oracle_pm_error(dm: Any, truth_pm: np.ndarray) -> float:
    """dPM of the summary's estimator given the true members: the sampling floor of the cell.

    The simulated members' own mean scatters about the configured one by about their intrinsic
    dispersion / sqrt(members); no membership can do better on average.
    """
    import pandas as pd

    from grasp_dl.membership.rules import cluster_summary

    catalog = dm.table.iloc[dm.usable_rows()].reset_index(drop=True)
    truth = (catalog["truth"].to_numpy().astype(str) == "cluster").astype(float)
    summary = cluster_summary(
        pd.DataFrame({"label": np.zeros(len(truth), int), "member_prob": truth}), catalog, None, 0
    )
    return float(np.hypot(summary["mean_pmra"] - truth_pm[0], summary["mean_pmdec"] - truth_pm[1]))


def _found(row: Row, summary: dict[str, Any]) -> None:
    if "cluster_found" in summary:
        row.cluster_found, row.found_source = bool(summary["cluster_found"]), "summary"
    else:
        row.cluster_found, row.found_source = bool(row.plausible), "check"


def run_product(method: str, cell: dict[str, Any], dm: Any, truth_pm: np.ndarray, args: argparse.Namespace) -> Row:
    """Train one product method on the cell's data module, predict the catalogue, score it."""
    from grasp_dl.inference.predict import predict_catalog
    from grasp_dl.jobs import train as pipeline

    row = Row(cell_name(cell), method, **cell)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(method, cell, args, tmp)
        result = pipeline.train(cfg, datamodule=dm)
        module = result.module
        table, summary = predict_catalog(module, dm.table, center=list(dm.prepared.center))
    row.seconds = time.perf_counter() - start
    if result.setting:
        row.extra["setting"] = result.setting.removeprefix("setting: ").split(" (")[0].split(":")[0]
    scored = table["label"].to_numpy() >= 0
    member_prob = np.nan_to_num(table["member_prob"].to_numpy(float), nan=0.0)
    truth = dm.table["truth"].to_numpy().astype(str) == "cluster"
    _scores(row, member_prob[scored], truth[scored])
    _pm(row, summary, truth_pm)
    usable_prob = member_prob[dm.usable_rows()]
    _plausibility(row, usable_prob, dm)
    _found(row, summary)
    report = getattr(module, "fit_results", {}).get("start_vs_end") or module.hparams.get("start_vs_end")
    anchor = getattr(module, "_anchor_prob", None)
    if anchor is not None:
        truth_train = truth[dm.usable_rows()][dm.train_index.numpy()]
        start_member = anchor.cpu().numpy() > 0.5
        row.start_f1 = (
            2.0 * float((start_member & truth_train).sum()) / max(float(start_member.sum() + truth_train.sum()), 1.0)
        )
        end_member = usable_prob[dm.train_index.numpy()] > 0.5
        row.end_f1_train = (
            2.0 * float((end_member & truth_train).sum()) / max(float(end_member.sum() + truth_train.sum()), 1.0)
        )
    if report and report.get("anchored") is False:
        row.anchor_action = "not anchored (implausible start)"
    elif report:
        row.agreement = float(report["agreement"])
        row.anchor_action = str(report.get("action", ""))
        row.extra["drift_reason"] = report.get("reason")
    return row


def run_xd_direct(cell: dict[str, Any], dm: Any, truth_pm: np.ndarray) -> Row:
    """The error-deconvolved spatial mixture alone on the usable stars (component 0 = the cluster)."""
    import pandas as pd

    from grasp_dl.membership.rules import cluster_summary
    from grasp_dl.models.ingredients import xd_options, xd_start_mixture

    row = Row(cell_name(cell), "xd", **cell)
    start = time.perf_counter()
    opts = xd_options(None)
    stars = dm.star_data("all", opts["photometry"])
    member_prob = xd_start_mixture(3, cell["seed"], opts).fit(stars).predict_proba(stars)[:, 0]
    row.seconds = time.perf_counter() - start
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask].astype(str) == "cluster"
    _scores(row, member_prob, truth)
    catalog = dm.table.iloc[dm.usable_rows()].reset_index(drop=True)
    summary = cluster_summary(
        pd.DataFrame({"label": np.zeros(len(member_prob), int), "member_prob": member_prob}), catalog, None, 0
    )
    _pm(row, summary, truth_pm)
    _plausibility(row, member_prob, dm)
    _found(row, summary)
    row.found_source = "check (direct mixture)"
    return row


def run_gmm(cell: dict[str, Any], dm: Any, truth_pm: np.ndarray) -> Row:
    """A 3-component full-covariance Gaussian mixture on the standardised features, named by the rule."""
    import pandas as pd
    from sklearn.mixture import GaussianMixture

    from grasp_dl.membership.rules import choose_cluster_group, cluster_summary

    row = Row(cell_name(cell), "gmm", **cell)
    start = time.perf_counter()
    x = dm.data.numpy().astype(np.float64)
    prob = GaussianMixture(3, covariance_type="full", random_state=cell["seed"], n_init=3).fit(x).predict_proba(x)
    physical = dm.scaler.inverse_transform(dm.data.numpy())
    group = choose_cluster_group(prob, physical, dm.feature_names)
    member_prob = prob[:, group]
    row.seconds = time.perf_counter() - start
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask].astype(str) == "cluster"
    _scores(row, member_prob, truth)
    catalog = dm.table.iloc[dm.usable_rows()].reset_index(drop=True)
    summary = cluster_summary(pd.DataFrame({"label": prob.argmax(1), "member_prob": member_prob}), catalog, None, group)
    _pm(row, summary, truth_pm)
    _plausibility(row, member_prob, dm)
    _found(row, summary)
    return row


def run_cell(cell: dict[str, Any], methods: Sequence[str], args: argparse.Namespace) -> list[Row]:
    """Every method on one cell (one data module shared by all)."""
    from grasp_dl.jobs.train import build_datamodule

    with tempfile.TemporaryDirectory() as tmp:
        dm = build_datamodule(compose("default", cell, args, tmp))
    truth_pm = np.asarray(dm.simulate["cluster"]["pm_mean"], dtype=float)
    oracle = oracle_pm_error(dm, truth_pm)
    rows = []
    for method in methods:
        try:
            if method == "gmm":
                row = run_gmm(cell, dm, truth_pm)
            elif method == "xd" and not has_model_xd():
                row = run_xd_direct(cell, dm, truth_pm)
            else:
                row = run_product(method, cell, dm, truth_pm, args)
        except Exception as exc:  # noqa: BLE001 - one failing method must not lose the grid
            row = Row(cell_name(cell), method, **cell, error=f"{type(exc).__name__}: {exc}")
        row.oracle_pm_error = oracle
        rows.append(row)
        print(
            f"[{row.cell}] {method}: F1 {row.f1:.3f} P {row.precision:.3f} R {row.recall:.3f} "
            f"dPM {row.pm_error:.3f} (se {row.pm_se:.3f}, true members {oracle:.3f}) found {row.cluster_found} ({row.seconds:.0f} s)"
            + (f" start F1 {row.start_f1:.3f} agreement {row.agreement}" if row.start_f1 is not None else "")
            + (f" {row.anchor_action}" if row.anchor_action and row.anchor_action != "none" else "")
            + (f" [{row.extra['setting']}]" if row.extra.get("setting") else "")
            + (f" ERROR {row.error}" if row.error else ""),
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------- reporting
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def cell_table(rows: Sequence[Row], methods: Sequence[str]) -> str:
    """Markdown: one line per cell, F1 / dPM / found per method."""
    header = ["cell"] + [f"{m} {s}" for m in methods for s in ("F1", "P", "R", "dPM", "found")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    by_cell: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_cell.setdefault(r.cell, {})[r.method] = r
    for cell, got in by_cell.items():
        cells = [cell]
        for m in methods:
            r = got.get(m)
            cells += (
                ["-"] * 5
                if r is None
                else [_fmt(r.f1), _fmt(r.precision), _fmt(r.recall), _fmt(r.pm_error), _fmt(r.cluster_found)]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def names_field(r: Row) -> bool:
    """The run names a group that fails the plausibility check and does not say "no cluster".

    Until the product's summary carries ``cluster_found`` (the guards), nothing says "no
    cluster": every implausible named group with members counts.
    """
    if r.n_members == 0 or r.plausible is not False:
        return False
    return r.found_source != "summary" or r.cluster_found is not False


def summary_table(rows: Sequence[Row], methods: Sequence[str]) -> str:
    """Markdown: per method, median / min F1, median dPM, median / max calibration error of member_prob
    (ECE, 15 bins, against the truth), cells naming the field, failures."""
    header = [
        "method",
        "cells",
        "median F1",
        "min F1",
        "median dPM",
        "median ECE",
        "max ECE",
        "field named",
        "cluster_found false (summary)",
        "errors",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in methods:
        got = [r for r in rows if r.method == m]
        ok = [r for r in got if not r.error]
        f1 = [r.f1 for r in ok]
        dpm = [r.pm_error for r in ok if not math.isnan(r.pm_error)]
        ece = [r.ece for r in ok if not math.isnan(r.ece)]
        lines.append(
            "| "
            + " | ".join(
                [
                    m,
                    str(len(got)),
                    _fmt(statistics.median(f1)) if f1 else "-",
                    _fmt(min(f1)) if f1 else "-",
                    _fmt(statistics.median(dpm)) if dpm else "-",
                    _fmt(statistics.median(ece)) if ece else "-",
                    _fmt(max(ece)) if ece else "-",
                    str(sum(names_field(r) for r in ok)),
                    str(sum(r.cluster_found is False and r.found_source == "summary" for r in ok)),
                    str(len(got) - len(ok)),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def reference_xd(got: dict[str, Row]) -> Row | None:
    """The cell's ``xd`` row, or the default's where the default trained model=xd (it is then the same model)."""
    if "xd" in got:
        return got["xd"]
    default = got.get("default")
    if default is not None and default.extra.get("setting", "").endswith("xd"):
        return default
    return None


def target_checks(rows: Sequence[Row]) -> list[str]:
    """The issue's targets, each as a line: met or not, and the cells that miss it."""
    by_cell: dict[str, dict[str, Row]] = {}
    for r in rows:
        if not r.error:
            by_cell.setdefault(r.cell, {})[r.method] = r
    out = []
    default = [r.f1 for r in rows if r.method == "default" and not r.error]
    if default:
        med = statistics.median(default)
        out.append(f"- default median F1 >= 0.90: {'met' if med >= 0.9 else 'NOT met'} ({med:.3f})")
    misses = []
    for cell, got in by_cell.items():
        xd = reference_xd(got)
        if xd is None or xd.f1 < 0.6:
            continue
        for m in ("vade_hard", "dec_hard", "default", "vade_hard_noanchor", "dec_hard_noanchor"):
            if m in got and got[m] is not xd and got[m].f1 < xd.f1 - 0.05:
                misses.append(f"{cell} {m} {got[m].f1:.2f} < xd {xd.f1:.2f} - 0.05")
    out.append(
        f"- deep models within 0.05 of xd where xd F1 >= 0.6: {len(misses)} miss(es)"
        + "".join(f"\n  - {x}" for x in misses)
    )
    field = [f"{r.cell} {r.method}" for r in rows if not r.error and names_field(r)]
    out.append(
        f"- no cell names the field: {len(field)} (cell, method) name(s) it" + "".join(f"\n  - {x}" for x in field)
    )
    hard = []
    for cell, got in by_cell.items():
        if got and max(r.f1 for r in got.values()) < 0.3:
            for r in got.values():
                said_none = r.cluster_found is False and r.found_source == "summary"
                if not said_none and not (r.pm_error < 0.3):
                    hard.append(f"{cell} {r.method} (dPM {r.pm_error:.2f})")
    out.append(
        f"- cells where no method reaches F1 0.3 report no cluster or dPM < 0.3: {len(hard)} miss(es)"
        + "".join(f"\n  - {x}" for x in hard)
    )
    pm = [
        f"{r.cell} {r.method} dPM {r.pm_error:.3f} (its standard error {r.pm_se:.3f}; the true members' own "
        f"mean is {r.oracle_pm_error:.3f} off)"
        for r in rows
        if not r.error and r.f1 >= 0.6 and not r.pm_error < PM_TARGET
    ]
    out.append(f"- dPM < 0.1 mas/yr where F1 >= 0.6: {len(pm)} miss(es)" + "".join(f"\n  - {x}" for x in pm))
    floor = [r for r in rows if not r.error and r.f1 >= 0.6 and r.oracle_pm_error >= 0.1]
    if floor:
        out.append(
            f"  ({len({r.cell for r in floor})} cell(s) where even the true members' mean is 0.1 mas/yr or more "
            "off: the sampling floor)"
        )
    return out


def replicate_table(rows: Sequence[Row], methods: Sequence[str]) -> str:
    """Markdown: per cell family and method, dPM over its realisations against the true members' floor.

    Each family is one cell of the grid simulated with several seeds. ``over`` is the share of
    realisations whose dPM is PM_TARGET or more; ``floor`` columns are the same estimator given
    the true members (no membership does better on average); ``rms z`` is the root mean square of
    dPM / the summary's standard error, about 1 when the reported uncertainty is honest.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if not r.error:
            groups.setdefault((cell_family(r), r.method), []).append(r)
    lines = [
        "| cell (all seeds) | method | runs | mean F1 | min F1 | mean dPM | max dPM | dPM >= 0.1 | "
        "floor mean dPM | floor dPM >= 0.1 | rms z |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family in dict.fromkeys(cell_family(r) for r in rows):
        for method in methods:
            got = groups.get((family, method), [])
            if len(got) < 2:
                continue
            dpm = np.array([r.pm_error for r in got])
            floor = np.array([r.oracle_pm_error for r in got])
            z = dpm / np.array([r.pm_se for r in got])
            lines.append(
                f"| {family} | {method} | {len(got)} | {np.mean([r.f1 for r in got]):.3f} | "
                f"{min(r.f1 for r in got):.3f} | {np.nanmean(dpm):.3f} | {np.nanmax(dpm):.3f} | "
                f"{np.mean(dpm >= PM_TARGET):.0%} | {np.nanmean(floor):.3f} | {np.mean(floor >= PM_TARGET):.0%} | "
                f"{math.sqrt(np.nanmean(z**2)):.2f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def anchor_table(rows: Sequence[Row]) -> str:
    """Markdown: hard-field VaDE / DEC with and without the anchor, start F1 against end F1, per cell."""
    pairs = [("vade_hard", "vade_hard_noanchor"), ("dec_hard", "dec_hard_noanchor")]
    by = {(r.cell, r.method): r for r in rows if not r.error}
    lines = [
        "| cell | model | start F1 | end F1 without anchor | end F1 with anchor | anchor action |",
        "|---|---|---:|---:|---:|---|",
    ]
    for cell in dict.fromkeys(r.cell for r in rows):
        for with_, without in pairs:
            a, b = by.get((cell, with_)), by.get((cell, without))
            if a is None or b is None:
                continue
            lines.append(
                f"| {cell} | {with_} | {_fmt(a.start_f1)} | {_fmt(b.f1)} | {_fmt(a.f1)} | {a.anchor_action or 'none'} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def write_csv(rows: Sequence[Row], path: str) -> None:
    """Every row, one line per (cell, method)."""
    records = [asdict(r) for r in rows]
    for rec in records:
        rec["extra"] = repr(rec["extra"])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--full", action="store_true", help="the whole factorial (360 cells)")
    ap.add_argument("--cells", nargs="+", default=None, help="cell names or factor=v1,v2 filters")
    ap.add_argument("--sample", type=int, default=4, help="random cells added to the default design")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *EXTRA_METHODS])
    ap.add_argument("--ae-epochs", type=int, default=10, help="autoencoder epochs of the deep models")
    ap.add_argument("--epochs", type=int, default=10, help="clustering epochs of the deep models")
    ap.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every product run")
    ap.add_argument("--csv", default="robustness.csv", help="write every row here ('' for none)")
    ap.add_argument(
        "--replicates",
        type=int,
        default=0,
        help=f"run each chosen cell on this many further realisations (seeds {REPLICATE_SEED}, ...) and "
        "tabulate dPM over them against the true members' floor",
    )
    ap.add_argument("--list", action="store_true", help="print the chosen cells and stop")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the chosen cells and print the tables."""
    args = parse_args(argv)
    cells = full_grid() if args.full else select_cells(args.cells) if args.cells else default_design(args.sample)
    cells = replicate_cells(cells, args.replicates)
    if args.list:
        print("\n".join(cell_name(c) for c in cells))
        return []
    quiet()
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    rows: list[Row] = []
    for cell in cells:
        rows.extend(run_cell(cell, args.methods, args))
        if args.csv:
            write_csv(rows, args.csv)  # as it goes: an interrupted run keeps its cells
    wall = time.perf_counter() - start
    print(
        f"\nMember F1, precision, recall (member_prob > 0.5 on the scored stars), dPM = |mean PM - truth| "
        f"(mas/yr) and cluster_found per cell ({len(cells)} cells):\n"
    )
    print(cell_table(rows, args.methods))
    print("\nSummary per method:\n")
    print(summary_table(rows, args.methods))
    anchors = anchor_table(rows)
    if anchors:
        print("\nThe start anchor: hard-field models without and with it:\n")
        print(anchors)
    replicates = replicate_table(rows, args.methods) if args.replicates else ""
    if replicates:
        print("\nRealisations of each cell: dPM against the true members' floor (rms z: dPM / its standard error):\n")
        print(replicates)
    print("\nThe issue's targets:\n")
    print("\n".join(target_checks(rows)))
    print(f"\ncommand: {command}\nwall time: {wall:.0f} s")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"rows written to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
