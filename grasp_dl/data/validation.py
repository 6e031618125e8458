"""Values that cannot be trusted are flagged, never silently turned into numbers.

- :func:`range_flags` flags, before any float32 cast, input values that are infinite or outside
  physical ranges (|pm| > 10^4 mas/yr, |parallax| > 10^3 mas, |dec| > 90 deg, |ra| > 360 deg) or too large for
  float32 at all: ``nonfinite:<column>`` and ``out_of_range:<column>``.
- :func:`flag_nonfinite_probabilities` is the last check of scoring: a row either has finite
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
    "FLAG_NONFINITE_PROBABILITY",
    "PHYSICAL_LIMITS",
    "check_trainable",
    "flag_nonfinite_probabilities",
    "range_flags",
]

#: Largest plausible absolute value of a Gaia column (mas/yr, mas, degrees).
PHYSICAL_LIMITS: dict[str, float] = {"pmra": 1e4, "pmdec": 1e4, "parallax": 1e3, "dec": 90.0, "ra": 360.0}
#: Any other feature beyond this is refused: float32 (the training precision) overflows near 3.4e38,
#: and standardising or squaring values far below that already loses every digit.
FLOAT32_SAFE = 1e30
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
    return flags


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


def check_trainable(n_usable: int, n_train: int, n_clusters: Any) -> None:
    """Refuse a catalogue too small to train on, before the first epoch.

    Parameters
    ----------
    n_usable
        Stars that passed every cut.
    n_train
        Of those, stars in the training split.
    n_clusters
        Groups the model looks for (an int, or 'auto'/None when not fixed).

    Raises
    ------
    CatalogError
        With fewer than 2 training stars (batch normalisation needs 2 per batch) or fewer usable
        stars than groups.
    """
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
