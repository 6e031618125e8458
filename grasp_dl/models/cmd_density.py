"""Neural densities of the colour-magnitude diagram (CMD), conditioned on the position in the cone.

:class:`CMDDensityEnsemble` holds several independent mixture density networks (Bishop 1994): each
maps a star's standardised sky position (xi, eta) to a K-component 2-D Gaussian mixture over its
standardised (G, BP-RP). Conditioning on the position lets a sequence move across the cone
(differential reddening); without it each network is a plain Gaussian mixture. The members are
batched in one set of tensors, so an ensemble costs one forward pass; their parameters are
disjoint, so Adam steps on their summed losses are each member's own steps.

Photometric errors are convolved analytically: each star's error variance is added to every
component's covariance, so a faint star's density is the sequence blurred by its own errors.
Catalogues rarely carry photometric errors, so :func:`gaia_photometric_variance` gives Gaia DR3's
as a function of G.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

#: Outputs per mixture component: logit, two means, two log-widths, one correlation.
PER_COMPONENT = 6
#: Floor of every component's intrinsic width (mag): no sequence is narrower than Gaia's calibration.
WIDTH_FLOOR = 0.01
#: Largest correlation of a component's two axes (keeps its covariance well conditioned).
MAX_CORRELATION = 0.95


def gaia_photometric_variance(g: np.ndarray | Tensor) -> tuple[np.ndarray | Tensor, np.ndarray | Tensor]:
    """Gaia DR3 error variances of G and of BP-RP at magnitude G (mag^2).

    sigma(G) rises from a 0.8 mmag floor to about 3 mmag at G = 20 and sigma(BP-RP) from about
    5 mmag below G = 17 to 0.1 mag at G = 20.5 (Riello et al. 2021, their Fig. 14: the BP and RP
    fluxes are background-limited at the faint end, so the errors grow as 10^(0.4 G)).

    Parameters
    ----------
    g : numpy.ndarray or Tensor
        G magnitudes.

    Returns
    -------
    var_g, var_colour : numpy.ndarray or Tensor
        Error variances of G and of BP-RP, same type and shape as ``g``.
    """
    power = 10.0 ** (0.8 * (g - 20.0))
    var_g = 0.0008**2 + 0.003**2 * power
    var_colour = 0.005**2 + 0.1**2 * 10.0 ** (0.8 * (g - 20.5))
    return var_g, var_colour


class CMDDensityEnsemble(nn.Module):
    """An ensemble of mixture density networks over a 2-D point given a context (the position).

    Parameters
    ----------
    n_members : int
        Independent networks.
    n_components : int
        Gaussian components of each member's mixture.
    hidden : int
        Width of the two hidden layers.
    context_dim : int
        Size of the context (2: the standardised position; its values are ignored, i.e. zero,
        without position conditioning).
    width_floor : sequence of two floats
        Smallest intrinsic width of a component along each axis, in the standardised units of the points.
    """

    def __init__(
        self,
        n_members: int,
        n_components: int = 8,
        hidden: int = 16,
        context_dim: int = 2,
        width_floor: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__()
        self.n_members, self.n_components = int(n_members), int(n_components)
        self.register_buffer("width_floor", torch.tensor([float(w) for w in width_floor]))
        sizes = [int(context_dim), int(hidden), int(hidden), self.n_components * PER_COMPONENT]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.weights.append(nn.Parameter(torch.randn(self.n_members, fan_in, fan_out) / math.sqrt(max(fan_in, 1))))
            self.biases.append(nn.Parameter(torch.zeros(self.n_members, fan_out)))
        with torch.no_grad():  # the position changes a member's mixture slowly at the start
            self.weights[-1].mul_(0.1)

    @torch.no_grad()
    def start_at(self, points: Tensor, generator: torch.Generator) -> None:
        """Centre every member's components on distinct random ``points`` (n, 2), unit-ish widths.

        Parameters
        ----------
        points : Tensor
            Standardised points to start from (finite rows).
        generator : torch.Generator
            Seeded, so every process starts alike.
        """
        k = self.n_components
        bias = self.biases[-1].view(self.n_members, k, PER_COMPONENT)
        for m in range(self.n_members):
            rows = torch.randperm(len(points), generator=generator)[:k]
            chosen = points[rows.to(points.device)].to(bias.dtype)
            bias[m, : len(chosen), 1:3] = chosen
            bias[m, :, 0] = 0.0
            bias[m, :, 3:5] = math.log(0.3)
            bias[m, :, 5] = 0.0

    def mixtures(self, context: Tensor, members: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every member's mixture at each context (the first ``members`` members only, when given).

        Parameters
        ----------
        context : Tensor
            (n, context_dim).
        members : int, optional
            Evaluate members 0..members-1 only (None: all).

        Returns
        -------
        log_weights : Tensor
            (members, n, K), normalised over K.
        means : Tensor
            (members, n, K, 2).
        widths : Tensor
            (members, n, K, 2) intrinsic standard deviations (at least ``width_floor``).
        correlation : Tensor
            (members, n, K).
        """
        e = self.n_members if members is None else int(members)
        h = context.to(self.weights[0].dtype).unsqueeze(0).expand(e, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b[:e].unsqueeze(1), h, w[:e])
            if i < last:
                h = torch.tanh(h)
        out = h.view(e, len(context), self.n_components, PER_COMPONENT)
        log_weights = torch.log_softmax(out[..., 0], -1)
        widths = self.width_floor + torch.exp(out[..., 3:5].clamp(-7.0, 3.0))
        return log_weights, out[..., 1:3], widths, MAX_CORRELATION * torch.tanh(out[..., 5])

    def log_prob(
        self,
        points: Tensor,
        context: Tensor,
        noise_var: Tensor | None = None,
        members: int | None = None,
        conditional: bool = False,
    ) -> Tensor:
        """log density of each point under every member (the first ``members``), its error variance convolved in.

        Parameters
        ----------
        points : Tensor
            (n, 2) finite points.
        context : Tensor
            (n, context_dim).
        noise_var : Tensor, optional
            (n, 2) error variances of the points' two coordinates (same units), added to every
            component's covariance; None: exact points.
        members : int, optional
            Evaluate members 0..members-1 only (None: all).
        conditional : bool, default False
            The density of the second coordinate given the first (the joint density over the
            mixture's marginal of the first coordinate), instead of the joint density.

        Returns
        -------
        Tensor
            (members, n).
        """
        log_w, mean, width, rho = self.mixtures(context, members)
        x = points.to(mean.dtype)[None, :, None, :]
        a, c = width[..., 0] ** 2, width[..., 1] ** 2
        b = rho * width[..., 0] * width[..., 1]
        if noise_var is not None:
            nv = noise_var.to(mean.dtype)[None, :, None, :]
            a, c = a + nv[..., 0], c + nv[..., 1]
        det = a * c - b * b
        d0, d1 = x[..., 0] - mean[..., 0], x[..., 1] - mean[..., 1]
        maha = (c * d0 * d0 - 2.0 * b * d0 * d1 + a * d1 * d1) / det
        log_n = -0.5 * (maha + torch.log(det)) - math.log(2.0 * math.pi)
        joint = torch.logsumexp(log_w + log_n, -1)
        if not conditional:
            return joint
        marginal = -0.5 * (d0 * d0 / a + torch.log(a)) - 0.5 * math.log(2.0 * math.pi)
        return joint - torch.logsumexp(log_w + marginal, -1)


__all__ = ["CMDDensityEnsemble", "gaia_photometric_variance"]
