"""Put results on the rows of the catalogue a feature matrix came from.

:func:`grasp_dl.prepare_stellar_data` leaves out rows it cannot use, so its matrix has fewer rows
than the catalogue. The matrix is a :class:`PreparedFeatures`, a numpy array that remembers its
catalogue rows (:class:`CatalogRows`): results computed on it go back onto the catalogue's rows
(-1 / NaN where a row was left out), and labels given per catalogue row come down to the
matrix's rows. A plain array carries no rows: results on it stay one per array row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grasp_dl.data.feature_matrix import CatalogRows
from grasp_dl.data.prepare import PreparedCatalog
from grasp_dl.runtime.errors import ConfigError

#: Where to look when the per-row results must land on a catalogue's rows.
ADD_MEMBERSHIP_HINT = (
    "for columns aligned with the catalogue use grasp_dl.add_membership_columns(sample_or_table, model) "
    "or pass the catalogue itself (its .data) to predict_clusters"
)


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
