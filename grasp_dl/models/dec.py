"""DECModule: Deep Embedded Clustering (Xie et al. 2016) and IDEC (Guo et al. 2017).

The encoder of a pretrained autoencoder maps stars to a latent space where trainable centres
define soft assignments q (Student-t kernel). Every ``update_interval`` steps a sharpened
target p is computed over the whole training catalogue; the loss is KL(P || Q) per star
(IDEC adds the reconstruction loss, with ``gamma`` weighting the clustering term).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grasp_dl.data.training_catalog import TrainingCatalog
from grasp_dl.models.clustering import (
    KERNELS,
    groups_from_responsibilities,
    soft_assign,
    target_distribution,
)
from grasp_dl.models.deep import DeepClusteringModule
from grasp_dl.models.networks import StellarAutoencoder, encode_in_chunks
from grasp_dl.models.optim import DEFAULT_OPTIMIZER
from grasp_dl.runtime.errors import ConfigError

VARIANTS = ("dec", "idec")
#: Fine-tuning a pretrained encoder wants a smaller step than pretraining (as conf/model/dec.yaml).
DEC_OPTIMIZER: dict[str, Any] = {**DEFAULT_OPTIMIZER, "lr": 1e-4}


class DECModule(DeepClusteringModule):
    """Cluster the latent space of a pretrained autoencoder with DEC or IDEC.

    Centres are an ``nn.Parameter`` created here, before the optimiser exists, and filled
    in place at the start of training (so they do train). Which group is the globular cluster
    (:attr:`cluster_group`) is decided at every target update and stored with the checkpoint.

    Parameters
    ----------
    input_dim : int
        Number of standardised features per star.
    n_clusters : int
        Number of groups (at least 2).
    variant : str
        ``dec`` (KL(P || Q) only; the decoder is frozen) or ``idec`` (keeps the decoder and
        minimises reconstruction + ``gamma`` * KL, Guo et al. 2017).
    alpha : float
        Degrees of freedom of the Student-t kernel of the soft assignments (> 0).
    gamma : float
        Weight of the clustering term in IDEC's loss (>= 0).
    update_interval : int
        Optimiser steps between updates of the target distribution, computed over the whole
        training catalogue (>= 1).
    tol : float
        Stop when fewer than this fraction of stars change group between two target updates (>= 0).
    kernel : str
        ``mixture`` (each group its own learnt Student-t scale and weight, so a small tight
        cluster and a dominant broad field coexist) or ``dec`` (DEC's single unit-scale kernel
        with equal weights).
    balance : float
        Exponent of the group frequency in the target p ~ q^2 / f^balance: 1 is DEC's (favours
        equal groups), 0 only sharpens (>= 0).
    **shared : Any
        The options every clustering model shares (``init``, ``n_init``, network shape,
        ``optimizer`` (default Adam, lr 1e-4), ``scheduler``, ``preprocessing``,
        ``cluster_group``, ``seed``, ``xd``, ``noise_augmentation``, ``spatial_prior``): see
        :class:`~grasp_dl.models.deep.DeepClusteringModule`. ``spatial_prior`` needs ``kernel='mixture'``.

    Raises
    ------
    ConfigError
        For any option out of its range.
    """

    default_optimizer = DEC_OPTIMIZER

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        *,
        variant: str = "dec",
        alpha: float = 1.0,
        gamma: float = 0.1,
        update_interval: int = 100,
        tol: float = 0.001,
        kernel: str = "mixture",
        balance: float = 0.0,
        **shared: Any,
    ) -> None:
        super().__init__(input_dim, n_clusters, **shared)
        if variant not in VARIANTS:
            raise ConfigError(f"unknown DEC variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
        if self.hparams.spatial_prior and kernel != "mixture":
            raise ConfigError("model.spatial_prior needs model.kernel=mixture (DEC's own kernel has no group weights)")
        if not float(alpha) > 0 or float(gamma) < 0 or float(tol) < 0 or float(balance) < 0:
            raise ConfigError(f"alpha must be > 0 and gamma, tol, balance >= 0; got {alpha}, {gamma}, {tol}, {balance}")
        if int(update_interval) < 1:
            raise ConfigError(f"update_interval must be at least 1, got {update_interval}")
        self.save_hyperparameters(
            {
                "variant": variant,
                "alpha": float(alpha),
                "gamma": float(gamma),
                "update_interval": int(update_interval),
                "tol": float(tol),
                "kernel": kernel,
                "balance": float(balance),
            }
        )
        self.net = StellarAutoencoder(**self.network_args())
        # DEC discards the decoder; freezing it keeps DDP from waiting for its gradients.
        self.net.decoder.requires_grad_(variant == "idec")
        k, latent_dim = self.hparams.n_clusters, self.hparams.latent_dim
        self.centers = nn.Parameter(torch.zeros(k, latent_dim))
        # Used by the 'mixture' kernel only; DEC's kernel is unit scale and equal weights.
        self.log_scales = nn.Parameter(torch.zeros(k), requires_grad=kernel == "mixture")
        self.log_weights = nn.Parameter(torch.zeros(k), requires_grad=kernel == "mixture")
        self.register_buffer("target", torch.empty(0, k), persistent=False)
        self.register_buffer("previous_labels", torch.empty(0, dtype=torch.long), persistent=False)

    def load_autoencoder_weights(self, autoencoder: L.LightningModule) -> None:
        """Copy the autoencoder's encoder and decoder, the same network (see :meth:`DeepClusteringModule.from_autoencoder`)."""
        self.net.load_state_dict(autoencoder.net.state_dict())

    # ------------------------------------------------------------------ inference
    def assign(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Soft assignments q of latent points to the groups, with this module's kernel.

        Parameters
        ----------
        z : Tensor
            Latent points, shape (n, latent_dim).
        x : Tensor or None
            Their standardised features: with the spatial prior, each star's group weights
            depend on its radius, read from them.

        Returns
        -------
        Tensor
            Shape (n, n_clusters), rows sum to 1 (differentiable).
        """
        if self.hparams.kernel == "dec":
            return soft_assign(z, self.centers, self.hparams.alpha)
        log_weights = self.log_weights
        if x is not None and self.radial_prior.active:
            log_weights = log_weights + self.radial_prior(x.to(self.centers.device))
        return soft_assign(z, self.centers, self.hparams.alpha, self.log_scales, log_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Soft assignments q of standardised features ``x`` (n, input_dim) in the network's current mode (differentiable)."""
        return self.assign(self.net.encode(x), x)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Latent points (n, latent_dim) of standardised features in eval mode (batch-norm running statistics, no dropout)."""
        with self.network_in_eval_mode():
            return encode_in_chunks(self.net.encoder, x.to(self.centers.device))

    @torch.no_grad()
    def network_proba(self, x: Tensor) -> Tensor:
        """Soft assignments q at the latent points of ``x`` in eval mode (the network's own, as trained)."""
        return self.assign(self.embed(x), x)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """:meth:`network_proba`, its cluster group pooled with the start's when anchored (see :mod:`grasp_dl.models.start_pool`)."""
        return self.pooled_proba(x, self.network_proba(x))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """Fill the centres (and, with the mixture kernel, scales and weights) from the initial
        memberships of the whole catalogue's latent points (see :meth:`ClusteringModule.initialise_from`).

        Every DDP rank holds the whole catalogue and fits with the same seed, so all ranks
        start from the same centres.
        """
        z = self.embed(catalog.features).cpu().double().numpy()
        resp = self.initial_memberships(z, catalog)
        groups = groups_from_responsibilities(z, resp)
        self.centers.data.copy_(torch.as_tensor(groups.centers))
        if self.hparams.kernel == "mixture":
            self.log_scales.data.copy_(torch.as_tensor(groups.log_scales))
            self.log_weights.data.copy_(torch.as_tensor(groups.log_weights))
        self.setup_ingredients(catalog, resp)

    @torch.no_grad()
    def update_target(self) -> float:
        """Recompute the target P over the whole training catalogue and decide the cluster group.

        Returns
        -------
        float
            The fraction of stars whose label changed since the last update (1 at the first).
        """
        features = self.train_catalog.features
        q = self.network_proba(features)
        # Each rank holds the whole catalogue, so these frequencies are already global sums.
        self.target = target_distribution(q, balance=self.hparams.balance)
        labels = q.argmax(dim=1)
        changed = 1.0
        if len(self.previous_labels) == len(labels):
            changed = (labels != self.previous_labels).float().mean().item()
        self.previous_labels = labels
        self.decide_cluster_group(features, q)
        sizes = torch.bincount(labels, minlength=self.hparams.n_clusters)
        for j, size in enumerate(sizes.tolist()):
            self.log(f"dec/size_{j}", float(size), on_step=True, on_epoch=False)
        self.log("dec/label_change", changed, on_step=True, on_epoch=False)
        self.log_step(on_step=True)  # these values' x axis: the optimiser step of the refresh
        return changed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the self-training state (target and last labels) with the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        # The target and last labels are state of the self-training: a resumed run must carry on
        # with them rather than recompute them at an arbitrary step.
        checkpoint["dec_state"] = {"target": self.target.cpu(), "previous_labels": self.previous_labels.cpu()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the self-training state of a resumed run."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dec_state")
        if state:
            self.target = state["target"].to(self.centers.device)
            self.previous_labels = state["previous_labels"].to(self.centers.device)

    def before_batch(self, batch: tuple[Tensor, Tensor]) -> bool:
        """Refresh the target every ``update_interval`` optimiser steps; stop once labels settle.

        Parameters
        ----------
        batch : tuple of Tensor
            The next mini-batch (features, rows).

        Returns
        -------
        bool
            False when fewer than ``tol`` of the labels changed: the block (and the fit) ends.
        """
        if self.global_step % self.hparams.update_interval == 0 or len(self.target) == 0:
            changed = self.update_target()
            if self.global_step > 0 and changed < self.hparams.tol:
                self.trainer.should_stop = True
                return False
        return True

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """KL(P || Q) of a mini-batch (IDEC: reconstruction + gamma * KL), its terms logged as epoch means.

        Parameters
        ----------
        batch : tuple of Tensor
            Standardised features and their rows in the training catalogue (which index the target).

        Returns
        -------
        Tensor
            The scalar loss.
        """
        x, index = batch
        x = self.augment(x, index)
        z = self.net.encode(x)
        q = self.assign(z, x)
        p = self.target[index]
        kl = F.kl_div(q.clamp_min(1e-12).log(), p, reduction="batchmean")
        self.log_epoch_mean("train/kl", kl, len(x), prog_bar=True)
        loss = kl
        if self.hparams.variant == "idec":
            reconstruction = F.mse_loss(self.net.decode(z), x)
            self.log_epoch_mean("train/reconstruction", reconstruction, len(x))
            loss = reconstruction + self.hparams.gamma * kl
        anchor = self.anchor_loss(q, index)  # keeps the start's cluster group (models/anchoring.py)
        if anchor is not None:
            loss = loss + anchor
        self.log_epoch_mean("train/loss", loss, len(x))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val/entropy`` (the mean entropy of the assignments, DEC's monitored metric: lower
        means crisper groups) and ``val/reconstruction``."""
        x, _ = batch
        z = self.net.encode(x)
        q = self.assign(z, x)
        reconstruction = F.mse_loss(self.net.decode(z), x)
        self.log("val/reconstruction", reconstruction, on_step=False, on_epoch=True, sync_dist=True)
        entropy = self.mean_entropy(q)
        self.log("val/entropy", entropy, on_step=False, on_epoch=True, sync_dist=True)
