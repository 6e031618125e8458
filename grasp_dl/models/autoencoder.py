"""AutoencoderModule: the pretraining phase (reconstruction loss) that later phases start from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from grasp_dl.engine.block_training import BlockTraining
from grasp_dl.engine.epoch_means import EpochMeanLogging
from grasp_dl.models.networks import StellarAutoencoder, network_args
from grasp_dl.models.optim import DEFAULT_OPTIMIZER, build_optimizers, plain_config


class AutoencoderModule(BlockTraining, EpochMeanLogging, L.LightningModule):
    """Train a :class:`StellarAutoencoder` to reconstruct standardised star features (MSE).

    ``preprocessing`` is the data module's ``preprocessing_state()``: feature names, centre
    and fitted scaler, stored with the weights so a checkpoint alone can prepare a new
    catalogue. ``optimizer``/``scheduler`` are ``_partial_`` configs, kept as plain dicts.

    Parameters
    ----------
    input_dim : int
        Features per star.
    hidden_dims : sequence of int
        Hidden layer sizes.
    latent_dim : int
        Size of the latent space.
    dropout : float
        Dropout probability in [0, 1).
    batch_norm : bool
        Batch normalisation between hidden layers.
    optimizer, scheduler : mapping or None
        ``_partial_`` configs (``optimizer`` None: Adam, lr 1e-3; ``scheduler`` None: none).
    preprocessing : mapping or None
        The data module's ``preprocessing_state()``.

    Raises
    ------
    ConfigError
        For a non-positive layer size or a dropout outside [0, 1).
    """

    scheduler_monitor = "val/loss"

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "input_dim": int(input_dim),
                "hidden_dims": [int(h) for h in hidden_dims],
                "latent_dim": int(latent_dim),
                "dropout": float(dropout),
                "batch_norm": bool(batch_norm),
                "optimizer": plain_config(optimizer) or dict(DEFAULT_OPTIMIZER),
                "scheduler": plain_config(scheduler),
                "preprocessing": plain_config(preprocessing),
            }
        )
        self.net = StellarAutoencoder(
            self.hparams.input_dim,
            self.hparams.hidden_dims,
            self.hparams.latent_dim,
            self.hparams.dropout,
            self.hparams.batch_norm,
        )

    def network_args(self) -> dict[str, Any]:
        """The network's shape (see :func:`~grasp_dl.models.networks.network_args`)."""
        return network_args(self.hparams)

    def forward(self, x: Tensor) -> Tensor:
        """Latent points (n, latent_dim) of standardised features ``x``."""
        return self.net.encode(x)

    def _reconstruction_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        reconstruction, _ = self.net(x)
        return F.mse_loss(reconstruction, x)

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """Mean squared reconstruction error of a mini-batch (logged as the epoch mean ``train/loss``)."""
        loss = self._reconstruction_loss(batch)
        self.log_epoch_mean("train/loss", loss, len(batch[0]), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val/loss``, the reconstruction error (the autoencoder's monitored metric)."""
        loss = self._reconstruction_loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Latent points of a batch."""
        return self.net.encode(batch[0])

    def configure_optimizers(self) -> Any:
        """The optimiser (and scheduler) of the ``optimizer``/``scheduler`` configs."""
        return build_optimizers(self.parameters(), self.hparams.optimizer, self.hparams.scheduler)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Latent points (n, latent_dim) of standardised features ``x``, in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        try:
            return self.net.encode(x.to(self.device))
        finally:
            self.train(was_training)
