"""Tests of grasp_dl.metrics: partition, membership, calibration and internal scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from grasp_dl.metrics import (
    HIGHER_IS_BETTER,
    INFO_KEYS,
    brier_score,
    evaluate_clustering,
    expected_calibration_error,
    format_metrics,
    hungarian_accuracy,
    internal_scores,
    reliability_curve,
)
from grasp_dl.runtime.errors import ConfigError

CLASSES = np.array(["cluster", "field", "galaxy", "tails"])


def _blobs(separation: float, n_per: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs in 2-D whose centres are `separation` sigma apart, and their labels."""
    rng = np.random.default_rng(seed)
    centres = separation * np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.9]])
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + rng.normal(size=(3 * n_per, 2)), labels


@pytest.mark.parametrize("seed", range(6))
def test_partition_metrics_match_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    truth = rng.choice(CLASSES[: rng.integers(2, 5)], n)
    pred = rng.integers(-1, int(rng.integers(2, 9)), n)
    scored = pred != -1
    got = evaluate_clustering(truth, pred)
    t, p = truth[scored], pred[scored]
    expected = {
        "ari": skm.adjusted_rand_score(t, p),
        "nmi": skm.normalized_mutual_info_score(t, p),
        "ami": skm.adjusted_mutual_info_score(t, p),
        "homogeneity": skm.homogeneity_score(t, p),
        "completeness": skm.completeness_score(t, p),
        "v_measure": skm.v_measure_score(t, p),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert got["n_scored"] == int(scored.sum()) and got["n_unscored"] == int((~scored).sum())


def test_ari_stays_right_on_a_large_catalogue() -> None:
    # torchmetrics 1.9's ARI overflows int64 above ~55,000 rows; the module must not.
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 4, 120_000)
    pred = np.where(rng.random(120_000) < 0.7, truth, rng.integers(0, 5, 120_000))
    got = evaluate_clustering(truth, pred, member_label=0)
    assert got["ari"] == pytest.approx(skm.adjusted_rand_score(truth, pred), abs=1e-6)


def test_edge_cases_follow_sklearn_conventions() -> None:
    # Independent partitions: homogeneity = completeness = 0, so V-measure is 0 (torchmetrics says 1).
    got = evaluate_clustering(["a", "a", "b", "b"], [0, 1, 0, 1])
    assert got["v_measure"] == 0.0 and got["nmi"] == pytest.approx(0.0, abs=1e-12)
    # One class, one group: identical partitions, NMI = ARI = 1 (torchmetrics' NMI says 0).
    got = evaluate_clustering(["cluster"] * 5, [3] * 5)
    assert got["nmi"] == 1.0 and got["ari"] == 1.0 and got["accuracy"] == 1.0


def test_perfect_clustering_with_permuted_ids_scores_one() -> None:
    rng = np.random.default_rng(1)
    truth = rng.choice(CLASSES, 500)
    ids = {"cluster": 7, "field": 0, "galaxy": 3, "tails": 1}
    pred = np.array([ids[t] for t in truth])
    got = evaluate_clustering(truth, pred)
    for key in ("ari", "nmi", "ami", "v_measure", "accuracy", "member_f1", "member_f1_oracle"):
        assert got[key] == pytest.approx(1.0), key
    assert got["member_group_oracle"] == 7


def test_hungarian_accuracy_more_groups_than_classes() -> None:
    truth = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    pred = [0, 0, 1, 1, 2, 2, 2, 2, 2, 1]
    # class 0 -> group 0 or 1 (2 rows), class 1 -> group 2 (5 rows); group left over is wrong.
    assert hungarian_accuracy(truth, pred) == pytest.approx(0.7)
    assert evaluate_clustering(truth, pred)["accuracy"] == pytest.approx(0.7)


def test_hungarian_accuracy_more_classes_than_groups() -> None:
    truth = ["a", "a", "a", "b", "b", "c", "c", "c", "c"]
    pred = [0, 0, 1, 1, 1, 1, 1, 1, 1]
    # a -> group 0 (2 rows), c -> group 1 (4 rows); b gets no group.
    assert hungarian_accuracy(truth, pred) == pytest.approx(6 / 9)


# Ten stars: five true members (rows 0-4), rows 3 and 9 not scored.
MEMBER_TRUTH = np.array(["cluster"] * 5 + ["field"] * 5)
MEMBER_PRED = np.array([0, 0, 0, -1, 1, 0, 1, 1, 1, -1])


def test_oracle_membership_counts_unscored_members_as_misses() -> None:
    got = evaluate_clustering(MEMBER_TRUTH, MEMBER_PRED)
    # group 0 = rows 0, 1, 2, 5: 3 of its 4 are members; 3 of the 5 members found (row 3 unscored).
    assert got["member_group_oracle"] == 0
    assert got["member_precision"] == pytest.approx(3 / 4)
    assert got["member_recall"] == pytest.approx(3 / 5)
    assert got["member_f1"] == pytest.approx(2 * 3 / (4 + 5))
    assert got["member_f1_oracle"] == pytest.approx(2 * 3 / (4 + 5))
    assert got["n_true_members"] == 5 and got["n_predicted_members"] == 4
    assert got["n_scored"] == 8 and got["n_unscored"] == 2


def test_predicted_member_flags_on_unscored_rows_are_ignored() -> None:
    flags = np.array([True, True, True, True, False, False, False, False, False, True])
    got = evaluate_clustering(MEMBER_TRUTH, MEMBER_PRED, predicted_member=flags)
    # rows 3 and 9 are unscored, so the predicted members are rows 0, 1, 2.
    assert got["member_precision"] == pytest.approx(1.0)
    assert got["member_recall"] == pytest.approx(3 / 5)
    assert got["member_f1"] == pytest.approx(0.75)
    assert got["member_f1_oracle"] == pytest.approx(2 / 3)  # the oracle is independent of the flags
    assert "brier" not in got


def test_member_prob_path_thresholds_and_calibrates_on_scored_rows() -> None:
    prob = np.array([0.9, 0.9, 0.4, np.nan, 0.6, 0.7, 0.1, 0.1, 0.1, np.nan])
    got = evaluate_clustering(MEMBER_TRUTH, MEMBER_PRED, member_prob=prob)
    # predicted members: rows 0, 1, 4, 5 (prob > 0.5); members among them: 0, 1, 4.
    assert got["member_precision"] == pytest.approx(3 / 4)
    assert got["member_recall"] == pytest.approx(3 / 5)
    # scored rows 0, 1, 2, 4 are members, rows 5-8 are not.
    squared = [0.01, 0.01, 0.36, 0.16, 0.49, 0.01, 0.01, 0.01]
    assert got["brier"] == pytest.approx(np.mean(squared))
    assert 0.0 <= got["ece"] <= 1.0


def test_brier_and_ece_of_a_calibrated_constant_forecast() -> None:
    prob = np.full(10, 0.8)
    outcome = np.array([1] * 8 + [0] * 2)
    assert brier_score(prob, outcome) == pytest.approx(0.16)
    assert expected_calibration_error(prob, outcome) == pytest.approx(0.0, abs=1e-12)
    truth = np.where(outcome == 1, "cluster", "field")
    got = evaluate_clustering(truth, np.zeros(10, dtype=int), member_prob=prob)
    assert got["brier"] == pytest.approx(0.16)
    assert got["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_example_two_bins() -> None:
    prob = np.array([0.1] * 10 + [0.9] * 10)
    outcome = np.array([1] * 3 + [0] * 7 + [1] * 9 + [0])
    # bin at 0.1: |0.3 - 0.1| weighted 1/2; bin at 0.9: |0.9 - 0.9| = 0.
    assert expected_calibration_error(prob, outcome) == pytest.approx(0.1)


def test_ece_puts_probability_one_in_the_last_bin() -> None:
    # One bin [14/15, 1]: observed 0.5, mean probability 0.975 (torchmetrics would give 0.525).
    assert expected_calibration_error([1.0, 0.95], [0, 1]) == pytest.approx(0.475)


def test_reliability_curve_counts_and_frequencies() -> None:
    prob = [0.0, 0.05, 0.5, 0.99, 1.0]
    outcome = [0, 1, 1, 1, 0]
    centers, observed, counts = reliability_curve(prob, outcome, n_bins=10)
    np.testing.assert_allclose(centers, np.arange(0.05, 1.0, 0.1))
    np.testing.assert_array_equal(counts, [2, 0, 0, 0, 0, 1, 0, 0, 0, 2])
    assert observed[0] == pytest.approx(0.5) and observed[5] == 1.0 and observed[9] == pytest.approx(0.5)
    assert np.isnan(observed[1]) and counts.sum() == 5


def test_davies_bouldin_is_lower_for_separated_blobs() -> None:
    x_far, labels = _blobs(separation=10.0)
    x_near, _ = _blobs(separation=0.5)
    far, near = internal_scores(x_far, labels), internal_scores(x_near, labels)
    assert HIGHER_IS_BETTER["davies_bouldin"] is False
    assert far["davies_bouldin"] < near["davies_bouldin"]
    assert far["silhouette"] > near["silhouette"]
    assert far["calinski_harabasz"] > near["calinski_harabasz"]


def test_internal_scores_match_sklearn() -> None:
    x, labels = _blobs(separation=3.0, n_per=100)
    got = internal_scores(x, labels)  # 300 rows < silhouette_sample: silhouette on all of them
    assert got["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(x, labels), rel=1e-6)
    assert got["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(x, labels), rel=1e-6)
    assert got["silhouette"] == pytest.approx(skm.silhouette_score(x, labels), abs=1e-9)


def test_silhouette_subsample_is_reproducible() -> None:
    x, labels = _blobs(separation=3.0, n_per=100)
    first = internal_scores(x, labels, silhouette_sample=50, random_state=3)["silhouette"]
    again = internal_scores(x, labels, silhouette_sample=50, random_state=3)["silhouette"]
    assert first == again and -1.0 <= first <= 1.0
    assert first != pytest.approx(internal_scores(x, labels)["silhouette"], abs=1e-9)


def test_internal_scores_skip_unscored_rows() -> None:
    x, labels = _blobs(separation=3.0, n_per=50)
    pred = labels.copy()
    pred[::7] = -1
    x_bad = x.copy()
    x_bad[::7] = np.nan  # non-finite features on unscored rows are fine
    got = evaluate_clustering(labels, pred, x_bad)
    keep = pred != -1
    expected = skm.davies_bouldin_score(x[keep], pred[keep])
    assert got["davies_bouldin"] == pytest.approx(expected, rel=1e-6)


def test_single_predicted_group_gives_nan_internal_scores() -> None:
    x, _ = _blobs(separation=3.0, n_per=20)
    truth = np.array(["cluster", "field"] * 30)
    with pytest.warns(UserWarning, match="2 to n-1 groups"):
        got = evaluate_clustering(truth, np.zeros(60, dtype=int), x)
    for key in ("silhouette", "davies_bouldin", "calinski_harabasz"):
        assert math.isnan(got[key]), key
    assert got["member_recall"] == 1.0 and got["ari"] == 0.0


def test_all_rows_unscored_gives_nan_partition_scores() -> None:
    with pytest.warns(UserWarning, match="no row is scored"):
        got = evaluate_clustering(MEMBER_TRUTH, np.full(10, -1))
    assert math.isnan(got["ari"]) and got["n_scored"] == 0 and got["n_unscored"] == 10
    assert got["member_recall"] == 0.0 and got["member_f1_oracle"] == 0.0


def test_every_key_is_a_directed_score_or_an_info_count_and_json_ready() -> None:
    rng = np.random.default_rng(2)
    truth = rng.choice(CLASSES, 400)
    pred = rng.integers(-1, 4, 400)
    got = evaluate_clustering(truth, pred, rng.normal(size=(400, 3)), member_prob=rng.random(400))
    assert set(got) <= set(HIGHER_IS_BETTER) | INFO_KEYS
    assert set(HIGHER_IS_BETTER) <= set(got)
    assert all(type(value) in (int, float) for value in got.values())
    json.dumps(got)


def test_truth_without_member_label_skips_membership() -> None:
    truth = ["field", "galaxy"] * 10
    with pytest.warns(UserWarning, match="member_label"):
        got = evaluate_clustering(truth, [0, 1] * 10, member_prob=np.full(20, 0.3))
    assert not {"member_f1", "member_f1_oracle", "brier", "ece"} & set(got)


def test_integer_truth_and_torch_inputs() -> None:
    truth = torch.tensor([1, 1, 1, 0, 0, 0])
    pred = torch.tensor([2, 2, 0, 0, 0, 0])
    got = evaluate_clustering(truth, pred, member_label=1)
    assert got["member_precision"] == 1.0 and got["member_recall"] == pytest.approx(2 / 3)
    assert got["accuracy"] == pytest.approx(5 / 6)


def test_mismatched_lengths_name_both() -> None:
    with pytest.raises(ConfigError, match=r"predicted_labels has 3 rows but true_labels has 4"):
        evaluate_clustering(["cluster"] * 4, [0, 1, 0])
    with pytest.raises(ConfigError, match=r"data has 3 rows but true_labels has 4"):
        evaluate_clustering(["cluster"] * 4, [0, 1, 0, 1], np.zeros((3, 2)))
    with pytest.raises(ConfigError, match=r"member_prob has 2 rows"):
        evaluate_clustering(["cluster"] * 4, [0, 1, 0, 1], member_prob=[0.5, 0.5])


def test_empty_and_malformed_input_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="empty"):
        evaluate_clustering([], [])
    with pytest.raises(ConfigError, match="-1 means"):
        evaluate_clustering(["a", "b"], [0, -2])
    with pytest.raises(ConfigError, match="within"):
        evaluate_clustering(["cluster", "field"], [0, 1], member_prob=[0.5, 1.5])
    with pytest.raises(ConfigError, match="2-D"):
        evaluate_clustering(["cluster", "field"], [0, 1], np.zeros(2))
    with pytest.raises(ConfigError, match="non-finite"):
        evaluate_clustering(["cluster", "field"], [0, 1], np.array([[0.0], [np.nan]]))


def test_format_metrics_is_an_aligned_table() -> None:
    text = format_metrics({"ari": 0.5, "n_scored": 12, "davies_bouldin": math.nan})
    lines = text.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["ari", "0.5000"] and lines[1].split() == ["n_scored", "12"]
    assert lines[2].split()[1] == "nan"
    assert format_metrics({}) == ""
