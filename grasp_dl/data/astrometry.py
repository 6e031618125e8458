"""Per-star astrometry with its measurement errors, radius and photometry, for error-aware models.

Gaia gives every star its own error ellipse: faint stars carry proper-motion errors of
0.5-1.5 mas/yr, larger than a cluster's internal dispersion. :class:`StarData` holds what an
error-deconvolved mixture (:mod:`grasp_dl.mixtures.cluster_field`) and the noise augmentation of
the deep models need: the values, their error covariances, the radius from the centre and
(optionally) magnitude and colour. Stars without astrometry (Gaia 2-parameter solutions) keep
NaN values and are scored from position and photometry alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grasp_dl.data.catalog import require_columns, require_numeric
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.runtime.errors import CatalogError, ConfigError

#: The astrometric quantities, their error columns, and the pmra/pmdec correlation column.
ASTROMETRY = ("pmra", "pmdec", "parallax")
ERROR_COLUMNS = {"pmra": "pmra_error", "pmdec": "pmdec_error", "parallax": "parallax_error"}
CORRELATION_COLUMN = "pmra_pmdec_corr"
#: Features whose absence makes a row a "no astrometry" row (and nothing else missing).
_ASTROMETRIC_FEATURES = set(ASTROMETRY) | set(ERROR_COLUMNS.values()) | {CORRELATION_COLUMN}
#: Photometry the colour-magnitude terms use: magnitude, colour.
CMD_COLUMNS = ("phot_g_mean_mag", "bp_rp")
#: The magnitude error of a flux measured with signal-to-noise s is MAG_PER_SNR / s (2.5 / ln 10).
MAG_PER_SNR = 2.5 / np.log(10.0)
#: Photometric error columns a catalogue may carry, by what they give: each CMD axis's error (mag) directly,
#: else from its bands' errors, else from the bands' flux signal-to-noise (Gaia's ``*_flux_over_error``).
PHOTOMETRIC_ERROR_COLUMNS = {
    "phot_g_mean_mag": (("phot_g_mean_mag_error",), ("phot_g_mean_flux_over_error",)),
    "bp_rp": (
        ("bp_rp_error",),
        ("phot_bp_mean_mag_error", "phot_rp_mean_mag_error"),
        ("phot_bp_mean_flux_over_error", "phot_rp_mean_flux_over_error"),
    ),
}
#: Every column :data:`PHOTOMETRIC_ERROR_COLUMNS` names, flat.
PHOTOMETRIC_ERROR_COLUMN_NAMES = tuple(c for choices in PHOTOMETRIC_ERROR_COLUMNS.values() for g in choices for c in g)


@dataclass
class StarData:
    """What an error-aware model sees of each star.

    Parameters
    ----------
    values : numpy.ndarray
        (n, d) astrometry (pmra, pmdec[, parallax]), NaN where a star has none.
    covariances : numpy.ndarray
        (n, d, d) error covariances of ``values``.
    radius : numpy.ndarray
        (n,) tangent-plane distance from the centre in degrees.
    cmd : numpy.ndarray, optional
        (n, 2) magnitude and colour, or None when the photometry terms are off.
    position : numpy.ndarray, optional
        (n, 2) tangent-plane offsets (xi, eta) from the centre in degrees, for terms that vary
        across the cone (differential reddening); None when not collected.
    cmd_variance : numpy.ndarray, optional
        (n, 2) error variances (mag^2) of ``cmd`` as the catalogue states them, NaN where it does not
        (the models then use Gaia's typical errors at the star's magnitude); None: stated nowhere.
    """

    values: np.ndarray
    covariances: np.ndarray
    radius: np.ndarray
    cmd: np.ndarray | None = None
    position: np.ndarray | None = None
    cmd_variance: np.ndarray | None = None

    @property
    def has_astrometry(self) -> np.ndarray:
        """Stars whose astrometry and error covariance are all finite.

        Returns
        -------
        numpy.ndarray
            A boolean mask of length n.
        """
        return np.isfinite(self.values).all(axis=1) & np.isfinite(self.covariances).all(axis=(1, 2))

    def subset(self, rows: np.ndarray) -> StarData:
        """The stars at ``rows``.

        Parameters
        ----------
        rows : numpy.ndarray
            Indices or a boolean mask.

        Returns
        -------
        StarData
            Those stars only, every array indexed alike.
        """
        return StarData(
            self.values[rows],
            self.covariances[rows],
            self.radius[rows],
            None if self.cmd is None else self.cmd[rows],
            None if self.position is None else self.position[rows],
            None if self.cmd_variance is None else self.cmd_variance[rows],
        )

    @staticmethod
    def concatenate(parts: Sequence[StarData]) -> StarData:
        """The stars of ``parts``, one after another (photometry and positions kept where every part has them).

        Stated photometric errors are kept where any part has them (NaN for the others' stars).

        Parameters
        ----------
        parts : sequence of StarData
            With the same astrometric dimensions.

        Returns
        -------
        StarData
        """

        def joined(name: str) -> np.ndarray | None:
            arrays = [getattr(part, name) for part in parts]
            return None if any(a is None for a in arrays) else np.concatenate(arrays)

        variances = [part.cmd_variance for part in parts]
        if any(v is not None for v in variances) and all(part.cmd is not None for part in parts):
            stated = np.concatenate(
                [np.full((len(p.radius), 2), np.nan) if v is None else v for p, v in zip(parts, variances, strict=True)]
            )
        else:
            stated = None
        return StarData(*(joined(name) for name in ("values", "covariances", "radius", "cmd", "position")), stated)


def photometric_variances(table: pd.DataFrame) -> np.ndarray | None:
    """Error variances (mag^2) of G and BP-RP as ``table`` states them (:data:`PHOTOMETRIC_ERROR_COLUMNS`).

    A magnitude error column is used where present, else the bands' flux signal-to-noise (Gaia's
    ``phot_*_mean_flux_over_error``; BP-RP's error is its two bands' in quadrature, their correlation
    unknown). A star whose columns are missing, non-finite or not positive gets NaN.

    Parameters
    ----------
    table : pandas.DataFrame
        The catalogue.

    Returns
    -------
    numpy.ndarray or None
        (n, 2), or None when the catalogue states no photometric error at all.

    Raises
    ------
    CatalogError
        When one of those columns holds text or True/False flags (named, with the fix).
    """
    col = lambda name: table[name].to_numpy(dtype=float, na_value=np.nan)  # noqa: E731
    present = [c for c in PHOTOMETRIC_ERROR_COLUMN_NAMES if c in table.columns]
    try:
        require_numeric(table, present)
    except CatalogError as exc:
        raise CatalogError(
            f"{str(exc).removesuffix(': fix the column or choose other features.')}: fix the photometric error "
            "column or drop it (the model then uses Gaia's typical errors at each star's G)"
        ) from None
    out = np.full((len(table), 2), np.nan)
    found = False
    for axis, choices in enumerate(PHOTOMETRIC_ERROR_COLUMNS.values()):
        for columns in choices:
            if not set(columns) <= set(table.columns):
                continue
            found = True
            parts = [col(c) for c in columns]
            if columns[0].endswith("_flux_over_error"):
                parts = [MAG_PER_SNR / np.where(p > 0, p, np.nan) for p in parts]
            variance = sum(np.where(p > 0, p, np.nan) ** 2 for p in parts)
            out[:, axis] = np.where(np.isfinite(out[:, axis]), out[:, axis], variance)
    return out if found else None


def error_covariances(
    pmra_error: np.ndarray,
    pmdec_error: np.ndarray,
    pmra_pmdec_corr: np.ndarray | None = None,
    parallax_error: np.ndarray | None = None,
) -> np.ndarray:
    """Per-star error covariance of (pmra, pmdec[, parallax]) from Gaia's errors and correlation.

    A missing correlation counts as 0; the parallax's correlations with the proper motion are
    not in the usual exports and count as 0 too.

    Parameters
    ----------
    pmra_error, pmdec_error : numpy.ndarray
        Proper-motion errors (mas/yr), one per star.
    pmra_pmdec_corr : numpy.ndarray, optional
        Their correlation coefficients (NaN counts as 0).
    parallax_error : numpy.ndarray, optional
        Parallax errors (mas); given, the covariances are 3 x 3.

    Returns
    -------
    numpy.ndarray
        (n, 2, 2) or (n, 3, 3) covariance matrices.
    """
    ea, ed = np.asarray(pmra_error, float), np.asarray(pmdec_error, float)
    rho = np.zeros_like(ea) if pmra_pmdec_corr is None else np.nan_to_num(np.asarray(pmra_pmdec_corr, float))
    d = 2 if parallax_error is None else 3
    cov = np.zeros((len(ea), d, d))
    cov[:, 0, 0], cov[:, 1, 1] = ea**2, ed**2
    cov[:, 0, 1] = cov[:, 1, 0] = rho * ea * ed
    if parallax_error is not None:
        cov[:, 2, 2] = np.asarray(parallax_error, float) ** 2
    return cov


def astrometry_columns(features: Sequence[str]) -> list[str]:
    """The astrometric quantities among ``features``, in the order (pmra, pmdec, parallax).

    Proper motion is always used; parallax only where it is a feature.

    Parameters
    ----------
    features : sequence of str
        The model's feature names.

    Returns
    -------
    list of str
        ``["pmra", "pmdec"]``, plus ``"parallax"`` when it is among ``features``.
    """
    return ["pmra", "pmdec"] + (["parallax"] if "parallax" in features else [])


def no_astrometry_rows(flags: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """Rows left out only because *all* their astrometric features are missing (a 2-parameter solution).

    A row missing only some of them (say pmra alone) is a damaged record, not a 2-parameter
    solution, and stays unscored.

    Parameters
    ----------
    flags : numpy.ndarray
        Why each row was left out (:class:`~grasp_dl.data.prepare.PreparedCatalog`'s ``flags``).
    feature_names : sequence of str
        The features asked for.

    Returns
    -------
    numpy.ndarray
        One boolean per row.
    """
    astrometric = set(feature_names) & _ASTROMETRIC_FEATURES
    out = np.zeros(len(flags), dtype=bool)
    if not {"pmra", "pmdec"} <= astrometric:
        return out
    for i, flag in enumerate(flags):
        if isinstance(flag, str) and flag.startswith("missing:"):
            out[i] = set(flag[len("missing:") :].split("+")) == astrometric
    return out


def require_error_columns(table: pd.DataFrame, quantities: Sequence[str], what: str) -> None:
    """Check that the error columns of ``quantities`` are in ``table``.

    Parameters
    ----------
    table : pandas.DataFrame
        The catalogue.
    quantities : sequence of str
        Astrometric quantities (pmra, pmdec, parallax) whose ``*_error`` columns are needed.
    what : str
        The setting that needs them, named in the message with how to switch it off.

    Raises
    ------
    CatalogError
        If an error column is missing (the message names it and the fix).
    """
    needed = [ERROR_COLUMNS[q] for q in quantities]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise CatalogError(
            f"{what} needs the measurement-error column(s) {', '.join(map(repr, missing))}, which the catalogue "
            f"lacks: export them from gaia_source (or map your names with data.columns='{{yourname: {missing[0]}}}'), "
            f"or switch {what} off"
        )
    require_columns(table, needed)


def star_data(
    table: pd.DataFrame,
    center: Sequence[float],
    quantities: Sequence[str] = ("pmra", "pmdec", "parallax"),
    photometry: bool = False,
    what: str = "the error-aware model",
) -> StarData:
    """Build :class:`StarData` for every row of ``table`` around ``center`` (ra, dec in degrees).

    The pmra/pmdec correlation column is used when present.

    Parameters
    ----------
    table : pandas.DataFrame
        The catalogue, Gaia column names (``ra``, ``dec``, the quantities and their ``*_error``).
    center : sequence of float
        The centre (ra, dec) in degrees the radii are measured from.
    quantities : sequence of str, default ("pmra", "pmdec", "parallax")
        The astrometric columns, pmra and pmdec first, parallax optional.
    photometry : bool, default False
        Also collect G magnitude and BP-RP colour (computed from BP and RP when missing), and their
        errors where the catalogue states them (:func:`photometric_variances`).
    what : str, default "the error-aware model"
        The setting that needs the error columns, named in error messages.

    Returns
    -------
    StarData
        One entry per row of ``table``, in order.

    Raises
    ------
    ConfigError
        If ``quantities`` are not pmra, pmdec and optionally parallax.
    CatalogError
        If a needed column (position, astrometry, error, photometry) is missing.
    """
    quantities = list(quantities)
    if quantities[:2] != ["pmra", "pmdec"] or not set(quantities) <= set(ASTROMETRY):
        raise ConfigError(f"quantities must be pmra, pmdec and optionally parallax, got {quantities}")
    require_columns(table, ["ra", "dec", *quantities])
    require_error_columns(table, quantities, what)
    col = lambda name: table[name].to_numpy(dtype=float, na_value=np.nan)  # noqa: E731
    corr = col(CORRELATION_COLUMN) if CORRELATION_COLUMN in table.columns else None
    cov = error_covariances(
        col("pmra_error"), col("pmdec_error"), corr, col("parallax_error") if "parallax" in quantities else None
    )
    values = np.column_stack([col(q) for q in quantities])
    xi, eta = gnomonic_project(col("ra"), col("dec"), float(center[0]), float(center[1]))
    cmd = None
    if photometry:
        missing = [c for c in CMD_COLUMNS if c not in table.columns]
        if missing == ["bp_rp"] and {"phot_bp_mean_mag", "phot_rp_mean_mag"} <= set(table.columns):
            table = table.assign(bp_rp=col("phot_bp_mean_mag") - col("phot_rp_mean_mag"))
        elif missing:
            raise CatalogError(
                f"{what} needs the photometry column(s) {', '.join(map(repr, missing))}, which the catalogue lacks: "
                "export phot_g_mean_mag and bp_rp (or phot_bp_mean_mag and phot_rp_mean_mag) from gaia_source, map "
                f"your names with data.columns='{{yourname: {missing[0]}}}', or choose a setting without photometry "
                "(model=xd)"
            )
        cmd = np.column_stack([table[c].to_numpy(dtype=float, na_value=np.nan) for c in CMD_COLUMNS])
    stated = photometric_variances(table) if photometry else None
    return StarData(values, cov, np.hypot(xi, eta), cmd, np.column_stack([xi, eta]), stated)
