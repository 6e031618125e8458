"""Pieces of DEC shared by training and prediction: soft assignment, target, initialisation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from torch import Tensor

INIT_METHODS = ("kmeans", "gmm")


def soft_assign(z: Tensor, centers: Tensor, alpha: float = 1.0) -> Tensor:
    """DEC's q_ij: a Student-t kernel of ``alpha`` degrees of freedom between points and centres.

    q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha + 1) / 2), normalised over j.
    """
    dist2 = torch.cdist(z.float(), centers.float()).pow(2)
    logits = -(alpha + 1.0) / 2.0 * torch.log1p(dist2 / alpha)
    return torch.softmax(logits, dim=1)


def target_distribution(q: Tensor, frequencies: Tensor | None = None) -> Tensor:
    """DEC's auxiliary target p_ij = (q_ij^2 / f_j) / sum_j'(q_ij'^2 / f_j').

    ``frequencies`` f_j = sum_i q_ij must be summed over the whole catalogue (all ranks); by
    default they are taken from ``q`` itself, which is right when ``q`` is the whole catalogue.
    """
    if frequencies is None:
        frequencies = q.sum(dim=0)
    weight = q.pow(2) / frequencies.clamp_min(torch.finfo(q.dtype).tiny)
    return weight / weight.sum(dim=1, keepdim=True)


def initial_centers(
    z: np.ndarray, n_clusters: int, method: str = "gmm", n_init: int = 20, seed: int = 0
) -> np.ndarray:
    """Cluster centres in latent space: k-means (DEC's choice) or a full-covariance Gaussian mixture.

    k-means favours groups of equal size and splits a dominant field rather than isolate a
    small, tight cluster; a mixture with free covariances and weights does not.
    """
    if method not in INIT_METHODS:
        raise ValueError(f"unknown initialisation {method!r}: choose one of {', '.join(INIT_METHODS)}")
    if len(z) < n_clusters:
        raise ValueError(f"{len(z)} stars cannot make {n_clusters} groups: lower n_clusters")
    z = np.asarray(z, dtype=np.float64)
    if method == "kmeans":
        return KMeans(n_clusters, n_init=n_init, random_state=seed).fit(z).cluster_centers_
    gmm = GaussianMixture(
        n_clusters, covariance_type="full", n_init=max(1, n_init // 4), random_state=seed, reg_covar=1e-4
    )
    return gmm.fit(z).means_
