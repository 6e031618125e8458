"""The command-line face: ``grasp-dl train|predict|evaluate`` as Hydra applications."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from grasp_dl.runtime.config import conf_dir
from grasp_dl.runtime.console import log_lines_once, quiet_frameworks, split_verbose
from grasp_dl.runtime.errors import ConfigError, GraspDLError
from grasp_dl.runtime.io_policy import check_run_dir_early, install_sigterm_cleanup, refuse_finished_run_dir_early
from grasp_dl.runtime.optional import check_cli_plugins
from grasp_dl.runtime.short_process import freeze_for_exit, heavy_imports, pause_collector, resume_collector
from grasp_dl.runtime.stage_timer import mark

log = logging.getLogger("grasp_dl")

USAGE = """usage: grasp-dl COMMAND [HYDRA OVERRIDES...]
       grasp-dl -v COMMAND [HYDRA OVERRIDES...]   (verbose: the frameworks' messages too)

commands:
  train      train on a catalogue (default: model=auto, the error-aware mixture xd, or DEC where the catalogue lacks
             error columns; on the bundled simulated M4-like field when no data is given)
             e.g. grasp-dl train data=catalog data.path=my_cone.csv trainer.max_epochs=20
  predict    per-star groups and membership probabilities from a trained checkpoint
             e.g. grasp-dl predict ckpt_path=RUN/checkpoints/last.ckpt data.path=my_cone.csv output=members.parquet
  evaluate   clustering and membership metrics of predictions against a known truth
             e.g. grasp-dl evaluate predictions=members.parquet truth=simulated_cone.csv
  survey     train and predict many clusters (a directory of NAME.csv cones, or names), one results table
             e.g. grasp-dl survey survey.cones=my_cones/ survey.dir=surveys/bulge
  fetch      a cluster's Gaia cone from the archive into the local cache, read offline by survey
             e.g. grasp-dl fetch NGC_6397 M4

Each command is a Hydra application: 'grasp-dl train --help' lists its config groups,
'grasp-dl train --cfg job' prints the composed config, '-m' runs a multirun sweep.
-v (or hydra.verbose=true) also shows Lightning's information lines and the warnings a run silences
(grasp_dl/runtime/console.py lists them).
"""


def _report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn expected failures (bad input, bad config values) into one readable line and exit 2."""

    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except (GraspDLError, HydraException, OmegaConfBaseException) as exc:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("error: %s", exc)
            _exit_with(exc)

    wrapped.__name__ = task.__name__
    wrapped.__module__ = task.__module__
    return wrapped


def _exit_with(exc: BaseException) -> None:
    """Print the one-line error and exit with status 2."""
    print(f"grasp-dl: error: {exc}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
    sys.exit(2)


def _with_verbosity(task: Callable[[DictConfig], Any], verbose: bool) -> Callable[[DictConfig], Any]:
    """Run the task quiet (see grasp_dl.runtime.console) unless -v or hydra.verbose asks for everything."""

    def wrapped(cfg: DictConfig) -> Any:
        with quiet_frameworks(verbose or bool(HydraConfig.get().verbose)):
            return task(cfg)

    wrapped.__name__ = task.__name__
    wrapped.__module__ = task.__module__
    return wrapped


def train_task(cfg: DictConfig) -> float | None:
    """grasp-dl train: run the phases of the configured model and print where the outputs are.

    Returns ``cfg.optimized_metric`` (a sweeper maximises or minimises it) when one is set.
    """
    mark("imports: torch, Lightning (grasp_dl.jobs.train)")
    with heavy_imports():
        from grasp_dl.jobs import train as pipeline
    from grasp_dl.runtime.io_policy import RunLock, prepare_run_dir

    log_lines_once()

    with RunLock(cfg.paths.output_dir, "hydra.run.dir", directory=True):
        prepare_run_dir(cfg.paths.output_dir, overwrite=bool(cfg.get("overwrite")), ckpt_path=cfg.get("ckpt_path"))
        metric = cfg.get("optimized_metric")
        # the clustering scores (a second of silhouette) are only seen through optimized_metric
        result = pipeline.train(cfg, score_clusters=bool(metric))
    mark("summary: end-of-run inference, cluster check, print")
    print(pipeline.summarise(result, cfg))
    mark("Hydra job end")
    if not metric:
        return None
    if metric not in result.metrics:
        raise ConfigError(f"optimized_metric={metric!r} was not computed; available: {sorted(result.metrics)}")
    return result.metrics[metric]


def predict_task(cfg: DictConfig) -> None:
    """grasp-dl predict: write the per-star table and the cluster summary, and say where."""
    with heavy_imports():
        from grasp_dl.inference.predict import predict_command
        from grasp_dl.membership.rules import MEMBER_THRESHOLD
    log_lines_once()

    summary, output, summary_path = predict_command(cfg)
    print(
        f"scored {summary.n_scored} of {summary.n_rows} stars; cluster (group {summary.cluster_group}): "
        f"{summary.n_members} members with member_prob > {MEMBER_THRESHOLD}, sum of member_prob {summary.sum_member_prob:.1f}"
    )
    unscored = summary.not_scored
    if unscored:
        print("not scored: " + "; ".join(f"{n} {flag}" for flag, n in unscored.items()))
    from grasp_dl.membership.guards import report_lines

    for line in report_lines(summary):
        print(line)
    print(f"predictions: {output}\nsummary: {summary_path}")
    if summary.figure:
        print(f"figure: {summary.figure}")


def evaluate_task(cfg: DictConfig) -> None:
    """grasp-dl evaluate: print the metrics table and where it was saved."""
    with heavy_imports():
        from grasp_dl.jobs.evaluate import evaluate_command
        from grasp_dl.metrics import format_metrics

    metrics, output = evaluate_command(cfg)
    print(format_metrics(metrics))
    print(f"metrics: {output}")


def survey_task(cfg: DictConfig) -> Any:
    """grasp-dl survey: one cluster of the survey's multirun (grasp_dl.jobs.survey)."""
    from grasp_dl.jobs.survey import survey_task as run

    return run(cfg)


def fetch_task(cfg: DictConfig) -> None:
    """grasp-dl fetch: each named cluster's cone into the cache, and where it is."""
    from grasp_dl.jobs.fetch import fetch_command

    for name, path, rows in fetch_command(cfg):
        print(f"{name}: {rows} stars in {path}")


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], Any]]] = {
    "train": ("train", train_task),
    "predict": ("predict", predict_task),
    "evaluate": ("evaluate", evaluate_task),
    "survey": ("survey", survey_task),
    "fetch": ("fetch", fetch_task),
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``grasp-dl`` console script."""
    verbose, args = split_verbose(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, overrides = args[0], args[1:]
    if command not in COMMANDS:
        print(f"grasp-dl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    config_name, task = COMMANDS[command]
    task = _with_verbosity(task, verbose)
    mark("CLI checks, Hydra: compose the config, run directory, logging")
    install_sigterm_cleanup()
    try:
        check_run_dir_early(overrides)
        if command == "train":
            refuse_finished_run_dir_early(overrides)
    except GraspDLError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _exit_with(exc)
    try:
        check_cli_plugins(overrides)
        if command in ("survey", "fetch"):
            from grasp_dl.jobs import fetch, survey

            overrides = (
                survey.multirun_overrides(overrides) if command == "survey" else fetch.fetch_overrides(overrides)
            )
            if overrides is None:  # every cluster of the survey was finished already
                return
            if command == "survey":
                survey.register_sweeper()
    except GraspDLError as exc:
        print(f"grasp-dl: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"grasp-dl-{command}", *overrides]
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)
    entry_point = argv is None  # this process runs one command and ends (see grasp_dl.runtime.short_process)
    if entry_point:
        pause_collector()  # until the command's modules are imported
    try:
        app(_report_errors(task))()
    finally:
        resume_collector()
    mark("process exit (interpreter teardown)")
    if entry_point:
        freeze_for_exit()


if __name__ == "__main__":
    main()
