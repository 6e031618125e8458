"""The membership of an anchored deep model: its own cluster probability pooled with its start's.

``logit p = w logit s + (1 - w) logit q`` with ``w = 1 - a / 2``: s the start mixture's
probability, q the network's, a their F1 agreement on the training stars (:func:`start_weight`).
A logarithmic opinion pool: the start decides where it is confident, the network where the start
is unsure, and the evidence both saw is not counted twice. The start is kept in the checkpoint
(``fit_results['start_pool']``); an error-aware start is scored with each star's own errors
where the catalogue rows are at hand. Why and how: ``docs/src/models.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from grasp_dl.data.astrometry import StarData

#: fit_results key of the start mixture kept for the pool.
POOL_KEY = "start_pool"
#: Probabilities are clipped to [EPS, 1 - EPS] before taking log-odds.
EPS = 1e-9
#: The kind of the kept start of the second mixture that the one mixture replaced.
RETIRED_KIND = "spatial_deconvolved"


def start_pool_state(mixture: Any, group: int) -> dict[str, Any] | None:
    """What a checkpoint needs to score stars with the start mixture later (plain types).

    Parameters
    ----------
    mixture : ClusterFieldMixture
        The fitted start of ``init='xd'``.
    group : int
        Its cluster component.

    Returns
    -------
    dict or None
        ``kind``, ``settings``, ``state``, ``group`` and ``use_errors`` (whether the start scores
        stars with their errors, so a prediction should give them); None for a start that cannot score stars
        from their features (one fitted with photometry) or another kind of object.
    """
    from grasp_dl.mixtures.cluster_field import ClusterFieldMixture

    if not isinstance(mixture, ClusterFieldMixture) or mixture.photometry:
        return None
    settings = {
        "crowding": mixture.crowding,
        "dispersion_profile": mixture.dispersion_profile,
        "free_slope": mixture.free_slope,
    }
    # the ablation switches only when off, so a default start's record is what it always was
    if not mixture.spatial:
        settings["spatial"] = False
    if not mixture.use_errors:
        settings["use_errors"] = False
    return {
        "kind": "cluster_field",
        "settings": settings,
        "state": mixture.state_dict(),
        "group": int(group),
        "use_errors": mixture.use_errors,
    }


def restore_start_mixture(pool: Mapping[str, Any]) -> Any:
    """The fitted start mixture of a :func:`start_pool_state` record.

    Parameters
    ----------
    pool : mapping
        The record.

    Returns
    -------
    ClusterFieldMixture

    Raises
    ------
    ValueError
        For an unknown kind, or a start of the retired second mixture (``spatial_deconvolved``):
        its full-covariance cluster has no exact counterpart in the one mixture, so the message
        says to retrain.
    """
    from grasp_dl.mixtures.cluster_field import ClusterFieldMixture

    if pool["kind"] == "cluster_field":
        return ClusterFieldMixture(**pool["settings"]).load_state_dict(dict(pool["state"]))
    if pool["kind"] == RETIRED_KIND:
        raise ValueError(
            f"this checkpoint's start mixture is of the retired kind {RETIRED_KIND!r} (an ablation start of "
            "model.xd.spatial/use_errors/photometry from an older grasp-dl), which this version cannot score: "
            "retrain the model with this version (grasp-dl train ...)"
        )
    raise ValueError(f"unknown start mixture kind {pool['kind']!r}")


def _astrometry_dim(mixture: Any) -> int:
    return int(np.shape(mixture.cluster_mean_)[0])


def start_cluster_probability(mixture: Any, group: int, values: np.ndarray, names: Sequence[str]) -> np.ndarray | None:
    """The start's cluster probability of stars given by their physical features, errors taken as 0.

    Parameters
    ----------
    mixture : ClusterFieldMixture
        The fitted start.
    group : int
        Its cluster component.
    values : numpy.ndarray
        (n, d) physical features (``xi``/``eta`` in degrees, ``pmra``, ``pmdec``[, ``parallax``]).
    names : sequence of str
        Their names.

    Returns
    -------
    numpy.ndarray or None
        (n,) probabilities; None when the features lack what the start was fitted on.
    """
    names = list(names)
    d = _astrometry_dim(mixture)
    columns = ["pmra", "pmdec", "parallax"][:d]
    if any(c not in names for c in columns) or "xi" not in names or "eta" not in names:
        return None
    values = np.asarray(values, float)
    astrometry = values[:, [names.index(c) for c in columns]]
    radius = np.hypot(values[:, names.index("xi")], values[:, names.index("eta")])
    stars = StarData(astrometry, np.zeros((len(values), d, d)), radius)
    return start_cluster_probability_stars(mixture, group, stars)


def start_cluster_probability_stars(mixture: Any, group: int, stars: StarData) -> np.ndarray:
    """The start's cluster probability of stars with their own errors.

    Parameters
    ----------
    mixture : ClusterFieldMixture
        The fitted start.
    group : int
        Its cluster component.
    stars : StarData
        Astrometry (the columns the start was fitted on), error covariances and radii.

    Returns
    -------
    numpy.ndarray
        (n,) probabilities.
    """
    return np.asarray(mixture.predict_proba(stars), float)[:, int(group)]


def log_odds(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(p, float), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def start_weight(pool: Mapping[str, Any]) -> float:
    """The start's weight in the pool: 1 - agreement / 2, and 1 once no state of the deep model agreed with it.

    ``agreement`` is the F1 agreement of the deep model's members with the start's on the
    training stars at the last decision (:mod:`grasp_dl.models.anchoring`): a deep model that
    keeps the start's confident members earns an equal say (agreement 1: weight 1/2), one that
    lost them earns less, down to none (agreement 0, or ``start_only``: weight 1). No free
    parameter; a record without an agreement pools with equal weights.

    Parameters
    ----------
    pool : mapping
        The kept start record (:func:`start_pool_state`).

    Returns
    -------
    float
        In [1/2, 1].
    """
    if pool.get("start_only"):
        return 1.0
    agreement = float(np.clip(pool.get("agreement", 1.0), 0.0, 1.0))
    return 1.0 - 0.5 * agreement


def pool_cluster_probability(start: np.ndarray, network: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Logarithmic opinion pool of two cluster probabilities (see the module doc).

    Parameters
    ----------
    start, network : numpy.ndarray
        (n,) the start's and the deep model's probability of the cluster.
    weight : float
        The start's weight in [0, 1] (1/2: equal weights).

    Returns
    -------
    numpy.ndarray
        (n,) ``sigmoid(weight logit start + (1 - weight) logit network)``; a NaN in ``start``
        keeps ``network``.
    """
    start = np.asarray(start, float)
    network = np.asarray(network, float)
    pooled = 1.0 / (1.0 + np.exp(-(weight * log_odds(start) + (1.0 - weight) * log_odds(network))))
    return np.where(np.isfinite(start), pooled, network)


def pool_groups(q: np.ndarray, group: int, start: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Group probabilities with the cluster group's replaced by the pool; the others share the rest.

    Parameters
    ----------
    q : numpy.ndarray
        (n, k) the deep model's group probabilities.
    group : int
        The cluster group.
    start : numpy.ndarray
        (n,) the start's cluster probability.
    weight : float
        The start's weight in the pool.

    Returns
    -------
    numpy.ndarray
        (n, k), rows sum to 1: column ``group`` the pool, the other columns in the deep model's
        proportions (evenly where it gave them nothing).
    """
    q = np.asarray(q, float)
    k = q.shape[1]
    pooled = pool_cluster_probability(start, q[:, group], weight)
    others = np.delete(q, group, axis=1)
    total = others.sum(axis=1, keepdims=True)
    share = np.where(total > 0, others / np.where(total > 0, total, 1.0), 1.0 / max(k - 1, 1))
    out = np.empty_like(q)
    out[:, group] = pooled
    out[:, [j for j in range(k) if j != group]] = share * (1.0 - pooled)[:, None]
    return out


def describe_pool(pool: Mapping[str, Any] | None) -> str | None:
    """One line for summaries: how member_prob was formed (None without a pool)."""
    if not pool:
        return None
    return (
        f"member_prob is the equal-weight logarithmic pool of the deep model's and its start's "
        f"({pool['kind']} mixture, component {pool['group']}) cluster probabilities"
    )


__all__ = [
    "POOL_KEY",
    "describe_pool",
    "log_odds",
    "pool_cluster_probability",
    "pool_groups",
    "restore_start_mixture",
    "start_cluster_probability",
    "start_cluster_probability_stars",
    "start_pool_state",
    "start_weight",
]
