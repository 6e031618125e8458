"""The composed configs build what they name: Trainers, loggers, callbacks and model classes, checked on the objects."""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from grasp_dl.jobs import train as pipeline
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule
from grasp_dl.models.vade import VaDEModule
from grasp_dl.models.xd import XDModule

from hydra_configs import compose_config


def _trainer(overrides: list[str], output_dir: Path) -> L.Trainer:
    return pipeline.build_trainer(compose_config("train", overrides, output_dir))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cpu_trainer_is_one_cpu_process_at_the_asked_precision(tmp_path, precision):
    trainer = _trainer(["trainer=cpu", f"trainer.precision={precision}"], tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator) and isinstance(trainer.strategy, SingleDeviceStrategy)
    assert trainer.num_devices == 1 and trainer.world_size == 1
    assert trainer.precision == precision
    assert Path(trainer.default_root_dir) == tmp_path


def test_ddp_cpu_trainer_is_data_parallel_over_two_cpu_processes(tmp_path):
    trainer = _trainer(["trainer=ddp_cpu"], tmp_path)
    assert isinstance(trainer.accelerator, CPUAccelerator) and isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.world_size == 2


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gpu", "ddp"])
def test_gpu_trainers_use_cuda(tmp_path, name):
    trainer = _trainer([f"trainer={name}"], tmp_path)
    assert isinstance(trainer.accelerator, CUDAAccelerator)
    expected = 1 if name == "gpu" else torch.cuda.device_count()
    assert trainer.num_devices == expected
    assert isinstance(trainer.strategy, DDPStrategy if name == "ddp" else SingleDeviceStrategy)


def test_logger_groups_write_under_the_run_directory(tmp_path):
    default = _trainer([], tmp_path)
    assert [type(logger) for logger in default.loggers] == [TensorBoardLogger]
    assert Path(default.logger.log_dir) == tmp_path / "tensorboard"
    both = _trainer(["logger=many"], tmp_path)
    by_type = {type(logger): Path(logger.log_dir) for logger in both.loggers}
    assert by_type == {TensorBoardLogger: tmp_path / "tensorboard", CSVLogger: tmp_path / "csv"}


def test_default_callbacks_checkpoint_into_the_run_and_stop_early(tmp_path):
    trainer = _trainer([], tmp_path)
    kinds = {type(callback) for callback in trainer.callbacks}
    assert {ModelCheckpoint, EarlyStopping, LearningRateMonitor} <= kinds
    checkpoint = trainer.checkpoint_callback
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints" and checkpoint.save_last
    # both watch the same metric, so the best checkpoint is the epoch early stopping keeps
    assert trainer.early_stopping_callback.monitor == checkpoint.monitor
    # without a logger there is nothing to monitor learning rates into: the monitor is dropped, not refused
    assert not any(isinstance(c, LearningRateMonitor) for c in _trainer(["~logger"], tmp_path).callbacks)


def test_without_validation_rows_the_callbacks_watch_the_training_loss(tmp_path):
    trainer = pipeline.build_trainer(compose_config("train", ["model=dec"], tmp_path), has_validation=False)
    assert trainer.checkpoint_callback.monitor == "train/loss"
    assert trainer.early_stopping_callback.monitor == "train/loss"


def test_default_run_trains_on_the_simulated_m4_like_field(tmp_path):
    datamodule = pipeline.build_datamodule(compose_config("train", [], tmp_path))
    table = datamodule.table
    assert len(table) == 20_000 and set(table["truth"]) == {"cluster", "field"}
    assert datamodule.feature_names == ["xi", "eta", "pmra", "pmdec", "parallax"]
    # stars without astrometry are left out of training, not dropped from the table
    assert 15_000 < len(datamodule.data) == len(datamodule.usable_rows()) < len(table)


@pytest.mark.parametrize(
    ("overrides", "module_class"),
    [
        ([], XDModule),
        (["experiment=m4_dec"], DECModule),
        (["experiment=m4_idec"], DECModule),
        (["experiment=m4_vade"], VaDEModule),
        (["experiment=m4_autoencoder"], AutoencoderModule),
    ],
    ids=["default", "m4_dec", "m4_idec", "m4_vade", "m4_autoencoder"],
)
def test_model_configs_name_importable_lightning_modules(tmp_path, overrides, module_class):
    cfg = compose_config("train", overrides, tmp_path)
    assert hydra.utils.get_class(cfg.model._target_) is module_class
    if module_class not in (AutoencoderModule, XDModule):
        # a clustering model is preceded by autoencoder pretraining
        assert hydra.utils.get_class(cfg.model.pretrain._target_) is AutoencoderModule


class _RowCounter(L.LightningModule):
    """A one-weight model that records, per rank, how many training rows it saw (for the DDP test)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.out = out
        self.rows = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.rows += len(batch[0])
        return self.layer(batch[0]).pow(2).mean()

    def on_train_end(self) -> None:
        path = Path(self.out) / f"rank{self.global_rank}-of-{self.trainer.world_size}.txt"
        path.write_text(f"{self.rows} {self.layer.weight.item():.10f}")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_ddp_cpu_trainer_really_trains_in_two_processes_on_halves_of_the_data(tmp_path):
    cfg = compose_config(
        "train", ["trainer=ddp_cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path
    )
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[])
    rows = TensorDataset(torch.arange(16, dtype=torch.float32)[:, None])
    trainer.fit(_RowCounter(str(tmp_path)), DataLoader(rows, batch_size=4))
    files = sorted(p.name for p in tmp_path.glob("rank*.txt"))
    assert files == ["rank0-of-2.txt", "rank1-of-2.txt"]
    seen = [(tmp_path / name).read_text().split() for name in files]
    # each process trained on its own half, and the gradients were averaged: the weights agree
    assert [int(count) for count, _ in seen] == [8, 8]
    assert seen[0][1] == seen[1][1]


def test_the_usage_text_names_the_default_model_of_the_train_config():
    """`grasp-dl --help` says which model a plain `grasp-dl train` uses, as conf/train.yaml composes it."""
    from omegaconf import OmegaConf

    from grasp_dl.cli import USAGE
    from grasp_dl.runtime.config import conf_dir

    defaults = OmegaConf.load(conf_dir() / "train.yaml").defaults
    model = next(entry.model for entry in defaults if not isinstance(entry, str) and "model" in entry)
    train_line = USAGE[USAGE.index("  train ") : USAGE.index("  predict ")]
    assert f"default: model={model}" in train_line
