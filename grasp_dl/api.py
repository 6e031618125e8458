"""The notebook face: :class:`DeepClusteringModel`, a scikit-learn-style estimator with the seed's method names.

``fit`` *is* ``grasp-dl train`` on an in-memory catalogue: the facade trains through
:mod:`grasp_dl.jobs.train` with a config composed from ``conf/``, so a notebook gets the command
line's modules, Trainer, callbacks, loggers and checkpoints. The seed's step-by-step methods
(``prepare_data``, ``pretrain_autoencoder``, ``train_deep_clustering``) run the same two phases
one at a time; predictions go through :func:`grasp_dl.inference.predict.predict_catalog`, as
``grasp-dl predict``.

A method's ``data`` is a catalogue path, a DataFrame or astropy Table of Gaia columns, an object
whose ``.data`` holds one (a GRASP sample), or an array of features (stars x features in the
model's ``features`` order; a model trained on sky positions needs the catalogue itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure
from omegaconf import DictConfig, open_dict
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from grasp_dl.data.arrays import feature_frame, is_feature_array
from grasp_dl.data.catalog import read_catalog, write_catalog
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.loader import TensorBatchLoader
from grasp_dl.data.prepare import DEFAULT_FEATURES, PreparedCatalog
from grasp_dl.data.statistics import cluster_statistics
from grasp_dl.figures import plotting
from grasp_dl.inference.outputs import write_summary
from grasp_dl.inference.predict import load_clustering_module, predict_catalog, prepare_for_module
from grasp_dl.jobs import train as pipeline
from grasp_dl.jobs.run_history import history_from_csv, run_history
from grasp_dl.membership.summary import ClusterSummary
from grasp_dl.runtime.capabilities import HasLatentSpace
from grasp_dl.runtime.config import conf_dir
from grasp_dl.runtime.devices import inference_device, trainer_overrides
from grasp_dl.runtime.errors import ConfigError, GraspDLError
from grasp_dl.runtime.io_policy import refuse_overwriting_inputs
from grasp_dl.runtime.run_dir import AUTOENCODER_PHASE, CLUSTERING_PHASE, CSV, RunDir, summary_path

__all__ = ["DeepClusteringModel", "NotFittedError"]

#: Clustering model configs of conf/model/ the facade trains (each with an autoencoder phase).
MODELS = ("auto", "dec", "idec", "vade", "xd", "multimodal")
#: Models without an autoencoder phase (no network options, no pretraining).
SINGLE_PHASE_MODELS = ("auto", "xd", "multimodal")
#: What model="auto" trains when the deep phases are asked for one by one (pretrain_autoencoder, ...).
AUTO_DEEP_MODEL = "dec"
#: Features computed from ra/dec around a centre: an array cannot provide them.
POSITIONAL_FEATURES = frozenset({"ra", "dec", "xi", "eta", "radius"})
#: Version (folder) of each phase's CSV log; the autoencoder's is set by pipeline._phase_config.
PHASE_LOG_VERSIONS = {AUTOENCODER_PHASE: AUTOENCODER_PHASE, CLUSTERING_PHASE: CLUSTERING_PHASE}


class NotFittedError(GraspDLError, SklearnNotFittedError):
    """A :class:`DeepClusteringModel` method needs a trained (or loaded) model, or an earlier step.

    Both a :class:`grasp_dl.runtime.errors.GraspDLError` (the command line and notebooks report it in one
    line) and a :class:`sklearn.exceptions.NotFittedError` (scikit-learn's tools recognise it).
    It lives here rather than in :mod:`grasp_dl.runtime.errors` so that importing the package's error
    types does not import scikit-learn.
    """


def _hydra_list(values: Sequence[Any]) -> str:
    """A Python sequence as a Hydra override value, e.g. [64,32,16]."""
    return "[" + ",".join(str(v) for v in values) + "]"


# ----------------------------------------------------------------------------- the facade


class DeepClusteringModel(BaseEstimator):
    """Autoencoder + DEC / IDEC / VaDE clustering of a stellar catalogue, for notebooks.

    The seed's interface on the Lightning modules of ``grasp-dl train``, as a scikit-learn
    estimator: ``__init__`` only stores its arguments, which no method changes afterwards (a
    loaded checkpoint's sizes are in ``n_clusters_``, ``latent_dim_``, ...); what training or
    loading produces ends in ``_``; a method that needs a trained model raises
    :class:`NotFittedError` before one is trained or loaded. Any other setting of ``conf/`` is a
    Hydra override in ``overrides``.

    Parameters
    ----------
    input_dim : int, optional
        Checked against the number of prepared features when given.
    latent_dim : int, default 8
        Size of the latent space.
    n_clusters : int, default 3
        Number of groups.
    hidden_dims : sequence of int, default (64, 32, 16)
        Widths of the encoder's hidden layers (the decoder mirrors them).
    device : str, default 'auto'
        'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
    model : str, default 'auto'
        'auto' (the default setting of ``grasp-dl train``: ``xd`` where the catalogue has the
        proper-motion errors, else ``dec``; the step-by-step ``pretrain_autoencoder`` /
        ``train_deep_clustering`` train ``dec``), 'xd', 'multimodal' (astrometry and the
        colour-magnitude diagram), 'dec', 'idec' or 'vade'.
    features : sequence of str
        Catalogue columns (or derived ones: xi, eta, radius, colours) the model learns from.
    center : [ra, dec], optional
        Centre of the tangent-plane projection; None estimates it from the catalogue.
    pretrain_epochs : int, default 20
        Epochs of the autoencoder phase.
    epochs : int or None, default None
        Epochs of the clustering phase; None takes the model's own (``model=xd``: one per EM
        iteration, up to ``model.max_iter``), else 20.
    batch_size : int or None, default None
        Stars per mini-batch; None takes the model's own (``model=xd``: E-step batches of 65,536
        stars), else 256.
    val_fraction : float, default 0.1
        Share of the stars held out for validation.
    dropout : float, default 0.1
        Dropout of the autoencoder.
    seed : int or None, default 42
        Seeds every generator at the start of training; None leaves them as they are.
    output_dir : str or PathLike, optional
        Where checkpoints, TensorBoard and CSV logs go; by default ``outputs/notebook/<date>_<time>``.
    progress_bar : bool, default True
        Show Lightning's progress bar.
    cluster : str, optional
        A globular cluster by name with forgiving spelling (``"NGC 6397"``, ``"M4"``, ``"47 Tuc"``;
        :mod:`grasp_dl.data.clusters`): its published centre unless ``center`` is given, and
        predictions compare the recovered mean proper motion and parallax with the published ones.
    overrides : sequence of str
        Hydra overrides of ``conf/train.yaml``, e.g. ``'model.kernel=dec'``,
        ``'trainer.precision=bf16-mixed'``; applied last.

    Attributes
    ----------
    module_ : LightningModule
        The trained clustering module.
    autoencoder_ : AutoencoderModule or None
        The pretrained autoencoder (None for a loaded checkpoint).
    datamodule_ : StellarCatalogDataModule
        The prepared training catalogue.
    checkpoint_ : Path or None
        The checkpoint the clustering module was written to (or loaded from).
    history_ : DataFrame
        Metrics per epoch and phase.
    metrics_ : dict
        Final metrics of the clustering phase.
    model_, n_clusters_, latent_dim_, hidden_dims_, features_
        The trained module's kind and sizes.
    feature_names_ : list of str
        The prepared feature columns, in order.
    n_features_in_ : int
        Their number.
    cluster_group_ : int
        The group that is the globular cluster.
    output_dir_ : Path
        The run directory in use.
    """

    def __init__(
        self,
        input_dim: int | None = None,
        latent_dim: int = 8,
        n_clusters: int = 3,
        hidden_dims: Sequence[int] = (64, 32, 16),
        device: str = "auto",
        model: str = "auto",
        *,
        features: Sequence[str] = DEFAULT_FEATURES,
        center: Sequence[float] | None = None,
        cluster: str | None = None,
        pretrain_epochs: int = 20,
        epochs: int | None = None,
        batch_size: int | None = None,
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
    def _model_choice(self, deep: bool) -> str:
        """The ``model=`` to compose: ``model`` itself, or DEC for 'auto' when the deep phases are asked for."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown model={self.model!r}: choose one of {', '.join(MODELS)}")
        return AUTO_DEEP_MODEL if deep and self.model == "auto" else self.model

    def config_overrides(self, deep: bool = False) -> list[str]:
        """The Hydra overrides of conf/train.yaml these parameters stand for (the user's last).

        Parameters
        ----------
        deep : bool, default False
            For the step-by-step deep phases (``model='auto'`` then means DEC).

        Returns
        -------
        list of str
        """
        model = self._model_choice(deep)
        network = (
            []
            if model in SINGLE_PHASE_MODELS
            else [
                f"model.n_clusters={int(self.n_clusters)}",
                f"model.pretrain.latent_dim={int(self.latent_dim)}",
                f"model.pretrain.hidden_dims={_hydra_list([int(h) for h in self.hidden_dims])}",
                f"model.pretrain.dropout={float(self.dropout)}",
                f"model.pretrain_epochs={int(self.pretrain_epochs)}",
            ]
        )
        overrides = [
            f"model={model}",
            "data=catalog",
            *network,
            *([] if self.epochs is None else [f"trainer.max_epochs={int(self.epochs)}"]),
            f"trainer.enable_progress_bar={str(bool(self.progress_bar)).lower()}",
            f"data.features={_hydra_list(self.features)}",
            *([] if self.batch_size is None else [f"data.batch_size={int(self.batch_size)}"]),
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

    def compose_config(self, extra: Sequence[str] = (), deep: bool = False) -> DictConfig:
        """The full training config, as ``grasp-dl train <overrides>`` would compose it.

        A CSV logger is always added (``<output_dir>/csv/<phase>``): ``history_`` is read from it.
        """
        output_dir = self._run_dir()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[*self.config_overrides(deep), *extra])
            if cfg.model.get("fallback_model"):
                # model='auto' falls back to the deep model with this estimator's network sizes
                fallback = compose("train", overrides=[*self.config_overrides(deep=True), *extra]).model
                with open_dict(cfg):
                    cfg.model.fallback_model = fallback
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            if cfg.get("logger") is None:
                cfg.logger = {}
            cfg.logger.csv = {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": str(output_dir),
                "name": CSV,
                "version": PHASE_LOG_VERSIONS[CLUSTERING_PHASE],
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
        if not is_feature_array(data):
            return data, {}
        names = self._array_feature_names(int(np.shape(data)[1]) if np.ndim(data) == 2 else 0)
        return feature_frame(data, names), {"features": names, "center": None}

    def prepare_data(self, data: Any, batch_size: int | None = None) -> tuple[TensorBatchLoader, Any]:
        """Prepare a catalogue once (features, cuts, scaler, split) and return (train_loader, val_loader).

        The loaders are the data module's (batches are slices of one tensor); ``val_loader`` is
        an empty list when ``val_fraction`` is 0. Pass them to :meth:`pretrain_autoencoder` and
        :meth:`train_deep_clustering`. The data module is built by :func:`pipeline.build_datamodule`,
        as for ``grasp-dl train``.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The training catalogue.
        batch_size : int, optional
            Overrides ``batch_size``.

        Returns
        -------
        tuple
            ``(train_loader, val_loader)``.

        Raises
        ------
        ConfigError
            When ``input_dim`` is given and differs from the number of prepared features.
        CatalogError
            When the catalogue lacks what the features need.
        """
        cfg = self.compose_config([] if batch_size is None else [f"data.batch_size={int(batch_size)}"])
        catalog, changes = self._training_catalog(data)
        datamodule = pipeline.build_datamodule(cfg, catalog=catalog, **changes)
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
            raise NotFittedError("no data prepared: call prepare_data(data) first (or fit(data))")
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
        frame = history_from_csv(RunDir.at(self._run_dir()).csv_metrics(PHASE_LOG_VERSIONS[phase]), phase)
        previous = getattr(self, "history_", None)
        if phase == "autoencoder" or previous is None:
            self.history_ = frame
        else:
            self.history_ = pd.concat([previous[previous["phase"] != phase], frame], ignore_index=True)
        return frame

    def pretrain_autoencoder(
        self, train_loader: Any = None, val_loader: Any = None, epochs: int | None = None
    ) -> pd.DataFrame:
        """Train the autoencoder phase (``grasp-dl train``'s first phase) through :func:`pipeline.pretrain_autoencoder`.

        Parameters
        ----------
        train_loader, val_loader : loaders from :meth:`prepare_data`, optional
            Checked to be this model's own; the data module of :meth:`prepare_data` is trained on.
        epochs : int, optional
            Overrides ``pretrain_epochs``.

        Returns
        -------
        DataFrame
            The phase's history per epoch (also in ``history_``).

        Raises
        ------
        NotFittedError
            Before :meth:`prepare_data`.
        ConfigError
            For a loader that does not come from :meth:`prepare_data`.
        """
        datamodule = self._prepared_datamodule(train_loader, val_loader)
        if self._model_choice(deep=True) in SINGLE_PHASE_MODELS:
            raise ConfigError(f"model={self.model!r} has no autoencoder phase: call fit(data) instead")
        cfg = self.compose_config([] if epochs is None else [f"model.pretrain_epochs={int(epochs)}"], deep=True)
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True, verbose=False)
        self.autoencoder_ = pipeline.pretrain_autoencoder(cfg, datamodule)
        self.module_ = None
        return self._record_history("autoencoder")

    def train_deep_clustering(self, train_loader: Any = None, epochs: int | None = None) -> pd.DataFrame:
        """Train the clustering phase (DEC, IDEC or VaDE) from ``autoencoder_`` through :func:`pipeline.train`.

        Parameters
        ----------
        train_loader : loader from :meth:`prepare_data`, optional
            Checked to be this model's own.
        epochs : int, optional
            Overrides ``epochs``.

        Returns
        -------
        DataFrame
            The phase's history per epoch (``history_`` keeps the autoencoder's rows before it).

        Raises
        ------
        NotFittedError
            Before :meth:`prepare_data` or :meth:`pretrain_autoencoder`.
        ConfigError
            For a loader that does not come from :meth:`prepare_data`.
        """
        datamodule = self._prepared_datamodule(train_loader)
        if getattr(self, "autoencoder_", None) is None:
            raise NotFittedError("no pretrained autoencoder: call pretrain_autoencoder() first (or fit(data))")
        cfg = self.compose_config([] if epochs is None else [f"trainer.max_epochs={int(epochs)}"], deep=True)
        result = pipeline.train(cfg, datamodule=datamodule, autoencoder=self.autoencoder_)
        self._set_trained(result, cfg)
        return self._record_history(CLUSTERING_PHASE)

    def _set_trained(self, result: pipeline.TrainResult, cfg: DictConfig) -> None:
        """Keep what a clustering phase produced."""
        self._set_module(result.module, result.checkpoint)
        self.metrics_ = result.metrics
        self.summary_ = pipeline.summarise(result, cfg)

    def _set_module(self, module: L.LightningModule, checkpoint: Path | None) -> None:
        """The fitted attributes a trained clustering module gives (the constructor's stay as given)."""
        hp = module.hparams
        prep = hp.get("preprocessing") or {}
        self.module_ = module.eval()
        self.checkpoint_ = checkpoint
        self.model_ = pipeline.module_model_name(module)
        self.n_clusters_ = int(hp.n_clusters)
        # a model without a network (model=xd) has neither
        self.latent_dim_ = int(hp.latent_dim) if "latent_dim" in hp else None
        self.hidden_dims_ = tuple(int(h) for h in hp.hidden_dims) if "hidden_dims" in hp else None
        self.features_ = tuple(prep.get("features", ()))
        self.feature_names_ = list(prep.get("feature_names", []))
        self.n_features_in_ = int(hp.input_dim)

    def fit(self, data: Any, y: Any = None) -> DeepClusteringModel:
        """Both phases in one go, through :func:`pipeline.train` exactly as ``grasp-dl train``.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        y : ignored
            Present for scikit-learn's API.

        Returns
        -------
        DeepClusteringModel
            ``self``, fitted.
        """
        self.prepare_data(data)
        cfg = self.compose_config()
        result = pipeline.train(cfg, datamodule=self.datamodule_)
        autoencoder_ckpt = RunDir.from_config(cfg).last_checkpoint(AUTOENCODER_PHASE)
        self.autoencoder_ = None
        if autoencoder_ckpt.is_file():
            from grasp_dl.models.autoencoder import AutoencoderModule
            from grasp_dl.runtime.checkpoints import AUTOENCODER, load_module

            self.autoencoder_ = load_module(AutoencoderModule, autoencoder_ckpt, kinds=(AUTOENCODER,))
        self._set_trained(result, cfg)
        self._record_history(AUTOENCODER_PHASE)
        self._record_history(CLUSTERING_PHASE)
        return self

    # ------------------------------------------------------------------ prediction
    def _fitted_module(self) -> L.LightningModule:
        """The trained clustering module on the inference device, in eval mode."""
        module = getattr(self, "module_", None)
        if module is None:
            raise NotFittedError(
                "this model has no clustering module yet: call fit(data), or train_deep_clustering() "
                "after pretrain_autoencoder(), or load a checkpoint with DeepClusteringModel.load(path)"
            )
        return module.to(inference_device(self.device)).eval()

    def _catalog_for(self, data: Any, module: L.LightningModule) -> Any:
        """A catalogue predict_catalog reads: ``data`` itself, or a feature array with the model's names."""
        if not is_feature_array(data):
            return data
        features = list(module.hparams.preprocessing["features"])
        positional = sorted(POSITIONAL_FEATURES & set(features))
        if positional:
            raise ConfigError(
                f"this model uses sky positions ({', '.join(positional)}), computed from ra/dec around its "
                "centre: pass the catalogue (DataFrame, Table or path), not a feature array"
            )
        return feature_frame(data, features)

    def predict_table(
        self,
        data: Any,
        center: str | Sequence[float] | None = None,
        cluster_group: int | None = None,
        score_no_astrometry: bool = False,
    ) -> tuple[pd.DataFrame, ClusterSummary]:
        """``grasp-dl predict`` in memory: the per-star table (one row per input row) and the cluster summary.

        ``center`` as in ``grasp-dl predict``: None for the training centre, 'auto' for the
        catalogue's own density peak (another cluster's cone), or [ra, dec].
        ``score_no_astrometry`` as in ``grasp-dl predict``: stars with a position but no proper
        motion or parallax get a member probability from their radius alone (models trained with
        the spatial prior), flagged ``scored:no_astrometry``.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue.
        center : 'auto' or [ra, dec], optional
            The projection centre (see above).
        cluster_group : int, optional
            The group scored as the cluster; by default the model's ``cluster_group_``.
        score_no_astrometry : bool, default False
            Score 2-parameter stars from their position (see above).

        Returns
        -------
        table : DataFrame
            One row per input row (:func:`grasp_dl.inference.predict.predict_catalog`).
        summary : ClusterSummary
            The cluster summary (its ``to_dict()`` is what ``<stem>.summary.json`` holds; it also
            reads as that dictionary).

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        ConfigError
            For a ``cluster_group`` the model does not have.
        """
        module = self._fitted_module()
        return predict_catalog(
            module,
            self._catalog_for(data, module),
            cluster_group=cluster_group,
            center=center,
            score_no_astrometry=score_no_astrometry,
        )

    def predict_clusters(self, data: Any, center: str | Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Group and group probabilities of every input row.

        Row-aligned with the catalogue for a catalogue, a GRASP sample, or what
        :func:`grasp_dl.prepare_stellar_data` returned (its feature matrix included: the rows it
        left out get -1 / NaN); one row per array row for a plain feature array.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        center : 'auto' or [ra, dec], optional
            None uses the training centre, 'auto' the catalogue's own density peak.

        Returns
        -------
        labels : ndarray of int
            Most probable group per row, -1 where the star could not be scored.
        probabilities : ndarray of float
            Stars x groups, NaN rows where not scored.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        ConfigError
            If ``data`` is a slice of a prepared matrix (see :func:`grasp_dl.data.rows.split_prepared`).
        """
        from grasp_dl.data.rows import split_prepared

        data, rows = split_prepared(data, "predict_clusters")
        table, _ = self.predict_table(data, center)
        prob_columns = [f"prob_{j}" for j in range(self._fitted_module().hparams.n_clusters)]
        labels, probs = table["label"].to_numpy(), table[prob_columns].to_numpy(dtype=float)
        if rows is None:
            return labels, probs
        return rows.expand(labels, -1), rows.expand(probs, np.nan)

    def predict(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Most probable group per input row.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        center : 'auto' or [ra, dec], optional
            None uses the training centre, 'auto' the catalogue's own density peak.

        Returns
        -------
        ndarray of int
            -1 where the star could not be scored.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        """
        return self.predict_clusters(data, center)[0]

    def predict_proba(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Probability of each group per input row.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        center : 'auto' or [ra, dec], optional
            None uses the training centre, 'auto' the catalogue's own density peak.

        Returns
        -------
        ndarray of float
            Stars x groups, NaN rows where not scored.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        """
        return self.predict_clusters(data, center)[1]

    def fit_predict(self, data: Any, y: Any = None) -> np.ndarray:
        """Train on ``data`` and return its groups (:meth:`fit` then :meth:`predict`).

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        y : ignored
            Present for scikit-learn's API.

        Returns
        -------
        ndarray of int
            Group per input row, -1 where not scored.
        """
        return self.fit(data).predict(data)

    def _prepare(self, data: Any, center: str | Sequence[float] | None) -> tuple[PreparedCatalog, np.ndarray]:
        """Prepare ``data`` as predict_catalog does (stored features, centre, cuts and scaler)."""
        module = self._fitted_module()
        ready = prepare_for_module(module, self._catalog_for(data, module), center)
        return ready.prepared, ready.scaled

    def get_latent_representation(self, data: Any, center: str | Sequence[float] | None = None) -> np.ndarray:
        """Latent point of every input row (for VaDE, the mean of q(z|x)).

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        center : 'auto' or [ra, dec], optional
            None uses the training centre, 'auto' the catalogue's own density peak.

        Returns
        -------
        ndarray of float
            Stars x ``latent_dim_``, NaN rows where not scored.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        """
        from grasp_dl.data.rows import split_prepared

        data, rows = split_prepared(data, "get_latent_representation")
        module = self._fitted_module()
        if not isinstance(module, HasLatentSpace):
            raise ConfigError(f"{type(module).__name__} has no latent space (no network): use a deep model, e.g. dec")
        prepared, scaled = self._prepare(data, center)
        latent = np.full((prepared.n_rows, module.hparams.latent_dim), np.nan)
        if len(scaled):
            latent[prepared.mask] = module.embed(torch.from_numpy(scaled)).float().cpu().numpy()
        return latent if rows is None else rows.expand(latent, np.nan)

    def evaluate_clustering(
        self,
        data: Any,
        true_labels: Any,
        truth_member_label: Any = "cluster",
        center: str | Sequence[float] | None = None,
    ) -> dict[str, float | int]:
        """Metrics against the truth (:func:`grasp_dl.metrics.evaluate_clustering`), with member_prob and features.

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue.
        true_labels : array-like or str
            One label per input row, or the name of a catalogue column (e.g. 'truth').
        truth_member_label : Any, default 'cluster'
            The true label of cluster members (member precision, recall, F1, Brier score).
        center : 'auto' or [ra, dec], optional
            As in :meth:`predict_table`.

        Returns
        -------
        dict
            The metrics of :func:`grasp_dl.metrics.evaluate_clustering`.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
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
            member_label=truth_member_label,
            member_prob=np.nan_to_num(table["member_prob"].to_numpy(dtype=float), nan=0.0),
        )

    def cluster_statistics(
        self, data: Any, columns: Sequence[str] | None = None, center: str | Sequence[float] | None = None
    ) -> pd.DataFrame:
        """:func:`cluster_statistics` of the predicted groups, with a column marking the cluster's group."""
        table, summary = self.predict_table(data, center)
        catalog = self._catalog_for(data, self._fitted_module())
        stats = cluster_statistics(catalog, table["label"].to_numpy(), columns)
        stats["is_cluster"] = stats.index == summary.cluster_group
        return stats

    def save_predictions(
        self, data: Any, path: str | os.PathLike[str], center: str | Sequence[float] | None = None
    ) -> tuple[Path, Path]:
        """Write the per-star table and its JSON summary beside it (``<stem>.summary.json``).

        Parameters
        ----------
        data : path, DataFrame, Table, GRASP sample or array
            The catalogue (see the module docstring for what a feature array may be).
        path : str or PathLike
            CSV, Parquet, FITS, VOTable or ECSV, by suffix.
        center : 'auto' or [ra, dec], optional
            None uses the training centre, 'auto' the catalogue's own density peak.

        Returns
        -------
        tuple of Path
            The table and the summary file.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        ConfigError
            When ``path`` or its summary is the catalogue file ``data`` itself (nothing is written).
        """
        refuse_overwriting_inputs({"path": path, "path's summary": summary_path(path)}, {"data": data})
        table, summary = self.predict_table(data, center)
        output = write_catalog(table, path)
        return output, write_summary(summary, output)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, path: str | os.PathLike[str]) -> Path:
        """Write the clustering module as a Lightning checkpoint (loads with ``grasp-dl predict`` too).

        The checkpoint is written by a Lightning Trainer (``Trainer.save_checkpoint``), so it holds
        what a checkpoint of ``grasp-dl train`` holds: weights, hyper-parameters and the module's
        own state.

        Parameters
        ----------
        path : str or PathLike
            The checkpoint file; its folder is created.

        Returns
        -------
        Path
            ``path``.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        """
        module = self._fitted_module()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer = L.Trainer(
            accelerator="cpu" if module.device.type == "cpu" else "auto",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.strategy.connect(module)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=True)
        os.replace(tmp, path)
        return path

    def _adopt(self, module: L.LightningModule, checkpoint: Path | None) -> DeepClusteringModel:
        """Take a loaded clustering module as this model's, with its run's history when there is one."""
        self._set_module(module, checkpoint)
        self.autoencoder_ = None
        run = RunDir.of_checkpoint(checkpoint) if checkpoint is not None else None
        history = run_history(run) if run is not None else None
        self.history_ = history if history is not None else pd.DataFrame(columns=["phase", "epoch"])
        return self

    def load_model(self, path: str | os.PathLike[str]) -> DeepClusteringModel:
        """Load a DEC, IDEC or VaDE checkpoint (from :meth:`save_model` or ``grasp-dl train``) into this model.

        The checkpoint's sizes go to the fitted attributes (``n_clusters_``, ``latent_dim_``, ...);
        the constructor's arguments stay as given.

        Parameters
        ----------
        path : str or PathLike
            The checkpoint.

        Returns
        -------
        DeepClusteringModel
            ``self``, fitted; ``history_`` is read from the run's logs when the checkpoint sits in a
            run directory.

        Raises
        ------
        ConfigError
            When the file is missing or holds no clustering module.
        """
        return self._adopt(load_clustering_module(path), Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], **params: Any) -> DeepClusteringModel:
        """A model from a checkpoint written by ``grasp-dl train`` (or :meth:`save_model`).

        Parameters
        ----------
        path : str or PathLike
            The checkpoint.
        **params
            Constructor arguments, e.g. ``device='cpu'``.

        Returns
        -------
        DeepClusteringModel
            A fitted model.
        """
        return cls(**params).load_model(path)

    @classmethod
    def from_module(cls, module: L.LightningModule, **params: Any) -> DeepClusteringModel:
        """A model around a trained clustering module already in memory (e.g. ``pipeline.train(cfg).module``).

        Parameters
        ----------
        module : LightningModule
            A trained DEC, IDEC or VaDE module.
        **params
            Constructor arguments, e.g. ``device='cpu'``.

        Returns
        -------
        DeepClusteringModel
            A fitted model.
        """
        return cls(**params)._adopt(module, None)

    @property
    def cluster_group_(self) -> int:
        """The group that is the globular cluster.

        Raises
        ------
        NotFittedError
            Before the model is trained or loaded.
        """
        return int(self._fitted_module().cluster_group)

    def __sklearn_is_fitted__(self) -> bool:
        """Whether a clustering module is trained or loaded (scikit-learn's ``check_is_fitted``)."""
        return getattr(self, "module_", None) is not None

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
        return plotting.plot_membership(catalog, table["member_prob"], summary.center, title=title)
