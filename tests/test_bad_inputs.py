"""Hostile and careless inputs: every case ends in one line of error or in flagged rows, never a
traceback, and never a changed input file (checked by hash). Issue 16.

The CLI is run in-process (``grasp_dl.cli.main``), so a traceback shows up as Hydra's report on
stderr and exit code 1, a handled error as ``grasp-dl: error: ...`` and exit code 2.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grasp_dl.api import DeepClusteringModel
from grasp_dl.cli import main
from grasp_dl.data.catalog import iter_catalog, read_catalog, write_catalog
from grasp_dl.data.prepare import prepare_stellar_data
from grasp_dl.data.simulate import simulate_field
from grasp_dl.inference.predict import load_clustering_module, predict_catalog, predict_to_file
from grasp_dl.jobs import train as pipeline
from grasp_dl.runtime.errors import CatalogError, CheckpointError, ConfigError, GraspDLError
from grasp_dl.runtime.io_policy import prepare_run_dir

from hydra_configs import compose_config

#: A training run of a second or two: a small simulated field, one epoch per phase, few callbacks.
FAST = [
    "model=dec",
    "trainer.max_epochs=1",
    "model.pretrain_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "~callbacks.tensorboard_figures",
]
#: On the bundled simulated field, shrunk.
SMALL = ["data.simulate.n_stars=800", *FAST]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- helpers


def digest(*paths: Path) -> dict[str, str]:
    """sha256 of each file (what 'the input is unchanged' is checked against)."""
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``grasp-dl ARGS`` in this process; return (exit code, stdout, stderr)."""
    argv = sys.argv
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
        # Hydra's job logging points handlers at this test's captured streams: undo it.
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], *needles: str) -> str:
    """The command ended with exit code 2 and exactly one 'grasp-dl: error:' line containing ``needles``."""
    code, _, err = result
    assert "Traceback" not in err and "Error executing job" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("grasp-dl: error: ")]
    assert code == 2 and len(lines) == 1, (code, err[-3000:])
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_temp_files(directory: Path) -> bool:
    """No hidden or .tmp file left behind in ``directory``."""
    return not [p for p in directory.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dec_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dec")
    result = pipeline.train(compose_config("train", SMALL + ["model=dec"], out))
    return result


@pytest.fixture(scope="module")
def vade_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vade")
    return pipeline.train(compose_config("train", SMALL + ["model=vade"], out))


@pytest.fixture(scope="module")
def dec_ckpt(dec_run) -> Path:
    return dec_run.checkpoint


@pytest.fixture(scope="module")
def dec_module(dec_ckpt):
    return load_clustering_module(dec_ckpt)


@pytest.fixture(scope="module")
def cone(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    """A small simulated cone of the same field (with a truth column), as CSV."""
    df = simulate_field("m4", n_stars=400, seed=3)
    path = tmp_path_factory.mktemp("cone") / "cone.csv"
    write_catalog(df, path)
    return df, path


# =========================================================================== data loss


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_output_onto_its_input_is_refused(capsys, tmp_path, dec_ckpt, cone, suffix):
    df, _ = cone
    data = tmp_path / f"cone{suffix}"
    write_catalog(df, data)
    before = digest(data, dec_ckpt)
    for output in (data, tmp_path / ".." / tmp_path.name / data.name):
        result = run_cli(
            capsys,
            "predict",
            f"ckpt_path={dec_ckpt}",
            f"data.path={data}",
            f"output={output}",
            f"hydra.run.dir={tmp_path}/run",
        )
        assert_one_line_error(result, "same file as data.path", "choose another output")
    assert digest(data, dec_ckpt) == before


def test_evaluate_output_onto_truth_or_predictions_is_refused(capsys, tmp_path, dec_module, cone):
    df, _ = cone
    truth = tmp_path / "truth.csv"
    write_catalog(df, truth)
    table, _ = predict_catalog(dec_module, df)
    predictions = tmp_path / "pred.parquet"
    write_catalog(table, predictions)
    before = digest(truth, predictions)
    for output, option in ((truth, "truth"), (predictions, "predictions")):
        result = run_cli(
            capsys,
            "evaluate",
            f"predictions={predictions}",
            f"truth={truth}",
            f"output={output}",
            f"hydra.run.dir={tmp_path}/run",
        )
        assert_one_line_error(result, f"same file as {option}=")
    assert digest(truth, predictions) == before
    # and evaluate still works with a proper output
    result = run_cli(
        capsys,
        "evaluate",
        f"predictions={predictions}",
        f"truth={truth}",
        f"output={tmp_path}/m.json",
        f"hydra.run.dir={tmp_path}/run",
    )
    assert result[0] == 0 and (tmp_path / "m.json").is_file() and no_temp_files(tmp_path)


@pytest.mark.slow
def test_training_into_a_finished_run_directory(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["train", *SMALL, f"hydra.run.dir={run}"]
    assert run_cli(capsys, *args)[0] == 0
    last = run / "checkpoints" / "last.ckpt"
    first = digest(last, run / ".hydra" / "config.yaml")
    # a second run into the same directory is refused, and leaves the first run's files (its config too) alone
    assert_one_line_error(
        run_cli(capsys, *args, "model.n_clusters=4"), "already holds a run", "overwrite=true", "ckpt_path=last"
    )
    assert digest(last, run / ".hydra" / "config.yaml") == first
    # the check inside the task too (a run directory given another way, e.g. a config file)
    cfg = compose_config("train", SMALL, run)
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(cfg.paths.output_dir)
    first = digest(last)
    # overwrite=true replaces it: no last-v1.ckpt, and the printed final model is the file this run wrote
    code, out, err = run_cli(capsys, *args, "overwrite=true", "seed=7")
    assert code == 0, err[-3000:]
    assert not list(run.rglob("last-v*.ckpt")) and digest(last) != first
    assert f"final model: {last}" in out
    # resuming the run is allowed
    code, out, err = run_cli(capsys, *args, "ckpt_path=last", "trainer.max_epochs=2")
    assert code == 0, err[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_final_model_is_the_file_this_run_wrote(tmp_path):
    """Through the pipeline (no run-directory check), a stale last.ckpt is never reported as this run's."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / "last.ckpt"
    stale.write_bytes(b"an old run's checkpoint")
    result = pipeline.train(compose_config("train", SMALL, run))
    assert result.checkpoint is not None and result.checkpoint != stale
    assert result.checkpoint.is_file() and stale.read_bytes() == b"an old run's checkpoint"
    cfg = compose_config("train", SMALL, run)
    assert f"final model: {result.checkpoint}" in pipeline.summarise(result, cfg)


# =========================================================================== silent wrong results


def test_duplicate_columns_are_an_error_naming_them(capsys, tmp_path, dec_ckpt, cone):
    df, _ = cone
    path = tmp_path / "twice.csv"
    text = df.head(50).to_csv(index=False).splitlines()
    header = text[0].split(",")
    i = header.index("pmra")
    rows = [",".join(line.split(",") + [line.split(",")[i]]) for line in text[1:]]
    path.write_text(",".join(header + ["pmra"]) + "\n" + "\n".join(rows) + "\n")
    before = digest(path)
    with pytest.raises(CatalogError, match="'pmra' and 'pmra'"):
        read_catalog(path)
    with pytest.raises(CatalogError, match="'pmra' and 'pmra'"):
        list(iter_catalog(path, keep=["pmra"]))
    assert_one_line_error(
        run_cli(
            capsys,
            "predict",
            f"ckpt_path={dec_ckpt}",
            f"data.path={path}",
            f"output={tmp_path}/o.csv",
            f"hydra.run.dir={tmp_path}/p",
        ),
        "'pmra' and 'pmra'",
    )
    assert_one_line_error(
        run_cli(capsys, "train", "data=catalog", *FAST, f"data.path={path}", f"hydra.run.dir={tmp_path}/t"),
        "'pmra' and 'pmra'",
    )
    assert digest(path) == before


@pytest.mark.parametrize(
    ("column", "value", "flag"),
    [
        ("pmra", 1e20, "out_of_range:pmra"),
        ("pmdec", -2e4, "out_of_range:pmdec"),
        ("parallax", 5e3, "out_of_range:parallax"),
        ("dec", 95.0, "out_of_range:dec"),
        ("pmra", np.inf, "nonfinite:pmra"),
        ("parallax", -np.inf, "nonfinite:parallax"),
    ],
)
def test_impossible_values_are_flagged_not_scored(dec_module, cone, column, value, flag):
    df, _ = cone
    bad = df.copy()
    bad.loc[[3, 7], column] = value
    prepared = prepare_stellar_data(bad, outlier_removal=False)
    assert list(prepared.flags[[3, 7]]) == [flag, flag] and prepared.cuts[flag] == 2
    assert np.isfinite(prepared.features).all()
    clean, clean_summary = predict_catalog(dec_module, df)
    assert (clean.loc[[3, 7], "label"] >= 0).all()
    table, summary = predict_catalog(dec_module, bad)
    assert (table.loc[[3, 7], "label"] == -1).all() and (table.loc[[3, 7], "flag"] == flag).all()
    assert summary["not_scored"][flag] == 2 and summary["n_scored"] == clean_summary["n_scored"] - 2


def test_every_row_has_finite_probabilities_or_a_flag(dec_module, cone, monkeypatch):
    """The last check of scoring: whatever the network returns, a NaN probability is never a scored row."""
    df, _ = cone
    real = type(dec_module).predict_proba

    def broken(self, x):
        prob = real(self, x).clone()
        prob[::5] = float("nan")
        return prob

    monkeypatch.setattr(type(dec_module), "predict_proba", broken)
    table, summary = predict_catalog(dec_module, df)
    probs = table.filter(like="prob_").to_numpy()
    scored = table["label"].to_numpy() >= 0
    assert np.isfinite(probs[scored]).all() and (table.loc[~scored, "flag"] != "").all()
    assert (table["flag"] == "nonfinite:probability").sum() > 50
    assert summary["n_scored"] == int(scored.sum())


def test_zero_epochs_is_a_clear_error(capsys, tmp_path):
    result = run_cli(capsys, "train", *SMALL, "trainer.max_epochs=0", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(result, "trainer.max_epochs=0")
    assert not (tmp_path / "checkpoints").exists()
    result = run_cli(capsys, "train", *SMALL, "model.pretrain_epochs=0", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(result, "model.pretrain_epochs=0")


def test_member_prob_std_does_not_depend_on_chunk_size(vade_run, cone, tmp_path):
    module = load_clustering_module(vade_run.checkpoint)
    df, path = cone
    whole, _ = predict_catalog(module, df, chunk_size=100_000)
    assert whole["member_prob_std"].notna().sum() > 300 and whole["member_prob_std"].max() > 0
    for chunk_size in (1, 7, 64):
        table, _ = predict_catalog(module, df, chunk_size=chunk_size)
        np.testing.assert_allclose(table["member_prob_std"], whole["member_prob_std"], rtol=1e-5, atol=1e-6)
    predict_to_file(module, path, tmp_path / "streamed.parquet", chunk_size=33)
    streamed = read_catalog(tmp_path / "streamed.parquet")
    np.testing.assert_allclose(streamed["member_prob_std"], whole["member_prob_std"], rtol=1e-5, atol=1e-6)


# =========================================================================== one-line errors


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.csv", b"", "is empty"),
        ("empty.parquet", b"", "cannot read"),
        ("csv.fits", b"ra,dec\n1,2\n", "as fits"),
        ("csv.parquet", b"ra,dec\n1,2\n", "as parquet"),
        ("header_only.csv", b"ra,dec,pmra,pmdec,parallax\n", "no rows"),
    ],
)
def test_unreadable_catalogues_give_one_line_in_train_and_predict(capsys, tmp_path, dec_ckpt, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    before = digest(path)
    assert_one_line_error(
        run_cli(
            capsys,
            "predict",
            f"ckpt_path={dec_ckpt}",
            f"data.path={path}",
            f"output={tmp_path}/o.csv",
            f"hydra.run.dir={tmp_path}/p",
        ),
        needle,
        name,
    )
    assert_one_line_error(
        run_cli(capsys, "train", "data=catalog", *FAST, f"data.path={path}", f"hydra.run.dir={tmp_path}/t"),
        needle,
        name,
    )
    assert digest(path) == before and no_temp_files(tmp_path)


def _lightning_dict(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _bad_checkpoints(directory: Path, dec_ckpt: Path, autoencoder_ckpt: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain)."""
    good = dec_ckpt.read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, needle: str) -> None:
        path = directory / f"{name}.ckpt"
        path.write_bytes(data)
        files[name] = (path, needle)

    add("truncated", good[: len(good) // 2], "cannot be read")
    add("random", np.random.default_rng(0).bytes(5000), "refused")
    add("empty", b"", "is empty")
    lst = directory / "list.ckpt"
    torch.save([1, 2, 3], lst)
    files["list"] = (lst, "not a Lightning checkpoint")
    nokeys = directory / "nokeys.ckpt"
    torch.save({"weights": torch.zeros(3)}, nokeys)
    files["nokeys"] = (nokeys, "not a Lightning checkpoint")
    content = _lightning_dict(dec_ckpt)
    key = next(k for k, v in content["state_dict"].items() if k.startswith("net.") and v.ndim == 2)
    content["state_dict"][key] = torch.zeros(3, 3)
    content.pop("state_dict_sha256", None)  # as a checkpoint written before the hash (else: "damaged")
    shape = directory / "shape.ckpt"
    torch.save(content, shape)
    files["shape"] = (shape, "size mismatch")
    files["autoencoder"] = (autoencoder_ckpt, "holds an autoencoder model")
    return files


def test_bad_checkpoints_give_one_line(capsys, tmp_path, dec_run, cone):
    _, data = cone
    autoencoder_ckpt = dec_run.output_dir / "checkpoints" / "autoencoder" / "last.ckpt"
    for name, (path, needle) in _bad_checkpoints(tmp_path, dec_run.checkpoint, autoencoder_ckpt).items():
        before = digest(path, data)
        with pytest.raises(CheckpointError, match=needle):
            load_clustering_module(path)
        message = assert_one_line_error(
            run_cli(
                capsys,
                "predict",
                f"ckpt_path={path}",
                f"data.path={data}",
                f"output={tmp_path}/o.csv",
                f"hydra.run.dir={tmp_path}/p",
            ),
            needle,
        )
        assert str(path) in message, name
        assert digest(path, data) == before


def test_resuming_from_a_checkpoint_of_another_model_or_shape_gives_one_line(capsys, tmp_path, dec_run, vade_run):
    before = digest(dec_run.checkpoint, vade_run.checkpoint)
    cases = [
        (vade_run.checkpoint, ["model=dec"], "holds a VaDE model, this run trains a DEC model"),
        (dec_run.checkpoint, ["model=vade"], "holds a DEC model, this run trains a VaDE model"),
        (dec_run.checkpoint, ["model=dec", "model.n_clusters=5"], "does not fit the configured model"),
    ]
    for ckpt, extra, needle in cases:
        result = run_cli(capsys, "train", *SMALL, *extra, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/r")
        assert_one_line_error(result, needle)
    assert digest(dec_run.checkpoint, vade_run.checkpoint) == before


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_never_a_checkpoint(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "random.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load_clustering_module(path)


@pytest.mark.slow
def test_pretrained_ckpt_missing_or_of_another_kind_or_features(capsys, tmp_path, dec_run):
    autoencoder = dec_run.output_dir / "checkpoints" / "autoencoder" / "last.ckpt"
    cases = [
        (tmp_path / "nowhere.ckpt", [], "not found"),
        (dec_run.checkpoint, [], "holds a DEC model"),
        (autoencoder, ["data.features=[ra,dec,pmra,pmdec]"], "trained on features"),
    ]
    for ckpt, extra, needle in cases:
        result = run_cli(
            capsys, "train", *SMALL, *extra, f"model.pretrained_ckpt={ckpt}", f"hydra.run.dir={tmp_path}/r"
        )
        assert_one_line_error(result, needle, "pretrained_ckpt")
    # the right autoencoder checkpoint is accepted
    result = run_cli(capsys, "train", *SMALL, f"model.pretrained_ckpt={autoencoder}", f"hydra.run.dir={tmp_path}/ok")
    assert result[0] == 0, result[2][-3000:]


@pytest.mark.parametrize("k", [0, 1, -3, "abc"])
def test_n_clusters_too_small_is_refused_before_training(capsys, tmp_path, k):
    result = run_cli(capsys, "train", *SMALL, f"model.n_clusters={k}", f"hydra.run.dir={tmp_path}")
    assert_one_line_error(result, "model.n_clusters", "at least 2")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("n_rows", [1, 2])
def test_tiny_catalogues_are_refused_with_one_line(capsys, tmp_path, cone, n_rows):
    df, _ = cone
    path = tmp_path / "tiny.csv"
    write_catalog(df.head(n_rows), path)
    result = run_cli(capsys, "train", "data=catalog", *FAST, f"data.path={path}", f"hydra.run.dir={tmp_path}/r")
    assert_one_line_error(result, "usable star")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_predict_chunk_size_must_be_a_positive_integer(capsys, tmp_path, dec_ckpt, cone, value):
    _, data = cone
    result = run_cli(
        capsys,
        "predict",
        f"ckpt_path={dec_ckpt}",
        f"data.path={data}",
        f"chunk_size={value}",
        f"output={tmp_path}/o.csv",
        f"hydra.run.dir={tmp_path}/p",
    )
    assert_one_line_error(result, "chunk_size")


def _read_only_directory(tmp_path: Path) -> Path:
    """A directory this process cannot write into (root ignores permission bits: /proc refuses root too)."""
    if os.geteuid() == 0:
        return Path("/proc")
    directory = tmp_path / "read_only"
    directory.mkdir()
    directory.chmod(0o500)
    return directory


def test_output_into_a_read_only_directory_or_onto_a_directory(capsys, tmp_path, dec_ckpt, cone):
    _, data = cone
    read_only = _read_only_directory(tmp_path)
    result = run_cli(
        capsys,
        "predict",
        f"ckpt_path={dec_ckpt}",
        f"data.path={data}",
        f"output={read_only}/members.csv",
        f"hydra.run.dir={tmp_path}/p",
    )
    assert_one_line_error(result, "not writable")
    target = tmp_path / "out.csv"
    target.mkdir()
    result = run_cli(
        capsys,
        "predict",
        f"ckpt_path={dec_ckpt}",
        f"data.path={data}",
        f"output={target}",
        f"hydra.run.dir={tmp_path}/p",
    )
    assert_one_line_error(result, "is an existing directory")
    assert no_temp_files(tmp_path) and not list(target.iterdir())


def test_rows_with_extra_fields_train_and_predict_agree(capsys, tmp_path, dec_ckpt, cone):
    df, _ = cone
    for where in (1, 40):  # the first data row (pandas would shift it into an index) and a later one
        path = tmp_path / f"extra{where}.csv"
        lines = df.head(60).to_csv(index=False).splitlines()
        lines[where] += ",999"
        path.write_text("\n".join(lines) + "\n")
        before = digest(path)
        predicted = assert_one_line_error(
            run_cli(
                capsys,
                "predict",
                f"ckpt_path={dec_ckpt}",
                f"data.path={path}",
                f"output={tmp_path}/o.csv",
                f"hydra.run.dir={tmp_path}/p",
            ),
            "more fields" if where == 1 else "Expected",
        )
        trained = assert_one_line_error(
            run_cli(capsys, "train", "data=catalog", *FAST, f"data.path={path}", f"hydra.run.dir={tmp_path}/t"),
        )
        assert predicted.split("(")[0] == trained.split("(")[0]
        assert digest(path) == before


def test_hydra_full_error_still_gives_the_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        main(["train", *SMALL, "trainer.max_epochs=0", f"hydra.run.dir={tmp_path}"])


@pytest.mark.slow
def test_sigterm_during_predict_leaves_no_temp_file(tmp_path, dec_ckpt):
    big = simulate_field("m4", n_stars=60_000, seed=4)
    data = tmp_path / "big.csv"
    write_catalog(big, data)
    output = tmp_path / "out" / "members.csv"
    output.parent.mkdir()
    output.write_text("previous output\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grasp_dl.cli",
            "predict",
            f"ckpt_path={dec_ckpt}",
            f"data.path={data}",
            f"output={output}",
            "chunk_size=200",
            f"hydra.run.dir={tmp_path}/p",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if [p for p in output.parent.iterdir() if ".tmp" in p.name]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert output.read_text() == "previous output\n"
    assert no_temp_files(output.parent), list(output.parent.iterdir())


# =========================================================================== untrusted checkpoints


class _Payload:
    """Unpickling this creates ``marker``: what an attacker's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(directory: Path, source: Path, name: str) -> tuple[Path, Path]:
    """A real checkpoint with a pickle payload added; returns (checkpoint, marker it would create)."""
    marker = directory / f"{name}.pwned"
    content = _lightning_dict(source)
    content["hyper_parameters"]["note"] = _Payload(marker)
    path = directory / f"{name}.ckpt"
    torch.save(content, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return path, marker


def test_the_payload_does_run_without_weights_only(tmp_path, dec_ckpt):
    """The crafted file is a real attack: loading it the unsafe way creates the marker."""
    path, marker = _crafted(tmp_path, dec_ckpt, "probe")
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_crafted_checkpoints_are_refused_on_every_load_path(capsys, tmp_path, monkeypatch, dec_run, cone):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    _, data = cone
    autoencoder = dec_run.output_dir / "checkpoints" / "autoencoder" / "last.ckpt"

    path, marker = _crafted(tmp_path, dec_run.checkpoint, "predict")
    assert_one_line_error(
        run_cli(
            capsys,
            "predict",
            f"ckpt_path={path}",
            f"data.path={data}",
            f"output={tmp_path}/o.csv",
            f"hydra.run.dir={tmp_path}/p",
        ),
        "refused",
    )
    assert not marker.exists()

    path, marker = _crafted(tmp_path, dec_run.checkpoint, "resume")
    assert_one_line_error(
        run_cli(capsys, "train", *SMALL, f"ckpt_path={path}", f"hydra.run.dir={tmp_path}/r"), "refused"
    )
    assert not marker.exists()

    path, marker = _crafted(tmp_path, autoencoder, "pretrained")
    assert_one_line_error(
        run_cli(capsys, "train", *SMALL, f"model.pretrained_ckpt={path}", f"hydra.run.dir={tmp_path}/q"), "refused"
    )
    assert not marker.exists()

    path, marker = _crafted(tmp_path, dec_run.checkpoint, "facade")
    with pytest.raises(CheckpointError, match="refused"):
        DeepClusteringModel.load(path)
    with pytest.raises(CheckpointError, match="refused"):
        load_clustering_module(path)
    assert not marker.exists()


def test_every_load_site_passes_weights_only():
    """No load_from_checkpoint or torch.load in the package without weights_only=True."""
    import grasp_dl

    root = Path(grasp_dl.__file__).parent
    for source in root.rglob("*.py"):
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if ("load_from_checkpoint(" in line or "torch.load(" in line) and not line.lstrip().startswith(("#", '"')):
                code = line.split("#")[0]
                if "def " in code or "``" in line:
                    continue
                assert "weights_only=True" in code, f"{source.relative_to(root)}:{number}: {line.strip()}"


# =========================================================================== fuzzing


COLUMNS = ["ra", "dec", "pmra", "pmdec", "parallax"]
NASTY = st.sampled_from([np.nan, np.inf, -np.inf, 1e20, -1e39, 1e300, 2e4, -2e3, 91.0, -1e-300, 0.0])


@FUZZ
@given(
    cells=st.lists(st.tuples(st.integers(0, 399), st.sampled_from(COLUMNS), NASTY), min_size=1, max_size=40),
)
def test_fuzz_nasty_values_end_in_flags_never_wrong_rows(dec_module, cone, cells):
    df, _ = cone
    bad = df.copy()
    for row, column, value in cells:
        bad.loc[row, column] = value
    table, summary = predict_catalog(dec_module, bad)
    assert len(table) == len(bad) and (table["source_id"].to_numpy() == bad["source_id"].to_numpy()).all()
    scored = table["label"].to_numpy() >= 0
    assert np.isfinite(table.loc[scored, table.columns.str.startswith("prob_")].to_numpy()).all()
    assert (table.loc[scored, "flag"] == "").all() and (table.loc[~scored, "flag"] != "").all()
    assert summary["n_scored"] == int(scored.sum())
    limits = {"ra": 360.0, "dec": 90.0, "pmra": 1e4, "pmdec": 1e4, "parallax": 1e3}
    values = bad[COLUMNS].to_numpy(float)
    impossible = (~np.isfinite(values) | (np.abs(values) > np.array([limits[c] for c in COLUMNS]))).any(axis=1)
    assert not scored[impossible].any()
    assert set(table.loc[impossible, "flag"]) <= {
        f"{kind}:{c}" for kind in ("nonfinite", "out_of_range") for c in COLUMNS
    } | {f for f in table["flag"] if f.startswith("missing:")}


@FUZZ
@given(
    order=st.permutations(COLUMNS + ["source_id"]),
    duplicate=st.sampled_from([None, *COLUMNS]),
    spelling=st.sampled_from(["same", "upper", "trailing space", "leading space"]),
)
def test_fuzz_shuffled_and_repeated_columns(tmp_path_factory, cone, order, duplicate, spelling):
    df, _ = cone
    directory = tmp_path_factory.mktemp("cols")
    frame = df.head(30)[list(order)]
    names = list(order)
    if duplicate is not None:
        frame = pd.concat([frame, frame[[duplicate]]], axis=1)
        names.append(
            {
                "same": duplicate,
                "upper": duplicate.upper(),
                "trailing space": f"{duplicate} ",
                "leading space": f" {duplicate}",
            }[spelling]
        )
    path = directory / "t.csv"
    frame.to_csv(path, index=False, header=names)
    before = digest(path)
    for read in (lambda: read_catalog(path), lambda: pd.concat(iter_catalog(path, chunk_size=7, keep=COLUMNS))):
        if duplicate is None:
            got = read()
            pd.testing.assert_frame_equal(
                got[COLUMNS].reset_index(drop=True), df.head(30)[COLUMNS].reset_index(drop=True)
            )
        else:
            with pytest.raises(CatalogError, match=f"both become '{duplicate}'"):
                read()
    assert digest(path) == before


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".csv", ".parquet", ".fits", ".vot", ".ecsv", ".csv.gz"]))
def test_fuzz_random_bytes_as_catalogue_files(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"random{suffix}"
    path.write_bytes(data)
    for read in (lambda: read_catalog(path), lambda: list(iter_catalog(path, chunk_size=5))):
        try:
            read()
        except CatalogError as exc:
            assert "\n" not in str(exc)
    assert path.read_bytes() == data


def test_errors_are_project_types():
    assert issubclass(CheckpointError, ConfigError) and issubclass(CheckpointError, GraspDLError)
