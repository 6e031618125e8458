"""A radius-dependent group weight for the deep models: the cluster concentrated, the field flat.

:class:`RadialPrior` adds log Sigma_c(r) to every star's group logits: a Plummer profile of learnt
scale, normalised over the cone, for the cluster's group and the flat 1 / (pi R^2) for the
others, so the cluster's weight is high in the core and low in the outskirts. The radius is read
back from the standardised features, so prediction needs nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grasp_dl.mixtures.profile import plummer_log_density_t
from grasp_dl.runtime.errors import ConfigError

#: How the radius is read from the features: from the offsets, the radius, or its log10.
RADIUS_SOURCES = {"xi_eta": 0, "radius": 1, "log_radius": 2}


def radius_reader(preprocessing: Mapping[str, Any] | None) -> tuple[str, list[int], list[float], list[float]] | None:
    """How to read the radius back from standardised features: (source, columns, offsets, scales).

    Parameters
    ----------
    preprocessing : mapping or None
        A module's ``preprocessing`` hyper-parameter (feature names and scaler state).

    Returns
    -------
    tuple or None
        None when the features hold no position (neither xi/eta, radius nor log_radius).
    """
    if not preprocessing:
        return None
    names = list(preprocessing["feature_names"])
    center, scale = preprocessing["scaler"]["center"], preprocessing["scaler"]["scale"]
    if "xi" in names and "eta" in names:
        cols, source = [names.index("xi"), names.index("eta")], "xi_eta"
    elif "radius" in names:
        cols, source = [names.index("radius")] * 2, "radius"
    elif "log_radius" in names:
        cols, source = [names.index("log_radius")] * 2, "log_radius"
    else:
        return None
    return source, cols, [float(center[c]) for c in cols], [float(scale[c]) for c in cols]


def radius_from_features(x: np.ndarray, preprocessing: Mapping[str, Any] | None) -> np.ndarray | None:
    """Radius in degrees of standardised feature rows.

    Parameters
    ----------
    x : numpy.ndarray
        Standardised features, shape (n, input_dim).
    preprocessing : mapping or None
        Their feature names and scaler state.

    Returns
    -------
    numpy.ndarray or None
        Shape (n,); None when the features hold no position.
    """
    reader = radius_reader(preprocessing)
    if reader is None:
        return None
    source, cols, offset, scale = reader
    values = np.asarray(x, dtype=float)[:, cols] * np.asarray(scale) + np.asarray(offset)
    if source == "xi_eta":
        return np.hypot(values[:, 0], values[:, 1])
    if source == "radius":
        return np.maximum(values[:, 0], 0.0)
    return 10.0 ** values[:, 0]


class RadialPrior(nn.Module):
    """Per-star log spatial density of each group; inactive (all zeros) until :meth:`configure`.

    Parameters
    ----------
    n_clusters : int
        Number of groups.
    """

    def __init__(self, n_clusters: int) -> None:
        super().__init__()
        self.n_clusters = int(n_clusters)
        self.log_scale = nn.Parameter(torch.tensor(-3.0))
        self.register_buffer("group", torch.tensor(-1))
        self.register_buffer("radius_max", torch.tensor(1.0))
        self.register_buffer("source", torch.tensor(-1))
        self.register_buffer("columns", torch.tensor([0, 0]))
        self.register_buffer("offset", torch.zeros(2))
        self.register_buffer("scale", torch.ones(2))
        # Host copies of ``group`` and ``source``: reading the buffers in a training step would
        # synchronise with the device and would stall an asynchronous device.
        self._group, self._source = -1, -1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Load the buffers, then refresh their host copies."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._group, self._source = int(self.group), int(self.source)

    @property
    def active(self) -> bool:
        """Whether the prior is configured (a cluster group and a radius source)."""
        return self._group >= 0 and self._source >= 0

    def configure(self, preprocessing: Mapping[str, Any], group: int, radius_max: float, log_scale: float) -> None:
        """Read the radius columns and their scaling from ``preprocessing``; start the profile.

        Parameters
        ----------
        preprocessing : mapping
            Feature names and scaler state.
        group : int
            The cluster's group (the Plummer profile's).
        radius_max : float
            Cone radius (degrees).
        log_scale : float
            Starting log Plummer scale.

        Raises
        ------
        ConfigError
            When the features hold no position.
        """
        reader = radius_reader(preprocessing)
        if reader is None:
            raise ConfigError(
                "model.spatial_prior needs the position in the features: add ra and dec (or radius / "
                "log_radius) to data.features, or set model.spatial_prior=false"
            )
        source, cols, offset, scale = reader
        self.source.fill_(RADIUS_SOURCES[source])
        self.columns.copy_(torch.tensor(cols))
        self.offset.copy_(torch.tensor(offset))
        self.scale.copy_(torch.tensor(scale))
        self.group.fill_(int(group))
        self._group, self._source = int(group), RADIUS_SOURCES[source]
        self.radius_max.fill_(float(radius_max))
        self.log_scale.data.fill_(float(log_scale))

    def radius(self, x: Tensor) -> Tensor:
        """Radius in degrees (n,) of standardised feature rows ``x`` (n, input_dim)."""
        values = x[:, self.columns].float() * self.scale + self.offset
        source = self._source
        if source == RADIUS_SOURCES["xi_eta"]:
            return torch.hypot(values[:, 0], values[:, 1])
        if source == RADIUS_SOURCES["radius"]:
            return values[:, 0].clamp_min(0.0)
        return torch.pow(10.0, values[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        """log Sigma_c(r) for every star of standardised features ``x``, shape (n, k); zeros when inactive."""
        out = torch.zeros(len(x), self.n_clusters, device=x.device)
        if not self.active:
            return out
        r = self.radius(x)
        flat = -math.log(math.pi) - 2.0 * torch.log(self.radius_max)
        out = out + flat
        cluster = plummer_log_density_t(r, self.log_scale, self.radius_max)
        group = self._group
        return torch.cat([out[:, :group], cluster[:, None], out[:, group + 1 :]], dim=1)
