"""MultiModalModule (``model=multimodal``): the astrometric mixture of ``model=xd`` times neural CMD densities.

Each star's likelihood is

    p(star) = sum_j  w_j Sigma_j(r) N(v; m_j, S_j + C_i)  x  h_j(BP-RP | G)

the error-deconvolved cluster + field mixture of :class:`~grasp_dl.models.xd.XDModule`, times the
density of the star's colour-magnitude diagram (CMD) under the cluster (j = 0) and under the field
(j >= 1, one density per field component: in a bulge cone one field component is the bulge, whose
old stars share much of the cluster's CMD, another the foreground disc, and one field CMD for both
would call the bulge's giants cluster-like). The CMD densities are mixture density networks
(:mod:`grasp_dl.models.cmd_density`), each star's photometric errors convolved in (the catalogue's where it states
them, :func:`~grasp_dl.data.astrometry.photometric_variances`, else Gaia DR3's typical ones at its G). By default each is the density of the colour given the magnitude
(``colour_given_magnitude``): which faint stars a field component takes is set by their astrometric
errors, so a group's luminosity function is not the physics' and must not earn it members. With
``position_conditioning`` they are conditioned on the position in the cone (differential
reddening); off by default, as a field density conditioned on the position learns the cluster's
faint members near the centre, which its flat profile cannot.

The fit is a generalised EM in the Lightning loop of ``model=xd`` (one epoch, one iteration):

1. *warm-up*: the astrometric mixture alone, exactly as ``model=xd`` (exploration, then EM until
   converged or ``max_iter`` iterations). The CMD is not informative yet: every component shares
   one CMD density (a Gaussian of all stars), which leaves the memberships as ``model=xd``'s;
2. the CMD densities are fitted to the warm-up's memberships (``cmd_start_steps`` Adam steps of
   the weighted likelihood sum_ij q_ij log h_j);
3. *joint phase*, each epoch: the CMD densities' log-densities of every training star enter the
   E-step (:class:`~grasp_dl.mixtures.cluster_field.EMBatch` ``log_extra``), whose memberships
   are kept per star; the M-step is the astrometric closed form plus ``cmd_steps`` Adam steps of
   the CMD networks on the new memberships. It ends when the mean log-likelihood per star changes
   by less than ``cmd_tol`` or after ``cmd_iter`` iterations.

Every process holds all training stars, so under DDP the memberships of each process's batches
are summed over processes and every process takes the same CMD steps (seeded subsamples): the
networks stay identical without gradient all-reduce.

Uncertainty: the CMD densities are an ensemble of ``ensemble_size`` sets (one density per
component), each with its own start and its own Bayesian-bootstrap weights of the stars. The E-step
is cross-fitted (:meth:`MultiModalModule.training_log_extra`): set m never learns from fold m of the
training stars and alone scores it. A star's reported membership is the mean of the memberships each
set gives and ``member_prob_std`` their spread.

A small share of any cluster's members sits off its sequence (blends and BP/RP contamination in
crowded fields, variables, photometric outliers): the cluster's density is floored by
``outlier_fraction`` of the field's, so one bad colour cannot veto an astrometric member.

Stars without astrometry (Gaia 2-parameter sources) are scored from their radius and their CMD. With
``fit_no_astrometry`` (the default) they are in the joint phase's fit too, their astrometry integrated
out (:meth:`~grasp_dl.mixtures.cluster_field.ClusterFieldMixture.e_step_positional`): whether a star
has astrometry depends on its magnitude and the crowding, which the cluster's faint members in a dense
core feel most, so densities and weights fitted to the stars with astrometry alone would under-count
the cluster exactly where those stars are. That selection depends on the magnitude and the position,
which the model conditions on, so it is the same for every component and cancels.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grasp_dl.data.astrometry import StarData
from grasp_dl.data.loader import is_block
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog
from grasp_dl.mixtures.cluster_field import FIELD_RANGE, ClusterFieldMixture
from grasp_dl.mixtures.em import add_stats, new_optimizer
from grasp_dl.models.cmd_density import WIDTH_FLOOR, CMDDensityEnsemble, gaia_photometric_variance
from grasp_dl.models.xd import XDModule
from grasp_dl.runtime.devices import single_cpu_thread
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: The setting named in error messages about missing columns.
WHAT = "model=multimodal"
#: Standardisation of the CMD: (G, BP-RP) minus the training stars' median, over these widths (mag).
CMD_SCALE = (2.0, 0.5)
#: Stars per chunk when every training star's CMD densities are evaluated.
CHUNK = 65_536


def gaussian_cmd_nll(points: Tensor, conditional: bool) -> float:
    """Mean negative log-density of standardised CMD points under one Gaussian of them all (the warm-up's CMD term).

    Parameters
    ----------
    points : Tensor
        (n, 2) standardised (G, BP-RP).
    conditional : bool
        The density of BP-RP given G (as the joint phase scores with ``colour_given_magnitude``),
        else of both, so that the warm-up's ``multimodal/nll`` is comparable with the joint phase's.

    Returns
    -------
    float
    """
    x = points.double()
    mean, cov = x.mean(0), torch.cov(x.T) + 1e-9 * torch.eye(2, dtype=torch.float64)
    log_p = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    if conditional:
        log_p = log_p - torch.distributions.Normal(mean[0], cov[0, 0].sqrt()).log_prob(x[:, 0])
    return float(-log_p.mean())


class MultiModalModule(XDModule):
    """Cluster + field membership from astrometry and the colour-magnitude diagram, fitted by generalised EM.

    Parameters
    ----------
    input_dim : int
        Number of standardised features (they must hold ra/dec, pmra and pmdec).
    n_clusters : int or None
        Groups = 1 + field components of the astrometric mixture; None lets the BIC choose.
    ensemble_size : int
        Sets of CMD densities (one density per mixture component); their spread is ``member_prob_std``.
    n_components : int
        Gaussian components of each CMD density.
    hidden : int
        Width of the CMD networks' two hidden layers.
    position_conditioning : bool
        Condition the CMD densities on the position in the cone (differential reddening); else
        (the default) one CMD density per group for the whole cone, as a group's flat or
        concentrated profile says where its stars are, not its CMD.
    cmd_iter : int
        Iterations (epochs) of the joint phase at most.
    cmd_tol : float
        The joint phase ends when the mean log-likelihood per star changes by less than this.
    cmd_steps : int
        Adam steps of the CMD networks in each joint M-step.
    cmd_start_steps : int
        Adam steps of the CMD networks' first fit, to the warm-up's memberships.
    cmd_lr : float
        Adam's learning rate.
    cmd_batch : int
        Stars of each Adam step (a seeded subsample of the training stars).
    outlier_fraction : float
        Share of the cluster's CMD density given to the field's shape (members off the sequence), in [0, 1).
    fit_no_astrometry : bool
        Fit the joint phase to the stars without astrometry too (their radius and CMD): the weights,
        the spatial profile and the CMD densities are then those of all stars; else those of the stars
        with astrometry, and the others are only scored.
    cmd_groups : int or None
        CMD densities per set: one per mixture component the fit may have (``n_clusters``, or
        1 + the most field components the BIC may choose when it is None, + 1 for the cluster's
        outliers with ``cluster_outliers``). Kept in the checkpoint
        so the networks load before the chosen number is known; leave it None.
    **options : Any
        The astrometric mixture's options and the shared ones (:class:`~grasp_dl.models.xd.XDModule`);
        its ``max_iter`` caps the warm-up.

    Raises
    ------
    ConfigError
        For an option out of range.
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int | None = None,
        ensemble_size: int = 5,
        n_components: int = 8,
        hidden: int = 16,
        position_conditioning: bool = False,
        cmd_iter: int = 20,
        cmd_tol: float = 1e-3,
        cmd_steps: int = 10,
        cmd_start_steps: int = 100,
        cmd_lr: float = 0.01,
        cmd_batch: int = 2048,
        outlier_fraction: float = 0.05,
        fit_no_astrometry: bool = True,
        colour_given_magnitude: bool = True,
        cmd_groups: int | None = None,
        **options: Any,
    ) -> None:
        counts = {
            "ensemble_size": ensemble_size,
            "n_components": n_components,
            "hidden": hidden,
            "cmd_iter": cmd_iter,
            "cmd_steps": cmd_steps,
            "cmd_batch": cmd_batch,
        }
        bad = {name: value for name, value in counts.items() if isinstance(value, str) or int(value) < 1}
        if bad:
            raise ConfigError(f"{WHAT}: {', '.join(f'{k}={v!r}' for k, v in bad.items())} must be integers >= 1")
        if int(cmd_start_steps) < 0 or not float(cmd_lr) > 0 or not float(cmd_tol) > 0:
            raise ConfigError(
                f"{WHAT}: cmd_start_steps must be >= 0 and cmd_lr, cmd_tol > 0, got "
                f"{cmd_start_steps}, {cmd_lr}, {cmd_tol}"
            )
        if not 0.0 <= float(outlier_fraction) < 1.0:
            raise ConfigError(f"{WHAT}: outlier_fraction must be in [0, 1), got {outlier_fraction}")
        # the astrometric mixture as measured with the CMD (docs/src/multimodal-benchmarks.md): no outlier group
        # unless asked for, whatever model=xd's default
        options.setdefault("cluster_outliers", False)
        options.setdefault("outliers_predicted", True)
        super().__init__(input_dim, n_clusters, **options)
        if cmd_groups is None:  # one density per component the fit may have, the cluster's outliers included
            outliers = int(bool(options.get("cluster_outliers", False)))
            cmd_groups = 1 + FIELD_RANGE[1] + outliers if n_clusters is None else int(n_clusters)
        self.save_hyperparameters(
            {
                "ensemble_size": int(ensemble_size),
                "n_components": int(n_components),
                "hidden": int(hidden),
                "position_conditioning": bool(position_conditioning),
                "cmd_iter": int(cmd_iter),
                "cmd_tol": float(cmd_tol),
                "cmd_steps": int(cmd_steps),
                "cmd_start_steps": int(cmd_start_steps),
                "cmd_lr": float(cmd_lr),
                "cmd_batch": int(cmd_batch),
                "outlier_fraction": float(outlier_fraction),
                "fit_no_astrometry": bool(fit_no_astrometry),
                "colour_given_magnitude": bool(colour_given_magnitude),
                "cmd_groups": int(cmd_groups),
            }
        )
        floor = tuple(WIDTH_FLOOR / s for s in CMD_SCALE)
        #: the CMD densities: member j M + m is component j's density in set m (j = 0 the cluster)
        self.cmd = CMDDensityEnsemble(int(cmd_groups) * int(ensemble_size), int(n_components), int(hidden), 2, floor)
        self.register_buffer("cmd_centre", torch.zeros(2))
        self.register_buffer("cmd_scale", torch.tensor(CMD_SCALE))
        #: the training stars' G range: the densities know nothing of fainter or brighter stars
        self.register_buffer("magnitude_range", torch.tensor([-math.inf, math.inf]))
        self.register_buffer("position_scale", torch.tensor(1.0))
        #: the EM iteration after which the joint phase began (-1: still in the warm-up)
        self.register_buffer("cmd_phase_start", torch.tensor(-1))
        #: mean -log density of the training stars' CMD under one Gaussian of all of them (the warm-up's CMD term)
        self.register_buffer("reference_nll", torch.tensor(0.0, dtype=torch.float64))
        #: the CMD rows of the training stars: those with astrometry (in the EM's order), then, with
        #: fit_no_astrometry, those without it that have photometry (the positional rows)
        self._cmd_rows: dict[str, Tensor] = {}
        self._n_astrometric = 0
        self._position_radius: Tensor | None = None
        self._position_extra: Tensor | None = None
        self._q_sum: Tensor | None = None
        self._q_count: Tensor | None = None

    # ------------------------------------------------------------------ what it needs, how it starts
    def catalog_needs(self) -> CatalogNeeds:
        """Astrometry, errors, radius, position and photometry of every training star (named ``model=multimodal``).

        Returns
        -------
        CatalogNeeds
        """
        return CatalogNeeds(stars=WHAT, photometry=True, no_astrometry=bool(self.hparams.fit_no_astrometry))

    @property
    def joint_phase(self) -> bool:
        """Whether the CMD densities have been fitted (the warm-up is over)."""
        return int(self.cmd_phase_start) >= 0

    def new_mixture(self) -> ClusterFieldMixture:
        """The astrometric mixture with this module's settings; the joint phase's tolerance once it has begun.

        Returns
        -------
        ClusterFieldMixture
        """
        mixture = super().new_mixture()
        if self.joint_phase:
            mixture.tol = float(self.hparams.cmd_tol)
        return mixture

    def initialise_from(self, catalog: TrainingCatalog) -> None:
        """The astrometric exploration (:meth:`XDModule.initialise_from`), the CMD's standardisation and the networks' start."""
        super().initialise_from(catalog)
        cmd = catalog.stars.cmd
        finite = np.isfinite(cmd).all(1) & catalog.stars.has_astrometry
        if finite.sum() < 20:
            raise ConfigError(
                f"{WHAT} needs the photometry (phot_g_mean_mag, bp_rp) of at least 20 training stars with "
                f"astrometry; {int(finite.sum())} have it: choose model=xd for this catalogue"
            )
        without = self.without_astrometry(catalog)
        if without is not None:  # the densities learn the stars without astrometry too
            cmd = np.concatenate([cmd[finite], without.cmd])
            finite = np.ones(len(cmd), dtype=bool)
        with torch.no_grad():
            self.cmd_centre.copy_(torch.as_tensor(np.median(cmd[finite], axis=0), dtype=self.cmd_centre.dtype))
            g = cmd[finite, 0]
            self.magnitude_range.copy_(torch.tensor([float(g.min()), float(g.max())]))
            self.position_scale.fill_(float(self.fitted_mixture().radius_max_))
            points = (torch.as_tensor(cmd[finite], dtype=torch.float32) - self.cmd_centre.cpu()) / self.cmd_scale.cpu()
            self.cmd.start_at(points, torch.Generator().manual_seed(int(self.hparams.seed)))
            nll = gaussian_cmd_nll(points, bool(self.hparams.colour_given_magnitude))
            scales = torch.log(self.cmd_scale.double())
            self.reference_nll.fill_(nll + float(scales[1] if self.hparams.colour_given_magnitude else scales.sum()))

    def without_astrometry(self, catalog: TrainingCatalog) -> StarData | None:
        """The catalogue's stars without astrometry that the joint phase fits (``fit_no_astrometry``): finite CMD and radius.

        Parameters
        ----------
        catalog : TrainingCatalog

        Returns
        -------
        StarData or None
            None without ``fit_no_astrometry``, without such stars or without their photometry.
        """
        stars = catalog.without_astrometry
        if not self.hparams.fit_no_astrometry or stars is None or stars.cmd is None:
            return None
        stars = stars.subset(np.isfinite(np.asarray(stars.cmd, float)).all(1) & np.isfinite(stars.radius))
        return stars if len(stars.radius) else None

    def on_fit_start(self) -> None:
        """As :meth:`XDModule.on_fit_start`, plus the training stars' standardised CMD, errors and positions on the device."""
        super().on_fit_start()
        stars = self.train_catalog.stars.subset(np.asarray(self.train_catalog.stars.has_astrometry))
        self._n_astrometric = len(stars.radius)
        positional = self.without_astrometry(self.train_catalog)
        if positional is not None:
            stars = StarData.concatenate([stars, positional])
        self._cmd_rows = self.cmd_inputs(stars)
        radius_max = self.fitted_mixture().radius_max_
        radius = np.minimum(stars.radius[self._n_astrometric :], radius_max)
        self._position_radius = torch.as_tensor(radius, dtype=torch.float64, device=self.device)
        self._position_extra = None
        n = len(stars.radius)
        generator = torch.Generator().manual_seed(int(self.hparams.seed) + 1)
        m = self.hparams.ensemble_size
        boot = torch.empty(m, n).exponential_(generator=generator)  # Bayesian bootstrap
        # cross-fitting: set m never learns from the stars of fold m, whose E-step it alone scores
        fold = torch.randperm(n, generator=generator) % m
        if m > 1:
            boot = boot * (fold[None, :] != torch.arange(m)[:, None])
        self._cmd_rows["boot"] = boot.to(self.device)
        self._cmd_rows["fold"] = fold.to(self.device)
        k = self.fitted_mixture().n_components
        if k > self.hparams.cmd_groups:
            raise ConfigError(f"{WHAT}: the mixture has {k} components, the CMD densities {self.hparams.cmd_groups}")
        self._q_sum = torch.zeros(n, k, dtype=torch.float64, device=self.device)
        self._q_count = torch.zeros(n, dtype=torch.float64, device=self.device)
        total = int(self.hparams.max_iter) + int(self.hparams.cmd_iter)
        if self.trainer.max_epochs is not None and 0 <= self.trainer.max_epochs < total:
            log.warning(
                "%s: trainer.max_epochs=%d is below max_iter + cmd_iter = %d: the joint phase may be cut short",
                WHAT,
                self.trainer.max_epochs,
                total,
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """As :meth:`XDModule.on_load_checkpoint`; a checkpoint written before ``colour_given_magnitude`` scores the joint CMD it learnt."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters")
        if saved is not None and "colour_given_magnitude" not in saved:
            self.hparams.colour_given_magnitude = False

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """L-BFGS over :attr:`em_shape` (the astrometric M-step) and Adam over the CMD networks.

        Returns
        -------
        list of torch.optim.Optimizer
        """
        return [new_optimizer(self.em_shape), torch.optim.Adam(self.cmd.parameters(), lr=self.hparams.cmd_lr)]

    # ------------------------------------------------------------------ the CMD densities
    def cmd_inputs(self, stars: StarData) -> dict[str, Tensor]:
        """Standardised CMD points, their error variances, the networks' context and which stars have photometry.

        Parameters
        ----------
        stars : StarData
            Stars with ``cmd`` (and ``position`` when the densities are conditioned on it).

        Returns
        -------
        dict
            ``points`` (n, 2), ``noise`` (n, 2), ``context`` (n, 2), ``valid`` (n,) tensors on the module's device;
            ``valid`` is false for stars without photometry or outside the training stars' G range (the
            densities were never fitted there: 2-parameter sources are mostly fainter than any star with
            astrometry), whose CMD term is left out.

        Raises
        ------
        ConfigError
            When the stars carry no photometry, or no positions for a position-conditioned model.
        """
        if stars.cmd is None:
            raise ConfigError(
                f"{WHAT} scores stars with their photometry: give StarData with cmd (phot_g_mean_mag, bp_rp)"
            )
        device = self.cmd_centre.device
        cmd = torch.as_tensor(np.array(stars.cmd, float), dtype=torch.float32, device=device)
        low, high = self.magnitude_range
        valid = torch.isfinite(cmd).all(1) & (cmd[:, 0] >= low) & (cmd[:, 0] <= high)
        cmd = torch.where(valid[:, None], cmd, self.cmd_centre)
        var_g, var_c = gaia_photometric_variance(cmd[:, 0])
        noise = torch.stack([var_g, var_c], 1)
        if stars.cmd_variance is not None:  # the catalogue's own errors where it states them
            stated = torch.as_tensor(np.asarray(stars.cmd_variance, float), dtype=noise.dtype, device=device)
            noise = torch.where(torch.isfinite(stated) & valid[:, None], stated, noise)
        noise = noise / self.cmd_scale**2
        if self.hparams.position_conditioning:
            if stars.position is None:
                raise ConfigError(f"{WHAT} conditions the CMD on the position: give StarData with position (xi, eta)")
            context = torch.as_tensor(np.nan_to_num(np.asarray(stars.position, float)), dtype=torch.float32)
            context = context.to(device) / self.position_scale
        else:
            context = torch.zeros(len(cmd), 2, device=device)
        return {"points": (cmd - self.cmd_centre) / self.cmd_scale, "noise": noise, "context": context, "valid": valid}

    def member_log_densities(self, inputs: dict[str, Tensor], k: int) -> Tensor:
        """log CMD density (mag^-2) of each star under the first ``k`` components' networks of every set, no gradient.

        Parameters
        ----------
        inputs : dict
            :meth:`cmd_inputs`.
        k : int
            The mixture's components.

        Returns
        -------
        Tensor
            (k, M, n) float64, M the ensemble's sets; 0 for stars without photometry.
        """
        n, m = len(inputs["points"]), self.hparams.ensemble_size
        out = torch.zeros(k * m, n, dtype=torch.float64, device=inputs["points"].device)
        conditional = bool(self.hparams.colour_given_magnitude)
        scales = torch.log(self.cmd_scale.double())
        jacobian = float(scales[1] if conditional else scales.sum())
        with torch.no_grad():
            for start in range(0, n, CHUNK):
                part = slice(start, start + CHUNK)
                points, context, noise = (inputs[key][part] for key in ("points", "context", "noise"))
                lp = self.cmd.log_prob(points, context, noise, members=k * m, conditional=conditional)
                out[:, part] = lp.double() - jacobian
        out = torch.where(inputs["valid"][None, :], out, torch.zeros_like(out))
        return out.view(k, m, n)

    def floored(self, log_h: Tensor) -> Tensor:
        """Component log CMD densities (k, ..., n) with the cluster's floored by the field's (``outlier_fraction``).

        The field's shape there is its field components' densities weighted by the mixture's field
        weights (the cluster's outlier component, last with ``cluster_outliers``, is not field).

        Parameters
        ----------
        log_h : Tensor
            (k, ..., n) log densities, row 0 the cluster's.

        Returns
        -------
        Tensor
            The same shape.
        """
        eps = float(self.hparams.outlier_fraction)
        if eps == 0 or len(log_h) < 2:
            return log_h
        mixture = self.fitted_mixture()
        fields = slice(1, 1 + int(mixture.n_field_))
        weights = torch.as_tensor(mixture.weights_[fields], dtype=log_h.dtype, device=log_h.device)
        log_w = torch.log(weights / weights.sum()).view(-1, *([1] * (log_h.dim() - 1)))
        field = torch.logsumexp(log_h[fields] + log_w, 0)
        cluster = torch.logaddexp(log_h[0] + math.log1p(-eps), field + math.log(eps))
        return torch.cat([cluster[None], log_h[1:]])

    def training_log_extra(self, n_components: int) -> Tensor:
        """The E-step's (n, k) log CMD densities of the training stars, each from the set that never learnt it.

        A density scores the stars it was fitted to too well (most of all the few hundred
        members of the cluster's), and in EM that optimism feeds on itself: a field star near the
        cluster's sequence raises the density that raises its membership. Cross-fitting keeps the
        E-step honest: the training stars are split into ``ensemble_size`` folds and set m, fitted
        without fold m, alone scores it (with one set, every star is scored in-sample).

        Parameters
        ----------
        n_components : int
            The mixture's components.

        Returns
        -------
        Tensor
            (n, k) float64; 0 for stars without photometry.
        """
        inputs = self._cmd_rows
        lp = self.member_log_densities(inputs, n_components)  # (k, M, n)
        fold = inputs["fold"] if self.hparams.ensemble_size > 1 else torch.zeros_like(inputs["fold"])
        own = lp.gather(1, fold.view(1, 1, -1).expand(lp.shape[0], 1, -1)).squeeze(1)  # (k, n)
        extra = self.floored(own).T
        return torch.where(inputs["valid"][:, None], extra, torch.zeros_like(extra))

    def cmd_step_loss(self, rows: Tensor, q: Tensor, set_weights: Tensor) -> Tensor:
        """Weighted negative log-likelihood of the CMD networks on training rows ``rows``.

        Component j's density in set m weighs star i by b_mi q_ij, b the sets' bootstrap weights;
        each network's loss is its weighted mean.

        Parameters
        ----------
        rows : Tensor
            Indices of training stars with photometry.
        q : Tensor
            (len(rows), k) their component memberships.
        set_weights : Tensor
            (M, len(rows)) bootstrap weights.

        Returns
        -------
        Tensor
            A scalar: the networks' losses summed.
        """
        inputs = self._cmd_rows
        k, m = q.shape[1], self.hparams.ensemble_size
        lp = self.cmd.log_prob(
            inputs["points"][rows],
            inputs["context"][rows],
            inputs["noise"][rows],
            members=k * m,
            conditional=bool(self.hparams.colour_given_magnitude),
        ).view(k, m, -1)
        w = set_weights[None, :, :] * q.T.to(lp.dtype)[:, None, :]  # (k, M, b)
        return -((w * lp).sum(-1) / w.sum(-1).clamp_min(1e-6)).sum()

    def fit_cmd(self, q: Tensor, steps: int, salt: int) -> float:
        """``steps`` Adam steps of the CMD networks on the training stars' component memberships ``q`` (n, k).

        Each step takes a subsample of ``cmd_batch`` stars drawn from a generator seeded by the
        seed, ``salt`` (the iteration) and the step, so every process takes the same steps.

        Parameters
        ----------
        q : Tensor
            (n, k) component memberships of the training stars with astrometry.
        steps : int
            Adam steps.
        salt : int
            Mixed into the subsamples' seed.

        Returns
        -------
        float
            The last step's loss.
        """
        optimizers = self.optimizers()
        adam = optimizers[1] if isinstance(optimizers, list) else torch.optim.Adam(self.cmd.parameters())
        adam = getattr(adam, "optimizer", adam)  # Lightning's wrapper would count these steps as training steps
        valid = torch.nonzero(self._cmd_rows["valid"]).squeeze(1)
        boot = self._cmd_rows["boot"]
        size = min(int(self.hparams.cmd_batch), len(valid))
        loss = torch.zeros(())
        # the networks' steps (k M networks x cmd_batch stars x n_components) are the one part large enough
        # for torch's intra-op threads: 1.7x faster on two; the EM's E-step stays on one
        with torch.enable_grad():
            for step in range(steps):
                generator = torch.Generator().manual_seed(int(self.hparams.seed) * 100_003 + salt * 1_009 + step)
                pick = valid[torch.randperm(len(valid), generator=generator)[:size].to(valid.device)]
                adam.zero_grad()
                loss = self.cmd_step_loss(pick, q[pick], boot[:, pick])
                loss.backward()
                adam.step()
            adam.zero_grad()
        return float(loss.detach())

    # ------------------------------------------------------------------ the generalised EM
    def warmup_done(self) -> bool:
        """Whether the astrometric warm-up has ended: ``model=xd``'s own end (converged, or ``max_iter`` iterations)."""
        return XDModule.em_fit_done(self)

    def em_fit_done(self) -> bool:
        """The joint phase has converged (``cmd_tol``) or run ``cmd_iter`` iterations.

        Returns
        -------
        bool
        """
        if not self.joint_phase:
            return False
        mixture = self.fitted_mixture()
        return bool(mixture.converged_ or mixture.n_iter_ >= int(self.cmd_phase_start) + self.hparams.cmd_iter)

    def start_joint_phase(self) -> None:
        """Fit the CMD densities to the warm-up's memberships and restart the convergence test on the joint likelihood."""
        mixture = self.fitted_mixture()
        with torch.no_grad():
            q = torch.cat([mixture.e_step_memberships(chunk)[1] for chunk in self._em_data.chunks()])
            if self._position_radius is not None and len(self._position_radius):  # from their radius alone
                flat = torch.zeros(len(self._position_radius), q.shape[1], dtype=q.dtype, device=q.device)
                q = torch.cat([q, mixture.e_step_positional(self._position_radius.to(q.device), flat)[1]])
        loss = self.fit_cmd(q, int(self.hparams.cmd_start_steps), salt=mixture.n_iter_)
        self.cmd_phase_start.fill_(int(mixture.n_iter_))
        mixture.tol = float(self.hparams.cmd_tol)
        mixture.converged_ = False
        mixture.previous_ = -math.inf
        self.adopt(mixture)
        log.info("%s: CMD densities fitted to the astrometric memberships (loss %.4f)", WHAT, loss)

    def on_train_epoch_start(self) -> None:
        """Begin the joint phase once the warm-up ends; give the E-step the CMD densities of the training stars."""
        if self._em_data is not None and not self.joint_phase and self.warmup_done():
            self.start_joint_phase()
        if self._em_data is not None and self.joint_phase:
            extra = self.training_log_extra(self.fitted_mixture().n_components)
            self._em_data = self._em_data.with_log_extra(extra[: self._n_astrometric])
            self._position_extra = extra[self._n_astrometric :]
        if self._q_sum is not None:
            self._q_sum.zero_()
            self._q_count.zero_()
        super().on_train_epoch_start()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Add the batch's E-step statistics to the epoch's and keep its stars' memberships; the M-step after the last batch."""
        rows = torch.cat([r for _, r in batch]) if is_block(batch) else batch[1]
        with torch.no_grad(), single_cpu_thread(self.device):
            index = self._em_rows[rows.to(self._em_rows.device)]
            index = index[index >= 0]
            stats, q = self.fitted_mixture().e_step_memberships(self._em_data.rows(index))
        self._em_stats = add_stats(self._em_stats, stats)
        if self.joint_phase:
            self._q_sum.index_add_(0, index, q)
            self._q_count.index_add_(0, index, torch.ones_like(q[:, 0]))
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self.em_m_step()

    def epoch_stats(self) -> dict[str, Tensor]:
        """The epoch's statistics, in the joint phase with the stars without astrometry (:meth:`positional_e_step`)."""
        stats = super().epoch_stats()
        if self.joint_phase and self._position_extra is not None and len(self._position_extra):
            stats = add_stats(stats, self.positional_e_step())
        return stats

    def positional_e_step(self) -> dict[str, Tensor]:
        """The stars without astrometry: their statistics and memberships (kept for the CMD steps), from radius and CMD.

        Every process holds them all; rank 0 alone counts them (the others add zeros), so the
        sums over processes count each star once.

        Returns
        -------
        dict
            :meth:`~grasp_dl.mixtures.cluster_field.ClusterFieldMixture.e_step_positional`'s statistics.
        """
        with torch.no_grad():
            stats, q = self.fitted_mixture().e_step_positional(self._position_radius, self._position_extra)
        if self.global_rank != 0:
            return {key: torch.zeros_like(value) for key, value in stats.items()}
        rows = torch.arange(self._n_astrometric, self._n_astrometric + len(q), device=self._q_sum.device)
        self._q_sum.index_add_(0, rows, q.to(self._q_sum.dtype))
        self._q_count.index_add_(0, rows, torch.ones_like(q[:, 0]))
        return stats

    def null_refits_the_fit(self) -> bool:
        """Yes where stars without astrometry shaped the weights: the fit is then refitted to the others as each shuffle is.

        Returns
        -------
        bool
        """
        return self._position_radius is not None and len(self._position_radius) > 0

    def after_m_step(self) -> None:
        """The joint phase's CMD steps on the memberships of this iteration's E-step (summed over processes)."""
        if not self.joint_phase or self._q_sum is None:
            return
        strategy = self.trainer.strategy
        q_sum = strategy.reduce(self._q_sum.clone(), reduce_op="sum")
        count = strategy.reduce(self._q_count.clone(), reduce_op="sum")
        q = torch.where(count[:, None] > 0, q_sum / count.clamp_min(1.0)[:, None], torch.zeros_like(q_sum))
        self.fit_cmd(q, int(self.hparams.cmd_steps), salt=self.fitted_mixture().n_iter_)

    def on_train_epoch_end(self) -> None:
        """Log ``multimodal/nll``: the joint model's mean negative log-likelihood per star.

        In the warm-up every component shares one CMD density (a Gaussian of all stars), so the
        value is the astrometric mixture's plus that Gaussian's, comparable with the joint phase's.
        """
        super().on_train_epoch_end()
        mixture = self.fitted_mixture()
        n = max(getattr(mixture, "n_fit_", 1), 1)
        nll = -mixture.log_likelihood_ / n
        if not self.joint_phase and self._cmd_rows:
            share = float(self._cmd_rows["valid"][: self._n_astrometric].double().mean())
            nll += float(self.reference_nll) * share
        self.log("multimodal/nll", nll if math.isfinite(nll) else math.inf, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ inference
    def predict_proba_spread(self, stars: StarData) -> tuple[np.ndarray, np.ndarray | None]:
        """Group probabilities from astrometry, position and CMD: the ensemble's mean and its spread.

        Each set of CMD densities gives every star its posterior with the
        astrometric mixture; stars without astrometry get theirs from the radius and the CMD,
        stars without photometry from the astrometry alone. Before the CMD densities are fitted
        (the warm-up), the astrometric mixture's probabilities and no spread (None).

        Parameters
        ----------
        stars : StarData
            Astrometry, errors, radii, positions and photometry.

        Returns
        -------
        mean : numpy.ndarray
            (n, n_clusters), column 0 the cluster; rows sum to 1.
        std : numpy.ndarray or None
            (n, n_clusters), the ensemble's spread; None before the CMD densities are fitted.
        """
        mixture = self.fitted_mixture()
        astro = torch.as_tensor(mixture.predict_proba(stars), dtype=torch.float64)
        if not self.joint_phase:  # stopped in the warm-up (or a figure drawn while training): the astrometry alone
            return astro.numpy(), None
        inputs = self.cmd_inputs(stars)
        lp = self.member_log_densities(inputs, astro.shape[1]).cpu()
        extra = self.floored(lp).permute(1, 2, 0)  # (M, n, k)
        extra = torch.where(inputs["valid"].cpu()[None, :, None], extra, torch.zeros_like(extra))
        post = torch.softmax(torch.log(astro.clamp_min(1e-300))[None] + extra, -1)
        return post.mean(0).numpy(), post.std(0, unbiased=False).numpy()

    def predict_proba_stars(self, stars: StarData) -> np.ndarray:
        """Group probabilities (column 0 the cluster): the mean over the ensemble of :meth:`predict_proba_spread`.

        Parameters
        ----------
        stars : StarData
            Astrometry, errors, radii, positions and photometry.

        Returns
        -------
        numpy.ndarray
            (n, n_clusters), rows sum to 1.
        """
        return self.predict_proba_spread(stars)[0]

    def predict_proba(self, x: Tensor) -> Tensor:
        """The astrometric mixture's probabilities of standardised features, scored as exact: a fallback.

        Features carry neither errors nor photometry; the predict path uses :meth:`predict_proba_stars`.

        Parameters
        ----------
        x : Tensor
            Standardised features, shape (n, input_dim).

        Returns
        -------
        Tensor
            Shape (n, n_clusters), rows sum to 1.
        """
        prob = self.fitted_mixture().predict_proba(self.stars_from_features(x))
        return torch.as_tensor(prob, dtype=torch.float32, device=x.device)


__all__ = ["MultiModalModule", "gaussian_cmd_nll"]
