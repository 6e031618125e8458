"""DEC / IDEC: soft assignment, target distribution, initialisation, training and reload."""

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import load_simulation_config
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.base import ClusteringModule
from grasp_dl.models.clustering import groups_from_responsibilities, soft_assign, target_distribution
from grasp_dl.models.dec import DECModule
from grasp_dl.models.deep import DeepClusteringModule
from grasp_dl.runtime.errors import ConfigError


def test_soft_assignment_matches_a_hand_computed_case():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    centers = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    q = soft_assign(z, centers, alpha=1.0)
    # point 0: distances^2 (0, 1) -> kernels (1, 1/2) -> q = (2/3, 1/3)
    # point 1: distances^2 (25, 18) -> kernels (1/26, 1/19) -> q = (19/45, 26/45)
    expected = torch.tensor([[2 / 3, 1 / 3], [19 / 45, 26 / 45]])
    torch.testing.assert_close(q, expected)
    # alpha = 3: kernel (1 + d2/3)^-2
    k = torch.tensor([[1.0, (4 / 3) ** -2], [(1 + 25 / 3) ** -2, (1 + 6) ** -2]])
    torch.testing.assert_close(soft_assign(z, centers, alpha=3.0), k / k.sum(1, keepdim=True))


def test_mixture_kernel_with_equal_scales_and_weights_orders_like_dec():
    z, centers = torch.randn(50, 3), torch.randn(4, 3)
    q_dec = soft_assign(z, centers)
    q_mix = soft_assign(z, centers, 1.0, torch.zeros(4), torch.zeros(4))
    assert torch.equal(q_dec.argmax(1), q_mix.argmax(1))
    # a point halfway between a broad and a tight group: DEC cannot tell, the mixture gives it
    # to the broad group, whichever side that is on
    middle = torch.tensor([[4.0, 0.0, 0.0]])
    two = torch.tensor([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0]])
    torch.testing.assert_close(soft_assign(middle, two), torch.tensor([[0.5, 0.5]]))
    assert soft_assign(middle, two, 1.0, torch.tensor([3.0, 0.3]).log(), torch.zeros(2)).argmax() == 0
    assert soft_assign(middle, two, 1.0, torch.tensor([0.3, 3.0]).log(), torch.zeros(2)).argmax() == 1


def test_q_and_p_are_distributions_and_p_is_sharper():
    q = soft_assign(torch.randn(200, 4), torch.randn(3, 4))
    for balance in (0.0, 1.0):
        p = target_distribution(q, balance=balance)
        torch.testing.assert_close(q.sum(1), torch.ones(200))
        torch.testing.assert_close(p.sum(1), torch.ones(200))
        if balance == 0.0:  # pure sharpening: every star's top group gains
            assert (p.max(1).values >= q.max(1).values - 1e-6).all()
        entropy = lambda x: -(x * x.log()).sum(1).mean()  # noqa: E731
        assert entropy(p) < entropy(q)


def test_target_uses_whole_catalogue_frequencies():
    q = soft_assign(torch.randn(300, 2), torch.randn(3, 2))
    whole = target_distribution(q, balance=1.0)
    # computing on a batch with the batch's own frequencies gives a different target ...
    batch = target_distribution(q[:20], balance=1.0)
    assert not torch.allclose(batch, whole[:20])
    # ... and with the global frequencies the same one
    torch.testing.assert_close(target_distribution(q[:20], q.sum(0), balance=1.0), whole[:20])


def test_groups_from_responsibilities():
    z = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    groups = groups_from_responsibilities(z, np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float))
    np.testing.assert_allclose(groups.centers, [[1, 0], [10, 11]])
    np.testing.assert_allclose(np.exp(groups.log_scales), [np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(np.exp(groups.log_weights), [0.5, 0.5])


@pytest.fixture(scope="module")
def small_field():
    L.seed_everything(0, verbose=False)
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 4000, "seed": 3}, batch_size=128)
    dm.setup()
    autoencoder = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    _trainer(6).fit(autoencoder, datamodule=dm)
    return dm, autoencoder


def _trainer(epochs):
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_centres_are_trained_parameters(small_field):
    dm, autoencoder = small_field
    module = DECModule.from_autoencoder(autoencoder, n_clusters=3, update_interval=10)
    optimizer = module.configure_optimizers()
    assert any(p is module.centers for group in optimizer.param_groups for p in group["params"])
    _trainer(1).fit(module, datamodule=dm)
    initial = module.centers.detach().clone()
    _trainer(2).fit(module, datamodule=dm)  # resumes from the trained state, no re-initialisation
    assert not torch.equal(initial, module.centers.detach())
    assert bool(module.initialized)


def test_target_refreshes_every_update_interval_steps_inside_blocks(small_field):
    """Blocks hold 8 steps; the target is still refreshed every 5 optimiser steps, and a
    plateau scheduler on train/loss is stepped once per epoch."""
    dm, autoencoder = small_field
    scheduler = {
        "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "_partial_": True,
        "factor": 0.5,
        "patience": 0,
        "threshold": 10.0,
    }
    module = DECModule.from_autoencoder(autoencoder, n_clusters=3, update_interval=5, tol=0.0, scheduler=scheduler)
    refreshed = []
    update = module.update_target
    module.update_target = lambda: refreshed.append(module.global_step) or update()
    trainer = _trainer(2)
    trainer.fit(module, datamodule=dm)
    assert dm.batches_per_step == 8 and trainer.num_training_batches < trainer.global_step / 2
    assert refreshed == list(range(0, trainer.global_step, 5))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(module.hparams.optimizer["lr"] / 4)


@pytest.mark.parametrize("variant", ["dec", "idec"])
def test_short_run_recovers_the_cluster(small_field, variant):
    dm, autoencoder = small_field
    module = DECModule.from_autoencoder(autoencoder, n_clusters=3, variant=variant, update_interval=20)
    _trainer(3).fit(module, datamodule=dm)
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask]
    q = module.predict_proba(dm.data)
    labels = q.argmax(1).numpy()
    members = labels == module.cluster_group
    assert adjusted_rand_score(truth, labels) > 0.5
    f1 = 2 * (members & (truth == "cluster")).sum() / (members.sum() + (truth == "cluster").sum())
    assert f1 > 0.9, f1


def test_seed_dec_reproduces_the_imbalance_trap_that_the_mixture_kernel_avoids(small_field):
    dm, autoencoder = small_field
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask] == "cluster"

    def best_f1(module):
        labels = module.predict_proba(dm.data).argmax(1).numpy()
        return max(2 * ((labels == j) & truth).sum() / ((labels == j).sum() + truth.sum()) for j in range(2))

    # The seed's DEC had no start anchor (grasp_dl/models/anchoring.py), which alone avoids the trap here.
    seed = DECModule.from_autoencoder(
        autoencoder, n_clusters=2, init="kmeans", kernel="dec", balance=1.0, anchor={"weight": 0.0, "fallback": False}
    )
    ours = DECModule.from_autoencoder(autoencoder, n_clusters=2)
    for module in (seed, ours):
        _trainer(4).fit(module, datamodule=dm)
    assert best_f1(ours) > 0.9 > best_f1(seed)


def test_checkpoint_reload_gives_identical_predictions(small_field, tmp_path):
    dm, autoencoder = small_field
    module = DECModule.from_autoencoder(autoencoder, n_clusters=3)
    trainer = _trainer(1)
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "dec.ckpt")
    raw = torch.load(tmp_path / "dec.ckpt", weights_only=True)  # plain hyper-parameters only
    assert raw["hyper_parameters"]["preprocessing"]["feature_names"] == dm.feature_names
    again = DECModule.load_from_checkpoint(tmp_path / "dec.ckpt")
    torch.testing.assert_close(again.predict_proba(dm.data), module.predict_proba(dm.data))
    assert again.cluster_group == module.cluster_group


def test_python_defaults_match_the_yaml_defaults():
    import inspect

    from omegaconf import OmegaConf

    from grasp_dl.runtime.config import conf_dir

    yaml = OmegaConf.to_container(OmegaConf.load(conf_dir() / "model" / "dec.yaml"))
    signature = {
        **inspect.signature(ClusteringModule.__init__).parameters,
        **inspect.signature(DeepClusteringModule.__init__).parameters,
        **inspect.signature(DECModule.__init__).parameters,
    }
    assert {"variant", "kernel", "init", "cluster_group", "spatial_prior"} <= set(signature) & set(yaml)
    for key, value in yaml.items():
        if key in signature and key not in ("optimizer", "seed"):
            assert signature[key].default == value, key
    assert DECModule(5).hparams.optimizer == {**yaml["optimizer"]}


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="unknown DEC variant 'vae'"):
        DECModule(5, variant="vae")
    with pytest.raises(ConfigError, match="unknown kernel 'gauss'"):
        DECModule(5, kernel="gauss")
    with pytest.raises(ConfigError, match="n_clusters must be at least 2"):
        DECModule(5, n_clusters=1)
