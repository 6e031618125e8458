"""Clustering, membership and calibration metrics for benchmarks against a known truth.

Every score comes from scikit-learn, scipy or numpy except Davies-Bouldin and Calinski-Harabasz
(torchmetrics): torchmetrics' ARI overflows on catalogue-sized inputs, its information scores
lose precision in float32, and its calibration error bins p == 1 apart from the textbook 15 bins.
Read score directions from :data:`HIGHER_IS_BETTER`, not from torchmetrics' own attributes.
The checks behind these choices are in ``docs/src/trust.md`` ("The metrics' libraries").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from torchmetrics.functional.clustering import calinski_harabasz_score, davies_bouldin_score

from grasp_dl.membership.rules import MEMBER_THRESHOLD
from grasp_dl.runtime.errors import ConfigError

#: Predicted label of a row that was not scored (failed cuts, no prediction).
UNSCORED = -1
#: Number of equal-width bins of the expected calibration error and the reliability curve.
N_CALIBRATION_BINS = 15

#: Whether a larger value is better, for every score evaluate_clustering returns.
#: Callers (hyper-parameter searches) should use this, never torchmetrics' own flags.
HIGHER_IS_BETTER: dict[str, bool] = {
    "ari": True,
    "nmi": True,
    "ami": True,
    "homogeneity": True,
    "completeness": True,
    "v_measure": True,
    "accuracy": True,
    "member_precision": True,
    "member_recall": True,
    "member_f1": True,
    "member_f1_oracle": True,
    "brier": False,
    "ece": False,
    "silhouette": True,
    "davies_bouldin": False,
    "calinski_harabasz": True,
}
#: Keys evaluate_clustering returns that are counts or ids, not scores (no direction).
INFO_KEYS: frozenset[str] = frozenset(
    {"n_scored", "n_unscored", "n_true_members", "n_predicted_members", "member_group_oracle"}
)
PARTITION_KEYS = ("ari", "nmi", "ami", "homogeneity", "completeness", "v_measure", "accuracy")
INTERNAL_KEYS = ("silhouette", "davies_bouldin", "calinski_harabasz")


# ----------------------------------------------------------------------------- input checks


def _to_numpy(values: Any) -> np.ndarray:
    """Any array-like (list, numpy, pandas, torch on any device) as a numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _as_1d(values: Any, name: str) -> np.ndarray:
    """A non-empty 1-D numpy array, or ConfigError naming the argument."""
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ConfigError(f"{name} must be 1-D (one value per star), got shape {array.shape}")
    if array.size == 0:
        raise ConfigError(f"{name} is empty: there is nothing to evaluate")
    return array


def _check_length(name: str, array: np.ndarray, n_rows: int, reference: str = "true_labels") -> None:
    """Raise ConfigError unless array has n_rows rows, naming both lengths."""
    if len(array) != n_rows:
        raise ConfigError(
            f"{name} has {len(array)} rows but {reference} has {n_rows}: pass one value per star, in the same row order"
        )


def _as_truth(true_labels: Any) -> np.ndarray:
    """True labels as a 1-D array; mixed-type object arrays become strings."""
    truth = _as_1d(true_labels, "true_labels")
    return truth.astype(str) if truth.dtype.kind == "O" else truth


def _as_predicted(predicted_labels: Any, n_rows: int) -> np.ndarray:
    """Predicted labels as int64 (>= 0 or UNSCORED), or ConfigError."""
    pred = _as_1d(predicted_labels, "predicted_labels")
    _check_length("predicted_labels", pred, n_rows)
    if pred.dtype.kind == "f":
        if not np.all(np.isfinite(pred)) or not np.all(pred == np.round(pred)):
            raise ConfigError("predicted_labels must be integers (use -1 for rows that were not scored)")
    elif pred.dtype.kind not in "iu":
        raise ConfigError(f"predicted_labels must be integers, got dtype {pred.dtype}")
    pred = pred.astype(np.int64)
    if np.any(pred < UNSCORED):
        raise ConfigError(f"predicted_labels holds {int(pred.min())}: group ids are >= 0, and -1 means 'not scored'")
    return pred


def _as_data(data: Any, n_rows: int, scored: np.ndarray) -> np.ndarray:
    """Feature matrix as float64 (stars x features), finite on the scored rows."""
    array = _to_numpy(data).astype(np.float64)
    if array.ndim != 2:
        raise ConfigError(f"data must be 2-D (stars x features), got shape {array.shape}")
    _check_length("data", array, n_rows)
    bad = scored & ~np.all(np.isfinite(array), axis=1)
    if bad.any():
        raise ConfigError(
            f"data has non-finite values in {int(bad.sum())} scored rows: "
            "mark those rows -1 in predicted_labels or pass the prepared (finite) features"
        )
    return array


def _as_member_flags(predicted_member: Any, n_rows: int) -> np.ndarray:
    """Boolean predicted-member flags, or ConfigError."""
    flags = _as_1d(predicted_member, "predicted_member")
    _check_length("predicted_member", flags, n_rows)
    if flags.dtype.kind != "b" and not np.isin(flags, (0, 1)).all():
        raise ConfigError("predicted_member must be boolean (True for a predicted cluster member)")
    return flags.astype(bool)


def _as_member_prob(member_prob: Any, n_rows: int, scored: np.ndarray) -> np.ndarray:
    """Member probabilities as float64, finite and in [0, 1] on the scored rows."""
    prob = _as_1d(member_prob, "member_prob").astype(np.float64)
    _check_length("member_prob", prob, n_rows)
    values = prob[scored]
    if not np.all(np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise ConfigError("member_prob must be finite and within [0, 1] on every scored row")
    return prob


def _member_mask(truth: np.ndarray, member_label: Any) -> np.ndarray:
    """Rows whose true label is member_label (strings compared as strings)."""
    if truth.dtype.kind in "US" or isinstance(member_label, str):
        return truth.astype(str) == str(member_label)
    return truth == member_label


# ----------------------------------------------------------------------------- partition scores


def _contingency(true_idx: np.ndarray, pred_idx: np.ndarray) -> np.ndarray:
    """Counts table (classes x groups) of two contiguous int labelings."""
    n_classes, n_groups = int(true_idx.max()) + 1, int(pred_idx.max()) + 1
    flat = np.bincount(true_idx * n_groups + pred_idx, minlength=n_classes * n_groups)
    return flat.reshape(n_classes, n_groups)


def hungarian_accuracy(true_labels: Any, predicted_labels: Any) -> float:
    """Fraction of rows right after the best one-to-one matching of groups to classes.

    Parameters
    ----------
    true_labels : array_like
        The true class of each row (any hashable values).
    predicted_labels : array_like
        The predicted group of each row, same length.

    Returns
    -------
    float
        In [0, 1]; rows of groups or classes left unmatched count as wrong.

    Raises
    ------
    ConfigError
        If the labels are empty, not 1-D or of different lengths.
    """
    true_idx = np.unique(_as_1d(true_labels, "true_labels"), return_inverse=True)[1].ravel()
    pred = _as_1d(predicted_labels, "predicted_labels")
    _check_length("predicted_labels", pred, len(true_idx))
    table = _contingency(true_idx, np.unique(pred, return_inverse=True)[1].ravel())
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(true_idx))


def partition_scores(true_labels: Any, predicted_labels: Any) -> dict[str, float]:
    """ARI, NMI, AMI, homogeneity, completeness, V-measure and Hungarian accuracy.

    Parameters
    ----------
    true_labels : array_like
        The true class of each row (any hashable values).
    predicted_labels : array_like
        The predicted group of each row, same length.

    Returns
    -------
    dict of str to float
        The keys of :data:`PARTITION_KEYS`.

    Raises
    ------
    ConfigError
        If the labels are empty, not 1-D or of different lengths.
    """
    true_idx = np.unique(_as_1d(true_labels, "true_labels"), return_inverse=True)[1].ravel()
    pred_idx = np.unique(_as_1d(predicted_labels, "predicted_labels"), return_inverse=True)[1].ravel()
    _check_length("predicted_labels", pred_idx, len(true_idx))
    homogeneity, completeness, v_measure = skm.homogeneity_completeness_v_measure(true_idx, pred_idx)
    return {
        "ari": float(skm.adjusted_rand_score(true_idx, pred_idx)),
        "nmi": float(skm.normalized_mutual_info_score(true_idx, pred_idx)),
        "ami": float(skm.adjusted_mutual_info_score(true_idx, pred_idx)),
        "homogeneity": float(homogeneity),
        "completeness": float(completeness),
        "v_measure": float(v_measure),
        "accuracy": hungarian_accuracy(true_idx, pred_idx),
    }


# ----------------------------------------------------------------------------- internal scores


def _valid_group_count(labels: np.ndarray, what: str) -> bool:
    """Whether labels have 2 <= groups <= rows - 1; warn (and say which score) when not."""
    n_groups = len(np.unique(labels))
    if 2 <= n_groups <= len(labels) - 1:
        return True
    warnings.warn(
        f"{what} needs 2 to n-1 groups among the scored rows, got {n_groups} group(s) in "
        f"{len(labels)} rows: reported as NaN",
        UserWarning,
        stacklevel=4,
    )
    return False


def _silhouette(data: np.ndarray, labels: np.ndarray, sample: int, random_state: int | None) -> float:
    """Silhouette on a random subsample of at most `sample` rows (NaN if < 2 groups in it)."""
    rows = np.arange(len(labels))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(random_state).choice(len(rows), size=sample, replace=False))
    # Subsampled here, not through sklearn's sample_size, so the group count is checked on the subsample.
    if not _valid_group_count(labels[rows], "silhouette"):
        return math.nan
    return float(skm.silhouette_score(data[rows], labels[rows]))


def internal_scores(
    data: Any, labels: Any, *, silhouette_sample: int = 5000, random_state: int | None = 0
) -> dict[str, float]:
    """Silhouette (subsampled), Davies-Bouldin and Calinski-Harabasz of ``labels`` on ``data``.

    Parameters
    ----------
    data : array_like
        Stars x features (numpy array or tensor).
    labels : array_like
        The group of each row.
    silhouette_sample : int, default 5000
        The silhouette is computed on at most this many random rows (it is quadratic in rows).
    random_state : int, optional
        Seed of that subsample.

    Returns
    -------
    dict of str to float
        The keys of :data:`INTERNAL_KEYS`; all NaN, with a warning, unless there are 2 to n-1 groups.

    Raises
    ------
    ConfigError
        If ``data`` is not 2-D, the lengths differ, or ``silhouette_sample`` is not an integer >= 2.
    """
    if not isinstance(silhouette_sample, (int, np.integer)) or silhouette_sample < 2:
        raise ConfigError(f"silhouette_sample must be an integer >= 2, got {silhouette_sample!r}")
    features = _to_numpy(data).astype(np.float64)
    label_idx = np.unique(_as_1d(labels, "labels"), return_inverse=True)[1].ravel()
    if features.ndim != 2:
        raise ConfigError(f"data must be 2-D (stars x features), got shape {features.shape}")
    _check_length("data", features, len(label_idx), reference="labels")
    if not _valid_group_count(label_idx, "silhouette, davies_bouldin and calinski_harabasz"):
        return dict.fromkeys(INTERNAL_KEYS, math.nan)
    x, y = torch.from_numpy(features), torch.from_numpy(label_idx)
    return {
        "silhouette": _silhouette(features, label_idx, int(silhouette_sample), random_state),
        "davies_bouldin": float(davies_bouldin_score(x, y)),
        "calinski_harabasz": float(calinski_harabasz_score(x, y)),
    }


# ----------------------------------------------------------------------------- calibration


def _as_prob_outcome(prob: Any, outcome: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities in [0, 1] and 0/1 outcomes of the same length as float64 arrays."""
    p = _to_numpy(prob).astype(np.float64).ravel()
    y = _to_numpy(outcome).ravel()
    if len(p) != len(y):
        raise ConfigError(f"prob has {len(p)} rows but outcome has {len(y)}: pass one of each per star")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ConfigError("prob must be finite and within [0, 1]")
    if y.dtype.kind != "b" and not np.isin(y, (0, 1)).all():
        raise ConfigError("outcome must be boolean or 0/1")
    return p, y.astype(np.float64)


def _bin_sums(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin [k/n, (k+1)/n) (p == 1 in the last): counts, sum of p, sum of y."""
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    return counts, np.bincount(index, p, minlength=n_bins), np.bincount(index, y, minlength=n_bins)


def reliability_curve(
    prob: Any, outcome: Any, n_bins: int = N_CALIBRATION_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reliability diagram's data: per equal-width probability bin, how often the outcome happened.

    Parameters
    ----------
    prob : array_like
        Predicted probabilities in [0, 1], one per star.
    outcome : array_like
        What happened: boolean or 0/1, same length.
    n_bins : int, default 15
        Number of equal-width bins over [0, 1] (p == 1 falls in the last).

    Returns
    -------
    centers : numpy.ndarray
        Bin centres.
    observed : numpy.ndarray
        Observed frequency of the outcome per bin (NaN in empty bins).
    counts : numpy.ndarray
        Stars per bin.

    Raises
    ------
    ConfigError
        If the lengths differ, a probability is not finite or outside [0, 1], or an outcome is not 0/1, or
        ``n_bins`` is not a positive integer.
    """
    p, y = _as_prob_outcome(prob, outcome)
    counts, _, hits = _bin_sums(p, y, n_bins)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return centers, observed, counts


def expected_calibration_error(prob: Any, outcome: Any, n_bins: int = N_CALIBRATION_BINS) -> float:
    """Expected calibration error: count-weighted mean over bins of |observed frequency - mean probability|.

    Parameters
    ----------
    prob : array_like
        Predicted probabilities in [0, 1], one per star.
    outcome : array_like
        What happened: boolean or 0/1, same length.
    n_bins : int, default 15
        Number of equal-width bins over [0, 1].

    Returns
    -------
    float
        In [0, 1], 0 for perfect calibration; NaN for no stars.

    Raises
    ------
    ConfigError
        If the lengths differ, a probability is not finite or outside [0, 1], or an outcome is not 0/1, or
        ``n_bins`` is not a positive integer.
    """
    p, y = _as_prob_outcome(prob, outcome)
    if len(p) == 0:
        return math.nan
    _, prob_sum, hits = _bin_sums(p, y, n_bins)
    return float(np.abs(hits - prob_sum).sum() / len(p))


def brier_score(prob: Any, outcome: Any) -> float:
    """Brier score: mean squared difference between probability and 0/1 outcome.

    Parameters
    ----------
    prob : array_like
        Predicted probabilities in [0, 1], one per star.
    outcome : array_like
        What happened: boolean or 0/1, same length.

    Returns
    -------
    float
        In [0, 1], lower is better; NaN for no stars.

    Raises
    ------
    ConfigError
        If the lengths differ, a probability is not finite or outside [0, 1], or an outcome is not 0/1.
    """
    p, y = _as_prob_outcome(prob, outcome)
    return float(np.mean((p - y) ** 2)) if len(p) else math.nan


# ----------------------------------------------------------------------------- membership


def _precision_recall_f1(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of boolean predictions (0 where undefined)."""
    tp = int(np.sum(predicted & actual))
    n_pred, n_true = int(predicted.sum()), int(actual.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0
    return precision, recall, f1


def _group_f1(pred: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each scored group id and its F1 against the true members (unscored members count as misses)."""
    scored = pred != UNSCORED
    groups, index = np.unique(pred[scored], return_inverse=True)
    sizes = np.bincount(index.ravel(), minlength=len(groups))
    hits = np.bincount(index.ravel(), is_member[scored].astype(np.float64), minlength=len(groups))
    return groups, 2 * hits / (sizes + is_member.sum())


def _membership(
    pred: np.ndarray,
    is_member: np.ndarray,
    predicted_member: Any,
    prob: np.ndarray | None,
) -> dict[str, float | int]:
    """Member precision/recall/F1, the oracle F1 and group, and calibration when prob is given."""
    scored = pred != UNSCORED
    groups, f1 = _group_f1(pred, is_member)
    best = int(np.argmax(f1)) if len(groups) else -1
    oracle_group = int(groups[best]) if len(groups) else UNSCORED
    if predicted_member is not None:
        predicted = _as_member_flags(predicted_member, len(pred)) & scored
    elif prob is not None:
        predicted = scored & (np.nan_to_num(prob) > MEMBER_THRESHOLD)
    else:
        predicted = scored & (pred == oracle_group)
    precision, recall, member_f1 = _precision_recall_f1(predicted, is_member)
    out: dict[str, float | int] = {
        "member_precision": precision,
        "member_recall": recall,
        "member_f1": member_f1,
        "member_f1_oracle": float(f1[best]) if len(groups) else 0.0,
        "member_group_oracle": oracle_group,
        "n_true_members": int(is_member.sum()),
        "n_predicted_members": int(predicted.sum()),
    }
    if prob is not None:
        out["brier"] = brier_score(prob[scored], is_member[scored])
        out["ece"] = expected_calibration_error(prob[scored], is_member[scored])
    return out


# ----------------------------------------------------------------------------- entry points


def evaluate_clustering(
    true_labels: Any,
    predicted_labels: Any,
    data: Any = None,
    *,
    member_label: Any = "cluster",
    predicted_member: Any = None,
    member_prob: Any = None,
    silhouette_sample: int = 5000,
    random_state: int | None = 0,
) -> dict[str, float | int]:
    """Score predicted groups against the truth; every value is a plain float or int.

    Rows with label -1 were not scored: they are left out of the partition and internal scores
    (counted in ``n_unscored``) and count as non-members (a true member left unscored is a miss).

    * ``ari, nmi, ami, homogeneity, completeness, v_measure`` and ``accuracy`` (Hungarian
      matching) on scored rows.
    * With ``member_label`` in the truth: ``member_precision/recall/f1`` of the predicted members
      (``predicted_member``, else ``member_prob > 0.5``, else the group with the best F1 against
      the truth: an oracle, for benchmarks only), plus ``member_f1_oracle``,
      ``member_group_oracle``, ``n_true_members`` and ``n_predicted_members``.
    * With ``member_prob``: ``brier`` and ``ece`` (15 equal-width bins).
    * With ``data``: ``silhouette`` (subsampled), ``davies_bouldin`` and ``calinski_harabasz``;
      NaN with a warning under 2 groups. Labels given per catalogue row of a
      :func:`grasp_dl.prepare_stellar_data` matrix are taken on the matrix's rows.

    Direction of each score: :data:`HIGHER_IS_BETTER`.

    Parameters
    ----------
    true_labels : array_like
        The true class of each row, e.g. the ``truth`` column of a simulated catalogue.
    predicted_labels : array_like
        The predicted group of each row; -1 marks a row that was not scored.
    data : array_like, optional
        Stars x features of the same rows, for the internal scores.
    member_label : object, default "cluster"
        The true label of the cluster's members.
    predicted_member : array_like of bool, optional
        Which rows the method calls members.
    member_prob : array_like of float, optional
        Each row's membership probability in [0, 1].
    silhouette_sample : int, default 5000
        Rows the silhouette is computed on at most.
    random_state : int, optional
        Seed of the silhouette's subsample.

    Returns
    -------
    dict of str to float or int
        The scores above plus the counts of :data:`INFO_KEYS`, JSON-ready.

    Raises
    ------
    ConfigError
        If an input is empty, malformed or of a length other than ``true_labels``'.
    """
    from grasp_dl.data.rows import on_prepared_rows

    # Labels per catalogue row meet a feature matrix from prepare_stellar_data on its rows.
    true_labels, predicted_labels, predicted_member, member_prob = on_prepared_rows(
        data, true_labels, predicted_labels, predicted_member, member_prob
    )
    truth = _as_truth(true_labels)
    pred = _as_predicted(predicted_labels, len(truth))
    scored = pred != UNSCORED
    features = None if data is None else _as_data(data, len(truth), scored)
    prob = None if member_prob is None else _as_member_prob(member_prob, len(truth), scored)
    out: dict[str, float | int] = {"n_scored": int(scored.sum()), "n_unscored": int((~scored).sum())}
    if scored.any():
        out.update(partition_scores(truth[scored], pred[scored]))
    else:
        warnings.warn("no row is scored (all predicted labels are -1): scores are NaN", UserWarning, stacklevel=2)
        out.update(dict.fromkeys(PARTITION_KEYS, math.nan))
    if features is not None:
        out.update(_internal_or_nan(features[scored], pred[scored], silhouette_sample, random_state))
    is_member = _member_mask(truth, member_label)
    if is_member.any():
        out.update(_membership(pred, is_member, predicted_member, prob))
    elif predicted_member is not None or prob is not None:
        warnings.warn(
            f"no true label equals member_label={member_label!r}: membership and calibration scores are skipped",
            UserWarning,
            stacklevel=2,
        )
    return out


def _internal_or_nan(
    features: np.ndarray, labels: np.ndarray, silhouette_sample: int, random_state: int | None
) -> dict[str, float]:
    """Internal scores of the scored rows, NaN (with a warning) when no row is scored."""
    if len(labels) == 0:
        return dict.fromkeys(INTERNAL_KEYS, math.nan)
    return internal_scores(features, labels, silhouette_sample=silhouette_sample, random_state=random_state)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Aligned two-column text table (name, value) of a metrics dict, for printing.

    Parameters
    ----------
    metrics : mapping
        Metric names to values (integers printed as they are, floats with 4 decimals).

    Returns
    -------
    str
        One line per metric; empty for an empty mapping.
    """
    if not metrics:
        return ""
    cells = [(str(key), _format_value(value)) for key, value in metrics.items()]
    key_width = max(len(key) for key, _ in cells)
    value_width = max(len(value) for _, value in cells)
    return "\n".join(f"{key:<{key_width}}  {value:>{value_width}}" for key, value in cells)


def _format_value(value: Any) -> str:
    """Integers as they are, floats with 4 decimals (or 4 significant digits when large)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}" if abs(value) < 1e5 or not math.isfinite(value) else f"{value:.4g}"
    return str(value)
