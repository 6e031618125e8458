"""Block training through public Lightning API, and trainer settings that count what their names say.

A Lightning training step is a block of ``data.batches_per_step`` mini-batches with one optimiser
step each (grasp_dl.engine.block_training); ``max_steps``, ``limit_train_batches`` and
``log_every_n_steps`` still count optimiser steps / mini-batches (grasp_dl.engine.block_settings).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import grasp_dl
from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.loader import TensorBatchLoader
from grasp_dl.data.simulate import load_simulation_config
from grasp_dl.engine.block_settings import block_trainer_options, check_block_settings, train_batch_limit
from grasp_dl.jobs import train as pipeline
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule
from grasp_dl.runtime.errors import ConfigError

from hydra_configs import compose_config


class CountingAutoencoder(AutoencoderModule):
    """Records ``global_step`` and the loss at every mini-batch it trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_seen: list[int] = []
        self.losses: list[float] = []

    def batch_loss(self, batch):
        self.steps_seen.append(self.global_step)
        loss = super().batch_loss(batch)
        self.losses.append(float(loss.detach()))
        return loss


def _datamodule(batches_per_step: int = 8, n_stars: int = 3000) -> StellarCatalogDataModule:
    dm = StellarCatalogDataModule(
        simulate=load_simulation_config("m4") | {"n_stars": n_stars},
        batch_size=128,
        batches_per_step=batches_per_step,
    )
    dm.setup()
    return dm


def _batches_per_epoch(dm: StellarCatalogDataModule) -> int:
    return len(TensorBatchLoader(dm.split_tensor("train"), dm.batch_size, shuffle=True))


def _fit(dm, module=None, **trainer_options):
    module = module if module is not None else CountingAutoencoder(dm.input_dim)
    options = {
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "num_sanity_val_steps": 0,
    } | trainer_options
    trainer = L.Trainer(**options)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_global_step_counts_every_optimiser_step_inside_a_block():
    """If Lightning stopped counting the steps taken inside a block, global_step would lag here."""
    dm = _datamodule(8)
    n = _batches_per_epoch(dm)
    module, trainer = _fit(dm, max_epochs=2)
    assert n > 16 and trainer.num_training_batches == math.ceil(n / 8)
    assert module.steps_seen == list(range(2 * n))  # one more step before each mini-batch
    assert trainer.global_step == 2 * n


@pytest.mark.parametrize("max_steps", [13, 30])
def test_max_steps_counts_optimiser_steps_exactly(max_steps):
    dm = _datamodule(8)
    n = _batches_per_epoch(dm)
    assert 13 < n < 30  # 13 ends inside the first epoch, 30 inside the second, both mid-block
    module, trainer = _fit(dm, max_epochs=5, max_steps=max_steps)
    assert trainer.global_step == max_steps and module.steps_seen == list(range(max_steps))


def test_limit_train_batches_counts_mini_batches_per_epoch():
    dm = _datamodule(8)
    module, trainer = _fit(dm, max_epochs=3, limit_train_batches=5)
    assert trainer.num_training_batches == 1  # one block of five
    assert trainer.global_step == len(module.steps_seen) == 15


def test_limit_train_batches_fraction_is_refused_with_blocks_and_kept_without():
    with pytest.raises(ConfigError, match=r"limit_train_batches=0.5 .*batches_per_step=8.*whole number"):
        _fit(_datamodule(8), limit_train_batches=0.5)
    dm = _datamodule(1)
    module, trainer = _fit(dm, limit_train_batches=0.5)
    assert trainer.global_step == len(module.steps_seen) == int(_batches_per_epoch(dm) * 0.5)
    # 0 and 1.0 keep their meaning whatever the blocks; a whole number is a count of mini-batches
    assert (
        train_batch_limit(0.0, 8) is None and train_batch_limit(1.0, 8) is None and train_batch_limit(None, 8) is None
    )
    assert train_batch_limit(5, 8) == 5 and train_batch_limit(0, 8) == 0
    with pytest.raises(ConfigError, match="whole number of at least 0"):
        train_batch_limit(-1, 8)


def test_debug_fast_takes_five_mini_batches(tmp_path):
    """conf/debug/fast.yaml's limit_train_batches: 5 means five mini-batches of each epoch."""
    cfg = compose_config("train", ["debug=fast", "model=autoencoder"], tmp_path)
    assert cfg.trainer.limit_train_batches == 5 and cfg.data.batches_per_step > 5
    dm = _datamodule(cfg.data.batches_per_step)
    trainer = pipeline.build_trainer(cfg)
    module = CountingAutoencoder(dm.input_dim)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == len(module.steps_seen) == 5


def test_log_every_n_steps_is_translated_into_blocks(tmp_path):
    assert block_trainer_options({"log_every_n_steps": 20}, 8) == {"log_every_n_steps": 3}
    assert block_trainer_options({"log_every_n_steps": 16}, 8) == {"log_every_n_steps": 2}
    assert block_trainer_options({"log_every_n_steps": 20}, 1) == {"log_every_n_steps": 20}
    assert block_trainer_options({"log_every_n_steps": 0}, 8) == {"log_every_n_steps": 0}
    assert block_trainer_options({}, 8) == {"log_every_n_steps": 7}  # Lightning's 50
    with pytest.raises(ConfigError, match="log_every_n_steps=-1"):
        block_trainer_options({"log_every_n_steps": -1}, 8)
    cfg = compose_config("train", ["trainer.log_every_n_steps=20", "data.batches_per_step=8"], tmp_path)
    assert pipeline.build_trainer(cfg).log_every_n_steps == 3
    assert pipeline.build_trainer(cfg, batches_per_step=4).log_every_n_steps == 5


def test_val_check_interval_in_steps_is_refused_with_blocks(tmp_path):
    with pytest.raises(ConfigError, match=r"val_check_interval=10 would count blocks.*fraction of the epoch"):
        check_block_settings({"val_check_interval": 10}, 8)
    check_block_settings({"val_check_interval": 10}, 1)
    check_block_settings({"val_check_interval": 0.5}, 8)
    cfg = compose_config("train", ["+trainer.val_check_interval=10"], tmp_path)
    with pytest.raises(ConfigError, match="val_check_interval"):
        pipeline.build_trainer(cfg)


def test_logged_x_axis_is_optimiser_steps(tmp_path):
    """Epoch means and validation metrics are written at step = optimiser steps, not blocks."""
    dm = _datamodule(8)
    n = _batches_per_epoch(dm)
    logger = CSVLogger(tmp_path, name="run", version=0)
    module, trainer = _fit(dm, max_epochs=2, logger=logger)
    logger.save()
    frame = pd.read_csv(Path(logger.log_dir) / "metrics.csv")
    train = frame.dropna(subset=["train/loss"])
    val_steps = frame.dropna(subset=["val/loss"])["step"].tolist()
    assert train["step"].tolist() == val_steps == [n, 2 * n] == [trainer.global_step // 2, trainer.global_step]
    assert train["epoch"].tolist() == [0, 1]  # Lightning adds no epoch when a step is logged: the module does


def test_dec_refreshes_every_update_interval_optimiser_steps_and_logs_them_at_those_steps(tmp_path):
    """DEC's target refresh runs every update_interval optimiser steps inside blocks of 8, and its
    per-refresh values are written at the optimiser step of the refresh (log_every_n_steps=8: every block)."""
    dm = _datamodule(8)
    n = _batches_per_epoch(dm)
    autoencoder = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    module = DECModule.from_autoencoder(autoencoder, n_clusters=2, update_interval=5, tol=0.0)
    refreshed = []
    update = module.update_target
    module.update_target = lambda: refreshed.append(module.global_step) or update()
    logger = CSVLogger(tmp_path, name="dec", version=0)
    every_block = block_trainer_options({"log_every_n_steps": 8}, 8)  # 8 optimiser steps: every block
    assert every_block == {"log_every_n_steps": 1}
    _, trainer = _fit(dm, module, max_epochs=2, logger=logger, **every_block)
    logger.save()
    assert trainer.global_step == 2 * n and refreshed == list(range(0, 2 * n, 5))
    frame = pd.read_csv(Path(logger.log_dir) / "metrics.csv").dropna(subset=["dec/label_change"])
    # rows at the step of each block's last refresh (a block without one repeats the last row, at its step)
    blocks = [range(start, min(start + 8, n)) for start in range(0, n, 8)]
    blocks = blocks + [range(b.start + n, b.stop + n) for b in blocks]
    last_refresh = [max(s for s in refreshed if s in block) for block in blocks if any(s in block for s in refreshed)]
    assert sorted(set(frame["step"])) == last_refresh and len(last_refresh) >= 4


def test_block_steps_equal_a_plain_pytorch_loop():
    """The public step path (Lightning's optimiser, loss.backward or manual_backward) trains exactly as the
    bare loop the old private path ran: the same losses and weights after the same mini-batches."""
    dm = _datamodule(8)
    n_steps = 21
    first = CountingAutoencoder(dm.input_dim)
    second = CountingAutoencoder(dm.input_dim)
    second.load_state_dict(first.state_dict())
    torch.manual_seed(5)
    _fit(dm, first, max_epochs=2, max_steps=n_steps, limit_val_batches=0)

    torch.manual_seed(5)
    optimizer = second.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    second.train()
    loader = TensorBatchLoader(dm.split_tensor("train"), dm.batch_size, shuffle=True, seed=dm.seed)
    steps = 0
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if steps == n_steps:
                break
            loss = second.batch_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    assert first.losses == second.losses and len(first.losses) == n_steps
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


#: Private Lightning attributes the block training once used (issue #17 item 4), and the general shape of one.
REMOVED = ("_on_before_step", "_on_after_step", "_lightning_optimizers", '"_trainer"')
PRIVATE_ON_LIGHTNING_OBJECT = re.compile(
    r"\b(trainer|strategy|optimizer|optimizers|lightning_optimizer|fit_loop|epoch_loop|loop|precision_plugin"
    r"|accelerator|logger_connector|callback|pl_module|module)\._[a-z]"
)


def test_grasp_dl_uses_no_private_lightning_attribute():
    sources = sorted(Path(grasp_dl.__file__).parent.rglob("*.py"))
    assert len(sources) > 20
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(name in line for name in REMOVED) or PRIVATE_ON_LIGHTNING_OBJECT.search(line)
    ]
    assert found == []
