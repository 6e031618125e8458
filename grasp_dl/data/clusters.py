"""Milky Way globular clusters by name, and the recovered astrometry checked against the literature.

The table is Vasiliev & Baumgardt (2021, MNRAS 505, 5978), shipped as
:func:`grasp_dl.data.examples.vb21_clusters_path`: 170 clusters with centres, distances, Gaia
EDR3 mean proper motions and parallaxes, and the radius out to which members were measured.
Names are forgiving: ``"NGC 6397"``, ``"NGC6397"``, ``"ngc_6397"``, Messier numbers (``"M4"``,
:data:`MESSIER`) and common names (``"47 Tuc"``, ``"omega Cen"``) all resolve.

:func:`compare_with_literature` gives each difference in mas/yr (mas) and in combined sigmas:
recovered and published errors and a Gaia EDR3 systematic floor (:data:`PM_SYSTEMATIC`,
:data:`PARALLAX_SYSTEMATIC`: the spatially correlated systematics on cluster scales found by
Vasiliev & Baumgardt 2021 and Lindegren et al. 2021) in quadrature. Over :data:`WARN_SIGMA`
sigmas *and* :data:`WARN_PM` mas/yr (:data:`WARN_PARALLAX` mas) is a warning: the group found
is probably not the named cluster, an alarm independent of the plausibility guards.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from grasp_dl.runtime.errors import CatalogError

#: Gaia EDR3 systematic floor of a cluster's mean proper motion, per axis (mas/yr).
PM_SYSTEMATIC = 0.025
#: Gaia EDR3 systematic floor of a cluster's mean parallax (mas).
PARALLAX_SYSTEMATIC = 0.011
#: A difference is an alarm when it is over this many combined sigmas ...
WARN_SIGMA = 5.0
#: ... and over this many mas/yr in proper motion (total offset) ...
WARN_PM = 0.5
#: ... or this many mas in parallax.
WARN_PARALLAX = 0.1

#: The Messier globular clusters and their NGC numbers.
MESSIER: dict[int, int] = {
    2: 7089,
    3: 5272,
    4: 6121,
    5: 5904,
    9: 6333,
    10: 6254,
    12: 6218,
    13: 6205,
    14: 6402,
    15: 7078,
    19: 6273,
    22: 6656,
    28: 6626,
    30: 7099,
    53: 5024,
    54: 6715,
    55: 6809,
    56: 6779,
    62: 6266,
    68: 4590,
    69: 6637,
    70: 6681,
    71: 6838,
    72: 6981,
    75: 6864,
    79: 1904,
    80: 6093,
    92: 6341,
    107: 6171,
}
#: Common names, as NGC numbers.
COMMON_NAMES: dict[str, int] = {
    "47tuc": 104,
    "47tucanae": 104,
    "omegacen": 5139,
    "omegacentauri": 5139,
    "ωcen": 5139,
    "ocen": 5139,
}


@dataclass(frozen=True)
class LiteratureCluster:
    """One row of the Vasiliev & Baumgardt (2021) table.

    Attributes
    ----------
    name : str
        The table's name, e.g. ``NGC_6121_M_4``.
    ra, dec : float
        Centre, degrees.
    distance_kpc : float
    pmra, pmdec, pmra_error, pmdec_error : float
        Mean proper motion and its error, mas/yr.
    pm_corr : float
        Correlation of the two proper-motion errors.
    parallax, parallax_error : float
        Mean parallax and its error, mas.
    rmax_arcmin : float
        Radius out to which members were measured.
    sigma_los_kms : float
        Central line-of-sight velocity dispersion, km/s (NaN where unknown).
    """

    name: str
    ra: float
    dec: float
    distance_kpc: float
    pmra: float
    pmdec: float
    parallax: float
    pmra_error: float
    pmdec_error: float
    pm_corr: float
    parallax_error: float
    rmax_arcmin: float
    sigma_los_kms: float = math.nan

    @property
    def pm_dispersion(self) -> float:
        """The expected central proper-motion dispersion, sigma_los / distance / 4.74 (mas/yr)."""
        return self.sigma_los_kms / self.distance_kpc / 4.74

    @property
    def center(self) -> tuple[float, float]:
        """(ra, dec) in degrees."""
        return (self.ra, self.dec)


@functools.lru_cache(maxsize=1)
def read_clusters() -> pd.DataFrame:
    """The literature table, one row per cluster, indexed by the table's name.

    Returns
    -------
    pandas.DataFrame
        Columns ra, dec, dist, disterr, vlos, vloserr, sigma, rmax, pmra, pmdec, plx, pmra_e,
        pmdec_e, pmcorr, plx_e.
    """
    from grasp_dl.data.examples import vb21_clusters_path

    path = vb21_clusters_path()
    with open(path) as handle:
        header = handle.readline().lstrip("#").split()
    table = pd.read_csv(path, sep=r"\s+", comment="#", header=None, names=header)
    return table.set_index("Name")


def _key(name: str) -> str:
    """Lower case, letters and digits only, numbers without leading zeros: 'NGC 0104' -> 'ngc104'."""
    key = re.sub(r"[^0-9a-zω]", "", str(name).lower())
    return re.sub(r"\d+", lambda m: str(int(m.group())), key)


@functools.lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    """Every accepted spelling's key -> the table's name (ambiguous short forms left out)."""
    names = list(read_clusters().index)
    found: dict[str, set[str]] = {}

    def add(alias: str, name: str) -> None:
        if alias and not alias.isdigit():
            found.setdefault(_key(alias), set()).add(name)

    by_ngc: dict[int, str] = {}
    for name in names:
        add(name, name)
        tokens = name.split("_")
        for i, token in enumerate(tokens):
            if token.isalpha() and i + 1 < len(tokens) and tokens[i + 1][:1].isdigit():
                add(token + tokens[i + 1], name)  # NGC_6121, M_4, Terzan_5, HP_1
            if re.search(r"[a-zA-Z]", token) and re.search(r"\d", token):
                add(token, name)  # 47Tuc, M107, Pal9, BH184, ESO452
                add(re.match(r"[^\d]*\d+", token).group(), name)  # ESO452_SC11 -> ESO452, Ton2_Pismis26 -> Ton2
        if tokens[0] == "NGC":
            by_ngc[int(tokens[1])] = name
        if len(tokens) == 1 or (len(tokens) == 2 and tokens[1].isdigit()):
            add(name, name)
    for messier, ngc in MESSIER.items():
        if ngc in by_ngc:
            add(f"M{messier}", by_ngc[ngc])
    for alias, ngc in COMMON_NAMES.items():
        add(alias, by_ngc[ngc])
    return {alias: next(iter(targets)) for alias, targets in found.items() if len(targets) == 1}


def resolve_cluster_name(name: str) -> str:
    """The table's name of a cluster given in any usual spelling.

    Parameters
    ----------
    name : str
        e.g. ``"NGC 6397"``, ``"ngc_6397"``, ``"M4"``, ``"47 Tuc"``, ``"omega Cen"``.

    Returns
    -------
    str
        e.g. ``"NGC_6397"``, ``"NGC_6121_M_4"``.

    Raises
    ------
    CatalogError
        If the name matches no cluster of the table; the message lists close matches.
    """
    aliases = _aliases()
    key = _key(name)
    if key in aliases:
        return aliases[key]
    close = difflib.get_close_matches(key, list(aliases), n=8, cutoff=0.6)
    suggestions = list(dict.fromkeys(aliases[c] for c in close))[:4]
    hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "see grasp_dl.data.clusters.read_clusters()"
    raise CatalogError(
        f"unknown cluster {name!r} (not among the 170 of Vasiliev & Baumgardt 2021): {hint} "
        "Or give the centre instead with data.center=[ra,dec]"
    )


def literature_cluster(name: str) -> LiteratureCluster:
    """The published centre, proper motion and parallax of a cluster given in any usual spelling.

    Parameters
    ----------
    name : str
        A cluster name (:func:`resolve_cluster_name`).

    Returns
    -------
    LiteratureCluster

    Raises
    ------
    CatalogError
        If the name matches no cluster.
    """
    table_name = resolve_cluster_name(name)
    row = read_clusters().loc[table_name]
    return LiteratureCluster(
        name=table_name,
        ra=float(row["ra"]),
        dec=float(row["dec"]),
        distance_kpc=float(row["dist"]),
        pmra=float(row["pmra"]),
        pmdec=float(row["pmdec"]),
        parallax=float(row["plx"]),
        pmra_error=float(row["pmra_e"]),
        pmdec_error=float(row["pmdec_e"]),
        pm_corr=float(row["pmcorr"]),
        parallax_error=float(row["plx_e"]),
        rmax_arcmin=float(row["rmax"]),
        sigma_los_kms=float(row["sigma"]),
    )


def _combined(recovered_error: Any, published_error: float, floor: float) -> float:
    err = float(recovered_error) if recovered_error is not None and math.isfinite(float(recovered_error)) else 0.0
    return math.sqrt(err**2 + published_error**2 + floor**2)


def compare_with_literature(summary: Mapping[str, Any], cluster: LiteratureCluster) -> dict[str, Any]:
    """The recovered mean proper motion and parallax against the published ones.

    Parameters
    ----------
    summary : mapping
        A cluster summary with ``mean_pmra``, ``mean_pmdec``, ``mean_parallax`` and their
        ``*_error`` (missing or NaN values are left out of the comparison): a
        :class:`~grasp_dl.membership.summary.ClusterSummary` or its JSON object, both read as a
        mapping since this layer sits below the one that defines the summary.
    cluster : LiteratureCluster
        The published values.

    Returns
    -------
    dict
        ``literature``: the name, the published values, each difference in mas/yr (mas) and in
        combined sigmas (``pm_offset`` the total proper-motion offset, ``pm_offset_sigma`` the
        square root of its chi-square over both axes), the floors used, and ``literature_warning``:
        a sentence when a difference is over :data:`WARN_SIGMA` sigmas and the size limits, else None.
    """
    report: dict[str, Any] = {
        "name": cluster.name,
        "published": {k: v for k, v in asdict(cluster).items() if k != "name"},
        "systematic_floor": {"pm_mas_yr": PM_SYSTEMATIC, "parallax_mas": PARALLAX_SYSTEMATIC},
        "source": "Vasiliev & Baumgardt (2021), Gaia EDR3",
    }
    warnings: list[str] = []

    def value(key: str) -> float:
        v = summary.get(key)
        return float(v) if v is not None and math.isfinite(float(v)) else float("nan")

    pmra, pmdec = value("mean_pmra"), value("mean_pmdec")
    if math.isfinite(pmra) and math.isfinite(pmdec):
        d_ra, d_dec = pmra - cluster.pmra, pmdec - cluster.pmdec
        s_ra = _combined(summary.get("mean_pmra_error"), cluster.pmra_error, PM_SYSTEMATIC)
        s_dec = _combined(summary.get("mean_pmdec_error"), cluster.pmdec_error, PM_SYSTEMATIC)
        offset, sigma = math.hypot(d_ra, d_dec), math.hypot(d_ra / s_ra, d_dec / s_dec)
        report.update(
            delta_pmra=d_ra,
            delta_pmdec=d_dec,
            delta_pmra_sigma=d_ra / s_ra,
            delta_pmdec_sigma=d_dec / s_dec,
            pm_offset=offset,
            pm_offset_sigma=sigma,
        )
        if sigma > WARN_SIGMA and offset > WARN_PM:
            warnings.append(
                f"the recovered mean proper motion ({pmra:.3f}, {pmdec:.3f}) mas/yr is {offset:.2f} mas/yr "
                f"({sigma:.1f} sigma) from {cluster.name}'s published ({cluster.pmra:.3f}, {cluster.pmdec:.3f})"
            )
    plx = value("mean_parallax")
    if math.isfinite(plx):
        d_plx = plx - cluster.parallax
        s_plx = _combined(summary.get("mean_parallax_error"), cluster.parallax_error, PARALLAX_SYSTEMATIC)
        report.update(delta_parallax=d_plx, delta_parallax_sigma=d_plx / s_plx)
        if abs(d_plx / s_plx) > WARN_SIGMA and abs(d_plx) > WARN_PARALLAX:
            warnings.append(
                f"the recovered mean parallax {plx:.3f} mas is {d_plx:+.3f} mas ({abs(d_plx / s_plx):.1f} sigma) "
                f"from the published {cluster.parallax:.3f}"
            )
    if "pm_offset" not in report and "delta_parallax" not in report:
        report["note"] = "no members: nothing to compare"
    warning = None
    if warnings:
        warning = "; ".join(warnings) + ": the group found is probably not this cluster"
    return {"literature": report, "literature_warning": warning}


def literature_lines(summary: Mapping[str, Any]) -> list[str]:
    """Lines for the command line: the comparison with the literature, then its warning if any.

    Parameters
    ----------
    summary : mapping
        A summary with ``literature`` (from :func:`compare_with_literature`), read as a mapping
        like it; others give no line.

    Returns
    -------
    list of str
    """
    lit = summary.get("literature")
    if not lit:
        return []
    pub = lit["published"]
    if "pm_offset" in lit:
        line = (
            f"vs {lit['name']} (Vasiliev & Baumgardt 2021): pmra {lit['delta_pmra']:+.3f} mas/yr "
            f"({lit['delta_pmra_sigma']:+.1f} sigma), pmdec {lit['delta_pmdec']:+.3f} mas/yr "
            f"({lit['delta_pmdec_sigma']:+.1f} sigma) from the published ({pub['pmra']:.3f}, {pub['pmdec']:.3f})"
        )
        if "delta_parallax" in lit:
            line += f"; parallax {lit['delta_parallax']:+.3f} mas ({lit['delta_parallax_sigma']:+.1f} sigma)"
        lines = [line + f" [errors in quadrature + Gaia EDR3 floor {PM_SYSTEMATIC} mas/yr, {PARALLAX_SYSTEMATIC} mas]"]
    else:
        lines = [f"vs {lit['name']} (Vasiliev & Baumgardt 2021): {lit.get('note', 'nothing to compare')}"]
    if summary.get("literature_warning"):
        lines.append(f"warning: {summary['literature_warning']}")
    return lines
