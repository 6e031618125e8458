"""Compose the real configs with Hydra's compose API and shrink them for tests."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from grasp_dl.runtime.config import conf_dir

#: Overrides that make any training config a few-second run on a small simulated field.
TINY = [
    "model=dec",
    "data.simulate.n_stars=3000",
    "trainer.max_epochs=2",
    "model.pretrain_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/<name>.yaml with overrides, writing outputs under ``output_dir``."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


class CrashAfterEpoch(L.Callback):
    """Simulate a killed run: raise once the autoencoder phase has checkpointed ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if type(pl_module).__name__ == "AutoencoderModule" and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class KillAt(L.Callback):
    """Simulate ``kill -9``: SIGKILL this process after training batch ``batch`` of ``epoch`` of ``phase``.

    ``phase`` is the class name of the module being fitted (``AutoencoderModule``, ``DECModule``, ...);
    nothing is flushed or saved, as with a real kill.
    """

    def __init__(self, phase: str, epoch: int, batch: int = 0) -> None:
        self.phase, self.epoch, self.batch = phase, epoch, batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        batch_idx = args[-1] if args else kwargs["batch_idx"]
        hit = trainer.current_epoch == self.epoch and batch_idx == self.batch
        if type(pl_module).__name__ == self.phase and hit:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class CrashAtEpochStart(L.Callback):
    """Simulate a run killed between epochs: raise as epoch ``epoch`` of the clustering phase starts
    (the checkpoint of the epoch before is written; nothing of this one is)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if type(pl_module).__name__ != "AutoencoderModule" and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")
