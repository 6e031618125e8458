"""The anchor of a deep clustering phase to its start: it never ends with a cluster group worse than the start.

DEC, IDEC and VaDE start from a mixture whose cluster group is often already right, and their
self-training can drift away from it. Without truth, :class:`StartAnchor` keeps only a plausible
start (:func:`group_check`), pulls the start's group towards the start's members while training,
checks for a drift at every group decision (:func:`detect_drift`) and falls back when it finds
one; the membership it reports pools the deep model's with the start's
(:mod:`grasp_dl.models.start_pool`). Its report travels in ``fit_results['start_vs_end']``. The
guards in full: ``docs/src/models.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grasp_dl.membership.guards import MAX_PM_DISPERSION_RATIO, MAX_RADIUS_RATIO
from grasp_dl.membership.rules import MEMBER_THRESHOLD
from grasp_dl.models.start_pool import (
    POOL_KEY,
    pool_groups,
    restore_start_mixture,
    start_cluster_probability,
    start_cluster_probability_stars,
    start_pool_state,
    start_weight,
)
from grasp_dl.runtime.capabilities import FitsPositionModel, KeepsFitResults, LogsEpochMeans
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: Switches of the anchor (``model.anchor``) and their defaults (read-only).
ANCHOR_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"weight": 10.0, "min_agreement": 0.5, "max_drop": 0.1, "fallback": True, "pool": True}
)
#: Checkpoint key of the anchor's state (the start's membership, the drift guard's best state).
ANCHOR_KEY = "anchor_state"
#: The plausibility thresholds of the guards (members' median radius and proper-motion dispersion
#: against the other stars'), applied here to the start and the end of a deep phase.
RADIUS_RATIO_MAX = MAX_RADIUS_RATIO
PM_DISPERSION_RATIO_MAX = MAX_PM_DISPERSION_RATIO


def anchor_options(anchor: Mapping[str, Any] | None) -> dict[str, Any]:
    """``model.anchor`` merged over :data:`ANCHOR_DEFAULTS`.

    Parameters
    ----------
    anchor
        The user's settings (``weight`` >= 0, ``min_agreement`` and ``max_drop`` in [0, 1],
        ``fallback``, ``pool``: report the start's and the deep model's pooled cluster probability,
        :mod:`grasp_dl.models.start_pool`), or None.

    Returns
    -------
    dict
        Every setting, with plain Python types.

    Raises
    ------
    ConfigError
        On an unknown key or a value out of range.
    """
    given = dict(anchor or {})
    unknown = sorted(set(given) - set(ANCHOR_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown model.anchor option(s) {unknown}: choose from {', '.join(ANCHOR_DEFAULTS)}")
    out = {**ANCHOR_DEFAULTS, **given}
    out = {
        "weight": float(out["weight"]),
        "min_agreement": float(out["min_agreement"]),
        "max_drop": float(out["max_drop"]),
        "fallback": bool(out["fallback"]),
        "pool": bool(out["pool"]),
    }
    if out["weight"] < 0:
        raise ConfigError(f"model.anchor.weight must be >= 0 (0 switches the anchor term off), got {out['weight']}")
    for key in ("min_agreement", "max_drop"):
        if not 0.0 <= out[key] <= 1.0:
            raise ConfigError(f"model.anchor.{key} must be in [0, 1], got {out[key]}")
    return out


def membership_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """F1 agreement of two boolean memberships of the same stars (1 identical, 0 disjoint).

    Parameters
    ----------
    a, b
        Boolean member flags, one per star.

    Returns
    -------
    float
        2 |a & b| / (|a| + |b|); 1.0 when both are empty.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


@dataclass
class GroupCheck:
    """Whether a group looks like a cluster against the other stars (no truth used)."""

    n_members: int
    radius_ratio: float | None
    pm_dispersion_ratio: float | None
    mean_pmra: float | None
    mean_pmdec: float | None
    passes: bool
    reason: str = ""


def group_check(member_prob: np.ndarray, features: np.ndarray, feature_names: Sequence[str]) -> GroupCheck:
    """The plausibility guards of :func:`grasp_dl.membership.guards.check_plausibility` on a group, and its mean.

    One definition of "a cluster" for the whole package: the start and the end of a deep phase
    are judged by the same test (and thresholds) as the named cluster of a prediction.

    Parameters
    ----------
    member_prob
        Probability of the group, per star.
    features
        The stars' features in physical units (``xi``/``eta`` in degrees, ``pmra``/``pmdec``).
    feature_names
        Names of the feature columns.

    Returns
    -------
    GroupCheck
        ``radius_ratio`` = members' median radius / the other stars'; ``pm_dispersion_ratio`` =
        their proper-motion dispersion / the others'; ``passes`` = the guards' ``cluster_found``
        (enough members and other stars, radius ratio under :data:`RADIUS_RATIO_MAX`, dispersion
        ratio under :data:`PM_DISPERSION_RATIO_MAX`; a term the features cannot measure is left
        out) with its ``reason``. The mean proper motion is over the members (probability > 0.5),
        weighted by ``member_prob``.
    """
    from grasp_dl.membership.guards import check_features

    names = list(feature_names)
    prob = np.nan_to_num(np.asarray(member_prob, dtype=np.float64), nan=0.0)
    check = check_features(prob, features, names)
    diagnostics = check["diagnostics"]
    member = prob > MEMBER_THRESHOLD
    mean_pmra = mean_pmdec = None
    if "pmra" in names and "pmdec" in names and member.any():
        pm = np.asarray(features, dtype=np.float64)[:, [names.index("pmra"), names.index("pmdec")]]
        w = prob[member]
        mean_pmra, mean_pmdec = (float(v) for v in (w[:, None] * pm[member]).sum(0) / w.sum())
    return GroupCheck(
        int(diagnostics["n_members"]),
        diagnostics.get("radius_ratio"),
        diagnostics.get("pm_dispersion_ratio"),
        mean_pmra,
        mean_pmdec,
        bool(check["cluster_found"]),
        str(check["cluster_reason"]),
    )


@dataclass
class DriftReport:
    """The start's cluster group against the end's, and what was done about a drift."""

    start: GroupCheck
    end: GroupCheck
    start_group: int
    end_group: int
    agreement: float
    drifted: bool
    reason: str
    action: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for hparams, checkpoints and the JSON summary (``anchored``: True)."""
        return {"anchored": True, **asdict(self)}


def detect_drift(
    start_prob: np.ndarray,
    end_prob: np.ndarray,
    features: np.ndarray,
    feature_names: Sequence[str],
    min_agreement: float = ANCHOR_DEFAULTS["min_agreement"],
    start_group: int = 0,
    end_group: int = 0,
    best_agreement: float | None = None,
    max_drop: float = ANCHOR_DEFAULTS["max_drop"],
) -> DriftReport:
    """Has the cluster group drifted from the start? Compares memberships, no truth used.

    Parameters
    ----------
    start_prob, end_prob
        The start's and the end's probability of their cluster group, per star.
    features, feature_names
        The stars' features in physical units and their names (for :func:`group_check`).
    min_agreement
        Drifted when the F1 agreement of the two memberships is below this.
    start_group, end_group
        Which group each one names (reported only).
    best_agreement, max_drop
        Also drifted when the agreement has fallen more than ``max_drop`` below
        ``best_agreement``, the best an earlier state of the same model reached (None: not used).

    Returns
    -------
    DriftReport
        ``drifted`` with a one-line ``reason``. A start with no members anchors nothing and
        never counts as drifted.
    """
    start = group_check(start_prob, features, feature_names)
    end = group_check(end_prob, features, feature_names)
    agreement = membership_agreement(np.asarray(start_prob) > MEMBER_THRESHOLD, np.asarray(end_prob) > MEMBER_THRESHOLD)
    reasons = []
    if start.n_members == 0:
        return DriftReport(start, end, start_group, end_group, agreement, False, "the start has no cluster members")
    if agreement < min_agreement:
        reasons.append(f"its members agree with the start's at F1 {agreement:.2f} < {min_agreement:.2f}")
    if best_agreement is not None and agreement < best_agreement - max_drop:
        reasons.append(f"its agreement with the start fell from {best_agreement:.2f} to {agreement:.2f}")
    if start.passes and not end.passes:
        reasons.append("the start's group is a concentrated, proper-motion-tight cluster and the end's is not")
    return DriftReport(start, end, start_group, end_group, agreement, bool(reasons), "; ".join(reasons) or "kept")


class StartAnchor:
    """Mixin for clustering LightningModules: keep the start's cluster group (see the module doc).

    The host gives ``hparams.anchor`` (:func:`anchor_options`), ``hparams.cluster_group`` (the
    user's choice, never overridden), ``network_proba``, ``physical_features``, ``cluster_group``
    and a ``decided_group`` buffer. :meth:`setup_ingredients` remembers the start; the host adds
    :meth:`anchor_loss` to each step's loss and calls :meth:`guard_start` at every group decision.
    """

    _anchor_prob: Tensor | None = None
    _anchor_group: int = -1
    _best_state: dict[str, Tensor] | None = None
    _best_agreement: float | None = None
    _fell_back: bool = False

    def setup_ingredients(self, catalog: Any, resp: np.ndarray) -> None:
        """After the groups are initialised from ``resp``: the other ingredients, then the anchor."""
        super().setup_ingredients(catalog, resp)  # type: ignore[misc]
        features = getattr(catalog, "features", catalog)
        group = start_cluster_group(self, resp, features)
        check = group_check(np.asarray(resp)[:, group], *self.physical_features(features))
        if not check.passes:
            # Only a plausible start is worth keeping: anchoring a wrong group would hold on to it.
            self._anchor_prob = None
            self._results()["start_vs_end"] = {
                "anchored": False,
                "start_group": int(group),
                "start": asdict(check),
                "reason": "the start's cluster group is not a concentrated, proper-motion-tight group: nothing to keep",
            }
            self._results().pop(POOL_KEY, None)
            return
        self.set_anchor(resp, group)
        # The start mixture itself, for the pooled membership (models/start_pool.py), kept in the checkpoint.
        mixture = getattr(self, "xd_mixture_", None) if self.hparams.get("init") == "xd" else None
        pool = start_pool_state(mixture, group) if mixture is not None else None
        if pool is not None:
            self._results()[POOL_KEY] = pool
        else:
            self._results().pop(POOL_KEY, None)

    def set_anchor(self, start_prob: np.ndarray, start_group: int) -> None:
        """Remember the start: its cluster group, its probability per training star, the weights now.

        Parameters
        ----------
        start_prob
            The initial mixture's responsibilities, one row per training star.
        start_group
            The group of ``start_prob`` that is the cluster.
        """
        prob = np.asarray(start_prob, dtype=np.float32)[:, int(start_group)]
        self._anchor_prob = torch.as_tensor(prob, device=self.device)
        self._anchor_group = int(start_group)
        self._best_state = self._copy_state()
        if "initialized" in self._best_state:
            self._best_state["initialized"].fill_(True)  # the start is an initialised module
        self._best_agreement = None
        self._fell_back = False

    @torch.no_grad()
    def pooled_proba(self, x: Tensor, q: Tensor) -> Tensor:
        """``q`` with the cluster group's probability pooled with the start's (:mod:`grasp_dl.models.start_pool`).

        Parameters
        ----------
        x : Tensor
            Standardised features.
        q : Tensor
            The model's own group probabilities of ``x`` (:meth:`network_proba`).

        Returns
        -------
        Tensor
            ``q`` unchanged without a kept start, with ``model.anchor.pool`` off, when the named
            cluster group is not the start's, or when the start is error-aware (it needs each
            star's errors: :meth:`pooled_proba_stars`); else the pooled probabilities.
        """
        pool = self.pool_start(x) if len(q) else None
        if pool is None:
            return q
        pooled = pool_groups(q.detach().cpu().double().numpy(), self.cluster_group, *pool)
        return torch.as_tensor(pooled, dtype=q.dtype, device=q.device)

    def pool_start(self, x: Tensor, stars: Any = None) -> tuple[np.ndarray, float] | None:
        """The start's cluster probability of each star and its weight, as the reported membership pools them.

        Parameters
        ----------
        x : Tensor
            Standardised features of the stars.
        stars : StarData or None
            The same stars' astrometry, errors and radii; an error-aware start is scored with
            them, and without them it is not pooled (see :meth:`pooled_proba`).

        Returns
        -------
        tuple of (numpy.ndarray, float) or None
            The start's cluster probability per star (NaN where it cannot score a star: the
            network's is kept there) and the start's weight (:func:`start_weight`); None when the
            reported membership is the network's own for these inputs.
        """
        kept = self._kept_start()
        if kept is None:
            return None
        record, mixture = kept
        group = int(record["group"])
        if stars is not None:
            start = start_cluster_probability_stars(mixture, group, stars)
        elif record.get("use_errors"):
            # An error-aware start scored without the errors would call faint members field stars.
            return None
        else:
            start = start_cluster_probability(mixture, group, *self.physical_features(x))
        return None if start is None else (start, start_weight(record))

    def _kept_start(self) -> tuple[dict[str, Any], Any] | None:
        """The kept start record and its mixture when the pool applies to the named group, else None."""
        pool = self._results().get(POOL_KEY)
        if not pool or not anchor_options(self.hparams.get("anchor"))["pool"]:
            return None
        if self.cluster_group != int(pool["group"]):
            return None
        cached = getattr(self, "_start_mixture", None)
        if cached is None or cached[0] is not pool:
            cached = (pool, restore_start_mixture(pool))
            self._start_mixture = cached
        return cached

    @property
    def pool_uses_errors(self) -> bool:
        """Whether the reported membership pools with an error-aware start (predict with :meth:`pooled_proba_stars`)."""
        kept = self._kept_start()
        return bool(kept and kept[0].get("use_errors"))

    @torch.no_grad()
    def pooled_proba_stars(self, x: Tensor, stars: Any) -> Tensor:
        """Group probabilities with the cluster's pooled with the start's scored on each star's own errors.

        Parameters
        ----------
        x : Tensor
            Standardised features of the stars.
        stars : StarData
            The same stars' astrometry, error covariances and radii (in the same order).

        Returns
        -------
        Tensor
            Shape (n, n_clusters); the model's own probabilities when no start is kept.
        """
        q = self.network_proba(x)
        pool = self.pool_start(x, stars) if len(q) else None
        if pool is None:
            return q
        pooled = pool_groups(q.detach().cpu().double().numpy(), self.cluster_group, *pool)
        return torch.as_tensor(pooled, dtype=q.dtype, device=q.device)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the start and the drift guard's state with the checkpoint, so a resumed run carries on with them.

        The start's membership of the training stars, its group, the best-agreeing weights and
        their agreement exist only once the groups are initialised; a resumed run does not
        initialise again, so without them it would train without the anchor term.
        """
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        if self._anchor_prob is None:
            return
        checkpoint[ANCHOR_KEY] = {
            "prob": self._anchor_prob.detach().cpu(),
            "group": int(self._anchor_group),
            "best_state": None if self._best_state is None else {k: v.cpu() for k, v in self._best_state.items()},
            "best_agreement": self._best_agreement,
            "fell_back": bool(self._fell_back),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the start and the drift guard's state of :meth:`on_save_checkpoint` (none in older checkpoints)."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        state = checkpoint.get(ANCHOR_KEY)
        if not state:
            return
        self._anchor_prob = state["prob"].to(self.device)
        self._anchor_group = int(state["group"])
        best = state.get("best_state")
        self._best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self._best_agreement = None if state.get("best_agreement") is None else float(state["best_agreement"])
        self._fell_back = bool(state.get("fell_back", False))

    def _copy_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def _results(self) -> dict[str, Any]:
        return self.fit_results if isinstance(self, KeepsFitResults) else self.hparams

    def _name_group(self, group: int) -> None:
        self.decided_group.fill_(int(group))

    def anchor_loss(self, q: Tensor, index: Tensor) -> Tensor | None:
        """``weight`` x the cross-entropy of the anchor group's probability towards the start's.

        Parameters
        ----------
        q
            Group probabilities of a batch, (batch, n_clusters).
        index
            The batch's rows in the training split.

        Returns
        -------
        Tensor or None
            The weighted term (logged as ``train/anchor``), or None when the anchor is off or unset.
        """
        weight = anchor_options(self.hparams.get("anchor"))["weight"]
        if weight == 0 or self._anchor_prob is None:
            return None
        target = self._anchor_prob[index.to(self._anchor_prob.device)].to(q.device)
        p = q[:, self._anchor_group].float().clamp(1e-6, 1 - 1e-6)
        term = F.binary_cross_entropy(p, target.float())
        if isinstance(self, LogsEpochMeans):
            self.log_epoch_mean("train/anchor", term, len(q))
        return weight * term

    def _agreement_of_state(self, catalog: Tensor, start: np.ndarray) -> float:
        q = self.network_proba(catalog).cpu().numpy()[:, self._anchor_group]
        return membership_agreement(start > MEMBER_THRESHOLD, q > MEMBER_THRESHOLD)

    @torch.no_grad()
    def guard_start(self, catalog: Tensor, q: Tensor | None = None) -> DriftReport | None:
        """Compare the named cluster group with the start's; on a drift fall back and stop training.

        Parameters
        ----------
        catalog
            The training stars (standardised), in the order of the anchor; other stars are ignored.
        q
            Their group probabilities, if already computed.

        Returns
        -------
        DriftReport or None
            What was found (also in ``fit_results['start_vs_end']``); None without an anchor or
            for stars other than the training ones.
        """
        if self._anchor_prob is None or catalog is None or len(catalog) != len(self._anchor_prob):
            return None
        options = anchor_options(self.hparams.get("anchor"))
        features, names = self.physical_features(catalog)
        start = self._anchor_prob.cpu().numpy()
        if self._best_agreement is None and self._best_state is not None:
            current = self._copy_state()
            self.load_state_dict(self._best_state)
            self._best_agreement = self._agreement_of_state(catalog, start)
            self.load_state_dict(current)
        q = (self.network_proba(catalog) if q is None else q).cpu().numpy()
        group = self.cluster_group
        report = detect_drift(
            start,
            q[:, group],
            features,
            names,
            options["min_agreement"],
            self._anchor_group,
            group,
            self._best_agreement,
            options["max_drop"],
        )
        report.extra["best_agreement"] = self._best_agreement
        pool = self._results().get(POOL_KEY)
        report.extra["pooled_with_start"] = bool(pool) and options["pool"]
        if report.drifted and options["fallback"] and self.hparams.get("cluster_group") is None:
            report.action = self._fall_back(catalog, start, q, features, names, report)
            if not self._fell_back:
                log.warning("the cluster group drifted from the start (%s): %s", report.reason, report.action)
            self._fell_back = True
            self._stop_training()
        elif not report.drifted and group == self._anchor_group and report.agreement > (self._best_agreement or 0.0):
            self._best_state, self._best_agreement = self._copy_state(), report.agreement
        if pool:
            # how much say the deep model earns in the pool (start_pool.start_weight)
            pool["agreement"] = float(report.agreement)
            report.extra["start_weight"] = start_weight(pool)
        self._results()["start_vs_end"] = report.to_dict()
        return report

    def _stop_training(self) -> None:
        """Stop the fit, and freeze the weights for the steps Lightning still takes before it stops."""
        try:
            trainer = self.trainer
        except (RuntimeError, AttributeError):  # not attached to a Trainer (or not a LightningModule)
            return
        trainer.should_stop = True
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = 0.0

    def _fall_back(
        self,
        catalog: Tensor,
        start: np.ndarray,
        q: np.ndarray,
        features: np.ndarray,
        names: list[str],
        report: DriftReport,
    ) -> str:
        """Name the start's group again, or restore the best-agreeing weights; return what was done."""
        options = anchor_options(self.hparams.get("anchor"))
        anchor = self._anchor_group
        kept = detect_drift(
            start,
            q[:, anchor],
            features,
            names,
            options["min_agreement"],
            anchor,
            anchor,
            self._best_agreement,
            options["max_drop"],
        )
        if anchor != report.end_group and not kept.drifted:
            self._name_group(anchor)
            report.end, report.end_group, report.agreement = kept.end, anchor, kept.agreement
            self._refresh_position_model(catalog)
            return f"named the start's group {anchor} the cluster again and stopped training"
        if self._best_state is None or (self._best_agreement or 0.0) <= max(report.agreement, kept.agreement):
            pool = self._results().get(POOL_KEY)
            if pool and options["pool"]:
                # No state of the deep model agrees with the start: its opinion is not worth pooling.
                pool["start_only"] = True
                if anchor != report.end_group:
                    self._name_group(anchor)
                    report.end, report.end_group, report.agreement = kept.end, anchor, kept.agreement
                    self._refresh_position_model(catalog)
                return (
                    "no state of the deep model agrees with the start: the membership is the start's "
                    f"(group {anchor}) alone, training stopped"
                )
            return "kept the drifted group: no earlier state agrees better with the start"
        self.load_state_dict(self._best_state)
        q0 = self.network_proba(catalog).cpu().numpy()
        restored = detect_drift(start, q0[:, anchor], features, names, options["min_agreement"], anchor, anchor)
        self._name_group(anchor)
        report.extra["drifted_agreement"] = report.agreement
        report.end, report.end_group, report.agreement = restored.end, anchor, restored.agreement
        self._refresh_position_model(catalog)
        return (
            "restored the weights that agreed best with the start, named the start's group the cluster "
            "and stopped training"
        )

    def _refresh_position_model(self, catalog: Tensor) -> None:
        if isinstance(self, FitsPositionModel):
            self.fit_position_model(catalog, self.network_proba(catalog))


def start_cluster_group(module: Any, resp: np.ndarray, catalog: Tensor) -> int:
    """The start's cluster group: 0 for ``init='xd'`` (its cluster component), else the membership rule's.

    Parameters
    ----------
    module
        The clustering module (its ``hparams.init`` and ``physical_features``).
    resp
        The initial responsibilities of the training stars.
    catalog
        The training stars (standardised).

    Returns
    -------
    int
        The group of ``resp`` that is the cluster.
    """
    if module.hparams.get("init") == "xd":
        return 0
    from grasp_dl.membership.rules import choose_cluster_group

    return int(choose_cluster_group(resp, *module.physical_features(catalog)))


def describe_start_vs_end(report: Mapping[str, Any]) -> str:
    """One line for the train summary: the start's cluster group against the end's.

    Parameters
    ----------
    report
        ``hparams['start_vs_end']`` of a trained module (:meth:`DriftReport.to_dict`).

    Returns
    -------
    str
        Members and mean proper motion of both, their agreement, and what the anchor did.
    """

    if report.get("anchored") is False:
        return f"start vs end of the clustering phase: not anchored ({report['reason']})"

    def side(name: str, check: Mapping[str, Any]) -> str:
        pm = ""
        if check.get("mean_pmra") is not None:
            pm = f", mean pm ({check['mean_pmra']:.3f}, {check['mean_pmdec']:.3f}) mas/yr"
        return f"{name} {check['n_members']} members{pm}"

    line = (
        f"start vs end of the clustering phase: {side('start', report['start'])}; "
        f"{side('end', report['end'])}; agreement F1 {report['agreement']:.2f}"
    )
    if report.get("drifted"):
        line += f"; drifted ({report['reason']}): {report.get('action', 'none')}"
    if (report.get("extra") or {}).get("pooled_with_start"):
        line += "; member_prob pools the end's cluster probability with the start's (models/start_pool.py)"
    return line
