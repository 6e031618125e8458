"""DeepClusteringModule: the base of the clustering models with a network (DEC, IDEC, VaDE).

On top of :class:`~grasp_dl.models.base.ClusteringModule`: the network's shape and its start from
a pretrained autoencoder, the optimiser and the fine-tuning mode, the hard-field ingredients, the
anchor to the start with its pooled membership, and the opt-in speed mixins (block training,
per-epoch means). Every hook of these calls ``super()``, so no base order can drop another's hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from grasp_dl.data.training_catalog import CatalogNeeds
from grasp_dl.engine.block_training import BlockTraining
from grasp_dl.engine.epoch_means import EpochMeanLogging
from grasp_dl.models.anchoring import ANCHOR_DEFAULTS, StartAnchor, anchor_options
from grasp_dl.models.base import ClusteringModule
from grasp_dl.models.ingredients import XD_DEFAULTS, HardFieldIngredients, xd_options
from grasp_dl.models.networks import check_network_shape, network_args
from grasp_dl.models.optim import DEFAULT_OPTIMIZER, build_optimizers, plain_config
from grasp_dl.models.spatial import RadialPrior, radius_reader
from grasp_dl.runtime.errors import ConfigError


def _check_config(config: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """A plain ``_partial_`` config, or ConfigError naming what is wrong with it."""
    plain = plain_config(config)
    if plain is not None and "_target_" not in plain:
        raise ConfigError(f"model.{name} needs a _target_ (e.g. torch.optim.Adam), got {plain}")
    return plain


class DeepClusteringModule(BlockTraining, EpochMeanLogging, StartAnchor, HardFieldIngredients, ClusteringModule):
    """Base of the clustering models with a network: its shape, optimiser, hard-field ingredients and anchor.

    Parameters
    ----------
    input_dim : int
        Number of standardised features per star.
    n_clusters : int
        Number of groups (at least 2).
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
    xd : mapping
        Switches of the error-deconvolved mixture of ``init='xd'`` (see
        :data:`~grasp_dl.models.ingredients.XD_DEFAULTS`).
    noise_augmentation : bool
        Train on stars re-observed with their own errors.
    spatial_prior : bool
        Radius-dependent group weights (a Plummer profile for the cluster, flat for the field).
    anchor : mapping or None
        Keeping the start's cluster group (:mod:`grasp_dl.models.anchoring`): ``weight`` of the
        anchor term, ``min_agreement`` / ``max_drop`` of the drift check, ``fallback``, ``pool``.
    **shared : Any
        The options of :class:`~grasp_dl.models.base.ClusteringModule` (``init``, ``n_init``,
        ``preprocessing``, ``cluster_group``, ``seed``).

    Raises
    ------
    ConfigError
        For any option out of its range, or ``spatial_prior`` with features that hold no position.
    """

    #: The optimiser when ``optimizer`` is None (a subclass may fine-tune with a smaller step).
    default_optimizer: Mapping[str, Any] = DEFAULT_OPTIMIZER

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        xd: Mapping[str, Any] = XD_DEFAULTS,
        noise_augmentation: bool = False,
        spatial_prior: bool = False,
        anchor: Mapping[str, Any] | None = ANCHOR_DEFAULTS,
        **shared: Any,
    ) -> None:
        super().__init__(input_dim, n_clusters, **shared)
        check_network_shape(input_dim, hidden_dims, latent_dim, dropout)
        preprocessing = self.hparams.preprocessing
        if spatial_prior and preprocessing and radius_reader(preprocessing) is None:
            raise ConfigError(
                "model.spatial_prior needs the position in the features: add ra and dec (or radius / "
                "log_radius) to data.features, or set model.spatial_prior=false"
            )
        self.save_hyperparameters(
            {
                "hidden_dims": [int(h) for h in hidden_dims],
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "batch_norm": bool(batch_norm),
                "optimizer": _check_config(optimizer, "optimizer") or dict(self.default_optimizer),
                "scheduler": _check_config(scheduler, "scheduler"),
                "xd": xd_options(plain_config(xd)),
                "noise_augmentation": bool(noise_augmentation),
                "spatial_prior": bool(spatial_prior),
                "anchor": anchor_options(plain_config(anchor)),
            }
        )
        # log Sigma_c(r), the radius-dependent group weight (inactive unless spatial_prior).
        self.radial_prior = RadialPrior(self.hparams.n_clusters)
        # Its Plummer scale trains only when used (DDP refuses parameters without gradients).
        self.radial_prior.log_scale.requires_grad_(bool(spatial_prior))

    def network_args(self) -> dict[str, Any]:
        """The network's shape (see :func:`~grasp_dl.models.networks.network_args`)."""
        return network_args(self.hparams)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: L.LightningModule, **kwargs: Any) -> DeepClusteringModule:
        """A module whose network starts from a trained autoencoder's weights.

        Parameters
        ----------
        autoencoder : AutoencoderModule
            The pretrained autoencoder; its network shape and preprocessing are taken over.
        **kwargs : Any
            The module's other options.

        Returns
        -------
        DeepClusteringModule

        Raises
        ------
        ConfigError
            For bad options.
        """
        module = cls(**autoencoder.network_args(), preprocessing=autoencoder.hparams.get("preprocessing"), **kwargs)
        module.load_autoencoder_weights(autoencoder)
        return module

    def load_autoencoder_weights(self, autoencoder: L.LightningModule) -> None:
        """Copy a trained autoencoder's weights into this module's network (every deep model implements it).

        Parameters
        ----------
        autoencoder : AutoencoderModule
            The pretrained autoencoder.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ inference
    @property
    def scores_with_errors(self) -> bool:
        """Whether the reported membership pools with an error-aware start (models/start_pool.py)."""
        return self.pool_uses_errors

    def proba_with_errors(self, x: Tensor, stars: Any) -> Tensor:
        """Group probabilities with the cluster's pooled with the start's scored on each star's errors.

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
        return self.pooled_proba_stars(x, stars)

    @contextlib.contextmanager
    def network_in_eval_mode(self) -> Iterator[None]:
        """Run the block with the network in eval mode (running batch-norm statistics, no dropout), then restore it."""
        was_training = self.net.training
        self.net.eval()
        try:
            yield
        finally:
            self.net.train(was_training)

    # ------------------------------------------------------------------ the group decision
    @torch.no_grad()
    def decide_cluster_group(self, x: Tensor, q: Tensor | None = None) -> int:
        """The lean base's decision, then the anchor's guard: is it still the start's cluster group?

        Parameters
        ----------
        x : Tensor
            Standardised features of the training stars.
        q : Tensor or None
            Their group probabilities (:meth:`network_proba`), if already computed.

        Returns
        -------
        int
            The decided group (the anchor's fallback may name the start's again).
        """
        q = self.network_proba(x) if q is None else q
        super().decide_cluster_group(x, q)
        self.guard_start(x, q)  # grasp_dl/models/anchoring.py
        return int(self.decided_group)

    # ------------------------------------------------------------------ training
    def catalog_needs(self) -> CatalogNeeds:
        """What the hard-field settings need of the training stars beyond the features.

        Returns
        -------
        CatalogNeeds
        """
        return self.ingredient_needs(initialised=bool(self.initialized))

    def on_fit_start(self) -> None:
        """Take the training catalogue and start the groups (the lean base), then the noise factors of augmentation."""
        super().on_fit_start()
        self._noise = self.train_catalog.noise_factors

    def fine_tuning_mode(self) -> None:
        """The one eval-mode rule of fine-tuning: the network is a fixed map (running batch-norm
        statistics, no dropout) in every training batch, so probabilities in training equal those
        at prediction. Applied at the start of every training batch (validation switches modes back)."""
        self.net.eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Apply :meth:`fine_tuning_mode` before every training batch (block)."""
        super().on_train_batch_start(batch, batch_idx)
        self.fine_tuning_mode()

    def configure_optimizers(self) -> Any:
        """The optimiser (and scheduler) of the trainable parameters.

        Returns
        -------
        torch.optim.Optimizer or dict
        """
        return build_optimizers(self.parameters(), self.hparams.optimizer, self.hparams.scheduler)
