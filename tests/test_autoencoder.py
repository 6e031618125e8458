"""StellarAutoencoder and AutoencoderModule: shapes, loss falls, optimiser config, reload."""

import lightning as L
import pytest
import torch

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.loader import batch_stars
from grasp_dl.data.simulate import load_simulation_config
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.networks import StellarAutoencoder


def test_network_shapes_follow_the_seed():
    net = StellarAutoencoder(5)
    linears = [m for m in net.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 64), (64, 32), (32, 16), (16, 8)]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.encoder)
    assert any(isinstance(m, torch.nn.Dropout) for m in net.decoder)
    recon, z = net(torch.randn(7, 5))
    assert recon.shape == (7, 5) and z.shape == (7, 8)
    with pytest.raises(ValueError, match="layer sizes must be positive"):
        StellarAutoencoder(5, latent_dim=0)


def test_optimizer_comes_from_partial_config():
    module = AutoencoderModule(
        4, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}
    )
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.05
    module = AutoencoderModule(
        4,
        scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 2},
    )
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_reconstruction_loss_falls_on_a_simulated_field(tmp_path):
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 4000, "seed": 1}, batch_size=128)
    dm.setup()
    module = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    x = dm.data[dm.val_index]

    def val_loss():
        module.eval()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(module.net(x)[0], x).item()

    before = val_loss()
    module.train()
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    after = val_loss()
    assert after < 0.5 * before, (before, after)


def test_training_loss_is_logged_once_per_epoch_as_the_mean_over_stars():
    """train/loss is the star-weighted mean of the step losses, logged at the epoch's end (not per step)."""

    class StepLosses(L.Callback):
        def __init__(self):
            self.losses, self.sizes = [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))  # the star-weighted mean over the block
            self.sizes.append(batch_stars(batch))

    # about 1300 training stars: batches of 400, 400, 400 and the rest, in blocks of three and one
    dm = StellarCatalogDataModule(
        simulate=load_simulation_config("m4") | {"n_stars": 1500}, batch_size=400, batches_per_step=3
    )
    dm.setup()
    module = AutoencoderModule(dm.input_dim)
    steps = StepLosses()
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[steps],
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    sizes = torch.tensor(steps.sizes, dtype=torch.float64)
    expected = (torch.tensor(steps.losses, dtype=torch.float64) * sizes).sum() / sizes.sum()
    # a short last block: a plain mean of the steps would differ
    assert steps.sizes == [1200, len(dm.train_index) - 1200] and steps.sizes[1] < 400
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert module._epoch_sums == {}  # the sums start afresh every epoch


def _fit_autoencoder(batches_per_step, scheduler=None, epochs=2, callbacks=(), precision="32-true"):
    L.seed_everything(3)
    dm = StellarCatalogDataModule(
        simulate=load_simulation_config("m4") | {"n_stars": 3000}, batch_size=128, batches_per_step=batches_per_step
    )
    dm.setup()
    module = AutoencoderModule(dm.input_dim, scheduler=scheduler)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
        precision=precision,
    )
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_blocks_of_batches_train_exactly_like_one_batch_per_step():
    """A block takes one optimiser step per batch: the same weights and step count as the plain loop."""
    one, trainer_one = _fit_autoencoder(1)
    eight, trainer_eight = _fit_autoencoder(8)
    n_batches = trainer_one.num_training_batches
    assert n_batches > 16 and trainer_eight.num_training_batches == -(-n_batches // 8)
    assert trainer_one.global_step == trainer_eight.global_step == 2 * n_batches
    for (name, a), (_, b) in zip(one.state_dict().items(), eight.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


class CountOptimizerSteps(L.Callback):
    """Counts Lightning's optimiser-step hook: every step goes through Lightning's optimiser."""

    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


class CountBackwardPasses(CountOptimizerSteps):
    """Overrides a hook of the backward pass, so Lightning's manual_backward must run."""

    def __init__(self):
        super().__init__()
        self.backward_calls = 0

    def on_after_backward(self, trainer, pl_module):
        self.backward_calls += 1


def test_plain_backward_only_where_lightning_would_do_nothing_more():
    steps = CountOptimizerSteps()
    plain, trainer = _fit_autoencoder(8, callbacks=[steps])
    assert plain._plain_backward is True
    assert steps.calls == trainer.global_step  # the optimiser step is Lightning's, hooks included
    counter = CountBackwardPasses()
    hooked, hooked_trainer = _fit_autoencoder(8, callbacks=[counter])
    assert hooked._plain_backward is False
    assert counter.backward_calls == counter.calls == hooked_trainer.global_step == trainer.global_step
    for (name, a), (_, b) in zip(plain.state_dict().items(), hooked.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    bf16, _ = _fit_autoencoder(8, epochs=1, precision="bf16-mixed")
    assert bf16._plain_backward is True  # autocast only: no loss scaling to keep


@pytest.mark.parametrize(
    "scheduler, expected_lr",
    [
        ({"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1, "gamma": 0.5}, 2.5e-4),
        # a plateau scheduler that cuts every epoch: the monitored val/loss reaches it
        (
            {
                "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                "_partial_": True,
                "factor": 0.5,
                "patience": 0,
                "threshold": 10.0,
            },
            2.5e-4,
        ),
    ],
)
def test_epoch_schedulers_step_once_per_epoch_with_blocks(scheduler, expected_lr):
    module, trainer = _fit_autoencoder(8, scheduler=scheduler)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected_lr)


def test_a_scheduler_watching_an_unlogged_metric_is_named():
    scheduler = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True}
    module = AutoencoderModule(5, scheduler=scheduler)
    module.hparams.scheduler = scheduler
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 1000}, val_fraction=0.0)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(RuntimeError, match="monitors 'val/loss', which was not logged.*val_fraction"):
        trainer.fit(module, datamodule=dm)
