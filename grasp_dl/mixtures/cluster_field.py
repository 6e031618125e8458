"""The cluster + field mixture of ``model=xd``: Vasiliev & Baumgardt's (2021) membership model, fitted by EM.

Every star i has observed astrometry v_i (pmra, pmdec[, parallax]) with its Gaia error
covariance C_i (pmra_pmdec_corr included) and a radius r_i from the centre. The density is

    p(v_i, r_i) = w_c Sigma_c(r_i) N(v_i; m_c, S_c(r_i) + eta_i^2 C_i)
                + sum_j w_j Sigma_f N(v_i; m_j, S_j + eta_i^2 C_i)

* **cluster**: a Plummer surface density ``Sigma_c`` (1 + r^2/a^2)^-2 with a free scale a,
  normalised over the cone; an isotropic intrinsic proper-motion dispersion that falls with
  radius as a Plummer sphere's does, sigma^2(r) = sigma_0^2 (1 + r^2/a^2)^-1/2; one distance,
  so a small intrinsic parallax spread tau. Its shape is fixed by physics: it cannot turn into
  a broad or elongated population.
* **field**: ``n_field`` Gaussians with free means and full covariances, flat over the cone.
  ``n_field=None`` chooses 1..4 by the BIC.
* **crowding**: Gaia's formal errors are underestimated where the sources are dense (VB21: by
  10-20 % in cluster cores). Each star's error covariance is scaled by
  eta_i^2 = 1 + beta * Sigma(r_i) / Sigma_mean, the model's own source density at its radius
  over the cone's mean, with beta >= 0 fitted (0 = the formal errors).
* **membership** is the posterior of the cluster; stars without astrometry get it from their
  radius alone.

The fit runs several starts (the centre's densest proper motion, a Gaussian mixture's most
concentrated component, ...) and keeps the best likelihood; the number of field components and
the starts are explored on a subsample of at most ``explore_size`` stars, then the winner is
refined on every star. Everything is numpy float64 and seeded; 10^5 stars take seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.mixture import GaussianMixture

from grasp_dl.data.astrometry import StarData

log = logging.getLogger(__name__)

#: Floor of the intrinsic covariances (mas/yr)^2 and of the cluster's dispersions.
COV_FLOOR = 1e-4
#: Bounds of the crowding coefficient beta, the cluster's pm dispersion (mas/yr) and parallax spread (mas).
BETA_MAX = 5.0
SIGMA_BOUNDS = (0.005, 3.0)
TAU_BOUNDS = (0.002, 0.5)
#: Bounds of the cluster profile's outer slope gamma (4 = Plummer).
SLOPE_BOUNDS = (1.5, 8.0)
#: Field components tried when ``n_field`` is None (all starts are tried with FIELD_START of them).
FIELD_RANGE = (1, 4)
FIELD_START = 2
#: EM iterations of each exploratory fit on the subsample.
EXPLORE_ITER = 60
#: Fewest stars (summed memberships) whose scatter gives the fitted mean a standard error.
MIN_MEMBERS_FOR_ERROR = 2.0
#: EM iterations of the no-cluster null (the same model on the stars with shuffled positions), from the fit.
NULL_ITER = 30
#: Steepness of the paper's soft priors, -exp(STEEP (sigma/sigma_0 - 1)) - exp(STEEP (a/R - SCALE_PRIOR_AT)).
PRIOR_STEEPNESS = 5.0
SCALE_PRIOR_AT = 0.75


def plummer_log_density(radius: np.ndarray, log_scale: float, radius_max: float) -> np.ndarray:
    """log of a Plummer surface density (1 + r^2/a^2)^-2 normalised to 1 over the disc r <= radius_max.

    Parameters
    ----------
    radius : numpy.ndarray
        Radii (degrees), clipped at ``radius_max`` by the caller.
    log_scale : float
        log of the Plummer scale a (log degrees).
    radius_max : float
        The cone's radius (degrees).

    Returns
    -------
    numpy.ndarray
        log surface density (deg^-2), same shape as ``radius``.
    """
    a2 = math.exp(2.0 * log_scale)
    norm = math.pi * a2 * radius_max**2 / (a2 + radius_max**2)
    return -2.0 * np.log1p(np.asarray(radius, float) ** 2 / a2) - math.log(norm)


#: Upper-triangle elements of a symmetric d x d matrix, in the "packed" order used below.
_UPPER = {2: ((0, 0), (0, 1), (1, 1)), 3: ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))}
_DIAG = {2: (0, 2), 3: (0, 3, 5)}


def profile_log_density(radius: np.ndarray, log_scale: float, slope: float, radius_max: float) -> np.ndarray:
    """log of a generalised Plummer surface density (1 + r^2/a^2)^(-slope/2), normalised over r <= radius_max.

    ``slope`` = 4 is Plummer's; smaller slopes have the wider wings of King profiles with a high
    concentration (and of cores thinned by crowding, as Gaia sees them).

    Parameters
    ----------
    radius : numpy.ndarray
        Radii (degrees), clipped at ``radius_max`` by the caller.
    log_scale : float
        log of the scale a (log degrees).
    slope : float
        Outer logarithmic slope gamma (> 0).
    radius_max : float
        The cone's radius (degrees).

    Returns
    -------
    numpy.ndarray
        log surface density (deg^-2).
    """
    a2 = math.exp(2.0 * log_scale)
    x = radius_max**2 / a2
    e = 1.0 - slope / 2.0
    integral = math.log1p(x) if abs(e) < 1e-9 else math.expm1(e * math.log1p(x)) / e
    return -0.5 * slope * np.log1p(np.asarray(radius, float) ** 2 / a2) - math.log(math.pi * a2 * integral)


def pack(cov: np.ndarray) -> np.ndarray:
    """Symmetric matrices (..., d, d) as their upper triangles (m, ...), m = d (d + 1) / 2, d = 2 or 3."""
    return np.stack([cov[..., r, c] for r, c in _UPPER[cov.shape[-1]]])


def unpack(packed: np.ndarray, d: int) -> np.ndarray:
    """Packed upper triangles (m, ...) back to symmetric matrices (..., d, d)."""
    out = np.empty((*packed.shape[1:], d, d))
    for value, (r, c) in zip(packed, _UPPER[d], strict=False):
        out[..., r, c] = out[..., c, r] = value
    return out


def packed_inverse(packed: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse (packed) and log-determinant of packed symmetric positive-definite 2x2 or 3x3 matrices.

    Closed form on contiguous element arrays: far faster than batched LAPACK for matrices this small.
    """
    if d == 2:
        a, b, c = packed
        det = a * c - b * b
        return np.stack([c, -b, a]) / det, np.log(det)
    a, b, c, e, f, i = packed
    cof = np.stack([e * i - f * f, c * f - b * i, b * f - c * e, a * i - c * c, b * c - a * f, a * e - b * b])
    det = a * cof[0] + b * cof[1] + c * cof[2]
    return cof / det, np.log(det)


def packed_matvec(packed: np.ndarray, x: np.ndarray, d: int) -> np.ndarray:
    """Symmetric matrices (packed, (m, n)) times vectors (d, n), giving (d, n)."""
    out = np.zeros(x.shape)
    for value, (r, c) in zip(packed, _UPPER[d], strict=False):
        out[r] += value * x[c]
        if r != c:
            out[c] += value * x[r]
    return out


def packed_logpdf(diff: np.ndarray, cov: np.ndarray, d: int) -> np.ndarray:
    """log N(diff; 0, cov) for vectors (d, n) and packed covariances (m, n)."""
    inv, logdet = packed_inverse(cov, d)
    maha = (diff * packed_matvec(inv, diff, d)).sum(0)
    return -0.5 * (maha + logdet + d * math.log(2.0 * math.pi))


@dataclass
class _Prepared:
    """The stars with astrometry, in the arrays the EM uses (element-major, contiguous)."""

    values: np.ndarray  # (d, n)
    errors: np.ndarray  # (m, n) packed error covariances
    radius: np.ndarray  # (n,) clipped at radius_max

    @property
    def d(self) -> int:
        return self.values.shape[0]

    def rows(self, index: np.ndarray) -> _Prepared:
        return _Prepared(self.values[:, index], self.errors[:, index], self.radius[index])


class ClusterFieldMixture:
    """Cluster (Plummer x isotropic, error-deconvolved) + field (flat x Gaussians) mixture.

    scikit-learn style: settings in ``__init__``; :meth:`fit` learns ``weights_`` (cluster
    first), the cluster's ``cluster_mean_``, ``sigma_`` (central pm dispersion, mas/yr), ``tau_``
    (parallax spread, mas), ``log_scale_`` (Plummer scale, log degrees), the field's
    ``field_means_`` and ``field_covariances_``, the crowding coefficient ``beta_``,
    ``radius_max_``, ``log_likelihood_``, ``n_field_`` and ``cluster_mean_cov_`` (the fitted
    mean's robust covariance, :meth:`_mean_covariance`); :meth:`predict_proba` gives
    each star's probabilities, column 0 the cluster.

    Parameters
    ----------
    n_field : int or None
        Field components; None chooses 1..4 by the BIC.
    crowding : bool
        Fit the density-dependent error scaling (else the formal errors are used).
    dispersion_profile : bool
        Let the cluster's dispersion fall with radius (else constant).
    free_slope : bool
        Fit the outer slope of the cluster's profile (else Plummer's, 4).
    n_starts : int
        Starts tried (the best likelihood wins).
    max_iter, tol : int, float
        EM iterations and the tolerance on the mean log-likelihood per star.
    explore_size : int
        Stars of the subsample on which the number of components and the starts are chosen.
    seed : int
        Seed of the subsample and the starts.
    eta_max : float or None
        Cap of the crowding inflation eta_i (VB21 measured 1.1-1.2 in dense centres); None leaves
        it as far as ``BETA_MAX`` takes it.
    scale_prior : bool
        The paper's soft prior -exp(5 (a / R - 0.75)) against a Plummer scale above 0.75 of the cone.
    sigma_prior : float or None
        sigma_0 (mas/yr) of the paper's soft prior -exp(5 (sigma / sigma_0 - 1)) against a central
        dispersion above the published line-of-sight one over the distance (a named cluster).
    start_pm : sequence of float or None
        A known mean (pmra, pmdec[, parallax]) of the cluster (a named cluster): one more start
        centred on it. A start, not a constraint.
    null_test : bool
        Also fit the no-cluster null (the same model on the stars with their positions shuffled)
        and keep ``log_likelihood_ratio_``, the log-likelihood the stars' positions add
        (:meth:`null_log_likelihood_ratio`).
    """

    def __init__(
        self,
        n_field: int | None = None,
        crowding: bool = True,
        dispersion_profile: bool = True,
        free_slope: bool = True,
        n_starts: int = 3,
        max_iter: int = 100,
        tol: float = 1e-5,
        explore_size: int = 5_000,
        seed: int = 0,
        eta_max: float | None = None,
        scale_prior: bool = False,
        sigma_prior: float | None = None,
        start_pm: Sequence[float] | None = None,
        null_test: bool = False,
    ) -> None:
        if n_field is not None and n_field < 1:
            raise ValueError(f"n_field must be at least 1 (or None for the BIC), got {n_field}")
        self.n_field = None if n_field is None else int(n_field)
        self.crowding = bool(crowding)
        self.dispersion_profile = bool(dispersion_profile)
        self.free_slope = bool(free_slope)
        self.n_starts = max(1, int(n_starts))
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.explore_size = int(explore_size)
        self.seed = int(seed)
        self.eta_max = None if eta_max is None else float(eta_max)
        self.scale_prior = bool(scale_prior)
        self.sigma_prior = None if sigma_prior is None else float(sigma_prior)
        self.start_pm = None if start_pm is None else np.asarray(start_pm, float)
        self.null_test = bool(null_test)

    # ------------------------------------------------------------------ model pieces
    @property
    def n_components(self) -> int:
        """Cluster plus field components."""
        return 1 + self.n_field_

    def _profile(self, radius: np.ndarray) -> np.ndarray:
        """(1 + r^2/a^2)^-1/2: the cluster's dispersion^2 profile (ones when switched off)."""
        if not self.dispersion_profile:
            return np.ones_like(radius)
        return 1.0 / np.sqrt(1.0 + radius**2 * math.exp(-2.0 * self.log_scale_))

    def _density_ratio(self, radius: np.ndarray) -> np.ndarray:
        """The model's source density at each radius over the cone's mean density."""
        area = math.pi * self.radius_max_**2
        cluster = np.exp(self._cluster_log_density(radius)) * area
        return self.weights_[0] * cluster + (1.0 - self.weights_[0])

    def _cluster_log_density(
        self, radius: np.ndarray, log_scale: float | None = None, slope: float | None = None
    ) -> np.ndarray:
        return profile_log_density(
            radius,
            self.log_scale_ if log_scale is None else log_scale,
            self.slope_ if slope is None else slope,
            self.radius_max_,
        )

    def _eta2(self, radius: np.ndarray, beta: float | None = None) -> np.ndarray:
        beta = self.beta_ if beta is None else beta
        eta2 = 1.0 + beta * self._density_ratio(radius)
        return eta2 if self.eta_max is None else np.minimum(eta2, self.eta_max**2)

    def _cluster_prior(self, radius: np.ndarray, sigma: float, tau: float, d: int) -> np.ndarray:
        """Diagonal of the cluster's intrinsic covariance at each radius, (d, n)."""
        out = np.empty((d, len(radius)))
        out[0] = out[1] = sigma**2 * self._profile(radius)
        if d == 3:
            out[2] = tau**2
        return out

    def _cluster_logpdf(self, p: _Prepared, err: np.ndarray, sigma: float, tau: float) -> np.ndarray:
        d = p.d
        cov = err.copy()
        cov[list(_DIAG[d])] += self._cluster_prior(p.radius, sigma, tau, d)
        return packed_logpdf(p.values - self.cluster_mean_[:, None], cov, d)

    def _component_logpdf(self, p: _Prepared, eta2: np.ndarray) -> np.ndarray:
        """log N(v_i; m_j, S_j + eta_i^2 C_i) for every star and component, (n, k)."""
        d = p.d
        err = eta2 * p.errors
        out = np.empty((len(p.radius), self.n_components))
        out[:, 0] = self._cluster_logpdf(p, err, self.sigma_, self.tau_)
        for j in range(self.n_field_):
            cov = err + pack(self.field_covariances_[j])[:, None]
            out[:, j + 1] = packed_logpdf(p.values - self.field_means_[j][:, None], cov, d)
        return out

    def _log_spatial(self, radius: np.ndarray) -> np.ndarray:
        """log w_j + log Sigma_j(r) for every star and component, (n, k)."""
        out = np.tile(np.log(self.weights_), (len(radius), 1))
        out[:, 0] += self._cluster_log_density(radius)
        out[:, 1:] -= math.log(math.pi * self.radius_max_**2)
        return out

    def _log_joint(self, p: _Prepared) -> np.ndarray:
        return self._log_spatial(p.radius) + self._component_logpdf(p, self._eta2(p.radius))

    # ------------------------------------------------------------------ data
    def _prepare(self, data: StarData, rows: np.ndarray | None = None) -> _Prepared:
        has = data.has_astrometry if rows is None else rows
        radius = np.minimum(np.nan_to_num(data.radius[has], nan=self.radius_max_), self.radius_max_)
        values = np.ascontiguousarray(data.values[has].astype(float).T)
        return _Prepared(values, np.ascontiguousarray(pack(data.covariances[has].astype(float))), radius)

    # ------------------------------------------------------------------ starts
    def _starts(self, p: _Prepared, rng: np.random.Generator) -> list[np.ndarray]:
        """Starting cluster memberships (n,) of the stars with astrometry, several ways."""
        v, r = p.values[:2].T, p.radius
        d = p.d
        err = np.sqrt(np.maximum(p.errors[_DIAG[d][0]] + p.errors[_DIAG[d][1]], 1e-12) / 2.0)
        precise = err <= np.percentile(err, 50)
        starts: list[np.ndarray] = []
        # (1)-(2) The densest proper motion among the central (precise) stars, for two central radii.
        for quantile in (10, 30):
            inner = (r <= np.percentile(r, quantile)) & precise
            if inner.sum() < 5:
                inner = r <= np.percentile(r, quantile)
            centre = _pm_mode(v[inner])
            # The cluster's own width: the spread of the central stars close to the mode (not of the field's).
            close = np.hypot(*(v[inner] - centre).T)
            spread = float(np.clip(np.median(close[close < 1.0]) if (close < 1.0).any() else 0.3, 0.05, 0.5))
            dist2 = ((v - centre) ** 2).sum(1) / (spread**2 + err**2)
            near = np.exp(-r / max(np.percentile(r, quantile), 1e-6))
            starts.append(np.clip(np.exp(-0.5 * dist2) * near, 1e-6, 0.95))
        if self.start_pm is not None:
            # (0) A named cluster: its published mean (and parallax), the central stars near it.
            known = self.start_pm[:d]
            width = max(self.sigma_prior or 0.0, 0.1) ** 2
            dist2 = ((v - known[:2]) ** 2).sum(1) / (width + err**2)
            if len(known) > 2:
                plx_err2 = np.maximum(p.errors[_DIAG[d][2]], 1e-12)
                dist2 += (p.values[2] - known[2]) ** 2 / (0.05**2 + plx_err2)
            near = np.exp(-r / max(np.percentile(r, 30), 1e-6))
            starts.insert(0, np.clip(np.exp(-0.5 * dist2) * near, 1e-6, 0.95))
        # (3) A Gaussian mixture on the proper motions: its most concentrated, tightest component.
        k = 3
        gmm = GaussianMixture(k, covariance_type="full", random_state=int(rng.integers(1 << 31)), reg_covar=1e-3)
        resp = gmm.fit(v).predict_proba(v)
        mean_r = np.array([np.average(r, weights=resp[:, j] + 1e-12) for j in range(k)]) / np.mean(r)
        logdet = np.array([np.linalg.slogdet(c)[1] for c in gmm.covariances_])
        starts.append(np.clip(resp[:, int(np.argmin(np.log(mean_r) + 0.5 * logdet))], 1e-6, 0.95))
        # (4+) Random central stars' proper motions.
        while len(starts) < self.n_starts:
            inner = np.flatnonzero(r <= np.percentile(r, 20))
            centre = v[rng.choice(inner)]
            dist2 = ((v - centre) ** 2).sum(1) / (0.3**2 + err**2)
            starts.append(np.clip(np.exp(-0.5 * dist2), 1e-6, 0.95))
        return starts[: self.n_starts + int(self.start_pm is not None)]

    def _initialise(self, p: _Prepared, cluster_resp: np.ndarray, n_field: int, seed: int) -> None:
        """Parameters from starting cluster memberships and a Gaussian mixture of the rest."""
        v = p.values.T
        d = p.d
        q = np.clip(cluster_resp, 1e-6, 1 - 1e-6)
        self.n_field_ = int(n_field)
        self.weights_ = np.empty(1 + n_field)
        self.weights_[0] = q.mean()
        self.cluster_mean_ = (q[:, None] * v).sum(0) / q.sum()
        self.sigma_, self.tau_ = 0.1, 0.02
        self.log_scale_ = math.log(max(float(np.average(p.radius, weights=q)), self.radius_max_ * 1e-3))
        self.slope_ = 4.0
        self.beta_ = 0.0
        field_w = 1.0 - q
        if n_field == 1:
            resp = np.ones((len(v), 1))
        else:
            rows = np.random.default_rng(seed).random(len(v)) < field_w
            gmm = GaussianMixture(n_field, covariance_type="full", random_state=seed, reg_covar=1e-3)
            gmm.fit(v[rows] if rows.sum() > 10 * n_field else v)
            resp = gmm.predict_proba(v)
        resp = resp * field_w[:, None]
        mass = resp.sum(0) + 1e-12
        self.weights_[1:] = (1.0 - self.weights_[0]) * mass / mass.sum()
        self.field_means_ = (resp.T @ v) / mass[:, None]
        self.field_covariances_ = np.stack(
            [np.cov(v.T, aweights=resp[:, j] + 1e-12).reshape(d, d) + COV_FLOOR * np.eye(d) for j in range(n_field)]
        )

    # ------------------------------------------------------------------ EM
    def _m_step(self, p: _Prepared, resp: np.ndarray, update_beta: bool) -> None:
        v, r, d = p.values, p.radius, p.d
        err = self._eta2(r) * p.errors
        mass = resp.sum(0) + 1e-12
        self.weights_ = mass / mass.sum()
        # Field: extreme-deconvolution updates (Bovy et al. 2011); sum_i q_i B_i = Q S - S (sum q T^-1) S.
        for j in range(self.n_field_):
            qj = resp[:, j + 1]
            s, m = self.field_covariances_[j], self.field_means_[j]
            t_inv, _ = packed_inverse(err + pack(s)[:, None], d)
            b = m[:, None] + s @ packed_matvec(t_inv, v - m[:, None], d)
            mean = (b * qj).sum(1) / mass[j + 1]
            diff = b - mean[:, None]
            sum_b = mass[j + 1] * s - s @ unpack((t_inv * qj).sum(1), d) @ s
            cov = ((diff * qj) @ diff.T + sum_b) / mass[j + 1]
            self.field_means_[j] = mean
            self.field_covariances_[j] = 0.5 * (cov + cov.T) + COV_FLOOR * np.eye(d)
        # Cluster: the same with the intrinsic covariance diag(sigma^2 g(r), sigma^2 g(r), tau^2).
        q0 = resp[:, 0]
        prior = self._cluster_prior(r, self.sigma_, self.tau_, d)
        total = err.copy()
        total[list(_DIAG[d])] += prior
        t_inv, _ = packed_inverse(total, d)
        m = self.cluster_mean_
        b = m[:, None] + prior * packed_matvec(t_inv, v - m[:, None], d)
        big_b = prior - prior**2 * t_inv[list(_DIAG[d])]
        self.cluster_mean_ = (b * q0).sum(1) / mass[0]
        diff = b - self.cluster_mean_[:, None]
        spread = diff[0] ** 2 + diff[1] ** 2 + big_b[0] + big_b[1]
        sigma2 = (q0 * spread / self._profile(r)).sum() / (2.0 * mass[0])
        if self.sigma_prior is None:
            self.sigma_ = float(np.clip(math.sqrt(sigma2), *SIGMA_BOUNDS))
        else:
            # the expected complete-data log-likelihood, -mass (2 log sigma + sigma2 / sigma^2), plus the prior
            sigma0, weight = self.sigma_prior, mass[0]
            self.sigma_ = float(
                minimize_scalar(
                    lambda s: (
                        weight * (2.0 * math.log(s) + sigma2 / s**2) + math.exp(PRIOR_STEEPNESS * (s / sigma0 - 1.0))
                    ),
                    bounds=SIGMA_BOUNDS,
                    method="bounded",
                    options={"xatol": 1e-4},
                ).x
            )
        if d == 3:
            tau2 = (q0 * (diff[2] ** 2 + big_b[2])).sum() / mass[0]
            self.tau_ = float(np.clip(math.sqrt(tau2), *TAU_BOUNDS))
        # Plummer scale: the spatial term and the dispersion profile both depend on it.
        used = q0 > 1e-4
        sub = p.rows(used)
        err_sub, q_sub = err[:, used], q0[used]
        lo, hi = math.log(self.radius_max_ * 1e-3), math.log(self.radius_max_ * 10)

        def scale_nll(log_scale: float) -> float:
            keep = self.log_scale_
            self.log_scale_ = log_scale
            try:
                value = -(q0 * self._cluster_log_density(r, log_scale)).sum()
                if self.dispersion_profile:
                    value -= (q_sub * self._cluster_logpdf(sub, err_sub, self.sigma_, self.tau_)).sum()
            finally:
                self.log_scale_ = keep
            if self.scale_prior:
                value += math.exp(PRIOR_STEEPNESS * (math.exp(log_scale) / self.radius_max_ - SCALE_PRIOR_AT))
            return float(value)

        self.log_scale_ = float(
            minimize_scalar(scale_nll, bounds=(lo, hi), method="bounded", options={"xatol": 2e-2}).x
        )
        if self.free_slope:
            self.slope_ = float(
                minimize_scalar(
                    lambda g: -(q0 * self._cluster_log_density(r, slope=g)).sum(),
                    bounds=SLOPE_BOUNDS,
                    method="bounded",
                    options={"xatol": 2e-2},
                ).x
            )
        self._fit_beta(p, update_beta)

    def _fit_beta(self, p: _Prepared, update_beta: bool) -> None:
        """The crowding coefficient beta by the likelihood (every ``update_beta`` iteration)."""
        r = p.radius
        if self.crowding and update_beta:
            spatial = self._log_spatial(r)

            def beta_nll(beta: float) -> float:
                joint = spatial + self._component_logpdf(p, self._eta2(r, beta))
                return -float(np.logaddexp.reduce(joint, axis=1).sum())

            beta_max = BETA_MAX
            if self.eta_max is not None:  # the densest star's inflation at most eta_max (else a constant one)
                beta_max = min(beta_max, (self.eta_max**2 - 1.0) / float(self._density_ratio(r).max()))
            self.beta_ = float(
                minimize_scalar(beta_nll, bounds=(0.0, beta_max), method="bounded", options={"xatol": 1e-3}).x
            )

    def _em(self, p: _Prepared, max_iter: int) -> float:
        previous = -np.inf
        for self.n_iter_ in range(1, max_iter + 1):
            joint = self._log_joint(p)
            norm = np.logaddexp.reduce(joint, axis=1)
            current = float(norm.mean())
            self._m_step(p, np.exp(joint - norm[:, None]), update_beta=self.n_iter_ % 10 == 1)
            if abs(current - previous) < self.tol:
                break
            previous = current
        return float(np.logaddexp.reduce(self._log_joint(p), axis=1).sum())

    def predict_cluster_explore(self, p: _Prepared) -> np.ndarray:
        """Cluster posterior of prepared stars (the EM's own arrays)."""
        joint = self._log_joint(p)
        return np.exp(joint[:, 0] - np.logaddexp.reduce(joint, axis=1))

    def _mean_covariance(self, p: _Prepared) -> np.ndarray | None:
        """Robust (sandwich) covariance of the fitted cluster mean over the prepared stars, (d, d).

        Each star's score for the mean is s_i = q_i T_i^-1 (v_i - m), with q_i its cluster posterior
        and T_i the cluster's intrinsic plus its error covariance. The bread is the observed
        information (Louis 1982: the complete-data information sum q_i T_i^-1 less the information
        lost to uncertain memberships, sum q_i (1 - q_i) T_i^-1 (v_i - m)(v_i - m)^T T_i^-1), the meat
        the scores' own scatter sum s_i s_i^T, so the error holds where the field's Gaussians or
        the cluster's profile are only approximately right. The members' standard error alone
        ignores the membership uncertainty: on the robustness grid's cells with bright members it
        understated the fitted mean's error by a third (rms of error / standard error 1.56).
        None when the cluster's memberships add up to fewer than MIN_MEMBERS_FOR_ERROR stars.
        """
        d = p.d
        total = self._eta2(p.radius) * p.errors
        total[list(_DIAG[d])] += self._cluster_prior(p.radius, self.sigma_, self.tau_, d)
        t_inv = unpack(packed_inverse(total, d)[0], d)  # (n, d, d)
        q = self.predict_cluster_explore(p)
        if not q.sum() >= MIN_MEMBERS_FOR_ERROR:
            return None
        score = np.einsum("nij,jn->ni", t_inv, p.values - self.cluster_mean_[:, None])
        complete = np.einsum("n,nij->ij", q, t_inv)
        observed = complete - np.einsum("n,ni,nj->ij", q * (1.0 - q), score, score)
        bread = observed if np.linalg.eigvalsh(observed).min() > 0 else complete
        if not np.linalg.eigvalsh(bread).min() > 0:
            return None
        weighted = q[:, None] * score
        inverse = np.linalg.inv(bread)
        cov = inverse @ (weighted.T @ weighted) @ inverse
        return 0.5 * (cov + cov.T)

    def _state(self) -> dict[str, Any]:
        return {
            key: (value.copy() if isinstance(value, np.ndarray) else value)
            for key, value in vars(self).items()
            if key.endswith("_") and not key.startswith("_")
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value.copy() if isinstance(value, np.ndarray) else value)

    def n_parameters(self) -> int:
        """Free parameters: weights, cluster (mean, sigma, tau, scale), field means and covariances, beta."""
        d = self.cluster_mean_.shape[0]
        k = self.n_field_
        return (
            k + d + (2 if d == 3 else 1) + 1 + int(self.free_slope) + k * d + k * d * (d + 1) // 2 + int(self.crowding)
        )

    def fit(self, data: StarData) -> ClusterFieldMixture:
        """Fit the mixture to ``data``; returns self.

        Parameters
        ----------
        data : StarData
            Astrometry, error covariances and radii of the stars (stars without astrometry are
            left out of the fit and scored from their radius by :meth:`predict_proba`).

        Returns
        -------
        ClusterFieldMixture

        Raises
        ------
        ValueError
            If fewer than 20 stars have astrometry.
        """
        has = data.has_astrometry
        if has.sum() < 20:
            raise ValueError(f"{int(has.sum())} stars with astrometry are too few for a cluster + field mixture")
        radius = np.nan_to_num(data.radius, nan=0.0)
        self.radius_max_ = float(radius.max()) if radius.max() > 0 else 1.0
        full = self._prepare(data)
        n = len(full.radius)
        rng = np.random.default_rng(self.seed)
        explore = full.rows(np.sort(rng.choice(n, self.explore_size, replace=False))) if n > self.explore_size else full
        # Stage 1: every start with one number of field components; stage 2: the other numbers
        # (BIC) started from stage 1's best cluster memberships.
        first = self.n_field if self.n_field is not None else FIELD_START
        others = (
            [] if self.n_field is not None else [k for k in range(FIELD_RANGE[0], FIELD_RANGE[1] + 1) if k != first]
        )
        best: tuple[float, dict[str, Any]] | None = None
        self.selection_: list[dict[str, Any]] = []

        def run(start: np.ndarray, n_field: int, label: str) -> None:
            nonlocal best
            self._initialise(explore, start, n_field, self.seed)
            loglik = self._em(explore, min(self.max_iter, EXPLORE_ITER))
            bic = -2.0 * loglik + self.n_parameters() * math.log(len(explore.radius))
            self.selection_.append({"n_field": n_field, "start": label, "log_likelihood": loglik, "bic": bic})
            if best is None or bic < best[0]:
                best = (bic, self._state())

        for index, start in enumerate(self._starts(explore, rng)):
            run(start, first, f"start {index}")
        selection = self.selection_
        self._set_state(best[1])
        self.selection_ = selection
        fitted = self.predict_cluster_explore(explore)
        for n_field in others:
            run(fitted, n_field, "stage 1 best")
        selection = self.selection_
        self._set_state(best[1])
        self.selection_ = selection
        self.log_likelihood_ = self._em(full, self.max_iter)
        self.n_fit_ = n
        self.cluster_mean_cov_ = self._mean_covariance(full)
        self.log_likelihood_ratio_ = self.null_log_likelihood_ratio(full) if self.null_test else None
        log.info(
            "xd mixture: %d field components, cluster weight %.4f, mean %s, sigma %.3f, scale %.3g deg, beta %.2f",
            self.n_field_,
            self.weights_[0],
            np.round(self.cluster_mean_, 4),
            self.sigma_,
            math.exp(self.log_scale_),
            self.beta_,
        )
        return self

    def null_log_likelihood_ratio(self, p: _Prepared) -> float:
        """log L(fit) - log L(the same model on the stars with their positions shuffled): what positions add.

        The null is a permutation: the radii are shuffled among the stars (seeded), so the cone's
        footprint, its radial distribution of all stars and every proper motion stay, and only the
        link between a star's position and its astrometry is broken; the model is refitted by EM
        from the fit's parameters. A group the spatial profile chose among central stars, or the
        edge of a footprint off the assumed centre, gains as much on the shuffled stars, so the
        ratio stays near 0 in a cone without a cluster; a cluster, even one that fills its cone,
        loses its concentration against the field when shuffled.
        """
        fitted = self._state()
        fitted_loglik = float(np.logaddexp.reduce(self._log_joint(p), axis=1).sum())
        shuffled = _Prepared(p.values, p.errors, np.random.default_rng(self.seed).permutation(p.radius))
        try:
            null = self._em(shuffled, NULL_ITER)
        finally:
            self._set_state(fitted)
        return float(fitted_loglik - null)

    # ------------------------------------------------------------------ inference
    def predict_proba(self, data: StarData) -> np.ndarray:
        """Component probabilities of each star (rows sum to 1), column 0 the cluster.

        Parameters
        ----------
        data : StarData
            Stars to score; those without astrometry are scored from their radius alone.

        Returns
        -------
        numpy.ndarray
            (n, 1 + n_field) probabilities.
        """
        radius = np.minimum(np.nan_to_num(data.radius, nan=self.radius_max_), self.radius_max_)
        joint = self._log_spatial(radius)
        has = data.has_astrometry
        if has.any():
            p = self._prepare(data, has)
            joint[has] += self._component_logpdf(p, self._eta2(p.radius))
        return np.exp(joint - np.logaddexp.reduce(joint, axis=1)[:, None])

    def bic(self) -> float:
        """Bayesian information criterion of the final fit (lower is better)."""
        return -2.0 * self.log_likelihood_ + self.n_parameters() * math.log(self.n_fit_)

    def state_dict(self) -> dict[str, Any]:
        """The fitted parameters as plain types (for checkpoints and JSON)."""
        cov = getattr(self, "cluster_mean_cov_", None)
        return {
            "n_field": int(self.n_field_),
            "weights": self.weights_.tolist(),
            "cluster_mean": self.cluster_mean_.tolist(),
            "sigma": float(self.sigma_),
            "tau": float(self.tau_),
            "log_scale": float(self.log_scale_),
            "slope": float(self.slope_),
            "field_means": self.field_means_.tolist(),
            "field_covariances": self.field_covariances_.tolist(),
            "beta": float(self.beta_),
            "radius_max": float(self.radius_max_),
            "log_likelihood": float(self.log_likelihood_),
            "cluster_mean_cov": None if cov is None else cov.tolist(),
            "log_likelihood_ratio": getattr(self, "log_likelihood_ratio_", None),
        }

    def load_state_dict(self, state: dict[str, Any]) -> ClusterFieldMixture:
        """Restore a fit from :meth:`state_dict` (no data needed); returns self."""
        self.n_field_ = int(state["n_field"])
        self.weights_ = np.asarray(state["weights"], float)
        self.cluster_mean_ = np.asarray(state["cluster_mean"], float)
        self.sigma_, self.tau_ = float(state["sigma"]), float(state["tau"])
        self.log_scale_ = float(state["log_scale"])
        self.slope_ = float(state.get("slope", 4.0))
        self.field_means_ = np.asarray(state["field_means"], float)
        self.field_covariances_ = np.asarray(state["field_covariances"], float)
        self.beta_ = float(state["beta"])
        self.radius_max_ = float(state["radius_max"])
        self.log_likelihood_ = float(state["log_likelihood"])
        cov = state.get("cluster_mean_cov")  # absent from checkpoints written before it was kept
        self.cluster_mean_cov_ = None if cov is None else np.asarray(cov, float)
        self.log_likelihood_ratio_ = state.get("log_likelihood_ratio")
        return self


def _pm_mode(pm: np.ndarray, bins: int = 80) -> np.ndarray:
    """The densest point of a 2-D proper-motion sample (a smoothed histogram's peak, refined by a local median)."""
    from scipy.ndimage import gaussian_filter

    # A wide range: a cluster far out in the field's wings (a few per cent of the stars) must stay inside.
    lo, hi = np.percentile(pm, 0.2, axis=0), np.percentile(pm, 99.8, axis=0)
    hist, xe, ye = np.histogram2d(pm[:, 0], pm[:, 1], bins=bins, range=[[lo[0], hi[0]], [lo[1], hi[1]]])
    hist = gaussian_filter(hist, 1.5)
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    peak = np.array([(xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2])
    width = max(float(np.hypot(xe[1] - xe[0], ye[1] - ye[0])) * 3, 0.05)
    near = np.hypot(*(pm - peak).T) < width
    return np.median(pm[near], axis=0) if near.sum() >= 3 else peak


@dataclass
class MembershipResult:
    """What :func:`fit_membership` returns."""

    mixture: ClusterFieldMixture
    member_prob: np.ndarray
    proba: np.ndarray

    @property
    def cluster_mean(self) -> np.ndarray:
        """The cluster's deconvolved mean astrometry (pmra, pmdec[, parallax])."""
        return self.mixture.cluster_mean_

    def describe(self) -> str:
        """One line: field components, cluster weight, dispersion, scale and crowding coefficient."""
        m = self.mixture
        return (
            f"K_f={m.n_field_} w_c={m.weights_[0]:.3f} sigma={m.sigma_:.3f} "
            f"a={math.exp(m.log_scale_) * 60:.2f}' gamma={m.slope_:.2f} beta={m.beta_:.2f}"
            + ("" if getattr(m, "log_likelihood_ratio_", None) is None else f" lnLR={m.log_likelihood_ratio_:.1f}")
        )


def fit_membership(data: StarData, **options: Any) -> MembershipResult:
    """Fit :class:`ClusterFieldMixture` (``options`` its settings) and score the same stars.

    Parameters
    ----------
    data : StarData
        The stars (astrometry, errors, radii).
    **options
        Keyword arguments of :class:`ClusterFieldMixture`.

    Returns
    -------
    MembershipResult
        The fitted mixture, each star's member probability and its component probabilities.
    """
    mixture = ClusterFieldMixture(**options).fit(data)
    proba = mixture.predict_proba(data)
    return MembershipResult(mixture, proba[:, 0], proba)


__all__: Sequence[str] = ("ClusterFieldMixture", "MembershipResult", "fit_membership", "plummer_log_density")
