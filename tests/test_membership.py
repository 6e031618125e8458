"""Which group is the cluster, entropy, and the cluster summary."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grasp_dl.membership.rules import (
    choose_cluster_group,
    cluster_scores,
    cluster_summary,
    entropy,
)

NAMES = ["xi", "eta", "pmra", "pmdec", "parallax"]


def _field_cluster_galaxy(seed=0):
    rng = np.random.default_rng(seed)
    field = np.column_stack(
        [rng.uniform(-0.5, 0.5, (3000, 2)), rng.normal(-2, 4, (3000, 2)), rng.normal(0.5, 0.5, 3000)]
    )
    cluster = np.column_stack([rng.normal(0, 0.03, (300, 2)), rng.normal(5, 0.5, (300, 2)), rng.normal(0.2, 0.05, 300)])
    galaxy = np.column_stack(
        [rng.uniform(-0.5, 0.5, (2000, 2)), rng.normal(0.7, 0.2, (2000, 2)), rng.normal(0.0, 0.05, 2000)]
    )
    features = np.vstack([field, cluster, galaxy])
    labels = np.repeat([2, 0, 1], [3000, 300, 2000])  # group ids deliberately not in order
    return features, labels


def test_the_concentrated_tight_group_is_the_cluster_not_the_galaxy():
    features, labels = _field_cluster_galaxy()
    scores = cluster_scores(labels, features, NAMES, 3)
    assert np.argmin(scores) == 0
    assert scores[1] < scores[2]  # the galaxy is tight in proper motion, the field is not
    prob = np.eye(3)[labels]
    assert choose_cluster_group(prob, features, NAMES) == 0


def test_rule_without_positions_uses_proper_motion_and_without_both_the_volume():
    features, labels = _field_cluster_galaxy()
    pm_only = features[:, 2:4]
    assert choose_cluster_group(np.eye(3)[labels], pm_only, ["pmra", "pmdec"]) in (0, 1)
    other = features[:, [4]]
    assert np.isfinite(cluster_scores(labels, other, ["parallax"], 3)).all()


def test_tiny_groups_are_not_named_the_cluster():
    features, labels = _field_cluster_galaxy()
    labels = labels.copy()
    labels[:3] = 3  # three stray stars form a fourth group
    scores = cluster_scores(labels, features, NAMES, 4)
    assert np.isinf(scores[3]) and np.argmin(scores) == 0


def test_entropy_bounds():
    np.testing.assert_allclose(entropy(np.array([[1.0, 0.0], [0.5, 0.5]])), [0.0, np.log(2)], atol=1e-9)


def test_cluster_summary_weights_by_member_prob():
    predictions = pd.DataFrame({"label": [0, 0, 1, 1, -1], "member_prob": [1.0, 1.0, 0.0, 0.4, np.nan]})
    catalog = pd.DataFrame(
        {
            "pmra": [1.0, 3.0, 50.0, 90.0, 7.0],
            "pmdec": [0.0, 0.0, 9.0, 9.0, np.nan],
            "parallax": [0.1, 0.3, 2.0, 2.0, 1.0],
        }
    )
    summary = cluster_summary(predictions, catalog, (10.0, -5.0), cluster_group=0)
    assert summary.n_members == 2 and summary.sum_member_prob == 2.4
    assert summary.n_scored == 4 and summary.n_rows == 5
    # the 0.4 star is no member: it counts in the sum of probabilities, not in the means
    assert summary.mean("pmra") == 2.0 and summary.mean("pmdec") == 0.0
    np.testing.assert_allclose(summary.mean_error("pmra"), np.sqrt(2) / 2)
    assert summary.center == (10.0, -5.0) and summary.cluster_group == 0
    # the JSON object, and the mapping view for callers written against it
    assert summary.to_dict()["center"] == [10.0, -5.0] and summary["mean_pmra"] == 2.0


def test_summary_means_weight_members_by_their_errors():
    """A faint member with a large error (the likeliest interloper) moves the mean less than a bright one."""
    predictions = pd.DataFrame({"label": [0, 0, 0], "member_prob": [1.0, 1.0, 1.0]})
    catalog = pd.DataFrame(
        {
            "pmra": [1.0, 1.0, 5.0],
            "pmra_error": [0.02, 0.02, 2.0],
            "pmdec": [0.0, 0.0, 3.0],
            "pmdec_error": [0.02, 0.02, 2.0],
        }
    )
    summary = cluster_summary(predictions, catalog, None, cluster_group=0)
    # weights 1 / (0.2^2 + e^2): the interloper counts ~1/100 of a bright member
    assert 1.0 < summary["mean_pmra"] < 1.05 and 0.0 < summary["mean_pmdec"] < 0.04
    # without error columns every member counts by its probability alone
    plain = cluster_summary(predictions, catalog[["pmra", "pmdec"]], None, cluster_group=0)
    assert plain["mean_pmra"] == pytest.approx(7.0 / 3.0)


def test_summary_streamed_in_chunks_equals_the_whole():
    from grasp_dl.membership.rules import SummaryAccumulator

    rng = np.random.default_rng(2)
    error = np.exp(rng.uniform(np.log(0.02), np.log(2.0), 3000))
    catalog = pd.DataFrame(
        {"pmra": 102.0 + rng.normal(0, 0.3, 3000) + rng.normal(0, 1, 3000) * error, "pmra_error": error}
    )
    prob = rng.uniform(0.0, 1.0, len(catalog))
    predictions = pd.DataFrame({"label": np.zeros(len(catalog), int), "member_prob": prob})
    whole = cluster_summary(predictions, catalog, None, 0)
    chunked = SummaryAccumulator(None, 0)
    for lo in range(0, len(catalog), 700):
        chunked.update(predictions.iloc[lo : lo + 700], catalog.iloc[lo : lo + 700])
    got = chunked.result()
    for key in ("mean_pmra", "mean_pmra_error", "n_members"):
        assert got[key] == pytest.approx(whole[key], rel=1e-9)
    assert abs(whole["mean_pmra"] - 102.0) < 3 * whole["mean_pmra_error"]


def test_a_model_fitted_mean_is_reported_and_the_members_average_kept():
    from grasp_dl.membership.rules import adopt_model_mean

    summary = {"cluster_group": 0, "mean_pmra": 1.0, "mean_pmdec": 2.0, "mean_pmra_error": 0.1}
    assert adopt_model_mean(summary)["mean_source"] == "members"  # nothing to adopt without the model's keys
    got = adopt_model_mean({**summary, "xd_mean_pmra": 1.5, "xd_mean_pmdec": 2.5, "xd_mean_parallax": 0.3})
    assert got["mean_pmra"] == 1.5 and got["mean_pmdec"] == 2.5 and got["mean_source"] == "model"
    assert got["mean_pmra_members"] == 1.0 and got["mean_pmdec_members"] == 2.0
    assert got["mean_pmra_error"] == 0.1 and "mean_parallax" not in got  # no members' parallax: nothing to replace
    # the model's standard error of its mean replaces the members' (kept beside it)
    got = adopt_model_mean({**summary, "xd_mean_pmra": 1.5, "xd_mean_pmra_error": 0.2, "xd_mean_pmdec": 2.5})
    assert got["mean_pmra_error"] == 0.2 and got["mean_pmra_error_members"] == 0.1
    assert np.isnan(got["mean_pmdec_error"])  # the members gave none and neither did the model
    # the user named another group: the model's cluster mean is not that group's
    other = adopt_model_mean({**summary, "cluster_group": 2, "xd_mean_pmra": 1.5, "xd_mean_pmdec": 2.5})
    assert other["mean_pmra"] == 1.0 and other["mean_source"] == "members"


def _full_summary():
    """A summary through every step: model astrometry, the model's mean, the verdict, the literature, the run."""
    from grasp_dl.membership.summary import ClusterSummary, ColumnMean

    check = {"cluster_found": True, "cluster_reason": "passes", "diagnostics": {"cluster_share": 0.1}}
    return (
        ClusterSummary(
            cluster_group=0,
            n_rows=10,
            n_scored=9,
            n_members=4,
            sum_member_prob=4.2,
            center=(245.9, -26.5),
            means={
                "pmra": ColumnMean(-12.4, 0.05),
                "pmdec": ColumnMean(-19.0, 0.06),
                "parallax": ColumnMean(0.5, 0.01),
            },
            not_scored={"missing:pmra": 1},
        )
        .with_model_astrometry({"xd_mean_pmra": -12.5, "xd_mean_pmra_error": 0.04, "xd_mean_pmdec": -19.1})
        .with_model_mean()
        .with_verdict(check)
        .with_literature({"literature": {"name": "NGC_6121", "pm_offset": 0.1}, "literature_warning": None})
        .with_run(figure="out.png", checkpoint="last.ckpt", catalog="cone.csv")
    )


def test_summary_round_trips_through_its_json_object():
    import json

    from grasp_dl.membership.summary import ClusterSummary
    from grasp_dl.runtime.io_policy import strict_json

    summary = _full_summary()
    assert ClusterSummary.from_dict(summary.to_dict()) == summary
    # through the file: strict JSON, and the same object read back
    assert ClusterSummary.from_dict(json.loads(strict_json(summary.to_dict()))) == summary
    assert summary.mean("pmra") == -12.5 and summary.means["pmra"].members == -12.4
    assert summary.means["pmra"].error_members == 0.05 and summary.means["pmdec"].error_members is None
    # a non-finite mean is written as null and read back as NaN, then written as null again
    lost = summary.with_verdict({"cluster_found": False, "cluster_reason": "no", "diagnostics": {}})
    text = strict_json(lost.to_dict())
    again = ClusterSummary.from_dict(json.loads(text))
    assert np.isnan(again.mean("pmra")) and strict_json(again.to_dict()) == text


def test_the_verdict_clears_members_without_touching_the_summary_it_is_given():
    summary = _full_summary()
    before = summary.to_dict()
    rejected = summary.with_verdict({"cluster_found": False, "cluster_reason": "spread out", "diagnostics": {"a": 1}})
    assert rejected.n_members == 0 and rejected.sum_member_prob == 0.0 and rejected.cluster_found is False
    assert all(np.isnan(v) for k, v in rejected.to_dict().items() if k.startswith("mean_") and k != "mean_source")
    assert rejected.mean_source is None and rejected.model_astrometry == summary.model_astrometry
    assert summary.to_dict() == before and summary.n_members == 4 and summary.cluster_found is True
    # the user named the group: the verdict is said, the members kept
    kept = summary.with_verdict({"cluster_found": False, "cluster_reason": "spread out", "diagnostics": {}}, True)
    assert kept.n_members == 4 and kept.cluster_reason.endswith("(memberships kept: the group was chosen by the user)")


#: Summary files as ``grasp-dl predict`` writes them, the schema to keep (model=xd and model=dec on a simulated
#: M4 cone with ``data.cluster=M4`` and without, and on the field alone, where no cluster is found).
RECORDED = Path(__file__).parent / "data" / "summaries"


@pytest.mark.parametrize("name", ["xd_M4", "xd_None", "xd_field", "dec_M4", "dec_None", "dec_field"])
def test_a_recorded_summary_file_reads_back_and_writes_the_same_json(name):
    """Keys, their order and values of a recorded ``.summary.json`` survive from_dict then to_dict, to the byte."""
    import json

    from grasp_dl.membership.summary import ClusterSummary
    from grasp_dl.runtime.io_policy import strict_json

    text = (RECORDED / f"{name}.summary.json").read_text()
    summary = ClusterSummary.from_dict(json.loads(text))
    assert strict_json(summary.to_dict()) == text
    assert summary.found == (not name.endswith("field")) and summary.n_rows > 0
    assert (summary.mean_source == "model") == (name.startswith("xd") and summary.found)
    assert (summary.literature is not None) == (not name.endswith("None"))
