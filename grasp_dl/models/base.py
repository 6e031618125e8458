"""ClusteringModule: the lean base of every clustering phase (DEC, IDEC, VaDE, and mixtures without a network).

It owns what every clustering model shares: the shared hyper-parameters and their checks (a
:class:`~grasp_dl.runtime.errors.ConfigError` at construction), the shared buffers (the decided
cluster group, the position model that scores stars without astrometry), the training catalogue
and the start (:meth:`ClusteringModule.initialise_from`, once, at the first fit), which group is
the cluster, and the checkpoint contract (the writing class and ``fit_results`` beside the
weights). Networks, optimisers, ingredients and the anchor are the deep base's
(:class:`~grasp_dl.models.deep.DeepClusteringModule`); capabilities are the protocols of
:mod:`grasp_dl.runtime.capabilities`. How to add a model: ``docs/src/models.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import get_class
from torch import Tensor

from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog, TrainingCatalogSource
from grasp_dl.membership.rules import choose_cluster_group
from grasp_dl.mixtures.profile import plummer_log_density
from grasp_dl.models.clustering import INIT_METHODS
from grasp_dl.models.ingredients import fit_plummer
from grasp_dl.models.optim import plain_config
from grasp_dl.models.spatial import radius_from_features
from grasp_dl.runtime.capabilities import ScoresStarsWithErrors
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


#: Options of the deep base (:class:`~grasp_dl.models.deep.DeepClusteringModule`) that every module took
#: before the split; checkpoints of models without a network written then carry them, and they are dropped.
DEEP_HPARAMS = (
    "hidden_dims",
    "latent_dim",
    "dropout",
    "batch_norm",
    "optimizer",
    "scheduler",
    "xd",
    "noise_augmentation",
    "spatial_prior",
    "anchor",
)


class ClusteringModule(L.LightningModule):
    """Lean base of every clustering phase: shared options and buffers, the start, the group decision, the checkpoint contract.

    Parameters
    ----------
    input_dim : int
        Number of standardised features per star.
    n_clusters : int
        Number of groups (at least 2). ``model.n_clusters=auto`` in a config is resolved by
        ``pipeline.train`` before the module is built.
    init : str
        How the groups start: ``gmm_features`` (a full-covariance Gaussian mixture on the
        standardised features), ``gmm`` (a mixture on the latent points), ``kmeans`` (DEC's
        choice) or ``xd`` (the error-deconvolved spatial mixture; group 0 is then the cluster).
    n_init : int
        Restarts of the initial k-means / mixture fit.
    preprocessing : mapping or None
        The data module's ``preprocessing_state()`` (features, centre, fitted scaler), stored so
        a checkpoint alone prepares a new catalogue.
    cluster_group : int or None
        The user's choice of the group that is the globular cluster; None decides it from the data.
    seed : int
        Seed of the initial fit and of sampled predictions.
    **legacy : Any
        Only the hyper-parameters of older checkpoints (``cluster_index``, ``xd_fit``,
        ``n_clusters_curve``, mapped to their new places; the deep base's options in checkpoints
        of a model without a network, :data:`DEEP_HPARAMS`, dropped).

    Raises
    ------
    ConfigError
        For any option out of its range or an unknown option.
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        init: str = "gmm_features",
        n_init: int = 20,
        preprocessing: Mapping[str, Any] | None = None,
        cluster_group: int | None = None,
        seed: int = 0,
        **legacy: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(legacy) - set(LEGACY_HPARAMS) - set(DEEP_HPARAMS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} of {type(self).__name__}: see its docstring for the options"
            )
        if cluster_group is None and legacy.get("cluster_index") is not None:
            cluster_group = legacy["cluster_index"]
        self._check_shared(input_dim, n_clusters, init, n_init, cluster_group)
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "n_clusters": int(n_clusters),
                "init": init,
                "n_init": int(n_init),
                "preprocessing": plain_config(preprocessing),
                "cluster_group": None if cluster_group is None else int(cluster_group),
                "seed": int(seed),
            }
        )
        self.register_buffer("initialized", torch.tensor(False))
        # The group decided to be the globular cluster (-1 until decided); saved with the weights.
        self.register_buffer("decided_group", torch.tensor(-1))
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
    def _check_shared(input_dim: int, n_clusters: Any, init: str, n_init: int, cluster_group: int | None) -> None:
        """Raise ConfigError for a shared option out of its range."""
        if isinstance(n_clusters, str):
            raise ConfigError(
                f"n_clusters={n_clusters!r}: a module needs an integer (pipeline.train resolves "
                "model.n_clusters=auto over model.n_clusters_range)"
            )
        if int(input_dim) < 1:
            raise ConfigError(f"input_dim must be at least 1, got {input_dim}")
        if int(n_clusters) < 2:
            raise ConfigError(f"n_clusters must be at least 2, got {n_clusters}")
        if init not in INIT_METHODS:
            raise ConfigError(f"unknown initialisation {init!r}: choose one of {', '.join(INIT_METHODS)}")
        if int(n_init) < 1:
            raise ConfigError(f"n_init must be at least 1, got {n_init}")
        if cluster_group is not None and not 0 <= int(cluster_group) < int(n_clusters):
            raise ConfigError(
                f"cluster_group={cluster_group} is not a group of {n_clusters}: choose 0..{int(n_clusters) - 1} or null"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: L.LightningModule, **kwargs: Any) -> ClusteringModule:
        """A module whose network starts from a trained autoencoder (the deep models' :meth:`DeepClusteringModule.from_autoencoder`).

        Raises
        ------
        ConfigError
            Always, here: this model has no network to start from an autoencoder.
        """
        raise ConfigError(f"{cls.__name__} has no network to start from an autoencoder: drop model.pretrain")

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

    def network_proba(self, x: Tensor) -> Tensor:
        """The model's own group probabilities, before any pooling with a start (what the group decision uses).

        Parameters
        ----------
        x : Tensor
            Standardised features.

        Returns
        -------
        Tensor
            Shape (n, n_clusters).
        """
        return self.predict_proba(x)

    @property
    def scores_with_errors(self) -> bool:
        """Whether this model scores stars with their own errors (:meth:`proba_with_errors`), not the features alone.

        True for a model that scores stars with errors (:class:`~grasp_dl.runtime.capabilities.ScoresStarsWithErrors`,
        e.g. ``model=xd``); the deep base adds an anchored model pooled with an error-aware start.
        """
        return isinstance(self, ScoresStarsWithErrors)

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
            Shape (n, n_clusters), rows sum to 1; :meth:`predict_proba` of ``x`` for a model
            that has no use for the errors.
        """
        if isinstance(self, ScoresStarsWithErrors):
            return torch.as_tensor(self.predict_proba_stars(stars))
        return self.predict_proba(x)

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
            Their group probabilities (:meth:`network_proba`), if already computed.

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
        return int(self.decided_group)

    # ------------------------------------------------------------------ stars without astrometry
    @torch.no_grad()
    def fit_position_model(self, x: Tensor, q: Tensor) -> None:
        """Cluster share and Plummer scale of the member probabilities ``q`` of stars ``x``.

        Called whenever the cluster's group is decided, so every checkpoint carries a current fit;
        skipped when the features hold no position.

        Parameters
        ----------
        x : Tensor
            Standardised features.
        q : Tensor
            Their group probabilities.
        """
        radius = radius_from_features(x.detach().cpu().numpy(), self.hparams.preprocessing)
        if radius is None or len(radius) == 0:
            return
        member = q[:, self.cluster_group].detach().cpu().double().numpy()
        radius_max = float(radius.max())
        share = float(np.clip(member.mean(), 1e-6, 1 - 1e-6))
        self.position_model.copy_(
            torch.tensor([share, fit_plummer(radius, member, radius_max), radius_max], dtype=torch.float32)
        )

    def position_member_prob(self, radius: np.ndarray) -> np.ndarray:
        """Member probability from the radius alone: share x Plummer(r) against (1 - share) x flat field.

        Parameters
        ----------
        radius : numpy.ndarray
            Radii in degrees.

        Returns
        -------
        numpy.ndarray
            NaN everywhere when no position model was fitted.
        """
        share, log_scale, radius_max = (float(v) for v in self.position_model)
        if not np.isfinite(share):
            return np.full(len(radius), np.nan)
        r = np.minimum(np.asarray(radius, float), radius_max)
        cluster = np.log(share) + plummer_log_density(r, log_scale, radius_max)
        field = np.log(1.0 - share) - np.log(np.pi * radius_max**2)
        return 1.0 / (1.0 + np.exp(field - cluster))

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
        """What this module needs of its training stars beyond the features (nothing, here).

        Returns
        -------
        CatalogNeeds
        """
        return CatalogNeeds()

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
            datamodule = self.trainer.datamodule
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
        """Take the training catalogue and, on a first fit, start the groups from it (the same start on every rank)."""
        super().on_fit_start()
        self.train_catalog = self.resolve_training_catalog()
        if not bool(self.initialized):
            mark(f"{type(self).__name__}: mixture initialisation")
            self.initialise_from(self.train_catalog)
            self.initialized.fill_(True)
            self.share_start()
            mark(f"{type(self).__name__}: fit start (loggers, hyper-parameters)")

    def share_start(self) -> None:
        """Under DDP, give every rank rank 0's start (weights, fit results, anchor) through the checkpoint hooks.

        Every rank starts from the whole catalogue with the same seed, but a fit that is not
        bit-for-bit reproducible across processes would leave the ranks on different starts,
        which DDP's averaged gradients never reconcile.
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return
        # tensors to the CPU for the broadcast; a module's extra state (plain types) as it is
        state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in self.state_dict().items()}
        checkpoint: dict[str, Any] = {"state_dict": state}
        self.on_save_checkpoint(checkpoint)
        checkpoint = trainer.strategy.broadcast(checkpoint, src=0)
        self.on_load_checkpoint(checkpoint)
        self.load_state_dict(checkpoint["state_dict"])

    def configure_optimizers(self) -> Any:
        """No optimiser: a model without a network is fitted at the start of training (the deep base trains by gradient).

        Returns
        -------
        None
        """
        return None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the writing class and the results computed while training beside the weights."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[FIT_RESULTS_KEY] = dict(self.fit_results)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the results computed while training, from older checkpoints too (their keys are mapped)."""
        super().on_load_checkpoint(checkpoint)
        self.fit_results.update(checkpoint.get(FIT_RESULTS_KEY) or {})
        state = checkpoint.get("state_dict", {})
        if "cluster_group" in state and "decided_group" not in state:
            state["decided_group"] = state.pop("cluster_group")
        # A model without a network held the deep base's radial prior before the split.
        own = self.state_dict().keys()
        for key in [k for k in state if k.startswith("radial_prior.") and k not in own]:
            del state[key]


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
