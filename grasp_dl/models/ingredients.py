"""What DEC and VaDE share for hard fields: the error-deconvolved start, noise augmentation,
the radius-dependent mixture weight, and the position model that scores stars without astrometry.

* ``init='xd'``: the groups start from :class:`SpatialDeconvolvedMixture` (cluster = Plummer
  profile x narrow proper-motion Gaussian, field = flat x broad Gaussians, every Gaussian
  convolved with each star's error covariance), fitted by EM on the training catalogue.
  Group 0 is then the cluster. ``xd`` holds its switches (spatial, use_errors, photometry).
* ``noise_augmentation``: each training batch is re-observed with every star's own errors,
  ``x + L_i eps`` (L_i the Cholesky factor of its error covariance in standardised units), so
  the network cannot rely on differences smaller than a star's errors.
* ``spatial_prior``: :class:`RadialPrior` adds log Sigma_c(r) to the group logits.
* The position model (``position_model`` buffer: cluster share, Plummer log-scale, cone radius),
  fitted to the final member probabilities, scores stars that have no astrometry.
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

from grasp_dl.models.clustering import initial_responsibilities
from grasp_dl.models.deconvolution import SpatialDeconvolvedMixture, plummer_log_density
from grasp_dl.models.spatial import radius_from_features

log = logging.getLogger(__name__)

#: Switches of the error-deconvolved mixture (model.xd) and their defaults (read-only).
XD_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"spatial": True, "use_errors": True, "photometry": False, "max_iter": 300}
)


def xd_options(xd: Mapping[str, Any] | None) -> dict[str, Any]:
    """model.xd merged over the defaults; unknown keys are an error naming the allowed ones."""
    given = dict(xd or {})
    unknown = set(given) - set(XD_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown model.xd option(s) {sorted(unknown)}: choose from {', '.join(XD_DEFAULTS)}")
    return {**XD_DEFAULTS, **given}


def fit_plummer(radius: np.ndarray, weights: np.ndarray, radius_max: float) -> float:
    """Weighted maximum-likelihood Plummer log-scale (log degrees) of stars at ``radius``."""
    r = np.minimum(radius, radius_max)
    result = minimize_scalar(
        lambda s: -(weights * plummer_log_density(r, s, radius_max)).sum(),
        bounds=(math.log(radius_max * 1e-3), math.log(radius_max * 10)),
        method="bounded",
    )
    return float(result.x)


class HardFieldIngredients:
    """Mixin for DECModule and VaDEModule (needs hparams init, n_init, seed, n_clusters, xd,
    noise_augmentation, spatial_prior; a ``radial_prior`` and a ``position_model`` buffer)."""

    _noise: Tensor | None = None

    # ------------------------------------------------------------------ initialisation
    def initial_memberships(self, z: np.ndarray, catalog: Tensor, latent_covariance: str = "full") -> np.ndarray:
        """Soft memberships of the training stars to start the groups from (init: kmeans, gmm,
        gmm_features or xd); with xd, group 0 is the cluster and the fit is stored in hparams."""
        hp = self.hparams
        if hp.init == "xd":
            options = xd_options(hp.xd)
            stars = self.trainer.datamodule.star_data("train", options["photometry"], what="model.init=xd")
            mixture = SpatialDeconvolvedMixture(hp.n_clusters, seed=hp.seed, **options).fit(stars)
            self.xd_mixture_ = mixture
            self.hparams["xd_fit"] = mixture.state_dict()
            log.info("xd initial mixture: %s", mixture.state_dict())
            return mixture.predict_proba(stars)
        return initial_responsibilities(
            z, hp.n_clusters, hp.init, hp.n_init, hp.seed, features=catalog.cpu().double().numpy(),
            latent_covariance=latent_covariance,
        )

    def setup_ingredients(self, catalog: Tensor, resp: np.ndarray) -> None:
        """After the groups are initialised: configure the radial prior and the noise factors."""
        hp = self.hparams
        if hp.spatial_prior:
            if hp.init == "xd":
                group, log_scale = 0, self.xd_mixture_.log_scale_
            else:
                from grasp_dl.inference.membership import choose_cluster_group

                group = choose_cluster_group(resp, *self.physical_features(catalog))
                radius = self.trainer.datamodule.radius("train")
                log_scale = fit_plummer(radius, resp[:, group], float(radius.max()))
            self.radial_prior.configure(hp.preprocessing, group, 1.0, log_scale)
            r = self.radial_prior.radius(catalog.to(self.radial_prior.offset.device))
            self.radial_prior.radius_max.fill_(float(r.max()))

    def on_train_start(self) -> None:
        if self.hparams.noise_augmentation:
            self._noise = self.trainer.datamodule.noise_factors("train").to(self.device)

    def augment(self, x: Tensor, index: Tensor) -> Tensor:
        """``x`` re-observed with each star's own errors when noise augmentation is on (training only)."""
        if not self.hparams.noise_augmentation or self._noise is None:
            return x
        factors = self._noise[index.to(self._noise.device)]
        eps = torch.randn(len(x), factors.shape[-1], 1, device=x.device)
        return x + (factors @ eps)[..., 0].to(x.dtype)

    # ------------------------------------------------------------------ stars without astrometry
    @torch.no_grad()
    def fit_position_model(self, x: Tensor, q: Tensor) -> None:
        """Cluster share and Plummer scale of the member probabilities ``q`` of stars ``x``.

        Called whenever the cluster's group is decided, so every checkpoint carries a current fit;
        skipped when the features hold no position.
        """
        radius = radius_from_features(x.detach().cpu().numpy(), self.hparams.preprocessing)
        if radius is None or len(radius) == 0:
            return
        member = q[:, self.member_group].detach().cpu().double().numpy()
        radius_max = float(radius.max())
        share = float(np.clip(member.mean(), 1e-6, 1 - 1e-6))
        self.position_model.copy_(
            torch.tensor([share, fit_plummer(radius, member, radius_max), radius_max], dtype=torch.float32)
        )

    def position_member_prob(self, radius: np.ndarray) -> np.ndarray:
        """Member probability from the radius alone: share x Plummer(r) against share x flat field."""
        share, log_scale, radius_max = (float(v) for v in self.position_model)
        if not np.isfinite(share):
            return np.full(len(radius), np.nan)
        r = np.minimum(np.asarray(radius, float), radius_max)
        cluster = math.log(share) + plummer_log_density(r, log_scale, radius_max)
        field = math.log(1.0 - share) - math.log(math.pi * radius_max**2)
        return 1.0 / (1.0 + np.exp(field - cluster))
