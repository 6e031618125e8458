"""Values that cannot be trusted are flagged, never silently turned into numbers.

- :func:`range_flags` flags, before any float32 cast, values that are infinite
  (``nonfinite:<column>``) or outside physical ranges or float32 (``out_of_range:<column>``,
  :data:`PHYSICAL_LIMITS`); :func:`uncertainty_flags` does the same for non-positive errors and
  correlations outside [-1, 1].
- :func:`flag_duplicate_ids` unscores the repeats of a ``source_id``.
- :func:`flag_nonfinite_probabilities`, the last check of scoring: a row has finite
  probabilities or a flag saying why not.
- :func:`check_trainable` refuses catalogues too small to train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.runtime.errors import CatalogError

__all__ = [
    "FLAG_DUPLICATE_ID",
    "FLAG_NONFINITE_PROBABILITY",
    "PHYSICAL_LIMITS",
    "check_trainable",
    "duplicate_ids",
    "flag_duplicate_ids",
    "flag_nonfinite_probabilities",
    "range_flags",
    "uncertainty_flags",
]

#: Largest plausible absolute value of a Gaia column (mas/yr, mas, degrees).
PHYSICAL_LIMITS: dict[str, float] = {"pmra": 1e4, "pmdec": 1e4, "parallax": 1e3, "dec": 90.0, "ra": 360.0}
#: Any other feature beyond this is refused: float32 (the training precision) overflows near 3.4e38,
#: and standardising or squaring values far below that already loses every digit.
FLOAT32_SAFE = 1e30
#: Measurement-error columns: a finite value must be positive (a zero or negative error is impossible).
ERROR_COLUMNS = ("pmra_error", "pmdec_error", "parallax_error")
#: Correlation coefficients: a finite value must lie in [-1, 1].
CORRELATION_COLUMNS = ("pmra_pmdec_corr",)
#: Flag of a row whose source_id repeats one seen earlier in the catalogue (the repeat is not scored).
FLAG_DUPLICATE_ID = "duplicate:source_id"
#: Flag of a row whose scored probabilities came out non-finite.
FLAG_NONFINITE_PROBABILITY = "nonfinite:probability"


def _values(column: Any) -> np.ndarray:
    return pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def range_flags(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(flag, failed rows) for each input column holding infinite or out-of-range values.

    Parameters
    ----------
    df
        The catalogue (as read by :func:`~grasp_dl.data.catalog.read_catalog`).
    columns
        The numeric columns the features are computed from.

    Returns
    -------
    list of (str, numpy.ndarray)
        ``nonfinite:<column>`` for +-inf (NaN stays a missing value), ``out_of_range:<column>``
        for values beyond :data:`PHYSICAL_LIMITS` (or :data:`FLOAT32_SAFE` for other columns);
        only flags that hit at least one row.
    """
    flags: list[tuple[str, np.ndarray]] = []
    for name in columns:
        if name not in df.columns:
            continue
        values = _values(df[name])
        infinite = np.isinf(values)
        if infinite.any():
            flags.append((f"nonfinite:{name}", infinite))
        limit = PHYSICAL_LIMITS.get(name, FLOAT32_SAFE)
        with np.errstate(invalid="ignore"):
            beyond = np.isfinite(values) & (np.abs(values) > limit)
        if beyond.any():
            flags.append((f"out_of_range:{name}", beyond))
    flags.extend(uncertainty_flags(df))
    return flags


def uncertainty_flags(df: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
    """``out_of_range:<column>`` for errors that are not positive and correlations outside [-1, 1].

    Checked on every catalogue that has these columns, whatever the features: an error-aware
    model builds each star's covariance from them, and an impossible one (a negative variance, a
    correlation of 1.5) makes the fit NaN instead of failing. NaN stays a missing value.

    Parameters
    ----------
    df
        The catalogue.

    Returns
    -------
    list of (str, numpy.ndarray)
        Only flags that hit at least one row.
    """
    flags: list[tuple[str, np.ndarray]] = []
    for name in (*ERROR_COLUMNS, *CORRELATION_COLUMNS):
        if name not in df.columns:
            continue
        values = _values(df[name])
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(values) & ((values <= 0) if name in ERROR_COLUMNS else (np.abs(values) > 1))
        if bad.any():
            flags.append((f"out_of_range:{name}", bad))
    return flags


def duplicate_ids(ids: np.ndarray, seen: set[Any] | None = None) -> np.ndarray:
    """Which entries of ``ids`` repeat an earlier one (in ``ids`` or in ``seen``, which is updated).

    Parameters
    ----------
    ids
        The ``source_id`` values of a catalogue, or of one chunk of it.
    seen
        Ids of earlier chunks; the new ones are added.

    Returns
    -------
    numpy.ndarray of bool
        True for the second and later occurrence of an id.
    """
    ids = np.asarray(ids)
    codes = pd.Series(ids)
    repeat = codes.duplicated(keep="first").to_numpy().copy()
    if seen is not None:
        if seen:
            repeat |= codes.isin(seen).to_numpy()
        seen.update(codes[~repeat].tolist())
    return repeat


def flag_duplicate_ids(out: pd.DataFrame, seen: set[Any] | None = None) -> int:
    """Unscore the rows of a per-star table whose ``source_id`` repeats an earlier row; return how many.

    The first occurrence is scored; each repeat gets label -1, NaN probabilities and the flag
    :data:`FLAG_DUPLICATE_ID`, so a star is never counted twice and a table joined on
    ``source_id`` later is not silently ambiguous.

    Parameters
    ----------
    out
        A per-star prediction table, changed in place.
    seen
        Ids of earlier chunks of a streamed catalogue (updated).
    """
    if "source_id" not in out.columns:
        return 0
    repeat = duplicate_ids(out["source_id"].to_numpy(), seen)
    if repeat.any():
        columns = [
            c for c in out.columns if c.startswith("prob_") or c in ("member_prob", "entropy", "member_prob_std")
        ]
        out.loc[repeat, columns] = np.nan
        out.loc[repeat, "label"] = -1
        out.loc[repeat, "flag"] = FLAG_DUPLICATE_ID
    return int(repeat.sum())


def feature_range_flags(matrix: np.ndarray, names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """``out_of_range:<feature>`` for computed features (colours, offsets) too large for float32 work."""
    with np.errstate(invalid="ignore"):
        beyond = np.isfinite(matrix) & (np.abs(matrix) > FLOAT32_SAFE)
    return [(f"out_of_range:{name}", beyond[:, j]) for j, name in enumerate(names) if beyond[:, j].any()]


def flag_nonfinite_probabilities(out: pd.DataFrame) -> int:
    """Unscore rows whose probabilities are not finite; return how many there were.

    Parameters
    ----------
    out
        A per-star prediction table (``label``, ``prob_*``, ``member_prob``, ``flag``...),
        changed in place: such rows get label -1, NaN probabilities and the flag
        :data:`FLAG_NONFINITE_PROBABILITY`.

    Returns
    -------
    int
        The number of rows unscored.
    """
    columns = [c for c in out.columns if c.startswith("prob_") or c in ("member_prob", "entropy", "member_prob_std")]
    if not columns:
        return 0
    values = out[columns].to_numpy(dtype=np.float64)
    scored = out["label"].to_numpy() >= 0
    bad = scored & ~np.isfinite(values).all(axis=1)
    if bad.any():
        out.loc[bad, columns] = np.nan
        out.loc[bad, "label"] = -1
        out.loc[bad, "flag"] = FLAG_NONFINITE_PROBABILITY
    return int(bad.sum())


#: Fewest stars with astrometry a cluster + field mixture (model=xd, init=xd) is fitted to.
MIN_MIXTURE_STARS = 20


def check_trainable(n_usable: int, n_train: int, n_clusters: Any, *, mixture: bool = False) -> None:
    """Refuse a catalogue too small to train on, before the first epoch.

    Parameters
    ----------
    n_usable
        Stars that passed every cut.
    n_train
        Of those, stars in the training split.
    n_clusters
        Groups the model looks for (an int, or 'auto'/None when not fixed).
    mixture
        The model fits a cluster + field mixture (model=xd, or a deep model started with init=xd),
        which needs :data:`MIN_MIXTURE_STARS` usable stars.

    Raises
    ------
    CatalogError
        With fewer than 2 training stars (batch normalisation needs 2 per batch), fewer usable
        stars than groups, or fewer than :data:`MIN_MIXTURE_STARS` training stars for a mixture
        (it is fitted to the training split, not to the stars held out for validation).
    """
    if mixture and n_train < MIN_MIXTURE_STARS:
        held_out = n_usable - n_train
        held = f" ({held_out} more held out for validation: data.val_fraction=0 fits every star)" if held_out else ""
        raise CatalogError(
            f"too few stars: {n_train} with astrometry to fit{held}, a cluster + field mixture needs at least "
            f"{MIN_MIXTURE_STARS}: give a larger cone or relax the quality cuts"
        )
    if n_train < 2:
        raise CatalogError(
            f"only {n_train} usable star(s) to train on ({n_usable} after the cuts): training needs at least 2 "
            "(batch normalisation); give a larger catalogue or relax the quality cuts"
        )
    if isinstance(n_clusters, int) and n_usable < n_clusters:
        raise CatalogError(
            f"only {n_usable} usable stars for model.n_clusters={n_clusters} groups: give a larger catalogue "
            "or fewer groups"
        )
