"""The one place where training phases chain; the CLI and the notebook facade both call it."""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from grasp_dl.data.datamodule import MIN_USEFUL_STARS, StellarCatalogDataModule
from grasp_dl.data.catalog import read_catalog, require_columns, write_catalog
from grasp_dl.errors import CatalogError, ConfigError
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.networks import compile_network
from grasp_dl.predict import CLUSTERING_MODULES, load_clustering_module, predict_to_file

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: the trained module, where its outputs are, final metrics."""

    module: L.LightningModule
    datamodule: StellarCatalogDataModule
    output_dir: Path
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger mapping that has a ``_target_``."""
    if not group:
        return []
    return [hydra.utils.instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_datamodule(cfg: DictConfig) -> StellarCatalogDataModule:
    """Instantiate and set up the data module of ``cfg.data`` (prepares the catalogue once)."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    return datamodule


#: Keys of a clustering model config that describe its autoencoder phase (or how to choose
#: n_clusters), not the module.
PHASE_KEYS = ("pretrain", "pretrain_epochs", "pretrained_ckpt", "n_clusters_range")


def build_module(model_cfg: DictConfig, datamodule: StellarCatalogDataModule) -> L.LightningModule:
    """Instantiate a single-phase module, sized to the data and carrying its preprocessing state."""
    return hydra.utils.instantiate(
        model_cfg,
        input_dim=datamodule.input_dim,
        preprocessing=datamodule.preprocessing_state(),
        _recursive_=False,
    )


def build_trainer(cfg: DictConfig, has_validation: bool = True) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the configured callbacks and loggers.

    A progress bar is dropped when ``trainer.enable_progress_bar`` is false and a learning-rate
    monitor when there is no logger, instead of letting Lightning refuse the combination; with
    no validation rows (``data.val_fraction=0``) checkpoints and early stopping watch the
    training loss.
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
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _phase_config(cfg: DictConfig, phase: str, max_epochs: int) -> DictConfig:
    """A copy of ``cfg`` for an earlier phase: its own epochs, log version and checkpoint folder."""
    phase_cfg = copy.deepcopy(cfg)
    with open_dict(phase_cfg):
        phase_cfg.trainer.max_epochs = max_epochs
        for logger in (phase_cfg.get("logger") or {}).values():
            if logger and "version" in logger:
                logger.version = phase
        checkpoint = (phase_cfg.get("callbacks") or {}).get("model_checkpoint")
        if checkpoint and checkpoint.get("dirpath"):
            checkpoint.dirpath = f"{checkpoint.dirpath}/{phase}"
    return phase_cfg


@dataclass
class ResumePoint:
    """Where an interrupted run continues: in the autoencoder phase or in the final phase."""

    autoencoder: str | None = None
    final: str | None = None


def resume_point(ckpt_path: str | None, output_dir: Path, two_phase: bool) -> ResumePoint:
    """Resolve ``ckpt_path``: 'last' finds the newest last.ckpt of this run directory's phases."""
    if not ckpt_path:
        return ResumePoint()
    if ckpt_path == "last":
        final = output_dir / "checkpoints" / "last.ckpt"
        pretrain = output_dir / "checkpoints" / "autoencoder" / "last.ckpt"
        if final.is_file():
            return ResumePoint(final=str(final))
        if two_phase and pretrain.is_file():
            return ResumePoint(autoencoder=str(pretrain))
        raise ConfigError(
            f"ckpt_path=last: no last.ckpt under {output_dir / 'checkpoints'}: give the run's "
            "directory with hydra.run.dir=DIR, or a checkpoint path"
        )
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    if two_phase and not any(key in state for key in CLUSTERING_MODULES):
        return ResumePoint(autoencoder=str(path))
    return ResumePoint(final=str(path))


def pretrain_autoencoder(
    cfg: DictConfig, datamodule: StellarCatalogDataModule, ckpt_path: str | None = None
) -> AutoencoderModule:
    """The autoencoder phase of a clustering model: trained now (resumed from ``ckpt_path``), or
    loaded from ``model.pretrained_ckpt``."""
    model_cfg = cfg.model
    if model_cfg.get("pretrained_ckpt"):
        autoencoder = AutoencoderModule.load_from_checkpoint(model_cfg.pretrained_ckpt, map_location="cpu")
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
    phase_cfg = _phase_config(cfg, "autoencoder", int(model_cfg.pretrain_epochs))
    trainer = build_trainer(phase_cfg, has_validation=datamodule.has_validation)
    trainer.fit(autoencoder, datamodule=datamodule, ckpt_path=ckpt_path)
    return autoencoder


def build_clustering_module(
    model_cfg: DictConfig, autoencoder: AutoencoderModule, datamodule: StellarCatalogDataModule
) -> L.LightningModule:
    """The clustering module of ``model_cfg``, its network starting from the autoencoder."""
    options = OmegaConf.to_container(model_cfg, resolve=True)
    module_class = hydra.utils.get_class(options.pop("_target_"))
    if options.get("n_clusters") == "auto":
        from grasp_dl.models.model_selection import choose_n_clusters

        options["n_clusters"], options["n_clusters_curve"] = choose_n_clusters(datamodule, options)
    for key in PHASE_KEYS:
        options.pop(key, None)
    module = module_class.from_autoencoder(autoencoder, **options)
    # The data module's preprocessing is the one the clustering phase saw; keep it current.
    module.hparams.preprocessing = datamodule.preprocessing_state()
    return module


def train(cfg: DictConfig, datamodule: StellarCatalogDataModule | None = None) -> TrainResult:
    """Run the training phases of ``cfg`` and return the trained module and its outputs.

    A model config with a ``pretrain`` entry is a clustering model: its autoencoder phase runs
    first (``pretrain_epochs``), then the clustering phase (``trainer.max_epochs``). A prepared
    ``datamodule`` (an in-memory catalogue, or one shared by the trials of a search) replaces
    ``cfg.data``.
    """
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision") or "highest")
    output_dir = Path(cfg.paths.output_dir)
    two_phase = "pretrain" in cfg.model
    resume = resume_point(cfg.get("ckpt_path"), output_dir, two_phase)
    if datamodule is None:
        datamodule = build_datamodule(cfg)
    else:
        datamodule.setup("fit")
    if not two_phase:
        module = build_module(cfg.model, datamodule)
    elif resume.final:
        # The clustering checkpoint restores every weight: no autoencoder phase to rerun.
        module = build_clustering_module(cfg.model, build_module(cfg.model.pretrain, datamodule), datamodule)
    else:
        autoencoder = pretrain_autoencoder(cfg, datamodule, ckpt_path=resume.autoencoder)
        module = build_clustering_module(cfg.model, autoencoder, datamodule)
    if cfg.get("compile"):
        compile_network(module.net)
    trainer = build_trainer(cfg, has_validation=datamodule.has_validation)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume.final)
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if hasattr(module, "predict_proba"):
        metrics.update(clustering_scores(module, datamodule))
    return TrainResult(
        module=module,
        datamodule=datamodule,
        output_dir=output_dir,
        checkpoint=checkpoint if checkpoint.is_file() else None,
        metrics=metrics,
    )


def clustering_scores(module: L.LightningModule, datamodule: StellarCatalogDataModule) -> dict[str, float]:
    """Scores that need no truth, on the standardised features (comparable across latent spaces).

    ``clustering/silhouette`` is what hyper-parameter searches maximise by default.
    """
    from grasp_dl.metrics import internal_scores

    labels = module.predict_proba(datamodule.data).argmax(dim=1).cpu().numpy()
    scores = internal_scores(datamodule.data.numpy(), labels, random_state=datamodule.seed)
    return {f"clustering/{name}": float(value) for name, value in scores.items()}


def training_cluster_lines(result: TrainResult) -> list[str]:
    """The plausibility verdict and diagnostics of the trained cluster group on the training catalogue,
    and its astrometry against the literature when ``data.cluster`` names the cluster."""
    from grasp_dl.inference.plausibility import check_table, finish_summary, report_lines
    from grasp_dl.membership import ClusterSummary

    datamodule, module = result.datamodule, result.module
    member_prob = module.predict_proba(datamodule.data)[:, module.member_group].detach().cpu().numpy()
    table = datamodule.table.iloc[datamodule.usable_rows()].reset_index(drop=True)
    check = check_table(member_prob, table, datamodule.prepared.center)
    summary = ClusterSummary(datamodule.prepared.center, module.member_group)
    summary.update(pd.DataFrame({"label": np.zeros(len(table), int), "member_prob": member_prob}), table)
    literature = None
    if getattr(datamodule, "cluster", None):
        from grasp_dl.data.clusters import literature_cluster

        literature = literature_cluster(datamodule.cluster)
    user_group = any(module.hparams.get(key) is not None for key in ("cluster_index", "cluster_group"))
    return report_lines(finish_summary(summary.result(), check, user_group, literature))


def summarise(result: TrainResult, cfg: DictConfig) -> str:
    """The lines printed at the end of ``grasp-dl train``: what was trained and where it went."""
    prepared = result.datamodule.prepared
    lines = [
        f"trained on {prepared.n_usable} of {prepared.n_rows} stars "
        f"(features: {', '.join(prepared.feature_names)})",
    ]
    left_out = {flag: n for flag, n in prepared.cuts.items() if n}
    if left_out:
        lines.append("left out: " + "; ".join(f"{n} {flag}" for flag, n in left_out.items()))
    if prepared.n_usable < MIN_USEFUL_STARS:
        lines.append(
            f"warning: only {prepared.n_usable} usable stars, too few to learn anything meaningful "
            f"(at least {MIN_USEFUL_STARS} are advised): do not trust these groups"
        )
    if hasattr(result.module, "member_group"):
        data = result.datamodule.data
        labels = result.module.predict_proba(data).argmax(dim=1)
        group = result.module.member_group
        lines.append(
            f"cluster: group {group} of {result.module.hparams.n_clusters}, "
            f"{int((labels == group).sum())} of {len(data)} training stars"
        )
        lines.extend(training_cluster_lines(result))
        curve = result.module.hparams.get("n_clusters_curve")
        if curve:
            points = ", ".join(f"k={k}: {b:.1f}" for k, b in zip(curve["k"], curve["bic"]))
            lines.append(f"n_clusters=auto chose {curve['chosen']} by {curve['criterion']} ({points})")
    for key in ("train/loss", "val/loss"):
        if key in result.metrics:
            lines.append(f"{key}: {result.metrics[key]:.4f}")
    lines.append(f"run directory: {result.output_dir}")
    if result.checkpoint is not None:
        lines.append(f"final model: {result.checkpoint}")
    if cfg.get("logger") and "tensorboard" in cfg.logger:
        lines.append(f"TensorBoard: tensorboard --logdir {result.output_dir / 'tensorboard'}")
    return "\n".join(lines)



def write_predictions(table: pd.DataFrame, summary: dict[str, Any], output: str | Path) -> tuple[Path, Path]:
    """Write an in-memory per-star table (atomically) and its JSON summary beside it; return both paths."""
    output = _prediction_output(output)
    write_catalog(table, output)
    return output, write_summary(summary, output)


def _prediction_output(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"output {output} must end in .parquet or .csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    return output


def write_summary(summary: dict[str, Any], output: Path) -> Path:
    """Write the cluster summary as <output stem>.summary.json beside the predictions (atomically)."""
    summary_path = output.with_name(output.stem + ".summary.json")
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)
    return summary_path


def predict(cfg: DictConfig) -> tuple[dict[str, Any], Path, Path]:
    """grasp-dl predict: score ``cfg.data.path`` with ``cfg.ckpt_path``, streaming the table to ``cfg.output``.

    The catalogue is read, scored and written ``cfg.chunk_size`` rows at a time, so its size is
    bounded by the disk, not the memory. With ``cfg.figures`` (default true) the diagnostic figure
    goes to ``<output stem>.png``. Returns the summary and the paths of both outputs.
    """
    module = load_clustering_module(cfg.ckpt_path)
    output = _prediction_output(cfg.output)
    figure = output.with_suffix(".png") if cfg.get("figures", True) else None
    summary = predict_to_file(
        module,
        cfg.data.path,
        output,
        member_group=cfg.get("member_group"),
        center=cfg.data.get("center"),
        chunk_size=int(cfg.chunk_size),
        score_no_astrometry=bool(cfg.get("score_no_astrometry", False)),
        cluster=cfg.data.get("cluster"),
        figure=figure,
    )
    if figure is not None:
        summary["figure"] = str(figure)
    summary["checkpoint"] = str(cfg.ckpt_path)
    summary["catalog"] = str(cfg.data.path)
    return summary, output, write_summary(summary, output)


def align_truth(predictions: pd.DataFrame, truth: pd.DataFrame, truth_column: str) -> np.ndarray:
    """The truth labels in the order of the predictions: by source_id when both have it, else by row."""
    require_columns(truth, [truth_column], source="the truth table")
    if "source_id" in predictions.columns and "source_id" in truth.columns:
        lookup = truth.drop_duplicates("source_id").set_index("source_id")[truth_column]
        missing = ~predictions["source_id"].isin(lookup.index)
        if missing.any():
            raise CatalogError(
                f"{int(missing.sum())} predicted source_id(s) are not in the truth table "
                f"(e.g. {predictions.loc[missing, 'source_id'].iloc[0]}): evaluate against the same catalogue"
            )
        return lookup.loc[predictions["source_id"]].to_numpy()
    if len(truth) != len(predictions):
        raise CatalogError(
            f"the truth table has {len(truth)} rows and the predictions {len(predictions)}, and no "
            "source_id to match them: evaluate against the catalogue that was predicted"
        )
    return truth[truth_column].to_numpy()


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    """grasp-dl evaluate: metrics of a predictions table against the truth, printed and saved."""
    from grasp_dl.metrics import evaluate_clustering

    predictions = read_catalog(cfg.predictions, required=["label"])
    truth = read_catalog(cfg.truth)
    true_labels = align_truth(predictions, truth, cfg.truth_column)
    member_prob = predictions["member_prob"].to_numpy(float) if "member_prob" in predictions else None
    if member_prob is not None:
        member_prob = np.nan_to_num(member_prob, nan=0.0)
    metrics = evaluate_clustering(
        true_labels,
        predictions["label"].to_numpy(),
        member_label=cfg.member_label,
        member_prob=member_prob,
    )
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.predictions).with_suffix(".metrics.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2) + "\n")
    if "brier" in metrics:
        scored = predictions["label"].to_numpy() >= 0
        is_member = np.asarray(true_labels).astype(str) == str(cfg.member_label)
        write_reliability_diagram(member_prob[scored], is_member[scored], output.with_suffix(".reliability.png"))
    return metrics, output


def write_reliability_diagram(member_prob: np.ndarray, is_member: np.ndarray, path: Path) -> Path:
    """Save the reliability diagram of member probabilities (beside the metrics JSON) and say where."""
    from grasp_dl.plotting import reliability_diagram

    reliability_diagram(member_prob, is_member).savefig(path, dpi=120)
    log.info("reliability diagram: %s", path)
    return path
