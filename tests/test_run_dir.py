"""The run-directory layout and the names of the files written beside predictions, in one place."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from grasp_dl.inference.outputs import prediction_output, write_summary
from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime.errors import ConfigError
from grasp_dl.runtime.run_dir import RunDir, metrics_path, reliability_path, summary_path

from hydra_configs import compose_config


def test_default_layout_below_the_run_directory(tmp_path):
    run = RunDir.at(tmp_path)
    assert run.last_checkpoint() == tmp_path / "checkpoints" / "last.ckpt"
    assert run.last_checkpoint("autoencoder") == tmp_path / "checkpoints" / "autoencoder" / "last.ckpt"
    assert (
        run.tensorboard() == tmp_path / "tensorboard"
        and run.tensorboard("autoencoder") == tmp_path / "tensorboard" / "autoencoder"
    )
    assert run.csv_metrics("") == tmp_path / "csv" / "metrics.csv"
    assert run.csv_metrics("clustering") == tmp_path / "csv" / "clustering" / "metrics.csv"
    assert RunDir.of_checkpoint(run.last_checkpoint()) == run
    assert RunDir.of_checkpoint(tmp_path / "elsewhere" / "model.ckpt") is None


def test_the_composed_config_and_a_moved_checkpoint_folder(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert RunDir.from_config(cfg) == RunDir.at(tmp_path)  # the default dirpath is <run>/checkpoints
    moved = compose_config("train", [f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpts"], tmp_path / "run")
    run = RunDir.from_config(moved)
    assert run.root == tmp_path / "run" and run.last_checkpoint() == tmp_path / "ckpts" / "last.ckpt"
    assert run.last_checkpoint("autoencoder") == tmp_path / "ckpts" / "autoencoder" / "last.ckpt"
    bare = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "callbacks": None})
    assert RunDir.from_config(bare) == RunDir.at(tmp_path)  # callbacks=none: the default folder


def test_resume_last_looks_where_the_checkpoints_are_configured(tmp_path):
    moved = compose_config("train", [f"callbacks.model_checkpoint.dirpath={tmp_path}/ckpts"], tmp_path / "run")
    run = RunDir.from_config(moved)
    with pytest.raises(ConfigError, match="ckpts"):
        pipeline.resume_point("last", run, two_phase=True)
    run.last_checkpoint("autoencoder").parent.mkdir(parents=True)
    run.last_checkpoint("autoencoder").write_bytes(b"")
    assert pipeline.resume_point("last", run, two_phase=True).autoencoder == str(run.last_checkpoint("autoencoder"))
    run.last_checkpoint().write_bytes(b"")
    assert pipeline.resume_point("last", run, two_phase=True).final == str(run.last_checkpoint())
    # a plain directory still means the default layout below it
    with pytest.raises(ConfigError, match="no last.ckpt"):
        pipeline.resume_point("last", tmp_path / "run", two_phase=True)


@pytest.mark.parametrize(
    ("output", "summary", "metrics"),
    [
        ("members.parquet", "members.summary.json", "members.metrics.json"),
        ("m4.v2.csv", "m4.v2.summary.json", "m4.v2.metrics.json"),  # the stem, not the text before the first dot
        ("run.2026-01-01/members.fits", "run.2026-01-01/members.summary.json", "run.2026-01-01/members.metrics.json"),
    ],
)
def test_files_beside_the_predictions_are_named_by_stem(tmp_path, output, summary, metrics):
    assert summary_path(tmp_path / output) == tmp_path / summary
    assert metrics_path(tmp_path / output) == tmp_path / metrics
    assert reliability_path(metrics_path(tmp_path / output)).name.endswith(".metrics.reliability.png")


def test_write_summary_replaces_atomically_and_outputs_are_checked(tmp_path):
    output = prediction_output(tmp_path / "new" / "members.x.parquet")
    assert output.parent.is_dir()
    path = write_summary({"cluster_group": 1}, output)
    assert path == tmp_path / "new" / "members.x.summary.json" and json.loads(path.read_text()) == {"cluster_group": 1}
    write_summary({"cluster_group": 2}, output)
    assert json.loads(path.read_text())["cluster_group"] == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    with pytest.raises(ConfigError, match=r"\.parquet or \.csv"):
        prediction_output(tmp_path / "members.fits")
