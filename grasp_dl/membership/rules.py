"""Which group is the globular cluster, member probabilities, and the cluster's summary.

A globular cluster is the group most concentrated on the sky around the centre and tightest in
proper motion. For each group with enough stars,

    score = log(median radius of the group / median radius of all stars)
          + 0.5 * log(det cov(pmra, pmdec) of the group / det of all stars)

and the lowest score wins among the groups that pass the plausibility guards of
:mod:`grasp_dl.membership.guards`; when none passes, the run reports ``cluster_found: false``.
A background galaxy is tight in proper motion but spread over the cone, the field is neither,
tidal tails are less of both. A term whose features are missing (position or proper motion) is
left out; with neither, the group of smallest feature-space volume wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.membership.guards import MEMBER_THRESHOLD, check_features

#: A group needs at least this many stars (and this share of the catalogue) to be named the cluster.
MIN_GROUP_STARS = 5
MIN_GROUP_SHARE = 0.002
#: The plausibility guards of the decision look at most this many stars (a fixed random subset).
GUARD_SAMPLE = 100_000


def _log_det_cov(values: np.ndarray) -> float:
    cov = np.atleast_2d(np.cov(values, rowvar=False))
    sign, logdet = np.linalg.slogdet(cov + 1e-12 * np.eye(len(cov)))
    return float(logdet) if sign > 0 else -np.inf


def cluster_scores(labels: np.ndarray, features: np.ndarray, feature_names: Sequence[str], n_groups: int) -> np.ndarray:
    """Score of every group (lower = more cluster-like); groups too small to judge get +inf."""
    names = list(feature_names)
    labels = np.asarray(labels)
    features = np.asarray(features, dtype=np.float64)
    has_sky = "xi" in names and "eta" in names
    has_pm = "pmra" in names and "pmdec" in names
    radius = np.hypot(features[:, names.index("xi")], features[:, names.index("eta")]) if has_sky else None
    pm = features[:, [names.index("pmra"), names.index("pmdec")]] if has_pm else None
    min_size = max(MIN_GROUP_STARS, int(MIN_GROUP_SHARE * len(labels)))
    scores = np.full(n_groups, np.inf)
    for j in range(n_groups):
        members = labels == j
        if members.sum() < min_size:
            continue
        score = 0.0
        if has_sky:
            score += np.log(np.median(radius[members]) + 1e-9) - np.log(np.median(radius) + 1e-9)
        if has_pm:
            score += 0.5 * (_log_det_cov(pm[members]) - _log_det_cov(pm))
        if not (has_sky or has_pm):
            score = _log_det_cov(features[members]) - _log_det_cov(features)
        scores[j] = score
    return scores


def decide_cluster_group(
    prob: np.ndarray, features: np.ndarray, feature_names: Sequence[str]
) -> tuple[int, dict[str, Any]]:
    """The group that is the globular cluster, and the plausibility verdict on it.

    Among the groups that pass the plausibility guards (:mod:`grasp_dl.membership.guards`:
    concentrated on the sky against the other stars and tighter than them in proper motion), the
    one of lowest :func:`cluster_scores` wins. When none passes, the best-scoring group is still
    returned (a module needs a group to score against) with ``cluster_found`` False in the verdict.

    Parameters
    ----------
    prob : numpy.ndarray
        (n, k) group probabilities of n stars.
    features : numpy.ndarray
        (n, d) physical features of the stars.
    feature_names : sequence of str
        Their names (xi, eta, pmra, pmdec, ...).

    Returns
    -------
    group : int
    check : dict
        :func:`~grasp_dl.membership.guards.check_plausibility`'s answer for that group.
    """
    prob = np.asarray(prob)
    scores = cluster_scores(prob.argmax(axis=1), features, feature_names, prob.shape[1])
    if not np.isfinite(scores).any():
        # Every group is too small to judge (a tiny catalogue): take the smallest non-empty one.
        sizes = np.bincount(prob.argmax(axis=1), minlength=prob.shape[1]).astype(float)
        sizes[sizes == 0] = np.inf
        group = int(np.argmin(sizes))
        return group, check_features(prob[:, group], features, feature_names)
    ranked = [int(j) for j in np.argsort(scores, kind="stable") if np.isfinite(scores[j])]
    # The guards judge medians and dispersions: a fixed random subset of a large catalogue is as good and bounded.
    rows = slice(None)
    if len(prob) > GUARD_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(len(prob), GUARD_SAMPLE, replace=False))
    checks = {}
    for j in ranked:
        checks[j] = check_features(prob[rows, j], np.asarray(features)[rows], feature_names)
        if checks[j]["cluster_found"]:
            return j, checks[j]
    return ranked[0], checks[ranked[0]]


def choose_cluster_group(prob: np.ndarray, features: np.ndarray, feature_names: Sequence[str]) -> int:
    """Index of the group that is the globular cluster (:func:`decide_cluster_group`'s group).

    Parameters
    ----------
    prob : numpy.ndarray
        (n, k) group probabilities.
    features : numpy.ndarray
        (n, d) physical features.
    feature_names : sequence of str
        Their names.

    Returns
    -------
    int
    """
    return decide_cluster_group(prob, features, feature_names)[0]


def entropy(prob: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of group probabilities: 0 certain, log(k) undecided."""
    prob = np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1.0)
    return -(prob * np.log(prob)).sum(axis=1)


class ClusterSummary:
    """Members and mean astrometry of the cluster, accumulated chunk by chunk (plain types, for JSON).

    The means are over the stars with member_prob > 0.5 (the small probabilities of thousands of
    field stars would pull them towards the field), weighted by member_prob and, where the error
    column exists, by 1 / (intrinsic spread^2 + error^2), so that faint, likely interlopers count
    less. Each mean has its standard error, sqrt(sum w^2 (v - mean)^2) / sum w; running sums keep
    memory bounded for any catalogue size.
    """

    COLUMNS = ("pmra", "pmdec", "parallax")
    #: Intrinsic spread of the members (mas/yr, mas) added to each star's measurement error in the
    #: weights: a cluster's internal dispersion is ~0.1-0.5 mas/yr, so a 0.02 mas/yr star does not
    #: outweigh a 0.2 mas/yr one a hundredfold, while a 1 mas/yr faint star (most likely a field
    #: interloper among the members) counts ~25 times less than a bright one.
    INTRINSIC_SPREAD = {"pmra": 0.2, "pmdec": 0.2, "parallax": 0.02}

    def __init__(self, center: Sequence[float] | None, cluster_group: int) -> None:
        self.center = center
        self.cluster_group = int(cluster_group)
        self.n_rows = self.n_scored = self.n_members = 0
        self.sum_member_prob = 0.0
        self.not_scored: dict[str, int] = {}
        # per column: sum w, sum w v, sum w^2, sum w^2 v, sum w^2 v^2
        self._sums: dict[str, np.ndarray] = {}

    def update(self, predictions: pd.DataFrame, catalog: pd.DataFrame) -> None:
        """Add a chunk: its predictions and the catalogue rows they belong to, in the same order."""
        weights = np.nan_to_num(predictions["member_prob"].to_numpy(dtype=float), nan=0.0)
        member_weights = np.where(weights > MEMBER_THRESHOLD, weights, 0.0)
        scored = predictions["label"].to_numpy() >= 0
        self.n_rows += len(predictions)
        self.n_scored += int(scored.sum())
        self.n_members += int((weights > MEMBER_THRESHOLD).sum())
        self.sum_member_prob += float(weights.sum())
        if "flag" in predictions.columns:
            for flag, count in predictions.loc[~scored, "flag"].value_counts().items():
                self.not_scored[str(flag)] = self.not_scored.get(str(flag), 0) + int(count)
        for column in self.COLUMNS:
            if column not in catalog.columns:
                continue
            values = catalog[column].to_numpy(dtype=float, na_value=np.nan)
            weights_here = member_weights
            if f"{column}_error" in catalog.columns:
                error = catalog[f"{column}_error"].to_numpy(dtype=float, na_value=np.nan)
                inverse_variance = 1.0 / (self.INTRINSIC_SPREAD[column] ** 2 + np.nan_to_num(error, nan=np.inf) ** 2)
                weights_here = member_weights * inverse_variance
            ok = np.isfinite(values) & (weights_here > 0)
            v, w = values[ok], weights_here[ok]
            sums = np.array([w.sum(), (w * v).sum(), (w**2).sum(), (w**2 * v).sum(), (w**2 * v**2).sum()])
            self._sums[column] = self._sums.get(column, 0.0) + sums

    def result(self) -> dict[str, Any]:
        """The summary as a plain dictionary."""
        summary: dict[str, Any] = {
            "cluster_group": self.cluster_group,
            "n_rows": self.n_rows,
            "n_scored": self.n_scored,
            "n_members": self.n_members,
            "sum_member_prob": self.sum_member_prob,
            "center": [float(c) for c in self.center] if self.center is not None else None,
        }
        for column, (s_w, s_wv, s_w2, s_w2v, s_w2v2) in self._sums.items():
            if s_w > 0:
                mean = s_wv / s_w
                spread = max(s_w2v2 - 2.0 * mean * s_w2v + mean**2 * s_w2, 0.0)
                summary[f"mean_{column}"], summary[f"mean_{column}_error"] = float(mean), float(np.sqrt(spread) / s_w)
            else:
                summary[f"mean_{column}"] = summary[f"mean_{column}_error"] = float("nan")
        if self.not_scored:
            summary["not_scored"] = dict(self.not_scored)
        return summary


#: Summary keys of a model's own fitted cluster astrometry (model=xd's mixture component) and the column they give.
MODEL_MEAN_KEYS = {"pmra": "xd_mean_pmra", "pmdec": "xd_mean_pmdec", "parallax": "xd_mean_parallax"}


def adopt_model_mean(summary: dict[str, Any], model_group: int = 0) -> dict[str, Any]:
    """Report the model's own fitted cluster mean, where it has one, as the cluster's mean.

    A mixture that models cluster and field together (model=xd) estimates the cluster's mean by
    maximum likelihood over every star, each counted by its membership and own error, with the
    contaminants explained by the field components; the members' average treats every member as a
    cluster star and every error as right. The members' average stays as ``mean_<column>_members``.
    Where the model gives its mean's robust standard error (``xd_mean_<column>_error``) it becomes
    ``mean_<column>_error`` and the members' moves to ``mean_<column>_error_members``.
    ``mean_source`` says which is reported. The comparison on real and simulated fields is in
    ``docs/src/trust.md``.

    Parameters
    ----------
    summary : dict
        A cluster summary (:class:`ClusterSummary`) with the model's astrometry added (``xd_mean_*``).
    model_group : int
        The group the model's fitted mean belongs to (model=xd: 0, its cluster component); a
        summary of another group (the user's ``cluster_group``) keeps the members' average.

    Returns
    -------
    dict
        ``summary``, changed in place.
    """
    adopted = False
    for column, key in MODEL_MEAN_KEYS.items():
        if summary.get("cluster_group", model_group) != model_group:
            break
        value = summary.get(key)
        if value is not None and np.isfinite(value) and f"mean_{column}" in summary:
            summary[f"mean_{column}_members"] = summary[f"mean_{column}"]
            summary[f"mean_{column}"] = float(value)
            adopted = True
            error = summary.get(f"{key}_error")
            if error is not None and np.isfinite(error):
                summary[f"mean_{column}_error_members"] = summary.get(f"mean_{column}_error", float("nan"))
                summary[f"mean_{column}_error"] = float(error)
    summary["mean_source"] = "model" if adopted else "members"
    return summary


def cluster_summary(
    predictions: pd.DataFrame, catalog: pd.DataFrame, center: Sequence[float] | None, cluster_group: int
) -> dict[str, Any]:
    """Members and mean astrometry of the cluster from a whole predictions table (see :class:`ClusterSummary`)."""
    summary = ClusterSummary(center, cluster_group)
    summary.update(predictions, catalog)
    return summary.result()
