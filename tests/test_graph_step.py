"""CUDA-graph training steps (grasp_dl/engine/graph_step.py).

On a CPU the step that would be captured runs eagerly with its fixed-size buffers (``static``),
through the same Lightning path, and must leave every weight, batch-norm statistic, DEC target
and logged mean exactly where plain training leaves them. The ``gpu`` tests capture for real.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import load_simulation_config
from grasp_dl.engine.graph_step import GraphStep, graph_step_for, host_syncs, make_capturable, use_graphs
from grasp_dl.jobs import train as pipeline
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.dec import DECModule
from grasp_dl.models.vade import VaDEModule
from grasp_dl.runtime.config import conf_dir
from grasp_dl.runtime.errors import ConfigError

from hydra_configs import TINY, compose_config


def _trainer(epochs: int, accelerator: str = "cpu", **options) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **options,
    )


@pytest.fixture(scope="module")
def field():
    """1,350 training stars in mini-batches of 100 (the last one ragged), blocks of 8, and an autoencoder."""
    L.seed_everything(0, verbose=False)
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 1500, "seed": 3}, batch_size=100)
    dm.setup()
    autoencoder = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    _trainer(2).fit(autoencoder, datamodule=dm)
    return dm, autoencoder


def _build(kind: str, dm: StellarCatalogDataModule, autoencoder: AutoencoderModule) -> L.LightningModule:
    if kind == "autoencoder":  # training mode: dropout and batch-norm statistics move every step
        return AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    if kind == "dec":  # the target is refreshed every 3 steps, inside blocks of 8
        return DECModule.from_autoencoder(autoencoder, n_clusters=3, update_interval=3, tol=0.0, spatial_prior=True)
    if kind == "idec":
        return DECModule.from_autoencoder(
            autoencoder, n_clusters=3, variant="idec", update_interval=5, tol=0.0, noise_augmentation=True
        )
    # VaDE: draws every step, the spatial prior, a KL weight that changes every epoch
    return VaDEModule.from_autoencoder(autoencoder, n_clusters=3, spatial_prior=True, kl_warmup_epochs=2, n_samples=4)


def _fit(kind, dm, autoencoder, setting, epochs=2, accelerator="cpu", **options):
    L.seed_everything(1, verbose=False)
    module = _build(kind, dm, autoencoder)
    use_graphs(module, setting)
    trainer = _trainer(epochs, accelerator, **options)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def _assert_same_training(plain, graphed, exact: bool = True, rtol: float = 1e-6, atol: float = 1e-7):
    (a, ta), (b, tb) = plain, graphed
    assert tb.global_step == ta.global_step
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        if exact:
            assert torch.equal(state_a[name], state_b[name]), name
        else:
            torch.testing.assert_close(state_b[name], state_a[name], rtol=rtol, atol=atol, msg=name)
    if isinstance(a, DECModule):
        torch.testing.assert_close(b.target, a.target, rtol=0 if exact else rtol, atol=0 if exact else atol)
    assert ta.callback_metrics.keys() == tb.callback_metrics.keys()
    for name, value in ta.callback_metrics.items():
        torch.testing.assert_close(tb.callback_metrics[name], value, rtol=max(rtol, 1e-6), atol=atol, msg=name)


@pytest.mark.parametrize("kind", ["autoencoder", "dec", "idec", "vade"])
def test_the_static_step_trains_exactly_as_plain_steps(field, kind):
    dm, autoencoder = field
    plain = _fit(kind, dm, autoencoder, "false")
    graphed = _fit(kind, dm, autoencoder, "static")
    assert plain[0]._graph_step is None
    _assert_same_training(plain, graphed)
    step = graphed[0]._graph_step
    epochs = graphed[1].current_epoch
    # Each epoch: one capture, full batches replayed, the ragged last batch (and the warm-up) eager.
    assert step.captures == epochs
    assert step.replays + step.eager_steps == graphed[1].global_step
    assert step.eager_steps == step.warmup + epochs
    if kind == "dec":  # target refreshes rebind the captured target instead of capturing again
        assert step.rebinds >= graphed[1].global_step // 3 - 2


def test_a_new_tensor_of_another_shape_means_a_new_capture(field):
    """A module tensor reassigned with another shape cannot be copied into the captured one."""
    dm, autoencoder = field
    module = _build("dec", dm, autoencoder)
    use_graphs(module, "static")
    trainer = _trainer(1)
    trainer.fit(module, datamodule=dm)
    step = module._graph_step
    batch = next(iter(dm.train_dataloader()))[0]
    step.step(batch, module.optimizers())  # after the fit: a new epoch, so a new capture
    captures, rebinds = step.captures, step.rebinds
    captured = module.target
    module.target = captured.clone() * 0.5  # same shape: copied into the captured tensor
    step.step(batch, module.optimizers())
    assert (step.captures, step.rebinds) == (captures, rebinds + 1)
    assert module.target is captured
    module.target = torch.cat([module.target, module.target[:1]])  # one row longer: captured afresh
    step.step(batch, module.optimizers())
    assert step.captures == captures + 1


@pytest.mark.parametrize("kind", ["autoencoder", "dec", "idec", "vade"])
def test_the_step_never_waits_for_the_device(field, kind):
    """A captured step may not read a device value on the host (``.item()``, ``int(tensor)``...)."""
    dm, autoencoder = field
    module, _ = _fit(kind, dm, autoencoder, "false", epochs=1)
    x, rows = next(iter(dm.train_dataloader()))[0]
    module.log_epoch_mean = lambda *args, **kwargs: None
    assert host_syncs(lambda: module.batch_loss((x, rows)).backward()) == []


def test_host_syncs_finds_a_synchronisation():
    t = torch.ones(3)
    assert host_syncs(lambda: (t.sum().item(), int(t[0]), bool(t.any()))) == ["item", "__int__", "__bool__"]
    assert host_syncs(lambda: (t[t > 0], torch.where(t > 0), t[:, None][t > 0, 0])) == [
        "__getitem__ with a boolean mask",
        "where with one argument",
        "__getitem__ with a boolean mask",
    ]
    assert host_syncs(lambda: (t[torch.tensor([0, 2])], torch.where(t > 0, t, 0.0), t[1:])) == []


def test_graphs_true_on_a_cpu_is_refused_with_the_fix(field):
    dm, _ = field
    module = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    use_graphs(module, True)  # YAML's true
    with pytest.raises(ConfigError, match=r"need a GPU and this run trains on cpu.*graphs=auto.*graphs=false"):
        _trainer(1).fit(module, datamodule=dm)


def test_auto_and_false_leave_cpu_steps_eager(field):
    dm, _ = field
    for setting in ("auto", "false"):
        module = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
        use_graphs(module, setting)
        trainer = _trainer(1)
        trainer.fit(module, datamodule=dm)
        assert module._graph_step is None and graph_step_for(module, trainer) is None


class GradientWatcher(L.Callback):
    """Reads the gradients before each optimiser step: a captured step has applied them already."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass


def test_a_step_a_callback_watches_is_not_captured(field):
    dm, _ = field
    module = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    use_graphs(module, "static")
    with pytest.raises(ConfigError, match=r"hooks around backward.*GradientWatcher.on_before_optimizer_step"):
        _trainer(1, callbacks=[GradientWatcher()]).fit(module, datamodule=dm)


def test_a_step_that_cannot_be_captured_trains_on_eagerly(field, monkeypatch):
    dm, autoencoder = field
    plain = _fit("dec", dm, autoencoder, "false")

    def fail(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphStep, "_prepare", fail)
    with pytest.warns(UserWarning, match="could not be captured, training on eagerly"):
        graphed = _fit("dec", dm, autoencoder, "static")
    step = graphed[0]._graph_step
    assert "not permitted" in step.failed and step.replays == 0
    _assert_same_training(plain, graphed)


def test_compile_and_graphs_do_not_mix():
    module = AutoencoderModule(5)
    with pytest.raises(ConfigError, match="compile=true and graphs=true cannot be combined"):
        use_graphs(module, "true", compiled=True)
    use_graphs(module, "auto", compiled=True)
    assert module._graphs_setting == "false"


def test_unknown_setting_is_named():
    module = AutoencoderModule(5)
    with pytest.raises(ConfigError, match="graphs='sometimes'.*auto, true or false"):
        use_graphs(module, "sometimes")


def test_capturable_optimiser_saves_its_configured_setting():
    """Checkpoints written while capturing load into a run without graphs (or on a CPU)."""
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    optimizer.step()
    plain = optimizer.state_dict()
    make_capturable(optimizer, torch.device("cpu"))
    assert optimizer.param_groups[0]["capturable"] is True
    saved = optimizer.state_dict()
    assert saved["param_groups"] == plain["param_groups"]
    assert saved["state"][0]["step"].device.type == "cpu"
    reloaded = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)
    reloaded.load_state_dict(saved)
    assert reloaded.param_groups[0]["capturable"] is False


def test_the_default_config_is_auto():
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train")
    assert cfg.graphs == "auto"


@pytest.mark.parametrize(
    ("setting", "message"),
    [("true", "need a GPU and this run trains on cpu"), ("always", "graphs='always' is not a setting")],
)
def test_train_refuses_graphs_it_cannot_give(tmp_path, setting, message):
    """Through the pipeline: a bad value before any training, graphs=true on a CPU at the first phase's start."""
    cfg = compose_config("train", [*TINY, "data.simulate.n_stars=600", f"graphs={setting}"], tmp_path)
    with pytest.raises(ConfigError, match=message):
        pipeline.train(cfg)


# ---------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["autoencoder", "dec", "idec", "vade"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_captured_steps_train_as_eager_steps_on_a_gpu(field, kind, precision):
    dm, autoencoder = field
    plain = _fit(kind, dm, autoencoder, "false", accelerator="gpu", precision=precision)
    graphed = _fit(kind, dm, autoencoder, "true", accelerator="gpu", precision=precision)
    step = graphed[0]._graph_step
    assert step is not None and step.capture and step.failed is None
    assert step.captures == graphed[1].current_epoch and step.replays > step.eager_steps
    if kind == "dec":
        assert step.rebinds > 0
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if precision == "32-true" else {"rtol": 2e-2, "atol": 2e-3}
    _assert_same_training(plain, graphed, exact=False, **tolerance)
