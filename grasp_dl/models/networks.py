"""Plain ``nn.Module`` networks shared by every training phase and usable bare in notebooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from grasp_dl.runtime.errors import ConfigError

#: The hyper-parameters that fix a network's shape (the keyword arguments of the networks here).
NETWORK_KEYS = ("input_dim", "hidden_dims", "latent_dim", "dropout", "batch_norm")


def network_args(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The network's shape out of a module's hyper-parameters.

    Parameters
    ----------
    hparams : mapping
        A module's hyper-parameters.

    Returns
    -------
    dict
        ``input_dim``, ``hidden_dims``, ``latent_dim``, ``dropout`` and ``batch_norm``: what builds
        a network these weights fit.
    """
    return {key: hparams[key] for key in NETWORK_KEYS}


def check_network_shape(input_dim: int, hidden_dims: Sequence[int], latent_dim: int, dropout: float = 0.0) -> None:
    """Raise if a network of this shape cannot be built.

    Parameters
    ----------
    input_dim : int
        Features per star.
    hidden_dims : sequence of int
        Hidden layer sizes.
    latent_dim : int
        Size of the latent space.
    dropout : float
        Dropout probability.

    Raises
    ------
    ConfigError
        When a layer size is not positive or the dropout is outside [0, 1).
    """
    if int(input_dim) < 1 or int(latent_dim) < 1 or any(int(h) < 1 for h in hidden_dims):
        raise ConfigError(
            f"layer sizes must be positive: input_dim={input_dim}, "
            f"hidden_dims={list(hidden_dims)}, latent_dim={latent_dim}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")


def mlp(
    sizes: Sequence[int], *, dropout: float = 0.0, batch_norm: bool = False, last_activation: bool = False
) -> nn.Sequential:
    """Linear layers through ``sizes`` with ReLU (plus optional batch norm and dropout) between.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first.
    dropout : float
        Dropout after each activation (0: none).
    batch_norm : bool
        Batch normalisation before each activation.
    last_activation : bool
        Whether the last layer gets an activation too.

    Returns
    -------
    torch.nn.Sequential
    """
    layers: list[nn.Module] = []
    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    for i, (n_in, n_out) in enumerate(pairs):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(pairs) - 1 or last_activation:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class StellarAutoencoder(nn.Module):
    """MLP encoder to a latent space and a mirrored decoder back to the features (the seed's shape).

    The latent layer and the output layer are linear: the latent space is what DEC clusters,
    and the reconstruction targets are standardised features of either sign.

    Parameters
    ----------
    input_dim : int
        Features per star.
    hidden_dims : sequence of int
        Hidden layer sizes of the encoder (mirrored in the decoder).
    latent_dim : int
        Size of the latent space.
    dropout : float
        Dropout probability in [0, 1).
    batch_norm : bool
        Batch normalisation between hidden layers.

    Raises
    ------
    ConfigError
        For a non-positive layer size or a dropout outside [0, 1).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dims: Sequence[int] = (64, 32, 16),
        latent_dim: int = 8,
        dropout: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        check_network_shape(input_dim, hidden_dims, latent_dim, dropout)
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        sizes = [input_dim, *hidden_dims, latent_dim]
        self.encoder = mlp(sizes, dropout=dropout, batch_norm=batch_norm)
        self.decoder = mlp(sizes[::-1], dropout=dropout, batch_norm=batch_norm)

    def encode(self, x: Tensor) -> Tensor:
        """Latent points (n, latent_dim) of standardised features ``x``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstructed standardised features (n, input_dim) of latent points ``z``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction and latent points of standardised features ``x``, as a tuple."""
        z = self.encode(x)
        return self.decode(z), z


@torch.no_grad()
def encode_in_chunks(encoder: nn.Module, x: Tensor, chunk_size: int = 65536) -> Tensor:
    """Encode a large tensor without holding every activation at once (eval mode by caller).

    Parameters
    ----------
    encoder : torch.nn.Module
        The encoder.
    x : Tensor
        Standardised features.
    chunk_size : int
        Rows per forward pass.

    Returns
    -------
    Tensor
    """
    return torch.cat([encoder(x[i : i + chunk_size]) for i in range(0, len(x), chunk_size)])


def compile_network(net: nn.Module) -> nn.Module:
    """``torch.compile`` every direct child of ``net`` in place and return ``net``.

    The phases call the encoder, decoder and heads separately, so each is compiled;
    ``nn.Module.compile`` keeps the parameter names, so checkpoints load with or without it.

    Parameters
    ----------
    net : torch.nn.Module
        A network of :mod:`grasp_dl.models.networks`.

    Returns
    -------
    torch.nn.Module
        ``net`` itself.
    """
    for child in net.children():
        child.compile()
    return net
