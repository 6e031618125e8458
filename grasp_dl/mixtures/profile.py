"""The cluster's surface density and dispersion profile, in numpy and in torch, one definition each.

A globular cluster's stars thin out from its centre as a generalised Plummer profile
(1 + r^2/a^2)^(-gamma/2), normalised over the cone r <= R (gamma = 4 is Plummer's); its
proper-motion dispersion falls with radius as a Plummer sphere's, sigma^2(r) = sigma_0^2
(1 + r^2/a^2)^(-1/2). The mixtures (:mod:`grasp_dl.mixtures.cluster_field`), the deep models'
radial prior (:mod:`grasp_dl.models.spatial`) and their starts all use these functions, so the
profile has one definition whichever array library evaluates it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Plummer's outer slope.
PLUMMER_SLOPE = 4.0


def log_profile_norm(log_scale: float, slope: float, radius_max: float) -> float:
    """log of the integral of (1 + r^2/a^2)^(-slope/2) over the disc r <= radius_max.

    Parameters
    ----------
    log_scale : float
        log of the scale a (log degrees).
    slope : float
        Outer logarithmic slope gamma (> 0).
    radius_max : float
        The cone's radius (degrees).

    Returns
    -------
    float
        log of the normalisation (log deg^2).
    """
    a2 = math.exp(2.0 * log_scale)
    x = radius_max**2 / a2
    e = 1.0 - slope / 2.0
    integral = math.log1p(x) if abs(e) < 1e-9 else math.expm1(e * math.log1p(x)) / e
    return math.log(math.pi * a2 * integral)


def log_profile_norm_t(log_scale: Tensor, slope: Tensor | float, radius_max: float | Tensor) -> Tensor:
    """:func:`log_profile_norm` in torch, differentiable in the scale and the slope.

    Parameters
    ----------
    log_scale : Tensor
        log of the scale a (any shape).
    slope : Tensor or float
        Outer slope (broadcasts with ``log_scale``).
    radius_max : float or Tensor
        The cone's radius (degrees).

    Returns
    -------
    Tensor
    """
    a2 = torch.exp(2.0 * log_scale)
    log1p_x = torch.log1p(radius_max**2 / a2)
    e = 1.0 - torch.as_tensor(slope, dtype=log_scale.dtype, device=log_scale.device) / 2.0
    small = e.abs() < 1e-9
    safe = torch.where(small, torch.ones_like(e), e)
    integral = torch.where(small, log1p_x, torch.expm1(safe * log1p_x) / safe)
    return math.log(math.pi) + torch.log(a2) + torch.log(integral)


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
    return -0.5 * slope * np.log1p(np.asarray(radius, float) ** 2 / a2) - log_profile_norm(log_scale, slope, radius_max)


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
    return profile_log_density(radius, log_scale, PLUMMER_SLOPE, radius_max)


def profile_log_density_t(
    radius: Tensor, log_scale: Tensor, slope: Tensor | float, radius_max: float | Tensor
) -> Tensor:
    """:func:`profile_log_density` in torch (broadcasting ``radius`` against the scale and slope).

    Parameters
    ----------
    radius : Tensor
        Radii (degrees), clipped at ``radius_max`` by the caller.
    log_scale : Tensor
        log of the scale a.
    slope : Tensor or float
        Outer slope.
    radius_max : float or Tensor
        The cone's radius (degrees).

    Returns
    -------
    Tensor
    """
    a2 = torch.exp(2.0 * log_scale)
    return -0.5 * slope * torch.log1p(radius**2 / a2) - log_profile_norm_t(log_scale, slope, radius_max)


def plummer_log_density_t(radius: Tensor, log_scale: Tensor, radius_max: Tensor) -> Tensor:
    """:func:`plummer_log_density` in torch; radii beyond ``radius_max`` count as at the edge.

    Parameters
    ----------
    radius : Tensor
        Radii in degrees.
    log_scale : Tensor
        log of the Plummer scale a (degrees).
    radius_max : Tensor
        Radius of the cone (degrees).

    Returns
    -------
    Tensor
        Same shape as ``radius``.
    """
    return profile_log_density_t(radius.clamp(max=radius_max), log_scale, PLUMMER_SLOPE, radius_max)


def dispersion_profile(radius: np.ndarray | Tensor, log_scale: float) -> np.ndarray | Tensor:
    """(1 + r^2/a^2)^-1/2: the cluster's dispersion^2 at each radius over its central value.

    Parameters
    ----------
    radius : numpy.ndarray or Tensor
        Radii (degrees).
    log_scale : float
        log of the scale a.

    Returns
    -------
    numpy.ndarray or Tensor
        Same type and shape as ``radius``.
    """
    inv_a2 = math.exp(-2.0 * log_scale)
    if isinstance(radius, Tensor):
        return torch.rsqrt(1.0 + radius**2 * inv_a2)
    return 1.0 / np.sqrt(1.0 + radius**2 * inv_a2)


__all__ = [
    "PLUMMER_SLOPE",
    "dispersion_profile",
    "log_profile_norm",
    "log_profile_norm_t",
    "plummer_log_density",
    "plummer_log_density_t",
    "profile_log_density",
    "profile_log_density_t",
]
