"""grasp-dl train end to end: composed configs, the console script, checkpoints and errors."""

import subprocess
import sys

import pytest
import torch

from grasp_dl.jobs import train as pipeline
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule

from hydra_configs import TINY, compose_config


@pytest.mark.slow
def test_train_writes_checkpoint_and_tensorboard(tmp_path):
    cfg = compose_config("train", TINY, tmp_path)
    result = pipeline.train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert result.checkpoint == ckpt and ckpt.is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert torch.isfinite(torch.tensor(result.metrics["val/entropy"]))  # DEC's monitored metric
    # the checkpoint is self-sufficient and loads with torch's safe default (weights_only=True)
    raw = torch.load(ckpt, weights_only=True)
    assert "centers" in raw["state_dict"]
    prep = raw["hyper_parameters"]["preprocessing"]
    assert prep["feature_names"] == ["xi", "eta", "pmra", "pmdec", "parallax"]
    assert len(prep["scaler"]["center"]) == 5 and len(prep["center"]) == 2
    module = DECModule.load_from_checkpoint(ckpt)
    x = result.datamodule.data[:64]
    torch.testing.assert_close(module.predict_proba(x), result.module.predict_proba(x))
    assert int(module.cluster_group) == int(result.module.cluster_group) >= 0
    # the autoencoder phase keeps its own checkpoint and TensorBoard run
    autoencoder = AutoencoderModule.load_from_checkpoint(tmp_path / "checkpoints" / "autoencoder" / "last.ckpt")
    assert autoencoder.hparams.preprocessing == prep
    assert list((tmp_path / "tensorboard" / "autoencoder").glob("events.out.tfevents.*"))
    text = pipeline.summarise(result, cfg)
    assert str(ckpt) in text and "tensorboard --logdir" in text


def _cli(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "grasp_dl.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.slow
def test_checkpoints_go_where_the_callback_says_and_resume_finds_them(tmp_path):
    """model_checkpoint.dirpath is honoured by both phases, by TrainResult and by ckpt_path=last."""
    ckpts = tmp_path / "elsewhere"
    overrides = TINY + [f"callbacks.model_checkpoint.dirpath={ckpts}"]
    result = pipeline.train(compose_config("train", overrides, tmp_path / "run"))
    assert result.checkpoint == ckpts / "last.ckpt" and result.checkpoint.is_file()
    assert (ckpts / "autoencoder" / "last.ckpt").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert f"final model: {result.checkpoint}" in pipeline.summarise(
        result, compose_config("train", overrides, tmp_path / "run")
    )
    more = pipeline.train(
        compose_config("train", overrides + ["ckpt_path=last", "trainer.max_epochs=3"], tmp_path / "run")
    )
    assert torch.load(more.checkpoint, weights_only=True)["epoch"] == 2  # continued the final phase


@pytest.mark.slow
def test_wrong_override_and_bad_value_end_cleanly(tmp_path, run_main):
    proc = run_main(["train", "data.no_such_option=3", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert proc.returncode != 0
    assert "no_such_option" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main(["train", *TINY, "data.batch_size=0", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2
    assert "data.batch_size must be a positive integer" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main(["train", "data=catalog", "data.path=nowhere.csv", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2
    assert "nowhere.csv" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_and_unknown_command(tmp_path):
    proc = _cli([], tmp_path)
    assert proc.returncode == 0 and "grasp-dl COMMAND" in proc.stdout
    proc = _cli(["fly"], tmp_path)
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr
    proc = _cli(["train", "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("grasp-dl-train is powered by Hydra")
    assert "model: auto, autoencoder, dec, idec, multimodal, vade, xd" in proc.stdout


@pytest.mark.slow
def test_tiny_real_catalogue_finishes_and_says_so(tmp_path, pal13_path):
    overrides = [
        "data=catalog",
        f"data.path={pal13_path}",
        "trainer.max_epochs=2",
        "model=dec",
        "model.pretrain_epochs=2",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    result = pipeline.train(cfg)
    assert result.checkpoint.is_file()
    text = pipeline.summarise(result, cfg)
    assert "of 123 stars" in text and "too few to learn anything meaningful" in text
    assert "29 missing:pmra+pmdec+parallax" in text


@pytest.mark.slow
def test_no_validation_rows_monitor_the_training_loss(tmp_path):
    result = pipeline.train(compose_config("train", TINY + ["data.val_fraction=0"], tmp_path))
    assert not result.datamodule.has_validation and len(result.datamodule.train_index) > 2000
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_compile_and_matmul_precision_options_reach_the_run(tmp_path):
    """compile=true trains with torch.compile'd networks (same parameter names, so the checkpoint
    loads into a plain module), and matmul_precision is applied for the run."""
    before = torch.get_float32_matmul_precision()
    try:
        cfg = compose_config(
            "train",
            [o for o in TINY if "pretrain" not in o]
            + ["model=autoencoder", "trainer.max_epochs=1", "compile=true", "matmul_precision=high"],
            tmp_path,
        )
        result = pipeline.train(cfg)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert all(child._compiled_call_impl is not None for child in result.module.net.children())
    plain = AutoencoderModule.load_from_checkpoint(result.checkpoint)
    assert all(child._compiled_call_impl is None for child in plain.net.children())
    assert plain.net.state_dict().keys() == result.module.net.state_dict().keys()
    x = result.datamodule.data[:64]
    torch.testing.assert_close(plain.embed(x), result.module.embed(x), rtol=1e-4, atol=1e-5)


def test_build_datamodule_is_the_one_way_to_a_data_module(tmp_path, pal13_path):
    """The command line (a path in the config), the facade and the search (a catalogue given) agree."""
    from grasp_dl.data.catalog import read_catalog

    configured = pipeline.build_datamodule(
        compose_config("train", ["data=catalog", f"data.path={pal13_path}"], tmp_path)
    )
    cfg = compose_config("train", ["data=catalog"], tmp_path)
    from_path = pipeline.build_datamodule(cfg, catalog=pal13_path)
    from_table = pipeline.build_datamodule(cfg, catalog=read_catalog(pal13_path))
    for datamodule in (from_path, from_table):
        assert datamodule.feature_names == configured.feature_names
        torch.testing.assert_close(datamodule.data, configured.data, rtol=0, atol=0)
    narrow = pipeline.build_datamodule(cfg, catalog=read_catalog(pal13_path), features=["pmra", "pmdec"])
    assert narrow.feature_names == ["pmra", "pmdec"] and narrow.input_dim == 2
