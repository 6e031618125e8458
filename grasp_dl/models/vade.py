"""VaDEModule: Variational Deep Embedding (Jiang et al. 2017) for probabilistic membership.

A variational encoder maps each star to q(z|x) = N(mu(x), diag sigma^2(x)); the prior over the
latent space is a Gaussian mixture with learnt weights, means and diagonal variances, one
component per group. The posterior over groups, gamma_c = p(c | z), is the star's group
probability; its spread over draws z ~ q(z|x) is the star's membership uncertainty.

Loss (negative ELBO per star, the VaDE form, Jiang et al. eq. 12)::

    -log p(x|z) + beta * ( sum_c gamma_c KL(q(z|x) || N(mu_c, sigma_c^2)) + KL(gamma || pi) )

with gamma from a log-softmax (log-sum-exp over components), log-variances clamped to
``[logvar_min, logvar_max]`` and ``beta`` warmed up from 0 to 1 over ``kl_warmup_epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from grasp_dl.models.block_training import BlockTraining
from grasp_dl.models.clustering import INIT_METHODS
from grasp_dl.models.ingredients import XD_DEFAULTS, HardFieldIngredients, xd_options
from grasp_dl.models.epoch_means import EpochMeanLogging
from grasp_dl.models.membership_mixin import ClusterMembership
from grasp_dl.models.spatial import RadialPrior
from grasp_dl.models.networks import mlp
from grasp_dl.models.optim import DEFAULT_OPTIMIZER, build_optimizers, plain_config

#: Stars per forward pass when a whole catalogue is scored.
CHUNK_SIZE = 65536
#: Rows per block of seeded draws in predict_proba_samples (draws depend on the row number only).
ROW_BLOCK = 1024
LOG_2PI = math.log(2.0 * math.pi)


class VariationalEncoderDecoder(nn.Module):
    """The autoencoder's MLP with the last encoder layer split into mean and log-variance heads."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        sizes = [input_dim, *hidden_dims, latent_dim]
        encoder = mlp(sizes, dropout=dropout, batch_norm=batch_norm)
        # The same layers as StellarAutoencoder.encoder, so its weights load one to one.
        self.trunk = nn.Sequential(*list(encoder)[:-1])
        self.mean = encoder[-1]
        self.logvar = nn.Linear(self.mean.in_features, latent_dim)
        self.decoder = mlp(sizes[::-1], dropout=dropout, batch_norm=batch_norm)

    def encoder_layers(self) -> nn.Sequential:
        """Trunk and mean head as one Sequential, laid out like StellarAutoencoder.encoder."""
        return nn.Sequential(*self.trunk, self.mean)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (unclamped) log-variance of q(z|x)."""
        h = self.trunk(x)
        return self.mean(h), self.logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstructed standardised features."""
        return self.decoder(z)


def mixture_log_joint(z: Tensor, logits: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log pi_c + log N(z; mu_c, diag sigma_c^2) for every star and component, shape (..., k)."""
    z = z.float().unsqueeze(-2)
    diff2 = (z - means.float()).pow(2)
    log_normal = -0.5 * (LOG_2PI + logvars.float() + diff2 * torch.exp(-logvars.float())).sum(-1)
    return torch.log_softmax(logits.float(), dim=-1) + log_normal


def mixture_moments(z: np.ndarray, resp: np.ndarray, var_floor: float = 1e-4) -> tuple[np.ndarray, ...]:
    """Log-weights, means and diagonal log-variances of groups with soft memberships ``resp`` in ``z``."""
    mass = resp.sum(axis=0) + 1e-9
    means = (resp.T @ z) / mass[:, None]
    var = (resp.T @ z**2) / mass[:, None] - means**2
    return np.log(mass / mass.sum()), means, np.log(np.maximum(var, var_floor))


class VaDEModule(BlockTraining, HardFieldIngredients, ClusterMembership, EpochMeanLogging, L.LightningModule):
    """Cluster stars with a variational autoencoder whose prior is a Gaussian mixture (VaDE).

    Starts from a trained autoencoder (:meth:`from_autoencoder`); the mixture is fitted to the
    whole training catalogue at the start of training. ``cluster_group`` (which group is the
    globular cluster) is decided at the end of every epoch and saved with the weights.

    Hard-field options (see :mod:`grasp_dl.models.ingredients`): ``init='xd'`` starts the prior
    from the error-deconvolved spatial mixture (``xd`` its switches), ``noise_augmentation``
    trains on stars re-observed with their own errors, ``spatial_prior`` makes the mixture
    weights radius-dependent, pi_c(r) proportional to pi_c Sigma_c(r) with a Plummer profile of
    learnt scale for the cluster and a flat one for the field (in the posterior and in the
    KL(gamma || pi(r)) term of the ELBO).
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        init: str = "gmm_features",
        n_init: int = 20,
        kl_warmup_epochs: int = 5,
        n_samples: int = 32,
        logvar_min: float = -10.0,
        logvar_max: float = 5.0,
        recon_logvar: float | None = None,
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
    ) -> None:
        super().__init__()
        if init not in INIT_METHODS:
            raise ValueError(f"unknown initialisation {init!r}: choose one of {', '.join(INIT_METHODS)}")
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be at least 2, got {n_clusters}")
        if not logvar_min < logvar_max:
            raise ValueError(f"logvar_min ({logvar_min}) must be below logvar_max ({logvar_max})")
        if n_samples < 2:
            raise ValueError(f"n_samples must be at least 2 to measure a spread, got {n_samples}")
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "n_clusters": int(n_clusters),
                "init": init,
                "n_init": int(n_init),
                "kl_warmup_epochs": int(kl_warmup_epochs),
                "n_samples": int(n_samples),
                "logvar_min": float(logvar_min),
                "logvar_max": float(logvar_max),
                "recon_logvar": None if recon_logvar is None else float(recon_logvar),
                "hidden_dims": [int(h) for h in hidden_dims],
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "batch_norm": bool(batch_norm),
                "optimizer": plain_config(optimizer) or dict(DEFAULT_OPTIMIZER),
                "scheduler": plain_config(scheduler),
                "preprocessing": plain_config(preprocessing),
                "cluster_index": cluster_index,
                "seed": int(seed),
                "xd": xd_options(plain_config(xd)),
                "noise_augmentation": bool(noise_augmentation),
                "spatial_prior": bool(spatial_prior),
                "xd_fit": plain_config(xd_fit),
                "n_clusters_curve": plain_config(n_clusters_curve),
            }
        )
        self.net = VariationalEncoderDecoder(input_dim, hidden_dims, latent_dim, dropout, batch_norm)
        # The Gaussian-mixture prior: filled in place at the start of training (so it trains).
        self.mixture_logits = nn.Parameter(torch.zeros(n_clusters))
        self.mixture_means = nn.Parameter(torch.zeros(n_clusters, latent_dim))
        self.mixture_logvars = nn.Parameter(torch.zeros(n_clusters, latent_dim))
        # Per-feature log-variance of the Gaussian decoder: learnt unless recon_logvar fixes it.
        fixed = recon_logvar is not None
        self.recon_logvar = nn.Parameter(
            torch.full((input_dim,), float(recon_logvar) if fixed else 0.0), requires_grad=not fixed
        )
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("cluster_group", torch.tensor(-1))
        # log Sigma_c(r), the radius-dependent mixture weight (inactive unless spatial_prior).
        self.radial_prior = RadialPrior(n_clusters)
        # Its Plummer scale trains only when used (DDP refuses parameters without gradients).
        self.radial_prior.log_scale.requires_grad_(bool(spatial_prior))
        # Cluster share, Plummer log-scale and cone radius that score stars without astrometry.
        self.register_buffer("position_model", torch.full((3,), float("nan")))
        self.catalog: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_autoencoder(cls, autoencoder: L.LightningModule, **kwargs: Any) -> VaDEModule:
        """A VaDE module whose encoder trunk, mean head and decoder start from a trained autoencoder."""
        module = cls(**autoencoder.network_args(), preprocessing=autoencoder.hparams.get("preprocessing"), **kwargs)
        module.net.encoder_layers().load_state_dict(autoencoder.net.encoder.state_dict())
        module.net.decoder.load_state_dict(autoencoder.net.decoder.state_dict())
        # Start nearly deterministic: small posterior variances, so q(z|x) sits on the AE's points.
        nn.init.normal_(module.net.logvar.weight, std=1e-3)
        nn.init.constant_(module.net.logvar.bias, module.hparams.logvar_min / 2)
        return module

    # ------------------------------------------------------------------ the model
    def _clamp(self, logvar: Tensor) -> Tensor:
        return logvar.float().clamp(self.hparams.logvar_min, self.hparams.logvar_max)

    def prior_logits(self, x: Tensor | None = None) -> Tensor:
        """Logits of the mixture weights: (k,), or (n, k) with the radius-dependent spatial prior."""
        if x is None or not self.radial_prior.active:
            return self.mixture_logits.float()
        return self.mixture_logits.float() + self.radial_prior(x.to(self.mixture_logits.device))

    def log_joint(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """log pi_c(r) + log p(z | c) for latent points z of stars x, shape (..., n_clusters)."""
        logvars = self._clamp(self.mixture_logvars)
        return mixture_log_joint(z, self.prior_logits(x), self.mixture_means, logvars)

    def posterior(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Group probabilities gamma_c = p(c | z[, r]) of latent points (rows sum to 1)."""
        return torch.softmax(self.log_joint(z, x), dim=-1)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-batch means of the reconstruction NLL and the two KL terms of the negative ELBO."""
        mu, logvar = self.net.encode(x)
        mu, logvar = mu.float(), self._clamp(logvar)
        eps = torch.randn(mu.shape, device=mu.device, generator=generator)
        z = mu + eps * torch.exp(0.5 * logvar)
        recon_logvar = self.recon_logvar.float().clamp(self.hparams.logvar_min, self.hparams.logvar_max)
        residual2 = (self.net.decode(z).float() - x.float()).pow(2)
        recon = 0.5 * (LOG_2PI + recon_logvar + residual2 * torch.exp(-recon_logvar)).sum(-1)
        log_gamma = torch.log_softmax(self.log_joint(z, x), dim=-1)
        gamma = log_gamma.exp()
        prior_logvars = self._clamp(self.mixture_logvars)
        # KL(N(mu, var) || N(mu_c, var_c)) for every component, summed over latent dimensions.
        kl_gauss = 0.5 * (
            prior_logvars
            - logvar.unsqueeze(1)
            + (logvar.exp().unsqueeze(1) + (mu.unsqueeze(1) - self.mixture_means.float()).pow(2))
            * torch.exp(-prior_logvars)
            - 1.0
        ).sum(-1)
        kl_z = (gamma * kl_gauss).sum(-1)
        kl_c = (gamma * (log_gamma - torch.log_softmax(self.prior_logits(x), dim=-1))).sum(-1)
        return {"reconstruction": recon.mean(), "kl_z": kl_z.mean(), "kl_c": kl_c.mean()}

    def kl_weight(self) -> float:
        """beta of the KL terms: rises linearly from 1/(warm-up + 1) to 1 over the warm-up epochs."""
        warmup = self.hparams.kl_warmup_epochs
        if warmup <= 0:
            return 1.0
        return min(1.0, (self.current_epoch + 1) / (warmup + 1))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _encode_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-variance of q(z|x) in eval mode, in chunks."""
        was_training = self.net.training
        self.net.eval()
        try:
            chunks = [x[i : i + CHUNK_SIZE].to(self.device) for i in range(0, len(x), CHUNK_SIZE)]
            parts = [self.net.encode(chunk) for chunk in chunks]
        finally:
            self.net.train(was_training)
        return torch.cat([p[0] for p in parts]).float(), self._clamp(torch.cat([p[1] for p in parts]))

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Latent means mu(x) in eval mode (batch-norm running statistics, no dropout)."""
        return self._encode_eval(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Group probabilities gamma at the latent mean (differentiable, current mode)."""
        return self.posterior(self.net.encode(x)[0], x)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Group probabilities p(c | mu(x)) of standardised features (rows sum to 1)."""
        return self.posterior(self.embed(x), x)

    @torch.no_grad()
    def predict_proba_samples(
        self, x: Tensor, n_samples: int | None = None, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of p(c | z) over ``n_samples`` draws z ~ q(z|x), per star and group.

        The draws of each star are seeded by ``hparams.seed`` and the star's row number ``rows``
        (its position in the whole catalogue; ``0..len(x)-1`` by default), so a star gets the
        same numbers however the catalogue is cut into chunks.
        """
        n_samples = int(n_samples or self.hparams.n_samples)
        rows = torch.arange(len(x)) if rows is None else torch.as_tensor(rows, dtype=torch.int64).cpu()
        means, stds = [], []
        step = max(1, CHUNK_SIZE // n_samples)
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            mu, logvar = self._encode_eval(chunk)
            eps = self._row_noise(rows[i : i + step], n_samples, mu.shape[1], mu.device)
            gamma = self.posterior(mu + eps * torch.exp(0.5 * logvar), chunk)
            means.append(gamma.mean(0))
            stds.append(gamma.std(0))
        if not means:
            empty = torch.empty((0, int(self.hparams.n_clusters)), device=x.device)
            return empty, empty.clone()
        return torch.cat(means), torch.cat(stds)

    def _row_noise(self, rows: Tensor, n_samples: int, dim: int, device: torch.device) -> Tensor:
        """Standard normal draws (n_samples, len(rows), dim), the same for a row number in any call.

        Rows are grouped in blocks of ROW_BLOCK; each block's draws come from a generator seeded by
        ``hparams.seed`` and the block number.
        """
        blocks = torch.div(rows, ROW_BLOCK, rounding_mode="floor")
        eps = torch.empty((n_samples, len(rows), dim), device=device)
        for block in torch.unique(blocks).tolist():
            where = (blocks == block).nonzero().squeeze(1)
            seed = (int(self.hparams.seed) * 1_000_003 + int(block)) % (2**63)
            generator = torch.Generator(device=device).manual_seed(seed)
            draws = torch.randn((n_samples, ROW_BLOCK, dim), device=device, generator=generator)
            eps[:, where.to(device)] = draws[:, (rows[where] - block * ROW_BLOCK).to(device)]
        return eps

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        self.catalog = self.trainer.datamodule.split_tensor("train", self.device)
        if not bool(self.initialized):
            self.initialize_mixture(self.catalog)

    @torch.no_grad()
    def initialize_mixture(self, catalog: Tensor) -> None:
        """Fit the mixture prior to the whole catalogue's latent means (same seed on every DDP rank)."""
        z = self.embed(catalog).cpu().double().numpy()
        resp = self.initial_memberships(z, catalog, latent_covariance="diag")
        log_weights, means, logvars = mixture_moments(z, resp)
        self.mixture_logits.data.copy_(torch.as_tensor(log_weights))
        self.mixture_means.data.copy_(torch.as_tensor(means))
        self.mixture_logvars.data.copy_(torch.as_tensor(logvars))
        if self.hparams.recon_logvar is None:
            # The decoder's noise starts at the autoencoder's reconstruction error per feature.
            self.net.eval()
            residual = (self.net.decode(self.embed(catalog).to(self.device)) - catalog.to(self.device)).pow(2)
            self.recon_logvar.data.copy_(residual.mean(0).clamp_min(1e-4).log())
        self.setup_ingredients(catalog, resp)
        self.initialized.fill_(True)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The network is fine-tuned as a fixed map (batch-norm running statistics, no dropout),
        # so gamma in training equals gamma at prediction (validation switches modes back).
        self.net.eval()

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        terms = self.elbo_terms(self.augment(*batch))
        beta = self.kl_weight()
        loss = terms["reconstruction"] + beta * (terms["kl_z"] + terms["kl_c"])
        n = len(batch[0])
        for name, value in terms.items():
            self.log_epoch_mean(f"train/{name}", value, n)
        self.log_epoch_mean("train/loss", loss, n, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        terms = self.elbo_terms(x)
        # The full negative ELBO (beta = 1), comparable between epochs whatever the warm-up.
        loss = terms["reconstruction"] + terms["kl_z"] + terms["kl_c"]
        gamma = self.posterior(self.net.encode(x)[0], x)
        entropy = -(gamma * gamma.clamp_min(1e-12).log()).sum(-1).mean()
        self.log("val/entropy", entropy, on_step=False, on_epoch=True, sync_dist=True)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        # Checkpoints are written at the end of validation: decide the cluster group first.
        if self.catalog is not None and not self.trainer.sanity_checking:
            self.decide_member_group(self.catalog)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log("train/kl_weight", self.kl_weight())
        self.decide_member_group(self.catalog)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        return build_optimizers(self.parameters(), hp.optimizer, hp.scheduler)
