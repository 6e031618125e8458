"""In-process hyper-parameter search: the seed's ``optimize_hyperparameters`` on the real pipeline.

The exhaustive grid over the given options needs nothing beyond the plain install; a budget of
``n_trials`` sampled by Optuna's TPE needs the ``[sweep]`` extra.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.metrics import HIGHER_IS_BETTER
from grasp_dl.runtime.config import conf_dir
from grasp_dl.runtime.errors import ConfigError
from grasp_dl.runtime.optional import import_optional

log = logging.getLogger(__name__)


@dataclass
class SearchResult(Mapping):
    """The best parameters, their score, and one row per trial.

    Reads as the dict of the best parameters too (``result["n_clusters"]``, ``dict(result)``),
    as the seed's ``best_params = optimize_hyperparameters(...)`` used it.

    Attributes
    ----------
    best_params : dict
        n_clusters, latent_dim and hidden_dims of the best trial.
    best_value : float
        Its score (the search's ``metric``).
    trials : pandas.DataFrame
        One row per trial: the parameters, the score and the checkpoint.
    sampler : str
        'grid' (every combination, no extra needed) or 'tpe' (Optuna, ``n_trials`` of them).
    """

    best_params: dict[str, Any]
    best_value: float
    trials: pd.DataFrame
    sampler: str = "grid"

    def __getitem__(self, key: str) -> Any:
        return self.best_params[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.best_params)

    def __len__(self) -> int:
        return len(self.best_params)


def _is_array(data: Any) -> bool:
    return isinstance(data, np.ndarray) or type(data).__module__.startswith("torch")


def _datamodule(data: Any, overrides: Sequence[str], output_dir: Path) -> StellarCatalogDataModule:
    """One prepared catalogue shared by every trial: a path, a table, a feature array or a simulated field name."""
    from grasp_dl.data.simulate import SIMULATED_FIELDS
    from grasp_dl.jobs.train import build_datamodule

    if isinstance(data, str) and data in SIMULATED_FIELDS:
        return build_datamodule(_compose([f"data={data}", *overrides], output_dir))
    if isinstance(data, (str, Path)):
        return build_datamodule(_compose(["data=catalog", f"data.path={data}", *overrides], output_dir))
    cfg = _compose(["data=catalog", *overrides], output_dir)
    options: dict[str, Any] = {}
    if _is_array(data):
        # A feature matrix (e.g. from prepare_stellar_data): its columns are the features, as they are.
        array = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
        if array.ndim != 2:
            raise ConfigError(f"a feature array must be 2-D (stars x features), got shape {array.shape}")
        names = [f"feature_{i}" for i in range(array.shape[1])]
        data = pd.DataFrame(array.astype(np.float64), columns=names)
        options.update(features=names, center=None)
    return build_datamodule(cfg, catalog=data, **options)


def _compose(overrides: list[str], output_dir: Path):
    # The search is over a deep model's network: DEC unless the overrides name another model.
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["model=dec", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _grid_search(
    space: dict[str, list[Any]], run: Callable[[int, dict[str, Any]], float], maximize: bool
) -> tuple[dict[str, Any], float]:
    """Every combination of ``space`` in order; the first best wins ties and NaN never wins."""
    best: tuple[dict[str, Any], float] | None = None
    for number, values in enumerate(itertools.product(*space.values())):
        params = dict(zip(space, values, strict=False))
        value = run(number, params)
        better = best is None or np.isnan(best[1]) or (value > best[1] if maximize else value < best[1])
        if best is None or (not np.isnan(value) and better):
            best = (params, value)
    assert best is not None
    return best


def _tpe_search(
    space: dict[str, list[Any]], run: Callable[[int, dict[str, Any]], float], maximize: bool, n_trials: int, seed: int
) -> tuple[dict[str, Any], float]:
    """``n_trials`` combinations sampled by Optuna's TPE (the ``[sweep]`` extra)."""
    optuna = import_optional("optuna", "optimize_hyperparameters(n_trials=...) (Optuna's TPE sampler)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize", sampler=optuna.samplers.TPESampler(seed=seed)
    )

    def objective(trial: Any) -> float:
        params = {name: trial.suggest_categorical(name, choices) for name, choices in space.items()}
        return run(trial.number, params)

    study.optimize(objective, n_trials=n_trials)
    return dict(study.best_params), float(study.best_value)


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
    """Search the number of groups and the network, training the real pipeline per trial.

    Parameters
    ----------
    data : Any
        A catalogue path, a table, a feature array (e.g. the one ``prepare_stellar_data``
        returns; its columns are used as they are) or a simulated field name ('m4', ...).
    n_clusters_range, latent_dims, hidden_dims_options : sequences
        The options of ``model.n_clusters``, ``model.pretrain.latent_dim`` and
        ``model.pretrain.hidden_dims``.
    n_trials : int, optional
        None (default): every combination, in order (no extra needed). A number: that many
        combinations sampled by Optuna's TPE, which needs ``pip install 'grasp-dl[sweep]'``.
    metric : str
        A score that needs no truth (see :func:`grasp_dl.jobs.train.clustering_scores`).
    overrides : sequence of str
        Hydra overrides for every trial, e.g. ``'model=idec'``, ``'trainer.max_epochs=10'`` (the
        searched model is DEC unless one is named here).
    output_dir : path, optional
        Where the trials' run directories go (a temporary folder by default).
    seed : int
        The training seed of every trial, and TPE's.

    Returns
    -------
    SearchResult
        ``best_params`` (also readable as a dict), ``best_value``, ``trials``.

    Raises
    ------
    ConfigError
        If ``metric`` has no known direction or an option list is empty.
    MissingDependencyError
        If ``n_trials`` is given and Optuna is not installed.
    """
    from grasp_dl.jobs import train as pipeline

    if metric.split("/")[-1] not in HIGHER_IS_BETTER:
        raise ConfigError(f"metric {metric!r} has no known direction: use e.g. clustering/silhouette")
    maximize = HIGHER_IS_BETTER[metric.split("/")[-1]]
    hidden_options = [list(h) for h in hidden_dims_options]
    space = {
        "n_clusters": list(n_clusters_range),
        "latent_dim": list(latent_dims),
        "hidden_dims": list(range(len(hidden_options))),
    }
    empty = [name for name, choices in space.items() if not choices]
    if empty:
        raise ConfigError(f"no options to search for {', '.join(empty)}: give at least one value each")
    if n_trials is not None:
        import_optional("optuna", "optimize_hyperparameters(n_trials=...) (Optuna's TPE sampler)")
    root = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="grasp_dl_search_"))
    datamodule = _datamodule(data, overrides, root)
    rows: list[dict[str, Any]] = []

    def run(number: int, params: dict[str, Any]) -> float:
        hidden = hidden_options[params["hidden_dims"]]
        trial_overrides = [
            *overrides,
            f"model.n_clusters={params['n_clusters']}",
            f"model.pretrain.latent_dim={params['latent_dim']}",
            f"model.pretrain.hidden_dims=[{','.join(map(str, hidden))}]",
            f"seed={seed}",
        ]
        result = pipeline.train(_compose(trial_overrides, root / f"trial_{number}"), datamodule=datamodule)
        value = float(result.metrics.get(metric, float("nan")))
        rows.append(
            {"trial": number, **params, "hidden_dims": hidden, metric: value, "checkpoint": str(result.checkpoint)}
        )
        return value

    if n_trials is None:
        best, value = _grid_search(space, run, maximize)
        sampler = "grid"
    else:
        best, value = _tpe_search(space, run, maximize, n_trials, seed)
        sampler = "tpe"
    best["hidden_dims"] = hidden_options[best["hidden_dims"]]
    return SearchResult(best_params=best, best_value=value, trials=pd.DataFrame(rows), sampler=sampler)
