"""grasp-dl predict and evaluate: one row per input row, flags, summary, metrics, errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grasp_dl.data.catalog import read_catalog, write_catalog
from grasp_dl.data.simulate import simulate_field
from grasp_dl.inference.predict import load_clustering_module, predict_catalog, predict_to_file
from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import TINY, compose_config

#: Every test here uses a trained run (the `trained` fixture trains end to end).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DEC checkpoint trained by the real pipeline on a small simulated M4-like field."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", TINY + ["data.simulate.seed=5"], out)
    result = pipeline.train(cfg)
    return result.checkpoint, result


@pytest.fixture(scope="module")
def catalogue_with_gaps(tmp_path_factory):
    """A new simulated cone of the same field, with NaNs, a bad row and 2-parameter stars."""
    df = simulate_field("m4", n_stars=2500, seed=11)
    df.loc[[0, 10, 20], "pmra"] = np.nan
    df.loc[30, "parallax"] = np.nan
    path = tmp_path_factory.mktemp("cat") / "cone.csv"
    write_catalog(df, path)
    return df, path


def test_one_row_per_input_row_in_order_with_flags(trained, catalogue_with_gaps):
    ckpt, _ = trained
    df, _ = catalogue_with_gaps
    module = load_clustering_module(ckpt)
    out, summary = predict_catalog(module, df)
    k = module.hparams.n_clusters
    assert len(out) == len(df)
    assert (out["source_id"].to_numpy() == df["source_id"].to_numpy()).all()
    assert list(out.columns) == [
        "source_id",
        "label",
        *[f"prob_{j}" for j in range(k)],
        "member_prob",
        "entropy",
        "flag",
    ]
    unscored = out["label"] == -1
    assert unscored[[0, 10, 20, 30]].all()
    assert out.loc[0, "flag"] == "missing:pmra" and out.loc[30, "flag"] == "missing:parallax"
    two_param = df["pmra"].isna() & df["parallax"].isna()
    assert (out.loc[two_param, "flag"] == "missing:pmra+pmdec+parallax").all()
    assert out.loc[unscored, "member_prob"].isna().all()
    probs = out.loc[~unscored, [f"prob_{j}" for j in range(k)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (out.loc[~unscored, "flag"] == "").all()
    group = int(module.cluster_group)
    np.testing.assert_array_equal(out["member_prob"], out[f"prob_{group}"])
    # the simulated truth: the named group is the cluster
    truth = (df["truth"] == "cluster").to_numpy()
    members = out["member_prob"].fillna(0).to_numpy() > 0.5
    f1 = 2 * (members & truth).sum() / (members.sum() + truth.sum())
    assert f1 > 0.8, f1
    assert summary["n_rows"] == len(df) and summary["n_scored"] == int((~unscored).sum())
    # members weighted by member_prob / (0.2^2 + pmra_error^2), the summary's inverse-variance rule
    w = np.where(members, out["member_prob"].fillna(0), 0.0) / (0.2**2 + df["pmra_error"].fillna(np.inf) ** 2)
    np.testing.assert_allclose(summary["mean_pmra"], np.nansum(w * df["pmra"]) / w[df["pmra"].notna()].sum())
    # a two-epoch model still lands near the simulated cluster motion (-12.51, -19.02) mas/yr
    assert abs(summary["mean_pmra"] - (-12.51)) < 1.5 and abs(summary["mean_pmdec"] - (-19.02)) < 1.5


def test_reload_predicts_identically(trained, catalogue_with_gaps):
    ckpt, result = trained
    df, _ = catalogue_with_gaps
    again, _ = predict_catalog(load_clustering_module(ckpt), df)
    first, _ = predict_catalog(result.module.cpu(), df)
    pd.testing.assert_frame_equal(first, again)


def test_cluster_group_override_and_bad_inputs(trained, catalogue_with_gaps, tmp_path):
    ckpt, _ = trained
    df, _ = catalogue_with_gaps
    module = load_clustering_module(ckpt)
    other = (int(module.cluster_group) + 1) % module.hparams.n_clusters
    out, summary = predict_catalog(module, df, cluster_group=other)
    np.testing.assert_array_equal(out["member_prob"], out[f"prob_{other}"])
    assert summary["cluster_group"] == other
    with pytest.raises(ConfigError, match="cluster_group=7 is not a group"):
        predict_catalog(module, df, cluster_group=7)
    with pytest.raises(CatalogError, match="pmdec"):
        predict_catalog(module, df.drop(columns=["pmdec"]))
    with pytest.raises(ConfigError, match="not found"):
        load_clustering_module(tmp_path / "missing.ckpt")
    autoencoder_ckpt = ckpt.parent / "autoencoder" / "last.ckpt"
    with pytest.raises(ConfigError, match="no cluster centres"):
        load_clustering_module(autoencoder_ckpt)


def test_another_fields_catalogue_with_auto_centre(trained, pal13_path):
    ckpt, _ = trained
    module = load_clustering_module(ckpt)
    out, summary = predict_catalog(module, pal13_path, center="auto")
    assert len(out) == 123
    assert abs(summary["center"][0] - 346.685) < 0.05
    assert (out.loc[out["flag"] != "", "label"] == -1).all()
    assert (out["label"] >= 0).sum() > 50


def test_predict_and_evaluate_commands(trained, catalogue_with_gaps, tmp_path, run_main):
    ckpt, _ = trained
    df, path = catalogue_with_gaps
    output = tmp_path / "members.parquet"
    proc = run_main(
        ["predict", f"ckpt_path={ckpt}", f"data.path={path}", f"output={output}", f"hydra.run.dir={tmp_path}/p"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = read_catalog(output)
    assert len(table) == len(df) and (table["source_id"].to_numpy() == df["source_id"].to_numpy()).all()
    summary = json.loads((tmp_path / "members.summary.json").read_text())
    assert summary["n_rows"] == len(df) and summary["checkpoint"] == str(ckpt)
    # the file's keys, in order, are those of a recorded summary of the same kind of run
    recorded = json.loads((Path(__file__).parent / "data" / "summaries" / "dec_None.summary.json").read_text())
    assert list(summary) == list(recorded)
    assert f"cluster (group {summary['cluster_group']})" in proc.stdout
    assert "not scored:" in proc.stdout and f"predictions: {output}" in proc.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]

    csv_output = tmp_path / "members.csv"
    proc = run_main(
        ["predict", f"ckpt_path={ckpt}", f"data.path={path}", f"output={csv_output}", f"hydra.run.dir={tmp_path}/p2"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pd.testing.assert_frame_equal(read_catalog(csv_output)[["source_id", "label"]], table[["source_id", "label"]])

    proc = run_main(["evaluate", f"predictions={output}", f"truth={path}", f"hydra.run.dir={tmp_path}/e"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "members.metrics.json").read_text())
    assert metrics["member_f1"] > 0.8 and metrics["ari"] > 0.5 and 0 <= metrics["brier"] < 0.1
    assert "member_f1" in proc.stdout
    assert (tmp_path / "members.metrics.reliability.png").is_file()

    # the cluster's group chosen on the command line, under the one name it has everywhere
    other = (summary["cluster_group"] + 1) % 3
    dotted = tmp_path / "members.other.parquet"
    proc = run_main(
        [
            "predict",
            f"ckpt_path={ckpt}",
            f"data.path={path}",
            f"output={dotted}",
            f"cluster_group={other}",
            f"hydra.run.dir={tmp_path}/p3",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "members.other.summary.json").read_text())["cluster_group"] == other
    # truth_member_label names the truth value of members: a value no star has skips the member scores
    proc = run_main(
        [
            "evaluate",
            f"predictions={output}",
            f"truth={path}",
            "truth_member_label=nobody",
            f"output={tmp_path}/nobody.json",
            f"hydra.run.dir={tmp_path}/e2",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "member_f1" not in json.loads((tmp_path / "nobody.json").read_text())


def test_predict_command_errors_are_readable(trained, tmp_path, run_main):
    ckpt, _ = trained
    proc = run_main(["predict", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert proc.returncode != 0 and "data.path" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main(
        ["predict", f"ckpt_path={tmp_path}/nope.ckpt", "data.path=x.csv", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    assert proc.returncode == 2 and "nope.ckpt not found" in proc.stderr
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ra": [1.0], "dec": [2.0]}).to_csv(bad, index=False)
    proc = run_main(
        ["predict", f"ckpt_path={ckpt}", f"data.path={bad}", f"output={tmp_path}/o.txt", f"hydra.run.dir={tmp_path}"],
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _assert_close_summaries(got, expected, where="summary"):
    """Equal keys and values, floats (also inside diagnostics) to float32-sum precision."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key, value in expected.items():
            _assert_close_summaries(got[key], value, f"{where}.{key}")
    elif isinstance(expected, float) or (
        isinstance(expected, list) and expected and all(isinstance(v, float) for v in expected)
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=where)  # float32 sums
    else:
        assert got == expected, where


def test_streamed_prediction_equals_the_in_memory_one(trained, catalogue_with_gaps, tmp_path):
    ckpt, _ = trained
    df, _ = catalogue_with_gaps
    module = load_clustering_module(ckpt)
    expected, expected_summary = predict_catalog(module, df)
    # a block of rows none of which can be scored: its chunk is flagged, not an error
    blocked = df.copy()
    blocked.loc[1000:1199, "pmra"] = np.nan
    blocked_expected, _ = predict_catalog(module, blocked)
    for suffix in ("parquet", "csv"):
        path = tmp_path / f"cone.{suffix}"
        write_catalog(blocked, path)
        output = tmp_path / f"members_{suffix}.{suffix}"
        summary = predict_to_file(module, path, output, chunk_size=200)
        table = read_catalog(output)
        table["flag"] = table["flag"].fillna("")  # CSV reads an empty flag back as missing
        pd.testing.assert_frame_equal(table, blocked_expected, check_dtype=False)
        unscored = blocked_expected.loc[blocked_expected["label"] < 0, "flag"].value_counts().to_dict()
        assert summary["not_scored"] == unscored and unscored["missing:pmra"] >= 100
    # without a blocked region the summary matches the in-memory one number for number
    summary = predict_to_file(module, df, tmp_path / "plain.parquet", chunk_size=333)
    assert summary.keys() == expected_summary.keys()
    _assert_close_summaries(summary.to_dict(), expected_summary.to_dict())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_streamed_prediction_numbers_rows_without_source_id_and_fails_cleanly(trained, catalogue_with_gaps, tmp_path):
    ckpt, _ = trained
    df, _ = catalogue_with_gaps
    module = load_clustering_module(ckpt)
    no_id = df.drop(columns=["source_id"])
    path = tmp_path / "no_id.csv"
    write_catalog(no_id, path)
    output = tmp_path / "out.csv"
    predict_to_file(module, path, output, chunk_size=300)
    np.testing.assert_array_equal(read_catalog(output)["source_id"], np.arange(len(df)))
    # nothing usable: a readable error and no output file, not a half-written one
    unusable = df.assign(pmra=np.nan)
    with pytest.raises(CatalogError, match=f"no usable star in the catalogue of {len(df)} rows"):
        predict_to_file(module, unusable, tmp_path / "none.parquet", chunk_size=500)
    assert not (tmp_path / "none.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
