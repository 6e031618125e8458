"""Pieces of DEC shared by training and prediction: soft assignment, target, initialisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from torch import Tensor

from grasp_dl.runtime.errors import ConfigError

#: kmeans: DEC's k-means in latent space; gmm: a Gaussian mixture in latent space;
#: gmm_features: a Gaussian mixture on the standardised input features, carried into latent space;
#: xd: model=xd's cluster + field mixture (mixtures/cluster_field.py)
#: (fitted on the catalogue's astrometry and errors, see models/ingredients.py), group 0 the cluster.
INIT_METHODS = ("kmeans", "gmm", "gmm_features", "xd")
#: dec: one Student-t kernel of unit scale for every group, equal weights (Xie et al. 2016);
#: mixture: a Student-t mixture, each group with its own learnt scale and weight.
KERNELS = ("dec", "mixture")


def soft_assign(
    z: Tensor,
    centers: Tensor,
    alpha: float = 1.0,
    log_scales: Tensor | None = None,
    log_weights: Tensor | None = None,
) -> Tensor:
    """Soft assignments q_ij of latent points to groups.

    Without scales this is DEC's kernel, q_ij proportional to (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2).
    With per-group ``log_scales`` s_j and ``log_weights`` pi_j it is the posterior of a Student-t
    mixture: pi_j s_j^-d (1 + |z_i - mu_j|^2 / (alpha s_j^2))^(-(alpha+d)/2), so a tight, small
    group (a cluster) and a broad, dominant one (the field) can both be described.

    Parameters
    ----------
    z : Tensor
        Latent points, shape (n, d).
    centers : Tensor
        Group centres, shape (k, d).
    alpha : float
        Degrees of freedom of the Student-t kernel.
    log_scales, log_weights : Tensor or None
        Per-group log-scales (k,) and log-weights (k,) or (n, k) of the mixture kernel.

    Returns
    -------
    Tensor
        Shape (n, k), rows sum to 1.
    """
    dist2 = torch.cdist(z.float(), centers.float()).pow(2)
    if log_scales is None:
        logits = -(alpha + 1.0) / 2.0 * torch.log1p(dist2 / alpha)
    else:
        d = z.shape[1]
        scale2 = torch.exp(2.0 * log_scales.float())
        logits = -d * log_scales.float() - (alpha + d) / 2.0 * torch.log1p(dist2 / (alpha * scale2))
        if log_weights is not None:
            logits = logits + torch.log_softmax(log_weights.float(), dim=-1)
    return torch.softmax(logits, dim=1)


def target_distribution(q: Tensor, frequencies: Tensor | None = None, balance: float = 1.0) -> Tensor:
    """DEC's auxiliary target p_ij = (q_ij^2 / f_j^balance), normalised over j.

    ``frequencies`` f_j = sum_i q_ij must be summed over the whole catalogue; by default they are
    taken from ``q`` itself, right when ``q`` is the whole catalogue. ``balance`` = 1 is DEC's
    division by group size, which favours equal groups; 0 only sharpens.

    Parameters
    ----------
    q : Tensor
        Soft assignments, shape (n, k).
    frequencies : Tensor or None
        Group frequencies over the whole catalogue (None: from ``q``).
    balance : float
        Exponent of the frequencies.

    Returns
    -------
    Tensor
        Shape (n, k), rows sum to 1.
    """
    if frequencies is None:
        frequencies = q.sum(dim=0)
    weight = q.pow(2) / frequencies.clamp_min(torch.finfo(q.dtype).tiny).pow(balance)
    return weight / weight.sum(dim=1, keepdim=True)


@dataclass
class InitialGroups:
    """Starting centres (k, d), log-scales (k,) and log-weights (k,) of the groups in latent space."""

    centers: np.ndarray
    log_scales: np.ndarray
    log_weights: np.ndarray


def groups_from_responsibilities(z: np.ndarray, resp: np.ndarray) -> InitialGroups:
    """Weighted mean, isotropic scale and share of each group from soft memberships.

    Parameters
    ----------
    z : numpy.ndarray
        Latent points, shape (n, d).
    resp : numpy.ndarray
        Soft memberships, shape (n, k).

    Returns
    -------
    InitialGroups
    """
    mass = resp.sum(axis=0) + 1e-9
    centers = (resp.T @ z) / mass[:, None]
    dist2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    scale2 = (resp * dist2).sum(axis=0) / (mass * z.shape[1])
    return InitialGroups(
        centers=centers,
        log_scales=0.5 * np.log(np.maximum(scale2, 1e-6)),
        log_weights=np.log(mass / mass.sum()),
    )


def initial_responsibilities(
    z: np.ndarray,
    n_clusters: int,
    method: str = "gmm_features",
    n_init: int = 20,
    seed: int = 0,
    features: np.ndarray | None = None,
    latent_covariance: str = "full",
) -> np.ndarray:
    """Soft memberships to start the groups from: k-means or a mixture on ``z``, or a mixture on ``features``.

    k-means favours groups of equal size and splits a dominant field rather than isolate a small,
    tight cluster; a full-covariance mixture does not. A mixture fits the standardised input
    features better than the autoencoder's latent points, which lie on a curved low-dimensional
    sheet; its memberships then place the groups in latent space.

    Parameters
    ----------
    z : numpy.ndarray
        Latent points, shape (n, d).
    n_clusters : int
        Number of groups.
    method : str
        ``kmeans``, ``gmm`` or ``gmm_features`` (``xd`` needs star data: see
        :meth:`~grasp_dl.models.ingredients.HardFieldIngredients.initial_memberships`).
    n_init : int
        Restarts (k-means), or four times the mixture's restarts.
    seed : int
        Random state.
    features : numpy.ndarray or None
        Standardised features, for ``gmm_features``.
    latent_covariance : str
        Covariance type of the ``gmm`` mixture.

    Returns
    -------
    numpy.ndarray
        Shape (n, n_clusters), rows sum to 1.

    Raises
    ------
    ConfigError
        For an unknown method, ``xd``, or fewer stars than groups.
    """
    if method not in INIT_METHODS:
        raise ConfigError(f"unknown initialisation {method!r}: choose one of {', '.join(INIT_METHODS)}")
    if method == "xd":
        raise ConfigError(
            "init='xd' needs each star's astrometry and errors: use HardFieldIngredients.initial_memberships"
        )
    if len(z) < n_clusters:
        raise ConfigError(f"{len(z)} stars cannot make {n_clusters} groups: lower n_clusters")
    z = np.asarray(z, dtype=np.float64)
    if method == "kmeans":
        labels = KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(z)
        return np.eye(n_clusters)[labels]
    if method == "gmm_features":
        data, covariance = np.asarray(features, dtype=np.float64), "full"
    else:
        data, covariance = z, latent_covariance
    gmm = GaussianMixture(
        n_clusters, covariance_type=covariance, n_init=max(1, n_init // 4), random_state=seed, reg_covar=1e-4
    )
    return gmm.fit(data).predict_proba(data)
