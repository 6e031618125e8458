"""VaDEModule: Variational Deep Embedding (Jiang et al. 2017) for probabilistic membership.

A variational encoder and a Gaussian-mixture prior in latent space: a star's posterior over the
groups is its membership, the posterior's spread over latent draws its uncertainty. Loss (the
negative ELBO per star, Jiang et al. eq. 12, ``beta`` warmed up over ``kl_warmup_epochs``)::

    -log p(x|z) + beta * ( sum_c gamma_c KL(q(z|x) || N(mu_c, sigma_c^2)) + KL(gamma || pi) )
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from grasp_dl.data.training_catalog import TrainingCatalog
from grasp_dl.models.deep import DeepClusteringModule
from grasp_dl.models.networks import mlp
from grasp_dl.models.start_pool import pool_groups
from grasp_dl.runtime.errors import ConfigError

#: Stars per forward pass when a whole catalogue is scored.
CHUNK_SIZE = 65536
#: Rows per block of seeded draws in predict_proba_samples (draws depend on the row number only).
ROW_BLOCK = 1024
LOG_2PI = math.log(2.0 * math.pi)


class VariationalEncoderDecoder(nn.Module):
    """The autoencoder's MLP with the last encoder layer split into mean and log-variance heads.

    Parameters
    ----------
    input_dim, hidden_dims, latent_dim, dropout, batch_norm
        The network's shape, as :class:`~grasp_dl.models.networks.StellarAutoencoder`.
    """

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
        """Trunk and mean head as one Sequential, laid out like StellarAutoencoder.encoder (shares their weights).

        Returns
        -------
        torch.nn.Sequential
        """
        return nn.Sequential(*self.trunk, self.mean)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (unclamped) log-variance of q(z|x) of standardised features ``x``, each (n, latent_dim)."""
        h = self.trunk(x)
        return self.mean(h), self.logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstructed standardised features (n, input_dim) of latent points ``z``."""
        return self.decoder(z)


def mixture_log_joint(z: Tensor, logits: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log pi_c + log N(z; mu_c, diag sigma_c^2) for every star and component.

    Parameters
    ----------
    z : Tensor
        Latent points, shape (..., d).
    logits : Tensor
        Unnormalised log-weights, shape (k,) or (..., k).
    means, logvars : Tensor
        Component means and diagonal log-variances, shape (k, d).

    Returns
    -------
    Tensor
        Shape (..., k).
    """
    z = z.float().unsqueeze(-2)
    diff2 = (z - means.float()).pow(2)
    log_normal = -0.5 * (LOG_2PI + logvars.float() + diff2 * torch.exp(-logvars.float())).sum(-1)
    return torch.log_softmax(logits.float(), dim=-1) + log_normal


def mixture_moments(z: np.ndarray, resp: np.ndarray, var_floor: float = 1e-4) -> tuple[np.ndarray, ...]:
    """Log-weights, means and diagonal log-variances of groups with soft memberships ``resp`` in ``z``.

    Parameters
    ----------
    z : numpy.ndarray
        Points, shape (n, d).
    resp : numpy.ndarray
        Soft memberships, shape (n, k).
    var_floor : float
        Smallest variance kept.

    Returns
    -------
    tuple of numpy.ndarray
        Log-weights (k,), means (k, d) and log-variances (k, d).
    """
    mass = resp.sum(axis=0) + 1e-9
    means = (resp.T @ z) / mass[:, None]
    var = (resp.T @ z**2) / mass[:, None] - means**2
    return np.log(mass / mass.sum()), means, np.log(np.maximum(var, var_floor))


class VaDEModule(DeepClusteringModule):
    """Cluster stars with a variational autoencoder whose prior is a Gaussian mixture (VaDE).

    Starts from a trained autoencoder (:meth:`from_autoencoder`); the mixture is fitted to the
    whole training catalogue at the start of training. Which group is the globular cluster
    (:attr:`cluster_group`) is decided at the end of every epoch and saved with the weights.
    With ``spatial_prior`` the mixture weights are radius-dependent, pi_c(r) proportional to
    pi_c Sigma_c(r), in the posterior and in the KL(gamma || pi(r)) term of the ELBO.

    Parameters
    ----------
    input_dim : int
        Number of standardised features per star.
    n_clusters : int
        Number of mixture components (groups), at least 2.
    kl_warmup_epochs : int
        Epochs over which the weight of the KL terms rises linearly to 1 (0: no warm-up).
    n_samples : int
        Draws of z ~ q(z|x) behind ``predict_proba_samples`` (member_prob_std), at least 2.
    logvar_min, logvar_max : float
        Every log-variance (encoder, mixture, decoder) is clamped to this range (min < max).
    recon_logvar : float or None
        Log-variance of the Gaussian decoder; None learns one per feature, starting from the
        autoencoder's reconstruction error.
    **shared : Any
        The options every clustering model shares (``init``, ``n_init``, network shape,
        ``optimizer``, ``scheduler``, ``preprocessing``, ``cluster_group``, ``seed``, ``xd``,
        ``noise_augmentation``, ``spatial_prior``): see :class:`~grasp_dl.models.deep.DeepClusteringModule`.

    Raises
    ------
    ConfigError
        For any option out of its range.
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int = 3,
        *,
        kl_warmup_epochs: int = 5,
        n_samples: int = 32,
        logvar_min: float = -10.0,
        logvar_max: float = 5.0,
        recon_logvar: float | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(input_dim, n_clusters, **shared)
        if not logvar_min < logvar_max:
            raise ConfigError(f"logvar_min ({logvar_min}) must be below logvar_max ({logvar_max})")
        if n_samples < 2:
            raise ConfigError(f"n_samples must be at least 2 to measure a spread, got {n_samples}")
        if kl_warmup_epochs < 0:
            raise ConfigError(f"kl_warmup_epochs must be 0 or more, got {kl_warmup_epochs}")
        self.save_hyperparameters(
            {
                "kl_warmup_epochs": int(kl_warmup_epochs),
                "n_samples": int(n_samples),
                "logvar_min": float(logvar_min),
                "logvar_max": float(logvar_max),
                "recon_logvar": None if recon_logvar is None else float(recon_logvar),
            }
        )
        self.net = VariationalEncoderDecoder(**self.network_args())
        k, latent_dim = self.hparams.n_clusters, self.hparams.latent_dim
        # The Gaussian-mixture prior: filled in place at the start of training (so it trains).
        self.mixture_logits = nn.Parameter(torch.zeros(k))
        self.mixture_means = nn.Parameter(torch.zeros(k, latent_dim))
        self.mixture_logvars = nn.Parameter(torch.zeros(k, latent_dim))
        # Per-feature log-variance of the Gaussian decoder: learnt unless recon_logvar fixes it.
        fixed = recon_logvar is not None
        self.recon_logvar = nn.Parameter(
            torch.full((self.hparams.input_dim,), float(recon_logvar) if fixed else 0.0), requires_grad=not fixed
        )

    def load_autoencoder_weights(self, autoencoder: L.LightningModule) -> None:
        """Copy the autoencoder's encoder into the trunk and mean head, and its decoder; start
        nearly deterministic: small posterior variances, so q(z|x) sits on the autoencoder's points
        (see :meth:`DeepClusteringModule.from_autoencoder`)."""
        self.net.encoder_layers().load_state_dict(autoencoder.net.encoder.state_dict())
        self.net.decoder.load_state_dict(autoencoder.net.decoder.state_dict())
        nn.init.normal_(self.net.logvar.weight, std=1e-3)
        nn.init.constant_(self.net.logvar.bias, self.hparams.logvar_min / 2)

    # ------------------------------------------------------------------ the model
    def _clamp(self, logvar: Tensor) -> Tensor:
        return logvar.float().clamp(self.hparams.logvar_min, self.hparams.logvar_max)

    def prior_logits(self, x: Tensor | None = None) -> Tensor:
        """Logits of the mixture weights.

        Parameters
        ----------
        x : Tensor or None
            Standardised features of the stars (their radius, with the spatial prior).

        Returns
        -------
        Tensor
            Shape (k,), or (n, k) with the radius-dependent spatial prior.
        """
        if x is None or not self.radial_prior.active:
            return self.mixture_logits.float()
        return self.mixture_logits.float() + self.radial_prior(x.to(self.mixture_logits.device))

    def log_joint(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """log pi_c(r) + log p(z | c) for every component.

        Parameters
        ----------
        z : Tensor
            Latent points, shape (..., latent_dim).
        x : Tensor or None
            The stars' standardised features (for the spatial prior).

        Returns
        -------
        Tensor
            Shape (..., n_clusters).
        """
        logvars = self._clamp(self.mixture_logvars)
        return mixture_log_joint(z, self.prior_logits(x), self.mixture_means, logvars)

    def posterior(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """Group probabilities gamma_c = p(c | z[, r]) of latent points ``z`` of stars ``x`` (rows sum to 1), see :meth:`log_joint`."""
        return torch.softmax(self.log_joint(z, x), dim=-1)

    def elbo_terms(
        self, x: Tensor, generator: torch.Generator | None = None, with_gamma: bool = False
    ) -> dict[str, Tensor]:
        """Per-batch means of the terms of the negative ELBO, with z drawn once per star.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).
        generator : torch.Generator or None
            Source of the draws (None: the global one).
        with_gamma : bool
            Also return ``gamma``, the group posteriors of the drawn z per star (for the anchor term).

        Returns
        -------
        dict of str to Tensor
            ``reconstruction`` (Gaussian NLL), ``kl_z`` (expected KL to the components) and
            ``kl_c`` (KL(gamma || pi)); ``gamma`` when asked.
        """
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
        terms = {"reconstruction": recon.mean(), "kl_z": kl_z.mean(), "kl_c": kl_c.mean()}
        if with_gamma:
            terms["gamma"] = gamma
        return terms

    def kl_weight(self) -> float:
        """beta of the KL terms at the current epoch.

        Returns
        -------
        float
            Rises linearly from 1/(warm-up + 1) to 1 over ``kl_warmup_epochs``.
        """
        warmup = self.hparams.kl_warmup_epochs
        if warmup <= 0:
            return 1.0
        return min(1.0, (self.current_epoch + 1) / (warmup + 1))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _encode_eval(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clamped log-variance of q(z|x) in eval mode, in chunks."""
        with self.network_in_eval_mode():
            chunks = [x[i : i + CHUNK_SIZE].to(self.device) for i in range(0, len(x), CHUNK_SIZE)]
            parts = [self.net.encode(chunk) for chunk in chunks]
        return torch.cat([p[0] for p in parts]).float(), self._clamp(torch.cat([p[1] for p in parts]))

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Latent means mu(x), shape (n, latent_dim), of standardised features in eval mode (batch-norm running statistics, no dropout)."""
        return self._encode_eval(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """Group probabilities gamma of standardised features ``x`` at the latent mean, in the network's current mode (differentiable)."""
        return self.posterior(self.net.encode(x)[0], x)

    @torch.no_grad()
    def network_proba(self, x: Tensor) -> Tensor:
        """Group probabilities p(c | mu(x)) at the latent means in eval mode (the model's own, as trained)."""
        return self.posterior(self.embed(x), x)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """:meth:`network_proba`, its cluster group pooled with the start's when anchored (see :mod:`grasp_dl.models.start_pool`)."""
        return self.pooled_proba(x, self.network_proba(x))

    @torch.no_grad()
    def predict_proba_samples(
        self,
        x: Tensor,
        n_samples: int | None = None,
        rows: Tensor | None = None,
        pool: tuple[np.ndarray, float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of p(c | z) over ``n_samples`` draws z ~ q(z|x), per star and group.

        The draws of each star are seeded by ``hparams.seed`` and the star's row number ``rows``
        (its position in the whole catalogue; ``0..len(x)-1`` by default), so a star gets the
        same numbers however the catalogue is cut into chunks. With ``pool`` (an anchored model's
        start, :meth:`pool_start`) every draw is pooled with the start before the spread is taken,
        so the spread is that of the membership the model reports.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).
        n_samples : int or None
            Draws per star (None: ``hparams.n_samples``).
        rows : Tensor or None
            Each star's row number in the whole catalogue.
        pool : tuple of (numpy.ndarray, float) or None
            The start's cluster probability of each star of ``x`` and its weight in the pool.

        Returns
        -------
        tuple of Tensor
            Mean and standard deviation, each of shape (n, n_clusters).
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
            if pool is not None:
                gamma = self._pooled_draws(gamma, pool[0][i : i + step], pool[1])
            means.append(gamma.mean(0))
            stds.append(gamma.std(0))
        if not means:
            empty = torch.empty((0, int(self.hparams.n_clusters)), device=x.device)
            return empty, empty.clone()
        return torch.cat(means), torch.cat(stds)

    def _pooled_draws(self, gamma: Tensor, start: np.ndarray, weight: float) -> Tensor:
        """Each draw's group probabilities (n_samples, n, k) with the cluster group pooled with the start's."""
        draws = gamma.detach().cpu().double().numpy()
        pooled = np.stack([pool_groups(draw, self.cluster_group, start, weight) for draw in draws])
        return torch.as_tensor(pooled, dtype=gamma.dtype, device=gamma.device)

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
    @torch.no_grad()
    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """Fit the mixture prior to the whole catalogue's latent means, same seed on every DDP rank
        (see :meth:`ClusteringModule.initialise_from`)."""
        features = catalog.features
        z = self.embed(features).cpu().double().numpy()
        resp = self.initial_memberships(z, catalog, latent_covariance="diag")
        log_weights, means, logvars = mixture_moments(z, resp)
        self.mixture_logits.data.copy_(torch.as_tensor(log_weights))
        self.mixture_means.data.copy_(torch.as_tensor(means))
        self.mixture_logvars.data.copy_(torch.as_tensor(logvars))
        if self.hparams.recon_logvar is None:
            # The decoder's noise starts at the autoencoder's reconstruction error per feature.
            self.net.eval()
            residual = (self.net.decode(self.embed(features).to(self.device)) - features.to(self.device)).pow(2)
            self.recon_logvar.data.copy_(residual.mean(0).clamp_min(1e-4).log())
        self.setup_ingredients(catalog, resp)

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Negative ELBO of a mini-batch with the KL terms weighted by :meth:`kl_weight`; terms logged as epoch means.

        Parameters
        ----------
        batch : tuple of Tensor
            Standardised features and their rows in the training catalogue.

        Returns
        -------
        Tensor
            The scalar loss.
        """
        terms = self.elbo_terms(self.augment(*batch), with_gamma=True)
        gamma = terms.pop("gamma")
        beta = self.kl_weight()
        loss = terms["reconstruction"] + beta * (terms["kl_z"] + terms["kl_c"])
        anchor = self.anchor_loss(gamma, batch[1])  # keeps the start's cluster group (models/anchoring.py)
        if anchor is not None:
            loss = loss + anchor
        n = len(batch[0])
        for name, value in terms.items():
            self.log_epoch_mean(f"train/{name}", value, n)
        self.log_epoch_mean("train/loss", loss, n, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val/loss`` (the full negative ELBO, VaDE's monitored metric) and ``val/entropy``."""
        x, _ = batch
        terms = self.elbo_terms(x)
        # The full negative ELBO (beta = 1), comparable between epochs whatever the warm-up.
        loss = terms["reconstruction"] + terms["kl_z"] + terms["kl_c"]
        gamma = self.posterior(self.net.encode(x)[0], x)
        entropy = self.mean_entropy(gamma)
        self.log("val/entropy", entropy, on_step=False, on_epoch=True, sync_dist=True)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        """Decide the cluster group before validation ends (checkpoints are written then)."""
        super().on_validation_epoch_start()
        if self.train_catalog is not None and not self.trainer.sanity_checking:
            self.decide_cluster_group(self.train_catalog.features)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's means and the KL weight, step the schedulers, decide the cluster group."""
        super().on_train_epoch_end()
        self.log("train/kl_weight", self.kl_weight())
        self.decide_cluster_group(self.train_catalog.features)
