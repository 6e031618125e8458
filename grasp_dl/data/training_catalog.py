"""What a clustering phase needs of its training stars, and the one way it asks for them.

A clustering module gets its training tensors through
:meth:`~grasp_dl.models.base.ClusteringModule.attach_training_catalog` (any source: a notebook,
a plain ``DataLoader``), or, when none is attached, from the trainer's data module through the
:class:`TrainingCatalogSource` protocol, which :class:`~grasp_dl.data.datamodule.StellarCatalogDataModule`
implements. The module says what it needs in a :class:`CatalogNeeds`; only that is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from grasp_dl.data.astrometry import StarData
from grasp_dl.runtime.errors import ConfigError


@dataclass(frozen=True)
class CatalogNeeds:
    """Which per-star quantities beyond the features a module needs, each named by the setting that asks.

    Parameters
    ----------
    stars : str or None
        The setting that needs each star's astrometry and error covariance (:class:`StarData`),
        e.g. ``"model.init=xd"``; None when not needed. Error messages about missing columns name it.
    photometry : bool
        Whether the :class:`StarData` must carry magnitude and colour.
    radius : str or None
        The setting that needs each star's distance from the centre in degrees.
    noise_factors : str or None
        The setting that needs each star's map from unit normal draws to noise in the
        standardised features (noise augmentation).
    no_astrometry : bool
        Whether the module also fits the stars left out for lacking astrometry (Gaia's 2-parameter
        sources: position and photometry only), as :class:`StarData` beside the training rows.
    """

    stars: str | None = None
    photometry: bool = False
    radius: str | None = None
    noise_factors: str | None = None
    no_astrometry: bool = False


@dataclass
class TrainingCatalog:
    """The training stars of a clustering phase, row ``i`` of every field the same star.

    The second item of every training batch indexes these rows.

    Parameters
    ----------
    features : Tensor
        Standardised features, shape (n, input_dim).
    stars : StarData or None
        Astrometry, error covariances, radius (and photometry) per star, for error-aware settings.
    radius : numpy.ndarray or None
        Distance from the cluster centre in degrees, shape (n,).
    noise_factors : Tensor or None
        Per-star maps from unit normal draws to noise in the standardised features, (n, input_dim, d).
    without_astrometry : StarData or None
        The catalogue's stars without astrometry (2-parameter sources) with their radius, position
        and photometry: not training rows (no features), for a module that fits them too.
    """

    features: Tensor
    stars: StarData | None = None
    radius: np.ndarray | None = None
    noise_factors: Tensor | None = None
    without_astrometry: StarData | None = None

    def __post_init__(self) -> None:
        n = len(self.features)
        for name in ("stars", "radius", "noise_factors"):
            value = getattr(self, name)
            size = None if value is None else len(value.values if isinstance(value, StarData) else value)
            if size is not None and size != n:
                raise ConfigError(
                    f"the training catalogue's {name} has {size} rows, its features {n}: give the same stars"
                )

    def to(self, device: torch.device | str) -> TrainingCatalog:
        """The same catalogue with its tensors on ``device`` (numpy fields stay on the host).

        Parameters
        ----------
        device : torch.device or str
            Where the module trains.

        Returns
        -------
        TrainingCatalog
        """
        noise = None if self.noise_factors is None else self.noise_factors.to(device)
        return replace(self, features=self.features.to(device), noise_factors=noise)

    def check(self, needs: CatalogNeeds) -> None:
        """Raise if a field ``needs`` asks for is missing.

        Parameters
        ----------
        needs : CatalogNeeds
            What the module needs.

        Raises
        ------
        ConfigError
            Naming the setting that needs the missing field and how to give it.
        """
        for name in ("stars", "radius", "noise_factors"):
            what = getattr(needs, name)
            if what is not None and getattr(self, name) is None:
                raise ConfigError(
                    f"{what} needs the training stars' {name}: attach a TrainingCatalog with {name}=... "
                    "or train with a StellarCatalogDataModule"
                )
        if needs.photometry and self.stars is not None and self.stars.cmd is None:
            raise ConfigError("model.xd.photometry needs the training stars' photometry: give StarData with cmd")


@runtime_checkable
class TrainingCatalogSource(Protocol):
    """A data module that can hand a clustering module its training catalogue."""

    def training_catalog(self, needs: CatalogNeeds, device: torch.device | str | None = None) -> TrainingCatalog:
        """The training rows with what ``needs`` asks for, features on ``device``.

        Parameters
        ----------
        needs : CatalogNeeds
            What the module needs beyond the features.
        device : torch.device, str or None
            Where the features go (None: where the source keeps them).

        Returns
        -------
        TrainingCatalog
        """
        ...
