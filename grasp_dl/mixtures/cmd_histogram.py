"""Each mixture component's density in the colour-magnitude diagram: a smoothed weighted histogram.

A cluster's members lie on one narrow sequence of the diagram (magnitude, colour), the field
spreads over it, so a per-component density there separates stars the astrometry cannot. The
density is a histogram of the stars weighted by their memberships, smoothed and floored so a
star in an empty bin is unlikely rather than impossible. ``ClusterFieldMixture(photometry=True)``
re-estimates it at every M-step from per-bin membership sums (which add over batches and
processes like the E-step's other statistics) and adds its log-density to the E-step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

#: Bins of the histogram (magnitude, colour) and its Gaussian smoothing, in bins.
CMD_BINS = (40, 40)
CMD_SMOOTH = 1.0
#: Share of the mean bin count added to every bin after smoothing.
FLOOR = 1e-3
#: Percentiles of the stars' magnitudes and colours that bound the histogram.
RANGE_PERCENTILES = (0.5, 99.5)


class CmdHistogram:
    """Per-component smoothed histograms over fixed colour-magnitude bins.

    Parameters
    ----------
    edges : sequence of two arrays
        Bin edges of the magnitude and the colour (``CMD_BINS[d] + 1`` each).
    """

    def __init__(self, edges: Sequence[np.ndarray]) -> None:
        self.edges = [np.asarray(e, float) for e in edges]
        if [len(e) - 1 for e in self.edges] != list(CMD_BINS):
            raise ValueError(f"a colour-magnitude histogram needs {CMD_BINS} bins, got edges of {len(edges)} axes")
        #: log-density of each component in each bin, (k, n_bins); None before a fit
        self.log_density_: np.ndarray | None = None

    @classmethod
    def spanning(cls, cmd: np.ndarray) -> CmdHistogram:
        """Bins over the central 99 % of the stars' magnitudes and colours.

        Parameters
        ----------
        cmd : numpy.ndarray
            (n, 2) magnitude and colour; rows with a NaN are ignored.

        Returns
        -------
        CmdHistogram

        Raises
        ------
        ValueError
            If fewer than two stars have both values.
        """
        cmd = np.asarray(cmd, float)
        ok = np.isfinite(cmd).all(axis=1)
        if ok.sum() < 2:
            raise ValueError(
                f"{int(ok.sum())} stars have a magnitude and a colour: photometry needs phot_g_mean_mag and bp_rp "
                "for the stars (or switch photometry off)"
            )
        lo, hi = np.percentile(cmd[ok], RANGE_PERCENTILES, axis=0)
        return cls([np.linspace(lo[d], hi[d], CMD_BINS[d] + 1) for d in range(2)])

    @property
    def n_bins(self) -> int:
        """Bins of one component's histogram."""
        return CMD_BINS[0] * CMD_BINS[1]

    def bin_index(self, cmd: np.ndarray) -> np.ndarray:
        """Each star's flat bin (stars outside the range go to the edge bins), -1 without photometry.

        Parameters
        ----------
        cmd : numpy.ndarray
            (n, 2) magnitude and colour.

        Returns
        -------
        numpy.ndarray
            (n,) int64.
        """
        cmd = np.asarray(cmd, float)
        ok = np.isfinite(cmd).all(axis=1)
        index = [
            np.clip(np.searchsorted(self.edges[d], np.nan_to_num(cmd[:, d]), side="right") - 1, 0, CMD_BINS[d] - 1)
            for d in range(2)
        ]
        return np.where(ok, index[0] * CMD_BINS[1] + index[1], -1).astype(np.int64)

    def fit(self, cmd: np.ndarray, weights: np.ndarray) -> CmdHistogram:
        """Each component's histogram from the stars weighted by their memberships; returns self.

        Parameters
        ----------
        cmd : numpy.ndarray
            (n, 2) magnitude and colour.
        weights : numpy.ndarray
            (n, k) memberships.

        Returns
        -------
        CmdHistogram
        """
        index = torch.as_tensor(self.bin_index(cmd))
        return self.fit_counts(self.counts(index, torch.as_tensor(np.asarray(weights, float))).numpy())

    def counts(self, index: Tensor, weights: Tensor) -> Tensor:
        """Summed memberships per component and bin, (k, n_bins): what :meth:`fit_counts` needs.

        Parameters
        ----------
        index : Tensor
            (n,) flat bins (:meth:`bin_index`); stars at -1 add nothing.
        weights : Tensor
            (n, k) memberships.

        Returns
        -------
        Tensor
            float64 on ``weights``' device; sums of batches add up to the whole's.
        """
        ok = index >= 0
        out = torch.zeros((weights.shape[1], self.n_bins), dtype=torch.float64, device=weights.device)
        return out.index_add_(1, index[ok], weights[ok].T.to(torch.float64))

    def fit_counts(self, counts: np.ndarray) -> CmdHistogram:
        """The smoothed, floored and normalised log-densities of per-bin membership sums; returns self.

        Parameters
        ----------
        counts : numpy.ndarray
            (k, n_bins) summed memberships (:meth:`counts`).

        Returns
        -------
        CmdHistogram
        """
        area = np.outer(np.diff(self.edges[0]), np.diff(self.edges[1]))
        densities = []
        for row in np.asarray(counts, float):
            raw = row.reshape(CMD_BINS)
            h = gaussian_filter(raw, CMD_SMOOTH, mode="constant") + FLOOR * raw.sum() / raw.size + 1e-12
            densities.append(np.log(h / (h * area).sum()).ravel())
        self.log_density_ = np.stack(densities)
        return self

    def log_density(self, cmd: np.ndarray) -> np.ndarray:
        """Each star's log-density under each component, (n, k); 0 for a star without photometry.

        Parameters
        ----------
        cmd : numpy.ndarray
            (n, 2) magnitude and colour.

        Returns
        -------
        numpy.ndarray
        """
        return self.log_density_of_bins(torch.as_tensor(self.bin_index(cmd))).numpy()

    def log_density_of_bins(self, index: Tensor) -> Tensor:
        """:meth:`log_density` of stars given by their flat bins, (n, k) float64 on ``index``'s device."""
        if self.log_density_ is None:
            raise RuntimeError("the colour-magnitude histogram is not fitted yet: call fit() first")
        table = torch.as_tensor(self.log_density_, dtype=torch.float64, device=index.device)
        values = table[:, index.clamp(min=0)].T
        return torch.where((index >= 0)[:, None], values, torch.zeros_like(values))

    def n_parameters(self, n_components: int) -> int:
        """Free parameters of ``n_components`` normalised histograms."""
        return int(n_components) * (self.n_bins - 1)

    def state_dict(self) -> dict[str, Any]:
        """The edges and the fitted log-densities as plain lists (for checkpoints and JSON)."""
        return {
            "edges": [e.tolist() for e in self.edges],
            "log_density": None if self.log_density_ is None else self.log_density_.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CmdHistogram:
        """The histogram of a :meth:`state_dict`."""
        histogram = cls(state["edges"])
        if state.get("log_density") is not None:
            histogram.log_density_ = np.asarray(state["log_density"], float)
        return histogram


__all__ = ["CMD_BINS", "CmdHistogram"]
