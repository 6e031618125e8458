"""Turn a catalogue into a feature matrix: colours, tangent-plane positions, quality cuts, outliers.

Nothing is dropped silently: every row of the input gets a flag ('' when usable) and the
prepared matrix comes with a boolean mask back into the input rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.catalog import read_catalog, require_columns, require_numeric
from grasp_dl.data.feature_matrix import PreparedFeatures
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.data.validation import feature_range_flags, range_flags
from grasp_dl.runtime.errors import CatalogError, ConfigError

log = logging.getLogger(__name__)

#: The seed's features: position, proper motion and parallax.
DEFAULT_FEATURES: tuple[str, ...] = ("ra", "dec", "pmra", "pmdec", "parallax")
#: Requested position features and the tangent-plane offsets that replace them.
POSITION_FEATURES = {"ra": "xi", "dec": "eta"}
#: Magnitude short names used by the seed and the Gaia columns they stand for.
MAGNITUDE_COLUMNS = {"G": "phot_g_mean_mag", "BP": "phot_bp_mean_mag", "RP": "phot_rp_mean_mag"}
#: Colour features create_color_features() can add, as (bright band, faint band) pairs.
COLOR_FEATURES = {"bp_rp": ("BP", "RP"), "bp_g": ("BP", "G"), "g_rp": ("G", "RP")}

FLAG_OK = ""
FLAG_OUTLIER = "outlier"
#: Features computed from the distance to the centre: the radius (degrees) and its log10.
RADIUS_FEATURES = ("radius", "log_radius")
#: log_radius is log10 of the radius in degrees, floored here (0.036 arcsec) so the centre stays finite.
LOG_RADIUS_FLOOR_DEG = 1e-5


class PreparedCatalog(tuple):
    """Features of the usable stars plus what is needed to map them back onto the input rows.

    Unpacks as the seed's ``features, feature_names = prepare_stellar_data(...)`` (a tuple of
    two); the rest is in attributes: ``mask`` (True for the input rows in ``features``),
    ``flags`` (why each other row was left out, '' for kept rows), ``center`` and ``cuts``
    (rows left out per reason). ``features`` is a :class:`grasp_dl.data.rows.PreparedFeatures`:
    it knows its catalogue rows, so that ``DeepClusteringModel.predict_clusters(features)``
    returns one result per input row.

    Parameters
    ----------
    features : numpy.ndarray
        The feature matrix of the kept rows (stars x features).
    feature_names : list of str
        The names of its columns.
    mask : numpy.ndarray
        One boolean per input row, True for the rows in ``features``.
    flags : numpy.ndarray
        One string per input row: '' for kept rows, else the reason it was left out.
    center : tuple of float or None
        The (ra, dec) centre of the tangent-plane offsets, in degrees.
    cuts : dict, optional
        Rows left out per reason.
    """

    def __new__(
        cls,
        features: np.ndarray,
        feature_names: Sequence[str],
        mask: np.ndarray,
        flags: np.ndarray,
        center: tuple[float, float] | None,
        cuts: dict[str, int] | None = None,
    ) -> PreparedCatalog:
        mask = np.asarray(mask, dtype=bool)
        if len(features) != int(mask.sum()):
            raise ValueError(f"{len(features)} feature rows but the mask keeps {int(mask.sum())} rows")
        matrix = features if isinstance(features, PreparedFeatures) else PreparedFeatures(features, mask)
        self = super().__new__(cls, (matrix, list(feature_names)))
        self.mask = mask
        self.flags = flags
        self.center = center
        self.cuts = dict(cuts or {})
        return self

    @property
    def features(self) -> PreparedFeatures:
        """The feature matrix of the kept rows (the first item)."""
        return self[0]

    @property
    def feature_names(self) -> list[str]:
        """The names of the feature columns (the second item)."""
        return self[1]

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (np.asarray(self[0]), self[1], self.mask, self.flags, self.center, self.cuts)

    def __repr__(self) -> str:
        return (
            f"PreparedCatalog(features={self.n_usable}x{len(self.feature_names)} {self.feature_names}, "
            f"rows={self.n_rows}, center={self.center}, cuts={self.cuts})"
        )

    @property
    def n_rows(self) -> int:
        """Rows in the input catalogue."""
        return len(self.mask)

    @property
    def n_usable(self) -> int:
        """Rows that passed every cut and enter the feature matrix."""
        return int(self.mask.sum())


def _magnitude_column(df: pd.DataFrame, name: str) -> str:
    """The column holding a magnitude given by its short (G) or Gaia (phot_g_mean_mag) name."""
    for candidate in (name, MAGNITUDE_COLUMNS.get(name), MAGNITUDE_COLUMNS.get(name.upper())):
        if candidate and candidate in df.columns:
            return candidate
    raise CatalogError(
        f"magnitude column {name!r} not found (looked for {name!r} and "
        f"{MAGNITUDE_COLUMNS.get(name.upper(), name)!r}): pass columns={{'<your name>': "
        f"'{MAGNITUDE_COLUMNS.get(name.upper(), name)}'}} when reading the catalogue"
    )


def create_color_features(df: pd.DataFrame, magnitude_columns: Sequence[str] = ("G", "BP", "RP")) -> pd.DataFrame:
    """Return a copy of ``df`` with the colours bp_rp, bp_g and g_rp from the G, BP, RP magnitudes.

    ``magnitude_columns`` names the G, BP and RP columns in that order (short or Gaia names).
    Existing colour columns are kept (the archive's own bp_rp is exact); missing ones are added.
    """
    if len(magnitude_columns) != 3:
        raise ConfigError("magnitude_columns must name three columns: G, BP and RP, in that order")
    bands = dict(zip(("G", "BP", "RP"), (_magnitude_column(df, m) for m in magnitude_columns), strict=False))
    require_numeric(df, list(bands.values()))
    out = df.copy()
    for colour, (bright, faint) in COLOR_FEATURES.items():
        if colour not in out.columns:
            out[colour] = out[bands[bright]] - out[bands[faint]]
    return out


def estimate_center(ra: np.ndarray, dec: np.ndarray, n_iter: int = 8) -> tuple[float, float]:
    """Estimate a cluster centre as the density peak of the sky positions (shrinking-circle mean).

    Works on unit vectors, so it is right across RA = 0 and near the poles.
    """
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.sum() == 0:
        raise CatalogError("cannot estimate the cluster centre: no star has finite ra and dec")
    ra_r, dec_r = np.radians(ra[ok]), np.radians(dec[ok])
    vectors = np.column_stack((np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)))
    center = vectors.mean(axis=0)
    center /= np.linalg.norm(center)
    radius = np.percentile(np.arccos(np.clip(vectors @ center, -1, 1)), 50)
    for _ in range(n_iter):
        inside = np.arccos(np.clip(vectors @ center, -1, 1)) <= radius
        if inside.sum() < 10:
            break
        center = vectors[inside].mean(axis=0)
        center /= np.linalg.norm(center)
        radius *= 0.7
    ra0 = float(np.degrees(np.arctan2(center[1], center[0])) % 360.0)
    dec0 = float(np.degrees(np.arcsin(np.clip(center[2], -1, 1))))
    return ra0, dec0


def _resolve_feature_columns(df: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """Catalogue columns each requested feature needs (ra/dec for xi/eta, magnitudes for colours)."""
    needed: list[str] = []
    for name in features:
        if name in POSITION_FEATURES or name in POSITION_FEATURES.values() or name in RADIUS_FEATURES:
            needed += ["ra", "dec"]
        elif name in COLOR_FEATURES and name not in df.columns:
            needed += [_magnitude_column(df, band) for band in COLOR_FEATURES[name]]
        else:
            needed.append(name)
    return list(dict.fromkeys(needed))


def feature_output_names(features: Sequence[str]) -> list[str]:
    """Names of the prepared feature columns: ra and dec become the offsets xi and eta."""
    return [POSITION_FEATURES.get(name, name) for name in features]


def _feature_frame(df: pd.DataFrame, features: Sequence[str], center: tuple[float, float] | None) -> pd.DataFrame:
    """Compute every requested feature as a float column (NaN where the input lacks it)."""
    needs_sky = any(n in POSITION_FEATURES or n in POSITION_FEATURES.values() or n in RADIUS_FEATURES for n in features)
    xi = eta = None
    if needs_sky:
        ra0, dec0 = center  # type: ignore[misc]
        xi, eta = gnomonic_project(df["ra"].to_numpy(float), df["dec"].to_numpy(float), ra0, dec0)
    if any(n in COLOR_FEATURES and n not in df.columns for n in features):
        df = create_color_features(df)
    columns: dict[str, np.ndarray] = {}
    for name in features:
        out_name = POSITION_FEATURES.get(name, name)
        if out_name == "xi":
            columns[out_name] = xi
        elif out_name == "eta":
            columns[out_name] = eta
        elif name == "radius":
            columns[name] = np.hypot(xi, eta)
        elif name == "log_radius":
            # The cluster's density falls as a power of the radius: in log radius the core is
            # resolved instead of squeezed into the first few per cent of the feature's range.
            columns[name] = np.log10(np.maximum(np.hypot(xi, eta), LOG_RADIUS_FLOOR_DEG))
        else:
            columns[name] = df[name].to_numpy(dtype=float, na_value=np.nan)
    return pd.DataFrame(columns, index=df.index)


def _quality_cuts(
    df: pd.DataFrame,
    ruwe_max: float | None,
    parallax_over_error_min: float | None,
    mag_range: Sequence[float | None] | None,
    mag_column: str,
) -> list[tuple[str, np.ndarray]]:
    """(flag, failed) pairs for each enabled quality cut; a missing value fails the cut."""
    cuts: list[tuple[str, np.ndarray]] = []
    if ruwe_max is not None:
        require_columns(df, ["ruwe"])
        cuts.append((f"ruwe>{ruwe_max:g}", ~(df["ruwe"].to_numpy(float) <= ruwe_max)))
    if parallax_over_error_min is not None:
        if "parallax_over_error" in df.columns:
            poe = df["parallax_over_error"].to_numpy(float)
        else:
            require_columns(df, ["parallax", "parallax_error"])
            poe = df["parallax"].to_numpy(float) / df["parallax_error"].to_numpy(float)
        cuts.append((f"parallax_over_error<{parallax_over_error_min:g}", ~(poe >= parallax_over_error_min)))
    if mag_range is not None and any(v is not None for v in mag_range):
        column = _magnitude_column(df, mag_column)
        mag = df[column].to_numpy(float)
        lo, hi = mag_range
        failed = ~np.isfinite(mag)
        if lo is not None:
            failed |= mag < lo
        if hi is not None:
            failed |= mag > hi
        cuts.append((f"{column} outside [{lo}, {hi}]", failed))
    return cuts


def _outliers(values: np.ndarray, sigma: float) -> np.ndarray:
    """Rows further than ``sigma`` robust standard deviations from the median in any feature."""
    median = np.median(values, axis=0)
    mad = 1.482602218505602 * np.median(np.abs(values - median), axis=0)
    mad = np.where(mad > 0, mad, np.inf)
    return (np.abs(values - median) / mad > sigma).any(axis=1)


def prepare_stellar_data(
    catalog: Any,
    features: Sequence[str] = DEFAULT_FEATURES,
    outlier_removal: bool = True,
    *,
    outlier_sigma: float = 10.0,
    center: Sequence[float] | None = None,
    columns: Mapping[str, str] | None = None,
    ruwe_max: float | None = None,
    parallax_over_error_min: float | None = None,
    mag_range: Sequence[float | None] | None = None,
    mag_column: str = "G",
    allow_empty: bool = False,
    already_read: bool = False,
) -> PreparedCatalog:
    """Select, derive and clean the features of a catalogue.

    ``catalog`` is anything :func:`read_catalog` takes. ``ra``/``dec`` in ``features`` give the
    gnomonic offsets ``xi``/``eta`` (degrees) around ``center`` (estimated when not given);
    ``radius`` gives their norm and ``log_radius`` its log10; bp_rp, bp_g, g_rp are derived from magnitudes if absent.
    Rows that lack a feature, fail a quality cut (all off by default) or, with
    ``outlier_removal``, lie more than ``outlier_sigma`` robust sigmas out in any feature are
    flagged and left out of the matrix; ``cuts`` counts each reason. A catalogue with no usable
    star is an error unless ``allow_empty`` (one chunk of a catalogue scored chunk by chunk).
    With ``already_read``, ``catalog`` is a DataFrame :func:`read_catalog` (or ``iter_catalog``)
    returned and ``columns`` already applied: it is used as it is, not copied and cleaned again.

    Returns
    -------
    PreparedCatalog
        Unpacks as ``features, feature_names`` (the seed's two values); ``.mask``, ``.flags``,
        ``.center`` and ``.cuts`` map the features back onto the input rows.

    Raises
    ------
    CatalogError
        If the catalogue lacks a column the features need, or no star is left.
    ConfigError
        If no feature is selected.
    """
    if not features:
        raise ConfigError("no features selected: give at least one, e.g. [ra, dec, pmra, pmdec]")
    df = catalog if already_read else read_catalog(catalog, columns)
    source = "the catalogue"
    needed = _resolve_feature_columns(df, features)
    require_columns(df, needed, source=source)
    require_numeric(df, needed, source=source)

    if any(n in POSITION_FEATURES or n in ("xi", "eta", *RADIUS_FEATURES) for n in features):
        if center is None:
            center = estimate_center(df["ra"].to_numpy(float), df["dec"].to_numpy(float))
            log.info("estimated cluster centre: ra=%.5f dec=%.5f", *center)
        center = (float(center[0]), float(center[1]))
    else:
        center = (float(center[0]), float(center[1])) if center is not None else None

    values = _feature_frame(df, features, center)
    names = list(values.columns)
    matrix = values.to_numpy(dtype=np.float64)
    flags = np.full(len(df), FLAG_OK, dtype=object)
    cuts: dict[str, int] = {}

    def apply(flag: str, failed: np.ndarray) -> None:
        newly = failed & (flags == FLAG_OK)
        flags[newly] = flag
        cuts[flag] = int(newly.sum())

    # Infinite and physically impossible values are flagged before anything is cast to float32.
    for flag, failed in range_flags(df, needed) + feature_range_flags(matrix, names):
        apply(flag, failed)
    finite = np.isfinite(matrix)
    missing_any = ~finite.all(axis=1) & (flags == FLAG_OK)
    if missing_any.any():
        # One flag per pattern of missing features, e.g. 'missing:parallax+pmra+pmdec'.
        # Each row's pattern as one integer, first feature the highest bit: the patterns come in
        # the order np.unique(axis=0) gives the boolean rows, at the cost of a sort of integers.
        bits = 1 << np.arange(len(names) - 1, -1, -1, dtype=np.int64)
        codes = np.where(missing_any, (~finite).astype(np.int64) @ bits, -1)
        for code in np.unique(codes[missing_any]):
            pattern = (int(code) & bits) > 0
            apply("missing:" + "+".join(np.array(names)[pattern]), codes == code)
    for flag, failed in _quality_cuts(df, ruwe_max, parallax_over_error_min, mag_range, mag_column):
        apply(flag, failed)
    if outlier_removal and (flags == FLAG_OK).sum() > 2:
        ok = flags == FLAG_OK
        failed = np.zeros(len(df), dtype=bool)
        failed[ok] = _outliers(matrix[ok], outlier_sigma)
        apply(FLAG_OUTLIER, failed)

    mask = flags == FLAG_OK
    for flag, count in cuts.items():
        log.info("%d of %d rows left out: %s", count, len(df), flag)
    if not mask.any() and not allow_empty:
        reasons = ", ".join(f"{n} {f}" for f, n in cuts.items() if n)
        raise CatalogError(
            f"no usable star left in {source} of {len(df)} rows ({reasons}): "
            "relax the quality cuts or choose features the catalogue has"
        )
    return PreparedCatalog(
        features=matrix[mask].astype(np.float32),
        feature_names=names,
        mask=mask,
        flags=flags,
        center=center,
        cuts=cuts,
    )
