"""The diagnostic figure written beside predictions: is the result a cluster, at a glance?

Four panels from the stars of a prediction (a bounded random sample of them for a streamed
catalogue): proper motions, sky and colour-magnitude diagram coloured by ``member_prob``, and the
radial density profile of the members against the other stars, with the plausibility verdict
(:mod:`grasp_dl.membership.guards`) in the title.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from grasp_dl.data.sky import gnomonic_project
from grasp_dl.membership.summary import ClusterSummary

#: Stars drawn at most (a random subset of the sample beyond this, so the figure stays quick and small).
MAX_PLOTTED = 50_000


def _plotting() -> Any:
    from grasp_dl.figures import plotting

    return plotting


def _profile_panel(ax: Any, summary: ClusterSummary) -> None:
    """Members against the other stars per unit area; without a cluster, the rejected group's stars."""
    profile = (summary.diagnostics or {}).get("radial_profile")
    if not profile:
        ax.text(0.5, 0.5, "no positions: no radial profile", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    edges = np.asarray(profile["edges_arcmin"])
    mid = 0.5 * (edges[1:] + edges[:-1])
    members = "members" if summary.found else "rejected group (p > 0.5)"
    for key, label, style in (
        ("member_density_per_arcmin2", members, "o-"),
        ("other_density_per_arcmin2", "other stars", "s--"),
    ):
        density = np.asarray(profile[key], float)
        shown = density > 0
        if shown.any():
            ax.plot(mid[shown], density[shown], style, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="radius (arcmin)", ylabel="stars per arcmin$^2$", title="radial profile")
    ax.legend(fontsize="small")


def diagnostic_figure(stars: pd.DataFrame, summary: ClusterSummary, center: Sequence[float] | None = None) -> Figure:
    """Proper motions, sky, CMD (coloured by member_prob) and the radial profile of a prediction.

    Parameters
    ----------
    stars : pandas.DataFrame
        Scored stars: ``member_prob`` and whichever of ``ra, dec, pmra, pmdec, phot_g_mean_mag,
        bp_rp`` (or BP and RP magnitudes) exist; panels without their columns say so.
    summary : ClusterSummary
        The prediction summary (``cluster_found``, ``cluster_reason``, ``diagnostics``).
    center : sequence of float, optional
        [ra, dec]: the sky panel shows tangent-plane offsets around it, else ra/dec.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plotting = _plotting()
    if len(stars) > MAX_PLOTTED:
        stars = stars.sample(MAX_PLOTTED, random_state=0)
    prob = stars["member_prob"].to_numpy(float)
    columns = set(stars.columns)
    fig = Figure(figsize=(10, 8.6), layout="constrained")
    (ax_pm, ax_sky), (ax_cmd, ax_prof) = fig.subplots(2, 2)

    def missing(ax: Any, what: str) -> None:
        ax.text(0.5, 0.5, f"no {what} in the catalogue", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()

    if {"pmra", "pmdec"} <= columns:
        plotting.plot_proper_motions(stars["pmra"], stars["pmdec"], prob, ax=ax_pm)
    else:
        missing(ax_pm, "proper motions")
    if {"ra", "dec"} <= columns:
        ra, dec = stars["ra"].to_numpy(float), stars["dec"].to_numpy(float)
        if center is not None:
            xi, eta = gnomonic_project(ra, dec, float(center[0]), float(center[1]))
            plotting.plot_sky(xi, eta, prob, ax=ax_sky)
        else:
            plotting.plot_sky(ra, dec, prob, frame="radec", ax=ax_sky)
    else:
        missing(ax_sky, "positions")
    color = plotting.catalog_color(stars)
    if color is not None and "phot_g_mean_mag" in columns:
        plotting.plot_cmd(color, stars["phot_g_mean_mag"], prob, ax=ax_cmd)
    else:
        missing(ax_cmd, "G magnitude and BP-RP colour")
    _profile_panel(ax_prof, summary)
    found = summary.found
    head = f"cluster: {summary.n_members} members" if found else "NO CLUSTER FOUND (members set to 0)"
    reason = summary.cluster_reason or ""
    text = head + ("\n" + textwrap.fill(reason, 120) if reason else "")
    fig.suptitle(text, fontsize="medium", color="black" if found else "firebrick")
    return fig


def write_diagnostic_figure(
    stars: pd.DataFrame, summary: ClusterSummary, path: str | Path, center: Sequence[float] | None = None
) -> Path:
    """Save :func:`diagnostic_figure` as a PNG at ``path``.

    Parameters
    ----------
    stars, summary, center
        As :func:`diagnostic_figure`.
    path : str or pathlib.Path
        Where the PNG goes (``<predictions stem>.png`` beside the summary).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    diagnostic_figure(stars, summary, center).savefig(path, dpi=110)
    return path
