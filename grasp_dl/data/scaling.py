"""Feature standardisation fitted once on the training catalogue and stored in the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from grasp_dl.runtime.errors import ConfigError

#: Scale factor that turns a median absolute deviation into a Gaussian sigma.
MAD_TO_SIGMA = 1.482602218505602
SCALING_METHODS = ("robust", "standard")


@dataclass
class FeatureScaler:
    """Per-feature (x - center) / scale, robust (median, scaled MAD) or standard (mean, std).

    The fitted state is plain lists so that it can sit in a checkpoint's hyper-parameters
    and load under ``torch.load(weights_only=True)``.

    Parameters
    ----------
    method : {"robust", "standard"}, default "robust"
        Robust: median and MAD scaled to a Gaussian sigma (outliers barely move it);
        standard: mean and standard deviation.
    center_ : list of float, optional
        Fitted per-feature centres (set by :meth:`fit` or :meth:`from_state`).
    scale_ : list of float, optional
        Fitted per-feature scales.

    Raises
    ------
    ConfigError
        If ``method`` is not one of :data:`SCALING_METHODS`.
    """

    method: str = "robust"
    center_: list[float] | None = None
    scale_: list[float] | None = None

    def __post_init__(self) -> None:
        if self.method not in SCALING_METHODS:
            raise ConfigError(f"unknown scaling method {self.method!r}: choose one of {', '.join(SCALING_METHODS)}")

    def fit(self, features: np.ndarray) -> FeatureScaler:
        """Fit centre and scale per column; a constant column gets scale 1 so it stays finite.

        Parameters
        ----------
        features : numpy.ndarray
            Stars x features, physical units.

        Returns
        -------
        FeatureScaler
            This scaler, fitted.

        Raises
        ------
        ConfigError
            If ``features`` is not a non-empty 2-D matrix.
        """
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) == 0:
            raise ConfigError("the scaler needs a non-empty 2-D feature matrix (stars x features)")
        if self.method == "robust":
            center = np.median(features, axis=0)
            scale = MAD_TO_SIGMA * np.median(np.abs(features - center), axis=0)
            # A column with more than half of its values equal has MAD 0: fall back to std.
            std = features.std(axis=0)
            scale = np.where(scale > 0, scale, std)
        else:
            center = features.mean(axis=0)
            scale = features.std(axis=0)
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        self.center_ = center.tolist()
        self.scale_ = scale.tolist()
        return self

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_state`) has set the centre and scale.

        Returns
        -------
        bool
        """
        return self.center_ is not None and self.scale_ is not None

    def _check(self, features: np.ndarray) -> None:
        if not self.is_fitted:
            raise ConfigError("the feature scaler is not fitted: call fit() first")
        if features.shape[-1] != len(self.center_):
            raise ConfigError(
                f"the scaler was fitted on {len(self.center_)} features but got "
                f"{features.shape[-1]}: use the same feature list as in training"
            )

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Standardise features.

        Parameters
        ----------
        features : numpy.ndarray
            (..., n_features) in physical units.

        Returns
        -------
        numpy.ndarray
            The standardised features as float32, the dtype the networks use.

        Raises
        ------
        ConfigError
            If the scaler is not fitted or the number of features differs from the fit.
        """
        features = np.asarray(features, dtype=np.float64)
        self._check(features)
        out = (features - np.asarray(self.center_)) / np.asarray(self.scale_)
        return out.astype(np.float32)

    def inverse_transform(self, features: np.ndarray) -> np.ndarray:
        """Map standardised features back to physical units.

        Parameters
        ----------
        features : numpy.ndarray
            (..., n_features) standardised features.

        Returns
        -------
        numpy.ndarray
            Physical values as float64.

        Raises
        ------
        ConfigError
            If the scaler is not fitted or the number of features differs from the fit.
        """
        features = np.asarray(features, dtype=np.float64)
        self._check(features)
        return features * np.asarray(self.scale_) + np.asarray(self.center_)

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state for checkpoints and hyper-parameters.

        Returns
        -------
        dict
            ``{"method": str, "center": list or None, "scale": list or None}``.
        """
        return {"method": self.method, "center": self.center_, "scale": self.scale_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureScaler:
        """Rebuild a fitted scaler from :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.

        Returns
        -------
        FeatureScaler
            A fitted scaler equal to the one saved.

        Raises
        ------
        ConfigError
            If the saved method is unknown.
        """
        return cls(method=state["method"], center_=list(state["center"]), scale_=list(state["scale"]))
