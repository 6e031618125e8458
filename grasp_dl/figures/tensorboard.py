"""TensorBoard views of a training run: figures, the latent embedding and the soft assignments.

:class:`TensorBoardFigures` is a Lightning callback (``conf/callbacks/tensorboard_figures.yaml``):
every ``every_n_epochs`` validation ends and at the last epoch it takes a fixed random sample of
at most ``max_stars`` validation (else training) stars and writes to every TensorBoard logger

* images: the latent space (PCA), proper motions, sky and colour-magnitude diagram coloured by
  member probability, and the reliability diagram when there is a ``truth`` column;
* the latent points for the projector (``add_embedding``), at each phase's last epoch only;
* histograms of the soft assignments (each group's probability, the largest, the entropy).

It runs on global rank zero only and does nothing without a TensorBoard logger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grasp_dl.figures import plotting
from grasp_dl.membership.rules import entropy
from grasp_dl.runtime.capabilities import ErrorAwareScoring, GroupProbabilities, HasLatentSpace, ViewsAtLastEpochOnly
from grasp_dl.runtime.stage_timer import mark

log = logging.getLogger(__name__)

#: Catalogue value of the ``truth`` column that marks cluster members (as the simulator writes it).
MEMBER_TRUTH = "cluster"


@dataclass
class StarSample:
    """The stars a view is drawn from: standardised and physical features, catalogue rows, truth."""

    scaled: torch.Tensor
    features: np.ndarray
    feature_names: list[str]
    catalog: Any  # the catalogue rows of these stars (DataFrame) or None
    truth: np.ndarray | None
    split: str = "train"  # the datamodule split the stars come from
    rows: np.ndarray | None = None  # their positions in that split


@dataclass
class StarView:
    """What the model makes of a sample: latent points, group probabilities and the cluster's group."""

    latent: np.ndarray | None  # None for a model without a latent space (model=xd)
    prob: np.ndarray | None
    cluster_group: int | None

    @property
    def labels(self) -> np.ndarray | None:
        """Most probable group of each star (None before there are groups)."""
        return None if self.prob is None else self.prob.argmax(axis=1)

    @property
    def member_prob(self) -> np.ndarray | None:
        """Probability of the cluster's group (None until it is decided)."""
        return None if self.prob is None or self.cluster_group is None else self.prob[:, self.cluster_group]


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a Figure to an RGB uint8 array (height x width x 3) without pyplot."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def fixed_margin_axes(figsize: tuple[float, float] = (5.5, 4.5)) -> Any:
    """One Axes on a Figure with fixed margins, for the views TensorBoard shows.

    Constrained layout takes half of a small figure's drawing time; these views are redrawn during
    training, where that time is the user's wait.
    """
    width, height = figsize
    fig = Figure(figsize=figsize)  # margins in inches: tick labels and axis titles, the colour bar's label
    fig.subplots_adjust(left=0.8 / width, right=1.0 - 0.45 / width, bottom=0.55 / height, top=1.0 - 0.35 / height)
    return fig.subplots()


def _tensorboard_writers(trainer: L.Trainer) -> list[Any]:
    """The SummaryWriter of every TensorBoard logger of the trainer."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class TensorBoardFigures(L.Callback):
    """Figures, the latent embedding and soft-assignment histograms in TensorBoard every N epochs.

    ``every_n_epochs`` keeps it cheap (drawing is slow next to an epoch); ``max_stars`` bounds the
    sample (the projector and the figures); ``embedding``, ``histograms`` and ``figures`` switch
    each view off.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        max_stars: int = 2000,
        embedding: bool = True,
        histograms: bool = True,
        figures: bool = True,
        seed: int = 0,
    ) -> None:
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs}")
        if int(max_stars) < 2:
            raise ValueError(f"max_stars must be at least 2, got {max_stars}")
        self.every_n_epochs = int(every_n_epochs)
        self.max_stars = int(max_stars)
        self.embedding = bool(embedding)
        self.histograms = bool(histograms)
        self.figures = bool(figures)
        self.seed = int(seed)
        self._last_logged_step: int | None = None

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._maybe_log(trainer, pl_module, then="validation")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs without validation rows (data.val_fraction=0) get their views here instead.
        self._maybe_log(trainer, pl_module, then="checkpoints, early stopping, epoch end")

    def _due(self, trainer: L.Trainer, pl_module: L.LightningModule | None = None) -> bool:
        """Whether this epoch is one to log, and not logged yet (validation and epoch end both call).

        Every ``every_n_epochs``-th epoch, and the last one (max_epochs reached, or the run stops:
        early stopping, or convergence), so every run ends with views. A module whose epochs are
        many cheap iterations (``views_at_last_epoch_only``, e.g. model=xd's EM) gets the last only.
        """
        if self._last_logged_step == trainer.global_step:
            return False
        if isinstance(pl_module, ViewsAtLastEpochOnly) and pl_module.views_at_last_epoch_only:
            return self._last(trainer)
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or self._last(trainer)

    @staticmethod
    def _last(trainer: L.Trainer) -> bool:
        """Whether this is the phase's last epoch (max_epochs reached, or the run stops)."""
        epoch = trainer.current_epoch + 1
        max_epochs = getattr(trainer, "max_epochs", None)
        return bool(getattr(trainer, "should_stop", False)) or (max_epochs is not None and 0 < max_epochs <= epoch)

    def _maybe_log(self, trainer: L.Trainer, pl_module: L.LightningModule, then: str) -> None:
        """Draw and write the views when due; ``then`` names the loop phase that resumes (stage timing)."""
        if not trainer.is_global_zero or not self._due(trainer, pl_module):
            return
        writers = _tensorboard_writers(trainer)
        datamodule = getattr(trainer, "datamodule", None)
        if not writers or datamodule is None or not hasattr(datamodule, "split_tensor"):
            return
        module_name = type(pl_module).__name__
        mark(f"{module_name}: TensorBoard figures")
        self._last_logged_step = trainer.global_step
        sample = self.sample(datamodule, pl_module.device)
        stars = None
        error_aware = isinstance(pl_module, ErrorAwareScoring) and pl_module.scores_with_errors
        if error_aware and hasattr(datamodule, "star_data"):
            needs = pl_module.catalog_needs() if hasattr(pl_module, "catalog_needs") else None
            photometry = bool(getattr(needs, "photometry", False))  # model=multimodal scores the CMD too
            stars = datamodule.star_data(sample.split, photometry).subset(sample.rows)  # scored as predict scores them
        view = self.view(pl_module, sample.scaled, stars)
        for writer in writers:
            self.write(writer, sample, view, trainer.global_step, embedding=self._last(trainer))
            writer.flush()
        mark(f"{module_name}: {then}")

    # ------------------------------------------------------------------ what is drawn
    def sample(self, datamodule: Any, device: torch.device) -> StarSample:
        """The same random stars every time: validation rows, or training rows without validation."""
        split = "val" if len(datamodule.val_index) else "train"
        index = datamodule.val_index if split == "val" else datamodule.train_index
        rows = np.arange(len(index))
        if len(rows) > self.max_stars:
            rows = np.sort(np.random.default_rng(self.seed).choice(len(rows), self.max_stars, replace=False))
        scaled = datamodule.split_tensor(split, device)[torch.as_tensor(rows, device=device)]
        features = datamodule.scaler.inverse_transform(scaled.detach().cpu().numpy())
        catalog = None
        truth = None
        table = getattr(datamodule, "table", None)
        if table is not None:
            catalog = table.iloc[datamodule.usable_rows()[index.numpy()[rows]]].reset_index(drop=True)
            if "truth" in catalog.columns:
                truth = catalog["truth"].astype(str).to_numpy()
        return StarSample(scaled, features, list(datamodule.feature_names), catalog, truth, split, rows)

    @staticmethod
    @torch.no_grad()
    def view(pl_module: L.LightningModule, scaled: torch.Tensor, stars: Any = None) -> StarView:
        """Latent points (eval mode) and, for a clustering module, its group probabilities.

        ``stars`` (the same stars' astrometry and errors) scores an error-aware model (model=xd, a
        hard-field model pooled with its error-aware start) as ``grasp-dl predict`` does.
        """
        latent = pl_module.embed(scaled).float().cpu().numpy() if isinstance(pl_module, HasLatentSpace) else None
        if not isinstance(pl_module, GroupProbabilities):
            return StarView(latent, None, None)
        if stars is not None:
            prob = torch.as_tensor(pl_module.proba_with_errors(scaled, stars)).float().cpu().numpy()
        else:
            prob = pl_module.predict_proba(scaled).float().cpu().numpy()
        group = int(pl_module.cluster_group)
        return StarView(latent, prob, group if 0 <= group < prob.shape[1] else None)

    def write(self, writer: Any, sample: StarSample, view: StarView, step: int, embedding: bool = True) -> None:
        """Every enabled view of ``sample`` to one SummaryWriter.

        The projector embedding is a folder of text files per call, so it is written only where
        ``embedding`` says (the phase's last view): the log then grows with the figures and
        histograms alone, not by a folder every few epochs.
        """
        if self.figures:
            for tag, fig in self.make_figures(sample, view).items():
                writer.add_image(f"figures/{tag}", figure_to_array(fig), step, dataformats="HWC")
        if self.histograms and view.prob is not None:
            for j in range(view.prob.shape[1]):
                writer.add_histogram(f"assignments/prob_{j}", view.prob[:, j], step)
            writer.add_histogram("assignments/max_prob", view.prob.max(axis=1), step)
            writer.add_histogram("assignments/entropy", entropy(view.prob), step)
        if self.embedding and embedding and view.latent is not None:
            metadata, header = self.metadata(sample, view)
            writer.add_embedding(view.latent, metadata=metadata, metadata_header=header, global_step=step, tag="latent")

    @staticmethod
    def metadata(sample: StarSample, view: StarView) -> tuple[list[Any] | None, list[str] | None]:
        """Projector labels per star: group, member probability and truth, whichever are known."""
        columns: dict[str, list[str]] = {}
        if view.labels is not None:
            columns["group"] = [str(v) for v in view.labels]
        if view.member_prob is not None:
            columns["member_prob"] = [f"{v:.2f}" for v in view.member_prob]
        if sample.truth is not None:
            columns["truth"] = list(sample.truth)
        if not columns:
            return None, None
        if len(columns) == 1:
            return next(iter(columns.values())), None
        return [list(row) for row in zip(*columns.values(), strict=False)], list(columns)

    @staticmethod
    def make_figures(sample: StarSample, view: StarView) -> dict[str, Figure]:
        """The figures of a sample: latent space, and the panels its features or catalogue allow."""
        prob, labels = view.member_prob, view.labels
        colour_by = {"member_prob": prob} if prob is not None else {"labels": labels}
        figures = {}
        if view.latent is not None:
            figures["latent_space"] = plotting.plot_latent_space(
                view.latent, labels=labels, member_prob=prob, ax=fixed_margin_axes()
            )
        values = dict(zip(sample.feature_names, sample.features.T, strict=False))
        catalog = sample.catalog
        if "pmra" in values and "pmdec" in values:
            figures["proper_motions"] = plotting.plot_proper_motions(
                values["pmra"], values["pmdec"], **colour_by, ax=fixed_margin_axes()
            )
        if "xi" in values and "eta" in values:
            figures["sky"] = plotting.plot_sky(values["xi"], values["eta"], **colour_by, ax=fixed_margin_axes())
        if catalog is not None and "phot_g_mean_mag" in catalog.columns:
            color = plotting.catalog_color(catalog)
            if color is not None:
                figures["cmd"] = plotting.plot_cmd(
                    color, catalog["phot_g_mean_mag"], **colour_by, ax=fixed_margin_axes((4.5, 5.5))
                )
        if prob is not None and sample.truth is not None and (sample.truth == MEMBER_TRUTH).any():
            figures["reliability"] = plotting.reliability_diagram(prob, sample.truth == MEMBER_TRUTH)
        return figures


def read_scalars(log_dir: str | Path, phase: str) -> pd.DataFrame:
    """Scalars of one TensorBoard run directory as one row per epoch (columns phase, epoch, then tags).

    Lightning logs an ``epoch`` scalar at every step it logs metrics, which maps steps to epochs.
    Returns an empty table when the directory holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    empty = pd.DataFrame(columns=["phase", "epoch"])
    log_dir = Path(log_dir)
    if not any(log_dir.glob("events.out.tfevents.*")):
        return empty
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags().get("scalars", [])
    if "epoch" not in tags:
        return empty
    epoch_at = {event.step: int(event.value) for event in events.Scalars("epoch")}
    rows: dict[int, dict[str, float]] = {}
    for tag in tags:
        if tag == "epoch":
            continue
        for event in events.Scalars(tag):
            if event.step in epoch_at:
                rows.setdefault(epoch_at[event.step], {})[tag] = float(event.value)
    if not rows:
        return empty
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    frame.index.name = "epoch"
    frame = frame.reset_index()
    frame.insert(0, "phase", phase)
    return frame
