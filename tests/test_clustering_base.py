"""ClusteringModule: hooks that survive any base order, training tensors through a documented hook,
fitted state apart from hyper-parameters, argument checks before any training, monitored metrics."""

from __future__ import annotations

import inspect
import itertools
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.loader import TensorBatchLoader
from grasp_dl.data.simulate import load_simulation_config, simulate_field
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog, TrainingCatalogSource
from grasp_dl.engine.block_training import BlockTraining
from grasp_dl.engine.epoch_means import EpochMeanLogging
from grasp_dl.jobs import train as pipeline
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.base import ClusteringModule, checkpoint_class
from grasp_dl.models.dec import DECModule
from grasp_dl.models.deep import DeepClusteringModule
from grasp_dl.models.ingredients import HardFieldIngredients
from grasp_dl.models.optim import build_optimizers
from grasp_dl.models.vade import VaDEModule
from grasp_dl.models.xd import XDModule
from grasp_dl.runtime import capabilities
from grasp_dl.runtime.errors import CatalogError, ConfigError

from hydra_configs import TINY, compose_config


def _trainer(epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


# ----------------------------------------------------------------------------- hooks and base order

MIXINS = (BlockTraining, EpochMeanLogging, HardFieldIngredients)
STEP_LR = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1, "gamma": 0.5}


@pytest.mark.parametrize("order", list(itertools.permutations(MIXINS)), ids=lambda o: "-".join(c.__name__ for c in o))
def test_every_mixin_hook_runs_whatever_the_base_order(order):
    """Whatever order the mixins come in, the epoch means are logged, the epoch scheduler steps
    and block training decides its direct steps: no mixin's hook drops another's."""

    class Tiny(*order, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def batch_loss(self, batch):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log_epoch_mean("train/loss", loss, len(batch[0]))
            return loss

        def configure_optimizers(self):
            return build_optimizers(self.parameters(), None, STEP_LR)

    module = Tiny()
    trainer = _trainer(3)
    trainer.fit(module, train_dataloaders=TensorBatchLoader(torch.randn(64, 2), 16, batches_per_block=2))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / 8)
    assert "train/loss" in trainer.callback_metrics and module._plain_backward is True


def test_every_hook_of_the_model_classes_calls_the_next_one():
    """A hook defined in any class of the models (mixins, the base, DEC, VaDE, the autoencoder)
    calls ``super()`` of itself, so a new base order cannot silently drop one."""
    hooks = {name for name in dir(L.LightningModule) if name.startswith("on_")}
    classes = [ClusteringModule, DeepClusteringModule, DECModule, VaDEModule, XDModule, AutoencoderModule, *MIXINS]
    checked = 0
    for cls in classes:
        for name in hooks & set(vars(cls)):
            source = inspect.getsource(vars(cls)[name])
            assert f"super().{name}(" in source, f"{cls.__name__}.{name} does not call super().{name}()"
            checked += 1
    assert checked >= 8


def test_one_eval_mode_rule_for_fine_tuning():
    """DEC and VaDE fine-tune with the network in eval mode at every training batch, set in one place."""
    for cls in (DECModule, VaDEModule):
        assert "on_train_batch_start" not in vars(cls) and "on_train_epoch_start" not in vars(cls)
        module = cls(4, hidden_dims=[4], latent_dim=2)
        module.train()
        module.on_train_batch_start(None, 0)
        assert not module.net.training and not any(m.training for m in module.net.modules())


# ----------------------------------------------------------------------------- the training catalogue


@pytest.fixture(scope="module")
def small():
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 1500, "seed": 2}, batch_size=128)
    dm.setup()
    L.seed_everything(0, verbose=False)
    ae = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    _trainer(1).fit(ae, datamodule=dm)
    return dm, ae


def test_dec_trains_from_a_plain_dataloader_with_an_attached_catalogue(small):
    dm, ae = small
    features = dm.data[dm.train_index].clone()
    module = DECModule.from_autoencoder(ae, n_clusters=3, update_interval=5, n_init=2)
    module.attach_training_catalog(TrainingCatalog(features))
    loader = DataLoader(TensorDataset(features, torch.arange(len(features))), batch_size=128, shuffle=True)
    trainer = _trainer(2)
    trainer.fit(module, train_dataloaders=loader)  # no data module anywhere
    assert trainer.datamodule is None and trainer.global_step == 2 * len(loader)
    assert bool(module.initialized) and 0 <= module.cluster_group < 3
    assert torch.equal(module.train_catalog.features, features)
    q = module.predict_proba(features)
    torch.testing.assert_close(q.sum(1), torch.ones(len(features)))
    assert len(q.argmax(1).unique()) >= 2


def test_the_data_module_is_a_training_catalogue_source(small):
    dm, _ = small
    assert isinstance(dm, TrainingCatalogSource)
    catalog = dm.training_catalog(CatalogNeeds(radius="model.spatial_prior", noise_factors="noise"), "cpu")
    n = len(dm.train_index)
    assert catalog.features.shape == (n, dm.input_dim) and catalog.radius.shape == (n,)
    assert catalog.noise_factors.shape[:2] == (n, dm.input_dim) and catalog.stars is None


def test_a_missing_catalogue_or_field_is_named_before_training(small):
    dm, ae = small
    features = dm.data[dm.train_index]
    loader = TensorBatchLoader(features, 128)
    module = DECModule.from_autoencoder(ae, noise_augmentation=True)
    module.attach_training_catalog(features)
    with pytest.raises(ConfigError, match="model.noise_augmentation needs the training stars' noise_factors"):
        _trainer(1).fit(module, train_dataloaders=loader)
    with pytest.raises(ConfigError, match="attach_training_catalog"):
        _trainer(1).fit(DECModule.from_autoencoder(ae), train_dataloaders=loader)
    with pytest.raises(ConfigError, match="radius has 3 rows"):
        TrainingCatalog(features, radius=torch.zeros(3).numpy())


# ----------------------------------------------------------------------------- checkpoints


def test_fitted_results_are_checkpoint_state_not_hyperparameters(tmp_path):
    module = VaDEModule(4, hidden_dims=[4], latent_dim=2)
    module.fit_results["n_clusters_curve"] = {"k": [2, 3], "bic": [1.0, 2.0], "chosen": 2}
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": L.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    assert "n_clusters_curve" not in checkpoint["hyper_parameters"]
    assert "n_clusters_curve" not in inspect.signature(ClusteringModule.__init__).parameters
    torch.save(checkpoint, tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert checkpoint_class(raw) is VaDEModule
    again = VaDEModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert again.fit_results == module.fit_results


def test_checkpoints_written_before_the_base_class_still_load(tmp_path):
    """Old checkpoints: cluster_index / xd_fit / n_clusters_curve in hparams, the decided group
    under the state key cluster_group, no class key."""
    module = DECModule(4, hidden_dims=[4], latent_dim=2)
    module.decided_group.fill_(2)
    state = dict(module.state_dict())
    state["cluster_group"] = state.pop("decided_group")
    hparams = {**dict(module.hparams), "cluster_index": 1, "n_clusters_curve": {"k": [2]}, "xd_fit": None}
    del hparams["cluster_group"]
    old = {"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": L.__version__}
    torch.save(old, tmp_path / "old.ckpt")
    assert checkpoint_class(torch.load(tmp_path / "old.ckpt", weights_only=True)) is DECModule
    again = DECModule.load_from_checkpoint(tmp_path / "old.ckpt")
    assert again.cluster_group == 1 and int(again.decided_group) == 2
    assert again.fit_results == {"n_clusters_curve": {"k": [2]}}
    assert checkpoint_class({"state_dict": {"net.encoder.0.weight": 0}}) is None  # an autoencoder's


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (DECModule, {"kernel": "gauss"}, "unknown kernel 'gauss'"),
        (DECModule, {"update_interval": 0}, "update_interval must be at least 1"),
        (DECModule, {"alpha": 0.0}, "alpha must be > 0"),
        (VaDEModule, {"n_samples": 1}, "n_samples must be at least 2"),
        (VaDEModule, {"init": "spectral"}, "unknown initialisation 'spectral'"),
        (VaDEModule, {"n_clusters": "auto"}, "pipeline.train resolves"),
        (VaDEModule, {"cluster_group": 3}, "cluster_group=3 is not a group of 3"),
        (DECModule, {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        (DECModule, {"latent_dim": 0}, "layer sizes must be positive"),
        (DECModule, {"xd": {"speed": 1}}, "unknown model.xd option"),
        (DECModule, {"optimizer": {"lr": 0.1}}, "model.optimizer needs a _target_"),
        (VaDEModule, {"kernel": "mixture"}, r"unknown option\(s\) \['kernel'\] of VaDEModule"),
        (
            DECModule,
            {
                "spatial_prior": True,
                "preprocessing": {"feature_names": ["pmra"], "scaler": {"center": [0], "scale": [1]}},
            },
            "spatial_prior needs the position",
        ),
    ],
)
def test_every_bad_option_raises_a_config_error(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls(5, **options)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.kernel=gauss"], "unknown kernel 'gauss'"),
        (["model.n_clusters=1"], "n_clusters.*at least 2"),
        (["model=vade", "model.logvar_min=9"], "logvar_min"),
        (["model.n_clusters=auto", "model.n_clusters_range=[1,3]"], "n_clusters_range"),
        (["model.pretrain.dropout=2"], "dropout"),
    ],
)
def test_pipeline_checks_every_phase_before_the_first_epoch(tmp_path, overrides, message):
    cfg = compose_config("train", TINY + overrides, tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        pipeline.train(cfg)
    assert time.perf_counter() - start < 20
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tensorboard").exists()


def test_model_options_are_checked_before_the_catalogue_is_read(tmp_path):
    tiny = [o for o in TINY if not o.startswith("data.simulate")]
    cfg = compose_config(
        "train", tiny + ["data=catalog", f"data.path={tmp_path}/absent.csv", "model.kernel=gauss"], tmp_path
    )
    with pytest.raises(ConfigError, match="unknown kernel 'gauss'"):  # not: absent.csv not found
        pipeline.train(cfg)


def test_spatial_prior_without_a_position_fails_before_training(tmp_path):
    cfg = compose_config("train", TINY + ["model.spatial_prior=true", "data.features=[pmra,pmdec,parallax]"], tmp_path)
    with pytest.raises(ConfigError, match="spatial_prior needs the position"):
        pipeline.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_error_columns_fail_before_the_autoencoder_phase(tmp_path):
    path = tmp_path / "cone.csv"
    simulate_field("m4", n_stars=800, seed=1).drop(columns=["pmra_error"]).to_csv(path, index=False)
    tiny = [o for o in TINY if not o.startswith("data.simulate")]
    cfg = compose_config("train", tiny + ["data=catalog", f"data.path={path}", "model.init=xd"], tmp_path / "run")
    with pytest.raises(CatalogError, match="pmra_error"):
        pipeline.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_reports_a_bad_model_option_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "grasp_dl.cli", "train", *TINY, "model.kernel=gauss", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "grasp-dl: error: unknown kernel 'gauss'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


# ----------------------------------------------------------------------------- monitored metrics


@pytest.mark.parametrize(
    "model, metric",
    [("dec", "val/entropy"), ("idec", "val/entropy"), ("vade", "val/loss"), ("autoencoder", "val/loss")],
)
def test_checkpoints_and_early_stopping_watch_the_models_own_metric(tmp_path, model, metric):
    overrides = [o for o in TINY if model != "autoencoder" or "pretrain" not in o] + [f"model={model}"]
    cfg = compose_config("train", overrides, tmp_path)
    trainer = pipeline.build_trainer(cfg)
    monitors = {type(c).__name__: c.monitor for c in trainer.callbacks if hasattr(c, "monitor") and c.monitor}
    assert monitors == {"ModelCheckpoint": metric, "EarlyStopping": metric}
    if "pretrain" in cfg.model:
        phase = pipeline._phase_config(cfg, "autoencoder", 1, cfg.model.pretrain.monitor)
        assert {c.monitor for c in pipeline.build_trainer(phase).callbacks if getattr(c, "monitor", None)} == {
            "val/loss"
        }


@pytest.mark.slow
def test_dec_logs_its_entropy_under_its_own_name_and_checkpoints_by_it(tmp_path):
    result = pipeline.train(compose_config("train", TINY, tmp_path))
    assert "val/entropy" in result.metrics and "val/loss" not in result.metrics
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    callback_state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert callback_state["monitor"] == "val/entropy"


# ----------------------------------------------------------------------------- a model without a network


class FeatureMixture(ClusteringModule):
    """A clustering model in one class: a Gaussian mixture on the features, fitted by EM at the
    start of training (no network, no autoencoder, nothing to optimise)."""

    def __init__(self, input_dim: int, n_clusters: int = 3, **shared):
        super().__init__(input_dim, n_clusters, **shared)
        self.register_buffer("means", torch.zeros(self.hparams.n_clusters, input_dim))

    def initialise_from(self, catalog):
        from sklearn.mixture import GaussianMixture

        gmm = GaussianMixture(self.hparams.n_clusters, covariance_type="spherical", random_state=self.hparams.seed)
        gmm.fit(catalog.features.double().numpy())
        self.means.copy_(torch.as_tensor(gmm.means_))
        self.fit_results["em_iterations"] = int(gmm.n_iter_)
        self.decide_cluster_group(catalog.features)

    def predict_proba(self, x):
        return torch.softmax(-torch.cdist(x.float(), self.means).pow(2), dim=1)

    def training_step(self, batch, batch_idx):
        return None


def test_a_model_without_a_network_trains_by_em_at_fit_start_and_reloads(small, tmp_path):
    dm, ae = small
    features = dm.data[dm.train_index]
    module = FeatureMixture(dm.input_dim, preprocessing=dm.preprocessing_state())
    assert module.configure_optimizers() is None
    with pytest.raises(ConfigError, match="FeatureMixture has no network"):
        FeatureMixture.from_autoencoder(ae)
    module.attach_training_catalog(features)
    trainer = _trainer(1)
    trainer.fit(module, train_dataloaders=TensorBatchLoader(features, 256))
    assert bool(module.initialized) and module.fit_results["em_iterations"] >= 1 and 0 <= module.cluster_group < 3
    trainer.save_checkpoint(tmp_path / "mixture.ckpt")
    raw = torch.load(tmp_path / "mixture.ckpt", weights_only=True)
    assert checkpoint_class(raw) is FeatureMixture and "em_iterations" not in raw["hyper_parameters"]
    again = FeatureMixture.load_from_checkpoint(tmp_path / "mixture.ckpt")
    torch.testing.assert_close(again.predict_proba(features), module.predict_proba(features))
    assert again.cluster_group == module.cluster_group and again.fit_results == module.fit_results


# ----------------------------------------------------------------------------- the lean base and the deep base

XD_PREP = {"feature_names": ["xi", "eta", "pmra", "pmdec"], "scaler": {"center": [0.0] * 4, "scale": [1.0] * 4}}


def test_a_model_without_a_network_sits_on_the_lean_base_only():
    """XD has no network: no network shape, deep optimiser options, anchor, hard-field switches or speed mixins;
    its one optimiser moves the mixture's profile shape (the M-step's L-BFGS), nothing else."""
    module = XDModule(4, preprocessing=XD_PREP)
    assert not isinstance(module, (DeepClusteringModule, BlockTraining, EpochMeanLogging, HardFieldIngredients))
    deep_only = {"hidden_dims", "latent_dim", "dropout", "optimizer", "anchor", "spatial_prior", "xd"}
    assert not deep_only & set(module.hparams) and not any(k.startswith("radial_prior") for k in module.state_dict())
    (group,) = module.configure_optimizers().param_groups
    assert [id(p) for p in group["params"]] == [id(module.em_shape)]
    for deep in (DECModule, VaDEModule):
        assert issubclass(deep, (DeepClusteringModule, BlockTraining, EpochMeanLogging, HardFieldIngredients))


def test_capabilities_are_protocols_not_attribute_names():
    xd, dec, vade = XDModule(4, preprocessing=XD_PREP), DECModule(4, hidden_dims=[4], latent_dim=2), VaDEModule(4)
    assert isinstance(xd, capabilities.ScoresStarsWithErrors) and isinstance(xd, capabilities.FitsClusterAstrometry)
    assert not isinstance(dec, capabilities.ScoresStarsWithErrors) and isinstance(dec, capabilities.PoolsWithStart)
    assert isinstance(vade, capabilities.SamplesMembership) and not isinstance(dec, capabilities.SamplesMembership)
    assert isinstance(dec, capabilities.HasLatentSpace) and not isinstance(xd, capabilities.HasLatentSpace)
    for module in (xd, dec, vade):
        assert isinstance(module, capabilities.ScoresPositions) and isinstance(module, capabilities.ErrorAwareScoring)
    assert xd.scores_with_errors and not dec.scores_with_errors  # no start kept yet
    assert isinstance(xd, capabilities.ComparesWithNull) and not isinstance(dec, capabilities.ComparesWithNull)
    assert isinstance(xd, capabilities.TakesPublishedCluster) and not isinstance(
        vade, capabilities.TakesPublishedCluster
    )
    assert isinstance(xd, capabilities.ViewsAtLastEpochOnly) and not isinstance(dec, capabilities.ViewsAtLastEpochOnly)
    assert isinstance(dec, capabilities.LogsEpochMeans) and not isinstance(xd, capabilities.LogsEpochMeans)
    autoencoder = AutoencoderModule(4, hidden_dims=[4], latent_dim=2)
    for module in (xd, dec, vade):
        assert isinstance(module, capabilities.KeepsFitResults) and isinstance(module, capabilities.FitsPositionModel)
    assert not isinstance(autoencoder, capabilities.KeepsFitResults)  # a checkpoint of another phase


def test_no_capability_is_asked_for_by_its_attribute_name():
    """hasattr/getattr on a protocol member's name would be a second, silent declaration of the capability."""
    import ast
    from pathlib import Path
    from typing import Protocol

    import grasp_dl

    members = {
        name
        for protocol in vars(capabilities).values()
        if isinstance(protocol, type) and Protocol in protocol.__bases__
        for name in {*vars(protocol).get("__annotations__", {}), *vars(protocol)}
        if not name.startswith("_")
    }
    found = []
    for path in Path(grasp_dl.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr"):
                name = node.args[1] if len(node.args) > 1 else None
                if isinstance(name, ast.Constant) and name.value in members:
                    found.append(f"{path.name}:{node.lineno} {name.value}")
    assert len(members) > 10 and not found


def test_a_model_without_a_network_written_before_the_split_still_loads(tmp_path):
    """Its checkpoint carried the deep base's options and the radial prior: they are dropped on loading."""
    module = XDModule(4, preprocessing=XD_PREP)
    checkpoint = {
        "state_dict": {
            **module.state_dict(),
            "radial_prior.log_scale": torch.tensor(-3.0),
            "radial_prior.group": torch.tensor(-1),
        },
        "hyper_parameters": {
            **dict(module.hparams),
            "hidden_dims": [64, 32, 16],
            "latent_dim": 8,
            "dropout": 0.1,
            "batch_norm": True,
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
            "scheduler": None,
            "xd": {"spatial": True},
            "noise_augmentation": False,
            "spatial_prior": False,
            "anchor": {"weight": 10.0},
        },
        "pytorch-lightning_version": L.__version__,
        "clustering_module": "grasp_dl.models.xd.XDModule",
    }
    torch.save(checkpoint, tmp_path / "old_xd.ckpt")
    again = XDModule.load_from_checkpoint(tmp_path / "old_xd.ckpt", weights_only=True)
    assert isinstance(again, XDModule) and "hidden_dims" not in again.hparams
