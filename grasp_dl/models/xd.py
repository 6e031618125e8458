"""XDModule (``model=xd``): the cluster + field mixture as a clustering model, one EM iteration per epoch.

No network and no autoencoder phase. At the first fit's start the mixture explores its starts and
number of field components (alike on every process); then each training epoch is one EM
iteration on every training star: batches add their E-step's sufficient statistics, the epoch's
last step reduces them across processes and runs the M-step. The scale, slope and crowding
coefficient are the module's parameter (:attr:`XDModule.em_shape`), moved by L-BFGS steps, so DDP
has a parameter to wrap. Group 0 is the cluster. The fitted mixture and its EM progress are in
every checkpoint; prediction scores stars with their own errors (:meth:`XDModule.predict_proba_stars`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grasp_dl.data.astrometry import StarData
from grasp_dl.data.loader import is_block
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog
from grasp_dl.mixtures.cluster_field import FIELD_RANGE, ClusterFieldMixture, EMBatch, shape_parameter
from grasp_dl.mixtures.em import Stats, add_stats, flatten_stats, new_optimizer, unflatten_stats
from grasp_dl.models.base import ClusteringModule
from grasp_dl.runtime.devices import single_cpu_thread
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: The setting named in error messages about missing error columns.
WHAT = "model=xd"
#: Checkpoint key (inside fit_results) of the fitted mixture (and its EM progress).
MIXTURE_KEY = "xd_mixture"
#: State-dict key of the parameter the M-step's gradient steps move (scale, slope, beta).
SHAPE_KEY = "em_shape"
#: State-dict key of :meth:`XDModule.get_extra_state` (torch's name for a module's extra state).
EXTRA_STATE_KEY = "_extra_state"


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
        EM iterations (training epochs) of the fit on every training star, at most.
    tol : float
        Convergence: the change of the mean log-likelihood per star that ends training.
    eta_max : float or None
        Cap of the crowding inflation of Gaia's errors; None: uncapped.
    eta_min : float
        The inflation of every star's errors where the sources are sparsest (GaiaTools: 1.1).
    field_min_sd : float
        Floor (mas/yr) of the proper-motion dispersion of each field component on the cluster's
        proper motion (within two floors of it), so that no flat field component can sit there and
        take its scattered central members; a background galaxy elsewhere stays as tight as it is.
    hold_crowding_in_null : bool
        The no-cluster null keeps the fit's crowding coefficient instead of refitting it.
    scale_prior : bool
        VB21's soft prior against a Plummer scale above 0.75 of the cone.
    cluster_outliers : bool or "auto"
        One more group, last: stars on the cluster's profile with a broad proper-motion spread of
        their own (corrupted astrometry in a crowded core), not members; the cluster's dispersion
        no longer follows their tails. ``"auto"`` (default): where the BIC prefers it, with
        ``n_clusters`` null (a fixed ``n_clusters`` fixes the groups: none).
    outlier_min_sd : float
        Floor (mas/yr) of that group's proper-motion spread.
    outliers_predicted : bool
        Prediction gives that group its posterior; False (default) scores every star as if its
        astrometry were sound (the group then only shapes the fit).
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

    #: TensorBoard views after the last epoch only: an epoch is one EM iteration (many, cheap).
    views_at_last_epoch_only = True

    def __init__(
        self,
        input_dim: int,
        n_clusters: int | None = None,
        crowding: bool = True,
        dispersion_profile: bool = True,
        n_starts: int = 3,
        max_iter: int = 100,
        tol: float = 1e-5,
        eta_max: float | None = 2.0,
        eta_min: float = 1.0,
        field_min_sd: float = 1.0,
        hold_crowding_in_null: bool = True,
        scale_prior: bool = False,
        null_test: bool = False,
        cluster_outliers: bool | str = "auto",
        outlier_min_sd: float = 1.0,
        outliers_predicted: bool = False,
        **shared: Any,
    ) -> None:
        if n_clusters is not None and (isinstance(n_clusters, str) or int(n_clusters) < 2):
            raise ConfigError(f"model=xd: n_clusters must be null (BIC) or an integer >= 2, got {n_clusters!r}")
        if int(n_starts) < 1 or int(max_iter) < 1:
            raise ConfigError(f"model=xd: n_starts and max_iter must be >= 1, got {n_starts} and {max_iter}")
        if isinstance(cluster_outliers, str) and cluster_outliers != "auto":
            raise ConfigError(f"model=xd: cluster_outliers must be true, false or auto, got {cluster_outliers!r}")
        if n_clusters is not None and cluster_outliers is True and int(n_clusters) < 3:
            raise ConfigError(
                f"model=xd: cluster_outliers needs n_clusters null or >= 3 (cluster, field, outliers), got {n_clusters}"
            )
        if float(eta_min) < 1.0 or (eta_max is not None and float(eta_max) < float(eta_min)) or field_min_sd < 0:
            raise ConfigError(
                f"model=xd: need 1 <= eta_min <= eta_max and field_min_sd >= 0, got eta_min={eta_min}, "
                f"eta_max={eta_max}, field_min_sd={field_min_sd}"
            )
        shared.setdefault("init", "xd")
        groups = 1 + FIELD_RANGE[1] + int(cluster_outliers is not False) if n_clusters is None else int(n_clusters)
        super().__init__(input_dim, groups, **shared)
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
                "eta_min": float(eta_min),
                "field_min_sd": float(field_min_sd),
                "hold_crowding_in_null": bool(hold_crowding_in_null),
                "scale_prior": bool(scale_prior),
                "null_test": bool(null_test),
                "cluster_outliers": _outlier_setting(cluster_outliers),
                "outlier_min_sd": float(outlier_min_sd),
                "outliers_predicted": bool(outliers_predicted),
                "tol": float(tol),
            }
        )
        self.mixture: ClusterFieldMixture | None = None
        # The M-step steps its L-BFGS itself (em_m_step); Lightning's automatic step would call it with
        # the training step's None as the loss (the deep models' BlockTraining, which switched this off
        # for every module before the deep-resume merge, is no longer XD's base).
        self.automatic_optimization = False
        #: The scale, slope and crowding beta as the M-step's L-BFGS moves them (float64).
        self.em_shape = nn.Parameter(shape_parameter())
        self._em_data: EMBatch | None = None
        self._em_rows: Tensor | None = None
        self._em_stats: Stats | None = None
        self._iterating = False
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
        outliers = _outlier_setting(hp.get("cluster_outliers", False))  # absent: an older checkpoint
        if hp.n_clusters is not None and outliers == "auto":
            outliers = False  # n_clusters fixes the groups: the cluster and n_clusters - 1 field components
        return ClusterFieldMixture(
            n_field=None if hp.n_clusters is None else int(hp.n_clusters) - 1 - int(outliers),
            crowding=hp.crowding,
            dispersion_profile=hp.dispersion_profile,
            n_starts=hp.n_starts,
            max_iter=hp.max_iter,
            tol=float(hp.get("tol", 1e-5)),
            seed=hp.seed,
            eta_max=hp.get("eta_max"),
            eta_min=float(hp.get("eta_min", 1.0)),
            field_min_sd=float(hp.get("field_min_sd", 0.0)),
            hold_crowding_in_null=bool(hp.get("hold_crowding_in_null", False)),
            scale_prior=bool(hp.get("scale_prior", False)),
            null_test=bool(hp.get("null_test", False)),
            cluster_outliers=outliers,
            outlier_min_sd=float(hp.get("outlier_min_sd", 1.0)),
            outliers_predicted=bool(hp.get("outliers_predicted", True)),  # absent: an older checkpoint
            **named_cluster_options(self.literature),
        )

    def fit_stars(self, stars: StarData) -> ClusterFieldMixture:
        """Fit the mixture to ``stars`` in a plain loop (no Trainer) and adopt it (group 0 the cluster).

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
        return mixture

    def adopt(self, mixture: ClusterFieldMixture) -> None:
        """Take over a mixture: groups, checkpoint state (with its EM progress), the cluster group and the position model."""
        self.mixture = mixture
        self.hparams["n_clusters"] = int(mixture.n_components)
        self.fit_results[MIXTURE_KEY] = mixture.get_state()
        self.fit_results["xd_selection"] = [dict(row) for row in getattr(mixture, "selection_", [])]
        self.decided_group.fill_(0)
        self.position_model.copy_(
            torch.tensor(
                [float(mixture.weights_[0]), float(mixture.log_scale_), float(mixture.radius_max_)],
                dtype=self.position_model.dtype,
            )
        )
        with torch.no_grad():
            self.em_shape.copy_(torch.tensor([mixture.log_scale_, mixture.slope_, mixture.beta_], dtype=torch.float64))

    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """The exploration (starts, number of field components) on a seeded subsample: once, at the first fit's start.

        Every process holds the same training stars and explores alike; rank 0's result is
        broadcast all the same, so all processes start the EM from one state.
        """
        mixture = self.new_mixture().explore(catalog.stars)
        mixture.set_state(self.trainer.strategy.broadcast(mixture.get_state(), src=0))
        self.adopt(mixture)

    def on_fit_start(self) -> None:
        """Explore on a first fit (:meth:`initialise_from`); put the training stars on the device for the EM."""
        super().on_fit_start()
        mixture = self.fitted_mixture()
        stars = self.train_catalog.stars
        has = np.asarray(stars.has_astrometry)
        self._em_data = mixture.em_batch(stars, self.device)
        rows = torch.full((len(has),), -1, dtype=torch.long)
        rows[torch.as_tensor(has)] = torch.arange(int(has.sum()))
        self._em_rows = rows.to(self.device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """L-BFGS over :attr:`em_shape`: the M-step's gradient steps on the scale, slope and beta.

        Returns
        -------
        torch.optim.LBFGS
        """
        return new_optimizer(self.em_shape)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Skip the epoch when no EM iteration runs in it (a resumed fit that had already finished)."""
        super().on_train_batch_start(batch, batch_idx)
        if not self._iterating:
            self.trainer.should_stop = True
            return -1
        return None

    def on_train_epoch_start(self) -> None:
        """Begin one EM iteration (its candidate values of the scale, slope and beta), unless the fit is done."""
        super().on_train_epoch_start()
        self._em_stats = None
        mixture = self.fitted_mixture()
        self._iterating = not self.em_fit_done()
        if self._iterating:
            mixture.start_iteration()

    def em_fit_done(self) -> bool:
        """Whether the EM has ended: converged, or ``max_iter`` iterations run.

        Returns
        -------
        bool
        """
        mixture = self.fitted_mixture()
        return bool(mixture.converged_ or mixture.n_iter_ >= self.hparams.max_iter)

    def shape_optimizer(self) -> Any:
        """The optimizer of the M-step's scale, slope and beta (the first when the module has several).

        Returns
        -------
        LightningOptimizer
        """
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, list) else optimizers

    def after_m_step(self) -> None:
        """What a model adds after each M-step (nothing here; the multi-modal model fits its CMD densities)."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Add the batch's E-step sufficient statistics to the epoch's; after the epoch's last batch, the M-step.

        The M-step runs inside the last training step so that its L-BFGS step is one of
        Lightning's counted optimiser steps (``global_step``, which checkpoints follow).
        """
        rows = torch.cat([r for _, r in batch]) if is_block(batch) else batch[1]
        with torch.no_grad(), single_cpu_thread(self.device):
            index = self._em_rows[rows.to(self._em_rows.device)]
            index = index[index >= 0]
            stats = self.fitted_mixture().e_step(self._em_data.rows(index))
        self._em_stats = add_stats(self._em_stats, stats)
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self.em_m_step()

    def last_epoch(self) -> bool:
        """Whether the running epoch is the fit's last: the EM has ended, or ``trainer.max_epochs`` is reached.

        Returns
        -------
        bool
        """
        trainer = self.trainer
        max_epochs = trainer.max_epochs
        reached = max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1
        return bool(trainer.should_stop or reached or self.em_fit_done())

    def epoch_stats(self) -> Stats:
        """This process's E-step statistics of the epoch (zeros for a process without batches, which still joins the reduction).

        Returns
        -------
        dict
            Sums over the stars of this process's batches.
        """
        if self._em_stats is not None:
            return self._em_stats
        with torch.no_grad():
            stats = self.fitted_mixture().e_step(
                self._em_data.rows(torch.zeros(0, dtype=torch.long, device=self.device))
            )
        return {key: torch.zeros_like(value) for key, value in stats.items()}

    def em_m_step(self) -> None:
        """Reduce the epoch's statistics over processes, run the M-step and the convergence test."""
        mixture = self.fitted_mixture()
        flat, layout = flatten_stats(self.epoch_stats())
        flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        mixture.end_iteration(unflatten_stats(flat, layout), self.shape_optimizer())
        self.adopt(mixture)
        self._em_stats = None
        self._iterating = False
        self.after_m_step()
        if self.em_fit_done():
            self.trainer.should_stop = True
            self._null_test()
            mixture.log_summary()

    def on_train_epoch_end(self) -> None:
        """Log ``xd/nll`` (the M-step ran in the epoch's last training step; here only if that was skipped)."""
        if self._iterating:
            self.em_m_step()
        super().on_train_epoch_end()
        mixture = self.fitted_mixture()
        nll = -mixture.log_likelihood_ / max(getattr(mixture, "n_fit_", 1), 1)
        self.log("xd/nll", nll if math.isfinite(nll) else math.inf, on_epoch=True, sync_dist=True)

    def _null_test(self) -> None:
        """``null_test``: the fit against the same model on shuffled positions, once, after the last iteration.

        Run before the epoch's checkpoint so that it carries the ratio; every process holds all
        the training stars and computes the same ratio.
        """
        mixture = self.fitted_mixture()
        if mixture.null_test and mixture.log_likelihood_ratio_ is None and self._em_data is not None:
            mixture.run_null_test(self._em_data, refit=self.null_refits_the_fit())
            self.adopt(mixture)

    def null_refits_the_fit(self) -> bool:
        """Whether the null test refits the fit to the EM's stars as it refits each shuffle (no: the fit is theirs).

        Returns
        -------
        bool
        """
        return False

    def on_fit_end(self) -> None:
        """Run the null test when training stopped before the EM finished (``trainer.max_epochs``)."""
        super().on_fit_end()
        if self.mixture is not None or self.fit_results.get(MIXTURE_KEY):
            self._null_test()

    def get_extra_state(self) -> dict[str, Any]:
        """The mixture's state in the module's own state dict (plain types).

        So that it travels wherever the weights do: into checkpoints, and back from the
        processes of a spawned DDP fit to the launching one.

        Returns
        -------
        dict
        """
        return {key: self.fit_results[key] for key in (MIXTURE_KEY, "xd_selection") if key in self.fit_results}

    def set_extra_state(self, state: Any) -> None:
        """Adopt the mixture's state from :meth:`get_extra_state` (empty before a fit)."""
        if not state:
            return
        self.fit_results.update(state)
        self.mixture = None
        if MIXTURE_KEY in state:  # the fitted components: the cluster, the field's and its outliers where it has them
            fitted = state[MIXTURE_KEY]
            self.hparams["n_clusters"] = 1 + int(fitted["n_field"]) + int("outlier_sd" in fitted)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the mixture's state; older checkpoints without :attr:`em_shape` and the extra state get them from ``fit_results``."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        mixture_state = self.fit_results.get(MIXTURE_KEY)
        self.mixture = None
        if SHAPE_KEY not in state:
            values = [0.0, 4.0, 0.0]
            if mixture_state:
                values = [mixture_state["log_scale"], mixture_state.get("slope", 4.0), mixture_state["beta"]]
            state[SHAPE_KEY] = torch.tensor(values, dtype=torch.float64)
        state.setdefault(EXTRA_STATE_KEY, self.get_extra_state())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Log the mean entropy of the validation stars' groups (from their features, without errors).

        At the sanity check and the fit's last epoch only: an EM iteration costs less than scoring
        the validation stars, and checkpoints and early stopping watch ``xd/nll``, not this.
        """
        if not (self.trainer.sanity_checking or self.last_epoch()):
            return
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

    def position_member_prob(self, radius: np.ndarray) -> np.ndarray:
        """Member probability from the radius alone, with the fitted mixture's own spatial profiles and weights.

        A star without astrometry (a 2-parameter source) is scored as the mixture scores it: the
        cluster's profile (its fitted scale and slope) against the field's, not the generic Plummer fit
        of :meth:`ClusteringModule.position_member_prob`, which stays the answer before the mixture is
        fitted or where the mixture also scores photometry (it needs the stars' colours).

        Parameters
        ----------
        radius : numpy.ndarray
            Radii in degrees.

        Returns
        -------
        numpy.ndarray
        """
        if self.mixture is None and not self.fit_results.get(MIXTURE_KEY):
            return super().position_member_prob(radius)
        mixture = self.fitted_mixture()
        if mixture.photometry:
            return super().position_member_prob(radius)
        r = np.asarray(radius, float)
        d = mixture.cluster_mean_.shape[0]
        stars = StarData(np.full((len(r), d), np.nan), np.full((len(r), d, d), np.nan), r)
        return mixture.predict_proba(stars)[:, self.cluster_group]

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
            ``log_likelihood_ratio`` (and ``null_permutations``, the shuffles its null is the mean of,
            and ``outlier_stars``, the stars of the cluster's outlier component) when the fit ran the
            null test (``null_test``), else empty.
        """
        mixture = self.fitted_mixture()
        ratio = getattr(mixture, "log_likelihood_ratio_", None)
        if ratio is None:
            return {}
        shuffles = getattr(mixture, "null_permutations_", None)
        outliers = mixture.outlier_stars()
        return (
            {"log_likelihood_ratio": float(ratio)}
            | ({} if shuffles is None else {"null_permutations": int(shuffles)})
            | ({"outlier_stars": outliers} if outliers > 0 else {})
        )

    def cluster_astrometry(self) -> dict[str, float]:
        """The cluster's deconvolved mean astrometry and dispersion (mas/yr, mas), for summaries.

        Returns
        -------
        dict
            ``xd_mean_pmra``, ``xd_mean_pmdec`` (and ``xd_mean_parallax``), their standard errors
            ``xd_mean_<name>_error`` (robust, with the membership uncertainty; absent from older
            checkpoints), ``xd_pm_dispersion``,
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


def _outlier_setting(value: Any) -> bool | str:
    """``model.cluster_outliers`` as the mixture takes it: true, false or ``"auto"`` (the BIC decides)."""
    return "auto" if value == "auto" else bool(value)
