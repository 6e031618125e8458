"""Sky geometry: the gnomonic (tangent-plane) projection around a cluster centre.

Offsets from a cluster centre are only Cartesian in the tangent plane; working in (ra, dec)
directly distorts fields near the celestial poles (47 Tuc sits at Dec -72) and breaks across
RA = 0. Every module that needs planar positions goes through these two functions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["angular_separation", "gnomonic_deproject", "gnomonic_project"]


def gnomonic_project(ra: ArrayLike, dec: ArrayLike, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Project (ra, dec) onto the plane tangent at (ra0, dec0); all angles in degrees.

    Parameters
    ----------
    ra, dec : array_like
        Positions in degrees.
    ra0, dec0 : float
        The tangent point (the cluster centre) in degrees.

    Returns
    -------
    xi, eta : numpy.ndarray
        Standard coordinates in degrees: xi grows towards the east (increasing RA), eta towards
        the north. Points 90 degrees or more from the centre have no gnomonic image and are NaN.

    Examples
    --------
    >>> xi, eta = gnomonic_project(10.0, 1.0, 10.0, 0.0)
    >>> round(float(xi), 12), round(float(eta), 6)
    (0.0, 1.000102)
    """
    ra_r = np.radians(np.asarray(ra, dtype=float))
    dec_r = np.radians(np.asarray(dec, dtype=float))
    ra0_r, dec0_r = np.radians(float(ra0)), np.radians(float(dec0))
    dra = ra_r - ra0_r
    cos_dec, sin_dec = np.cos(dec_r), np.sin(dec_r)
    cos_c = np.sin(dec0_r) * sin_dec + np.cos(dec0_r) * cos_dec * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(cos_c > 0.0, 1.0 / cos_c, np.nan)
    xi = cos_dec * np.sin(dra) * inv
    eta = (np.cos(dec0_r) * sin_dec - np.sin(dec0_r) * cos_dec * np.cos(dra)) * inv
    return np.degrees(xi), np.degrees(eta)


def gnomonic_deproject(xi_deg: ArrayLike, eta_deg: ArrayLike, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`gnomonic_project`: tangent-plane (xi, eta) in degrees -> (ra, dec) in degrees.

    Parameters
    ----------
    xi_deg, eta_deg : array_like
        Tangent-plane coordinates in degrees.
    ra0, dec0 : float
        The tangent point in degrees.

    Returns
    -------
    ra, dec : numpy.ndarray
        Positions in degrees; RA is wrapped into [0, 360), so fields that straddle RA = 0 come out right.
    """
    xi = np.radians(np.asarray(xi_deg, dtype=float))
    eta = np.radians(np.asarray(eta_deg, dtype=float))
    ra0_r, dec0_r = np.radians(float(ra0)), np.radians(float(dec0))
    rho = np.sqrt(1.0 + xi * xi + eta * eta)
    dec = np.arcsin(np.clip((np.sin(dec0_r) + eta * np.cos(dec0_r)) / rho, -1.0, 1.0))
    ra = ra0_r + np.arctan2(xi, np.cos(dec0_r) - eta * np.sin(dec0_r))
    ra_deg = np.mod(np.degrees(ra), 360.0)
    # np.mod can return exactly 360.0 for tiny negative inputs; fold it back.
    ra_deg = np.where(ra_deg >= 360.0, 0.0, ra_deg)
    return ra_deg, np.degrees(dec)


def angular_separation(ra: ArrayLike, dec: ArrayLike, ra0: float, dec0: float) -> np.ndarray:
    """Great-circle distance from (ra0, dec0), stable at small and large angles (Vincenty's formula).

    Parameters
    ----------
    ra, dec : array_like
        Positions in degrees.
    ra0, dec0 : float
        The reference point in degrees.

    Returns
    -------
    numpy.ndarray
        Separations in degrees, in [0, 180].
    """
    ra_r = np.radians(np.asarray(ra, dtype=float))
    dec_r = np.radians(np.asarray(dec, dtype=float))
    ra0_r, dec0_r = np.radians(float(ra0)), np.radians(float(dec0))
    dra = ra_r - ra0_r
    num = np.hypot(
        np.cos(dec_r) * np.sin(dra),
        np.cos(dec0_r) * np.sin(dec_r) - np.sin(dec0_r) * np.cos(dec_r) * np.cos(dra),
    )
    den = np.sin(dec0_r) * np.sin(dec_r) + np.cos(dec0_r) * np.cos(dec_r) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))
