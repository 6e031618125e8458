"""A feature matrix that remembers which catalogue rows it holds (what prepare_stellar_data returns).

:class:`CatalogRows` is the mask of the catalogue's rows; :class:`PreparedFeatures` a numpy array
carrying it, so results computed on it can go back on the catalogue's rows (:mod:`grasp_dl.data.rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from grasp_dl.runtime.errors import ConfigError


@dataclass(frozen=True, eq=False)
class CatalogRows:
    """Which rows of a catalogue a prepared feature matrix holds (``mask`` is True for those rows)."""

    mask: np.ndarray

    @property
    def n_rows(self) -> int:
        """Rows in the catalogue."""
        return len(self.mask)

    @property
    def n_prepared(self) -> int:
        """Rows in the feature matrix (the True entries of ``mask``)."""
        return int(self.mask.sum())

    def expand(self, values: Any, fill: Any) -> np.ndarray:
        """``values`` given per prepared row, put on the catalogue's rows with ``fill`` elsewhere.

        Parameters
        ----------
        values : array-like
            One value (or row of values) per prepared row.
        fill : scalar
            The value of the rows that were left out (-1 for labels, NaN for probabilities).

        Returns
        -------
        numpy.ndarray
            ``n_rows`` values (or rows), in the catalogue's order.

        Raises
        ------
        ConfigError
            If ``values`` does not have one entry per prepared row.
        """
        values = np.asarray(values)
        if len(values) != self.n_prepared:
            raise ConfigError(
                f"{len(values)} values for {self.n_prepared} prepared rows: give one per row of the feature matrix"
            )
        nan_fill = isinstance(fill, float) and np.isnan(fill)
        dtype = np.result_type(values.dtype, np.float64) if nan_fill else values.dtype
        out = np.full((self.n_rows, *values.shape[1:]), fill, dtype=dtype)
        out[self.mask] = values
        return out


class PreparedFeatures(np.ndarray):
    """A feature matrix (stars x features) that knows the catalogue rows it came from (``catalog_rows``).

    Behaves as a numpy array in every respect; numpy operations on it (views, slices, arithmetic)
    keep ``catalog_rows``, ``np.asarray(X)`` drops it. Made by :func:`grasp_dl.prepare_stellar_data`.
    """

    catalog_rows: CatalogRows | None

    def __new__(cls, values: np.ndarray, mask: np.ndarray) -> PreparedFeatures:
        out = np.asarray(values).view(cls)
        out.catalog_rows = CatalogRows(np.asarray(mask, dtype=bool))
        return out

    def __array_finalize__(self, obj: Any) -> None:
        self.catalog_rows = getattr(obj, "catalog_rows", None)

    def __reduce__(self) -> tuple[Any, ...]:
        constructor, args, state = super().__reduce__()
        return constructor, args, (state, self.catalog_rows)

    def __setstate__(self, state: Any) -> None:
        base, rows = state
        super().__setstate__(base)
        self.catalog_rows = rows
