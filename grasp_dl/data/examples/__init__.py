"""Real Gaia catalogues shipped inside the package, so examples and tests need nothing beside the checkout.

Gaia data: ESA/Gaia/DPAC, CC BY-SA 3.0 IGO. Memberships and the cluster table: Vasiliev & Baumgardt (2021).
See ``README.md`` in this folder for the sources and how to cite them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from grasp_dl.runtime.errors import CatalogError

__all__ = ["pal13_path", "read_pal13", "vb21_clusters_path", "vb21_field", "vb21_field_path", "vb21_names"]


def _data_dir() -> Path:
    return Path(str(resources.files(__name__)))


def pal13_path() -> Path:
    """Path of the real Gaia DR3 archive export around Palomar 13 (123 rows, every archive column).

    Returns
    -------
    pathlib.Path
        The CSV file, readable with :func:`grasp_dl.read_catalog`.
    """
    return _data_dir() / "gaia_dr3_pal13_cone.csv"


def read_pal13() -> pd.DataFrame:
    """The Palomar 13 cone as the archive wrote it (a raw pandas table, not yet normalised).

    Returns
    -------
    pandas.DataFrame
        123 rows, 153 columns, upper-case archive names such as ``SOURCE_ID`` kept.
    """
    return pd.read_csv(pal13_path())


def vb21_names() -> list[str]:
    """Names of the shipped Vasiliev & Baumgardt (2021) fields, e.g. ``['djorg1', 'ngc6522', ...]``.

    Returns
    -------
    list of str
        Sorted field names accepted by :func:`vb21_field`.
    """
    return sorted(p.name.removesuffix(".ref.csv") for p in (_data_dir() / "vb21").glob("*.ref.csv"))


def vb21_field_path(name: str) -> Path:
    """Path of one shipped real field's catalogue (``NAME.csv``); its reference is ``NAME.ref.csv`` beside it.

    Parameters
    ----------
    name : str
        A field name from :func:`vb21_names` (case-insensitive).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    CatalogError
        If no field of that name is shipped.
    """
    key = name.strip().lower().replace(" ", "").replace("_", "")
    if key not in vb21_names():
        raise CatalogError(f"no shipped vb21 field {name!r}: choose one of {', '.join(vb21_names())}")
    return _data_dir() / "vb21" / f"{key}.csv"


def vb21_field(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One real Gaia EDR3 bulge-cluster field and its published membership.

    Parameters
    ----------
    name : str
        A field name from :func:`vb21_names`.

    Returns
    -------
    catalog : pandas.DataFrame
        ``source_id, ra, dec, parallax, parallax_error, pmra, pmra_error, pmdec, pmdec_error,
        pmra_pmdec_corr, phot_g_mean_mag, bp_rp``.
    reference : pandas.DataFrame
        ``source_id, memberprob``: the paper's membership probability (a careful reference, not the truth).
    """
    path = vb21_field_path(name)
    return pd.read_csv(path), pd.read_csv(path.with_name(path.stem + ".ref.csv"))


def vb21_clusters_path() -> Path:
    """Path of the literature table of 170 Milky Way globular clusters (Vasiliev & Baumgardt 2021).

    Returns
    -------
    pathlib.Path
        Whitespace-separated text, one header line beginning with ``#``: name, ra, dec, dist, disterr, vlos,
        vloserr, sigma, rmax, pmra, pmdec, plx, pmra_e, pmdec_e, pmcorr, plx_e.
    """
    return _data_dir() / "vb21_clusters.txt"
