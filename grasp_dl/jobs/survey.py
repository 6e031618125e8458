"""``grasp-dl survey``: train and predict on many clusters at once, one row of results per cluster.

The clusters are the cones of a directory (``survey.cones``, each file named as its cluster) or a
list of names (``survey.names``, cones fetched into the cache by :mod:`grasp_dl.jobs.fetch`).
:func:`multirun_overrides` makes a Hydra multirun over the unfinished clusters, so any Hydra
launcher runs them (joblib by default, Ray or SLURM across machines). Each job
(:func:`survey_task`) trains and predicts in one process and writes its row, a failure included,
to ``<survey.dir>/results/<cluster>.json``: one bad cone never stops the survey.
:class:`MergeSurvey` then merges the rows into ``survey.csv`` and draws ``survey_pm.png``.

This module imports no torch at import time: the launching process only lists and merges.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from grasp_dl.membership.summary import MEAN_COLUMNS, ClusterSummary
from grasp_dl.runtime.errors import CatalogError, ConfigError

log = logging.getLogger(__name__)

#: Catalogue files a cone directory may hold (``NAME.ref.csv``, a published membership, is not a cone).
CONE_SUFFIXES = (".csv", ".parquet", ".fits", ".ecsv", ".vot", ".xml")
#: The columns of the results table, in order.
COLUMNS = (
    "name",
    "table_name",
    "stars",
    "scored",
    "members",
    "mean_pmra",
    "mean_pmra_error",
    "mean_pmdec",
    "mean_pmdec_error",
    "mean_parallax",
    "mean_parallax_error",
    "pm_dispersion",
    "cluster_found",
    "reason",
    "published_pmra",
    "published_pmra_error",
    "published_pmdec",
    "published_pmdec_error",
    "published_parallax",
    "published_parallax_error",
    "delta_pmra_sigma",
    "delta_pmdec_sigma",
    "pm_offset",
    "pm_offset_sigma",
    "delta_parallax_sigma",
    "literature_warning",
    "setting",
    "seconds",
    "error",
    "catalog",
)
TABLE = "survey.csv"
FIGURE = "survey_pm.png"


# ----------------------------------------------------------------------------- what to run
def _cone_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise ConfigError(f"survey.cones={str(directory)!r} is not a directory of cones")
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in CONE_SUFFIXES and not path.name.lower().endswith(".ref.csv"):
            files.setdefault(path.stem, path)
    if not files:
        raise ConfigError(f"survey.cones={str(directory)!r} holds no cone ({', '.join(CONE_SUFFIXES)})")
    return files


def survey_targets(survey: DictConfig | dict[str, Any]) -> dict[str, Path | None]:
    """The clusters of a survey: job name -> its cone file, or None where the cone is to be fetched.

    Parameters
    ----------
    survey : DictConfig
        The ``survey`` node: ``cones`` (a directory) or ``names`` (a list).

    Returns
    -------
    dict
        In the directory's (or the list's) order.

    Raises
    ------
    ConfigError
        When neither or both are given, or the directory holds no cone.
    CatalogError
        For a name not in the published table.
    """
    cones, names = survey.get("cones"), survey.get("names")
    if bool(cones) == bool(names):
        which = "not both" if cones else "one of them"
        raise ConfigError(f"give survey.cones=DIR (a directory of NAME.csv cones) or survey.names=[NAME,...], {which}")
    if cones:
        return dict(_cone_files(Path(str(cones)).expanduser()))
    from grasp_dl.data.clusters import resolve_cluster_name

    names = [names] if isinstance(names, str) else list(names)
    return {resolve_cluster_name(str(n)): None for n in names}


def result_path(survey_dir: str | os.PathLike[str], name: str) -> Path:
    """The per-cluster result file, ``<survey_dir>/results/<name>.json``."""
    return Path(survey_dir) / "results" / f"{name}.json"


def read_result(survey_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """A cluster's stored row, None when it has none (or an unreadable one)."""
    try:
        return json.loads(result_path(survey_dir, name).read_text())
    except (OSError, ValueError):
        return None


def is_finished(survey_dir: str | os.PathLike[str], name: str, retry_failed: bool = True) -> bool:
    """Whether a rerun skips this cluster: it has a row (without an error, when ``retry_failed``)."""
    row = read_result(survey_dir, name)
    return row is not None and not (retry_failed and row.get("error"))


def _sweep_value(name: str) -> str:
    """A name as one element of a Hydra sweep (quoted unless plain)."""
    if re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        return name
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose_survey(overrides: list[str]) -> DictConfig:
    """The ``survey`` config composed with the command line's overrides (outside a Hydra app).

    Hydra's config-group choices (``hydra/launcher=basic``) are kept: they decide which launcher
    config is loaded, and the default one (joblib's) does not load without its plugin. Its
    settings (``hydra.launcher.n_jobs=4``) do not change the survey's own node and are left out.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from grasp_dl.runtime.config import conf_dir

    plain = [o for o in overrides if not o.startswith("-") and "hydra." not in o]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("survey", overrides=plain)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(str(error).splitlines()[0]) from error


def _cone_size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def fetch_missing(names: list[str], cache_dir: str | None) -> None:
    """Fetch the cones of a survey of names that are not cached yet, here, before any job starts.

    One process queries the archive (it limits concurrent jobs) and writes the cache, which the
    jobs then read, on this machine or any that shares the cache. An archive that cannot be
    reached stops the survey with its one-line error; any other failure of one cluster is left
    to its job, which records it in its row.

    Raises
    ------
    ArchiveUnreachableError
        When a cone is missing and the archive cannot be reached.
    """
    from grasp_dl.jobs.fetch import ArchiveUnreachableError, cache_path, fetch_cluster

    for name in names:
        if cache_path(name, cache_dir).is_file():
            continue
        try:
            path = fetch_cluster(name, cache_dir)
        except ArchiveUnreachableError:
            raise
        except Exception as error:  # this cluster's job tries again and records the error
            print(f"survey: fetching {name} failed ({_one_line(error)})")
        else:
            print(f"survey: fetched {name} into {path}")


def multirun_overrides(overrides: list[str]) -> list[str] | None:
    """The command line of the survey's multirun: ``--multirun cluster=A,B,...`` over the unfinished clusters.

    Parameters
    ----------
    overrides : list of str
        ``grasp-dl survey``'s overrides.

    Returns
    -------
    list of str or None
        None when every cluster is finished (the table is merged and printed here then).
    """
    if any(
        o in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion") for o in overrides
    ):
        return overrides  # Hydra's help or the composed config: nothing to run
    if not any(o.startswith("hydra/launcher=") for o in overrides):
        from grasp_dl.runtime.optional import import_optional

        import_optional("hydra_plugins.hydra_joblib_launcher", "grasp-dl survey (its default launcher, joblib)")
    cfg = compose_survey(overrides)
    targets = survey_targets(cfg.survey)
    todo = [n for n in targets if not is_finished(cfg.survey.dir, n, bool(cfg.survey.retry_failed))]
    skipped = len(targets) - len(todo)
    if skipped:
        print(f"survey: {skipped} of {len(targets)} clusters already finished in {cfg.survey.dir} (skipped)")
    if not todo:
        report(merge_results(cfg.survey.dir, list(targets)), cfg.survey.dir)
        return None
    if cfg.survey.get("names"):
        from grasp_dl.jobs.fetch import cache_path

        fetch_missing(todo, cfg.survey.get("cache_dir"))
        targets = {n: cache_path(n, cfg.survey.get("cache_dir")) for n in targets}
    # the largest cones first: the last jobs to start are short, so the workers finish together
    todo.sort(key=lambda n: -_cone_size(targets[n]))
    rest = [o for o in overrides if o not in ("-m", "--multirun")]
    # the jobs may run elsewhere (Ray, SLURM): the survey's paths are made absolute here
    for key in ("dir", "cones", "cache_dir"):
        value = cfg.survey.get(key)
        if value and not Path(str(value)).expanduser().is_absolute():
            rest = [o for o in rest if not o.startswith(f"survey.{key}=")]
            rest.append(f"survey.{key}={_sweep_value(str(Path(str(value)).expanduser().resolve()))}")
    return ["--multirun", *rest, f"cluster={','.join(_sweep_value(n) for n in todo)}"]


def register_sweeper() -> None:
    """Register the survey's sweeper (``hydra/sweeper=survey``) with Hydra by hand.

    Hydra finds plugins by walking the ``hydra_plugins`` namespace package's folders; an editable
    install serves ``hydra_plugins.grasp_dl_survey`` through an import hook, which that walk does
    not see, and the survey would stop with "Unknown plugin class".
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.grasp_dl_survey import SurveySweeper

    Plugins.instance().register(SurveySweeper)


# ----------------------------------------------------------------------------- one cluster
def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def cone_path(cfg: DictConfig, name: str) -> Path:
    """The cone of a cluster: its file in ``survey.cones``, else the fetch cache (queried when not cached)."""
    if cfg.survey.get("cones"):
        files = _cone_files(Path(str(cfg.survey.cones)).expanduser())
        if name not in files:
            raise CatalogError(f"no cone named {name!r} in {cfg.survey.cones}")
        return files[name]
    from grasp_dl.jobs.fetch import fetch_cluster

    return fetch_cluster(name, cfg.survey.get("cache_dir"))


def _table_name(name: str) -> str | None:
    from grasp_dl.data.clusters import resolve_cluster_name

    try:
        return resolve_cluster_name(name)
    except CatalogError:
        return None


def _dispersion(summary: ClusterSummary) -> float | None:
    """The cluster's intrinsic pm dispersion: the model's fitted one (e.g. ``xd_pm_dispersion``), else the members'."""
    fitted = [v for k, v in summary.model_astrometry.items() if k.endswith("_pm_dispersion") and _finite(v) is not None]
    if fitted:
        return _finite(fitted[0])
    return _finite((summary.diagnostics or {}).get("member_pm_dispersion"))


def summary_row(name: str, table_name: str | None, summary: ClusterSummary) -> dict[str, Any]:
    """A results row from a prediction summary (:func:`grasp_dl.inference.predict.predict_to_file`)."""
    lit = summary.literature or {}
    pub = lit.get("published") or {}
    means = {}
    for column in MEAN_COLUMNS:
        means[f"mean_{column}"] = _finite(summary.mean(column))
        means[f"mean_{column}_error"] = _finite(summary.mean_error(column))
    return {
        "name": name,
        "table_name": table_name,
        "stars": summary.n_rows,
        "scored": summary.n_scored,
        "members": summary.n_members,
        **{key: means.get(key) for key in COLUMNS if key.startswith("mean_")},
        "pm_dispersion": _dispersion(summary),
        "cluster_found": summary.cluster_found,
        "reason": summary.cluster_reason,
        "published_pmra": pub.get("pmra"),
        "published_pmra_error": pub.get("pmra_error"),
        "published_pmdec": pub.get("pmdec"),
        "published_pmdec_error": pub.get("pmdec_error"),
        "published_parallax": pub.get("parallax"),
        "published_parallax_error": pub.get("parallax_error"),
        **{
            key: _finite(lit.get(key))
            for key in ("delta_pmra_sigma", "delta_pmdec_sigma", "pm_offset", "pm_offset_sigma", "delta_parallax_sigma")
        },
        "literature_warning": summary.literature_warning,
    }


def run_cluster(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Train on one cluster's cone and predict it with the trained module, in this process.

    The train config is ``cfg`` itself (the survey config extends ``train``), with the cone as
    ``data.path`` and the cluster, when the published table has it, as ``data.cluster``: its
    published centre and the comparison with its published astrometry.

    Parameters
    ----------
    cfg : DictConfig
        The survey job's config (a train config with a ``survey`` node).
    name : str
        The cluster (a cone's file name or a table name).

    Returns
    -------
    dict
        The results row (:data:`COLUMNS`, less ``seconds`` and ``error``).
    """
    from grasp_dl.inference.predict import predict_to_file
    from grasp_dl.jobs import train as pipeline
    from grasp_dl.runtime.io_policy import prepare_run_dir

    path = cone_path(cfg, name)
    table_name = _table_name(name)
    job = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(job):
        job.data.path = str(path)
        job.data.cluster = table_name
        job.data.simulate = None
    # the job's config has its hydra node stripped: the run directory is resolved here
    output_dir = Path(cfg.paths.output_dir)
    with open_dict(job):
        job.paths.output_dir = str(output_dir)
    prepare_run_dir(output_dir, overwrite=True)
    result = pipeline.train(job, score_clusters=False)
    module = result.module
    module.eval()
    figure = output_dir / "predictions.png" if cfg.survey.get("cluster_figures") else None
    summary = predict_to_file(
        module,
        str(path),
        output_dir / "predictions.parquet",
        cluster=table_name,
        center=cfg.data.get("center"),
        figure=figure,
    )
    row = summary_row(name, table_name, summary)
    row["setting"] = result.setting
    row["catalog"] = str(path)
    (output_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
    return row


def _write_row(survey_dir: str | os.PathLike[str], row: dict[str, Any]) -> Path:
    path = result_path(survey_dir, row["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(row, indent=1, default=str))
    partial.replace(path)
    return path


def survey_task(cfg: DictConfig) -> dict[str, Any]:
    """One job of the survey's multirun: the cluster ``cfg.cluster``, its row written whatever happens.

    A cluster already finished (its row stored without error) is not run again. Any exception
    becomes the row's ``error`` (its type and first line); the job itself does not fail.

    Parameters
    ----------
    cfg : DictConfig
        The survey config of this job.

    Returns
    -------
    dict
        The row.
    """
    name = str(cfg.cluster)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # its GPU/TPU lines, once per cluster
    # Lightning's notes on a model fitted without an optimiser (model=xd), once per cluster otherwise
    warnings.filterwarnings("ignore", message=r".*configure_optimizers.*returned `None`")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    survey_dir = cfg.survey.dir
    if is_finished(survey_dir, name, bool(cfg.survey.retry_failed)):
        return read_result(survey_dir, name) or {}
    start = time.perf_counter()
    try:
        row = run_cluster(cfg, name)
        row["error"] = None
    except Exception as error:  # a failed cluster is a row, never a stopped survey
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            log.exception("%s failed", name)
        row = {"name": name, "table_name": _table_name(name), "error": _one_line(error)}
    row["seconds"] = round(time.perf_counter() - start, 2)
    row = {key: row.get(key) for key in COLUMNS}
    _write_row(survey_dir, row)
    status = row["error"] or f"{row['members']} members, cluster_found={row['cluster_found']}"
    log.info("survey: %s: %s (%.1f s)", name, status, row["seconds"])
    return row


# ----------------------------------------------------------------------------- the table and the figure
def merge_results(survey_dir: str | os.PathLike[str], names: list[str] | None = None) -> pd.DataFrame:
    """Merge the per-cluster rows into ``<survey_dir>/survey.csv`` (and draw ``survey_pm.png``).

    Parameters
    ----------
    survey_dir : path
        The survey's directory.
    names : list of str, optional
        The clusters of the table, in order; default every stored row, by name. A cluster
        without a row gets one saying so.

    Returns
    -------
    pandas.DataFrame
        One row per cluster, :data:`COLUMNS`.
    """
    survey_dir = Path(survey_dir)
    if names is None:
        names = sorted(p.stem for p in (survey_dir / "results").glob("*.json"))
    rows = []
    for name in names:
        row = read_result(survey_dir, name) or {"name": name, "error": "not run (no result file)"}
        rows.append({key: row.get(key) for key in COLUMNS})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("stars", "scored", "members"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    survey_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(survey_dir / TABLE, index=False)
    plot_survey(table, survey_dir / FIGURE)
    return table


def plot_survey(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path | None:
    """Recovered mean proper motions against the published ones (Vasiliev & Baumgardt 2021), with error bars.

    Above, pmra and pmdec on the 1:1 line; below, the difference with the errors added in quadrature
    (a cluster's errors are too small to be seen above). Clusters whose group is no cluster are open symbols.

    Parameters
    ----------
    table : pandas.DataFrame
        The results table (:func:`merge_results`).
    path : path
        The PNG to write.

    Returns
    -------
    pathlib.Path or None
        None when no row has both values.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    numeric = table.apply(pd.to_numeric, errors="coerce")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True, height_ratios=(3, 2))
    drawn = False
    found_all = table["cluster_found"].fillna(False).astype(bool)
    for column, axis in enumerate(("pmra", "pmdec")):
        top, bottom = axes[0, column], axes[1, column]
        x, xerr = numeric[f"published_{axis}"], numeric[f"published_{axis}_error"].fillna(0)
        y, yerr = numeric[f"mean_{axis}"], numeric[f"mean_{axis}_error"].fillna(0)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        drawn = True
        # the errors (0.01-0.1 mas/yr) are seen in the lower panel: the difference and its combined error
        for mask, face, label in (
            (found_all & ok, "C0", "cluster found"),
            (ok & ~found_all, "none", "no cluster found"),
        ):
            if mask.any():
                style = dict(fmt="o", ms=4, mfc=face, mec="C0", ecolor="0.4", capsize=2, label=label)
                top.errorbar(x[mask], y[mask], xerr=xerr[mask], yerr=yerr[mask], **style)
                combined = np.sqrt(xerr[mask] ** 2 + yerr[mask] ** 2)
                bottom.errorbar(x[mask], (y - x)[mask], yerr=combined, **style)
        lo, hi = np.nanmin([x[ok].min(), y[ok].min()]), np.nanmax([x[ok].max(), y[ok].max()])
        pad = 0.05 * (hi - lo or 1.0)
        top.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        bottom.axhline(0.0, color="k", ls="--", lw=0.8)
        for xi, yi, dy, label in zip(x[ok], y[ok], (y - x)[ok], table.loc[ok, "name"], strict=True):
            top.annotate(str(label), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
            bottom.annotate(str(label), (xi, dy), fontsize=6, xytext=(3, 3), textcoords="offset points")
        top.set_ylabel(f"recovered mean {axis} (mas/yr)")
        bottom.set_xlabel(f"published mean {axis} (mas/yr, Vasiliev & Baumgardt 2021)")
        bottom.set_ylabel(f"recovered - published {axis} (mas/yr)")
        top.legend(loc="upper left", fontsize=8)
    if drawn:
        n = int((~table["error"].fillna("").astype(bool)).sum())
        fig.suptitle(f"grasp-dl survey: {n} of {len(table)} clusters ran")
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path) if drawn else None


def _count(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)


def _number(value: Any, width: int = 7, digits: int = 3) -> str:
    value = _finite(value)
    return f"{'-':>{width}s}" if value is None else f"{value:{width}.{digits}f}"


def report(table: pd.DataFrame, survey_dir: str | os.PathLike[str]) -> None:
    """Print the survey's one-line-per-cluster summary and where the table and figure are."""
    for row in table.itertuples(index=False):
        if isinstance(row.error, str) and row.error:
            print(f"  {row.name:22s} error: {row.error}")
            continue
        print(
            f"  {row.name:22s} {_count(row.stars):7d} stars {_count(row.members):6d} members  pm "
            f"({_number(row.mean_pmra)}, {_number(row.mean_pmdec)})  vs published {_number(row.pm_offset_sigma, 5, 1)} "
            f"sigma  found={row.cluster_found}  {_number(row.seconds, 5, 1)} s"
        )
    failed = int(table["error"].fillna("").astype(bool).sum())
    print(f"survey: {len(table)} clusters, {failed} failed; table: {Path(survey_dir) / TABLE}")
    if (Path(survey_dir) / FIGURE).is_file():
        print(f"figure: {Path(survey_dir) / FIGURE}")


class MergeSurvey(Callback):
    """Hydra callback of the survey: when the multirun ends, merge the rows into the table and draw the figure."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Merge every cluster of the survey (finished in this run or an earlier one)."""
        try:
            names = list(survey_targets(config.survey))
        except Exception:  # the listing worked when the sweep began; keep whatever rows exist
            names = None
        report(merge_results(config.survey.dir, names), config.survey.dir)
