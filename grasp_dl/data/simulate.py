"""Simulated Gaia DR3 cone searches around globular clusters, with the true group of every star.

The simulator is the bundled example and the ground truth of the accuracy benchmarks, so each
component follows what a real Gaia cone shows:

* **cluster** -- a King (1962) profile truncated at the tidal radius, an isotropic internal
  proper-motion dispersion (optionally falling with radius), one distance, and an old
  sequence in the colour-magnitude diagram (binaries, turn-off, giant and horizontal branches,
  blue stragglers) shifted by distance modulus and reddening.
* **field** -- populations uniform over the cone, each with a 2-D Gaussian proper motion (plus
  an optional velocity dispersion in km/s, so near stars move faster), a distance distribution,
  reddening growing with distance, and a broad CMD.
* **galaxy** (optional) -- a background galaxy such as the SMC behind 47 Tuc: tight proper
  motion, tiny parallax, a density gradient across the cone, an intermediate-age CMD.
* **tails** (optional) -- a thin stream through the cluster with a proper-motion gradient.

Magnitudes are cut at ``mag_limit`` (components over-drawn until each has its share of observed
stars), crowding removes faint stars near a dense core, and the astrometry gets Gaia-DR3-like,
magnitude-dependent errors (about 0.02 mas at G=15, 0.07 at 17, 0.5 at 20, 1.3 at 21), RUWE,
and 2-parameter solutions for a share of the faint and crowded stars.

``cluster``, ``galaxy`` and ``tails`` each take ``fraction * n_stars`` of the rows; the field
takes the rest, shared by its populations' ``weight``. Fractions lie in [0, 1] and sum to at most 1.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.astrometry import MAG_PER_SNR
from grasp_dl.data.sky import angular_separation, gnomonic_deproject
from grasp_dl.runtime.config import conf_dir
from grasp_dl.runtime.errors import ConfigError

__all__ = [
    "COLUMNS",
    "SIMULATED_FIELDS",
    "TRUTH_LABELS",
    "field_pm_moments",
    "gaia_parallax_error",
    "load_simulation_config",
    "robustness_field_config",
    "simulate_catalog",
    "simulate_field",
]

#: The simulated cones bundled as ``conf/simulation/{name}.yaml``.
SIMULATED_FIELDS = ("m4", "ngc6397", "ngc6558", "47tuc_smc")

#: Values of the ``truth`` column.
TRUTH_LABELS = ("cluster", "field", "galaxy", "tails")

#: Columns of a simulated catalogue, in order (Gaia DR3 ``gaia_source`` names plus ``truth``).
COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "parallax",
    "parallax_error",
    "parallax_over_error",
    "pmra",
    "pmra_error",
    "pmdec",
    "pmdec_error",
    "pmra_pmdec_corr",
    "ruwe",
    "astrometric_params_solved",
    "phot_g_mean_mag",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
    "bp_rp",
    "phot_g_mean_flux_over_error",
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
    "truth",
)

#: A_G / E(BP-RP) for the extinction law (Casagrande & VandenBerg 2018: 2.74 / 1.339).
AG_PER_EBR = 2.05
#: mas/yr -> km/s at 1 kpc.
KMS_PER_MASYR_KPC = 4.74047

_REQUIRED = object()

# ----------------------------------------------------------------------------- config schema
_CLUSTER_SPEC: dict[str, Any] = {
    "fraction": _REQUIRED,
    "distance_kpc": _REQUIRED,
    "pm_mean": _REQUIRED,  # (pmra, pmdec) mas/yr
    "pm_dispersion": _REQUIRED,  # central 1-D internal dispersion, mas/yr
    "core_radius_arcmin": _REQUIRED,
    "tidal_radius_arcmin": _REQUIRED,
    "dispersion_scale_arcmin": None,  # sigma(R) = sigma0 (1 + R^2/a^2)^-1/4; None = constant
    "ebr": 0.0,  # E(BP-RP) towards the cluster
    "ebr_scatter": 0.0,  # differential reddening, 1-sigma in E(BP-RP)
    "crowding_strength": 0.0,  # 0 = no crowding; ~1 = half the G=19 stars lost at the centre
    "crowding_radius_arcmin": None,  # scale of the crowded region; None = 2 core radii
    "cmd": {},
}
_FIELD_SPEC: dict[str, Any] = {
    "weight": 1.0,  # relative share of the field's stars
    "pm_mean": _REQUIRED,  # (pmra, pmdec) mas/yr
    "pm_sigma": _REQUIRED,  # (sigma_pmra, sigma_pmdec) mas/yr
    "pm_corr": 0.0,
    "pm_sigma_kms": 0.0,  # extra isotropic velocity dispersion, converted at each star's distance
    "distance": _REQUIRED,  # see _DISTANCE_SPECS
    "ebr_max": 0.0,  # E(BP-RP) reached far along the line of sight
    "ebr_scale_kpc": 1.0,  # E(d) = ebr_max (1 - exp(-d / scale))
    "ebr_scatter": 0.1,  # fractional star-to-star scatter of the reddening
    "cmd": {},
}
_GALAXY_SPEC: dict[str, Any] = {
    "fraction": _REQUIRED,
    "distance_kpc": _REQUIRED,
    "distance_sigma_ln": 0.03,  # line-of-sight depth as a lognormal width
    "pm_mean": _REQUIRED,
    "pm_dispersion": 0.1,  # mas/yr, isotropic
    "center": None,  # (ra, dec) of the galaxy; None = uniform over the cone
    "scale_length_deg": 1.0,  # exponential density scale from `center`
    "ebr": 0.0,
    "ebr_scatter": 0.0,
    "cmd": {},
}
_TAILS_SPEC: dict[str, Any] = {
    "fraction": _REQUIRED,
    "position_angle_deg": _REQUIRED,  # east of north
    "start_arcmin": None,  # where the tails leave the cluster; None = 0.6 tidal radii
    "length_deg": 0.5,  # exponential scale length along each tail
    "width_arcmin": 3.0,  # Gaussian 1-sigma across the tail
    "pm_gradient": (0.0, 0.0),  # d(pmra, pmdec)/ds in mas/yr per degree along the PA
    "pm_dispersion": 0.1,
    "cmd": None,  # None = the cluster's CMD
}
_ISOCHRONE_SPEC: dict[str, Any] = {
    "model": "isochrone",
    "feh": -1.3,
    "feh_sigma": 0.0,  # metallicity spread (broadens the sequence)
    "hb_color": (0.0, 0.9),  # intrinsic BP-RP range of the horizontal branch
    "hb_ratio": 1.2,  # N(HB) / N(RGB brighter than the HB)
    "binary_fraction": 0.1,
    "bss_fraction": 0.005,
    "young_fraction": 0.0,  # a young main sequence (blue plume), for galaxies
    "color_scatter": 0.01,
    "mag_scatter": 0.02,
    "faint_mag": 12.0,  # faintest absolute G generated
}
_DISK_SPEC: dict[str, Any] = {
    "model": "disk",
    "giant_fraction": 0.05,  # of all generated stars (before the magnitude cut)
    "red_clump_fraction": 0.4,  # of the giants
    "dwarf_mag_range": (1.0, 14.0),  # absolute G of the dwarfs
    "dwarf_lf_slope": 0.08,  # dex per mag: more faint dwarfs
    "color_shift": 0.0,  # e.g. -0.1 for a metal-poor thick disc / halo
    "color_scatter": 0.05,
}
_DISTANCE_SPECS: dict[str, dict[str, Any]] = {
    # density of stars along the line of sight ~ d^(shape-1) exp(-d/scale)
    "gamma": {"dist": "gamma", "shape": _REQUIRED, "scale_kpc": _REQUIRED, "min_kpc": 0.03},
    "lognormal": {"dist": "lognormal", "median_kpc": _REQUIRED, "sigma_ln": _REQUIRED, "min_kpc": 0.03},
    "uniform": {"dist": "uniform", "min_kpc": _REQUIRED, "max_kpc": _REQUIRED},
}


def _merge_spec(section: str, given: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults into one config section; unknown or missing keys fail with their names."""
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {type(given).__name__}")
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {section}; allowed: {', '.join(sorted(spec))}"
        )
    out: dict[str, Any] = {}
    for key, default in spec.items():
        if key in given:
            out[key] = copy.deepcopy(given[key])
        elif default is _REQUIRED:
            raise ConfigError(f"{section} lacks the required key {key!r}")
        else:
            out[key] = copy.deepcopy(default)
    return out


def _pair(section: str, key: str, value: Any) -> tuple[float, float]:
    """A two-number setting (pm_mean, pm_sigma, ...) as a float tuple, or a clear error."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key} must be two numbers, got {value!r}") from None
    return a, b


def _positive(section: str, key: str, value: Any, allow_zero: bool = False) -> float:
    """A positive (or non-negative) number, or a clear error."""
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{section}.{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _fraction(section: str, value: Any) -> float:
    """A component fraction in [0, 1], or a clear error."""
    f = float(value)
    if not (0.0 <= f <= 1.0):
        raise ConfigError(f"{section}.fraction must be in [0, 1], got {value!r}")
    return f


def _cmd_spec(section: str, given: Mapping[str, Any] | None, default_model: str) -> dict[str, Any]:
    """Validate a CMD section against the schema of its model ('isochrone' or 'disk')."""
    given = dict(given or {})
    model = given.get("model", default_model)
    specs = {"isochrone": _ISOCHRONE_SPEC, "disk": _DISK_SPEC}
    if model not in specs:
        raise ConfigError(f"{section}.model must be 'isochrone' or 'disk', got {model!r}")
    cmd = _merge_spec(section, given, specs[model])
    for key in ("binary_fraction", "bss_fraction", "young_fraction", "giant_fraction", "red_clump_fraction"):
        if key in cmd and not 0.0 <= float(cmd[key]) <= 1.0:
            raise ConfigError(f"{section}.{key} must be in [0, 1], got {cmd[key]!r}")
    return cmd


def _distance_spec(section: str, given: Any) -> dict[str, Any]:
    """Validate a field population's distance distribution."""
    if not isinstance(given, Mapping) or given.get("dist") not in _DISTANCE_SPECS:
        raise ConfigError(f"{section} must be a mapping with dist one of {sorted(_DISTANCE_SPECS)}, got {given!r}")
    spec = _merge_spec(section, given, _DISTANCE_SPECS[given["dist"]])
    for key, value in spec.items():
        if key != "dist":
            _positive(section, key, value)
    return spec


# ----------------------------------------------------------------------------- geometry
def _uniform_cone(rng: np.random.Generator, m: int, radius_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane (xi, eta) in degrees of m points uniform in area on the sphere within the cone."""
    cos_rho = 1.0 - rng.random(m) * (1.0 - np.cos(np.radians(radius_deg)))  # uniform in cos(distance)
    r = np.degrees(np.sqrt(1.0 - cos_rho * cos_rho) / cos_rho)  # tan(distance), in degrees
    theta = rng.random(m) * 2.0 * np.pi  # position angle east of north
    return r * np.sin(theta), r * np.cos(theta)


def _separation_from(
    xi: np.ndarray, eta: np.ndarray, center: tuple[float, float], target: tuple[float, float]
) -> np.ndarray:
    """Angular distance (degrees) from `target` of tangent-plane points around `center` (exact, fast)."""
    a0, d0 = np.radians(center[0]), np.radians(center[1])
    a1, d1 = np.radians(target[0]), np.radians(target[1])
    t = np.array([np.cos(d1) * np.cos(a1), np.cos(d1) * np.sin(a1), np.sin(d1)])
    p0 = np.array([np.cos(d0) * np.cos(a0), np.cos(d0) * np.sin(a0), np.sin(d0)])
    east = np.array([-np.sin(a0), np.cos(a0), 0.0])
    north = np.cross(p0, east)
    x, y = np.radians(xi), np.radians(eta)
    cos_sep = (p0 @ t + x * (east @ t) + y * (north @ t)) / np.sqrt(1.0 + x * x + y * y)
    return np.degrees(np.arccos(np.clip(cos_sep, -1.0, 1.0)))


def _radius_deg(xi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Angular distance (degrees) from the tangent point of tangent-plane offsets in degrees."""
    return np.degrees(np.arctan(np.radians(np.hypot(xi, eta))))


def king_cumulative(r: np.ndarray, rc: float, rt: float) -> np.ndarray:
    """King (1962) projected number of stars inside radius ``r`` (unnormalised).

    Parameters
    ----------
    r : numpy.ndarray
        Projected radii; beyond ``rt`` the count stays at its value at ``rt``.
    rc : float
        Core radius, in the unit of ``r``.
    rt : float
        Tidal radius, in the unit of ``r``.

    Returns
    -------
    numpy.ndarray
        The cumulative count at each radius, 0 at the centre; divide by its value at ``rt`` for a fraction.
    """
    x = (np.minimum(r, rt) / rc) ** 2
    xt = (rt / rc) ** 2
    return np.log1p(x) - 4.0 * (np.sqrt(1.0 + x) - 1.0) / np.sqrt(1.0 + xt) + x / (1.0 + xt)


def _king_radii(rng: np.random.Generator, m: int, rc: float, rt: float, r_max: float) -> np.ndarray:
    """Projected radii drawn from the King profile (inverse CDF on a grid fine near the core)."""
    r_hi = min(rt, r_max)
    grid = r_hi * np.linspace(0.0, 1.0, 8193) ** 2  # dense near the centre for tiny cores
    cdf = king_cumulative(grid, rc, rt)
    cdf /= cdf[-1]
    return np.interp(rng.random(m), cdf, grid)


# ----------------------------------------------------------------------------- CMD models
# Old-population template at [Fe/H] = -1.3, 12 Gyr, in absolute G and intrinsic BP-RP, with the
# colour change per dex of [Fe/H] and, on the main sequence, the luminosity function (stars per
# mag, turn-off = 1). Built from the Gaia CMDs of nearby globular clusters (Gaia Collaboration,
# Babusiaux et al. 2018) to about 0.05 mag, which is all a membership benchmark needs.
_MS_TEMPLATE = np.array(
    [  # M_G, (BP-RP)0, dcolour/d[Fe/H], LF
        [13.0, 2.55, 0.10, 2.0],
        [12.0, 2.30, 0.10, 2.5],
        [11.0, 2.05, 0.10, 3.0],
        [10.0, 1.80, 0.10, 3.4],
        [9.0, 1.56, 0.09, 3.4],
        [8.0, 1.33, 0.08, 3.1],
        [7.0, 1.12, 0.08, 2.6],
        [6.0, 0.93, 0.08, 2.1],
        [5.0, 0.76, 0.08, 1.6],
        [4.4, 0.66, 0.09, 1.3],
        [3.9, 0.59, 0.10, 1.0],
    ]
)
_SGB_TEMPLATE = np.array(
    [[3.9, 0.59, 0.10], [3.72, 0.62, 0.11], [3.55, 0.70, 0.12], [3.40, 0.81, 0.14], [3.25, 0.92, 0.16]]
)
_SGB_WEIGHT = 0.12  # stars on the subgiant branch, in units of the turn-off LF
_RGB_TEMPLATE = np.array(
    [
        [3.25, 0.92, 0.16],
        [2.5, 1.00, 0.18],
        [1.5, 1.07, 0.22],
        [0.5, 1.16, 0.26],
        [-0.5, 1.29, 0.32],
        [-1.5, 1.48, 0.40],
        [-2.3, 1.72, 0.50],
        [-3.0, 2.00, 0.65],
    ]
)
_RGB_LF0, _RGB_LF_SLOPE = 0.35, 0.28  # RGB stars per mag at its base, and dex per mag
_HB_MAG = 0.55
_ZAMS = np.array(  # young main sequence: M_G, (BP-RP)0
    [[-2.5, -0.24], [-1.0, -0.16], [0.0, -0.10], [1.0, -0.02], [2.0, 0.12], [3.0, 0.30], [4.0, 0.50], [4.5, 0.58]]
)
_DISK_MS = np.array(  # solar-metallicity dwarfs: M_G, (BP-RP)0 (Gaia HRD of the solar neighbourhood)
    [
        [0.5, 0.05],
        [1.5, 0.25],
        [2.5, 0.45],
        [3.5, 0.62],
        [4.5, 0.78],
        [5.5, 0.98],
        [6.5, 1.20],
        [7.5, 1.48],
        [8.5, 1.90],
        [9.5, 2.30],
        [10.5, 2.65],
        [11.5, 3.00],
        [12.5, 3.25],
        [14.0, 3.60],
    ]
)


def _dense_branch(nodes: np.ndarray, step: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a (M_G, colour, dcolour/dFeH) polyline at ~`step` mag for segment sampling."""
    pieces = []
    for a, b in zip(nodes[:-1], nodes[1:], strict=True):
        k = max(int(np.ceil(abs(b[0] - a[0]) / step)), 1)
        t = np.linspace(0.0, 1.0, k + 1)[:-1, None]
        pieces.append(a[None, :3] + t * (b[None, :3] - a[None, :3]))
    pieces.append(nodes[-1:, :3])
    pts = np.concatenate(pieces)
    return pts[:, 0], pts[:, 1], pts[:, 2]


@functools.lru_cache(maxsize=16)
def _isochrone_table(faint_mag: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Segments (start, end points, weights) of MS+SGB+RGB, plus the RGB weight above the HB.

    The main sequence stops at ``faint_mag`` (at most the template's M_G = 13).
    """
    m_ms, c_ms, k_ms = _dense_branch(_MS_TEMPLATE)
    lf_ms = np.interp(m_ms, _MS_TEMPLATE[::-1, 0], _MS_TEMPLATE[::-1, 3])
    m_sg, c_sg, k_sg = _dense_branch(_SGB_TEMPLATE, step=0.01)
    m_rg, c_rg, k_rg = _dense_branch(_RGB_TEMPLATE)
    lf_rg = _RGB_LF0 * 10.0 ** (_RGB_LF_SLOPE * (m_rg - _RGB_TEMPLATE[0, 0]))

    def segs(m, c, k, w_point):
        p0 = np.stack([m[:-1], c[:-1], k[:-1]], axis=1)
        p1 = np.stack([m[1:], c[1:], k[1:]], axis=1)
        return p0, p1, w_point

    p0_ms, p1_ms, _ = segs(m_ms, c_ms, k_ms, None)
    w_ms = 0.5 * (lf_ms[:-1] + lf_ms[1:]) * np.abs(np.diff(m_ms))
    keep = p0_ms[:, 0] <= faint_mag + 1e-9
    p0_ms, p1_ms, w_ms = p0_ms[keep], p1_ms[keep], w_ms[keep]
    p0_sg, p1_sg, _ = segs(m_sg, c_sg, k_sg, None)
    length = np.hypot(np.diff(m_sg), np.diff(c_sg))
    w_sg = _SGB_WEIGHT * length / length.sum()
    p0_rg, p1_rg, _ = segs(m_rg, c_rg, k_rg, None)
    w_rg = 0.5 * (lf_rg[:-1] + lf_rg[1:]) * np.abs(np.diff(m_rg))
    rgb_above_hb = float(w_rg[p0_rg[:, 0] < _HB_MAG].sum())
    p0 = np.concatenate([p0_ms, p0_sg, p0_rg])
    p1 = np.concatenate([p1_ms, p1_sg, p1_rg])
    w = np.concatenate([w_ms, w_sg, w_rg])
    is_ms = np.concatenate([np.ones(len(w_ms), bool), np.zeros(len(w_sg) + len(w_rg), bool)])
    return p0, p1, w, is_ms, rgb_above_hb


def _sample_isochrone(
    rng: np.random.Generator, m: int, cmd: Mapping[str, Any], max_mag: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute G and intrinsic BP-RP of an old population (narrow for a cluster, broad with a spread).

    ``max_mag`` (absolute G) skips sequence segments whose stars are all fainter, even after
    binarity and scatter: the caller would discard them at the magnitude limit anyway, and a
    distant galaxy would otherwise cost a hundred rejected main-sequence stars per kept giant.
    The returned stars follow the same distribution brighter than ``max_mag``.
    """
    p0, p1, w, is_ms, rgb_above_hb = _isochrone_table(float(cmd["faint_mag"]))
    w_hb = float(cmd["hb_ratio"]) * rgb_above_hb
    base = w.sum() + w_hb
    margin = np.where(is_ms, 0.76, 0.0) + 6.0 * float(cmd["mag_scatter"]) + 0.01
    reach = np.minimum(p0[:, 0], p1[:, 0]) - margin <= max_mag
    if reach.any():
        p0, p1, w, is_ms = p0[reach], p1[reach], w[reach], is_ms[reach]
    w_seq = float(w.sum()) if reach.any() else 0.0
    f_bss, f_young = float(cmd["bss_fraction"]), float(cmd["young_fraction"])
    f_old = 1.0 - f_bss - f_young
    if f_old < 0:
        raise ConfigError(f"cmd bss_fraction + young_fraction must be <= 1, got {f_bss + f_young}")
    probs = np.array([f_old * w_seq / base, f_old * w_hb / base, f_bss, f_young])
    kind = rng.choice(4, size=m, p=probs / probs.sum())
    mag = np.empty(m)
    col = np.empty(m)
    kfeh = np.zeros(m)

    seq = kind == 0
    n_seq = int(seq.sum())
    cw = np.cumsum(w)
    idx = np.minimum(np.searchsorted(cw, rng.random(n_seq) * cw[-1], side="right"), len(w) - 1)
    t = rng.random(n_seq)[:, None]
    pts = p0[idx] + t * (p1[idx] - p0[idx])
    mag[seq], col[seq], kfeh[seq] = pts[:, 0], pts[:, 1], pts[:, 2]
    # unresolved binaries: brighter by up to 0.75 mag on the main sequence (flat mass ratio)
    ms_idx = np.flatnonzero(seq)[is_ms[idx]]
    binary = ms_idx[rng.random(ms_idx.size) < float(cmd["binary_fraction"])]
    q = rng.uniform(0.1, 1.0, binary.size)
    mag[binary] -= 2.5 * np.log10(1.0 + q**3.5)

    hb = kind == 1
    lo, hi = _pair("cmd", "hb_color", cmd["hb_color"])
    c_hb = rng.uniform(lo, hi, int(hb.sum()))
    mag[hb] = _HB_MAG + 3.5 * np.clip(0.15 - c_hb, 0.0, None) + 0.05 * rng.standard_normal(c_hb.size)
    col[hb] = c_hb

    bss = kind == 2
    m_bss = rng.uniform(2.0, 3.9, int(bss.sum()))
    mag[bss] = m_bss
    col[bss] = 0.59 - 0.12 * (3.9 - m_bss) + 0.03 * rng.standard_normal(m_bss.size)
    kfeh[bss] = 0.1

    young = kind == 3
    n_young = int(young.sum())
    if n_young:
        lo_m, hi_m, slope = -2.5, 4.5, 0.35  # steep young luminosity function
        u = rng.random(n_young)
        a, b = 10 ** (slope * lo_m), 10 ** (slope * hi_m)
        m_y = np.log10(a + u * (b - a)) / slope
        mag[young] = m_y
        col[young] = np.interp(m_y, _ZAMS[:, 0], _ZAMS[:, 1]) + 0.03 * rng.standard_normal(n_young)

    feh_offset = float(cmd["feh"]) + 1.3 + float(cmd["feh_sigma"]) * rng.standard_normal(m)
    col = col + kfeh * feh_offset + float(cmd["color_scatter"]) * rng.standard_normal(m)
    mag = mag + float(cmd["mag_scatter"]) * rng.standard_normal(m)
    return mag, col


def _sample_disk(rng: np.random.Generator, m: int, cmd: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Absolute G and intrinsic BP-RP of a disc population: dwarfs of all types plus giants."""
    giant = rng.random(m) < float(cmd["giant_fraction"])
    clump = giant & (rng.random(m) < float(cmd["red_clump_fraction"]))
    rgb = giant & ~clump
    dwarf = ~giant
    mag = np.empty(m)
    col = np.empty(m)
    lo, hi = _pair("cmd", "dwarf_mag_range", cmd["dwarf_mag_range"])
    slope = float(cmd["dwarf_lf_slope"])
    n_d = int(dwarf.sum())
    u = rng.random(n_d)
    if abs(slope) > 1e-6:
        a, b = 10 ** (slope * lo), 10 ** (slope * hi)
        m_d = np.log10(a + u * (b - a)) / slope
    else:
        m_d = lo + u * (hi - lo)
    mag[dwarf] = m_d
    col[dwarf] = np.interp(m_d, _DISK_MS[:, 0], _DISK_MS[:, 1])
    n_c = int(clump.sum())
    mag[clump] = 0.45 + 0.15 * rng.standard_normal(n_c)
    col[clump] = 1.20 + 0.05 * rng.standard_normal(n_c)
    n_r = int(rgb.sum())
    a, b = 10 ** (0.28 * -2.5), 10 ** (0.28 * 3.0)
    m_r = np.log10(a + rng.random(n_r) * (b - a)) / 0.28
    mag[rgb] = m_r
    col[rgb] = 1.0 + 0.13 * (3.0 - m_r)
    col = col + float(cmd["color_shift"]) + float(cmd["color_scatter"]) * rng.standard_normal(m)
    return mag, col


def _sample_cmd(
    rng: np.random.Generator, m: int, cmd: Mapping[str, Any], max_mag: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Dispatch to the CMD model named in `cmd['model']` (max_mag: see _sample_isochrone)."""
    if cmd["model"] == "disk":
        return _sample_disk(rng, m, cmd)
    return _sample_isochrone(rng, m, cmd, max_mag)


def _distance_modulus(d_kpc: np.ndarray | float) -> np.ndarray:
    """5 log10(d / 10 pc) for a distance in kpc."""
    return 5.0 * np.log10(np.asarray(d_kpc, dtype=float) * 100.0)


def _draw_distances(rng: np.random.Generator, m: int, spec: Mapping[str, Any]) -> np.ndarray:
    """Distances (kpc) from a field population's line-of-sight distribution."""
    if spec["dist"] == "gamma":
        d = rng.gamma(float(spec["shape"]), float(spec["scale_kpc"]), m)
    elif spec["dist"] == "lognormal":
        d = float(spec["median_kpc"]) * np.exp(float(spec["sigma_ln"]) * rng.standard_normal(m))
    else:
        d = rng.uniform(float(spec["min_kpc"]), float(spec["max_kpc"]), m)
    return np.maximum(d, float(spec["min_kpc"]))


def _photometric_errors(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors (mag) of G, BP and RP at magnitude G: a calibration floor, then background-limited (10^(0.4 G))."""
    z = 10.0 ** (0.4 * (np.minimum(g, 23.0) - 17.0))
    return np.hypot(0.0003, 0.0004 * z), np.hypot(0.002, 0.004 * z), np.hypot(0.002, 0.003 * z)


def _photometry(
    rng: np.random.Generator, g_true: np.ndarray, c_true: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed G, BP, RP: split G into BP/RP with a Gaia colour relation and add photometric noise."""
    g_rp = 0.682 * c_true - 0.1036 * c_true**2  # G - RP as a function of BP - RP (Gaia-like)
    rp_true = g_true - g_rp
    bp_true = rp_true + c_true
    sig_g, sig_bp, sig_rp = _photometric_errors(g_true)
    g = g_true + sig_g * rng.standard_normal(g_true.size)
    bp = bp_true + sig_bp * rng.standard_normal(g_true.size)
    rp = rp_true + sig_rp * rng.standard_normal(g_true.size)
    return g, bp, rp


# ----------------------------------------------------------------------------- astrometric errors
_PLX_FLOOR = 0.0124
_PLX_POLY = (-4.1521, 0.9137, -0.1175, 0.0146)


def gaia_parallax_error(g: np.ndarray | float) -> np.ndarray:
    """Typical Gaia DR3 parallax error against G magnitude.

    About 0.02 mas at G = 15, 0.07 at 17, 0.5 at 20 and 1.3 at 21 (G is clipped to [10, 21.7]).

    Parameters
    ----------
    g : numpy.ndarray or float
        G magnitudes.

    Returns
    -------
    numpy.ndarray
        Parallax errors in mas, the shape of ``g``.
    """
    z = np.clip(np.asarray(g, dtype=float), 10.0, 21.7) - 15.0
    b0, b1, b2, b3 = _PLX_POLY
    return np.sqrt(_PLX_FLOOR**2 + np.exp(2.0 * (b0 + b1 * z + b2 * z**2 + b3 * z**3)))


def _pm_error_factor(g: np.ndarray) -> np.ndarray:
    """Proper-motion error (mas/yr) over parallax error (mas): ~1, rising to ~1.08 at G = 21."""
    return 1.0 + 0.08 * 10.0 ** (0.4 * (np.minimum(g, 21.7) - 21.0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


# ----------------------------------------------------------------------------- components
Sample = dict[str, np.ndarray]


def _max_abs_mag(mag_limit: float, dm_min: float, ebr: float, ebr_scatter: float) -> float:
    """Faintest absolute G that can still pass the magnitude limit (with margins for the scatter)."""
    a_min = AG_PER_EBR * max(float(ebr) - 6.0 * float(ebr_scatter), 0.0)
    return mag_limit + 0.5 - dm_min - a_min


def _make_cluster(
    cl: Mapping[str, Any], radius_deg: float, mag_limit: float
) -> Callable[[np.random.Generator, int], Sample]:
    """Generator of cluster stars (true quantities) for the over-draw loop."""
    rc, rt = float(cl["core_radius_arcmin"]), float(cl["tidal_radius_arcmin"])
    pm0 = _pair("cluster", "pm_mean", cl["pm_mean"])
    sig0 = float(cl["pm_dispersion"])
    a = cl["dispersion_scale_arcmin"]
    d = float(cl["distance_kpc"])
    dm = float(_distance_modulus(d))
    max_mag = _max_abs_mag(mag_limit, dm, cl["ebr"], cl["ebr_scatter"])

    def make(rng: np.random.Generator, m: int) -> Sample:
        r_arcmin = _king_radii(rng, m, rc, rt, radius_deg * 60.0)
        theta = rng.random(m) * 2.0 * np.pi
        r_tan = np.degrees(np.tan(np.radians(r_arcmin / 60.0)))
        sig = sig0 if a is None else sig0 * (1.0 + (r_arcmin / float(a)) ** 2) ** -0.25
        mag, col = _sample_cmd(rng, m, cl["cmd"], max_mag)
        ebr = np.clip(float(cl["ebr"]) + float(cl["ebr_scatter"]) * rng.standard_normal(m), 0.0, None)
        return {
            "xi": r_tan * np.sin(theta),
            "eta": r_tan * np.cos(theta),
            "pmra": pm0[0] + sig * rng.standard_normal(m),
            "pmdec": pm0[1] + sig * rng.standard_normal(m),
            "parallax": np.full(m, 1.0 / d),
            "g": mag + dm + AG_PER_EBR * ebr,
            "c": col + ebr,
        }

    return make


def _make_field(
    pop: Mapping[str, Any], radius_deg: float, mag_limit: float, section: str
) -> Callable[[np.random.Generator, int], Sample]:
    """Generator of one field population (returns only stars that can pass the magnitude limit)."""
    mu = _pair(section, "pm_mean", pop["pm_mean"])
    sx, sy = _pair(section, "pm_sigma", pop["pm_sigma"])
    rho = float(pop["pm_corr"])
    if not -1.0 < rho < 1.0:
        raise ConfigError(f"{section}.pm_corr must be in (-1, 1), got {rho}")
    skms = float(pop["pm_sigma_kms"])
    dist = pop["distance"]
    if dist["dist"] == "lognormal":
        d_min = max(float(dist["median_kpc"]) * np.exp(-6.0 * float(dist["sigma_ln"])), float(dist["min_kpc"]))
    else:
        d_min = float(dist["min_kpc"])
    max_mag = _max_abs_mag(mag_limit, float(_distance_modulus(d_min)), 0.0, 0.0)

    def make(rng: np.random.Generator, m: int) -> Sample:
        # photometry first: most generated field stars are too faint, so skip the rest for them
        d = _draw_distances(rng, m, dist)
        mag, col = _sample_cmd(rng, m, pop["cmd"], max_mag)
        ebr = float(pop["ebr_max"]) * (1.0 - np.exp(-d / float(pop["ebr_scale_kpc"])))
        ebr = np.clip(ebr * (1.0 + float(pop["ebr_scatter"]) * rng.standard_normal(m)), 0.0, None)
        g = mag + _distance_modulus(d) + AG_PER_EBR * ebr
        keep = g <= mag_limit + 0.5
        d, g, c = d[keep], g[keep], (col + ebr)[keep]
        k = d.size
        xi, eta = _uniform_cone(rng, k, radius_deg)
        z1, z2, z3, z4 = rng.standard_normal((4, k))
        extra = skms / (KMS_PER_MASYR_KPC * d)
        return {
            "xi": xi,
            "eta": eta,
            "pmra": mu[0] + sx * z1 + extra * z3,
            "pmdec": mu[1] + sy * (rho * z1 + np.sqrt(1.0 - rho**2) * z2) + extra * z4,
            "parallax": 1.0 / d,
            "g": g,
            "c": c,
        }

    return make


def _make_galaxy(
    gal: Mapping[str, Any], center: tuple[float, float], radius_deg: float, mag_limit: float
) -> Callable[[np.random.Generator, int], Sample]:
    """Generator of background-galaxy stars (may return fewer than asked: density rejection)."""
    mu = _pair("galaxy", "pm_mean", gal["pm_mean"])
    disp = float(gal["pm_dispersion"])
    d0 = float(gal["distance_kpc"])
    gc = None if gal["center"] is None else _pair("galaxy", "center", gal["center"])
    scale = float(gal["scale_length_deg"])
    dm_min = float(_distance_modulus(d0 * np.exp(-6.0 * float(gal["distance_sigma_ln"]))))
    max_mag = _max_abs_mag(mag_limit, dm_min, gal["ebr"], gal["ebr_scatter"])
    if gc is not None:
        sep_c = float(angular_separation(gc[0], gc[1], center[0], center[1]))
        sep_min = max(sep_c - radius_deg, 0.0)

    def make(rng: np.random.Generator, m: int) -> Sample:
        d = d0 * np.exp(float(gal["distance_sigma_ln"]) * rng.standard_normal(m))
        mag, col = _sample_cmd(rng, m, gal["cmd"], max_mag)
        ebr = np.clip(float(gal["ebr"]) + float(gal["ebr_scatter"]) * rng.standard_normal(m), 0.0, None)
        g = mag + _distance_modulus(d) + AG_PER_EBR * ebr
        keep = g <= mag_limit + 0.5  # photometry first: skip the rest for stars too faint anyway
        d, g, c = d[keep], g[keep], (col + ebr)[keep]
        xi, eta = _uniform_cone(rng, d.size, radius_deg)
        if gc is not None:  # exponential density gradient: thin by the distance from the galaxy centre
            sep = _separation_from(xi, eta, center, gc)
            near = rng.random(d.size) < np.exp(-(sep - sep_min) / scale)
            xi, eta, d, g, c = xi[near], eta[near], d[near], g[near], c[near]
        k = d.size
        return {
            "xi": xi,
            "eta": eta,
            "pmra": mu[0] + disp * rng.standard_normal(k),
            "pmdec": mu[1] + disp * rng.standard_normal(k),
            "parallax": 1.0 / d,
            "g": g,
            "c": c,
        }

    return make


def _make_tails(
    tl: Mapping[str, Any], cl: Mapping[str, Any], radius_deg: float, mag_limit: float
) -> Callable[[np.random.Generator, int], Sample]:
    """Generator of tidal-tail stars (may return fewer than asked: stars outside the cone are dropped)."""
    pa = np.radians(float(tl["position_angle_deg"]))
    ux, uy = np.sin(pa), np.cos(pa)  # along the tail, in (xi, eta)
    start = (0.6 * float(cl["tidal_radius_arcmin"]) if tl["start_arcmin"] is None else float(tl["start_arcmin"])) / 60.0
    length = float(tl["length_deg"])
    width = float(tl["width_arcmin"]) / 60.0
    grad = _pair("tails", "pm_gradient", tl["pm_gradient"])
    pm0 = _pair("cluster", "pm_mean", cl["pm_mean"])
    disp = float(tl["pm_dispersion"])
    d = float(cl["distance_kpc"])
    dm = float(_distance_modulus(d))
    cmd = tl["cmd"] if tl["cmd"] is not None else cl["cmd"]
    max_mag = _max_abs_mag(mag_limit, dm, cl["ebr"], cl["ebr_scatter"])

    def make(rng: np.random.Generator, m: int) -> Sample:
        s = np.where(rng.random(m) < 0.5, -1.0, 1.0) * (start + rng.exponential(length, m))
        p = width * rng.standard_normal(m)
        xi, eta = s * ux - p * uy, s * uy + p * ux
        keep = _radius_deg(xi, eta) <= radius_deg
        xi, eta, s = xi[keep], eta[keep], s[keep]
        k = xi.size
        mag, col = _sample_cmd(rng, k, cmd, max_mag)
        ebr = np.clip(float(cl["ebr"]) + float(cl["ebr_scatter"]) * rng.standard_normal(k), 0.0, None)
        return {
            "xi": xi,
            "eta": eta,
            "pmra": pm0[0] + grad[0] * s + disp * rng.standard_normal(k),
            "pmdec": pm0[1] + grad[1] * s + disp * rng.standard_normal(k),
            "parallax": np.full(k, 1.0 / d),
            "g": mag + dm + AG_PER_EBR * ebr,
            "c": col + ebr,
        }

    return make


def _draw_observed(
    rng: np.random.Generator,
    n: int,
    make: Callable[[np.random.Generator, int], Sample],
    crowding: Callable[[np.ndarray], np.ndarray],
    mag_limit: float,
    label: str,
) -> Sample:
    """Over-draw a component until n of its stars are observed (G <= mag_limit, not lost to crowding)."""
    parts: list[Sample] = []
    made = kept = 0
    batch = int(1.5 * n) + 256
    for _ in range(200):
        s = make(rng, batch)
        bright = s["g"] <= mag_limit + 0.5  # far fainter stars cannot scatter above the limit
        s = {k: v[bright] for k, v in s.items()}
        s["G"], s["BP"], s["RP"] = _photometry(rng, s["g"], s["c"])
        crowd = crowding(_radius_deg(s["xi"], s["eta"]) * 60.0)
        detect = rng.random(s["G"].size) * (1.0 + crowd * 10.0 ** (0.4 * (s["G"] - 19.0))) < 1.0
        mask = (s["G"] <= mag_limit) & detect
        parts.append({k: v[mask] for k, v in s.items()})
        made += batch
        kept += int(mask.sum())
        if kept >= n:
            break
        acc = kept / made
        if made > 50_000 and acc < 2e-4:
            raise ConfigError(
                f"{label}: only {acc:.2%} of its generated stars are brighter than mag_limit={mag_limit}; "
                "bring it closer, redden it less or raise mag_limit"
            )
        batch = int(min((n - kept) / max(acc, 1e-3) * 1.2, 20_000_000)) + 256
    else:  # pragma: no cover - only reachable with absurd configs
        raise ConfigError(f"{label}: could not draw {n} observable stars")
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def _split_counts(n: int, weights: Sequence[float]) -> list[int]:
    """Integer counts summing to n in proportion to weights (largest remainder, deterministic)."""
    w = np.asarray(weights, dtype=float)
    if n == 0 or w.size == 0:
        return [0] * w.size
    raw = n * w / w.sum()
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    counts[np.argsort(-(raw - counts), kind="stable")[:rest]] += 1
    return counts.tolist()


# ----------------------------------------------------------------------------- public API
def simulate_catalog(
    *,
    n_stars: int,
    seed: int = 0,
    center: Sequence[float],
    radius_deg: float,
    cluster: Mapping[str, Any],
    field: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    galaxy: Mapping[str, Any] | None = None,
    tails: Mapping[str, Any] | None = None,
    mag_limit: float = 21.0,
    name: str = "",
) -> pd.DataFrame:
    """Simulate a Gaia DR3 cone (``n_stars`` rows, G <= ``mag_limit``) with a ``truth`` column.

    ``cluster``, ``galaxy`` and ``tails`` each take ``fraction * n_stars`` rows; ``field`` takes
    the rest. The same ``seed`` gives an identical table. The keys of each section and their
    defaults are those of ``conf/simulation/*.yaml`` (see the module docstring for the physics).

    Parameters
    ----------
    n_stars : int
        Rows of the returned table (observed stars, after the magnitude cut and crowding).
    seed : int, default 0
        Seed of every random draw.
    center : sequence of float
        The cluster centre (ra, dec) in degrees, also the centre of the cone.
    radius_deg : float
        Cone radius in degrees (below 45).
    cluster : mapping
        The cluster: ``fraction``, ``distance_kpc``, ``pm_mean``, ``pm_dispersion``,
        ``core_radius_arcmin``, ``tidal_radius_arcmin`` (required), reddening, crowding and ``cmd``.
    field : mapping or sequence of mappings
        One field population or several, split by their relative ``weight``; each needs
        ``pm_mean``, ``pm_sigma`` and a ``distance`` distribution (gamma, lognormal or uniform).
    galaxy : mapping, optional
        A background galaxy (``fraction``, ``distance_kpc``, ``pm_mean``, ...), such as the SMC.
    tails : mapping, optional
        Tidal tails through the cluster (``fraction``, ``position_angle_deg``, ...).
    mag_limit : float, default 21.0
        Faintest G magnitude kept.
    name : str, default ""
        A name kept in ``DataFrame.attrs``.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`COLUMNS` (Gaia DR3 names plus ``truth``, one of :data:`TRUTH_LABELS`);
        ``attrs`` holds ``name``, ``center``, ``radius_deg`` and ``seed``.

    Raises
    ------
    ConfigError
        If a key is unknown or missing (named in the message), a fraction lies outside [0, 1]
        or the fractions sum above 1, or a size, radius or centre is out of range.
    """
    n_stars = int(n_stars)
    if n_stars < 1:
        raise ConfigError(f"n_stars must be a positive integer, got {n_stars}")
    ra0, dec0 = _pair("simulation", "center", center)
    if not -90.0 <= dec0 <= 90.0:
        raise ConfigError(f"center dec must be in [-90, 90], got {dec0}")
    ra0 = ra0 % 360.0
    radius_deg = _positive("simulation", "radius_deg", radius_deg)
    if radius_deg >= 45.0:
        raise ConfigError(f"radius_deg must be < 45 degrees for a tangent-plane cone, got {radius_deg}")
    mag_limit = float(mag_limit)

    cl = _merge_spec("cluster", cluster, _CLUSTER_SPEC)
    cl["cmd"] = _cmd_spec("cluster.cmd", cl["cmd"], "isochrone")
    f_cl = _fraction("cluster", cl["fraction"])
    for key in ("distance_kpc", "core_radius_arcmin", "tidal_radius_arcmin"):
        _positive("cluster", key, cl[key])
    _positive("cluster", "pm_dispersion", cl["pm_dispersion"], allow_zero=True)
    if float(cl["tidal_radius_arcmin"]) <= float(cl["core_radius_arcmin"]):
        raise ConfigError("cluster.tidal_radius_arcmin must exceed cluster.core_radius_arcmin")

    gal = None
    if galaxy is not None:
        gal = _merge_spec("galaxy", galaxy, _GALAXY_SPEC)
        gal["cmd"] = _cmd_spec("galaxy.cmd", gal["cmd"], "isochrone")
        _positive("galaxy", "distance_kpc", gal["distance_kpc"])
        _positive("galaxy", "scale_length_deg", gal["scale_length_deg"])
    tl = None
    if tails is not None:
        tl = _merge_spec("tails", tails, _TAILS_SPEC)
        if tl["cmd"] is not None:
            tl["cmd"] = _cmd_spec("tails.cmd", tl["cmd"], "isochrone")
        _positive("tails", "length_deg", tl["length_deg"])
        _positive("tails", "width_arcmin", tl["width_arcmin"])
    f_gal = _fraction("galaxy", gal["fraction"]) if gal else 0.0
    f_tl = _fraction("tails", tl["fraction"]) if tl else 0.0
    if f_cl + f_gal + f_tl > 1.0 + 1e-9:
        raise ConfigError(
            f"component fractions sum to {f_cl + f_gal + f_tl:.3f} > 1 "
            f"(cluster {f_cl}, galaxy {f_gal}, tails {f_tl}); the field takes the remainder"
        )

    pops_in = [field] if isinstance(field, Mapping) else list(field)
    pops = []
    for i, pop in enumerate(pops_in):
        section = f"field[{i}]"
        p = _merge_spec(section, pop, _FIELD_SPEC)
        p["cmd"] = _cmd_spec(f"{section}.cmd", p["cmd"], "disk")
        p["distance"] = _distance_spec(f"{section}.distance", p["distance"])
        _positive(section, "weight", p["weight"])
        _positive(section, "ebr_scale_kpc", p["ebr_scale_kpc"])
        pops.append(p)

    n_cl = int(round(f_cl * n_stars))
    n_gal = int(round(f_gal * n_stars))
    n_tl = int(round(f_tl * n_stars))
    n_field = n_stars - n_cl - n_gal - n_tl
    if n_field < 0:  # rounding of fractions summing to exactly 1
        n_cl += n_field
        n_field = 0
    if n_field > 0 and not pops:
        raise ConfigError(f"the field must hold the remaining {n_field} stars but field is empty")
    n_pops = _split_counts(n_field, [p["weight"] for p in pops])

    strength = float(cl["crowding_strength"])
    r_crowd = float(cl["crowding_radius_arcmin"] or 2.0 * float(cl["core_radius_arcmin"]))

    def crowding(r_arcmin: np.ndarray) -> np.ndarray:
        """Crowding level at a distance from the cluster centre (0 far out, `strength` at it)."""
        return strength / (1.0 + (r_arcmin / r_crowd) ** 2)

    rng = np.random.default_rng(seed)
    # one stream per component, so that changing one component leaves the others' stars alone
    streams = [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=4 + len(pops))]
    components: list[tuple[str, Sample]] = []
    make = _make_cluster(cl, radius_deg, mag_limit)
    components.append(("cluster", _draw_observed(streams[0], n_cl, make, crowding, mag_limit, "cluster")))
    if gal is not None:
        make = _make_galaxy(gal, (ra0, dec0), radius_deg, mag_limit)
        components.append(("galaxy", _draw_observed(streams[1], n_gal, make, crowding, mag_limit, "galaxy")))
    if tl is not None:
        make = _make_tails(tl, cl, radius_deg, mag_limit)
        components.append(("tails", _draw_observed(streams[2], n_tl, make, crowding, mag_limit, "tails")))
    for i, (pop, n_i) in enumerate(zip(pops, n_pops, strict=True)):
        make = _make_field(pop, radius_deg, mag_limit, f"field[{i}]")
        components.append(("field", _draw_observed(streams[4 + i], n_i, make, crowding, mag_limit, f"field[{i}]")))

    truth = np.concatenate([np.full(s["G"].size, lab, dtype=object) for lab, s in components])
    cat = {k: np.concatenate([s[k] for _, s in components]) for k in components[0][1]}
    order = streams[3].permutation(truth.size)  # real catalogues are not sorted by group
    truth = truth[order]
    cat = {k: v[order] for k, v in cat.items()}
    return _observe(streams[3], cat, truth, ra0, dec0, crowding, name=name, radius_deg=radius_deg, seed=seed)


def _observe(
    rng: np.random.Generator,
    cat: Sample,
    truth: np.ndarray,
    ra0: float,
    dec0: float,
    crowding: Callable[[np.ndarray], np.ndarray],
    *,
    name: str,
    radius_deg: float,
    seed: int,
) -> pd.DataFrame:
    """Observe true astrometry with Gaia-DR3-like solutions, errors and RUWE; build the table."""
    n = truth.size
    g = cat["G"]
    crowd = crowding(_radius_deg(cat["xi"], cat["eta"]) * 60.0)
    cr = crowd / (1.0 + crowd)  # saturating crowding level in [0, 1)

    # solution type: 2-parameter for faint (G > 20.5) and crowded stars, 6-parameter common when faint
    p2 = _sigmoid((g - 20.8 + 2.5 * cr) / 0.25) + 0.002
    p6 = 0.85 * _sigmoid((g - 19.3 + 2.0 * cr) / 0.5) + 0.03
    u = rng.random(n)
    two = u < p2
    six = ~two & (rng.random(n) < p6)
    solved = np.where(two, 3, np.where(six, 95, 31)).astype(np.int64)

    # RUWE: lognormal around 1 plus a tail of poorly fitted (binary, blended) sources
    ruwe = np.exp(0.01 + 0.12 * cr + 0.07 * rng.standard_normal(n))
    tail = rng.random(n) < 0.03 + 0.25 * cr
    ruwe[tail] = 1.25 + rng.exponential(0.6 + 0.8 * cr[tail])

    # formal errors: the DR3 curve, x1.12 for 6-parameter solutions, inflated by RUWE and crowding
    scatter = np.exp(0.12 * rng.standard_normal(n))
    base = gaia_parallax_error(g) * scatter * np.where(six, 1.12, 0.92) * np.sqrt(ruwe) * (1.0 + 0.5 * cr)
    plx_err = base * np.exp(0.04 * rng.standard_normal(n))
    pm_base = base * _pm_error_factor(g)
    pmra_err = pm_base * np.exp(0.06 * rng.standard_normal(n))
    pmdec_err = pm_base * np.exp(0.06 * rng.standard_normal(n))
    # pmra/pmdec correlation: set by the local scanning law, so a shared offset plus scatter
    corr = np.clip(rng.uniform(-0.15, 0.15) + rng.uniform(-0.25, 0.25, n), -0.4, 0.4)

    # observed = true + noise; high-RUWE sources scatter more than their formal errors admit
    under = 1.0 + np.clip(ruwe - 1.4, 0.0, None)
    z1, z2, z3 = rng.standard_normal((3, n))
    parallax = cat["parallax"] + under * plx_err * z1
    pmra = cat["pmra"] + under * pmra_err * z2
    pmdec = cat["pmdec"] + under * pmdec_err * (corr * z2 + np.sqrt(1.0 - corr**2) * z3)

    for arr in (parallax, plx_err, pmra, pmra_err, pmdec, pmdec_err, corr, ruwe):
        arr[two] = np.nan
    ra, dec = gnomonic_deproject(cat["xi"], cat["eta"], ra0, dec0)

    # Gaia-like: large, unique, increasing along the table (an offset plus random gaps)
    offset = np.int64(rng.integers(2**40, 2**42)) * np.int64(2**20)
    source_id = offset + np.cumsum(rng.integers(1, 4096, n, dtype=np.int64))
    df = pd.DataFrame(
        {
            "source_id": source_id.astype(np.int64),
            "ra": ra,
            "dec": dec,
            "parallax": parallax,
            "parallax_error": plx_err,
            "parallax_over_error": parallax / plx_err,
            "pmra": pmra,
            "pmra_error": pmra_err,
            "pmdec": pmdec,
            "pmdec_error": pmdec_err,
            "pmra_pmdec_corr": corr,
            "ruwe": ruwe,
            "astrometric_params_solved": solved,
            "phot_g_mean_mag": g,
            "phot_bp_mean_mag": cat["BP"],
            "phot_rp_mean_mag": cat["RP"],
            "bp_rp": cat["BP"] - cat["RP"],
            # the errors stated as Gaia states them, from the observed G (their flux signal-to-noise)
            **{
                f"phot_{band}_mean_flux_over_error": MAG_PER_SNR / sigma
                for band, sigma in zip(("g", "bp", "rp"), _photometric_errors(g), strict=True)
            },
            "truth": truth,
        },
        columns=list(COLUMNS),
    )
    df.attrs.update({"name": name, "center": (ra0, dec0), "radius_deg": radius_deg, "seed": int(seed)})
    return df


def load_simulation_config(name: str) -> dict[str, Any]:
    """The keyword arguments of :func:`simulate_catalog` stored in ``conf/simulation/{name}.yaml``.

    Parameters
    ----------
    name : str
        A bundled field, one of :data:`SIMULATED_FIELDS`.

    Returns
    -------
    dict
        The file's settings, resolved to plain Python values.

    Raises
    ------
    ConfigError
        If there is no such file (the message lists the available ones), it does not hold a
        mapping, or it has keys :func:`simulate_catalog` does not take.
    """
    from omegaconf import OmegaConf

    path = conf_dir() / "simulation" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"no simulation config {name!r} at {path}; available: {', '.join(available) or 'none'}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping of simulate_catalog() arguments")
    allowed = set(inspect.signature(simulate_catalog).parameters)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {path}; allowed: {', '.join(sorted(allowed))}"
        )
    return cfg


def _deep_update(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge overrides into base: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_update(dict(out[key]), value)
        else:
            out[key] = value
    return out


def simulate_field(name: str, **overrides: Any) -> pd.DataFrame:
    """Simulate a bundled field with overrides, e.g. ``simulate_field("m4", n_stars=5000, seed=1)``.

    Nested mappings merge (``cluster={"fraction": 0.2}`` changes only the fraction); lists
    such as ``field`` are replaced whole.

    Parameters
    ----------
    name : str
        A bundled field, one of :data:`SIMULATED_FIELDS`.
    **overrides
        Arguments of :func:`simulate_catalog` that replace or merge into the field's settings.

    Returns
    -------
    pandas.DataFrame
        The simulated catalogue, as :func:`simulate_catalog` returns it.

    Raises
    ------
    ConfigError
        If the field is unknown or an override names a setting that does not exist.
    """
    cfg = _deep_update(load_simulation_config(name), overrides)
    allowed = set(inspect.signature(simulate_catalog).parameters)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown simulation setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    cfg.setdefault("name", name)
    return simulate_catalog(**cfg)


# ----------------------------------------------------------------------------- robustness grid
#: Cluster profiles of the robustness grid (scripts/benchmark_robustness.py), against a cone of
#: ROBUSTNESS_CONE_DEG = 12': ``compact`` (core 0.05', tidal 8': the cone reaches past the tidal
#: radius) and ``extended`` (core 3', tidal 45': the cone lies well inside the tidal radius).
ROBUSTNESS_PROFILES: dict[str, dict[str, float]] = {
    "compact": {"core_radius_arcmin": 0.05, "tidal_radius_arcmin": 8.0},
    "extended": {"core_radius_arcmin": 3.0, "tidal_radius_arcmin": 45.0},
}
#: Where the members sit in magnitude: ``bright`` (a near cluster, 3 kpc, little reddening, its
#: sequence generated down to absolute G = 6: members brighter than G ~ 19 with small errors) or
#: ``faint`` (14 kpc behind E(BP-RP) = 0.6: the turn-off near the limit, most members fainter
#: than G = 19 with proper-motion errors of 0.3-1.3 mas/yr).
ROBUSTNESS_MEMBERS: dict[str, dict[str, float]] = {
    "bright": {"distance_kpc": 3.0, "ebr": 0.2, "faint_mag": 6.0},
    "faint": {"distance_kpc": 14.0, "ebr": 0.6, "faint_mag": 12.0},
}
ROBUSTNESS_CONE_DEG = 0.2
#: Crowding of the grid's cores (simulate_catalog's cluster.crowding_strength): mild, so that
#: the faint members of a compact cluster are not lost in its core.
ROBUSTNESS_CROWDING = 0.5
#: Internal 1-D velocity dispersion of the grid's clusters (km/s), converted at their distance.
ROBUSTNESS_SIGMA_KMS = 5.0


def field_pm_moments(field: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """Mean proper motion and 1-D dispersion (mas/yr) of a field's populations taken together.

    The populations mix by their ``weight``; the dispersion is sqrt(trace(cov) / 2) of the
    mixture of their Gaussians (``pm_sigma``, ``pm_corr``). The extra ``pm_sigma_kms`` spread,
    which depends on each star's distance, is left out.

    Parameters
    ----------
    field
        One field population or a list of them, as in :func:`simulate_catalog`.

    Returns
    -------
    tuple
        (mean ``[pmra, pmdec]`` as an array, dispersion as a float).

    Raises
    ------
    ConfigError
        If a population lacks ``pm_mean`` or ``pm_sigma``.
    """
    pops = [field] if isinstance(field, Mapping) else list(field)
    if not pops:
        raise ConfigError("field must hold at least one population to measure its proper motions")
    weights, means, covs = [], [], []
    for i, pop in enumerate(pops):
        if "pm_mean" not in pop or "pm_sigma" not in pop:
            raise ConfigError(f"field[{i}] lacks pm_mean or pm_sigma")
        sx, sy = _pair(f"field[{i}]", "pm_sigma", pop["pm_sigma"])
        rho = float(pop.get("pm_corr", 0.0))
        weights.append(float(pop.get("weight", 1.0)))
        means.append(np.array(_pair(f"field[{i}]", "pm_mean", pop["pm_mean"])))
        covs.append(np.array([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]))
    w = np.asarray(weights) / np.sum(weights)
    mean = sum(wi * m for wi, m in zip(w, means, strict=False))
    second = sum(wi * (c + np.outer(m, m)) for wi, c, m in zip(w, covs, means, strict=False))
    cov = second - np.outer(mean, mean)
    return mean, float(np.sqrt(np.trace(cov) / 2.0))


def robustness_field_config(
    share: float,
    n_stars: int,
    pm_offset: float,
    profile: str,
    members: str,
    seed: int = 0,
    base: str = "ngc6558",
) -> dict[str, Any]:
    """Keyword arguments of :func:`simulate_catalog` for one cell of the robustness grid.

    The bundled field ``base`` (its bulge and disc populations, centre and magnitude limit)
    with its cluster replaced: ``share`` of the stars, its mean proper motion ``pm_offset``
    times the field's dispersion (:func:`field_pm_moments`) away from the field's mean (along
    the direction from the field's mean to ``base``'s own cluster), a King profile from
    :data:`ROBUSTNESS_PROFILES` in a cone of :data:`ROBUSTNESS_CONE_DEG`, a distance and
    reddening from :data:`ROBUSTNESS_MEMBERS`, and an internal dispersion of
    :data:`ROBUSTNESS_SIGMA_KMS` at that distance.

    Parameters
    ----------
    share
        Cluster fraction of the returned rows, in (0, 1).
    n_stars
        Rows of the catalogue.
    pm_offset
        Distance of the cluster's mean proper motion from the field's, in field dispersions (>= 0).
    profile
        A key of :data:`ROBUSTNESS_PROFILES` (``compact`` or ``extended``).
    members
        A key of :data:`ROBUSTNESS_MEMBERS` (``bright`` or ``faint``).
    seed
        Simulation seed.
    base
        The bundled simulation config whose field is kept.

    Returns
    -------
    dict
        Arguments of :func:`simulate_catalog`; ``name`` describes the cell.

    Raises
    ------
    ConfigError
        If ``profile`` or ``members`` is unknown, or a number is out of range.
    """
    if profile not in ROBUSTNESS_PROFILES:
        raise ConfigError(f"unknown cluster profile {profile!r}: choose one of {', '.join(ROBUSTNESS_PROFILES)}")
    if members not in ROBUSTNESS_MEMBERS:
        raise ConfigError(f"unknown members setting {members!r}: choose one of {', '.join(ROBUSTNESS_MEMBERS)}")
    if not 0.0 < float(share) < 1.0:
        raise ConfigError(f"cluster share must be in (0, 1), got {share!r}")
    if float(pm_offset) < 0:
        raise ConfigError(f"pm_offset must be >= 0 field dispersions, got {pm_offset!r}")
    cfg = load_simulation_config(base)
    mean, sigma = field_pm_moments(cfg["field"])
    direction = np.asarray(cfg["cluster"]["pm_mean"], dtype=float) - mean
    norm = float(np.hypot(*direction))
    direction = direction / norm if norm > 0 else np.array([1.0, 0.0])
    pm = mean + float(pm_offset) * sigma * direction
    where = ROBUSTNESS_MEMBERS[members]
    cluster = dict(cfg["cluster"])
    cluster.update(ROBUSTNESS_PROFILES[profile])
    cluster.update(
        fraction=float(share),
        pm_mean=[float(pm[0]), float(pm[1])],
        distance_kpc=where["distance_kpc"],
        ebr=where["ebr"],
        pm_dispersion=ROBUSTNESS_SIGMA_KMS / (KMS_PER_MASYR_KPC * where["distance_kpc"]),
        dispersion_scale_arcmin=None,
        crowding_strength=ROBUSTNESS_CROWDING,
        cmd={**dict(cluster.get("cmd") or {}), "faint_mag": where["faint_mag"]},
    )
    name = f"share{share:g}_n{int(n_stars)}_off{pm_offset:g}_{profile}_{members}_s{int(seed)}"
    return {
        **cfg,
        "cluster": cluster,
        "n_stars": int(n_stars),
        "seed": int(seed),
        "radius_deg": ROBUSTNESS_CONE_DEG,
        "name": name,
    }
