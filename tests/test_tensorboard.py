"""TensorBoard views (figures, projector embedding, soft-assignment histograms), read back from the event files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from grasp_dl.data.datamodule import StellarCatalogDataModule
from grasp_dl.data.simulate import simulate_field
from grasp_dl.figures.tensorboard import TensorBoardFigures, read_scalars
from grasp_dl.jobs import train as pipeline
from grasp_dl.jobs.run_history import run_history

from hydra_configs import TINY, compose_config

MAX_STARS = 120


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A CLI training run whose callback draws at the second epoch of each phase (every_n_epochs=2)."""
    out = tmp_path_factory.mktemp("tb")
    overrides = TINY + [
        "callbacks.tensorboard_figures.every_n_epochs=2",
        f"callbacks.tensorboard_figures.max_stars={MAX_STARS}",
    ]
    pipeline.train(compose_config("train", overrides, out))
    return out


def _events(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return events


def test_default_callback_draws_every_fifth_epoch_from_at_most_2000_stars(tmp_path):
    trainer = pipeline.build_trainer(compose_config("train", [], tmp_path))
    (callback,) = [c for c in trainer.callbacks if isinstance(c, TensorBoardFigures)]
    due = [epoch for epoch in range(12) if callback._due(_trainer(epoch, 10 * epoch))]
    assert due == [4, 9]
    datamodule = StellarCatalogDataModule(catalog=simulate_field("m4", n_stars=2600, seed=3), val_fraction=0.0)
    datamodule.setup("fit")
    assert len(datamodule.train_index) > 2000
    assert len(callback.sample(datamodule, torch.device("cpu")).catalog) == 2000


@pytest.mark.slow
def test_clustering_phase_writes_figures_histograms_and_embedding(run_dir):
    events = _events(run_dir / "tensorboard")
    assert "train/loss" in events.Tags()["scalars"]
    images = set(events.Tags()["images"])
    expected = {f"figures/{name}" for name in ("latent_space", "proper_motions", "sky", "cmd", "reliability")}
    assert expected <= images
    # drawn once: at the second of two epochs only
    assert all(len(events.Images(tag)) == 1 for tag in expected)
    image = events.Images("figures/sky")[0]
    assert image.width > 100 and image.height > 100 and image.encoded_image_string[:4] == b"\x89PNG"
    histograms = set(events.Tags()["histograms"])
    assert {
        "assignments/prob_0",
        "assignments/prob_1",
        "assignments/prob_2",
        "assignments/max_prob",
        "assignments/entropy",
    } <= histograms
    max_prob = events.Histograms("assignments/max_prob")[0].histogram_value
    assert max_prob.num == MAX_STARS and 1 / 3 - 1e-6 <= max_prob.min <= max_prob.max <= 1 + 1e-6
    config = (run_dir / "tensorboard" / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "latent' in config and "metadata.tsv" in config
    tensors = list((run_dir / "tensorboard").glob("*/latent/tensors.tsv"))
    metadata = list((run_dir / "tensorboard").glob("*/latent/metadata.tsv"))
    assert len(tensors) == len(metadata) == 1
    rows = tensors[0].read_text().strip().splitlines()
    assert len(rows) == MAX_STARS and len(rows[0].split("\t")) == 8  # the latent dimension
    lines = metadata[0].read_text().strip().splitlines()
    assert lines[0].split("\t") == ["group", "member_prob", "truth"] and len(lines) == MAX_STARS + 1
    assert {line.split("\t")[2] for line in lines[1:]} <= {"cluster", "field"}


@pytest.mark.slow
def test_autoencoder_phase_has_no_groups_yet(run_dir):
    events = _events(run_dir / "tensorboard" / "autoencoder")
    images = set(events.Tags()["images"])
    assert {"figures/latent_space", "figures/proper_motions", "figures/sky", "figures/cmd"} <= images
    assert "figures/reliability" not in images and not events.Tags()["histograms"]
    metadata = next((run_dir / "tensorboard" / "autoencoder").glob("*/latent/metadata.tsv"))
    lines = metadata.read_text().strip().splitlines()
    assert len(lines) == MAX_STARS and set(lines) <= {"cluster", "field"}  # truth only: no header


@pytest.mark.slow
def test_scalars_read_back_as_a_history_per_epoch(run_dir):
    history = read_scalars(run_dir / "tensorboard", "clustering")
    assert list(history["epoch"]) == [0, 1] and history["val/entropy"].notna().all()  # DEC logs its own metric
    both = run_history(run_dir)
    assert list(both["phase"]) == ["autoencoder", "autoencoder", "clustering", "clustering"]
    assert read_scalars(run_dir / "nowhere", "x").empty


def _trainer(epoch: int, step: int, **kwargs):
    return SimpleNamespace(current_epoch=epoch, global_step=step, is_global_zero=True, sanity_checking=False, **kwargs)


def test_every_n_epochs_gates_and_missing_logger_is_a_no_op():
    callback = TensorBoardFigures(every_n_epochs=3)
    due = [callback._due(_trainer(epoch, 10 * epoch)) for epoch in range(6)]
    assert due == [False, False, True, False, False, True]
    # no TensorBoard logger: nothing to write to, and no error
    callback.on_validation_epoch_end(_trainer(2, 20, loggers=[], datamodule=None), None)
    assert callback._last_logged_step is None
    # the last epoch draws too: max_epochs reached, or the run stops (early stopping, a one-pass fit)
    last = [callback._due(_trainer(epoch, 10 * epoch, max_epochs=5, should_stop=False)) for epoch in range(5)]
    assert last == [False, False, True, False, True]
    assert callback._due(_trainer(0, 0, max_epochs=20, should_stop=True))
    assert not callback._due(_trainer(0, 0, max_epochs=-1, should_stop=False))  # max_epochs=-1: no last epoch
    with pytest.raises(ValueError, match="every_n_epochs"):
        TensorBoardFigures(every_n_epochs=0)
    with pytest.raises(ValueError, match="max_stars"):
        TensorBoardFigures(max_stars=1)


def test_sample_uses_training_rows_without_validation_and_stays_fixed():
    datamodule = StellarCatalogDataModule(catalog=simulate_field("m4", n_stars=600, seed=2), val_fraction=0.0)
    datamodule.setup("fit")
    callback = TensorBoardFigures(max_stars=50)
    first = callback.sample(datamodule, torch.device("cpu"))
    again = callback.sample(datamodule, torch.device("cpu"))
    assert first.scaled.shape == (50, 5) and torch.equal(first.scaled, again.scaled)
    assert len(first.catalog) == 50 and first.truth is not None
    # the physical features are those of the catalogue rows drawn
    pmra = first.features[:, first.feature_names.index("pmra")]
    np.testing.assert_allclose(pmra, first.catalog["pmra"].to_numpy(), rtol=1e-4, atol=1e-4)


def test_a_model_without_a_latent_space_gets_its_figures_at_its_one_epoch(tmp_path):
    """model=xd fits in one pass: its views are drawn then, scored with the errors, without a latent space."""
    overrides = ["model=xd", "data.simulate.n_stars=3000", "trainer.enable_progress_bar=false"]
    overrides.append(f"callbacks.tensorboard_figures.max_stars={MAX_STARS}")
    cfg = compose_config("train", overrides, tmp_path)
    result = pipeline.train(cfg)
    events = _events(tmp_path / "tensorboard")
    images = set(events.Tags()["images"])
    assert {f"figures/{name}" for name in ("proper_motions", "sky", "cmd", "reliability")} <= images
    assert "figures/latent_space" not in images and not (tmp_path / "tensorboard" / "projector_config.pbtxt").exists()
    # the member probabilities drawn are those predict reports: each star scored with its own errors
    (callback,) = [c for c in pipeline.build_trainer(cfg).callbacks if isinstance(c, TensorBoardFigures)]
    sample = callback.sample(result.datamodule, torch.device("cpu"))
    stars = result.datamodule.star_data(sample.split).subset(sample.rows)
    view = callback.view(result.module, sample.scaled, stars)
    expected = result.module.proba_with_errors(sample.scaled, stars)[:, 0].numpy()
    np.testing.assert_allclose(view.member_prob, expected, rtol=1e-5, atol=1e-6)
    histogram = events.Histograms("assignments/prob_0")[0].histogram_value
    assert histogram.num == len(sample.rows) and histogram.sum == pytest.approx(float(expected.sum()), rel=1e-4)


def test_the_views_draw_without_a_layout_engine_and_nothing_falls_off_their_canvas():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from grasp_dl.figures.tensorboard import StarSample, StarView

    rng = np.random.default_rng(0)
    n = 300
    pm = rng.normal(-40.0, 30.0, size=(n, 2))  # wide tick labels: three digits and a sign
    sky = rng.normal(0.0, 0.3, size=(n, 2))
    catalog = pd.DataFrame({"bp_rp": rng.normal(1.0, 0.5, n), "phot_g_mean_mag": rng.normal(17.0, 2.0, n)})
    sample = StarSample(None, np.hstack([sky, pm]), ["xi", "eta", "pmra", "pmdec"], catalog, None)
    prob = rng.uniform(size=n)
    for view in (StarView(rng.normal(size=(n, 4)), np.stack([prob, 1 - prob], 1), 0), StarView(None, None, None)):
        figures = TensorBoardFigures.make_figures(sample, view)
        assert {"proper_motions", "sky", "cmd"} <= set(figures)
        for tag, fig in figures.items():
            assert fig.get_layout_engine() is None, tag  # constrained layout is half of the drawing time
            renderer = FigureCanvasAgg(fig).get_renderer()
            drawn = fig.get_tightbbox(renderer)  # inches: every label, tick and the colour bar
            width, height = fig.get_size_inches()
            assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width and drawn.y1 <= height, (tag, drawn)
