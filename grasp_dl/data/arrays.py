"""Bare feature matrices (stars x features) as tables the rest of grasp-dl reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from grasp_dl.runtime.errors import ConfigError


def is_feature_array(data: Any) -> bool:
    """Whether ``data`` is a bare feature matrix (NumPy array or torch tensor) rather than a catalogue.

    Parameters
    ----------
    data : Any
        What a user passed as data.

    Returns
    -------
    bool
        True for an ndarray or a Tensor.
    """
    return isinstance(data, (np.ndarray, torch.Tensor))


def feature_frame(values: Any, names: Sequence[str]) -> pd.DataFrame:
    """A feature matrix as a float64 DataFrame with the given column names (its shape checked).

    Parameters
    ----------
    values : array-like or Tensor
        Stars x features.
    names : sequence of str
        One column name per feature.

    Returns
    -------
    DataFrame
        The values under ``names``.

    Raises
    ------
    ConfigError
        When ``values`` is not 2-D or its width differs from ``len(names)``.
    """
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 2:
        raise ConfigError(f"a feature array must be 2-D (stars x features), got shape {array.shape}")
    if array.shape[1] != len(names):
        raise ConfigError(
            f"the feature array has {array.shape[1]} columns but the model uses {len(names)} features "
            f"({', '.join(names)}): give them in that order"
        )
    return pd.DataFrame(array.astype(np.float64), columns=list(names))
