"""Put results on the rows of the catalogue a feature matrix came from.

:func:`grasp_dl.prepare_stellar_data` leaves out rows it cannot use (missing astrometry, failed
cuts, outliers), so its feature matrix has fewer rows than the catalogue. The matrix it returns
is a :class:`PreparedFeatures`: a numpy array that remembers which catalogue rows it holds
(:class:`CatalogRows`). Results computed on it can then be put back on the catalogue's rows
(-1 / NaN where a row was left out), and labels given per catalogue row can be brought down to
the matrix's rows. A plain array (``np.asarray(X)``, or one from another library) carries no
rows: results on it stay one per array row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from grasp_dl.errors import ConfigError

#: Where to look when the per-row results must land on a catalogue's rows.
ADD_MEMBERSHIP_HINT = (
    "for columns aligned with the catalogue use grasp_dl.add_membership_columns(sample_or_table, model) "
    "or pass the catalogue itself (its .data) to predict_clusters"
)


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


def catalog_rows_of(data: Any) -> CatalogRows | None:
    """The catalogue rows a prepared feature matrix (or the object prepare_stellar_data returned) holds.

    Parameters
    ----------
    data : Any
        What :func:`grasp_dl.prepare_stellar_data` returned, its feature matrix, or anything else.

    Returns
    -------
    CatalogRows or None
        None for a catalogue, a plain array, or anything that does not carry its rows.
    """
    return getattr(_features_of(data), "catalog_rows", None)


def _features_of(data: Any) -> Any:
    """The feature matrix of what prepare_stellar_data returned; anything else unchanged."""
    from grasp_dl.data.prepare import PreparedCatalog

    return data.features if isinstance(data, PreparedCatalog) else data


def split_prepared(data: Any, what: str = "predict_clusters") -> tuple[Any, CatalogRows | None]:
    """(what to compute on, the catalogue rows to put the results on) for a method's ``data``.

    Parameters
    ----------
    data : Any
        A catalogue, a plain feature array, or what :func:`grasp_dl.prepare_stellar_data` returned
        (the whole object or its feature matrix).
    what : str
        The caller's name, for the error message.

    Returns
    -------
    tuple
        ``(data, None)`` when ``data`` carries no catalogue rows; else ``(plain feature array, rows)``.

    Raises
    ------
    ConfigError
        If ``data`` came from a prepared matrix but no longer has one row per prepared row (a
        slice of it, say): its results could not be put back on the catalogue's rows.
    """
    features = _features_of(data)
    rows = getattr(features, "catalog_rows", None)
    if rows is None:
        return data, None
    if np.ndim(features) != 2 or len(features) != rows.n_prepared:
        raise ConfigError(
            f"{what} got {len(features)} rows cut from a feature matrix of {rows.n_prepared} rows "
            f"(prepared from a catalogue of {rows.n_rows}): its results would not line up with the catalogue; "
            f"{ADD_MEMBERSHIP_HINT}, or pass np.asarray(features) for one result per array row"
        )
    return np.asarray(features), rows


def on_prepared_rows(data: Any, *columns: Any) -> tuple[Any, ...]:
    """Bring per-star ``columns`` given per catalogue row down to the rows of a prepared ``data`` matrix.

    When ``data`` is a prepared feature matrix (:class:`PreparedFeatures`, one row per kept
    catalogue row), each column with one entry per *catalogue* row is reduced to the kept rows,
    so that labels from a row-aligned prediction meet the matrix they were computed from.
    Anything else passes unchanged (None included).

    Parameters
    ----------
    data : Any
        The feature matrix the columns go with.
    *columns : array-like or None
        Per-star values (labels, probabilities, flags).

    Returns
    -------
    tuple
        The columns, reduced where they were given per catalogue row.
    """
    features = _features_of(data)
    rows = getattr(features, "catalog_rows", None)
    if rows is None or np.ndim(features) != 2 or len(features) != rows.n_prepared:
        return columns
    return tuple(_reduce(column, rows) for column in columns)


def _reduce(column: Any, rows: CatalogRows) -> Any:
    if column is None or rows.n_rows == rows.n_prepared or not hasattr(column, "__len__"):
        return column
    if len(column) != rows.n_rows:
        return column
    if hasattr(column, "detach"):  # a torch tensor, on any device
        column = column.detach().cpu().numpy()
    return np.asarray(column)[rows.mask]
