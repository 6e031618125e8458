"""The cluster + field mixture of ``model=xd`` (Vasiliev & Baumgardt 2021), fitted by EM.

A Plummer-profile cluster with an isotropic, radius-dependent proper-motion dispersion against
flat field Gaussians, every star's Gaia error covariance convolved in and scaled where the
sources are crowded; the cluster's posterior is the membership. ``spatial``, ``use_errors`` and
``photometry`` switch ingredients off or on (the deep models' ablations). The fit explores its
starts on a subsample, then iterates on every star through the sufficient-statistics contract of
:mod:`grasp_dl.mixtures.em`, so a plain loop and a Lightning epoch run the same iteration. The
model and its fit in full: ``docs/src/models.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import Tensor

from grasp_dl.data.astrometry import StarData
from grasp_dl.mixtures.cmd_histogram import CmdHistogram
from grasp_dl.mixtures.em import Stats, bounded_minimum, minimise_bounded, new_optimizer, run_em
from grasp_dl.mixtures.profile import (
    dispersion_profile,
    log_profile_norm,
    log_profile_norm_t,
    plummer_log_density,
    profile_log_density,
    profile_log_density_t,
)
from grasp_dl.runtime.devices import single_cpu_thread

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
#: The field's floor (``field_min_sd``) holds for a component whose mean is within this many floors of the
#: cluster's proper motion: the tight flat component that takes the cluster's scattered centre sits on it.
FIELD_FLOOR_REACH = 2.0
#: A start is added at all central stars' proper-motion mode when it is this far (mas/yr) from the precise ones'.
MODES_APART = 1.0
#: EM iterations of each exploratory fit on the subsample.
EXPLORE_ITER = 60
#: Fewest stars (summed memberships) whose scatter gives the fitted mean a standard error.
MIN_MEMBERS_FOR_ERROR = 2.0
#: EM iterations of the no-cluster null (the same model on the stars with shuffled positions), from the fit.
NULL_ITER = 30
#: Shuffles of the no-cluster null whose log-likelihoods are averaged, at most: one shuffle's null is a
#: random draw, as noisy as the few stars that carry the contrast (docs/src/trust.md, "Named clusters that
#: fill a small cone").
NULL_PERMUTATIONS = 16
#: ... and at most this many shuffled stars in all (a large cone's ratio barely depends on the shuffle,
#: and each shuffle costs NULL_ITER EM iterations): 16 shuffles up to 512 stars, 4 at 2,048, one from 8,192.
NULL_STAR_BUDGET = 8_192
#: Steepness of the paper's soft priors, -exp(STEEP (sigma/sigma_0 - 1)) - exp(STEEP (a/R - SCALE_PRIOR_AT)).
PRIOR_STEEPNESS = 5.0
SCALE_PRIOR_AT = 0.75
#: Candidate log-scales of an iteration: the current one plus these offsets (log degrees).
SCALE_OFFSETS = np.array([0.005, 0.015, 0.04, 0.1, 0.25, 0.6, 1.5])
#: Candidate betas of an iteration that updates it: this coarse grid plus the current value +- BETA_LOCAL.
BETA_COARSE = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0])
BETA_LOCAL = np.array([0.005, 0.02, 0.06])
#: beta is updated in iterations 1, 1 + BETA_EVERY, ... (it moves slowly; each update costs a pass per candidate).
BETA_EVERY = 10
#: Candidate floors eta_0 of the inflation (``fit_eta_floor``), clipped to [eta_min, eta_max].
ETA_FLOOR_CANDIDATES = np.array([1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.3, 2.6, 3.0])
#: The cluster's outlier component (``cluster_outliers``): its proper-motion spread is at least this many
#: times the core's central dispersion (so the two never swap) and at most SIGMA_BOUNDS' top; its start's
#: spread (mas/yr) and share of the cluster's profile.
OUTLIER_SD_RATIO = 2.0
OUTLIER_SD_START = 1.0
OUTLIER_START_SHARE = 0.1
#: Stars per E-step chunk of the plain driver.
CHUNK = 65_536
#: Cluster memberships below this add nothing worth computing to the scale's dispersion term.
SCALE_MIN_WEIGHT = 1e-4

#: Upper-triangle elements of a symmetric d x d matrix, in the "packed" order used below.
_UPPER = {2: ((0, 0), (0, 1), (1, 1)), 3: ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))}
_DIAG = {2: (0, 2), 3: (0, 3, 5)}


def pack(cov: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Symmetric matrices (..., d, d) as their upper triangles (m, ...), m = d (d + 1) / 2, d = 2 or 3."""
    items = [cov[..., r, c] for r, c in _UPPER[cov.shape[-1]]]
    return torch.stack(items) if isinstance(cov, Tensor) else np.stack(items)


def unpack(packed: np.ndarray | Tensor, d: int) -> np.ndarray | Tensor:
    """Packed upper triangles (m, ...) back to symmetric matrices (..., d, d)."""
    if isinstance(packed, Tensor):
        out = packed.new_empty((*packed.shape[1:], d, d))
    else:
        out = np.empty((*packed.shape[1:], d, d))
    for value, (r, c) in zip(packed, _UPPER[d], strict=False):
        out[..., r, c] = value
        out[..., c, r] = value
    return out


def packed_inverse(packed: np.ndarray | Tensor, d: int) -> tuple[Any, Any]:
    """Inverse (packed) and log-determinant of packed symmetric positive-definite 2x2 or 3x3 matrices.

    Closed form on contiguous element arrays (numpy or torch): far faster than batched LAPACK for
    matrices this small.
    """
    stack, logf = (torch.stack, torch.log) if isinstance(packed, Tensor) else (np.stack, np.log)
    cof, det = _packed_cofactors(packed, d)
    return stack(cof) / det, logf(det)


def _packed_cofactors(rows: Sequence[Any], d: int) -> tuple[list[Any], Any]:
    """The packed cofactor rows and the determinant of packed symmetric 2x2 or 3x3 matrices given by their rows."""
    if d == 2:
        a, b, c = rows
        return [c, -b, a], a * c - b * b
    a, b, c, e, f, i = rows
    cof = [e * i - f * f, c * f - b * i, b * f - c * e, a * i - c * c, b * c - a * f, a * e - b * b]
    return cof, a * cof[0] + b * cof[1] + c * cof[2]


def packed_matvec(packed: np.ndarray | Tensor, x: np.ndarray | Tensor, d: int) -> np.ndarray | Tensor:
    """Symmetric matrices (packed, (m, ...)) times vectors (d, ...), giving (d, ...) (broadcasting)."""
    rows: list[Any] = [0.0] * d
    for value, (r, c) in zip(packed, _UPPER[d], strict=False):
        rows[r] = rows[r] + value * x[c]
        if r != c:
            rows[c] = rows[c] + value * x[r]
    return torch.stack(rows) if isinstance(x, Tensor) else np.stack(rows)


def packed_logpdf(diff: np.ndarray | Tensor, cov: np.ndarray | Tensor, d: int) -> np.ndarray | Tensor:
    """log N(diff; 0, cov) for vectors (d, ...) and packed covariances (m, ...)."""
    inv, logdet = packed_inverse(cov, d)
    maha = (diff * packed_matvec(inv, diff, d)).sum(0)
    return -0.5 * (maha + logdet + d * math.log(2.0 * math.pi))


def packed_logpdf_rows(diff: Tensor, rows: Sequence[Tensor], d: int) -> Tensor:
    """:func:`packed_logpdf` of covariances given as their packed rows, each broadcastable to the others.

    A row the same for every candidate (shape (1, n) beside (G, n)) is multiplied once, not once per
    candidate; every element is the same floating-point expression as in :func:`packed_logpdf`, so the
    result is bit for bit the same as that of the rows broadcast and stacked.
    """
    cof, det = _packed_cofactors(rows, d)
    inv = [value / det for value in cof]
    maha = (diff * packed_matvec(inv, diff, d)).sum(0)
    return -0.5 * (maha + torch.log(det) + d * math.log(2.0 * math.pi))


def _quadratic(x: Tensor, nodes: Tensor, values: Tensor) -> Tensor:
    """The parabola through (nodes[i], values[i]), i = 0, 1, 2, at ``x`` (Lagrange form, differentiable)."""
    x0, x1, x2 = nodes
    y0, y1, y2 = values
    return (
        y0 * (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2))
        + y1 * (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
        + y2 * (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1))
    )


def shape_parameter(device: torch.device | str | None = None) -> Tensor:
    """The leaf tensor the gradient steps of the scale, slope and beta update (three float64 values).

    Parameters
    ----------
    device : torch.device, str or None
        Where it lives.

    Returns
    -------
    Tensor
    """
    return torch.zeros(3, dtype=torch.float64, device=device, requires_grad=True)


def _bracket(values: np.ndarray) -> tuple[int, int, int]:
    """Indices of the three candidates around the smallest value (the two first or last at an edge)."""
    best = int(np.argmin(values))
    centre = min(max(best, 1), len(values) - 2)
    return centre - 1, centre, centre + 1


@dataclass
class _Prepared:
    """The stars with astrometry, in the arrays the EM uses (element-major, contiguous)."""

    values: np.ndarray  # (d, n)
    errors: np.ndarray  # (m, n) packed error covariances
    radius: np.ndarray  # (n,) clipped at radius_max
    cmd_bin: np.ndarray | None = None  # (n,) colour-magnitude bins (photometry), -1 without

    @property
    def d(self) -> int:
        return self.values.shape[0]

    def rows(self, index: np.ndarray) -> _Prepared:
        cmd_bin = None if self.cmd_bin is None else self.cmd_bin[index]
        return _Prepared(self.values[:, index], self.errors[:, index], self.radius[index], cmd_bin)

    def tensors(self, device: torch.device | str | None = None) -> EMBatch:
        """The same stars as an :class:`EMBatch` (float64) on ``device``."""
        batch = EMBatch(
            *(torch.as_tensor(a, dtype=torch.float64, device=device) for a in (self.values, self.errors, self.radius))
        )
        if self.cmd_bin is not None:
            batch.cmd_bin = torch.as_tensor(self.cmd_bin, device=device)
        return batch


@dataclass
class EMBatch:
    """A batch of the E-step: stars with astrometry as float64 tensors on one device.

    Parameters
    ----------
    values : Tensor
        Astrometry, (d, n).
    errors : Tensor
        Packed error covariances, (m, n).
    radius : Tensor
        Radii clipped at the cone's radius, (n,).
    log_extra : Tensor, optional
        Each star's log-density under each component in another modality (the colour-magnitude
        diagram of ``experiment=multimodal``), (n, k); added to the astrometric log joint, so the
        E-step's memberships use it while the astrometric M-step stays as it is. None: astrometry only.
    cmd_bin : Tensor, optional
        Each star's colour-magnitude bin (int64, -1 without photometry), (n,): what the mixture's own
        photometric term (``photometry=True``) reads and re-estimates. None: no photometry.
    """

    values: Tensor
    errors: Tensor
    radius: Tensor
    log_extra: Tensor | None = None
    cmd_bin: Tensor | None = None

    @property
    def d(self) -> int:
        """Astrometric dimensions (2 or 3)."""
        return self.values.shape[0]

    def __len__(self) -> int:
        return self.radius.shape[0]

    def rows(self, index: Tensor | slice) -> EMBatch:
        """The batch of the stars at ``index``."""
        extra, cmd_bin = self.log_extra, self.cmd_bin
        if isinstance(index, slice):
            return EMBatch(
                self.values[:, index],
                self.errors[:, index],
                self.radius[index],
                None if extra is None else extra[index],
                None if cmd_bin is None else cmd_bin[index],
            )
        index = torch.as_tensor(index, device=self.radius.device)
        return EMBatch(
            self.values.index_select(1, index),
            self.errors.index_select(1, index),
            self.radius[index],
            None if extra is None else extra[index],
            None if cmd_bin is None else cmd_bin[index],
        )

    def with_log_extra(self, log_extra: Tensor | None) -> EMBatch:
        """The same stars with ``log_extra`` (n, k) as their other modality's log-densities (None: none)."""
        if log_extra is not None and tuple(log_extra.shape[:1]) != (len(self),):
            raise ValueError(f"log_extra has {log_extra.shape[0]} rows for a batch of {len(self)} stars")
        return EMBatch(self.values, self.errors, self.radius, log_extra, self.cmd_bin)

    def chunks(self, size: int = CHUNK) -> Iterator[EMBatch]:
        """Consecutive batches of at most ``size`` stars."""
        for start in range(0, len(self), size):
            yield self.rows(slice(start, start + size))


class ClusterFieldMixture:
    """Cluster (Plummer x isotropic, error-deconvolved) + field (flat x Gaussians) mixture.

    scikit-learn style: settings in ``__init__``; :meth:`fit` learns ``weights_`` (cluster
    first), the cluster's ``cluster_mean_``, ``sigma_`` (central pm dispersion, mas/yr), ``tau_``
    (parallax spread, mas), ``log_scale_`` (profile scale, log degrees), ``slope_``, the field's
    ``field_means_`` and ``field_covariances_``, the crowding coefficient ``beta_``,
    ``radius_max_``, ``log_likelihood_``, ``n_field_`` and ``cluster_mean_cov_`` (the fitted
    mean's robust covariance); :meth:`predict_proba` gives each star's probabilities, column 0
    the cluster. The EM contract (:mod:`grasp_dl.mixtures.em`): :meth:`explore`,
    :meth:`start_iteration`, :meth:`e_step`, :meth:`end_iteration`, :meth:`get_state`,
    :meth:`set_state`.

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
        Cap of the crowding inflation eta_i; None leaves it as far as ``BETA_MAX`` takes it (an
        eta of several at a dense centre, which lets in field stars 3-5 of their errors away).
    eta_min : float
        The inflation of every star's errors where the sources are sparsest (GaiaTools' run_fit.py
        scales all of them by 1.1): eta_i^2 = eta_0^2 + beta * density ratio, eta_0 = eta_min.
    fit_eta_floor : bool
        Fit eta_0 in [eta_min, eta_max] instead (every star of a crowded bulge cone has
        underestimated errors, not only the cluster's centre; without it a capped density term
        cannot give the outer stars what the same model on shuffled positions gives all of them).
    hold_crowding_in_null : bool
        The no-cluster null (``null_test``) keeps the fit's crowding coefficients instead of
        refitting them on the shuffled positions.
    field_min_sd : float
        Floor (mas/yr) of the proper-motion dispersion, along each axis of its ellipse, of every
        field component whose mean lies within FIELD_FLOOR_REACH floors of the cluster's: a tight
        flat component on the cluster's proper motion takes the scattered members of its centre
        away from it. One elsewhere is left as tight as it is: a satellite galaxy behind the
        cluster (the SMC behind 47 Tuc) is a flat population as tight as a cluster.
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
    spatial : bool
        The cluster's Plummer profile (else it is flat over the cone like the field: the model
        ignores positions, the dispersion is constant and the scale is not fitted; the starts
        still look for the cluster among the central stars).
    use_errors : bool
        Convolve every star's error covariance in (else they are taken as 0: a plain Gaussian
        mixture, with no crowding term).
    photometry : bool
        Each component's density in the colour-magnitude diagram (:mod:`grasp_dl.mixtures.cmd_histogram`),
        re-estimated at every M-step; needs the stars' ``cmd``.
    cluster_outliers : bool or "auto"
        One more component, last: stars on the cluster's spatial profile (same scale and slope)
        around its mean with a broad proper-motion (and parallax) spread of their own, fitted
        (``outlier_sd_``, ``outlier_tau_``; at least OUTLIER_SD_RATIO times the core's dispersion).
        It stands for the sources at the cluster's position whose astrometry is corrupted (blends
        in a crowded core, the stars the paper's RUWE and excess-noise cuts remove): they are not
        members, so column 0 (the core) stays the membership, and the core's dispersion no longer
        follows their tails. ``"auto"`` (default): the exploration refits its best with the
        component and keeps whichever the BIC prefers (:attr:`outliers_auto`; not with
        ``photometry``, whose histograms are per component).
    outlier_min_sd : float
        Floor (mas/yr) of the outliers' proper-motion spread (``cluster_outliers``): corrupted
        astrometry scatters more than any cluster's dispersion; a narrower outlier component takes
        the faint members whose errors Gaia underestimates.
    outliers_predicted : bool
        :meth:`predict_proba` gives the outlier component its posterior (a star of the cluster's
        profile with corrupted astrometry is no member); False (default) scores every star as if
        its astrometry were as good as stated (the outlier column 0, the others renormalised), as
        the paper's membership does for the stars its quality cuts keep: the outliers then only
        keep the cluster's dispersion from following their tails.
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
        eta_max: float | None = 2.0,
        eta_min: float = 1.0,
        fit_eta_floor: bool = False,
        hold_crowding_in_null: bool = True,
        field_min_sd: float = 1.0,
        scale_prior: bool = False,
        sigma_prior: float | None = None,
        start_pm: Sequence[float] | None = None,
        null_test: bool = False,
        spatial: bool = True,
        use_errors: bool = True,
        photometry: bool = False,
        cluster_outliers: bool | str = "auto",
        outlier_min_sd: float = 1.0,
        outliers_predicted: bool = False,
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
        self.eta_min = float(eta_min)
        self.fit_eta_floor = bool(fit_eta_floor)
        self.hold_crowding_in_null = bool(hold_crowding_in_null)
        self.eta0_ = self.eta_min
        self.field_min_sd = float(field_min_sd)
        if self.eta_min < 1.0 or (self.eta_max is not None and self.eta_max < self.eta_min):
            raise ValueError(f"need 1 <= eta_min <= eta_max, got eta_min={eta_min}, eta_max={eta_max}")
        self.scale_prior = bool(scale_prior)
        self.sigma_prior = None if sigma_prior is None else float(sigma_prior)
        self.start_pm = None if start_pm is None else np.asarray(start_pm, float)
        self.null_test = bool(null_test)
        self.spatial = bool(spatial)
        self.use_errors = bool(use_errors)
        self.photometry = bool(photometry)
        if isinstance(cluster_outliers, str) and cluster_outliers != "auto":
            raise ValueError(f"cluster_outliers must be true, false or 'auto', got {cluster_outliers!r}")
        #: ``cluster_outliers="auto"``: the exploration keeps the outlier component where the BIC prefers it
        self.outliers_auto = cluster_outliers == "auto"
        self.cluster_outliers = bool(cluster_outliers) and not self.outliers_auto
        self.outlier_min_sd = float(outlier_min_sd)
        self.outliers_predicted = bool(outliers_predicted)
        self.outlier_sd_, self.outlier_tau_ = OUTLIER_SD_START, TAU_BOUNDS[1]
        #: the components' colour-magnitude densities (``photometry``), set by :meth:`explore`
        self.cmd_histogram_: CmdHistogram | None = None
        self.log_likelihood_ratio_: float | None = None
        #: how many shuffles the null averaged, and each shuffle's ratio
        self.null_permutations_: int | None = None
        self.null_ratios_: list[float] | None = None
        self.reset_progress()

    # ------------------------------------------------------------------ model pieces
    @property
    def n_components(self) -> int:
        """Cluster plus field components (plus the cluster's outliers, last, with ``cluster_outliers``)."""
        return 1 + self.n_field_ + int(self.cluster_outliers)

    @property
    def _on_profile(self) -> list[int]:
        """The components that follow the cluster's spatial profile: the core, and its outliers."""
        return [0, 1 + self.n_field_] if self.cluster_outliers else [0]

    def _outlier_prior_t(self, like: Tensor, d: int) -> Tensor:
        """Diagonal of the outlier component's intrinsic covariance, (d, 1)."""
        rows = [self.outlier_sd_**2] * 2 + ([self.outlier_tau_**2] if d == 3 else [])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)[:, None]

    def _params(self, like: Tensor) -> dict[str, Tensor]:
        """The parameters as float64 tensors on ``like``'s device (remade when a parameter or device changes)."""
        arrays = (self.weights_, self.cluster_mean_, self.field_means_, self.field_covariances_)
        arrays = (*arrays, [self.outlier_sd_, self.outlier_tau_])
        grids = tuple(None if g is None else g.tobytes() for g in (self._scale_grid, self._beta_grid))
        key = (str(like.device), b"".join(np.asarray(a, float).tobytes() for a in arrays), grids)
        cache = self.__dict__.setdefault("_param_cache", {})
        if key not in cache:
            cache.clear()
            as_t = lambda a: torch.as_tensor(np.asarray(a, float), dtype=torch.float64, device=like.device)  # noqa: E731
            cache[key] = {
                "weights": as_t(self.weights_),
                "mean": as_t(self.cluster_mean_),
                "field_means": as_t(self.field_means_),
                "field_cov": as_t(self.field_covariances_),
                "field_packed": pack(as_t(self.field_covariances_)),  # (m, k_f)
                "scale_grid": as_t(self._scale_grid) if self._scale_grid is not None else None,
                "beta_grid": as_t(self._beta_grid) if self._beta_grid is not None else None,
            }
        return cache[key]

    def _changed(self) -> None:
        self.__dict__["_param_cache"] = {}

    def _profile_t(self, radius: Tensor, log_scale: float | None = None) -> Tensor:
        if not (self.dispersion_profile and self.spatial):
            return torch.ones_like(radius)
        return dispersion_profile(radius, self.log_scale_ if log_scale is None else log_scale)

    def _cluster_log_density_t(self, radius: Tensor) -> Tensor:
        if not self.spatial:  # flat over the cone, like the field
            return torch.full_like(radius, -math.log(math.pi * self.radius_max_**2))
        ls = torch.tensor(self.log_scale_, dtype=torch.float64, device=radius.device)
        return profile_log_density_t(radius, ls, self.slope_, self.radius_max_)

    def _density_ratio_t(self, radius: Tensor) -> Tensor:
        """The model's source density at each radius over the cone's mean density."""
        area = math.pi * self.radius_max_**2
        w0 = float(sum(self.weights_[j] for j in self._on_profile))
        return w0 * torch.exp(self._cluster_log_density_t(radius)) * area + (1.0 - w0)

    def _eta2_t(self, ratio: Tensor, beta: float | Tensor | None = None) -> Tensor:
        """The crowding inflation eta^2 = eta_0^2 + beta * density ratio, capped at ``eta_max``^2."""
        eta2 = self.eta0_**2 + (self.beta_ if beta is None else beta) * ratio
        return eta2 if self.eta_max is None else eta2.clamp(max=self.eta_max**2)

    def _beta_max(self) -> float:
        """The largest beta: BETA_MAX, or where the densest radius (the centre) reaches ``eta_max``."""
        if self.eta_max is None:
            return BETA_MAX
        peak = float(self._density_ratio_t(torch.zeros(1, dtype=torch.float64))[0])
        return min(BETA_MAX, max(self.eta_max**2 - self.eta0_**2, 0.0) / max(peak, 1.0))

    def _field_floor(self, cov: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """``cov`` with its proper-motion block's ellipse widened to at least ``field_min_sd`` on each axis.

        Only for a component whose ``mean`` is within FIELD_FLOOR_REACH floors of the cluster's proper motion.
        """
        if self.field_min_sd <= 0.0:
            return cov
        if float(np.hypot(*(np.asarray(mean)[:2] - self.cluster_mean_[:2]))) > FIELD_FLOOR_REACH * self.field_min_sd:
            return cov
        values, vectors = np.linalg.eigh(cov[:2, :2])
        out = cov.copy()
        out[:2, :2] += (vectors * np.maximum(self.field_min_sd**2 - values, 0.0)) @ vectors.T
        return out

    def _cluster_prior_t(self, radius: Tensor, d: int) -> Tensor:
        """Diagonal of the cluster's intrinsic covariance at each radius, (d, n)."""
        g = self.sigma_**2 * self._profile_t(radius)
        rows = [g, g] + ([torch.full_like(radius, self.tau_**2)] if d == 3 else [])
        return torch.stack(rows)

    def _log_spatial_t(self, radius: Tensor, weights: Tensor) -> Tensor:
        """log w_j + log Sigma_j(r) for every star and component, (n, k)."""
        out = torch.log(weights).expand(len(radius), -1).clone()
        cluster = self._cluster_log_density_t(radius)
        out[:, 0] += cluster
        out[:, 1 : 1 + self.n_field_] -= math.log(math.pi * self.radius_max_**2)
        if self.cluster_outliers:  # the last column, on the cluster's profile too
            out[:, -1] += cluster
        return out

    def _outlier_logpdf(self, diff0: Tensor, err: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
        """The outlier component's (T^-1 packed, T^-1 (v - m), log N), T = its spread + eta^2 C."""
        total = err.clone()
        total[list(_DIAG[d])] += self._outlier_prior_t(err, d)
        inv, logdet = packed_inverse(total, d)
        u = packed_matvec(inv, diff0, d)
        return inv, u, -0.5 * ((diff0 * u).sum(0) + logdet + d * math.log(2.0 * math.pi))

    def _field_logpdfs(self, batch: EMBatch, err: Tensor, params: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(T_j^-1 packed, T_j^-1 (v - m_j)) and log N for every field component, T_j = S_j + eta^2 C."""
        d = batch.d
        out = []
        for j in range(self.n_field_):
            inv, logdet = packed_inverse(err + params["field_packed"][:, j : j + 1], d)
            u = packed_matvec(inv, batch.values - params["field_means"][j][:, None], d)
            diff = batch.values - params["field_means"][j][:, None]
            out.append((inv, u, -0.5 * ((diff * u).sum(0) + logdet + d * math.log(2.0 * math.pi))))
        return out

    def _log_joint_t(self, batch: EMBatch) -> Tensor:
        """log w_j Sigma_j(r_i) N(v_i; m_j, S_j + eta_i^2 C_i) for every star and component, (n, k)."""
        params = self._params(batch.values)
        d = batch.d
        err = self._eta2_t(self._density_ratio_t(batch.radius)) * batch.errors
        total = err.clone()
        total[list(_DIAG[d])] += self._cluster_prior_t(batch.radius, d)
        columns = [packed_logpdf(batch.values - params["mean"][:, None], total, d)]
        columns += [lp for _, _, lp in self._field_logpdfs(batch, err, params)]
        if self.cluster_outliers:
            columns.append(self._outlier_logpdf(batch.values - params["mean"][:, None], err, d)[2])
        joint = self._log_spatial_t(batch.radius, params["weights"]) + torch.stack(columns, 1)
        extra = self._log_extra_t(batch)
        return joint if extra is None else joint + extra

    def _log_extra_t(self, batch: EMBatch) -> Tensor | None:
        """The per-star log-densities outside the astrometry: the batch's ``log_extra`` plus the photometry's."""
        if not self.photometry:
            return batch.log_extra
        if batch.cmd_bin is None:
            raise ValueError("photometry=True scores batches with colour-magnitude bins: make them with em_batch()")
        cmd = self.cmd_histogram_.log_density_of_bins(batch.cmd_bin)
        return cmd if batch.log_extra is None else batch.log_extra + cmd

    # ------------------------------------------------------------------ data
    def _prepare(self, data: StarData, rows: np.ndarray | None = None) -> _Prepared:
        has = data.has_astrometry if rows is None else rows
        radius = np.minimum(np.nan_to_num(data.radius[has], nan=self.radius_max_), self.radius_max_)
        values = np.ascontiguousarray(data.values[has].astype(float).T)
        errors = np.ascontiguousarray(pack(data.covariances[has].astype(float)))
        if not self.use_errors:
            errors = np.zeros_like(errors)
        cmd_bin = self.cmd_histogram_.bin_index(_cmd_of(data)[has]) if self.photometry else None
        return _Prepared(values, errors, radius, cmd_bin)

    def em_batch(self, data: StarData, device: torch.device | str | None = None) -> EMBatch:
        """The stars of ``data`` with astrometry as one :class:`EMBatch` on ``device`` (after :meth:`explore`).

        Parameters
        ----------
        data : StarData
            Stars (those without astrometry are left out).
        device : torch.device, str or None
            Where the tensors go.

        Returns
        -------
        EMBatch
        """
        return self._prepare(data).tensors(device)

    # ------------------------------------------------------------------ starts
    def _starts(self, p: _Prepared, rng: np.random.Generator) -> list[np.ndarray]:
        """Starting cluster memberships (n,) of the stars with astrometry, several ways."""
        v, r = p.values[:2].T, p.radius
        d = p.d
        err = np.sqrt(np.maximum(p.errors[_DIAG[d][0]] + p.errors[_DIAG[d][1]], 1e-12) / 2.0)
        precise = err <= np.percentile(err, 50)
        starts: list[np.ndarray] = []
        # (1)-(2) The densest proper motion among the central (precise) stars, for two central radii.
        # (1b)-(2b) Where all central stars' mode is elsewhere, a start there too: a cluster whose members
        # are all faint (reddened, distant) has few precise stars, and their mode is the field's.
        extra: list[np.ndarray] = []
        for quantile in (10, 30):
            central = r <= np.percentile(r, quantile)
            inner = central & precise if (central & precise).sum() >= 5 else central
            centre = _pm_mode(v[inner])
            starts.append(self._central_start(v, r, err, inner, centre, quantile))
            if inner is not central:
                everyone = _pm_mode(v[central])
                if np.hypot(*(everyone - centre)) > MODES_APART:
                    extra.append(self._central_start(v, r, err, central, everyone, quantile))
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
        return starts[: self.n_starts + int(self.start_pm is not None)] + extra

    @staticmethod
    def _central_start(
        v: np.ndarray, r: np.ndarray, err: np.ndarray, inner: np.ndarray, centre: np.ndarray, quantile: float
    ) -> np.ndarray:
        """Starting memberships of the stars near ``centre`` in proper motion, weighted to the centre of the cone."""
        # The cluster's own width: the spread of the central stars close to the mode (not of the field's).
        close = np.hypot(*(v[inner] - centre).T)
        spread = float(np.clip(np.median(close[close < 1.0]) if (close < 1.0).any() else 0.3, 0.05, 0.5))
        dist2 = ((v - centre) ** 2).sum(1) / (spread**2 + err**2)
        near = np.exp(-r / max(np.percentile(r, quantile), 1e-6))
        return np.clip(np.exp(-0.5 * dist2) * near, 1e-6, 0.95)

    def _initialise(self, p: _Prepared, cluster_resp: np.ndarray, n_field: int, seed: int) -> None:
        """Parameters from starting cluster memberships and a Gaussian mixture of the rest."""
        v = p.values.T
        d = p.d
        q = np.clip(cluster_resp, 1e-6, 1 - 1e-6)
        self.n_field_ = int(n_field)
        self.weights_ = np.empty(self.n_components)
        self.weights_[0] = q.mean()
        if self.cluster_outliers:
            self._split_outliers_off()
        self.cluster_mean_ = (q[:, None] * v).sum(0) / q.sum()
        self.sigma_, self.tau_ = 0.1, 0.02
        self.log_scale_ = math.log(max(float(np.average(p.radius, weights=q)), self.radius_max_ * 1e-3))
        self.slope_ = 4.0
        self.beta_ = 0.0
        self.eta0_ = self.eta_min
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
        self.weights_[1 : 1 + n_field] = (1.0 - q.mean()) * mass / mass.sum()
        self.field_means_ = (resp.T @ v) / mass[:, None]
        self.field_covariances_ = np.stack(
            [
                self._field_floor(
                    np.cov(v.T, aweights=resp[:, j] + 1e-12).reshape(d, d) + COV_FLOOR * np.eye(d), self.field_means_[j]
                )
                for j in range(n_field)
            ]
        )
        if self.photometry:
            columns = [q, resp] + ([q * OUTLIER_START_SHARE] if self.cluster_outliers else [])
            weights = torch.as_tensor(np.column_stack(columns))
            self.cmd_histogram_.fit_counts(self.cmd_histogram_.counts(torch.as_tensor(p.cmd_bin), weights).numpy())

    def _split_outliers_off(self) -> None:
        """Start the outlier component (the last weight) as OUTLIER_START_SHARE of the cluster's weight."""
        self.weights_[-1] = self.weights_[0] * OUTLIER_START_SHARE
        self.weights_[0] *= 1.0 - OUTLIER_START_SHARE
        self.outlier_sd_ = max(OUTLIER_SD_START, self.outlier_min_sd)
        self.outlier_tau_ = TAU_BOUNDS[1]

    # ------------------------------------------------------------------ EM (the contract of grasp_dl.mixtures.em)
    def reset_progress(self) -> None:
        """Start the iteration count and the convergence test afresh (before a new EM run)."""
        self.n_iter_ = 0
        self.previous_ = -math.inf
        self.converged_ = False
        self._scale_grid: np.ndarray | None = None
        self._beta_grid: np.ndarray | None = None
        self._changed()

    def _updates_beta(self) -> bool:
        return self.crowding and self.use_errors and self.n_iter_ % BETA_EVERY == 1

    def start_iteration(self) -> None:
        """Begin iteration ``n_iter_ + 1``: fix the candidate scales (and betas) its E-step scores."""
        self.n_iter_ += 1
        lo, hi = math.log(self.radius_max_ * 1e-3), math.log(self.radius_max_ * 10)
        offsets = np.concatenate([-SCALE_OFFSETS[::-1], [0.0], SCALE_OFFSETS])
        self._scale_grid = np.unique(np.clip(self.log_scale_ + offsets, lo, hi))
        self._beta_grid = None
        if self._updates_beta():
            local = self.beta_ + np.concatenate([-BETA_LOCAL, [0.0], BETA_LOCAL])
            self._beta_grid = np.unique(np.clip(np.concatenate([BETA_COARSE, local]), 0.0, self._beta_max()))
        self._changed()

    def e_step(self, batch: EMBatch, loglik_only: bool = False) -> Stats:
        """Sufficient statistics of ``batch`` under the current parameters (sums over its stars).

        Parameters
        ----------
        batch : EMBatch
            Stars with astrometry (float64 tensors, any device).
        loglik_only : bool
            Only ``loglik`` and ``count`` (no M-step will follow).

        Returns
        -------
        dict
            ``loglik``, ``count``, ``mass`` (k), field sums ``field_b`` (k_f, d), ``field_bb``
            (k_f, d, d), ``field_inv`` (k_f, m), cluster sums ``c_b`` (d), ``c_w``, ``c_wb`` (2),
            ``c_wss``, ``c_ss2``, the mean's covariance sums ``mc_complete`` (m), ``mc_loss`` and
            ``mc_meat`` (d, d), the candidate scales' ``scale_s`` and ``scale_d`` and, in an
            iteration that updates beta, the candidate betas' ``beta_ll``.
        """
        with single_cpu_thread(batch.values.device):
            return self._e_step(batch, loglik_only)[0]

    def e_step_memberships(self, batch: EMBatch) -> tuple[Stats, Tensor]:
        """:meth:`e_step`'s statistics and each star's component probabilities, from one pass.

        A model that learns another modality from the memberships (``log_extra``) keeps them per
        star; the statistics stay sums, so they reduce over batches and processes as before.

        Parameters
        ----------
        batch : EMBatch
            Stars with astrometry (float64 tensors, any device).

        Returns
        -------
        stats : dict
            As :meth:`e_step`.
        memberships : Tensor
            (n, k) component probabilities of the batch's stars (rows sum to 1), column 0 the cluster.
        """
        with single_cpu_thread(batch.values.device):
            return self._e_step(batch)

    def _e_step(self, batch: EMBatch, loglik_only: bool = False) -> tuple[Stats, Tensor]:
        params = self._params(batch.values)
        d, v, r = batch.d, batch.values, batch.radius
        diag = list(_DIAG[d])
        ratio = self._density_ratio_t(r)
        err = self._eta2_t(ratio) * batch.errors
        spatial = self._log_spatial_t(r, params["weights"])
        extra = self._log_extra_t(batch)
        if extra is not None:  # another modality's densities weigh in on the memberships
            spatial = spatial + extra
        prior = self._cluster_prior_t(r, d)
        total = err.clone()
        total[diag] += prior
        inv0, logdet0 = packed_inverse(total, d)
        diff0 = v - params["mean"][:, None]
        u0 = packed_matvec(inv0, diff0, d)
        log2pi = d * math.log(2.0 * math.pi)
        field = self._field_logpdfs(batch, err, params)
        columns = [-0.5 * ((diff0 * u0).sum(0) + logdet0 + log2pi)] + [lp for _, _, lp in field]
        outlier = self._outlier_logpdf(diff0, err, d) if self.cluster_outliers else None
        if outlier is not None:
            columns.append(outlier[2])
        joint = spatial + torch.stack(columns, 1)
        norm = torch.logsumexp(joint, 1)
        stats: Stats = {
            "loglik": norm.sum(),
            "count": torch.tensor(float(len(batch)), dtype=torch.float64, device=v.device),
        }
        q = torch.exp(joint - norm[:, None])
        if loglik_only:
            return stats, q
        stats["mass"] = q.sum(0)
        if self.photometry:
            stats["cmd_counts"] = self.cmd_histogram_.counts(batch.cmd_bin, q)
        # Field: extreme-deconvolution sums (Bovy et al. 2011): b_i = m + S T_i^-1 (v_i - m), and
        # sum_i q_i B_i = Q S - S (sum_i q_i T_i^-1) S from the summed inverses.
        bs, bbs, invs = [], [], []
        for j, (inv, u, _) in enumerate(field):
            qj = q[:, j + 1]
            b = params["field_means"][j][:, None] + params["field_cov"][j] @ u
            bs.append((b * qj).sum(1))
            bbs.append((b * qj) @ b.T)
            invs.append((inv * qj).sum(1))
        stats["field_b"], stats["field_bb"], stats["field_inv"] = torch.stack(bs), torch.stack(bbs), torch.stack(invs)
        # Cluster: the same with the intrinsic covariance diag(sigma^2 g(r), sigma^2 g(r), tau^2).
        q0 = q[:, 0]
        b0 = params["mean"][:, None] + prior * u0
        big_b = prior - prior**2 * inv0[diag]
        w = q0 / self._profile_t(r)
        stats["c_b"] = (b0 * q0).sum(1)
        stats["c_w"] = w.sum()
        stats["c_wb"] = (b0[:2] * w).sum(1)
        stats["c_wss"] = (w * (b0[0] ** 2 + b0[1] ** 2 + big_b[0] + big_b[1])).sum()
        stats["c_ss2"] = (q0 * (b0[2] ** 2 + big_b[2])).sum() if d == 3 else torch.zeros_like(stats["c_w"])
        # The fitted mean's sandwich covariance: complete information, information lost to
        # uncertain memberships, and the scores' scatter (see _mean_covariance).
        stats["mc_complete"] = (inv0 * q0).sum(1)
        stats["mc_loss"] = (u0 * (q0 * (1.0 - q0))) @ u0.T
        stats["mc_meat"] = (u0 * q0**2) @ u0.T
        on_profile = q0
        if outlier is not None:
            # The outliers: the same deconvolution sums with their spread diag(s_o^2, s_o^2, t_o^2) about the
            # cluster's mean; they follow its profile, so their memberships weigh in on its scale.
            qo = q[:, -1]
            o_prior = self._outlier_prior_t(v, d)
            bo = params["mean"][:, None] + o_prior * outlier[1]
            o_big = o_prior - o_prior**2 * outlier[0][diag]
            stats["o_b"] = (bo * qo).sum(1)
            stats["o_ss"] = (qo * (bo * bo + o_big)).sum(1)
            on_profile = q0 + qo
        # Candidate scales: the spatial term's sum_i q_i log(1 + r_i^2/a^2) and, with a dispersion
        # profile, the cluster's expected log-density at each candidate.
        grid = params["scale_grid"]
        a2 = torch.exp(2.0 * grid)[:, None]
        stats["scale_s"] = (torch.log1p(r[None, :] ** 2 / a2) * on_profile).sum(1)
        stats["scale_d"] = torch.zeros_like(grid)
        if self.dispersion_profile and self.spatial:
            used = q0 > SCALE_MIN_WEIGHT
            ru, qu = r[used], q0[used]
            g = torch.rsqrt(1.0 + ru[None, :] ** 2 / a2) * self.sigma_**2  # (G, n_u)
            # each candidate's packed covariance: only the proper-motion diagonal depends on the candidate
            cand = list(err[:, used][:, None, :].unbind(0))  # (1, n_u) each
            cand[diag[0]] = cand[diag[0]] + g
            cand[diag[1]] = cand[diag[1]] + g
            if d == 3:
                cand[diag[2]] = cand[diag[2]] + self.tau_**2
            stats["scale_d"] = (packed_logpdf_rows(diff0[:, used][:, None, :], cand, d) * qu).sum(1)
        if self._beta_grid is not None:
            betas = params["beta_grid"][:, None]
            errs = self._eta2_t(ratio[None, :], betas) * batch.errors[:, None, :]  # (m, B, n)
            cand0 = errs.clone()
            for k, row in enumerate(diag):
                cand0[row] += prior[k]
            cols = [packed_logpdf(diff0[:, None, :], cand0, d)]
            for j in range(self.n_field_):
                diff = (v - params["field_means"][j][:, None])[:, None, :]
                cols.append(packed_logpdf(diff, errs + params["field_packed"][:, j, None, None], d))
            if outlier is not None:
                cols.append(self._outlier_candidates(diff0, errs, d))
            joint_b = torch.stack(cols, -1) + spatial[None]  # (B, n, k)
            stats["beta_ll"] = torch.logsumexp(joint_b, -1).sum(1)
        if self.fit_eta_floor and self.n_iter_ % BETA_EVERY == 1:
            stats["eta0_ll"] = self._eta_floor_log_likelihoods(batch, ratio, spatial, prior)
        return stats, q

    def e_step_positional(self, radius: Tensor, log_extra: Tensor) -> tuple[Stats, Tensor]:
        """Statistics and memberships of stars without astrometry, from their radius and another modality.

        Their likelihood is sum_j w_j Sigma_j(r) h_j, h_j the other modality's density (the
        colour-magnitude diagram of ``model=multimodal``): the astrometry is integrated out, so they
        weigh in on the weights and the spatial profile only. Where that modality holds the
        magnitude, which with the crowding decides whether a star has astrometry, the selection
        multiplies every component's density alike and cancels: the weights and the profile are
        then those of all stars, not of the ones with astrometry.

        Parameters
        ----------
        radius : Tensor
            (n,) radii, clipped at the cone's radius (float64, any device).
        log_extra : Tensor
            (n, k) their log-densities under each component in the other modality.

        Returns
        -------
        stats : dict
            ``loglik``, ``count``, ``position_mass`` (k: their memberships' sums, added to the
            weights' and the profile's masses in the M-step) and, inside an iteration, ``scale_s``
            (their share of the candidate scales' sums); add them to :meth:`e_step`'s before
            :meth:`end_iteration`.
        memberships : Tensor
            (n, k) component probabilities, column 0 the cluster.
        """
        with single_cpu_thread(radius.device):
            params = self._params(radius)
            joint = self._log_spatial_t(radius, params["weights"]) + log_extra.to(radius.dtype)
            norm = torch.logsumexp(joint, 1)
            q = torch.exp(joint - norm[:, None])
            on_profile = q[:, self._on_profile].sum(1)
            stats: Stats = {
                "loglik": norm.sum(),
                "count": torch.tensor(float(len(radius)), dtype=torch.float64, device=radius.device),
                "position_mass": q.sum(0),
            }
            grid = params["scale_grid"]
            if grid is not None:  # inside an iteration (start_iteration fixed its candidate scales)
                a2 = torch.exp(2.0 * grid)[:, None]
                stats["scale_s"] = (torch.log1p(radius[None, :] ** 2 / a2) * on_profile).sum(1)
            return stats, q

    def _eta_floor_candidates(self) -> np.ndarray:
        hi = ETA_FLOOR_CANDIDATES.max() if self.eta_max is None else self.eta_max
        return np.unique(np.clip(ETA_FLOOR_CANDIDATES, self.eta_min, hi))

    def _eta_floor_log_likelihoods(self, batch: EMBatch, ratio: Tensor, spatial: Tensor, prior: Tensor) -> Tensor:
        """The batch's log-likelihood with each candidate floor eta_0 (the other parameters as they are), (K,)."""
        params = self._params(batch.values)
        d, v = batch.d, batch.values
        cand = torch.as_tensor(self._eta_floor_candidates(), dtype=ratio.dtype, device=ratio.device)
        eta2 = cand[:, None] ** 2 + self.beta_ * ratio[None, :]
        if self.eta_max is not None:
            eta2 = eta2.clamp(max=self.eta_max**2)
        errs = eta2 * batch.errors[:, None, :]  # (m, K, n)
        total = errs.clone()
        for k, row in enumerate(_DIAG[d]):
            total[row] += prior[k]
        cols = [packed_logpdf((v - params["mean"][:, None])[:, None, :], total, d)]
        for j in range(self.n_field_):
            diff = (v - params["field_means"][j][:, None])[:, None, :]
            cols.append(packed_logpdf(diff, errs + params["field_packed"][:, j, None, None], d))
        if self.cluster_outliers:
            cols.append(self._outlier_candidates(v - params["mean"][:, None], errs, d))
        return torch.logsumexp(torch.stack(cols, -1) + spatial[None], -1).sum(1)

    def _outlier_candidates(self, diff0: Tensor, errs: Tensor, d: int) -> Tensor:
        """The outlier component's log N of every star under candidate error scalings ``errs`` (m, B, n)."""
        total, prior = errs.clone(), self._outlier_prior_t(errs, d)
        for k, row in enumerate(_DIAG[d]):
            total[row] += prior[k, 0]
        return packed_logpdf(diff0[:, None, :], total, d)

    def end_iteration(self, stats: Stats, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """The M-step from the summed statistics of every star, then the convergence test.

        Parameters
        ----------
        stats : dict
            :meth:`e_step` statistics summed over all batches (and processes).
        optimizer : torch.optim.Optimizer, optional
            The optimizer of the parameters without a closed-form update, over one leaf tensor of
            three values (a Lightning module's parameter); None makes a private one.

        Returns
        -------
        bool
            True once the mean log-likelihood per star changed by less than ``tol``.
        """
        with single_cpu_thread("cpu"):  # a few scalar searches and L-BFGS steps on three values
            return self._end_iteration(stats, optimizer)

    def _end_iteration(self, stats: Stats, optimizer: torch.optim.Optimizer | None = None) -> bool:
        stats = {key: value.detach().to("cpu", torch.float64) for key, value in stats.items()}
        current = float(stats["loglik"] / stats["count"])
        self.log_likelihood_ = float(stats["loglik"])
        self.n_fit_ = int(round(float(stats["count"])))
        self.cluster_mean_cov_ = self._mean_covariance(stats)
        self._m_step(stats, optimizer)
        self.converged_ = abs(current - self.previous_) < self.tol
        self.previous_ = current
        self._changed()
        return self.converged_

    def _m_step(self, stats: Stats, optimizer: torch.optim.Optimizer | None) -> None:
        d = stats["c_b"].shape[0]
        mass = stats["mass"].numpy() + 1e-12  # the stars with astrometry: the astrometric parameters' mass
        # the weights and the profile: every star, those without astrometry included (e_step_positional)
        everyone = stats["mass"].numpy()
        if "position_mass" in stats:
            everyone = everyone + stats["position_mass"].numpy()
        self.weights_ = (everyone + 1e-12) / (everyone + 1e-12).sum()
        for j in range(self.n_field_):
            s = self.field_covariances_[j]
            mean = stats["field_b"][j].numpy() / mass[j + 1]
            sum_b = mass[j + 1] * s - s @ unpack(stats["field_inv"][j].numpy(), d) @ s
            cov = (stats["field_bb"][j].numpy() - mass[j + 1] * np.outer(mean, mean) + sum_b) / mass[j + 1]
            self.field_means_[j] = mean
            self.field_covariances_[j] = self._field_floor(0.5 * (cov + cov.T) + COV_FLOOR * np.eye(d), mean)
        m0 = mass[0]
        self.cluster_mean_ = stats["c_b"].numpy() / m0
        mu = self.cluster_mean_[:2]
        spread = float(stats["c_wss"]) - 2.0 * float(mu @ stats["c_wb"].numpy()) + float(mu @ mu) * float(stats["c_w"])
        sigma2 = max(spread / (2.0 * m0), 0.0)
        if self.sigma_prior is None:
            self.sigma_ = float(np.clip(math.sqrt(sigma2), *SIGMA_BOUNDS))
        else:
            # the expected complete-data log-likelihood, -m0 (2 log sigma + sigma2 / sigma^2), plus the prior;
            # searched up to where the prior reaches e^20 (beyond, it swamps the likelihood's precision)
            sigma0 = self.sigma_prior
            upper = min(SIGMA_BOUNDS[1], max(sigma0 * (1.0 + 20.0 / PRIOR_STEEPNESS), 2.0 * SIGMA_BOUNDS[0]))
            self.sigma_ = bounded_minimum(
                lambda x: m0 * (2.0 * math.log(x) + sigma2 / x**2) + math.exp(PRIOR_STEEPNESS * (x / sigma0 - 1.0)),
                SIGMA_BOUNDS[0],
                upper,
                xatol=1e-5,
            )
        if d == 3:
            tau2 = float(stats["c_ss2"]) / m0 - self.cluster_mean_[2] ** 2
            self.tau_ = float(np.clip(math.sqrt(max(tau2, 0.0)), *TAU_BOUNDS))
        if "o_ss" in stats:
            self._outlier_m_step(stats, float(mass[-1]))
        if "cmd_counts" in stats:
            self.cmd_histogram_.fit_counts(stats["cmd_counts"].numpy())
        self._update_shape(stats, float(sum(everyone[j] for j in self._on_profile)), optimizer)

    def _outlier_m_step(self, stats: Stats, mass: float) -> None:
        """The outliers' spread about the cluster's (new) mean: pm (both axes) and parallax."""
        mu, d = self.cluster_mean_, len(self.cluster_mean_)
        ob, oss = stats["o_b"].numpy(), stats["o_ss"].numpy()
        spread = oss - 2.0 * mu * ob + mu**2 * mass  # sum_i q_i E[(b_i - mu)^2], per axis
        sd = math.sqrt(max(float(spread[:2].sum()) / (2.0 * max(mass, 1e-12)), 0.0))
        lower = max(OUTLIER_SD_RATIO * self.sigma_, self.outlier_min_sd)
        self.outlier_sd_ = float(np.clip(sd, lower, max(lower, SIGMA_BOUNDS[1])))
        if d == 3:
            tau = math.sqrt(max(float(spread[2]) / max(mass, 1e-12), 0.0))
            self.outlier_tau_ = float(np.clip(tau, self.tau_, max(self.tau_, TAU_BOUNDS[1])))

    def _update_shape(self, stats: Stats, mass0: float, optimizer: torch.optim.Optimizer | None) -> None:
        """Scale and slope (and beta) maximising the expected log-likelihood, interpolated between candidates.

        The E-step scored each candidate scale (and beta); between the three candidates around
        the best, the objective is their parabola, exact in the slope (the profile's normalisation
        is analytic). A bounded search finds its minimum; with ``optimizer`` (L-BFGS over a leaf
        tensor of three values: a Lightning module's parameter) gradient steps then polish it.
        Without ``spatial`` there is no profile to fit and only beta moves.
        """
        if not self.spatial:
            beta = self._beta_search(stats)
            if beta is not None:
                self.beta_ = beta[0]
            return
        grid = np.asarray(self._scale_grid, float)
        s_sum, d_sum = stats["scale_s"].numpy(), stats["scale_d"].numpy()
        radius_max, norm = self.radius_max_, max(mass0, 1.0)

        def scale_nll(
            ls: float, slope: float, nodes: Sequence[float], s3: Sequence[float], d3: Sequence[float]
        ) -> float:
            s, dd = _quadratic(ls, nodes, s3), _quadratic(ls, nodes, d3)
            value = 0.5 * slope * s + mass0 * log_profile_norm(ls, slope, radius_max) - dd
            return (value + self._scale_penalty(ls)) / norm

        nll = (
            0.5 * self.slope_ * s_sum
            + mass0 * np.array([log_profile_norm(x, self.slope_, radius_max) for x in grid])
            - d_sum
            + np.array([self._scale_penalty(x) for x in grid])
        )
        index = list(_bracket(nll))
        nodes, s3, d3 = grid[index], s_sum[index], d_sum[index]
        # the searches' parabolas in Python floats (the same values as numpy's, a fraction of the cost)
        f_nodes, f_s3, f_d3 = nodes.tolist(), s3.tolist(), d3.tolist()

        # Two rounds of coordinate search (scale, then slope); the gradient steps below are joint.
        ls, slope = float(nodes[1]), self.slope_
        for _ in range(2):
            ls = bounded_minimum(
                lambda x, g=slope: scale_nll(x, g, f_nodes, f_s3, f_d3), f_nodes[0], f_nodes[2], xatol=1e-6
            )
            if not self.free_slope:
                break
            slope = bounded_minimum(lambda g, x=ls: scale_nll(x, g, f_nodes, f_s3, f_d3), *SLOPE_BOUNDS, xatol=1e-5)
        beta = self._beta_search(stats)
        values = [ls, slope, self.beta_ if beta is None else beta[0]]
        if optimizer is not None:
            values = self._polish(values, (nodes, s3, d3), None if beta is None else beta[1], mass0, optimizer)
        self.log_scale_ = float(values[0])
        if self.free_slope:
            self.slope_ = float(values[1])
        if beta is not None:
            self.beta_ = float(values[2])
        if "eta0_ll" in stats:
            cand, ll = self._eta_floor_candidates(), stats["eta0_ll"].numpy()
            if len(cand) >= 3:
                index = list(_bracket(-ll))
                nodes, l3 = (torch.as_tensor(a, dtype=torch.float64) for a in (cand[index], ll[index]))
                self.eta0_ = bounded_minimum(
                    lambda x: -float(_quadratic(torch.tensor(x, dtype=torch.float64), nodes, l3)),
                    float(nodes[0]),
                    float(nodes[2]),
                    xatol=1e-4,
                )

    def _beta_search(self, stats: Stats) -> tuple[float, tuple[np.ndarray, np.ndarray, float]] | None:
        """The best beta on the parabola through the three candidates around the best, and that parabola.

        None in an iteration that does not update beta.
        """
        if "beta_ll" not in stats or self._beta_grid is None or len(self._beta_grid) < 3:
            return None  # fewer than three distinct candidates (beta's range shrunk to ~0): nothing to interpolate
        betas, ll = np.asarray(self._beta_grid, float), stats["beta_ll"].numpy()
        b_index = list(_bracket(-ll))
        b_nodes, l3 = betas[b_index], ll[b_index]
        count = max(float(stats["count"]), 1.0)
        f_nodes, f_l3 = b_nodes.tolist(), l3.tolist()
        best = bounded_minimum(lambda b: -_quadratic(b, f_nodes, f_l3) / count, f_nodes[0], f_nodes[2], xatol=1e-6)
        return best, (b_nodes, l3, count)

    def _scale_penalty(self, log_scale: float) -> float:
        """The paper's soft prior exp(5 (a / R - 0.75)) on the Plummer scale (0 without ``scale_prior``)."""
        if not self.scale_prior:
            return 0.0
        return math.exp(PRIOR_STEEPNESS * (math.exp(log_scale) / self.radius_max_ - SCALE_PRIOR_AT))

    def _polish(
        self,
        values: list[float],
        scale: tuple[np.ndarray, np.ndarray, np.ndarray],
        beta: tuple[np.ndarray, np.ndarray, float] | None,
        mass0: float,
        optimizer: torch.optim.Optimizer,
    ) -> list[float]:
        """Gradient (L-BFGS) steps of ``optimizer`` on the same interpolated objective, from ``values``."""
        parameter = optimizer.param_groups[0]["params"][0]
        f64 = {"dtype": torch.float64, "device": parameter.device}
        nodes, s3, d3 = (torch.as_tensor(a, **f64) for a in scale)
        lower = [float(nodes[0]), SLOPE_BOUNDS[0] if self.free_slope else values[1], values[2]]
        upper = [float(nodes[2]), SLOPE_BOUNDS[1] if self.free_slope else values[1], values[2]]
        if beta is not None:
            b_nodes, l3 = (torch.as_tensor(a, **f64) for a in beta[:2])
            lower[2], upper[2] = float(b_nodes[0]), float(b_nodes[1 + 1])
        norm = max(mass0, 1.0)

        def objective(x: Tensor) -> Tensor:
            ls, slope = x[0], x[1]
            s, dd = _quadratic(ls, nodes, s3), _quadratic(ls, nodes, d3)
            value = 0.5 * slope * s + mass0 * log_profile_norm_t(ls, slope, self.radius_max_) - dd
            if self.scale_prior:
                value = value + torch.exp(PRIOR_STEEPNESS * (torch.exp(ls) / self.radius_max_ - SCALE_PRIOR_AT))
            value = value / norm
            if beta is not None:
                value = value - _quadratic(x[2], b_nodes, l3) / beta[2]
            return value

        best = minimise_bounded(
            objective,
            torch.tensor(values, **f64),
            torch.tensor(lower, **f64),
            torch.tensor(upper, **f64),
            parameter,
            optimizer,
        )
        return [float(v) for v in best]

    def get_state(self) -> dict[str, Any]:
        """Everything that continues the fit: the parameters and the iteration's progress (plain types).

        Returns
        -------
        dict
            :meth:`state_dict` plus ``n_iter``, ``previous_log_likelihood``, ``converged``,
            ``n_fit`` and the exploration's ``selection``.
        """
        return {
            **self.state_dict(),
            "n_iter": int(self.n_iter_),
            "previous_log_likelihood": float(self.previous_),
            "converged": bool(self.converged_),
            "n_fit": int(getattr(self, "n_fit_", 0)),
            "selection": [dict(row) for row in getattr(self, "selection_", [])],
        }

    def set_state(self, state: Mapping[str, Any]) -> ClusterFieldMixture:
        """Restore :meth:`get_state` (or a plain :meth:`state_dict`); returns self."""
        self.load_state_dict(state)
        return self

    def _mean_covariance(self, stats: Stats) -> np.ndarray | None:
        """Robust (sandwich) covariance of the fitted cluster mean, (d, d), from an E-step's sums.

        Each star's score for the mean is s_i = q_i T_i^-1 (v_i - m), with q_i its cluster posterior
        and T_i the cluster's intrinsic plus its error covariance. The bread is the observed
        information (Louis 1982: the complete-data information sum q_i T_i^-1 less the information
        lost to uncertain memberships, sum q_i (1 - q_i) T_i^-1 (v_i - m)(v_i - m)^T T_i^-1), the meat
        the scores' own scatter sum s_i s_i^T, so the error holds where the field's Gaussians or
        the cluster's profile are only approximately right; the members' standard error alone
        would ignore the membership uncertainty. None when the cluster's memberships add up to
        fewer than MIN_MEMBERS_FOR_ERROR stars.
        """
        d = stats["c_b"].shape[0]
        if not float(stats["mass"][0]) >= MIN_MEMBERS_FOR_ERROR:
            return None
        complete = unpack(stats["mc_complete"].numpy(), d)
        observed = complete - stats["mc_loss"].numpy()
        bread = observed if np.linalg.eigvalsh(observed).min() > 0 else complete
        if not np.linalg.eigvalsh(bread).min() > 0:
            return None
        inverse = np.linalg.inv(bread)
        cov = inverse @ stats["mc_meat"].numpy() @ inverse
        return 0.5 * (cov + cov.T)

    def _em(self, batch: EMBatch, max_iter: int) -> float:
        """A fresh EM run of at most ``max_iter`` iterations on one batch; its final total log-likelihood."""
        self.reset_progress()
        run_em(self, lambda: batch.chunks(), max_iter)
        return float(sum(self.e_step(chunk, loglik_only=True)["loglik"] for chunk in batch.chunks()))

    def predict_cluster_explore(self, p: _Prepared | EMBatch) -> np.ndarray:
        """Cluster posterior of prepared stars (the EM's own arrays)."""
        batch = p.tensors() if isinstance(p, _Prepared) else p
        joint = self._log_joint_t(batch)
        return torch.exp(joint[:, 0] - torch.logsumexp(joint, 1)).cpu().numpy()

    def n_parameters(self) -> int:
        """Free parameters: weights, cluster (mean, sigma, tau, profile), field means and covariances, beta, histograms."""
        d = self.cluster_mean_.shape[0]
        k = self.n_field_
        profile = (1 + int(self.free_slope)) if self.spatial else 0
        crowding = int(self.crowding and self.use_errors)
        histograms = self.cmd_histogram_.n_parameters(self.n_components) if self.photometry else 0
        outliers = (1 + (2 if d == 3 else 1)) if self.cluster_outliers else 0  # weight, spreads
        return k + d + (2 if d == 3 else 1) + profile + k * d + k * d * (d + 1) // 2 + crowding + histograms + outliers

    def explore(self, data: StarData) -> ClusterFieldMixture:
        """Stage 1: the starts and the number of field components, on a seeded subsample; returns self.

        Deterministic in ``data`` and ``seed``, so processes holding the same stars explore alike.
        Leaves the winner's parameters with the iteration count at 0, ready for the refinement on
        every star (:func:`~grasp_dl.mixtures.em.run_em`, or one Lightning epoch per iteration).

        Parameters
        ----------
        data : StarData
            Astrometry, error covariances and radii of the stars.

        Returns
        -------
        ClusterFieldMixture

        Raises
        ------
        ValueError
            If fewer than 20 stars have astrometry, or ``photometry`` is on and the stars have no
            magnitudes and colours.
        """
        with single_cpu_thread("cpu"):  # starts and BIC on a subsample of a few thousand stars
            return self._explore(data)

    def _explore(self, data: StarData) -> ClusterFieldMixture:
        has = data.has_astrometry
        if has.sum() < 20:
            raise ValueError(f"{int(has.sum())} stars with astrometry are too few for a cluster + field mixture")
        radius = np.nan_to_num(data.radius, nan=0.0)
        self.radius_max_ = float(radius.max()) if radius.max() > 0 else 1.0
        if self.photometry:
            self.cmd_histogram_ = CmdHistogram.spanning(_cmd_of(data))
        full = self._prepare(data)
        n = len(full.radius)
        rng = np.random.default_rng(self.seed)
        explore = full.rows(np.sort(rng.choice(n, self.explore_size, replace=False))) if n > self.explore_size else full
        batch = explore.tensors()
        # Stage 1: every start with one number of field components; stage 2: the other numbers
        # (BIC) started from stage 1's best cluster memberships.
        first = self.n_field if self.n_field is not None else FIELD_START
        others = (
            [] if self.n_field is not None else [k for k in range(FIELD_RANGE[0], FIELD_RANGE[1] + 1) if k != first]
        )
        best: tuple[float, dict[str, Any]] | None = None
        selection: list[dict[str, Any]] = []

        def run(start: np.ndarray, n_field: int, label: str) -> None:
            nonlocal best
            self._initialise(explore, start, n_field, self.seed)
            loglik = self._em(batch, min(self.max_iter, EXPLORE_ITER))
            bic = -2.0 * loglik + self.n_parameters() * math.log(len(explore.radius))
            selection.append({"n_field": n_field, "start": label, "log_likelihood": loglik, "bic": bic})
            if best is None or bic < best[0]:
                best = (bic, self.state_dict())

        for index, start in enumerate(self._starts(explore, rng)):
            run(start, first, f"start {index}")
        self.load_state_dict(best[1])
        fitted = self.predict_cluster_explore(batch)
        for n_field in others:
            run(fitted, n_field, "stage 1 best")
        self.load_state_dict(best[1])
        if self.outliers_auto and not (self.cluster_outliers or self.photometry):
            # stage 3: the best's cluster memberships start a fit with the cluster's outliers (the field
            # refitted too: started from the best's parameters instead, ngc6522 ends at precision 0.86, not 0.90)
            fitted = self.predict_cluster_explore(batch)
            self.cluster_outliers = True
            run(fitted, self.n_field_, "best + outliers")
            self.load_state_dict(best[1])
        self.selection_ = selection
        self.reset_progress()
        return self

    def fit(self, data: StarData) -> ClusterFieldMixture:
        """Fit the mixture to ``data``: :meth:`explore`, then EM on every star in a plain loop; returns self.

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
            If fewer than 20 stars have astrometry, or ``photometry`` is on and the stars have no
            magnitudes and colours.
        """
        self.explore(data)
        full = self.em_batch(data)
        run_em(self, lambda: full.chunks(), self.max_iter, new_optimizer(shape_parameter()))
        if self.null_test:
            self.run_null_test(full)
        self.log_summary()
        return self

    def run_null_test(self, batch: EMBatch, refit: bool = False) -> float:
        """Keep :meth:`null_log_likelihood_ratio` of ``batch`` as ``log_likelihood_ratio_``; returns it."""
        self.log_likelihood_ratio_ = self.null_log_likelihood_ratio(batch, refit=refit)
        return self.log_likelihood_ratio_

    def null_permutations(self, n_stars: int) -> int:
        """Shuffles the null averages for ``n_stars`` stars: NULL_PERMUTATIONS within NULL_STAR_BUDGET, at least 1."""
        return int(min(NULL_PERMUTATIONS, max(1, NULL_STAR_BUDGET // max(int(n_stars), 1))))

    def null_log_likelihood_ratio(self, batch: EMBatch, permutations: int | None = None, refit: bool = False) -> float:
        """log L(fit) - the mean log L of the same model on the stars with their positions shuffled.

        The radii are shuffled among the stars (seeded) and the model refitted from the fit
        (NULL_ITER iterations): only the link between position and astrometry is broken, so the
        ratio stays near 0 in a cone without a cluster and is large for a real one. One shuffle's
        null log-likelihood is a random draw, as noisy as the few stars that carry the contrast
        (where a cluster fills a small cone, the handful of field stars); the ratio is taken
        against its average over ``permutations`` shuffles (:meth:`null_permutations` by default;
        the first shuffle is the one a single-shuffle null used). ``null_ratios_`` keeps each
        shuffle's ratio (their spread is one shuffle's noise).

        With ``refit`` the fit's side is refitted to ``batch`` as each shuffle is (NULL_ITER
        iterations from the fit): for a fit whose weights other stars shaped too (the stars without
        astrometry of ``model=multimodal``), which ``batch`` alone would otherwise hold against it.
        """
        permutations = self.null_permutations(len(batch)) if permutations is None else max(1, int(permutations))
        fitted = self.get_state()
        with torch.no_grad():
            loglik = float(sum(self.e_step(chunk, loglik_only=True)["loglik"] for chunk in batch.chunks()))
            generator = torch.Generator().manual_seed(self.seed)
            # hold_crowding_in_null: the crowding's strength (beta, eta_0) stays the fit's; under a cap, a
            # flat null profile would otherwise buy every star the inflation that the fit gives the centre
            crowding, fit_floor = self.crowding, self.fit_eta_floor
            nulls = []
            try:
                if refit:  # on the same terms as the shuffles
                    if self.hold_crowding_in_null:
                        self.crowding = self.fit_eta_floor = False
                    loglik = self._em(batch, NULL_ITER)
                    self.crowding, self.fit_eta_floor = crowding, fit_floor
                for _ in range(permutations):
                    order = torch.randperm(len(batch), generator=generator).to(batch.radius.device)
                    shuffled = EMBatch(batch.values, batch.errors, batch.radius[order], batch.log_extra, batch.cmd_bin)
                    self.set_state(fitted)
                    if self.hold_crowding_in_null:
                        self.crowding = self.fit_eta_floor = False
                    nulls.append(self._em(shuffled, NULL_ITER))
                    self.crowding, self.fit_eta_floor = crowding, fit_floor
            finally:
                self.crowding, self.fit_eta_floor = crowding, fit_floor
                self.set_state(fitted)
        ratios = loglik - np.asarray(nulls, float)
        self.null_permutations_ = permutations
        self.null_ratios_ = [float(r) for r in ratios]
        return float(ratios.mean())

    def outlier_stars(self) -> float:
        """Stars the fit puts in the cluster's outlier component (0 without it).

        They follow the cluster's profile too, so the positions' log-likelihood ratio sums over
        them as over the members: the verdict's sqrt(members) rule counts them
        (:func:`grasp_dl.membership.guards.check_plausibility`'s ``outlier_stars``).
        """
        if not self.cluster_outliers:
            return 0.0
        return float(self.weights_[-1]) * float(getattr(self, "n_fit_", 0))

    def log_summary(self) -> None:
        """Log the fitted mixture in one line."""
        log.info(
            "xd mixture: %d field components, cluster weight %.4f, mean %s, sigma %.3f, scale %.3g deg, beta %.2f",
            self.n_field_,
            self.weights_[0],
            np.round(self.cluster_mean_, 4),
            self.sigma_,
            math.exp(self.log_scale_),
            self.beta_,
        )

    # ------------------------------------------------------------------ inference
    def predict_proba(self, data: StarData, log_extra: np.ndarray | Tensor | None = None) -> np.ndarray:
        """Component probabilities of each star (rows sum to 1), column 0 the cluster.

        Parameters
        ----------
        data : StarData
            Stars to score; those without astrometry are scored from their radius (and ``log_extra``) alone.
        log_extra : array or Tensor, optional
            (n, k) log-densities of every star in another modality (see :class:`EMBatch`).

        Returns
        -------
        numpy.ndarray
            (n, 1 + n_field) probabilities.
        """
        radius = np.minimum(np.nan_to_num(data.radius, nan=self.radius_max_), self.radius_max_)
        with single_cpu_thread("cpu"):
            r = torch.as_tensor(radius, dtype=torch.float64)
            joint = self._log_spatial_t(r, self._params(r)["weights"])
            has = data.has_astrometry
            if self.photometry and not has.all():  # the rest are scored from their radius and photometry
                cmd = torch.as_tensor(self.cmd_histogram_.log_density(_cmd_of(data)[~has]))
                joint[torch.as_tensor(~has)] += cmd
            if has.any():
                batch = self._prepare(data, has).tensors()
                joint[torch.as_tensor(has)] = torch.cat([self._log_joint_t(chunk) for chunk in batch.chunks()])
            if log_extra is not None:
                extra = torch.as_tensor(log_extra, dtype=torch.float64).cpu()
                if extra.shape != joint.shape:
                    raise ValueError(f"log_extra has shape {tuple(extra.shape)}, the stars need {tuple(joint.shape)}")
                joint = joint + torch.nan_to_num(extra, nan=0.0)
            if self.cluster_outliers and not self.outliers_predicted:  # as if every star's astrometry were sound
                joint[:, -1] = -math.inf
            return torch.exp(joint - torch.logsumexp(joint, 1, keepdim=True)).numpy()

    def bic(self) -> float:
        """Bayesian information criterion of the final fit (lower is better)."""
        return -2.0 * self.log_likelihood_ + self.n_parameters() * math.log(self.n_fit_)

    def state_dict(self) -> dict[str, Any]:
        """The fitted parameters as plain types (for checkpoints and JSON)."""
        cov = getattr(self, "cluster_mean_cov_", None)
        return (
            {
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
                "eta0": float(getattr(self, "eta0_", self.eta_min)),
                "radius_max": float(self.radius_max_),
                "log_likelihood": float(getattr(self, "log_likelihood_", math.nan)),
                "cluster_mean_cov": None if cov is None else cov.tolist(),
                "log_likelihood_ratio": getattr(self, "log_likelihood_ratio_", None),
            }
            | (
                {"outlier_sd": float(self.outlier_sd_), "outlier_tau": float(self.outlier_tau_)}
                if self.cluster_outliers
                else {}
            )
            | self._null_state()
            | ({} if self.cmd_histogram_ is None else {"cmd_histogram": self.cmd_histogram_.state_dict()})
        )

    def _null_state(self) -> dict[str, Any]:
        """The null's shuffles for :meth:`state_dict`: their number and ratios, once the null test ran."""
        if getattr(self, "null_permutations_", None) is None:
            return {}
        return {"null_permutations": int(self.null_permutations_), "null_ratios": list(self.null_ratios_ or [])}

    def load_state_dict(self, state: Mapping[str, Any]) -> ClusterFieldMixture:
        """Restore a fit from :meth:`state_dict` or :meth:`get_state` (no data needed); returns self."""
        self.n_field_ = int(state["n_field"])
        self.weights_ = np.asarray(state["weights"], float)
        # a fit with the cluster's outliers has their component (and its spreads), whatever this one's setting
        self.cluster_outliers = "outlier_sd" in state
        self.outlier_sd_ = float(state.get("outlier_sd", OUTLIER_SD_START))
        self.outlier_tau_ = float(state.get("outlier_tau", TAU_BOUNDS[1]))
        self.cluster_mean_ = np.asarray(state["cluster_mean"], float)
        self.sigma_, self.tau_ = float(state["sigma"]), float(state["tau"])
        self.log_scale_ = float(state["log_scale"])
        self.slope_ = float(state.get("slope", 4.0))
        self.field_means_ = np.asarray(state["field_means"], float).reshape(self.n_field_, -1)
        d = self.field_means_.shape[1]
        self.field_covariances_ = np.asarray(state["field_covariances"], float).reshape(self.n_field_, d, d)
        self.beta_ = float(state["beta"])
        self.eta0_ = float(state.get("eta0", self.eta_min))
        self.radius_max_ = float(state["radius_max"])
        self.log_likelihood_ = float(state["log_likelihood"])
        cov = state.get("cluster_mean_cov")  # absent from checkpoints written before it was kept
        self.cluster_mean_cov_ = None if cov is None else np.asarray(cov, float)
        self.log_likelihood_ratio_ = state.get("log_likelihood_ratio")
        self.null_permutations_ = state.get("null_permutations")  # absent from checkpoints before the averaged null
        self.null_ratios_ = state.get("null_ratios")
        # The iteration's progress (get_state); absent from a plain state_dict.
        self.n_iter_ = int(state.get("n_iter", 0))
        self.previous_ = float(state.get("previous_log_likelihood", -math.inf))
        self.converged_ = bool(state.get("converged", False))
        if "n_fit" in state:
            self.n_fit_ = int(state["n_fit"])
        if "selection" in state:
            self.selection_ = [dict(row) for row in state["selection"]]
        if "cmd_histogram" in state:
            self.cmd_histogram_ = CmdHistogram.from_state(state["cmd_histogram"])
        elif self.photometry:
            raise ValueError("this state has no colour-magnitude histogram: it was not fitted with photometry=True")
        self._changed()
        return self


def _cmd_of(data: StarData) -> np.ndarray:
    """The stars' (magnitude, colour), (n, 2); a clear error when ``photometry`` has none to read."""
    if data.cmd is None:
        raise ValueError(
            "photometry=True needs each star's magnitude and colour (phot_g_mean_mag, bp_rp in the catalogue, "
            "StarData.cmd): add them or switch photometry off"
        )
    return np.asarray(data.cmd, float)


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
            + ("" if not m.fit_eta_floor else f" eta0={m.eta0_:.2f}")
            + ("" if not m.cluster_outliers else f" w_o={m.weights_[-1]:.3f} s_o={m.outlier_sd_:.2f}")
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


__all__: Sequence[str] = (
    "ClusterFieldMixture",
    "EMBatch",
    "MembershipResult",
    "fit_membership",
    "plummer_log_density",
    "profile_log_density",
)
