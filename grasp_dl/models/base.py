"""ClusteringModule: the one base of every clustering phase (DEC, IDEC, VaDE, and mixtures without a network).

It owns what every clustering phase shares:

* the shared hyper-parameters (``n_clusters``, ``init``, ``n_init``, the network's shape,
  ``optimizer``/``scheduler``, ``preprocessing``, the user's ``cluster_group``, ``seed`` and the
  hard-field switches ``xd``, ``noise_augmentation``, ``spatial_prior``) and **all** their checks,
  which raise :class:`~grasp_dl.runtime.errors.ConfigError` at construction, before any training;
* the shared buffers (``initialized``, the decided cluster group, ``position_model``) and the
  radius-dependent prior (:class:`~grasp_dl.models.spatial.RadialPrior`);
* the start: :meth:`from_autoencoder`, then at the first ``fit`` the training catalogue
  (:meth:`attach_training_catalog`, else the data module's
  :class:`~grasp_dl.data.training_catalog.TrainingCatalogSource`) and :meth:`initialise_from`;
* block training (:class:`~grasp_dl.engine.block_training.BlockTraining`), per-epoch means
  (:class:`~grasp_dl.engine.epoch_means.EpochMeanLogging`), the hard-field ingredients
  (:class:`~grasp_dl.models.ingredients.HardFieldIngredients`); every hook of these calls
  ``super()``, so no base order can drop another's hook (the LR schedulers' stepping included);
* one eval-mode rule for fine-tuning (:meth:`fine_tuning_mode`, at the start of every training batch);
* which group is the globular cluster (:attr:`cluster_group`, :meth:`decide_cluster_group`);
* the optimiser (:meth:`configure_optimizers`), and results computed while training
  (:attr:`fit_results`), saved in the checkpoint apart from the constructor's arguments.

How to add a clustering model: one file + one config
-----------------------------------------------------
1. ``grasp_dl/models/<name>.py``: subclass :class:`ClusteringModule`. Its ``__init__`` takes
   ``input_dim``, ``n_clusters``, its own options and ``**shared`` (passed on to
   ``super().__init__``, which checks and saves them), checks its own options (raise
   ``ConfigError``), saves them with ``self.save_hyperparameters({...})`` and builds its
   parameters. Implement

   - :meth:`predict_proba` (group probabilities of standardised features, rows sum to 1);
   - :meth:`initialise_from` (start the groups from the training catalogue; called once, at
     the start of the first fit: a model fitted by EM can do its whole fit here and override
     ``training_step`` to return None), and :meth:`catalog_needs` if it needs more than the
     features (e.g. ``CatalogNeeds(stars="model=xd")`` for astrometry and errors);
   - :meth:`batch_loss` (the loss of one mini-batch) and ``validation_step`` (log a
     ``val/<name>`` metric) when it trains by gradient;
   - :meth:`load_autoencoder_weights` when it starts from a pretrained autoencoder
     (:meth:`from_autoencoder`); a model without a network leaves it out.

2. ``conf/model/<name>.yaml``: ``_target_`` the class, its options with one-line comments, and
   ``monitor:`` the metric checkpoints and early stopping watch. A model that starts from an
   autoencoder adds ``defaults: [autoencoder@pretrain, _self_]``, ``pretrain_epochs`` and
   ``pretrained_ckpt``; ``pipeline.train`` then runs the autoencoder phase first. Nothing else
   changes: ``pipeline.train`` builds and checks it, prediction loads it from its checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from torch import Tensor

from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog, TrainingCatalogSource
from grasp_dl.engine.block_training import BlockTraining
from grasp_dl.engine.epoch_means import EpochMeanLogging
from grasp_dl.membership.rules import choose_cluster_group
from grasp_dl.models.anchoring import ANCHOR_DEFAULTS, StartAnchor, anchor_options
from grasp_dl.models.clustering import INIT_METHODS
from grasp_dl.models.ingredients import XD_DEFAULTS, HardFieldIngredients, xd_options
from grasp_dl.models.networks import check_network_shape, network_args
from grasp_dl.models.optim import DEFAULT_OPTIMIZER, build_optimizers, plain_config
from grasp_dl.models.spatial import RadialPrior, radius_reader
from grasp_dl.runtime.checkpoints import CLASS_KEY
from grasp_dl.runtime.errors import ConfigError
from grasp_dl.runtime.stage_timer import mark

#: Hyper-parameters of checkpoints written before the base class, and where they went:
#: ``cluster_index`` is now ``cluster_group``; the other two are :attr:`ClusteringModule.fit_results`.
LEGACY_HPARAMS = ("cluster_index", "xd_fit", "n_clusters_curve")
#: Checkpoint key of the results computed while training (CLASS_KEY names the class that wrote it).
FIT_RESULTS_KEY = "fit_results"
#: Classes of checkpoints written before CLASS_KEY, by a parameter only each has.
LEGACY_CLASSES = {"centers": "grasp_dl.models.dec.DECModule", "mixture_means": "grasp_dl.models.vade.VaDEModule"}


def _check_config(config: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """A plain ``_partial_`` config, or ConfigError naming what is wrong with it."""
    plain = plain_config(config)
    if plain is not None and "_target_" not in plain:
        raise ConfigError(f"model.{name} needs a _target_ (e.g. torch.optim.Adam), got {plain}")
    return plain


class ClusteringModule(BlockTraining, EpochMeanLogging, StartAnchor, HardFieldIngredients, L.LightningModule):
    """Base of every clustering phase: shared options, buffers, start, group decision and optimiser.

    Parameters
    ----------
    input_dim : int
        Number of standardised features per star.
    n_clusters : int
        Number of groups (at least 2). ``model.n_clusters=auto`` in a config is resolved by
        ``pipeline.train`` before the module is built.
    init : str
        How the groups start: ``gmm_features`` (a full-covariance Gaussian mixture on the
        standardised features, carried into latent space), ``gmm`` (a mixture on the latent
        points), ``kmeans`` (DEC's choice) or ``xd`` (the error-deconvolved spatial mixture;
        group 0 is then the cluster).
    n_init : int
        Restarts of the initial k-means / mixture fit.
    hidden_dims : sequence of int
        Hidden layer sizes of the network (the autoencoder's when built by :meth:`from_autoencoder`).
    latent_dim : int
        Size of the latent space.
    dropout : float
        Dropout probability in [0, 1).
    batch_norm : bool
        Batch normalisation between the hidden layers.
    optimizer : mapping or None
        ``_partial_`` config of the optimiser; None takes :attr:`default_optimizer`.
    scheduler : mapping or None
        ``_partial_`` config of an epoch-interval learning-rate scheduler, or None.
    preprocessing : mapping or None
        The data module's ``preprocessing_state()`` (features, centre, fitted scaler), stored so
        a checkpoint alone prepares a new catalogue.
    cluster_group : int or None
        The user's choice of the group that is the globular cluster; None decides it from the data.
    seed : int
        Seed of the initial fit and of sampled predictions.
    xd : mapping
        Switches of the error-deconvolved mixture of ``init='xd'`` (see
        :data:`~grasp_dl.models.ingredients.XD_DEFAULTS`).
    noise_augmentation : bool
        Train on stars re-observed with their own errors.
    spatial_prior : bool
        Radius-dependent group weights (a Plummer profile for the cluster, flat for the field).
    anchor : mapping or None
        Keeping the start's cluster group (:mod:`grasp_dl.models.anchoring`): ``weight`` of the
        anchor term, ``min_agreement`` / ``max_drop`` of the drift check, ``fallback``.
    **legacy : Any
        Only the hyper-parameters of older checkpoints (``cluster_index``, ``xd_fit``,
        ``n_clusters_curve``), mapped to their new places.

    Raises
    ------
    ConfigError
        For any option out of its range, an unknown option, or ``spatial_prior`` with features
        that hold no position.
    """

    #: The optimiser when ``optimizer`` is None (a subclass may fine-tune with a smaller step).
    default_optimizer: Mapping[str, Any] = DEFAULT_OPTIMIZER

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        init: str = "gmm_features",
        n_init: int = 20,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        cluster_group: int | None = None,
        seed: int = 0,
        xd: Mapping[str, Any] = XD_DEFAULTS,
        noise_augmentation: bool = False,
        spatial_prior: bool = False,
        anchor: Mapping[str, Any] | None = ANCHOR_DEFAULTS,
        **legacy: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(legacy) - set(LEGACY_HPARAMS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} of {type(self).__name__}: see its docstring for the options"
            )
        if cluster_group is None and legacy.get("cluster_index") is not None:
            cluster_group = legacy["cluster_index"]
        self._check_shared(input_dim, n_clusters, init, n_init, hidden_dims, latent_dim, dropout, cluster_group)
        preprocessing = plain_config(preprocessing)
        if spatial_prior and preprocessing and radius_reader(preprocessing) is None:
            raise ConfigError(
                "model.spatial_prior needs the position in the features: add ra and dec (or radius / "
                "log_radius) to data.features, or set model.spatial_prior=false"
            )
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "n_clusters": int(n_clusters),
                "init": init,
                "n_init": int(n_init),
                "hidden_dims": [int(h) for h in hidden_dims],
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "batch_norm": bool(batch_norm),
                "optimizer": _check_config(optimizer, "optimizer") or dict(self.default_optimizer),
                "scheduler": _check_config(scheduler, "scheduler"),
                "preprocessing": preprocessing,
                "cluster_group": None if cluster_group is None else int(cluster_group),
                "seed": int(seed),
                "xd": xd_options(plain_config(xd)),
                "noise_augmentation": bool(noise_augmentation),
                "spatial_prior": bool(spatial_prior),
                "anchor": anchor_options(plain_config(anchor)),
            }
        )
        self.register_buffer("initialized", torch.tensor(False))
        # The group decided to be the globular cluster (-1 until decided); saved with the weights.
        self.register_buffer("decided_group", torch.tensor(-1))
        # log Sigma_c(r), the radius-dependent group weight (inactive unless spatial_prior).
        self.radial_prior = RadialPrior(n_clusters)
        # Its Plummer scale trains only when used (DDP refuses parameters without gradients).
        self.radial_prior.log_scale.requires_grad_(bool(spatial_prior))
        # Cluster share, Plummer log-scale and cone radius that score stars without astrometry.
        self.register_buffer("position_model", torch.full((3,), float("nan")))
        #: Results computed while training (e.g. ``xd_fit``, ``n_clusters_curve``): saved in the
        #: checkpoint under ``fit_results``, not among the constructor's arguments.
        self.fit_results: dict[str, Any] = {
            key: plain_config(legacy[key]) for key in ("xd_fit", "n_clusters_curve") if legacy.get(key)
        }
        self.train_catalog: TrainingCatalog | None = None
        self._attached_catalog: TrainingCatalog | None = None

    @staticmethod
    def _check_shared(
        input_dim: int,
        n_clusters: Any,
        init: str,
        n_init: int,
        hidden_dims: Sequence[int],
        latent_dim: int,
        dropout: float,
        cluster_group: int | None,
    ) -> None:
        """Raise ConfigError for a shared option out of its range."""
        if isinstance(n_clusters, str):
            raise ConfigError(
                f"n_clusters={n_clusters!r}: a module needs an integer (pipeline.train resolves "
                "model.n_clusters=auto over model.n_clusters_range)"
            )
        if int(n_clusters) < 2:
            raise ConfigError(f"n_clusters must be at least 2, got {n_clusters}")
        if init not in INIT_METHODS:
            raise ConfigError(f"unknown initialisation {init!r}: choose one of {', '.join(INIT_METHODS)}")
        if int(n_init) < 1:
            raise ConfigError(f"n_init must be at least 1, got {n_init}")
        check_network_shape(input_dim, hidden_dims, latent_dim, dropout)
        if cluster_group is not None and not 0 <= int(cluster_group) < int(n_clusters):
            raise ConfigError(
                f"cluster_group={cluster_group} is not a group of {n_clusters}: choose 0..{int(n_clusters) - 1} or null"
            )

    def network_args(self) -> dict[str, Any]:
        """The network's shape (see :func:`~grasp_dl.models.networks.network_args`)."""
        return network_args(self.hparams)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: L.LightningModule, **kwargs: Any) -> ClusteringModule:
        """A module whose network starts from a trained autoencoder's weights.

        Parameters
        ----------
        autoencoder : AutoencoderModule
            The pretrained autoencoder; its network shape and preprocessing are taken over.
        **kwargs : Any
            The module's other options.

        Returns
        -------
        ClusteringModule

        Raises
        ------
        ConfigError
            For bad options, or when this model has no network to start from an autoencoder.
        """
        module = cls(**autoencoder.network_args(), preprocessing=autoencoder.hparams.get("preprocessing"), **kwargs)
        module.load_autoencoder_weights(autoencoder)
        return module

    def load_autoencoder_weights(self, autoencoder: L.LightningModule) -> None:
        """Copy a trained autoencoder's weights into this module's network (models with a network override it).

        Parameters
        ----------
        autoencoder : AutoencoderModule
            The pretrained autoencoder.

        Raises
        ------
        ConfigError
            Always, here: this model has no network to start from an autoencoder.
        """
        raise ConfigError(f"{type(self).__name__} has no network to start from an autoencoder: drop model.pretrain")

    # ------------------------------------------------------------------ inference
    def predict_proba(self, x: Tensor) -> Tensor:
        """Group probabilities of standardised features.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).

        Returns
        -------
        Tensor
            Shape (n, n_clusters), rows sum to 1.
        """
        raise NotImplementedError

    @property
    def scores_with_errors(self) -> bool:
        """Whether this model scores stars with their own errors (:meth:`proba_with_errors`), not the features alone.

        True for an error-aware model (``predict_proba_stars``, e.g. ``model=xd``) and for an anchored
        deep model that pools with an error-aware start (``pool_uses_errors``, models/start_pool.py).
        """
        return hasattr(self, "predict_proba_stars") or bool(getattr(self, "pool_uses_errors", False))

    def proba_with_errors(self, x: Tensor, stars: Any) -> Tensor:
        """Group probabilities of stars scored with their errors: the one rule of train's summary and predict.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).
        stars : StarData
            The same stars' astrometry, error covariances and radii.

        Returns
        -------
        Tensor
            Shape (n, n_clusters), rows sum to 1.
        """
        if hasattr(self, "predict_proba_stars"):
            return torch.as_tensor(self.predict_proba_stars(stars))
        return self.pooled_proba_stars(x, stars)

    @staticmethod
    def mean_entropy(q: Tensor) -> Tensor:
        """Mean entropy of group probabilities (lower: crisper groups).

        Parameters
        ----------
        q : Tensor
            Group probabilities, shape (n, n_clusters).

        Returns
        -------
        Tensor
            A scalar, in nats.
        """
        return -(q * q.clamp_min(1e-12).log()).sum(dim=-1).mean()

    @contextlib.contextmanager
    def network_in_eval_mode(self) -> Iterator[None]:
        """Run the block with the network in eval mode (running batch-norm statistics, no dropout), then restore it."""
        net = getattr(self, "net", None)
        was_training = net is not None and net.training
        if net is not None:
            net.eval()
        try:
            yield
        finally:
            if net is not None:
                net.train(was_training)

    # ------------------------------------------------------------------ which group is the cluster
    @property
    def cluster_group(self) -> int:
        """The group that is the globular cluster: the user's ``cluster_group`` if set, else the decided one (-1 before)."""
        if self.hparams.cluster_group is not None:
            return int(self.hparams.cluster_group)
        return int(self.decided_group)

    def physical_features(self, x: Tensor) -> tuple[np.ndarray, list[str]]:
        """Standardised features back in physical units, with their names (for the cluster rule).

        Parameters
        ----------
        x : Tensor
            Standardised features.

        Returns
        -------
        tuple of numpy.ndarray and list of str
        """
        prep = self.hparams.preprocessing
        values = x.detach().cpu().numpy()
        if not prep:
            return values, [f"feature_{i}" for i in range(values.shape[1])]
        return FeatureScaler.from_state(prep["scaler"]).inverse_transform(values), list(prep["feature_names"])

    @torch.no_grad()
    def decide_cluster_group(self, x: Tensor, q: Tensor | None = None) -> int:
        """Apply the cluster rule of :mod:`grasp_dl.membership.rules` to stars ``x``, remember it and refit the position model.

        Parameters
        ----------
        x : Tensor
            Standardised features of the stars to decide on (the training catalogue).
        q : Tensor or None
            Their group probabilities, if already computed.

        Returns
        -------
        int
            The decided group (the user's ``cluster_group``, when set, still wins in :attr:`cluster_group`).
        """
        q = self.network_proba(x) if q is None else q
        group = choose_cluster_group(q.cpu().numpy(), *self.physical_features(x))
        self.decided_group.fill_(group)
        # The position model that scores stars without astrometry follows the decision.
        self.fit_position_model(x, q)
        # On the training stars: is it still the start's cluster group? (grasp_dl/models/anchoring.py)
        self.guard_start(x, q)
        return int(self.decided_group)

    # ------------------------------------------------------------------ the training catalogue
    def attach_training_catalog(self, catalog: TrainingCatalog | Tensor) -> None:
        """Give the module its training stars for the next ``fit`` (no data module needed).

        Training batches are ``(features, row)`` pairs whose ``row`` indexes ``catalog``.

        Parameters
        ----------
        catalog : TrainingCatalog or Tensor
            The training stars (a bare tensor is their standardised features).
        """
        self._attached_catalog = catalog if isinstance(catalog, TrainingCatalog) else TrainingCatalog(catalog)

    def catalog_needs(self) -> CatalogNeeds:
        """What this module needs of its training stars beyond the features (the hard-field settings').

        Returns
        -------
        CatalogNeeds
        """
        return self.ingredient_needs(initialised=bool(self.initialized))

    def resolve_training_catalog(self) -> TrainingCatalog:
        """The attached training catalogue, else the trainer's data module's, on this module's device.

        Returns
        -------
        TrainingCatalog

        Raises
        ------
        ConfigError
            When none is attached and the data module cannot give one, or a needed field is missing.
        """
        needs = self.catalog_needs()
        if self._attached_catalog is not None:
            catalog = self._attached_catalog
        else:
            datamodule = getattr(self.trainer, "datamodule", None)
            if not isinstance(datamodule, TrainingCatalogSource):
                raise ConfigError(
                    f"{type(self).__name__} needs its training stars: call module.attach_training_catalog(...) "
                    "before trainer.fit, or fit with datamodule=StellarCatalogDataModule(...)"
                )
            catalog = datamodule.training_catalog(needs, self.device)
        catalog.check(needs)
        return catalog.to(self.device)

    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """Start the groups from the training catalogue (called once, at the start of the first fit).

        Parameters
        ----------
        catalog : TrainingCatalog
            The training stars.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Take the training catalogue and, on a first fit, start the groups from it."""
        super().on_fit_start()
        self.train_catalog = self.resolve_training_catalog()
        self._noise = self.train_catalog.noise_factors
        if not bool(self.initialized):
            mark(f"{type(self).__name__}: mixture initialisation")
            self.initialise_from(self.train_catalog)
            self.initialized.fill_(True)
            mark(f"{type(self).__name__}: fit start (loggers, hyper-parameters)")

    def fine_tuning_mode(self) -> None:
        """The one eval-mode rule of fine-tuning: the network is a fixed map (running batch-norm
        statistics, no dropout) in every training batch, so probabilities in training equal those
        at prediction. Applied at the start of every training batch (validation switches modes back)."""
        net = getattr(self, "net", None)
        if net is not None:
            net.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Apply :meth:`fine_tuning_mode` before every training batch (block)."""
        super().on_train_batch_start(batch, batch_idx)
        self.fine_tuning_mode()

    def configure_optimizers(self) -> Any:
        """The optimiser (and scheduler) of the trainable parameters; None when nothing trains (a model fitted by EM).

        Returns
        -------
        torch.optim.Optimizer, dict or None
        """
        if not any(p.requires_grad for p in self.parameters()):
            return None
        return build_optimizers(self.parameters(), self.hparams.optimizer, self.hparams.scheduler)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the writing class and the results computed while training beside the weights."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[FIT_RESULTS_KEY] = dict(self.fit_results)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the results computed while training; read checkpoints written before the base class."""
        super().on_load_checkpoint(checkpoint)
        self.fit_results.update(checkpoint.get(FIT_RESULTS_KEY) or {})
        state = checkpoint.get("state_dict", {})
        if "cluster_group" in state and "decided_group" not in state:
            state["decided_group"] = state.pop("cluster_group")


def checkpoint_class(checkpoint: Mapping[str, Any]) -> type[ClusteringModule] | None:
    """The clustering class that wrote a checkpoint (None for one of another phase, e.g. an autoencoder).

    Parameters
    ----------
    checkpoint : mapping
        A checkpoint as ``torch.load`` returns it.

    Returns
    -------
    type or None
    """
    path = checkpoint.get(CLASS_KEY)
    if path is None:
        state = checkpoint.get("state_dict", {})
        path = next((cls for key, cls in LEGACY_CLASSES.items() if key in state), None)
    if not isinstance(path, str) or "." not in path:
        return None
    if not path.startswith("grasp_dl.") and path.rsplit(".", 1)[0] not in sys.modules:
        # grasp-dl's own classes, or one whose module is already imported (a model of the user's):
        # a checkpoint must not make us import a module of its choosing.
        return None
    cls = get_class(path)
    return cls if isinstance(cls, type) and issubclass(cls, ClusteringModule) else None
