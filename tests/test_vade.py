"""VaDE: ELBO, posteriors, recovery of known groups, reload, uncertainty, real data, end to end."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import load_simulation_config, simulate_field
from grasp_dl.data.training_catalog import TrainingCatalog
from grasp_dl.inference.outputs import write_predictions
from grasp_dl.inference.predict import load_clustering_module, predict_catalog
from grasp_dl.jobs import train as pipeline
from grasp_dl.jobs.evaluate import evaluate_command
from grasp_dl.membership.rules import entropy
from grasp_dl.models.autoencoder import AutoencoderModule
from grasp_dl.models.vade import VaDEModule, mixture_log_joint
from grasp_dl.runtime.errors import ConfigError

from hydra_configs import TINY, compose_config


def _trainer(epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _pretrained(dm: StellarCatalogDataModule, epochs: int = 3) -> AutoencoderModule:
    L.seed_everything(0, verbose=False)
    autoencoder = AutoencoderModule(dm.input_dim, preprocessing=dm.preprocessing_state())
    _trainer(epochs).fit(autoencoder, datamodule=dm)
    return autoencoder


@pytest.fixture(scope="module")
def small_field():
    """A 3000-star M4-like field, its autoencoder, and a VaDE model trained on it for 3 epochs."""
    dm = StellarCatalogDataModule(simulate=load_simulation_config("m4") | {"n_stars": 3000, "seed": 3}, batch_size=128)
    dm.setup()
    autoencoder = _pretrained(dm)
    module = VaDEModule.from_autoencoder(autoencoder, n_clusters=3, kl_warmup_epochs=0)
    _trainer(3).fit(module, datamodule=dm)
    return dm, autoencoder, module


def _negative_elbo(module: VaDEModule, x: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        terms = module.elbo_terms(x, generator=torch.Generator().manual_seed(0))
    return float(sum(terms.values()))


def test_mixture_log_joint_matches_a_hand_computed_case():
    z = torch.tensor([[0.0, 0.0]])
    log_joint = mixture_log_joint(z, torch.zeros(2), torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.zeros(2, 2))
    expected = np.log(0.5) - np.log(2 * np.pi) - np.array([0.0, 0.5])
    np.testing.assert_allclose(log_joint.numpy()[0], expected, rtol=1e-6)
    # far from every component the log-sum-exp keeps the posterior finite (no 0/0)
    far = mixture_log_joint(torch.tensor([[1e4, 0.0]]), torch.zeros(2), torch.zeros(2, 2), torch.full((2, 2), -10.0))
    assert torch.isfinite(torch.softmax(far, -1)).all()


def test_from_autoencoder_copies_the_encoder_mean_and_decoder(small_field):
    dm, autoencoder, _ = small_field
    module = VaDEModule.from_autoencoder(autoencoder, n_clusters=3)
    x = dm.data[:200]
    torch.testing.assert_close(module.embed(x), autoencoder.embed(x))
    autoencoder.eval()
    module.net.eval()
    torch.testing.assert_close(module.net.decode(module.embed(x)), autoencoder.net.decode(autoencoder.embed(x)))


def test_elbo_is_finite_and_falls_on_a_short_run(small_field):
    dm, autoencoder, _ = small_field
    module = VaDEModule.from_autoencoder(autoencoder, n_clusters=3, kl_warmup_epochs=0)
    module.initialise_from(TrainingCatalog(dm.data[dm.train_index]))
    before = _negative_elbo(module, dm.data)
    _trainer(3).fit(module, datamodule=dm)
    after = _negative_elbo(module, dm.data)
    assert np.isfinite(before) and np.isfinite(after)
    assert after < before - 0.1, (before, after)


def test_posteriors_are_distributions_and_the_cluster_is_found(small_field):
    dm, _, module = small_field
    prob = module.predict_proba(dm.data)
    torch.testing.assert_close(prob.sum(1), torch.ones(len(dm.data)))
    mean, std = module.predict_proba_samples(dm.data[:500], n_samples=16)
    torch.testing.assert_close(mean.sum(1), torch.ones(500))
    assert (std >= 0).all() and (std <= 0.5).all()
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask] == "cluster"
    members = prob[:, module.cluster_group].numpy() > 0.5
    f1 = 2 * (members & truth).sum() / (members.sum() + truth.sum())
    assert f1 > 0.9, f1
    assert module.hparams.n_clusters == 3 and 0 <= module.cluster_group < 3


def _two_blobs(n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two groups of stars far apart in proper motion and parallax, scattered over one cone."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    table = pd.DataFrame(
        {
            "ra": 100 + rng.normal(0, 0.1, n),
            "dec": -20 + rng.normal(0, 0.1, n),
            "pmra": np.where(group == 0, -8.0, 6.0) + rng.normal(0, 0.7, n),
            "pmdec": np.where(group == 0, 4.0, -5.0) + rng.normal(0, 0.7, n),
            "parallax": np.where(group == 0, 0.4, 2.0) + rng.normal(0, 0.1, n),
        }
    )
    return table, group


@pytest.mark.parametrize("init", ["gmm_features", "gmm", "kmeans"])
def test_two_well_separated_blobs_are_recovered(init):
    table, group = _two_blobs()
    dm = StellarCatalogDataModule(catalog=table, center=[100.0, -20.0], batch_size=128)
    dm.setup()
    module = VaDEModule.from_autoencoder(_pretrained(dm, 2), n_clusters=2, init=init, n_init=4)
    _trainer(2).fit(module, datamodule=dm)
    labels = module.predict_proba(dm.data).argmax(1).numpy()
    assert adjusted_rand_score(group[dm.prepared.mask], labels) > 0.9


def test_checkpoint_reloads_to_identical_posteriors(small_field, tmp_path):
    dm, _, module = small_field
    trainer = _trainer(1)
    trainer.fit(module, datamodule=dm)  # one more epoch, so the trainer holds the module
    trainer.save_checkpoint(tmp_path / "vade.ckpt")
    raw = torch.load(tmp_path / "vade.ckpt", weights_only=True)  # plain hyper-parameters only
    assert raw["hyper_parameters"]["preprocessing"]["feature_names"] == dm.feature_names
    assert int(raw["state_dict"]["decided_group"]) == module.cluster_group >= 0
    again = load_clustering_module(tmp_path / "vade.ckpt")
    assert isinstance(again, VaDEModule) and not again.training
    torch.testing.assert_close(again.predict_proba(dm.data), module.predict_proba(dm.data))
    for first, second in zip(again.predict_proba_samples(dm.data), module.predict_proba_samples(dm.data), strict=False):
        torch.testing.assert_close(first, second)
    assert again.cluster_group == module.cluster_group


def test_the_spread_is_that_of_the_pooled_membership(small_field):
    """With an anchored model's start, each draw is pooled before the spread is taken (member_prob_std)."""
    dm, _, module = small_field
    x = dm.data[:400]
    g = module.cluster_group
    mean, std = module.predict_proba_samples(x, n_samples=16)
    assert float(std[:, g].max()) > 1e-4  # the network's own draws do spread (how far depends on the module's training)
    sure = np.full(len(x), 1.0 - 1e-12)
    pooled_mean, pooled_std = module.predict_proba_samples(x, n_samples=16, pool=(sure, 1.0))
    # the start alone decides: every draw is the start's opinion, no spread
    assert float(pooled_std[:, g].max()) < 1e-6 and float(pooled_mean[:, g].min()) > 0.999
    undecided = np.full(len(x), 0.5)
    half_mean, half_std = module.predict_proba_samples(x, n_samples=16, pool=(undecided, 0.5))
    # a start without a say changes nothing; an undecided one halves each draw's log-odds: the
    # draws still spread where the network's do, and the membership stays on the same side of 0.5
    np.testing.assert_allclose(module.predict_proba_samples(x, n_samples=16, pool=(undecided, 0.0))[1], std, atol=1e-6)
    spread = std[:, g] > 1e-4
    assert spread.any() and (half_std[:, g][spread] > 1e-5).all()
    sure_side = (mean[:, g] - 0.5).abs() > 0.2
    assert ((half_mean[:, g] > 0.5) == (mean[:, g] > 0.5))[sure_side].all()
    np.testing.assert_allclose(half_mean.sum(1).numpy(), 1.0, atol=1e-5)
    # a star the start cannot score (NaN) keeps the network's draws
    missing = np.full(len(x), np.nan)
    np.testing.assert_allclose(module.predict_proba_samples(x, n_samples=16, pool=(missing, 0.5))[1], std, atol=1e-6)


def test_uncertainty_grows_with_injected_noise(small_field):
    dm, _, module = small_field
    truth = dm.table["truth"].to_numpy()[dm.prepared.mask] == "cluster"
    members = dm.data[torch.from_numpy(truth)]
    group = module.cluster_group
    generator = torch.Generator().manual_seed(1)
    stds, entropies = [], []
    for sigma in (0.0, 0.3, 0.6):
        noisy = members + sigma * torch.randn(members.shape, generator=generator, dtype=members.dtype)
        mean, std = module.predict_proba_samples(noisy)
        stds.append(float(std[:, group].mean()))
        entropies.append(float(entropy(module.predict_proba(noisy).numpy()).mean()))
    # the largest noise gives the largest spread (the first two can tie within noise for a confident model)
    assert max(stds[0], stds[1]) < stds[2], stds
    assert max(entropies[0], entropies[1]) < entropies[2], entropies


def test_no_nan_on_the_real_pal13_export_with_its_outliers(pal13_path):
    dm = StellarCatalogDataModule(path=str(pal13_path), outlier_removal=False, batch_size=32)
    dm.setup()
    assert dm.data.abs().max() > 10  # the robust scaling leaves real outliers far out
    module = VaDEModule.from_autoencoder(_pretrained(dm, 2), n_clusters=2, n_init=4, kl_warmup_epochs=1)
    trainer = _trainer(3)
    trainer.fit(module, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert np.isfinite(_negative_elbo(module, dm.data))
    assert all(torch.isfinite(p).all() for p in module.parameters())
    prob = module.predict_proba(dm.data)
    _, std = module.predict_proba_samples(dm.data)
    assert torch.isfinite(prob).all() and torch.isfinite(std).all()


@pytest.mark.slow
def test_train_model_vade_end_to_end_then_predict_and_evaluate(tmp_path):
    cfg = compose_config("train", TINY + ["model=vade", "data.simulate.seed=5"], tmp_path / "run")
    result = pipeline.train(cfg)
    assert isinstance(result.module, VaDEModule)
    module = load_clustering_module(result.checkpoint)
    assert isinstance(module, VaDEModule) and module.cluster_group == result.module.cluster_group >= 0
    df = simulate_field("m4", n_stars=1500, seed=11)
    df.loc[[0, 10], "pmra"] = np.nan
    df.loc[20, "parallax"] = np.nan
    out, summary = predict_catalog(module, df, chunk_size=500)
    assert len(out) == len(df) and (out["source_id"].to_numpy() == df["source_id"].to_numpy()).all()
    assert list(out.columns[-3:]) == ["entropy", "member_prob_std", "flag"]
    unscored = out["label"] == -1
    assert unscored[[0, 10, 20]].all() and out.loc[unscored, "member_prob_std"].isna().all()
    std = out.loc[~unscored, "member_prob_std"].to_numpy()
    assert np.isfinite(std).all() and (std >= 0).all() and (std <= 0.5).all()
    np.testing.assert_allclose(out.loc[~unscored, [f"prob_{j}" for j in range(3)]].sum(1), 1.0, atol=1e-5)
    assert summary["n_scored"] == int((~unscored).sum())

    predictions = tmp_path / "members.parquet"
    write_predictions(out, summary, predictions)
    truth = tmp_path / "cone.parquet"
    df.to_parquet(truth)
    eval_cfg = compose_config("evaluate", [f"predictions={predictions}", f"truth={truth}"], tmp_path / "eval")
    metrics, output = evaluate_command(eval_cfg)
    assert 0 <= metrics["brier"] < 0.1 and 0 <= metrics["ece"] < 0.1
    assert output.with_suffix(".reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="unknown initialisation 'spectral'"):
        VaDEModule(5, init="spectral")
    with pytest.raises(ConfigError, match="n_clusters must be at least 2"):
        VaDEModule(5, n_clusters=1)
    with pytest.raises(ConfigError, match="logvar_min"):
        VaDEModule(5, logvar_min=2.0, logvar_max=1.0)
