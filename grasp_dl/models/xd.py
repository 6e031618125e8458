"""XDModule (``model=xd``): the error-deconvolved spatial cluster + field mixture as a clustering model.

No network and no autoencoder phase: the whole fit is the EM of
:class:`~grasp_dl.mixtures.cluster_field.ClusterFieldMixture` (Vasiliev & Baumgardt's 2021 model:
a Plummer cluster with an isotropic, radius-dependent proper-motion dispersion, a BIC-chosen
number of flat field Gaussians, every star's Gaia error covariance convolved in and scaled where
the sources are crowded), run once at the start of training on the training stars' astrometry
and errors. Group 0 is the cluster by construction; groups 1.. are the field components.

The fitted mixture is saved in the checkpoint (``fit_results['xd_mixture']``), so
``XDModule.load_from_checkpoint`` and ``grasp-dl predict`` need nothing else. Prediction is
error-aware: :meth:`XDModule.predict_proba_stars` scores :class:`~grasp_dl.data.astrometry.StarData`
(astrometry, error covariances, radius), which the predict path builds from the catalogue's
``*_error`` columns. :meth:`XDModule.predict_proba` on standardised features alone has no errors
to deconvolve and scores the stars as if they were exact (a fallback for feature-only callers).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grasp_dl.data.astrometry import StarData
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog
from grasp_dl.mixtures.cluster_field import FIELD_RANGE, ClusterFieldMixture
from grasp_dl.models.base import ClusteringModule
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: The setting named in error messages about missing error columns.
WHAT = "model=xd"
#: Checkpoint key (inside fit_results) of the fitted mixture.
MIXTURE_KEY = "xd_mixture"


class XDModule(ClusteringModule):
    """Cluster + field membership by the error-deconvolved spatial mixture, fitted by EM at the start of training.

    Parameters
    ----------
    input_dim : int
        Number of standardised features (they must hold ra/dec, pmra and pmdec).
    n_clusters : int or None
        Groups = 1 + field components; None lets the BIC choose 1..4 field components (the
        chosen number is written back into the hyper-parameters, so checkpoints carry it).
    crowding : bool
        Fit the density-dependent scaling of Gaia's errors (crowded cores).
    dispersion_profile : bool
        Let the cluster's proper-motion dispersion fall with radius as a Plummer sphere's.
    n_starts : int
        EM starts; the best likelihood wins.
    max_iter : int
        EM iterations of the final fit.
    eta_max : float or None
        Cap of the crowding inflation of Gaia's errors (VB21 measured 1.1-1.2); None: uncapped.
    scale_prior : bool
        VB21's soft prior against a Plummer scale above 0.75 of the cone.
    null_test : bool
        Judge the cluster against the same model refitted to the stars with shuffled positions
        (the verdict's spatial test, :mod:`grasp_dl.membership.guards`) instead of the members'
        radius ratio.
    **shared : Any
        The options every clustering module shares (:class:`~grasp_dl.models.base.ClusteringModule`).

    Raises
    ------
    ConfigError
        For an option out of range, features without proper motion, or ``model.pretrain``.
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int | None = None,
        crowding: bool = True,
        dispersion_profile: bool = True,
        n_starts: int = 3,
        max_iter: int = 100,
        eta_max: float | None = None,
        scale_prior: bool = False,
        null_test: bool = False,
        **shared: Any,
    ) -> None:
        if n_clusters is not None and (isinstance(n_clusters, str) or int(n_clusters) < 2):
            raise ConfigError(f"model=xd: n_clusters must be null (BIC) or an integer >= 2, got {n_clusters!r}")
        if int(n_starts) < 1 or int(max_iter) < 1:
            raise ConfigError(f"model=xd: n_starts and max_iter must be >= 1, got {n_starts} and {max_iter}")
        shared.setdefault("init", "xd")
        super().__init__(input_dim, 1 + FIELD_RANGE[1] if n_clusters is None else int(n_clusters), **shared)
        prep = self.hparams.preprocessing
        if prep and not {"pmra", "pmdec"} <= set(prep.get("feature_names", [])):
            raise ConfigError("model=xd needs pmra and pmdec among data.features (and ra, dec for the radius)")
        self.save_hyperparameters(
            {
                "n_clusters": None if n_clusters is None else int(n_clusters),
                "crowding": bool(crowding),
                "dispersion_profile": bool(dispersion_profile),
                "n_starts": int(n_starts),
                "max_iter": int(max_iter),
                "eta_max": None if eta_max is None else float(eta_max),
                "scale_prior": bool(scale_prior),
                "null_test": bool(null_test),
            }
        )
        self.mixture: ClusterFieldMixture | None = None
        #: the published cluster (data.cluster=NAME, :class:`grasp_dl.data.clusters.LiteratureCluster`): its
        #: mean starts the cluster component and its dispersion sets the dispersion prior
        self.literature: Any = None

    # ------------------------------------------------------------------ fitting
    def catalog_needs(self) -> CatalogNeeds:
        """Astrometry, error covariances and radius of every training star (named ``model=xd`` in errors).

        Returns
        -------
        CatalogNeeds
        """
        return CatalogNeeds(stars=WHAT)

    def new_mixture(self) -> ClusterFieldMixture:
        """An unfitted mixture with this module's settings.

        Returns
        -------
        ClusterFieldMixture
        """
        hp = self.hparams
        return ClusterFieldMixture(
            n_field=None if hp.n_clusters is None else int(hp.n_clusters) - 1,
            crowding=hp.crowding,
            dispersion_profile=hp.dispersion_profile,
            n_starts=hp.n_starts,
            max_iter=hp.max_iter,
            seed=hp.seed,
            eta_max=hp.get("eta_max"),
            scale_prior=bool(hp.get("scale_prior", False)),
            null_test=bool(hp.get("null_test", False)),
            **named_cluster_options(self.literature),
        )

    def fit_stars(self, stars: StarData) -> ClusterFieldMixture:
        """Fit the mixture to ``stars`` and adopt it (group 0 the cluster).

        Parameters
        ----------
        stars : StarData
            The training stars' astrometry, errors and radii.

        Returns
        -------
        ClusterFieldMixture
            The fitted mixture (also kept as :attr:`mixture` and in ``fit_results``).
        """
        mixture = self.new_mixture().fit(stars)
        self.adopt(mixture)
        self.fit_results["xd_selection"] = [dict(row) for row in mixture.selection_]
        return mixture

    def adopt(self, mixture: ClusterFieldMixture) -> None:
        """Take over a fitted mixture: groups, checkpoint state, the cluster group and the position model."""
        self.mixture = mixture
        self.hparams["n_clusters"] = int(mixture.n_components)
        self.fit_results[MIXTURE_KEY] = mixture.state_dict()
        self.decided_group.fill_(0)
        self.position_model.copy_(
            torch.tensor(
                [float(mixture.weights_[0]), float(mixture.log_scale_), float(mixture.radius_max_)],
                dtype=self.position_model.dtype,
            )
        )

    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """The whole fit: EM on the training stars (called once, at the start of the first fit)."""
        mixture = self.fit_stars(catalog.stars)
        log.debug("xd mixture: %s", mixture.state_dict())  # the one-line description is logged by the fit

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int:
        """Nothing trains by gradient: end the epoch (and training) at once after the EM fit."""
        super().on_train_batch_start(batch, batch_idx)
        self.trainer.should_stop = True
        return -1

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """No gradient step (never reached: :meth:`on_train_batch_start` skips the epoch)."""

    def on_train_epoch_end(self) -> None:
        """Log the fit's mean negative log-likelihood per star (what checkpoints and early stopping watch)."""
        super().on_train_epoch_end()
        mixture = self.fitted_mixture()
        self.log("xd/nll", -mixture.log_likelihood_ / max(getattr(mixture, "n_fit_", 1), 1), on_epoch=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Log the mean entropy of the validation stars' groups (from their features, without errors)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self.log("val/entropy", self.mean_entropy(self.predict_proba(x)), on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ inference
    def fitted_mixture(self) -> ClusterFieldMixture:
        """The fitted mixture (restored from the checkpoint when loaded).

        Returns
        -------
        ClusterFieldMixture

        Raises
        ------
        ConfigError
            Before the module is fitted.
        """
        if self.mixture is None:
            state = self.fit_results.get(MIXTURE_KEY)
            if not state:
                raise ConfigError(
                    "this XDModule is not fitted: train it (grasp-dl train model=xd) or load a checkpoint"
                )
            self.mixture = self.new_mixture().load_state_dict(state)
        return self.mixture

    def predict_proba_stars(self, stars: StarData) -> np.ndarray:
        """Error-aware group probabilities (column 0 the cluster) of stars with astrometry and errors.

        Parameters
        ----------
        stars : StarData
            Astrometry, error covariances and radii (stars without astrometry get the radius alone).

        Returns
        -------
        numpy.ndarray
            Shape (n, n_clusters), rows sum to 1.
        """
        return self.fitted_mixture().predict_proba(stars)

    def stars_from_features(self, x: Tensor) -> StarData:
        """StarData of standardised feature rows, with zero errors (the features carry none).

        Parameters
        ----------
        x : Tensor
            Standardised features.

        Returns
        -------
        StarData
        """
        values, names = self.physical_features(x)
        mixture = self.fitted_mixture()
        d = mixture.cluster_mean_.shape[0]
        columns = ["pmra", "pmdec", "parallax"][:d]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ConfigError(f"model=xd was fitted on {columns} but the features lack {missing}")
        astrometry = values[:, [names.index(c) for c in columns]]
        if "xi" in names and "eta" in names:
            radius = np.hypot(values[:, names.index("xi")], values[:, names.index("eta")])
        else:
            radius = np.full(len(values), mixture.radius_max_ / math.sqrt(2.0))
        return StarData(astrometry, np.zeros((len(values), d, d)), radius)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Group probabilities of standardised features, scored as exact (no errors): a fallback.

        The predict path (:func:`grasp_dl.inference.predict.score_prepared`) uses :meth:`predict_proba_stars`
        with each star's errors instead.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).

        Returns
        -------
        Tensor
            Shape (n, n_clusters), rows sum to 1.
        """
        prob = self.predict_proba_stars(self.stars_from_features(x))
        return torch.as_tensor(prob, dtype=torch.float32, device=x.device)

    def null_options(self) -> dict[str, float]:
        """The verdict's comparison with the no-cluster null (:func:`grasp_dl.membership.guards.check_table`).

        Returns
        -------
        dict
            ``log_likelihood_ratio`` when the fit ran the null test (``null_test``), else empty.
        """
        ratio = getattr(self.fitted_mixture(), "log_likelihood_ratio_", None)
        return {} if ratio is None else {"log_likelihood_ratio": float(ratio)}

    def cluster_astrometry(self) -> dict[str, float]:
        """The cluster's deconvolved mean astrometry and dispersion (mas/yr, mas), for summaries.

        Returns
        -------
        dict
            ``xd_mean_pmra``, ``xd_mean_pmdec`` (and ``xd_mean_parallax``), their standard errors
            ``xd_mean_<name>_error`` (robust, with the membership uncertainty; absent from checkpoints
            written before they were kept), ``xd_pm_dispersion``,
            ``xd_plummer_scale_deg``, ``xd_crowding_beta``, ``xd_n_field``.
        """
        m = self.fitted_mixture()
        out = {
            f"xd_mean_{name}": float(v) for name, v in zip(("pmra", "pmdec", "parallax"), m.cluster_mean_, strict=False)
        }
        cov = getattr(m, "cluster_mean_cov_", None)
        if cov is not None:
            out.update(
                {
                    f"xd_mean_{name}_error": float(math.sqrt(max(v, 0.0)))
                    for name, v in zip(("pmra", "pmdec", "parallax"), np.diag(cov), strict=False)
                }
            )
        out.update(
            xd_pm_dispersion=float(m.sigma_),
            xd_plummer_scale_deg=float(math.exp(m.log_scale_)),
            xd_crowding_beta=float(m.beta_),
            xd_n_field=int(m.n_field_),
        )
        if getattr(m, "log_likelihood_ratio_", None) is not None:
            out["xd_log_likelihood_ratio"] = float(m.log_likelihood_ratio_)
        return out


def named_cluster_options(literature: Any) -> dict[str, Any]:
    """Mixture options from a published cluster (data.cluster=NAME): a start at its mean, a dispersion prior.

    The start is one more EM start (the likelihood still chooses); the prior's sigma_0 is the
    line-of-sight dispersion over the distance (VB21, GaiaTools), so neither is a constraint.

    Parameters
    ----------
    literature : grasp_dl.data.clusters.LiteratureCluster or None

    Returns
    -------
    dict
        ``start_pm`` and ``sigma_prior`` (where the table has a dispersion), or empty.
    """
    if literature is None:
        return {}
    out: dict[str, Any] = {"start_pm": [literature.pmra, literature.pmdec, literature.parallax]}
    sigma = getattr(literature, "pm_dispersion", None)
    if sigma is not None and math.isfinite(sigma) and sigma > 0:
        out["sigma_prior"] = float(sigma)
    return out
