"""What DEC and VaDE share for hard fields: the ``init=xd`` start, noise augmentation, the radial prior.

``init='xd'`` starts the groups from model=xd's mixture (:func:`xd_start_mixture`, with the
``model.xd`` switches as its options; group 0 the cluster); ``noise_augmentation`` re-observes
each batch with every star's own errors, so the network cannot rely on differences smaller than
them; ``spatial_prior`` adds the cluster's profile to the group logits
(:class:`~grasp_dl.models.spatial.RadialPrior`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog
from grasp_dl.membership.rules import choose_cluster_group
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture
from grasp_dl.mixtures.profile import plummer_log_density
from grasp_dl.models.clustering import initial_responsibilities
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: Switches of the error-deconvolved mixture (model.xd) and their defaults (read-only).
XD_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"spatial": True, "use_errors": True, "photometry": False, "max_iter": 300}
)


def xd_options(xd: Mapping[str, Any] | None) -> dict[str, Any]:
    """model.xd merged over the defaults.

    Parameters
    ----------
    xd : mapping or None
        The user's switches.

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        For an unknown key (the allowed ones are named).
    """
    given = dict(xd or {})
    unknown = set(given) - set(XD_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown model.xd option(s) {sorted(unknown)}: choose from {', '.join(XD_DEFAULTS)}")
    return {**XD_DEFAULTS, **given}


def fit_plummer(radius: np.ndarray, weights: np.ndarray, radius_max: float) -> float:
    """Weighted maximum-likelihood Plummer log-scale of stars at ``radius``.

    Parameters
    ----------
    radius : numpy.ndarray
        Radii in degrees.
    weights : numpy.ndarray
        Each star's weight (its cluster membership).
    radius_max : float
        Cone radius (degrees).

    Returns
    -------
    float
        log of the Plummer scale (log degrees).
    """
    r = np.minimum(radius, radius_max)
    result = minimize_scalar(
        lambda s: -(weights * plummer_log_density(r, s, radius_max)).sum(),
        bounds=(math.log(radius_max * 1e-3), math.log(radius_max * 10)),
        method="bounded",
    )
    return float(result.x)


def xd_start_mixture(n_clusters: int, seed: int, options: Mapping[str, Any]) -> ClusterFieldMixture:
    """The mixture ``init='xd'`` starts from: group 0 the cluster, ``n_clusters - 1`` field groups.

    model=xd's :class:`~grasp_dl.mixtures.cluster_field.ClusterFieldMixture`, with the ablation
    switches of ``model.xd`` (spatial, use_errors, photometry) as its options.

    Parameters
    ----------
    n_clusters : int
        Groups (cluster + field).
    seed : int
        Seed of the fit.
    options : mapping
        ``model.xd`` merged over :data:`XD_DEFAULTS`.

    Returns
    -------
    ClusterFieldMixture
        Unfitted.
    """
    return ClusterFieldMixture(
        n_field=int(n_clusters) - 1,
        max_iter=int(options["max_iter"]),
        seed=int(seed),
        spatial=bool(options["spatial"]),
        use_errors=bool(options["use_errors"]),
        photometry=bool(options["photometry"]),
        cluster_outliers=False,  # n_clusters groups exactly: the deep model's groups are the mixture's
    )


class HardFieldIngredients:
    """Mixin of :class:`~grasp_dl.models.deep.DeepClusteringModule` (needs hparams init, n_init, seed,
    n_clusters, xd, noise_augmentation, spatial_prior, preprocessing; a ``radial_prior`` and
    ``physical_features``). It defines no Lightning hook: the base takes the training catalogue
    (:meth:`ingredient_needs` says what it must hold) and sets ``_noise``."""

    _noise: Tensor | None = None

    def ingredient_needs(self, initialised: bool) -> CatalogNeeds:
        """What the hard-field settings need of the training stars.

        Parameters
        ----------
        initialised : bool
            Whether the groups have started already (a resumed fit needs no initial mixture).

        Returns
        -------
        CatalogNeeds
        """
        hp = self.hparams
        start = not initialised
        xd = start and hp.init == "xd"
        return CatalogNeeds(
            stars="model.init=xd" if xd else None,
            photometry=bool(xd and xd_options(hp.xd)["photometry"]),
            radius="model.spatial_prior" if start and hp.spatial_prior and hp.init != "xd" else None,
            noise_factors="model.noise_augmentation" if hp.noise_augmentation else None,
        )

    # ------------------------------------------------------------------ initialisation
    def initial_memberships(
        self, z: np.ndarray, catalog: TrainingCatalog, latent_covariance: str = "full"
    ) -> np.ndarray:
        """Soft memberships of the training stars to start the groups from.

        Parameters
        ----------
        z : numpy.ndarray
            Latent points of the training stars.
        catalog : TrainingCatalog
            The training stars (their star data with ``init='xd'``).
        latent_covariance : str
            Covariance type of a mixture fitted in latent space (``init='gmm'``).

        Returns
        -------
        numpy.ndarray
            Shape (n, n_clusters); with ``init='xd'`` group 0 is the cluster and the fit is kept in
            ``fit_results['xd_fit']``.
        """
        hp = self.hparams
        if hp.init == "xd":
            options = xd_options(hp.xd)
            stars = catalog.stars
            mixture = xd_start_mixture(hp.n_clusters, hp.seed, options).fit(stars)
            self.xd_mixture_ = mixture
            self.fit_results["xd_fit"] = mixture.state_dict()
            logged = {key: value for key, value in mixture.state_dict().items() if key != "cmd_histogram"}
            log.info("xd initial mixture: %s", logged)
            return mixture.predict_proba(stars)
        return initial_responsibilities(
            z,
            hp.n_clusters,
            hp.init,
            hp.n_init,
            hp.seed,
            features=catalog.features.cpu().double().numpy(),
            latent_covariance=latent_covariance,
        )

    def setup_ingredients(self, catalog: TrainingCatalog, resp: np.ndarray) -> None:
        """After the groups are initialised: configure the radial prior.

        Parameters
        ----------
        catalog : TrainingCatalog
            The training stars (their radius unless ``init='xd'``).
        resp : numpy.ndarray
            The initial memberships.
        """
        hp = self.hparams
        if hp.spatial_prior:
            features = catalog.features
            if hp.init == "xd":
                group, log_scale = 0, self.xd_mixture_.log_scale_
            else:
                group = choose_cluster_group(resp, *self.physical_features(features))
                radius = catalog.radius
                log_scale = fit_plummer(radius, resp[:, group], float(radius.max()))
            self.radial_prior.configure(hp.preprocessing, group, 1.0, log_scale)
            r = self.radial_prior.radius(features.to(self.radial_prior.offset.device))
            self.radial_prior.radius_max.fill_(float(r.max()))

    def augment(self, x: Tensor, index: Tensor) -> Tensor:
        """``x`` re-observed with each star's own errors when noise augmentation is on (training only).

        Parameters
        ----------
        x : Tensor
            A batch of standardised features.
        index : Tensor
            Their rows in the training catalogue.

        Returns
        -------
        Tensor
        """
        if not self.hparams.noise_augmentation or self._noise is None:
            return x
        factors = self._noise[index.to(self._noise.device)]
        eps = torch.randn(len(x), factors.shape[-1], 1, device=x.device)
        return x + (factors @ eps)[..., 0].to(x.dtype)
