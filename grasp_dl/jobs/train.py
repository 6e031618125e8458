"""The one place where training phases chain; the CLI and the notebook facade both call it."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from grasp_dl.data.datamodule import MIN_USEFUL_STARS, StellarCatalogDataModule
from grasp_dl.data.validation import check_trainable
from grasp_dl.engine.block_settings import block_trainer_options
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.base import ClusteringModule, checkpoint_class
from grasp_dl.models.networks import compile_network
from grasp_dl.runtime.capabilities import TakesPublishedCluster
from grasp_dl.runtime.checkpoints import AUTOENCODER, check_state_fits, load_module, read_checkpoint
from grasp_dl.runtime.errors import ConfigError, GraspDLError
from grasp_dl.runtime.io_policy import written_checkpoint
from grasp_dl.runtime.options import check_train_options
from grasp_dl.runtime.run_dir import AUTOENCODER_PHASE, RunDir, phase_dirpath
from grasp_dl.runtime.stage_timer import mark

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: the trained module, where its outputs are, final metrics."""

    module: L.LightningModule
    datamodule: StellarCatalogDataModule
    output_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    #: Which model setting was trained and why (the default's fallback says so).
    setting: str = ""
    #: Group probabilities of every usable star at the end of training (:func:`catalogue_probabilities`),
    #: computed once and reused by the scores and the summary; None until first needed.
    probabilities: torch.Tensor | None = None

    def catalogue_probabilities(self) -> torch.Tensor:
        """The trained module's group probabilities of every usable star, computed on first use only.

        Returns
        -------
        Tensor
            Shape (usable stars, n_clusters), in ``datamodule.data`` order.
        """
        if self.probabilities is None:
            self.probabilities = catalogue_probabilities(self.module, self.datamodule)
        return self.probabilities


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger mapping that has a ``_target_``."""
    if not group:
        return []
    return [hydra.utils.instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_datamodule(cfg: DictConfig, catalog: Any = None, **options: Any) -> StellarCatalogDataModule:
    """Instantiate and set up the data module of ``cfg.data`` (prepares the catalogue once).

    The one way a data module is built: by the command line, the notebook facade and the search.

    Parameters
    ----------
    cfg : DictConfig
        A composed ``train`` config.
    catalog : str, PathLike, DataFrame or Table, optional
        A catalogue replacing ``cfg.data``'s source (its ``path`` or ``simulate``): a file path
        or a table in memory.
    **options
        Other data options replacing those of ``cfg.data`` (e.g. ``features``, ``center``).

    Returns
    -------
    StellarCatalogDataModule
        The prepared data module.
    """
    datamodule = instantiate_datamodule(cfg, catalog, **options)
    datamodule.setup("fit")
    return datamodule


def instantiate_datamodule(cfg: DictConfig, catalog: Any = None, **options: Any) -> StellarCatalogDataModule:
    """The data module of ``cfg.data`` before its catalogue is read (see :func:`build_datamodule`)."""
    if catalog is not None:
        options.update({key: None for key in ("path", "simulate") if key in cfg.data})
        source = {"path": str(catalog)} if isinstance(catalog, (str, os.PathLike)) else {"catalog": catalog}
        factory = hydra.utils.instantiate(cfg.data, _partial_=True, _convert_="all", **options)
        return factory(**source)
    return hydra.utils.instantiate(cfg.data, _convert_="all", **options)


#: Keys of a model config that describe its phases, its monitored metric or how to choose
#: n_clusters, not the module's constructor arguments.
PHASE_KEYS = (
    "pretrain",
    "pretrain_epochs",
    "pretrained_ckpt",
    "n_clusters_range",
    "monitor",
    "fallback_model",
    "max_epochs",
    "patience",
    "batch_size",
)


def _module_options(model_cfg: DictConfig) -> tuple[type, dict[str, Any]]:
    """The class a model config names and its constructor options (phase keys left out).

    Raises
    ------
    ConfigError
        When ``_target_`` is missing or names no class.
    """
    options = OmegaConf.to_container(model_cfg, resolve=True)
    target = options.pop("_target_", None)
    if not target:
        raise ConfigError("the model config has no _target_: choose one of conf/model/ (e.g. model=dec)")
    try:
        module_class = hydra.utils.get_class(target)
    except Exception as exc:  # hydra raises ImportError or ValueError subclasses
        raise ConfigError(f"model._target_={target} is not a class: {exc}") from exc
    if not issubclass(module_class, L.LightningModule):
        raise ConfigError(
            f"model._target_={target} is not a grasp-dl model (no LightningModule): choose one of conf/model/ "
            "(e.g. model=dec)"
        )
    for key in PHASE_KEYS:
        options.pop(key, None)
    return module_class, options


def build_module(model_cfg: DictConfig, datamodule: StellarCatalogDataModule) -> L.LightningModule:
    """Instantiate a single-phase module, sized to the data and carrying its preprocessing state.

    Parameters
    ----------
    model_cfg : DictConfig
        A model config (``_target_`` and options).
    datamodule : StellarCatalogDataModule
        The set-up data module.

    Returns
    -------
    LightningModule

    Raises
    ------
    ConfigError
        For a bad option (the module's own checks).
    """
    module_class, options = _module_options(model_cfg)
    module = module_class(input_dim=datamodule.input_dim, preprocessing=datamodule.preprocessing_state(), **options)
    return take_published_cluster(module, datamodule)


def take_published_cluster(module: L.LightningModule, datamodule: StellarCatalogDataModule) -> L.LightningModule:
    """``data.cluster=NAME``: the published cluster starts the module's cluster component (``model=xd``).

    A start at the published mean and a prior on the dispersion (:func:`grasp_dl.models.xd.named_cluster_options`),
    for a single-phase module (``model=xd``, the default) as for a clustering phase; other modules are
    returned as they are.

    Parameters
    ----------
    module : LightningModule
        The module, before training.
    datamodule : StellarCatalogDataModule
        The data module (its ``cluster``, when the catalogue's cluster is named).

    Returns
    -------
    LightningModule
        ``module``.
    """
    if isinstance(module, TakesPublishedCluster) and getattr(datamodule, "cluster", None):
        from grasp_dl.data.clusters import literature_cluster

        module.literature = literature_cluster(datamodule.cluster)
    return module


def build_trainer(cfg: DictConfig, has_validation: bool = True, batches_per_step: int | None = None) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the configured callbacks and loggers.

    A progress bar is dropped when ``trainer.enable_progress_bar`` is false and a learning-rate
    monitor when there is no logger, instead of letting Lightning refuse the combination; with
    no validation rows (``data.val_fraction=0``) checkpoints and early stopping watch the
    training loss. Settings counted in training steps are made to count optimiser steps for
    blocks of ``batches_per_step`` mini-batches (default ``data.batches_per_step``), or refused
    (:mod:`grasp_dl.engine.block_settings`).
    """
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not has_validation:
        for callback in callbacks:
            if str(getattr(callback, "monitor", "") or "").startswith("val/"):
                log.info("no validation rows: %s monitors train/loss", type(callback).__name__)
                callback.monitor = "train/loss"
    if batches_per_step is None:
        batches_per_step = int((cfg.get("data") or {}).get("batches_per_step", 1))
    options = block_trainer_options(cfg.trainer, batches_per_step)
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **options)


def _phase_config(cfg: DictConfig, phase: str, max_epochs: int, monitor: str | None = None) -> DictConfig:
    """A copy of ``cfg`` for an earlier phase: its own epochs, log version, checkpoint folder and
    (when given) the metric its checkpoints and early stopping watch."""
    phase_cfg = copy.deepcopy(cfg)
    with open_dict(phase_cfg):
        phase_cfg.trainer.max_epochs = max_epochs
        for logger in (phase_cfg.get("logger") or {}).values():
            if logger and "version" in logger:
                logger.version = phase
        callbacks = phase_cfg.get("callbacks") or {}
        checkpoint = callbacks.get("model_checkpoint")
        if checkpoint and checkpoint.get("dirpath"):
            checkpoint.dirpath = phase_dirpath(checkpoint.dirpath, phase)
        for callback in callbacks.values():
            if monitor and callback and "monitor" in callback:
                callback.monitor = monitor
    return phase_cfg


@dataclass
class ResumePoint:
    """Where an interrupted run continues: in the autoencoder phase or in the final phase."""

    autoencoder: str | None = None
    final: str | None = None


def resume_point(ckpt_path: str | None, run_dir: RunDir | str | os.PathLike[str], two_phase: bool) -> ResumePoint:
    """Resolve ``ckpt_path``: 'last' finds the newest last.ckpt of this run directory's phases.

    Parameters
    ----------
    ckpt_path : str or None
        'last', a checkpoint path, or None (a fresh run).
    run_dir : RunDir, str or PathLike
        The run's layout (:meth:`RunDir.from_config`), or its directory in the default layout.
    two_phase : bool
        Whether the model has an autoencoder phase before its clustering phase.

    Returns
    -------
    ResumePoint
        The phase to continue and its checkpoint.

    Raises
    ------
    ConfigError
        When no checkpoint is found.
    """
    if not ckpt_path:
        return ResumePoint()
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir.at(run_dir)
    if ckpt_path == "last":
        final = run_dir.last_checkpoint()
        pretrain = run_dir.last_checkpoint(AUTOENCODER_PHASE)
        if final.is_file():
            return ResumePoint(final=str(final))
        if two_phase and pretrain.is_file():
            return ResumePoint(autoencoder=str(pretrain))
        raise ConfigError(
            f"ckpt_path=last: no last.ckpt under {run_dir.checkpoints}: give the run's "
            "directory with hydra.run.dir=DIR, or a checkpoint path"
        )
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint")
    checkpoint = read_checkpoint(path)
    if two_phase and checkpoint_class(checkpoint) is None:
        return ResumePoint(autoencoder=str(path))
    return ResumePoint(final=str(path))


def pretrain_autoencoder(
    cfg: DictConfig, datamodule: StellarCatalogDataModule, ckpt_path: str | None = None
) -> AutoencoderModule:
    """The autoencoder phase of a clustering model: trained now (resumed from ``ckpt_path``), or
    loaded from ``model.pretrained_ckpt``."""
    model_cfg = cfg.model
    if model_cfg.get("pretrained_ckpt"):
        autoencoder = load_module(
            AutoencoderModule, model_cfg.pretrained_ckpt, kinds=(AUTOENCODER,), option="model.pretrained_ckpt"
        )
        stored = (autoencoder.hparams.get("preprocessing") or {}).get("feature_names")
        if stored != datamodule.feature_names:
            raise ConfigError(
                f"pretrained_ckpt {model_cfg.pretrained_ckpt} was trained on features {stored}, "
                f"the data gives {datamodule.feature_names}: use the same data.features"
            )
        return autoencoder
    autoencoder = build_module(model_cfg.pretrain, datamodule)
    if cfg.get("compile"):
        compile_network(autoencoder.net)
    monitor = model_cfg.pretrain.get("monitor") or "val/loss"
    phase_cfg = _phase_config(cfg, AUTOENCODER_PHASE, int(model_cfg.pretrain_epochs), monitor)
    if ckpt_path:
        check_state_fits(autoencoder, ckpt_path)
    mark("pipeline: build the autoencoder's Trainer")
    trainer = build_trainer(phase_cfg, datamodule.has_validation, datamodule.batches_per_step)
    mark("pipeline: Lightning fit (autoencoder)")
    trainer.fit(autoencoder, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    mark("pipeline: build the clustering module (initial groups)")
    return autoencoder


def build_clustering_module(
    model_cfg: DictConfig, autoencoder: AutoencoderModule, datamodule: StellarCatalogDataModule
) -> ClusteringModule:
    """The clustering module of ``model_cfg``, its network starting from the autoencoder.

    ``n_clusters: auto`` is resolved here (:func:`~grasp_dl.models.model_selection.choose_n_clusters`);
    its curve is kept in the module's ``fit_results``.

    Parameters
    ----------
    model_cfg : DictConfig
        The clustering model's config.
    autoencoder : AutoencoderModule
        The trained (or, to check options, untrained) autoencoder.
    datamodule : StellarCatalogDataModule
        The set-up data module.

    Returns
    -------
    ClusteringModule

    Raises
    ------
    ConfigError
        For a bad option.
    """
    module_class, options = _module_options(model_cfg)
    curve = None
    if options.get("n_clusters") == "auto":
        from grasp_dl.models.model_selection import choose_n_clusters

        options["n_clusters"], curve = choose_n_clusters(datamodule, {**options, **_range(model_cfg)})
    module = module_class.from_autoencoder(autoencoder, **options)
    if curve is not None:
        module.fit_results["n_clusters_curve"] = curve
    # The data module's preprocessing is the one the clustering phase saw; keep it current.
    module.hparams.preprocessing = datamodule.preprocessing_state()
    return take_published_cluster(module, datamodule)


def _range(model_cfg: DictConfig) -> dict[str, Any]:
    value = model_cfg.get("n_clusters_range")
    return {} if value is None else {"n_clusters_range": list(value)}


def check_phases(cfg: DictConfig, datamodule: StellarCatalogDataModule) -> L.LightningModule:
    """Build every phase's module once, untrained, so that a bad option fails before any training.

    The autoencoder (for a two-phase model) and the clustering module are built from ``cfg.model``
    with the data's size (``n_clusters: auto`` checked as the low end of ``n_clusters_range``).
    Before the data module is set up that checks the options alone (no catalogue read yet);
    once it is, the modules carry its preprocessing (the spatial prior needs a position among
    the features) and the training stars are asked for what the module needs (error columns
    for ``init=xd`` or noise augmentation, the centre for the radius).

    Parameters
    ----------
    cfg : DictConfig
        The training config.
    datamodule : StellarCatalogDataModule
        The data module, set up or not.

    Returns
    -------
    LightningModule
        The untrained module of the last phase (thrown away by :func:`train`).

    Raises
    ------
    ConfigError, CatalogError
        Naming the bad option or the missing column.
    """
    # Building draws initial weights: leave the random state as it was, so the run that follows
    # trains exactly as it would without the check.
    with torch.random.fork_rng(devices=[]):
        return _check_phases(cfg.model, datamodule)


def _check_phases(model_cfg: DictConfig, datamodule: StellarCatalogDataModule) -> L.LightningModule:
    prepared = datamodule.prepared is not None
    preprocessing = datamodule.preprocessing_state() if prepared else None

    def build(cfg: DictConfig) -> L.LightningModule:
        module_class, options = _module_options(cfg)
        return module_class(input_dim=datamodule.input_dim, preprocessing=preprocessing, **options)

    if "pretrain" not in model_cfg:
        module = build(model_cfg)
    else:
        autoencoder = build(model_cfg.pretrain)
        if model_cfg.get("n_clusters") == "auto":
            from grasp_dl.models.model_selection import k_values

            model_cfg = copy.deepcopy(model_cfg)
            with open_dict(model_cfg):
                model_cfg.n_clusters = k_values(model_cfg.get("n_clusters_range"))[0]
        module_class, options = _module_options(model_cfg)
        module = module_class.from_autoencoder(autoencoder, **options)
    if prepared and isinstance(module, ClusteringModule):
        datamodule.training_catalog(module.catalog_needs(), "cpu")
    return module


def model_name(model_cfg: DictConfig) -> str:
    """The ``model=`` name of a model config (``dec``, ``idec``, ``vade``, ``xd``), from the class it builds."""
    return _model_name(str(model_cfg.get("_target_", "?")).rsplit(".", 1)[-1], model_cfg.get("variant"))


def module_model_name(module: L.LightningModule) -> str:
    """The ``model=`` name of a built or loaded module, from its class (and DEC's variant)."""
    return _model_name(type(module).__name__, module.hparams.get("variant"))


def _model_name(class_name: str, variant: Any) -> str:
    kind = class_name.removesuffix("Module").lower()
    return "idec" if kind == "dec" and variant == "idec" else kind


def compose_model(name: str) -> DictConfig:
    """The model config ``conf/model/<name>.yaml`` (with its defaults), composed as ``model=<name>`` would.

    Works inside a running Hydra app (the CLI) and outside it (the notebook facade, tests).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from grasp_dl.runtime.config import conf_dir

    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=[f"model={name}"]).model
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=[f"model={name}"]).model


def _check_or_fall_back(cfg: DictConfig, datamodule: StellarCatalogDataModule) -> str:
    """Check what the model needs of the prepared catalogue; fall back to ``model.fallback_model`` if it cannot run.

    Only the default setting carries a fallback (``model=auto``: ``grasp-dl train`` without
    ``model=``, ``DeepClusteringModel()``); a model the user chose fails with its own error instead.
    Returns the line that says which setting was trained and why.
    """
    name = model_name(cfg.model)
    _module_options(cfg.model)  # a bad _target_ is the user's error, never a reason to fall back
    try:
        check_phases(cfg, datamodule)
    except GraspDLError as exc:
        fallback = cfg.model.get("fallback_model")
        if not fallback or fallback == name:
            raise
        # a model name, or a whole model config (the notebook facade's, with its network sizes)
        fallback_cfg = fallback if isinstance(fallback, DictConfig) else compose_model(str(fallback))
        with open_dict(cfg):
            cfg.model = copy.deepcopy(fallback_cfg)
        if "data" in cfg and hasattr(datamodule, "batch_size"):
            # data.batch_size follows the model's own size unless the user set it (model=xd's E-step
            # batches are no size to train a network with)
            datamodule.batch_size = int(cfg.data.batch_size)
        check_phases(cfg, datamodule)
        line = (
            f"setting: model=auto fell back to model={model_name(cfg.model)}: "
            f"{name} cannot run on this catalogue ({exc})"
        )
        log.warning(line)
        return line
    if cfg.model.get("fallback_model"):
        return f"setting: model=auto, i.e. {name} (the most accurate robust setting, see README 'Robustness')"
    return f"setting: model={name}"


def train(
    cfg: DictConfig,
    datamodule: StellarCatalogDataModule | None = None,
    autoencoder: AutoencoderModule | None = None,
    *,
    score_clusters: bool = True,
) -> TrainResult:
    """Run the training phases of ``cfg`` and return the trained module and its outputs.

    A model config with a ``pretrain`` entry is a clustering model: its autoencoder phase runs
    first (``pretrain_epochs``), then the clustering phase (``trainer.max_epochs``). A prepared
    ``datamodule`` (an in-memory catalogue, or one shared by the trials of a search) replaces
    ``cfg.data``; a trained ``autoencoder`` replaces the autoencoder phase (the facade's
    step-by-step ``train_deep_clustering``): the run continues where that phase left the random
    state, so it is not seeded again and ends as a one-go run would.

    Parameters
    ----------
    cfg : DictConfig
        A composed ``train`` config.
    datamodule : StellarCatalogDataModule, optional
        A data module replacing ``cfg.data``.
    autoencoder : AutoencoderModule, optional
        A trained autoencoder replacing the autoencoder phase.
    score_clusters : bool, default True
        Add the clustering scores (:func:`clustering_scores`) to the metrics; ``grasp-dl train``
        asks for them only when ``optimized_metric`` is set (nothing else shows them).

    Returns
    -------
    TrainResult
        The trained module, the data module, the run directory, the final checkpoint and the metrics.

    Raises
    ------
    ConfigError, CatalogError
        For a bad option or a catalogue the model cannot use.
    """
    mark("pipeline: check options, instantiate the data module")
    check_train_options(cfg)
    if cfg.get("seed") is not None and autoencoder is None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision") or "highest")
    run_dir = RunDir.from_config(cfg)
    if datamodule is None:
        datamodule = instantiate_datamodule(cfg)
    setting = _check_or_fall_back(cfg, datamodule)  # the options, before the catalogue is read
    mark("pipeline: read (or simulate) and prepare the catalogue")
    datamodule.setup("fit")
    mark("pipeline: check the catalogue against the model, build the module")
    # what they need of the catalogue, before any training (the default setting may still fall back)
    if cfg.model.get("fallback_model"):
        setting = _check_or_fall_back(cfg, datamodule)
    else:
        check_phases(cfg, datamodule)
    two_phase = "pretrain" in cfg.model
    resume = resume_point(cfg.get("ckpt_path"), run_dir, two_phase)
    mixture = model_name(cfg.model) in ("xd", "multimodal") or cfg.model.get("init") == "xd"
    check_trainable(
        datamodule.prepared.n_usable, len(datamodule.train_index), cfg.model.get("n_clusters"), mixture=mixture
    )
    if not two_phase:
        module = build_module(cfg.model, datamodule)
    elif resume.final:
        # The clustering checkpoint restores every weight: no autoencoder phase to rerun.
        module = build_clustering_module(cfg.model, build_module(cfg.model.pretrain, datamodule), datamodule)
    elif autoencoder is not None:
        module = build_clustering_module(cfg.model, autoencoder, datamodule)
    else:
        autoencoder = pretrain_autoencoder(cfg, datamodule, ckpt_path=resume.autoencoder)
        module = build_clustering_module(cfg.model, autoencoder, datamodule)
    if cfg.get("compile"):
        compile_network(module.net)
    if resume.final:
        check_state_fits(module, resume.final)
    mark("pipeline: build the Trainer (callbacks, loggers)")
    trainer = build_trainer(cfg, datamodule.has_validation, datamodule.batches_per_step)
    mark("pipeline: Lightning fit")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume.final, weights_only=True)
    mark("pipeline: after fit")
    checkpoint = written_checkpoint(trainer) or adopt_spawned_fit(trainer, module)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = TrainResult(
        module=module,
        datamodule=datamodule,
        output_dir=run_dir.root,
        checkpoint=checkpoint,
        metrics=metrics,
        setting=setting,
    )
    if isinstance(module, ClusteringModule) and score_clusters:
        mark("pipeline: clustering scores (silhouette, Davies-Bouldin, Calinski-Harabasz)")
        metrics.update(clustering_scores(module, datamodule, result.catalogue_probabilities()))
    return result


def adopt_spawned_fit(trainer: L.Trainer, module: L.LightningModule) -> Path | None:
    """After a fit in spawned processes (``trainer=ddp_cpu``): make ``module`` the run's final checkpoint.

    A spawning strategy hands the main process the weights and metrics only; what else the
    module computed while training (``fit_results``, the start and the anchor, DEC's target)
    stayed in the workers. It is all in the last checkpoint the workers wrote, which is loaded
    here through the module's own checkpoint hooks, so the module in memory predicts as the file.

    Parameters
    ----------
    trainer : Trainer
        The trainer after ``fit``.
    module : LightningModule
        The module it fitted.

    Returns
    -------
    Path or None
        The last checkpoint; None for a single-process fit or one that wrote none (``callbacks=none``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = trainer.checkpoint_callback
    # Any multi-process fit: a spawned one needs it, and for the others the module already is that file.
    if trainer.world_size <= 1:
        return None
    if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
        return None
    path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    if not path.is_file():
        return None
    content = read_checkpoint(path)
    module.on_load_checkpoint(content)
    module.load_state_dict(content["state_dict"])
    return path


def catalogue_probabilities(module: L.LightningModule, datamodule: StellarCatalogDataModule) -> torch.Tensor:
    """Group probabilities of every usable star of the data module, as the predict path scores them.

    A model that scores stars with their errors (``predict_proba_stars``, e.g. ``model=xd``) gets
    each star's astrometry and error covariances; the others get the standardised features.

    Parameters
    ----------
    module : LightningModule
        A trained clustering module.
    datamodule : StellarCatalogDataModule
        Its prepared data module.

    Returns
    -------
    Tensor
        Shape (usable stars, n_clusters), in ``datamodule.data`` order.
    """
    if isinstance(module, ClusteringModule) and module.scores_with_errors:
        needs = module.catalog_needs()
        stars = datamodule.star_data("all", needs.photometry, what=needs.stars or type(module).__name__)
        return module.proba_with_errors(datamodule.data, stars)
    return module.predict_proba(datamodule.data)


def clustering_scores(
    module: L.LightningModule, datamodule: StellarCatalogDataModule, probabilities: torch.Tensor | None = None
) -> dict[str, float]:
    """Scores that need no truth, on the standardised features (comparable across latent spaces).

    ``clustering/silhouette`` is what hyper-parameter searches maximise by default.

    Parameters
    ----------
    module : LightningModule
        A trained clustering module.
    datamodule : StellarCatalogDataModule
        Its prepared data module.
    probabilities : Tensor, optional
        The module's :func:`catalogue_probabilities` when already computed (they are not computed again).

    Returns
    -------
    dict of str to float
        ``clustering/silhouette``, ``clustering/davies_bouldin`` and ``clustering/calinski_harabasz``.
    """
    from grasp_dl.metrics import internal_scores

    if probabilities is None:
        probabilities = catalogue_probabilities(module, datamodule)
    labels = probabilities.argmax(dim=1).cpu().numpy()
    scores = internal_scores(datamodule.data.numpy(), labels, random_state=datamodule.seed)
    return {f"clustering/{name}": float(value) for name, value in scores.items()}


def training_cluster_lines(result: TrainResult) -> list[str]:
    """The plausibility verdict and diagnostics of the trained cluster group on the training catalogue, its mean
    astrometry (the model's fitted mean where it has one, as predict reports it), and that against the literature
    when ``data.cluster`` names the cluster."""
    import numpy as np
    import pandas as pd

    from grasp_dl.inference.predict import null_options, with_model_astrometry
    from grasp_dl.membership.guards import check_table, finish_summary, report_lines
    from grasp_dl.membership.rules import SummaryAccumulator

    datamodule, module = result.datamodule, result.module
    member_prob = result.catalogue_probabilities()[:, module.cluster_group].detach().cpu().numpy()
    table = datamodule.table.iloc[datamodule.usable_rows()].reset_index(drop=True)
    check = check_table(member_prob, table, datamodule.prepared.center, **null_options(module))
    summary = SummaryAccumulator(datamodule.prepared.center, module.cluster_group)
    summary.update(pd.DataFrame({"label": np.zeros(len(table), int), "member_prob": member_prob}), table)
    literature = None
    if getattr(datamodule, "cluster", None):
        from grasp_dl.data.clusters import literature_cluster

        literature = literature_cluster(datamodule.cluster)
    user_group = module.hparams.get("cluster_group") is not None
    result_summary = with_model_astrometry(summary.result(), module)  # the mean predict reports, and its error
    return report_lines(finish_summary(result_summary, check, user_group, literature))


def summarise(result: TrainResult, cfg: DictConfig) -> str:
    """The lines printed at the end of ``grasp-dl train``: what was trained and where it went."""
    prepared = result.datamodule.prepared
    lines = [
        f"trained on {prepared.n_usable} of {prepared.n_rows} stars (features: {', '.join(prepared.feature_names)})",
    ]
    if result.setting:
        lines.insert(0, result.setting)
    left_out = {flag: n for flag, n in prepared.cuts.items() if n}
    if left_out:
        lines.append("left out: " + "; ".join(f"{n} {flag}" for flag, n in left_out.items()))
    if prepared.n_usable < MIN_USEFUL_STARS:
        lines.append(
            f"warning: only {prepared.n_usable} usable stars, too few to learn anything meaningful "
            f"(at least {MIN_USEFUL_STARS} are advised): do not trust these groups"
        )
    if isinstance(result.module, ClusteringModule):
        data = result.datamodule.data
        labels = result.catalogue_probabilities().argmax(dim=1)
        group = int(result.module.cluster_group)
        lines.append(
            f"cluster: group {group} of {result.module.hparams.n_clusters}, "
            f"{int((labels == group).sum())} of {len(data)} training stars"
        )
        report = result.module.fit_results.get("start_vs_end")
        if report:
            from grasp_dl.models.anchoring import describe_start_vs_end

            lines.append(describe_start_vs_end(report))
        lines.extend(training_cluster_lines(result))
        curve = result.module.fit_results.get("n_clusters_curve")
        if curve:
            points = ", ".join(f"k={k}: {b:.1f}" for k, b in zip(curve["k"], curve["bic"], strict=False))
            lines.append(f"n_clusters=auto chose {curve['chosen']} by {curve['criterion']} ({points})")
    for key in dict.fromkeys(("train/loss", cfg.model.get("monitor") or "val/loss")):
        if key in result.metrics:
            lines.append(f"{key}: {result.metrics[key]:.4f}")
    lines.append(f"run directory: {result.output_dir}")
    if result.checkpoint is not None:
        lines.append(f"final model: {result.checkpoint}")
    if cfg.get("logger") and "tensorboard" in cfg.logger:
        lines.append(f"TensorBoard: tensorboard --logdir {RunDir.at(result.output_dir).tensorboard()}")
    return "\n".join(lines)
