"""DECModule: Deep Embedded Clustering (Xie et al. 2016) and IDEC (Guo et al. 2017).

The encoder of a pretrained autoencoder maps stars to a latent space where trainable centres
define soft assignments q (Student-t kernel). Every ``update_interval`` steps a sharpened
target p is computed over the whole training catalogue; the loss is KL(P || Q) per star
(IDEC adds the reconstruction loss, with ``gamma`` weighting the clustering term).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grasp_dl.models.anchoring import ANCHOR_DEFAULTS, StartAnchor, anchor_options, start_cluster_group
from grasp_dl.models.block_training import BlockTraining
from grasp_dl.models.clustering import (
    KERNELS,
    groups_from_responsibilities,
    soft_assign,
    target_distribution,
)
from grasp_dl.models.ingredients import XD_DEFAULTS, HardFieldIngredients, xd_options
from grasp_dl.models.epoch_means import EpochMeanLogging
from grasp_dl.models.membership_mixin import ClusterMembership
from grasp_dl.models.spatial import RadialPrior
from grasp_dl.models.networks import StellarAutoencoder, encode_in_chunks
from grasp_dl.models.optim import DEFAULT_OPTIMIZER, build_optimizers, plain_config

VARIANTS = ("dec", "idec")
#: Fine-tuning a pretrained encoder wants a smaller step than pretraining (as conf/model/dec.yaml).
DEC_OPTIMIZER: dict[str, Any] = {**DEFAULT_OPTIMIZER, "lr": 1e-4}


class DECModule(BlockTraining, HardFieldIngredients, StartAnchor, ClusterMembership, EpochMeanLogging, L.LightningModule):
    """Cluster the latent space of a pretrained autoencoder with DEC or IDEC.

    Centres are an ``nn.Parameter`` created here, before the optimiser exists, and filled
    in place at the start of training (so they do train). ``cluster_index`` (which group
    is the globular cluster) is decided after training and stored with the checkpoint.

    Hard-field options (see :mod:`grasp_dl.models.ingredients`): ``init='xd'`` starts from the
    error-deconvolved spatial mixture (``xd`` its switches), ``noise_augmentation`` trains on
    stars re-observed with their own errors, ``spatial_prior`` makes the group weights depend on
    the radius (needs ``kernel='mixture'``). ``xd_fit`` and ``n_clusters_curve`` are written by
    training (the initial mixture, and the criterion curve of ``n_clusters=auto``).
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        variant: str = "dec",
        alpha: float = 1.0,
        gamma: float = 0.1,
        update_interval: int = 100,
        tol: float = 0.001,
        init: str = "gmm_features",
        n_init: int = 20,
        kernel: str = "mixture",
        balance: float = 0.0,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        cluster_index: int | None = None,
        seed: int = 0,
        xd: Mapping[str, Any] = XD_DEFAULTS,
        noise_augmentation: bool = False,
        spatial_prior: bool = False,
        xd_fit: Mapping[str, Any] | None = None,
        n_clusters_curve: Mapping[str, Any] | None = None,
        anchor: Mapping[str, Any] | None = ANCHOR_DEFAULTS,
        start_vs_end: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if spatial_prior and kernel != "mixture":
            raise ValueError("model.spatial_prior needs model.kernel=mixture (DEC's own kernel has no group weights)")
        if variant not in VARIANTS:
            raise ValueError(f"unknown DEC variant {variant!r}: choose one of {', '.join(VARIANTS)}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be at least 2, got {n_clusters}")
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "n_clusters": int(n_clusters),
                "variant": variant,
                "alpha": float(alpha),
                "gamma": float(gamma),
                "update_interval": int(update_interval),
                "tol": float(tol),
                "init": init,
                "n_init": int(n_init),
                "kernel": kernel,
                "balance": float(balance),
                "hidden_dims": [int(h) for h in hidden_dims],
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "batch_norm": bool(batch_norm),
                "optimizer": plain_config(optimizer) or dict(DEC_OPTIMIZER),
                "scheduler": plain_config(scheduler),
                "preprocessing": plain_config(preprocessing),
                "cluster_index": cluster_index,
                "seed": int(seed),
                "xd": xd_options(plain_config(xd)),
                "noise_augmentation": bool(noise_augmentation),
                "spatial_prior": bool(spatial_prior),
                "xd_fit": plain_config(xd_fit),
                "n_clusters_curve": plain_config(n_clusters_curve),
                "anchor": anchor_options(plain_config(anchor)),
                "start_vs_end": plain_config(start_vs_end),
            }
        )
        self.net = StellarAutoencoder(input_dim, hidden_dims, latent_dim, dropout, batch_norm)
        # DEC discards the decoder; freezing it keeps DDP from waiting for its gradients.
        self.net.decoder.requires_grad_(variant == "idec")
        self.centers = nn.Parameter(torch.zeros(n_clusters, latent_dim))
        # Used by the 'mixture' kernel only; DEC's kernel is unit scale and equal weights.
        self.log_scales = nn.Parameter(torch.zeros(n_clusters), requires_grad=kernel == "mixture")
        self.log_weights = nn.Parameter(torch.zeros(n_clusters), requires_grad=kernel == "mixture")
        self.register_buffer("initialized", torch.tensor(False))
        # The group decided to be the globular cluster (-1 until decided); saved with the weights.
        self.register_buffer("cluster_group", torch.tensor(-1))
        # log Sigma_c(r), the radius-dependent group weight (inactive unless spatial_prior).
        self.radial_prior = RadialPrior(n_clusters)
        # Its Plummer scale trains only when used (DDP refuses parameters without gradients).
        self.radial_prior.log_scale.requires_grad_(bool(spatial_prior))
        # Cluster share, Plummer log-scale and cone radius that score stars without astrometry.
        self.register_buffer("position_model", torch.full((3,), float("nan")))
        self.register_buffer("target", torch.empty(0, n_clusters), persistent=False)
        self.register_buffer("previous_labels", torch.empty(0, dtype=torch.long), persistent=False)
        self.catalog: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: L.LightningModule, **kwargs: Any) -> DECModule:
        """A DEC module whose network starts from a trained AutoencoderModule's weights."""
        module = cls(**autoencoder.network_args(), preprocessing=autoencoder.hparams.get("preprocessing"), **kwargs)
        module.net.load_state_dict(autoencoder.net.state_dict())
        return module

    # ------------------------------------------------------------------ inference
    def assign(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Soft assignments q of latent points to the groups, with this module's kernel.

        With the spatial prior, the group weights of each star depend on its radius, read from
        its standardised features ``x``.
        """
        if self.hparams.kernel == "dec":
            return soft_assign(z, self.centers, self.hparams.alpha)
        log_weights = self.log_weights
        if x is not None and self.radial_prior.active:
            log_weights = log_weights + self.radial_prior(x.to(self.centers.device))
        return soft_assign(z, self.centers, self.hparams.alpha, self.log_scales, log_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Soft assignments q of standardised features to the groups."""
        return self.assign(self.net.encode(x), x)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Latent points in eval mode (batch norm running statistics, no dropout)."""
        was_training = self.net.training
        self.net.eval()
        try:
            return encode_in_chunks(self.net.encoder, x.to(self.centers.device))
        finally:
            self.net.train(was_training)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Group probabilities of standardised features (rows sum to 1)."""
        return self.assign(self.embed(x), x)

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        self.catalog = self.trainer.datamodule.split_tensor("train", self.device)
        if not bool(self.initialized):
            self.initialize_centers(self.catalog)

    @torch.no_grad()
    def initialize_centers(self, catalog: Tensor) -> None:
        """Fill the centres from a k-means or mixture fit to the whole catalogue's latent points.

        Every DDP rank holds the whole catalogue and fits with the same seed, so all ranks
        start from the same centres.
        """
        z = self.embed(catalog).cpu().double().numpy()
        resp = self.initial_memberships(z, catalog)
        groups = groups_from_responsibilities(z, resp)
        self.centers.data.copy_(torch.as_tensor(groups.centers))
        if self.hparams.kernel == "mixture":
            self.log_scales.data.copy_(torch.as_tensor(groups.log_scales))
            self.log_weights.data.copy_(torch.as_tensor(groups.log_weights))
        self.setup_ingredients(catalog, resp)
        self.initialized.fill_(True)
        # The start's cluster group, kept by the anchor (grasp_dl/models/anchoring.py).
        self.set_anchor(resp, start_cluster_group(self, resp, catalog))

    @torch.no_grad()
    def update_target(self) -> float:
        """Recompute P over the whole training catalogue; return the fraction of changed labels."""
        q = self.predict_proba(self.catalog)
        # Each rank holds the whole catalogue, so these frequencies are already global sums.
        self.target = target_distribution(q, balance=self.hparams.balance)
        labels = q.argmax(dim=1)
        changed = 1.0
        if len(self.previous_labels) == len(labels):
            changed = (labels != self.previous_labels).float().mean().item()
        self.previous_labels = labels
        self.decide_member_group(self.catalog, q)
        sizes = torch.bincount(labels, minlength=self.hparams.n_clusters)
        for j, size in enumerate(sizes.tolist()):
            self.log(f"dec/size_{j}", float(size), on_step=True, on_epoch=False)
        self.log("dec/label_change", changed, on_step=True, on_epoch=False)
        return changed

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The target and last labels are state of the self-training: a resumed run must carry on
        # with them rather than recompute them at an arbitrary step.
        checkpoint["dec_state"] = {"target": self.target.cpu(), "previous_labels": self.previous_labels.cpu()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("dec_state")
        if state:
            self.target = state["target"].to(self.centers.device)
            self.previous_labels = state["previous_labels"].to(self.centers.device)

    def on_train_epoch_start(self) -> None:
        # The clustering phase fine-tunes the encoder as a fixed map: running batch-norm
        # statistics and no dropout, as in DEC's fine-tuning, so q in training equals q at
        # prediction.
        self.net.eval()

    def before_batch(self, batch: tuple[Tensor, Tensor]) -> bool:
        """Refresh the target every ``update_interval`` optimiser steps; stop once labels settle."""
        if self.global_step % self.hparams.update_interval == 0 or len(self.target) == 0:
            changed = self.update_target()
            if self.global_step > 0 and changed < self.hparams.tol:
                self.trainer.should_stop = True
                return False
        return True

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
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
        anchor = self.anchor_loss(q, index)
        if anchor is not None:
            loss = loss + anchor
        self.log_epoch_mean("train/loss", loss, len(x))
        return loss

    def on_validation_epoch_start(self) -> None:
        # Checkpoints are written at the end of validation: name the cluster and check the start first.
        if self.catalog is not None and not self.trainer.sanity_checking and len(self.target):
            self.decide_member_group(self.catalog)
            self.guard_start(self.catalog)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.catalog is not None and len(self.target):
            self.decide_member_group(self.catalog)
            self.guard_start(self.catalog)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        z = self.net.encode(x)
        q = self.assign(z, x)
        reconstruction = F.mse_loss(self.net.decode(z), x)
        self.log("val/reconstruction", reconstruction, on_step=False, on_epoch=True, sync_dist=True)
        # Mean entropy of the assignments: lower means crisper groups.
        entropy = -(q * q.clamp_min(1e-12).log()).sum(dim=1).mean()
        self.log("val/entropy", entropy, on_step=False, on_epoch=True, sync_dist=True)
        self.log("val/loss", entropy, on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        return build_optimizers(self.parameters(), self.hparams.optimizer, self.hparams.scheduler)
