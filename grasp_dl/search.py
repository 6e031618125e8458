"""In-process hyper-parameter search: the seed's ``optimize_hyperparameters`` on the real pipeline."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from grasp_dl.config import conf_dir
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.errors import ConfigError
from grasp_dl.metrics import HIGHER_IS_BETTER

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """The best parameters, their score, and one row per trial."""

    best_params: dict[str, Any]
    best_value: float
    trials: pd.DataFrame


def _datamodule(data: Any, overrides: Sequence[str], output_dir: Path) -> StellarCatalogDataModule:
    """One prepared catalogue shared by every trial (a path, a table, or a simulated field name)."""
    from grasp_dl.data.simulate import SIMULATED_FIELDS
    from grasp_dl.pipeline import build_datamodule

    if isinstance(data, str) and data in SIMULATED_FIELDS:
        return build_datamodule(_compose([f"data={data}", *overrides], output_dir))
    if isinstance(data, (str, Path)):
        return build_datamodule(_compose(["data=catalog", f"data.path={data}", *overrides], output_dir))
    return build_datamodule(_compose(["data=catalog", *overrides], output_dir), catalog=data)


def _compose(overrides: list[str], output_dir: Path):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def optimize_hyperparameters(
    data: Any,
    n_clusters_range: Sequence[int] = (2, 3, 4, 5),
    latent_dims: Sequence[int] = (4, 8, 16),
    hidden_dims_options: Sequence[Sequence[int]] = ((32, 16), (64, 32, 16)),
    *,
    n_trials: int | None = None,
    metric: str = "clustering/silhouette",
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    seed: int = 0,
) -> SearchResult:
    """Search the number of groups and the network with Optuna, training the real pipeline per trial.

    ``data``: a catalogue path, a table, or a simulated field name ('m4', ...). Every trial of the
    grid (``n_trials=None``) or ``n_trials`` TPE trials trains the configured model (overrides such
    as ``'model=idec'``, ``'trainer.max_epochs=10'`` apply to all trials) and is scored by
    ``metric``, a score that needs no truth (see :func:`grasp_dl.pipeline.clustering_scores`).
    """
    import optuna

    from grasp_dl import pipeline

    if metric.split("/")[-1] not in HIGHER_IS_BETTER:
        raise ConfigError(f"metric {metric!r} has no known direction: use e.g. clustering/silhouette")
    direction = "maximize" if HIGHER_IS_BETTER[metric.split("/")[-1]] else "minimize"
    hidden_options = [list(h) for h in hidden_dims_options]
    space = {
        "n_clusters": list(n_clusters_range),
        "latent_dim": list(latent_dims),
        "hidden_dims": list(range(len(hidden_options))),
    }
    if n_trials is None:
        sampler = optuna.samplers.GridSampler(space)
        n_trials = len(list(itertools.product(*space.values())))
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    root = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="grasp_dl_search_"))
    datamodule = _datamodule(data, overrides, root)
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
        hidden = hidden_options[params["hidden_dims"]]
        trial_overrides = [
            *overrides,
            f"model.n_clusters={params['n_clusters']}",
            f"model.pretrain.latent_dim={params['latent_dim']}",
            f"model.pretrain.hidden_dims=[{','.join(map(str, hidden))}]",
            f"seed={seed}",
        ]
        result = pipeline.train(_compose(trial_overrides, root / f"trial_{trial.number}"), datamodule=datamodule)
        value = result.metrics.get(metric, float("nan"))
        rows.append({"trial": trial.number, **params, "hidden_dims": hidden, metric: value,
                     "checkpoint": str(result.checkpoint)})
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    best = dict(study.best_params)
    best["hidden_dims"] = hidden_options[best["hidden_dims"]]
    return SearchResult(best_params=best, best_value=float(study.best_value), trials=pd.DataFrame(rows))
