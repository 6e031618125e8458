"""The notebook face: :class:`DeepClusteringModel` with the seed's method names, and GRASP helpers.

The facade trains through :mod:`grasp_dl.pipeline` with a config composed from ``conf/``, so a
notebook gets the command line's modules, Trainer, callbacks, loggers and checkpoints: ``fit``
*is* ``grasp-dl train`` on an in-memory catalogue, and the seed's step-by-step methods
(``prepare_data`` -> ``pretrain_autoencoder`` -> ``train_deep_clustering``) run the same two
phases one at a time. Predictions go through :func:`grasp_dl.predict.predict_catalog`, exactly
as ``grasp-dl predict``.

What a method takes as ``data``: a catalogue path, a DataFrame or astropy Table of Gaia columns,
an object whose ``.data`` holds one (a GRASP sample), or a plain array of features (stars x
features, in the order of the model's ``features``; a model trained on sky positions needs the
catalogue itself, since ``xi``/``eta`` are computed from ``ra``/``dec`` around its centre).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra.utils
import lightning as L
import numpy as np
import pandas as pd
import torch
from astropy.table import Table
from matplotlib.figure import Figure
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from sklearn.base import BaseEstimator

from grasp_dl import pipeline, plotting
from grasp_dl.config import conf_dir
from grasp_dl.data.catalog import read_catalog, write_catalog
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.loader import TensorBatchLoader
from grasp_dl.data.prepare import DEFAULT_FEATURES, PreparedCatalog
from grasp_dl.errors import CatalogError, ConfigError
from grasp_dl.plotting import plot_cluster_comparison
from grasp_dl.predict import load_clustering_module, predict_catalog, prepare_for_module

log = logging.getLogger(__name__)

__all__ = [
    "DeepClusteringModel",
    "add_membership_columns",
    "cluster_statistics",
    "gpu_memory_usage",
    "plot_cluster_comparison",
]

#: Clustering model configs of conf/model/ the facade trains (each with an autoencoder phase).
MODELS = ("dec", "idec", "vade")
#: Features computed from ra/dec around a centre: an array cannot provide them.
POSITIONAL_FEATURES = frozenset({"ra", "dec", "xi", "eta", "radius"})
#: Columns the cluster statistics describe when none are named (those a catalogue has).
STATISTICS_COLUMNS = ("ra", "dec", "pmra", "pmdec", "parallax", "phot_g_mean_mag", "bp_rp")
#: Names of the membership columns written back into GRASP tables.
CLUSTER_COLUMN = "dl_cluster"
PROBABILITY_COLUMN = "dl_probability"
#: Version (folder) of each phase's CSV log; the autoencoder's is set by pipeline._phase_config.
PHASE_LOG_VERSIONS = {"autoencoder": "autoencoder", "clustering": "clustering"}


# ----------------------------------------------------------------------------- small helpers


def _hydra_list(values: Sequence[Any]) -> str:
    """A Python sequence as a Hydra override value, e.g. [64,32,16]."""
    return "[" + ",".join(str(v) for v in values) + "]"


def trainer_overrides(device: str) -> list[str]:
    """Trainer overrides for ``device``: 'auto', 'cpu', 'cuda' / 'gpu', 'cuda:N' or 'mps'."""
    name = str(device).strip().lower()
    if name == "auto":
        return []
    if name in ("cpu", "mps"):
        return [f"trainer.accelerator={name}", "trainer.devices=1"]
    if name in ("cuda", "gpu"):
        return ["trainer.accelerator=gpu", "trainer.devices=1"]
    match = re.fullmatch(r"(?:cuda|gpu):(\d+)", name)
    if match:
        return ["trainer.accelerator=gpu", f"trainer.devices=[{match.group(1)}]"]
    raise ConfigError(f"unknown device={device!r}: choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def inference_device(device: str) -> torch.device:
    """Where predictions run: the GPU for 'auto' when there is one, else as ``device`` says."""
    name = str(device).strip().lower()
    trainer_overrides(name)  # validates the name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("gpu"):
        name = "cuda" + name[3:]
    return torch.device(name)


def _is_array(data: Any) -> bool:
    """Whether ``data`` is a bare feature matrix rather than a catalogue."""
    return isinstance(data, (np.ndarray, torch.Tensor))


def _array_frame(values: Any, names: Sequence[str]) -> pd.DataFrame:
    """A feature matrix as a DataFrame with the given column names (its width checked)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise ConfigError(f"a feature array must be 2-D (stars x features), got shape {array.shape}")
    if array.shape[1] != len(names):
        raise ConfigError(
            f"the feature array has {array.shape[1]} columns but the model uses {len(names)} features "
            f"({', '.join(names)}): give them in that order"
        )
    return pd.DataFrame(array.astype(np.float64), columns=list(names))


def _history_from_csv(path: Path, phase: str) -> pd.DataFrame:
    """One row per epoch (the last value of each metric) from a Lightning CSVLogger metrics file."""
    if not path.is_file():
        return pd.DataFrame(columns=["phase", "epoch"])
    frame = pd.read_csv(path).drop(columns=["step"], errors="ignore")
    if "epoch" not in frame.columns or frame.empty:
        return pd.DataFrame(columns=["phase", "epoch"])
    # Epoch-level metrics carry their epoch; step-level ones (the learning rate) may not.
    frame = frame.dropna(subset=["epoch"]).groupby("epoch", as_index=False).last().dropna(axis=1, how="all")
    frame["epoch"] = frame["epoch"].astype(int)
    frame.insert(0, "phase", phase)
    return frame


def gpu_memory_usage(device: int | str | torch.device | None = None) -> dict[str, Any]:
    """Memory of a CUDA device in MiB (allocated, reserved, peak, free, total); zeros on a CPU-only machine."""
    if not torch.cuda.is_available():
        return {
            "available": False,
            "device": "cpu",
            "name": "no GPU: running on the CPU",
            "allocated_mb": 0.0,
            "reserved_mb": 0.0,
            "max_allocated_mb": 0.0,
            "free_mb": 0.0,
            "total_mb": 0.0,
        }
    index = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
    if index.type != "cuda":
        raise ConfigError(f"gpu_memory_usage needs a CUDA device, got {device!r}")
    free, total = torch.cuda.mem_get_info(index)
    mib = float(2**20)
    return {
        "available": True,
        "device": str(index),
        "name": torch.cuda.get_device_name(index),
        "allocated_mb": torch.cuda.memory_allocated(index) / mib,
        "reserved_mb": torch.cuda.memory_reserved(index) / mib,
        "max_allocated_mb": torch.cuda.max_memory_allocated(index) / mib,
        "free_mb": free / mib,
        "total_mb": total / mib,
    }


def cluster_statistics(data: Any, labels: Any, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per group: number of stars, share of the catalogue, and mean and standard deviation of each column.

    ``data`` is a catalogue (anything :func:`read_catalog` reads) or a feature array; ``columns``
    defaults to the astrometry and photometry it has (ra, dec, pmra, pmdec, parallax, G, BP-RP),
    else every numeric column. Group -1 holds the stars that were not scored.
    """
    if _is_array(data):
        table = _array_frame(data, [f"feature_{i}" for i in range(np.shape(data)[1])])
    else:
        table = read_catalog(data)
    groups = np.asarray(labels)
    if len(groups) != len(table):
        raise ConfigError(f"labels has {len(groups)} rows but the catalogue {len(table)}: one label per star")
    if columns is None:
        columns = [c for c in STATISTICS_COLUMNS if c in table.columns] or [
            c for c in table.columns if c != "source_id" and pd.api.types.is_numeric_dtype(table[c])
        ]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CatalogError(f"the catalogue has no column(s) {missing}: choose from {list(table.columns)}")
    values = table[list(columns)].apply(pd.to_numeric, errors="coerce")
    stats = values.groupby(groups).agg(["mean", "std"])
    stats.columns = [f"{column}_{stat}" for column, stat in stats.columns]
    counts = pd.Series(groups).value_counts().reindex(stats.index)
    stats.insert(0, "n_stars", counts.to_numpy())
    stats.insert(1, "fraction", counts.to_numpy() / len(groups))
    stats.index.name = "group"
    return stats


# ----------------------------------------------------------------------------- the facade


class DeepClusteringModel(BaseEstimator):
    """Autoencoder + DEC / IDEC / VaDE clustering of a stellar catalogue, for notebooks.

    The seed's interface on the Lightning modules of ``grasp-dl train``: nothing happens in
    ``__init__``; what training produces ends in ``_`` (``module_``, ``autoencoder_``,
    ``datamodule_``, ``history_``, ``checkpoint_``, ...). ``input_dim`` is checked against the
    prepared features when given; ``model`` is 'dec', 'idec' or 'vade'; ``device`` is 'auto',
    'cpu', 'cuda', 'cuda:N' or 'mps'. Any other setting of ``conf/`` is a Hydra override in
    ``overrides`` (e.g. ``'model.kernel=dec'``, ``'trainer.precision=bf16-mixed'``). Outputs
    (checkpoints, TensorBoard and CSV logs) go to ``output_dir``, by default
    ``outputs/notebook/<date>_<time>`` like the command line's run directories. ``cluster`` names a
    globular cluster with forgiving spelling (``"NGC 6397"``, ``"M4"``, ``"47 Tuc"``;
    :mod:`grasp_dl.data.clusters`): its published centre unless ``center`` is given, and predictions
    compare the recovered mean proper motion and parallax with the published ones.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        latent_dim: int = 8,
        n_clusters: int = 3,
        hidden_dims: Sequence[int] = (64, 32, 16),
        device: str = "auto",
        model: str = "dec",
        *,
        features: Sequence[str] = DEFAULT_FEATURES,
        center: Sequence[float] | None = None,
        cluster: str | None = None,
        pretrain_epochs: int = 20,
        epochs: int = 20,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        dropout: float = 0.1,
        seed: int | None = 42,
        output_dir: str | os.PathLike[str] | None = None,
        progress_bar: bool = True,
        overrides: Sequence[str] = (),
    ) -> None:
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.n_clusters = n_clusters
        self.hidden_dims = hidden_dims
        self.device = device
        self.model = model
        self.features = features
        self.center = center
        self.cluster = cluster
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.dropout = dropout
        self.seed = seed
        self.output_dir = output_dir
        self.progress_bar = progress_bar
        self.overrides = overrides

    # ------------------------------------------------------------------ configuration
    def config_overrides(self) -> list[str]:
        """The Hydra overrides of conf/train.yaml these parameters stand for (the user's last)."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown model={self.model!r}: choose one of {', '.join(MODELS)}")
        overrides = [
            f"model={self.model}",
            "data=catalog",
            f"model.n_clusters={int(self.n_clusters)}",
            f"model.pretrain.latent_dim={int(self.latent_dim)}",
            f"model.pretrain.hidden_dims={_hydra_list([int(h) for h in self.hidden_dims])}",
            f"model.pretrain.dropout={float(self.dropout)}",
            f"model.pretrain_epochs={int(self.pretrain_epochs)}",
            f"trainer.max_epochs={int(self.epochs)}",
            f"trainer.enable_progress_bar={str(bool(self.progress_bar)).lower()}",
            f"data.features={_hydra_list(self.features)}",
            f"data.batch_size={int(self.batch_size)}",
            f"data.val_fraction={float(self.val_fraction)}",
            f"seed={'null' if self.seed is None else int(self.seed)}",
            *trainer_overrides(self.device),
        ]
        if self.center is not None:
            overrides.append(f"data.center={_hydra_list([float(c) for c in self.center])}")
        if self.cluster is not None:
            from grasp_dl.data.clusters import resolve_cluster_name

            overrides.append(f"data.cluster={resolve_cluster_name(self.cluster)}")
        return overrides + list(self.overrides)

    def _run_dir(self) -> Path:
        """This model's output directory, chosen once (at the first preparation)."""
        if getattr(self, "output_dir_", None) is None:
            default = Path("outputs/notebook") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            self.output_dir_ = Path(self.output_dir) if self.output_dir is not None else default
        return self.output_dir_

    def compose_config(self, extra: Sequence[str] = ()) -> DictConfig:
        """The full training config, as ``grasp-dl train <overrides>`` would compose it.

        A CSV logger is always added (``<output_dir>/csv/<phase>``): ``history_`` is read from it.
        """
        output_dir = self._run_dir()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[*self.config_overrides(), *extra])
        if "pretrain" not in cfg.model:
            raise ConfigError(f"model {cfg.model.get('_target_')} has no autoencoder phase: use one of {MODELS}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            if cfg.get("logger") is None:
                cfg.logger = {}
            cfg.logger.csv = {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": str(output_dir),
                "name": "csv",
                "version": PHASE_LOG_VERSIONS["clustering"],
            }
        return cfg

    # ------------------------------------------------------------------ data
    def _array_feature_names(self, width: int) -> list[str]:
        """Column names of a training array: the model's features when they fit, else feature_i."""
        names = list(self.features)
        if len(names) == width and not POSITIONAL_FEATURES & set(names):
            return names
        return [f"feature_{i}" for i in range(width)]

    def _training_catalog(self, data: Any) -> tuple[Any, dict[str, Any]]:
        """The catalogue a data module reads, plus option changes for a feature array."""
        if not _is_array(data):
            return data, {}
        names = self._array_feature_names(int(np.shape(data)[1]) if np.ndim(data) == 2 else 0)
        return _array_frame(data, names), {"features": names, "center": None}

    def prepare_data(self, data: Any, batch_size: int | None = None) -> tuple[TensorBatchLoader, Any]:
        """Prepare a catalogue once (features, cuts, scaler, split) and return (train_loader, val_loader).

        The loaders are the data module's (batches are slices of one tensor); ``val_loader`` is
        an empty list when ``val_fraction`` is 0. Pass them to :meth:`pretrain_autoencoder` and
        :meth:`train_deep_clustering`.
        """
        cfg = self.compose_config([] if batch_size is None else [f"data.batch_size={int(batch_size)}"])
        options = OmegaConf.to_container(cfg.data, resolve=True)
        module_class = hydra.utils.get_class(options.pop("_target_"))
        for key in ("path", "catalog", "simulate"):
            options.pop(key, None)
        catalog, changes = self._training_catalog(data)
        options.update(changes)
        source = {"path": str(catalog)} if isinstance(catalog, (str, os.PathLike)) else {"catalog": catalog}
        datamodule: StellarCatalogDataModule = module_class(**source, **options)
        datamodule.setup("fit")
        if self.input_dim is not None and int(self.input_dim) != datamodule.input_dim:
            raise ConfigError(
                f"input_dim={self.input_dim} but the catalogue gives {datamodule.input_dim} features "
                f"({', '.join(datamodule.feature_names)}): leave input_dim=None or change features"
            )
        self.datamodule_ = datamodule
        self.feature_names_ = datamodule.feature_names
        self.n_features_in_ = datamodule.input_dim
        self._loaders = (datamodule.train_dataloader(), datamodule.val_dataloader())
        return self._loaders

    def _prepared_datamodule(self, *loaders: Any) -> StellarCatalogDataModule:
        """The data module of prepare_data(), after checking that ``loaders`` are its own."""
        if getattr(self, "datamodule_", None) is None:
            raise ConfigError("no data prepared: call prepare_data(data) first (or fit(data))")
        for loader in loaders:
            if loader is None or (isinstance(loader, list) and not loader):
                continue
            if not any(loader is own for own in self._loaders):
                raise ConfigError(
                    "this loader does not come from prepare_data(): the model trains on the catalogue "
                    "given to prepare_data(data, batch_size=...); call it again to change either"
                )
        return self.datamodule_

    # ------------------------------------------------------------------ training
    def _record_history(self, phase: str) -> pd.DataFrame:
        """Read a phase's CSV log into ``history_``: a new autoencoder starts it afresh, a new
        clustering phase replaces the previous one's rows."""
        frame = _history_from_csv(self._run_dir() / "csv" / PHASE_LOG_VERSIONS[phase] / "metrics.csv", phase)
        previous = getattr(self, "history_", None)
        if phase == "autoencoder" or previous is None:
            self.history_ = frame
        else:
            self.history_ = pd.concat([previous[previous["phase"] != phase], frame], ignore_index=True)
        return frame

    def pretrain_autoencoder(
        self, train_loader: Any = None, val_loader: Any = None, epochs: int | None = None
    ) -> pd.DataFrame:
        """Train the autoencoder phase (``grasp-dl train``'s first phase) and return its history per epoch."""
        datamodule = self._prepared_datamodule(train_loader, val_loader)
        cfg = self.compose_config([] if epochs is None else [f"model.pretrain_epochs={int(epochs)}"])
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.autoencoder_ = pipeline.pretrain_autoencoder(cfg, datamodule)
        self.module_ = None
        return self._record_history("autoencoder")

    def train_deep_clustering(self, train_loader: Any = None, epochs: int | None = None) -> pd.DataFrame:
        """Train the clustering phase (DEC, IDEC or VaDE) from the pretrained autoencoder; return its history."""
        datamodule = self._prepared_datamodule(train_loader)
        if getattr(self, "autoencoder_", None) is None:
            raise ConfigError("no pretrained autoencoder: call pretrain_autoencoder() first (or fit(data))")
        cfg = self.compose_config([] if epochs is None else [f"trainer.max_epochs={int(epochs)}"])
        module = pipeline.build_clustering_module(cfg.model, self.autoencoder_, datamodule)
        trainer = pipeline.build_trainer(cfg, has_validation=datamodule.has_validation)
        trainer.fit(module, datamodule=datamodule)
        checkpoint = self._run_dir() / "checkpoints" / "last.ckpt"
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics.update(pipeline.clustering_scores(module, datamodule))
        written = checkpoint if checkpoint.is_file() else None
        self._set_trained(pipeline.TrainResult(module, datamodule, self._run_dir(), written, metrics), cfg)
        return self._record_history("clustering")

    def _set_trained(self, result: pipeline.TrainResult, cfg: DictConfig) -> None:
        """Keep what a clustering phase produced."""
        self.module_ = result.module.eval()
        self.checkpoint_ = result.checkpoint
        self.metrics_ = result.metrics
        self.summary_ = pipeline.summarise(result, cfg)

    def fit(self, data: Any, y: Any = None) -> DeepClusteringModel:
        """Both phases in one go, through ``pipeline.train`` exactly as ``grasp-dl train`` (``y`` is ignored)."""
        self.prepare_data(data)
        cfg = self.compose_config()
        result = pipeline.train(cfg, datamodule=self.datamodule_)
        autoencoder_ckpt = self._run_dir() / "checkpoints" / "autoencoder" / "last.ckpt"
        self.autoencoder_ = None
        if autoencoder_ckpt.is_file():
            from grasp_dl.models.autoencoder import AutoencoderModule

            self.autoencoder_ = AutoencoderModule.load_from_checkpoint(autoencoder_ckpt, map_location="cpu")
        self._set_trained(result, cfg)
        self._record_history("autoencoder")
        self._record_history("clustering")
        return self

    # ------------------------------------------------------------------ prediction
    def _fitted_module(self) -> L.LightningModule:
        """The trained clustering module on the inference device, in eval mode."""
        module = getattr(self, "module_", None)
        if module is None:
            raise ConfigError(
                "this model has no clustering module yet: call fit(data), or train_deep_clustering() "
                "after pretrain_autoencoder(), or load a checkpoint with DeepClusteringModel.load(path)"
            )
        return module.to(inference_device(self.device)).eval()

    def _catalog_for(self, data: Any, module: L.LightningModule) -> Any:
        """A catalogue predict_catalog reads: ``data`` itself, or a feature array with the model's names."""
        if not _is_array(data):
            return data
        features = list(module.hparams.preprocessing["features"])
        positional = sorted(POSITIONAL_FEATURES & set(features))
        if positional:
            raise ConfigError(
                f"this model uses sky positions ({', '.join(positional)}), computed from ra/dec around its "
                "centre: pass the catalogue (DataFrame, Table or path), not a feature array"
            )
        return _array_frame(data, features)

    def predict_table(
        self,
        data: Any,
        center: str | Sequence[float] | None = None,
        member_group: int | None = None,
        score_no_astrometry: bool = False,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """``grasp-dl predict`` in memory: the per-star table (one row per input row) and the cluster summary.

        ``center`` as in ``grasp-dl predict``: None for the training centre, 'auto' for the
        catalogue's own density peak (another cluster's cone), or [ra, dec].
        ``score_no_astrometry`` as in ``grasp-dl predict``: stars with a position but no proper
        motion or parallax get a member probability from their radius alone (models trained with
        the spatial prior), flagged ``scored:no_astrometry``.
        """
        module = self._fitted_module()
        return predict_catalog(
            module,
            self._catalog_for(data, module),
            member_group=member_group,
            center=center,
            score_no_astrometry=score_no_astrometry,
        )

    def predict_clusters(
        self, data: Any, center: str | Sequence[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probabilities) per input row; -1 and NaN where a star could not be scored."""
        table, _ = self.predict_table(data, center)
        prob_columns = [f"prob_{j}" for j in range(self._fitted_module().hparams.n_clusters)]
        return table["label"].to_numpy(), table[prob_columns].to_numpy(dtype=float)

    def predict(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Most probable group per input row (-1 where not scored)."""
        return self.predict_clusters(data, center)[0]

    def predict_proba(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Probability of each group per input row (NaN rows where not scored)."""
        return self.predict_clusters(data, center)[1]

    def fit_predict(self, data: Any, y: Any = None) -> np.ndarray:
        """Train on ``data`` and return its groups."""
        return self.fit(data).predict(data)

    def _prepare(self, data: Any, center: str | Sequence[float] | None) -> tuple[PreparedCatalog, np.ndarray]:
        """Prepare ``data`` as predict_catalog does (stored features, centre, cuts and scaler)."""
        module = self._fitted_module()
        ready = prepare_for_module(module, self._catalog_for(data, module), center)
        return ready.prepared, ready.scaled

    def get_latent_representation(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Latent point of every input row (the VaDE mean; NaN rows where not scored)."""
        module = self._fitted_module()
        prepared, scaled = self._prepare(data, center)
        latent = np.full((prepared.n_rows, module.hparams.latent_dim), np.nan)
        if len(scaled):
            latent[prepared.mask] = module.embed(torch.from_numpy(scaled)).float().cpu().numpy()
        return latent

    def evaluate_clustering(
        self,
        data: Any,
        true_labels: Any,
        member_label: Any = "cluster",
        center: str | Sequence[float] | None = None,
    ) -> dict[str, float | int]:
        """Metrics against the truth (:func:`grasp_dl.metrics.evaluate_clustering`), with member_prob and features.

        ``true_labels`` is one label per input row, or the name of a catalogue column (e.g. 'truth').
        """
        from grasp_dl.metrics import evaluate_clustering

        table, _ = self.predict_table(data, center)
        truth = read_catalog(data)[true_labels].to_numpy() if isinstance(true_labels, str) else np.asarray(true_labels)
        prepared, scaled = self._prepare(data, center)
        features = np.full((prepared.n_rows, scaled.shape[1]), np.nan)
        features[prepared.mask] = scaled
        return evaluate_clustering(
            truth,
            table["label"].to_numpy(),
            features,
            member_label=member_label,
            member_prob=np.nan_to_num(table["member_prob"].to_numpy(dtype=float), nan=0.0),
        )

    def cluster_statistics(
        self, data: Any, columns: Sequence[str] | None = None, center: str | Sequence[float] | None = None
    ) -> pd.DataFrame:
        """:func:`cluster_statistics` of the predicted groups, with a column marking the cluster's group."""
        table, summary = self.predict_table(data, center)
        catalog = self._catalog_for(data, self._fitted_module())
        stats = cluster_statistics(catalog, table["label"].to_numpy(), columns)
        stats["is_cluster"] = stats.index == summary["member_group"]
        return stats

    def save_predictions(
        self, data: Any, path: str | os.PathLike[str], center: str | Sequence[float] | None = None
    ) -> tuple[Path, Path]:
        """Write the per-star table (CSV, Parquet, FITS, VOTable or ECSV by suffix) and its JSON summary beside it."""
        table, summary = self.predict_table(data, center)
        output = write_catalog(table, path)
        summary_path = output.with_name(output.name.split(".")[0] + ".summary.json")
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        return output, summary_path

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: str | os.PathLike[str]) -> Path:
        """Write the clustering module as a Lightning checkpoint (loads with ``grasp-dl predict`` too)."""
        module = self._fitted_module()
        checkpoint: dict[str, Any] = {
            "epoch": int(getattr(module, "current_epoch", 0) or 0),
            "global_step": int(getattr(module, "global_step", 0) or 0),
            "pytorch-lightning_version": L.__version__,
            "state_dict": {key: value.detach().cpu() for key, value in module.state_dict().items()},
            "hyper_parameters": copy.deepcopy(dict(module.hparams)),
        }
        module.on_save_checkpoint(checkpoint)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
        return path

    def _adopt(self, module: L.LightningModule, checkpoint: Path | None) -> DeepClusteringModel:
        """Take a loaded clustering module as this model's, its network sizes included."""
        hp = module.hparams
        prep = hp.get("preprocessing") or {}
        self.input_dim = int(hp.input_dim)
        self.latent_dim = int(hp.latent_dim)
        self.n_clusters = int(hp.n_clusters)
        self.hidden_dims = tuple(int(h) for h in hp.hidden_dims)
        self.dropout = float(hp.dropout)
        self.model = str(hp.get("variant", "vade"))
        self.features = tuple(prep.get("features", self.features))
        self.module_ = module.eval()
        self.autoencoder_ = None
        self.checkpoint_ = checkpoint
        self.feature_names_ = list(prep.get("feature_names", []))
        self.n_features_in_ = self.input_dim
        history = None
        if checkpoint is not None and checkpoint.parent.name == "checkpoints":
            history = run_history(checkpoint.parent.parent)
        self.history_ = history if history is not None else pd.DataFrame(columns=["phase", "epoch"])
        return self

    def load_model(self, path: str | os.PathLike[str]) -> DeepClusteringModel:
        """Load a DEC or VaDE checkpoint (from save_model or ``grasp-dl train``) into this model."""
        return self._adopt(load_clustering_module(path), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], **params: Any) -> DeepClusteringModel:
        """A model from a checkpoint written by ``grasp-dl train`` (or save_model); ``params`` e.g. device='cpu'."""
        return cls(**params).load_model(path)

    @classmethod
    def from_module(cls, module: L.LightningModule, **params: Any) -> DeepClusteringModel:
        """A model around a trained DEC or VaDE module already in memory (e.g. ``pipeline.train(cfg).module``)."""
        return cls(**params)._adopt(module, None)

    @property
    def member_group_(self) -> int:
        """The group that is the globular cluster."""
        return int(self._fitted_module().member_group)

    # ------------------------------------------------------------------ figures
    def plot_training_history(self, metrics: Sequence[str] | None = None) -> Figure:
        """Losses per epoch of each phase trained (or read from a loaded run's logs)."""
        history = getattr(self, "history_", None)
        if history is None or history.empty:
            raise ConfigError("no training history: train the model first (a bare checkpoint carries none)")
        return plotting.plot_training_history(history, metrics)

    def plot_latent_space(
        self,
        data: Any,
        labels: Any = None,
        method: str = "pca",
        center: str | Sequence[float] | None = None,
        max_points: int = 20_000,
    ) -> Figure:
        """The latent space of ``data`` in 2-D (PCA, or t-SNE), coloured by ``labels`` (default: the predicted groups).

        ``labels`` is one per input row, or the name of a catalogue column (e.g. 'truth').
        """
        latent = self.get_latent_representation(data, center)
        if labels is None:
            labels = self.predict(data, center)
        elif isinstance(labels, str):
            labels = read_catalog(data)[labels].to_numpy()
        labels = np.asarray(labels)
        if len(labels) != len(latent):
            raise ConfigError(f"labels has {len(labels)} rows but the catalogue {len(latent)}: one per star")
        scored = np.isfinite(latent).all(axis=1)
        return plotting.plot_latent_space(latent[scored], labels[scored], method=method, max_points=max_points)

    def plot_members(self, data: Any, center: str | Sequence[float] | None = None, title: str | None = None) -> Figure:
        """Proper motions, sky and colour-magnitude diagram of ``data`` coloured by membership probability."""
        table, summary = self.predict_table(data, center)
        catalog = self._catalog_for(data, self._fitted_module())
        return plotting.plot_membership(catalog, table["member_prob"], summary["center"], title=title)


#: Where a run directory keeps each phase's logs: CSV folders to try (the CLI's, the facade's),
#: then the TensorBoard folder.
RUN_LOG_FOLDERS = {
    "autoencoder": (("autoencoder",), "autoencoder"),
    "clustering": (("", PHASE_LOG_VERSIONS["clustering"]), ""),
}


def _phase_history(run_dir: Path, phase: str) -> pd.DataFrame:
    """One phase's history from the first CSV log found, else from its TensorBoard events."""
    from grasp_dl.tensorboard import read_scalars

    csv_folders, tensorboard_folder = RUN_LOG_FOLDERS[phase]
    for folder in csv_folders:
        frame = _history_from_csv(run_dir / "csv" / folder / "metrics.csv", phase)
        if not frame.empty:
            return frame
    return read_scalars(run_dir / "tensorboard" / tensorboard_folder, phase)


def run_history(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """Per-epoch history of a ``grasp-dl train`` run directory from its CSV or TensorBoard logs (None if neither)."""
    frames = [_phase_history(Path(run_dir), phase) for phase in RUN_LOG_FOLDERS]
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else None


# ----------------------------------------------------------------------------- GRASP


def _as_model(model: Any) -> DeepClusteringModel:
    """A DeepClusteringModel from a model, a trained clustering module or a checkpoint path."""
    if isinstance(model, DeepClusteringModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return DeepClusteringModel.load(model)
    if isinstance(model, L.LightningModule):
        return DeepClusteringModel.from_module(model)
    raise ConfigError(
        f"cannot predict with a {type(model).__name__}: pass a DeepClusteringModel, a trained DEC/VaDE "
        "module or a checkpoint path"
    )


def _with_columns(table: Any, labels: np.ndarray, prob: np.ndarray, inplace: bool) -> Any:
    """``table`` (DataFrame or astropy Table) with the membership columns set, copied unless ``inplace``."""
    out = table if inplace else table.copy()
    out[CLUSTER_COLUMN] = labels
    out[PROBABILITY_COLUMN] = prob
    return out


def add_membership_columns(
    sample_or_table: Any,
    model: Any,
    *,
    center: str | Sequence[float] | None = None,
    inplace: bool = False,
) -> Any:
    """Write ``dl_cluster`` (group, -1 if not scored) and ``dl_probability`` (member_prob, NaN if not scored).

    Takes a DataFrame or astropy Table of Gaia columns, or a GRASP sample (an object whose
    ``.data`` holds one), and returns the same kind of object with the rows in their order:
    a copy unless ``inplace`` (then the given object, its ``.data`` changed). ``model`` is a
    DeepClusteringModel, a trained DEC/VaDE module or a checkpoint path; ``center`` as in
    :meth:`DeepClusteringModel.predict_table` ('auto' for another cluster's cone).
    """
    inner = getattr(sample_or_table, "data", None)
    wrapped = not isinstance(sample_or_table, (pd.DataFrame, Table)) and isinstance(inner, (pd.DataFrame, Table))
    table = inner if wrapped else sample_or_table
    if not isinstance(table, (pd.DataFrame, Table)):
        raise CatalogError(
            f"add_membership_columns takes a DataFrame, an astropy Table or an object whose .data holds one, "
            f"got a {type(sample_or_table).__name__}: for a file, read it first with grasp_dl.read_catalog(path)"
        )
    predictions, _ = _as_model(model).predict_table(table, center)
    labels = predictions["label"].to_numpy()
    prob = predictions["member_prob"].to_numpy(dtype=float)
    new_table = _with_columns(table, labels, prob, inplace)
    if not wrapped:
        return new_table
    sample = sample_or_table if inplace else copy.copy(sample_or_table)
    sample.data = new_table
    return sample
