"""Figures for notebooks and reports: functions that return matplotlib Figures (never plt.show()).

Figures are built with :class:`matplotlib.figure.Figure` directly, not through pyplot, so they
work headless, in threads and in DDP ranks without touching a global backend; save them with
``fig.savefig(path)`` or log them with a TensorBoard ``add_figure``.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from grasp_dl.metrics import N_CALIBRATION_BINS, brier_score, expected_calibration_error, reliability_curve


def reliability_diagram(
    prob: Any, outcome: Any, n_bins: int = N_CALIBRATION_BINS, title: str = "member_prob calibration"
) -> Figure:
    """Observed member fraction against predicted member probability per bin, with bin counts below.

    A calibrated model lies on the diagonal; the Brier score and ECE are printed in the legend.
    """
    centers, observed, counts = reliability_curve(prob, outcome, n_bins)
    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    filled = counts > 0
    label = f"Brier {brier_score(prob, outcome):.4f}, ECE {expected_calibration_error(prob, outcome, n_bins):.4f}"
    top.plot(centers[filled], observed[filled], marker="o", color="C0", label=label)
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed fraction of members", title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centers, counts, width=1.0 / n_bins, color="C0", alpha=0.6, edgecolor="white")
    if counts.max(initial=0) > 0:
        bottom.set_yscale("log")
    bottom.set(xlabel="predicted member probability", ylabel="stars")
    return fig


# ----------------------------------------------------------------------------- catalogue and model figures
# Each function below draws on ``ax`` when one is given (to compose panels) and returns its Figure.
# (Imported here rather than at the top so this section stays separate from the one above.)
import numpy as np  # noqa: E402

from grasp_dl.runtime.errors import ConfigError  # noqa: E402

#: Colour map of membership probabilities; unscored stars (NaN) are drawn in grey beneath.
PROB_CMAP = "viridis"
UNSCORED_COLOR = "0.75"
#: t-SNE runs on one thread up to this many points (see _project).
TSNE_SINGLE_THREAD_MAX = 5000


def _figure_and_axes(ax: Any = None, figsize: tuple[float, float] = (5.5, 4.5)) -> tuple[Figure, Any]:
    """A new constrained-layout Figure with one Axes, or the Figure of the given Axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots()


def _marker_size(n: int) -> float:
    """Point size that keeps 100 stars visible and 10^6 stars from turning into a blot."""
    return float(np.clip(20_000.0 / max(n, 1), 0.3, 12.0))


def _robust_limits(values: np.ndarray, percentile: float = 0.5, margin: float = 0.05) -> tuple[float, float] | None:
    """Axis limits spanning the central 99% of the finite values (Gaia proper motions have long tails)."""
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    lo, hi = np.percentile(finite, [percentile, 100.0 - percentile])
    pad = margin * (hi - lo) if hi > lo else 1.0
    return float(lo - pad), float(hi + pad)


def _categories(labels: Any) -> tuple[np.ndarray, list[str]]:
    """Integer codes and printable names of any labels (ints, strings); -1 stays 'unscored'."""
    values = np.asarray(labels)
    names, codes = np.unique(values.astype(str) if values.dtype.kind == "O" else values, return_inverse=True)
    return codes.ravel(), [("unscored" if str(n) == "-1" else str(n)) for n in names]


def _scatter(ax: Any, x: Any, y: Any, member_prob: Any = None, labels: Any = None) -> None:
    """Stars coloured by membership probability, else by label, else in one colour."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    size = _marker_size(len(x))
    if member_prob is not None:
        prob = np.asarray(member_prob, dtype=float)
        unscored = ~np.isfinite(prob)
        if unscored.any():
            ax.scatter(x[unscored], y[unscored], s=size, c=UNSCORED_COLOR, lw=0, rasterized=True, label="unscored")
        order = np.flatnonzero(~unscored)[np.argsort(prob[~unscored], kind="stable")]  # members on top
        points = ax.scatter(
            x[order], y[order], s=size, c=prob[order], cmap=PROB_CMAP, vmin=0, vmax=1, lw=0, rasterized=True
        )
        ax.figure.colorbar(points, ax=ax, label="membership probability")
    elif labels is not None:
        codes, names = _categories(labels)
        for code, name in enumerate(names):
            chosen = codes == code
            color = UNSCORED_COLOR if name == "unscored" else f"C{code % 10}"
            ax.scatter(x[chosen], y[chosen], s=size, color=color, lw=0, rasterized=True, label=name)
        ax.legend(markerscale=max(1.0, 12.0 / size) ** 0.5, fontsize="small", loc="best")
    else:
        ax.scatter(x, y, s=size, color="C0", lw=0, rasterized=True)


def _project(latent: np.ndarray, method: str, random_state: int) -> tuple[np.ndarray, list[str]]:
    """Two-dimensional view of latent points by PCA or t-SNE, with axis names."""
    if latent.shape[1] == 1:
        return np.column_stack([latent[:, 0], np.zeros(len(latent))]), ["z0", ""]
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=random_state).fit(latent)
        share = 100.0 * pca.explained_variance_ratio_
        return pca.transform(latent), [f"PC1 ({share[0]:.0f}%)", f"PC2 ({share[1]:.0f}%)"]
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        perplexity = float(min(30.0, max(2.0, (len(latent) - 1) / 3.0)))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state)
        # Small samples on one thread: OpenMP spin-waits cost far more than the fit on a busy machine.
        with threadpool_limits(limits=1 if len(latent) <= TSNE_SINGLE_THREAD_MAX else None, user_api="openmp"):
            points = tsne.fit_transform(latent)
        return points, ["t-SNE 1", "t-SNE 2"]
    raise ConfigError(f"unknown projection method={method!r}: choose 'pca' or 'tsne'")


def plot_latent_space(
    latent: Any,
    labels: Any = None,
    *,
    member_prob: Any = None,
    method: str = "pca",
    max_points: int = 20_000,
    random_state: int = 0,
    title: str | None = None,
    ax: Any = None,
) -> Figure:
    """The latent points projected to 2-D (PCA by default, t-SNE with ``method='tsne'``), coloured by label.

    At most ``max_points`` random rows are drawn (t-SNE is slow beyond a few thousand).
    """
    z = np.asarray(latent, dtype=float)
    if z.ndim != 2 or len(z) < 2:
        raise ConfigError(f"latent must be 2-D with at least 2 rows (stars x latent dims), got shape {z.shape}")
    rows = np.arange(len(z))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(random_state).choice(len(rows), size=max_points, replace=False))
    points, axis_names = _project(z[rows], method, random_state)
    fig, ax = _figure_and_axes(ax)
    _scatter(
        ax,
        points[:, 0],
        points[:, 1],
        None if member_prob is None else np.asarray(member_prob, dtype=float)[rows],
        None if labels is None else np.asarray(labels)[rows],
    )
    ax.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title or f"latent space ({method.upper()})")
    return fig


def plot_proper_motions(
    pmra: Any, pmdec: Any, member_prob: Any = None, *, labels: Any = None, title: str = "proper motions", ax: Any = None
) -> Figure:
    """The vector-point diagram (pmra, pmdec), zoomed on the central 99% of stars."""
    fig, ax = _figure_and_axes(ax)
    pmra, pmdec = np.asarray(pmra, dtype=float), np.asarray(pmdec, dtype=float)
    _scatter(ax, pmra, pmdec, member_prob, labels)
    ax.set(xlim=_robust_limits(pmra), ylim=_robust_limits(pmdec), title=title)
    ax.set(xlabel=r"$\mu_{\alpha*}$ (mas/yr)", ylabel=r"$\mu_\delta$ (mas/yr)")
    return fig


def plot_sky(
    x: Any,
    y: Any,
    member_prob: Any = None,
    *,
    labels: Any = None,
    frame: str = "tangent",
    title: str = "sky",
    ax: Any = None,
) -> Figure:
    """Positions on the sky, east to the left: tangent-plane offsets xi/eta (``frame='tangent'``) or ra/dec."""
    if frame not in ("tangent", "radec"):
        raise ConfigError(f"unknown frame={frame!r}: choose 'tangent' (xi, eta) or 'radec'")
    fig, ax = _figure_and_axes(ax)
    _scatter(ax, x, y, member_prob, labels)
    names = (r"$\xi$ (deg)", r"$\eta$ (deg)") if frame == "tangent" else ("ra (deg)", "dec (deg)")
    ax.set(xlabel=names[0], ylabel=names[1], title=title)
    if frame == "tangent":
        ax.set_aspect("equal", adjustable="datalim")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    return fig


def plot_cmd(
    color: Any,
    magnitude: Any,
    member_prob: Any = None,
    *,
    labels: Any = None,
    color_label: str = r"$G_{BP} - G_{RP}$",
    magnitude_label: str = "$G$",
    title: str = "colour-magnitude diagram",
    ax: Any = None,
) -> Figure:
    """The colour-magnitude diagram (bright stars up), coloured by membership probability."""
    fig, ax = _figure_and_axes(ax, figsize=(4.5, 5.5))
    color, magnitude = np.asarray(color, dtype=float), np.asarray(magnitude, dtype=float)
    _scatter(ax, color, magnitude, member_prob, labels)
    ax.set(xlim=_robust_limits(color, 0.2), xlabel=color_label, ylabel=magnitude_label, title=title)
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    return fig


def catalog_color(catalog: Any) -> np.ndarray | None:
    """BP - RP of a catalogue with normalised Gaia names (bp_rp, else the two magnitudes), or None."""
    if "bp_rp" in catalog.columns:
        return catalog["bp_rp"].to_numpy(dtype=float, na_value=np.nan)
    if {"phot_bp_mean_mag", "phot_rp_mean_mag"} <= set(catalog.columns):
        bp = catalog["phot_bp_mean_mag"].to_numpy(dtype=float, na_value=np.nan)
        return bp - catalog["phot_rp_mean_mag"].to_numpy(dtype=float, na_value=np.nan)
    return None


def plot_membership(catalog: Any, member_prob: Any, center: Any = None, *, title: str | None = None) -> Figure:
    """Proper motions, sky and colour-magnitude diagram of a catalogue, coloured by membership probability.

    ``catalog`` is anything :func:`grasp_dl.data.read_catalog` reads; panels whose columns it
    lacks are left out. Positions are tangent-plane offsets around ``center`` (ra, dec) when given.
    """
    from grasp_dl.data.catalog import read_catalog
    from grasp_dl.data.sky import gnomonic_project

    table = read_catalog(catalog)
    prob = np.asarray(member_prob, dtype=float)
    if len(prob) != len(table):
        raise ConfigError(f"member_prob has {len(prob)} rows but the catalogue {len(table)}: one per star, in order")
    columns = set(table.columns)
    color = catalog_color(table)
    panels = [
        name
        for name, ok in (
            ("pm", {"pmra", "pmdec"} <= columns),
            ("sky", {"ra", "dec"} <= columns),
            ("cmd", color is not None and "phot_g_mean_mag" in columns),
        )
        if ok
    ]
    if not panels:
        raise ConfigError("the catalogue has none of pmra/pmdec, ra/dec or G and BP-RP: nothing to plot")
    fig = Figure(figsize=(4.8 * len(panels), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels, strict=False):
        if panel == "pm":
            plot_proper_motions(table["pmra"], table["pmdec"], prob, ax=ax)
        elif panel == "sky":
            ra, dec = table["ra"].to_numpy(float), table["dec"].to_numpy(float)
            if center is not None:
                xi, eta = gnomonic_project(ra, dec, float(center[0]), float(center[1]))
                plot_sky(xi, eta, prob, ax=ax)
            else:
                plot_sky(ra, dec, prob, frame="radec", ax=ax)
        else:
            plot_cmd(color, table["phot_g_mean_mag"], prob, ax=ax)
    if title:
        fig.suptitle(title)
    return fig


def plot_training_history(history: Any, metrics: Any = None) -> Figure:
    """Losses per epoch, one panel per training phase (autoencoder, clustering).

    ``history`` is a table with columns ``phase``, ``epoch`` and one per logged metric (as
    ``DeepClusteringModel.history_``); ``metrics`` picks the columns, by default every ``*loss``.
    """
    import pandas as pd

    frame = pd.DataFrame(history)
    if frame.empty or not {"phase", "epoch"} <= set(frame.columns):
        raise ConfigError("no training history to plot: train first (it needs the columns 'phase' and 'epoch')")
    phases = list(dict.fromkeys(frame["phase"]))
    fig = Figure(figsize=(4.8 * len(phases), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(phases)))
    for ax, phase in zip(axes, phases, strict=False):
        rows = frame[frame["phase"] == phase]
        names = list(metrics) if metrics is not None else [c for c in rows.columns if str(c).endswith("loss")]
        for name in names:
            if name in rows.columns and rows[name].notna().any():
                ok = rows[name].notna()
                ax.plot(rows.loc[ok, "epoch"] + 1, rows.loc[ok, name], marker="o", ms=3, label=name)
        ax.set(xlabel="epoch", ylabel="value", title=str(phase))
        if ax.get_lines():
            ax.legend(fontsize="small")
    return fig


def _feature_pairs(n_features: int) -> list[tuple[int, int]]:
    """Consecutive pairs of features (0, 1), (2, 3), ...; an odd last one pairs with its neighbour."""
    pairs = [(i, i + 1) for i in range(0, n_features - 1, 2)]
    if n_features % 2 and n_features > 1:
        pairs.append((n_features - 1, n_features - 2))
    return pairs or [(0, 0)]


def plot_cluster_comparison(
    data: Any,
    true_labels: Any,
    predicted_labels: Any,
    feature_names: Any = None,
    *,
    pairs: Any = None,
) -> Figure:
    """True groups (top row) against predicted groups (bottom row) in pairs of features.

    ``data`` is a stars x features matrix or a DataFrame; ``pairs`` lists feature index
    pairs to draw (by default consecutive ones: xi/eta, pmra/pmdec, ...). When ``data`` is the
    feature matrix of :func:`grasp_dl.prepare_stellar_data`, labels given per catalogue row
    are taken on the matrix's rows.
    """
    import pandas as pd

    from grasp_dl.data.rows import on_prepared_rows

    # Labels per catalogue row meet a feature matrix from prepare_stellar_data on its rows.
    true_labels, predicted_labels = on_prepared_rows(data, true_labels, predicted_labels)
    if isinstance(data, pd.DataFrame):
        feature_names = list(data.columns) if feature_names is None else list(feature_names)
        data = data[feature_names].to_numpy(dtype=float)
    values = np.asarray(data, dtype=float)
    if values.ndim != 2:
        raise ConfigError(f"data must be 2-D (stars x features), got shape {values.shape}")
    names = list(feature_names) if feature_names is not None else [f"feature_{i}" for i in range(values.shape[1])]
    truth, predicted = np.asarray(true_labels), np.asarray(predicted_labels)
    if not len(truth) == len(predicted) == len(values) or len(names) != values.shape[1]:
        raise ConfigError(
            f"data has {len(values)} rows and {values.shape[1]} features, true_labels {len(truth)}, "
            f"predicted_labels {len(predicted)} and feature_names {len(names)}: give one label per row"
        )
    pairs = [tuple(p) for p in pairs] if pairs is not None else _feature_pairs(values.shape[1])
    fig = Figure(figsize=(4.2 * len(pairs), 7.6), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(pairs), squeeze=False))
    for column, (i, j) in enumerate(pairs):
        for row, (labels, what) in enumerate(((truth, "true"), (predicted, "predicted"))):
            ax = axes[row, column]
            _scatter(ax, values[:, i], values[:, j], labels=labels)
            ax.set(
                xlabel=names[i],
                ylabel=names[j],
                title=f"{what} groups",
                xlim=_robust_limits(values[:, i]),
                ylim=_robust_limits(values[:, j]),
            )
    return fig
