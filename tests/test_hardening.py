"""Hardening: what a new user can do wrong ends in one line (``grasp-dl: error: ...``, exit 2) or in flagged
rows, with every input unchanged (by sha256) and no file touched but the declared outputs.

Helpers and the fast training settings come from ``test_bad_inputs``; the CLI runs in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from test_bad_inputs import FAST, SMALL, assert_one_line_error, digest, no_temp_files, run_cli

from grasp_dl.data.catalog import read_catalog, write_catalog
from grasp_dl.data.prepare import prepare_stellar_data
from grasp_dl.data.simulate import simulate_field
from grasp_dl.inference.predict import load_clustering_module
from grasp_dl.jobs import train as pipeline
from grasp_dl.membership.guards import zero_member_prob_file
from grasp_dl.runtime.checkpoints import HASH_KEY, SaveLastCheckpoint
from grasp_dl.runtime.errors import CheckpointError
from grasp_dl.runtime.io_policy import RunLock, install_sigterm_cleanup, remove_stale_temps, strict_json

from hydra_configs import compose_config

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dec_run(tmp_path_factory):
    return pipeline.train(compose_config("train", SMALL, tmp_path_factory.mktemp("dec")))


@pytest.fixture(scope="module")
def ckpt(dec_run) -> Path:
    return dec_run.checkpoint


@pytest.fixture(scope="module")
def cone(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """A small simulated cone of the trained field (with a truth column), as CSV."""
    df = simulate_field("m4", n_stars=400, seed=3)
    path = tmp_path_factory.mktemp("cone") / "cone.csv"
    write_catalog(df, path)
    return df, path


@pytest.fixture(scope="module")
def field(tmp_path_factory, cone) -> Path:
    """The cone without its cluster: the guards find no cluster there and zero member_prob."""
    df, _ = cone
    path = tmp_path_factory.mktemp("field") / "field.csv"
    write_catalog(df[df["truth"] != "cluster"].reset_index(drop=True), path)
    return path


def predict_args(ckpt: Path, data: Path, output: Path, *extra: str) -> list[str]:
    return ["predict", f"ckpt_path={ckpt}", f"data.path={data}", f"output={output}", *extra]


def hydra_dir(tmp_path: Path) -> str:
    return f"hydra.run.dir={tmp_path}/hydra"


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# =========================================================================== data lost


def test_zeroing_never_touches_a_file_named_like_the_output(capsys, tmp_path, ckpt, field):
    """No cluster found: member_prob is zeroed through a unique temporary file, not <stem>.zeroed<suffix>."""
    out_dir = tmp_path / "dl"
    out_dir.mkdir()
    data = out_dir / "members.zeroed.csv"
    data.write_bytes(field.read_bytes())
    before = digest(data, ckpt)
    code, out, err = run_cli(capsys, *predict_args(ckpt, data, out_dir / "members.csv", hydra_dir(tmp_path)))
    assert code == 0, err[-2000:]
    summary = json.loads((out_dir / "members.summary.json").read_text())
    assert summary["cluster_found"] is False
    assert digest(data, ckpt) == before
    assert no_temp_files(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "members.csv",
        "members.png",
        "members.summary.json",
        "members.zeroed.csv",
    ]


def test_zero_member_prob_file_leaves_siblings_alone(tmp_path):
    table = pd.DataFrame({"source_id": [1, 2], "label": [0, -1], "member_prob": [0.9, np.nan], "flag": ["", "x"]})
    path = tmp_path / "p.csv"
    write_catalog(table, path)
    sibling = tmp_path / "p.zeroed.csv"
    sibling.write_text("precious\n")
    zero_member_prob_file(path)
    assert sibling.read_text() == "precious\n"
    assert read_catalog(path)["member_prob"].iloc[0] == 0.0
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("blocked", [".summary.json", ".png"])
def test_an_output_that_is_a_directory_is_refused_before_anything_is_written(capsys, tmp_path, ckpt, cone, blocked):
    _, data = cone
    output = tmp_path / "members.csv"
    output.write_text("old predictions\n")
    (tmp_path / f"members{blocked}").mkdir()
    other = tmp_path / ("members.summary.json" if blocked == ".png" else "members.png")
    other.write_text("old\n")
    before = digest(output, other, data, ckpt)
    result = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert_one_line_error(result, "existing directory", f"members{blocked}")
    assert digest(output, other, data, ckpt) == before
    assert no_temp_files(tmp_path)


def test_an_output_in_use_by_a_live_run_is_refused_and_a_stale_lock_taken_over(capsys, tmp_path, ckpt, cone):
    _, data = cone
    output = tmp_path / "members.csv"
    lock = tmp_path / ".members.csv.lock"
    lock.write_text(f"{os.getppid()}\n")  # a live process other than this one
    result = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert_one_line_error(result, "in use by another grasp-dl run", str(os.getppid()))
    assert not output.exists() and lock.read_text() == f"{os.getppid()}\n"
    lock.write_text(f"{dead_pid()}\n")  # its process is gone: taken over
    code, _, err = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert code == 0, err[-2000:]
    assert output.exists() and not lock.exists()


def test_a_run_directory_in_use_is_refused_before_hydra_writes_into_it(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".grasp-dl.lock").write_text(f"{os.getppid()}\n")
    result = run_cli(capsys, "train", *SMALL, f"hydra.run.dir={run_dir}", "overwrite=true")
    assert_one_line_error(result, "in use by another grasp-dl run")
    assert sorted(p.name for p in run_dir.iterdir()) == [".grasp-dl.lock"]


def test_run_lock_unit(tmp_path):
    target = tmp_path / "out.csv"
    with RunLock(target, "output") as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(Exception, match="in use by another grasp-dl run"):
            RunLock(target, "output").acquire()
    assert not lock.path.exists()


def test_temp_files_of_a_killed_run_are_removed_by_the_next(capsys, tmp_path, ckpt, cone):
    """kill -9 cannot clean up; the next run into the same output removes what a dead process left."""
    _, data = cone
    output = tmp_path / "members.csv"
    stale = tmp_path / f".members.csv.{dead_pid()}.abc123.tmp.csv"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".members.csv.{os.getppid()}.def456.tmp.csv"
    live.write_bytes(b"y")
    unrelated = tmp_path / ".members.csv.notes"
    unrelated.write_text("mine\n")
    code, _, err = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert code == 0, err[-2000:]
    assert not stale.exists() and live.exists() and unrelated.read_text() == "mine\n"
    assert remove_stale_temps(output) == []


def test_sigkill_during_predict_then_rerun_leaves_no_temp_file(tmp_path, ckpt):
    """A real kill -9 mid-write, then the same command again: no hidden file stays."""
    big = simulate_field("m4", n_stars=20000, seed=5)
    data = tmp_path / "big.csv"
    write_catalog(big, data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [*predict_args(ckpt, data, out_dir / "m.csv", "chunk_size=500", "figures=false"), hydra_dir(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    code = "import sys; from grasp_dl.cli import main; main(sys.argv[1:])"
    child = subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not [p for p in out_dir.iterdir() if ".tmp" in p.name]:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert no_temp_files(out_dir)


class _Worsening(L.LightningModule):
    """A model whose monitored value never improves after the first epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w - 1).pow(2).sum() + 0 * batch[0].sum()

    def validation_step(self, batch, _):
        self.log("val", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    val_dataloader = train_dataloader


class _StopAt(L.Callback):
    def __init__(self, epoch: int, how: str) -> None:
        self.epoch, self.how = epoch, how

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            raise SystemExit(143)


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_last_checkpoint_is_fresh_at_every_epoch_and_on_sigterm(tmp_path, how):
    """last.ckpt is the newest epoch even when the monitored value stopped improving, and on SIGTERM."""
    import hydra

    from hydra_configs import compose_config as compose

    cfg = compose("train", [], tmp_path)
    callbacks = [
        hydra.utils.instantiate({**cfg.callbacks.model_checkpoint, "monitor": "val", "dirpath": str(tmp_path)}),
        hydra.utils.instantiate(cfg.callbacks.last_checkpoint),
        hydra.utils.instantiate(cfg.callbacks.checkpoint_hash),
        _StopAt(6, how),
    ]
    trainer = L.Trainer(
        max_epochs=20, callbacks=callbacks, logger=False, enable_progress_bar=False, accelerator="cpu", devices=1
    )
    previous = signal.getsignal(signal.SIGTERM)
    install_sigterm_cleanup()
    try:
        with pytest.raises(SystemExit):
            trainer.fit(_Worsening())
    finally:
        signal.signal(signal.SIGTERM, previous)
    content = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert content["epoch"] >= 5 and HASH_KEY in content
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


def test_save_last_checkpoint_needs_a_positive_interval():
    with pytest.raises(CheckpointError):
        SaveLastCheckpoint(every_n_epochs=0)


# =========================================================================== silent wrong results


def test_impossible_errors_and_correlations_are_flagged_not_fitted(cone):
    df, _ = cone
    bad = df.copy()
    bad.loc[0:3, "pmra_pmdec_corr"] = 1.5
    bad.loc[4:5, "parallax_error"] = -0.1
    bad.loc[6, "pmra_error"] = 0.0
    prepared = prepare_stellar_data(bad, features=["ra", "dec", "pmra", "pmdec"], outlier_removal=False)
    flags = pd.Series(prepared.flags)
    assert (flags[0:4] == "out_of_range:pmra_pmdec_corr").all()
    assert (flags[4:6] == "out_of_range:parallax_error").all()
    assert flags[6] == "out_of_range:pmra_error"
    assert not prepared.mask[:7].any()


def test_xd_train_on_a_catalogue_with_bad_correlations_ends_finite(capsys, tmp_path):
    df = simulate_field("m4", n_stars=1500, seed=4)
    rows = np.random.default_rng(0).choice(len(df), 15, replace=False)
    df.loc[rows, "pmra_pmdec_corr"] = 1.5
    df.loc[rows[:5], "parallax_error"] = -1.0
    path = tmp_path / "bad_corr.csv"
    write_catalog(df, path)
    before = digest(path)
    code, out, err = run_cli(
        capsys,
        "train",
        "data=catalog",
        f"data.path={path}",
        "model=xd",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path}/run",  # TensorBoard and its figures on: they drew NaN before
    )
    assert code == 0, err[-3000:]
    assert "nan" not in out.lower(), out
    content = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    tensors = [v for v in content["state_dict"].values() if isinstance(v, torch.Tensor)]  # not the extra state
    assert all(torch.isfinite(v).all() for v in tensors if v.is_floating_point())
    assert digest(path) == before


def test_duplicate_source_ids_are_flagged_in_predict_and_refused_as_truth(capsys, tmp_path, ckpt, cone):
    df, _ = cone
    dup = pd.concat([df, df.iloc[:10]], ignore_index=True)
    data = tmp_path / "dup.csv"
    write_catalog(dup, data)
    before = digest(data)
    output = tmp_path / "members.csv"
    code, _, err = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert code == 0, err[-2000:]
    table = read_catalog(output)
    repeats = table.index >= len(df)
    assert (table.loc[repeats, "flag"] == "duplicate:source_id").all() and (table.loc[repeats, "label"] == -1).all()
    assert (table.loc[~repeats, "flag"] != "duplicate:source_id").all()
    result = run_cli(capsys, "evaluate", f"predictions={output}", f"truth={data}", hydra_dir(tmp_path))
    assert_one_line_error(result, "truth table has 20 rows sharing 10 source_id")
    assert digest(data) == before
    assert not (tmp_path / "members.metrics.json").exists()


def test_ids_written_as_floats_are_never_read_as_floats(tmp_path, caplog):
    df = pd.DataFrame({"source_id": [6054300000000000001, 6054300000000000002, 12], "ra": [1.0, 2.0, 3.0]})
    text = tmp_path / "exp.csv"
    text.write_text("source_id,ra\n6.0543e+18,1.0\n6.0543e+18,2.0\n12,3.0\n")
    with caplog.at_level("WARNING"):
        read = read_catalog(text)
    assert not pd.api.types.is_float_dtype(read["source_id"]) and "floating-point" in caplog.text
    assert read["source_id"].iloc[0] == "6.0543e+18"
    floats = tmp_path / "floats.parquet"
    df.astype({"source_id": float}).to_parquet(floats)
    read = read_catalog(floats)
    assert not pd.api.types.is_float_dtype(read["source_id"]) and read["source_id"].iloc[2] == "12.0"
    exact = tmp_path / "exact.parquet"
    pd.DataFrame({"source_id": [1.0, 2.0], "ra": [1.0, 2.0]}).to_parquet(exact)
    assert read_catalog(exact)["source_id"].dtype == np.int64


def test_a_bad_model_target_is_an_error_not_a_fallback(capsys, tmp_path):
    result = run_cli(
        capsys, "train", "data.simulate.n_stars=800", "model._target_=builtins.print", f"hydra.run.dir={tmp_path}"
    )
    assert_one_line_error(result, "model._target_=builtins.print")
    assert not (tmp_path / "checkpoints").exists()


def test_a_centre_must_have_two_values_in_train_and_predict(capsys, tmp_path, ckpt, cone):
    _, data = cone
    result = run_cli(capsys, "train", *SMALL, "data.center=[278.9,-33.0,5]", f"hydra.run.dir={tmp_path}/t")
    assert_one_line_error(result, "data.center", "exactly two")
    result = run_cli(
        capsys, *predict_args(ckpt, data, tmp_path / "m.csv", "data.center=[278.9,-33.0,5]", hydra_dir(tmp_path))
    )
    assert_one_line_error(result, "data.center", "exactly two")
    assert not (tmp_path / "m.csv").exists()


def test_data_columns_maps_names_in_predict_as_in_train(capsys, tmp_path, ckpt, cone):
    df, _ = cone
    data = tmp_path / "renamed.csv"
    write_catalog(df.rename(columns={"pmra": "PMRA_X"}), data)
    output = tmp_path / "m.csv"
    result = run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))
    assert_one_line_error(result, "pmra")
    code, _, err = run_cli(
        capsys, *predict_args(ckpt, data, output, "+data.columns={PMRA_X: pmra}", hydra_dir(tmp_path))
    )
    assert code == 0, err[-2000:]
    assert (read_catalog(output)["label"] >= 0).sum() > 300


def test_the_summary_is_strict_json_when_no_cluster_is_found(capsys, tmp_path, ckpt, field):
    output = tmp_path / "m.csv"
    code, _, err = run_cli(capsys, *predict_args(ckpt, field, output, hydra_dir(tmp_path)))
    assert code == 0, err[-2000:]

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    summary = json.loads((tmp_path / "m.summary.json").read_text(), parse_constant=refuse)
    assert summary["cluster_found"] is False
    assert (
        strict_json({"a": float("nan"), "b": [np.float32("inf"), 1]})
        == '{\n  "a": null,\n  "b": [\n    null,\n    1\n  ]\n}\n'
    )


def test_a_corrupted_checkpoint_is_refused_in_one_line(capsys, tmp_path, ckpt, cone):
    _, data = cone
    content = torch.load(ckpt, weights_only=True)
    assert HASH_KEY in content
    key = next(k for k, v in content["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    flat = content["state_dict"][key].view(-1)
    flat.view(torch.int32)[0] ^= 1 << 20  # one flipped bit
    bad = tmp_path / "flipped.ckpt"
    torch.save(content, bad)
    with pytest.raises(CheckpointError, match="damaged"):
        load_clustering_module(bad)
    result = run_cli(capsys, *predict_args(bad, data, tmp_path / "m.csv", hydra_dir(tmp_path)))
    assert_one_line_error(result, "damaged", str(bad))
    del content[HASH_KEY]  # older checkpoints, without a hash, still load
    old = tmp_path / "old.ckpt"
    torch.save(content, old)
    load_clustering_module(old)


# =========================================================================== tracebacks -> one line


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model=dec", "model.optimizer.lr=nan"], "model.optimizer.lr"),
        (["model=vade", "model.pretrain.optimizer.lr=inf"], "model.pretrain.optimizer.lr"),
        (["seed=-1"], "seed=-1"),
    ],
)
def test_bad_numbers_in_options_are_one_line(capsys, tmp_path, overrides, needle):
    result = run_cli(capsys, "train", *SMALL, *overrides, f"hydra.run.dir={tmp_path}")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "checkpoints").exists()


def test_an_unwritable_run_directory_is_one_line(capsys, tmp_path, ckpt, cone, monkeypatch):
    _, data = cone
    result = run_cli(capsys, "train", *SMALL, "hydra.run.dir=/proc/x")
    assert_one_line_error(result, "hydra.run.dir=/proc/x")
    monkeypatch.chdir("/proc")
    result = run_cli(capsys, *predict_args(ckpt, data, tmp_path / "m.csv"))
    assert_one_line_error(result, "current directory /proc is not writable")
    assert not (tmp_path / "m.csv").exists()
    code, out, _ = run_cli(capsys, "predict", "--cfg", "job")  # Hydra's flags write no run directory
    assert code == 0 and "ckpt_path" in out


def test_a_symlink_loop_as_data_path_is_one_line(capsys, tmp_path, ckpt):
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    result = run_cli(capsys, *predict_args(ckpt, loop, tmp_path / "m.csv", hydra_dir(tmp_path)))
    assert_one_line_error(result, "loop.csv")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c.__setitem__("clustering_module", "os.system"), "not a grasp-dl clustering model"),
        (lambda c: c.__setitem__("clustering_module", "grasp_dl.nowhere.Module"), "not a grasp-dl clustering model"),
        (lambda c: c["hyper_parameters"]["preprocessing"].__setitem__("center", "abc"), "stores the centre"),
        (lambda c: c["hyper_parameters"]["preprocessing"].__setitem__("center", [1.0]), "stores the centre"),
    ],
)
def test_edited_checkpoints_are_one_line(capsys, tmp_path, ckpt, cone, change, needle):
    _, data = cone
    content = torch.load(ckpt, weights_only=True)
    change(content)
    bad = tmp_path / "edited.ckpt"
    torch.save(content, bad)
    before = digest(bad, data)
    result = run_cli(capsys, *predict_args(bad, data, tmp_path / "m.csv", hydra_dir(tmp_path)))
    assert_one_line_error(result, needle)
    assert digest(bad, data) == before and not (tmp_path / "m.csv").exists()


def test_a_cone_too_small_for_a_mixture_is_one_line(capsys, tmp_path, cone):
    df, _ = cone
    path = tmp_path / "tiny.csv"
    write_catalog(df.head(15), path)
    result = run_cli(
        capsys, "train", "data=catalog", f"data.path={path}", "model=xd", "logger=csv", f"hydra.run.dir={tmp_path}/r"
    )
    assert_one_line_error(result, "too few stars", "at least 20")


@pytest.mark.parametrize("model", ["model=xd", "experiment=multimodal"])
def test_a_cone_of_21_stars_with_2_held_out_for_validation_is_one_line(capsys, tmp_path, cone, model):
    """21 stars with astrometry, 2 of them the validation split: the mixture would be fitted to 19 (was a traceback)."""
    df, _ = cone
    path = tmp_path / "twenty.csv"
    write_catalog(df[df["pmra"].notna() & df["parallax"].notna()].head(21), path)
    args = ["train", "data=catalog", f"data.path={path}", model, "data.val_fraction=0.1", "logger=csv"]
    result = run_cli(capsys, *args, f"hydra.run.dir={tmp_path}/r")
    assert_one_line_error(result, "with astrometry to fit (2 more held out for validation", "val_fraction=0")


# =========================================================================== resources


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits", ".csv.gz"])
def test_a_huge_file_that_is_no_table_is_refused_in_bounded_memory(capsys, tmp_path, ckpt, suffix):
    import resource

    zeros = tmp_path / f"zeros{suffix}"
    with open(zeros, "wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: costs no disk
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = run_cli(capsys, *predict_args(ckpt, zeros, tmp_path / "m.csv", hydra_dir(tmp_path)))
    assert_one_line_error(result, "is not a", "table")
    result = run_cli(capsys, "train", "data=catalog", f"data.path={zeros}", *FAST, f"hydra.run.dir={tmp_path}/r")
    assert_one_line_error(result, "is not a", "table")
    assert time.perf_counter() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500 * 1024  # KiB: under 500 MB more


def test_tensorboard_log_stays_bounded(tmp_path):
    """One event file per phase and one projector folder per phase, however many epochs the views are drawn at."""
    overrides = [
        "model=dec",
        "data.simulate.n_stars=800",
        "trainer.max_epochs=7",
        "model.pretrain_epochs=7",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "callbacks.tensorboard_figures.every_n_epochs=2",
        "callbacks.tensorboard_figures.max_stars=100",
        "callbacks.early_stopping.patience=100",
    ]
    pipeline.train(compose_config("train", overrides, tmp_path))
    for phase in (tmp_path / "tensorboard", tmp_path / "tensorboard" / "autoencoder"):
        assert len(list(phase.glob("events.out.tfevents.*"))) == 1, phase
        assert len(list(phase.glob("*/latent/tensors.tsv"))) == 1, phase


def test_staged_outputs_get_the_usual_permissions(tmp_path):
    from grasp_dl.runtime.io_policy import StagedOutputs

    umask = os.umask(0o022)
    try:
        with StagedOutputs({"output": tmp_path / "a.json"}) as staged:
            staged.temp("output").write_text("{}\n")
            staged.commit()
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert no_temp_files(tmp_path)


def test_sigterm_during_train_keeps_a_fresh_last_checkpoint_and_frees_the_run_directory(tmp_path):
    """A real SIGTERM to grasp-dl train: exit 143, last.ckpt of the newest epoch, the run's lock removed."""
    run = tmp_path / "run"
    args = [
        "train",
        "model=dec",
        "data.simulate.n_stars=800",
        "trainer.max_epochs=5",
        "model.pretrain_epochs=100000",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.early_stopping.patience=100000",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    code = "import sys; from grasp_dl.cli import main; main(sys.argv[1:])"
    child = subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=tmp_path)
    last = run / "checkpoints" / "autoencoder" / "last.ckpt"
    deadline = time.time() + 180
    while time.time() < deadline and child.poll() is None:
        if last.exists() and (run / ".grasp-dl.lock").exists():
            time.sleep(3)  # some epochs more
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=120) == 143
    assert not (run / ".grasp-dl.lock").exists()
    newest = torch.load(last, weights_only=True)
    assert newest["epoch"] >= torch.load(last.with_name("best.ckpt"), weights_only=True)["epoch"]
    assert newest["epoch"] >= 3 and HASH_KEY in newest


def test_evaluate_checks_both_outputs_before_writing_either(capsys, tmp_path, ckpt, cone):
    _, data = cone
    output = tmp_path / "m.csv"
    assert run_cli(capsys, *predict_args(ckpt, data, output, hydra_dir(tmp_path)))[0] == 0
    (tmp_path / "m.metrics.reliability.png").mkdir()
    before = digest(output, data)
    result = run_cli(capsys, "evaluate", f"predictions={output}", f"truth={data}", hydra_dir(tmp_path))
    assert_one_line_error(result, "existing directory", "m.metrics.reliability.png")
    assert not (tmp_path / "m.metrics.json").exists() and digest(output, data) == before
    assert no_temp_files(tmp_path)
