"""StellarAutoencoder and AutoencoderModule: shapes, loss falls, optimiser config, reload."""

import lightning as L
import pytest
import torch

from grasp_dl.data.datamodule import StellarCatalogDataModule
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
        max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path,
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
            self.losses.append(float(outputs["loss"]))
            self.sizes.append(len(batch[0]))

    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 1500}, batch_size=400)
    dm.setup()
    module = AutoencoderModule(dm.input_dim)
    steps = StepLosses()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[steps], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    sizes = torch.tensor(steps.sizes, dtype=torch.float64)
    expected = (torch.tensor(steps.losses, dtype=torch.float64) * sizes).sum() / sizes.sum()
    assert len(set(steps.sizes)) > 1  # a short last batch: a plain mean of the steps would differ
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert module._epoch_sums == {}  # the sums start afresh every epoch
