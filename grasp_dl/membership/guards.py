"""Is the group named the cluster a cluster at all? Plausibility guards and the diagnostics behind them.

A globular cluster seen in a Gaia cone is two things at once, and a group is named the cluster
only when it is both:

1. **A spatial concentration against the other stars.** The field's surface density is nearly
   flat over a cone of radius R, so its median distance from the centre is R / sqrt(2) ~ 0.71 R
   (a random subset of the field, whatever its share, has the same median: ratio ~ 1). A
   Plummer cluster of scale radius a inside the cone has the median radius r_m with
   r_m^2 / (r_m^2 + a^2) = (1/2) R^2 / (R^2 + a^2); its members' median radius is below
   0.7 of the field's (:data:`MAX_RADIUS_RATIO`) as long as a < 0.69 R, i.e. whenever the cone
   reaches further out than the cluster's half-light radius by a factor ~1.5. A cone smaller
   than that cannot show the concentration, and the run says so (widen the cone). King
   profiles are more concentrated than Plummer at the same half-light radius, so they pass
   more easily.
2. **Tighter than the other stars in proper motion.** A globular cluster's internal velocity
   dispersion (<= ~15-20 km/s in the centre of the most massive ones, a few km/s typically) at
   >= 4 kpc is at most ~0.5-0.9 mas/yr and usually far less, while the field (disc + bulge or
   halo stars) spreads over several mas/yr. The members' proper-motion dispersion must be
   below half of the others' (:data:`MAX_PM_DISPERSION_RATIO`). Measurement errors widen
   every observed dispersion (faint members can have 1 mas/yr errors, broader than the
   cluster itself), so where the catalogue has ``pmra_error``/``pmdec_error`` the dispersions
   compared are error-deconvolved: sigma_int^2 = var_w(pm) - mean_w(error^2) per axis, clipped
   at 0 (a cluster unresolved by its errors is as tight as it gets).

There is no cut on the cluster's share of stars: in a tight cone around a massive cluster the
members can be 70% of the catalogue. "The other stars" are every star weighted by
``1 - member_prob``; the members are the stars with ``member_prob > 0.5`` weighted by
``member_prob`` (as in the cluster summary), so that thousands of field stars with tiny member
probabilities cannot widen the members' dispersion.

Where the model that chose the members can say what their concentration is worth (``model=xd``,
:meth:`grasp_dl.mixtures.cluster_field.ClusterFieldMixture.null_log_likelihood_ratio`), the
spatial test is a comparison with a no-cluster null instead: the fitted model's log-likelihood
over the same model's refitted to the stars with their positions shuffled among them (a
permutation: same footprint, same proper motions; the mean over up to 16 shuffles, since one
shuffle's null is a random draw) must reach :data:`MIN_LOG_LIKELIHOOD_RATIO` and
:data:`NULL_RATIO_PER_SQRT_MEMBER` sqrt(members).
The radius ratio judges a group the spatial profile itself chose (in a cone without a cluster
it picks central stars, so the group looks concentrated), and it refuses a cluster that fills
its cone; the ratio against the null does neither. The radius ratio is still reported.

When no group passes both tests the run reports ``cluster_found: false`` with the reason and
names no member (every ``member_prob`` is 0); it never names the field. Whatever the verdict,
the summary carries the numbers behind it (:func:`check_plausibility`): the cluster's share,
both median radii and their ratio, both proper-motion dispersions and their ratio, and a radial
density profile.

Catalogues streamed chunk by chunk are judged on a bounded uniform random sample of the scored
stars (:class:`StarSample`, :data:`SAMPLE_SIZE` rows; exact below that size), which also feeds
the diagnostic figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.sky import gnomonic_project
from grasp_dl.membership.summary import ClusterSummary

#: Member probability above which a star counts as a member (the one definition in grasp-dl).
MEMBER_THRESHOLD = 0.5

#: Members' median radius must be below this fraction of the other stars' (see the module notes).
MAX_RADIUS_RATIO = 0.7
#: Members' (error-deconvolved) proper-motion dispersion must be below this fraction of the others'.
MAX_PM_DISPERSION_RATIO = 0.5
#: log L(fit) - mean log L(fits to shuffled positions) a cluster must reach (calibrated on cluster-free cones).
MIN_LOG_LIKELIHOOD_RATIO = 10.0
#: ... and at least this times sqrt(members): the null's ratio is a sum over the group's stars, so its
#: spread grows as their square root (about twice the largest of cluster-free cones' broad chance groups
#: against the averaged null; docs/src/trust.md, "Named clusters that fill a small cone").
NULL_RATIO_PER_SQRT_MEMBER = 1.0
#: Fewer stars with member_prob > 0.5 than this cannot be judged (medians and dispersions of noise).
MIN_MEMBERS = 10
#: The other stars must weigh at least this much (sum of 1 - member_prob) to compare against.
MIN_OTHERS = 10.0
#: Radius bins of the radial density profile.
PROFILE_BINS = 10
#: Rows kept for the diagnostics and the figure of a streamed prediction (uniform random sample).
SAMPLE_SIZE = 200_000
#: Columns of the catalogue the diagnostics and the figure use, when present.
SAMPLE_COLUMNS = (
    "ra",
    "dec",
    "pmra",
    "pmdec",
    "pmra_error",
    "pmdec_error",
    "parallax",
    "phot_g_mean_mag",
    "bp_rp",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median of ``values`` (NaN when the weights sum to 0).

    Parameters
    ----------
    values, weights : numpy.ndarray
        One value and one non-negative weight per star.

    Returns
    -------
    float
    """
    ok = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    v, w = np.asarray(values, float)[ok], np.asarray(weights, float)[ok]
    if w.sum() <= 0:
        return float("nan")
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, 0.5 * cum[-1])])


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The weighted ``q`` quantile of ``values`` (NaN when the weights sum to 0).

    Parameters
    ----------
    values, weights : numpy.ndarray
        One value and one non-negative weight per star.
    q : float
        In [0, 1].

    Returns
    -------
    float
    """
    ok = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    v, w = np.asarray(values, float)[ok], np.asarray(weights, float)[ok]
    if w.sum() <= 0:
        return float("nan")
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    return float(v[order][min(np.searchsorted(cum, q * cum[-1]), len(v) - 1)])


def pm_dispersion(pm: np.ndarray, weights: np.ndarray, pm_error: np.ndarray | None = None, core: bool = True) -> float:
    """Weighted proper-motion dispersion, sqrt of the mean of both axes' variances (mas/yr).

    ``core=True`` (the members): each axis's dispersion is 1.4826 x the weighted median absolute
    deviation from the weighted median, a Gaussian's sigma that a minority of contaminants with
    wild proper motions (field stars among the members) cannot inflate. ``core=False`` (the
    other stars): the central 95% range / 3.92, also a Gaussian's sigma, but one that spans a
    mixture (a tight background galaxy plus a broad field) instead of the tightest population
    in it, and ignores the 2.5% most extreme stars on each side. With ``pm_error`` the weighted
    median of each axis's squared errors is subtracted from its variance (error deconvolution),
    clipped at 0.

    Parameters
    ----------
    pm : numpy.ndarray
        (n, 2) pmra, pmdec.
    weights : numpy.ndarray
        (n,) non-negative weights.
    pm_error : numpy.ndarray, optional
        (n, 2) pmra_error, pmdec_error.
    core : bool
        The core's width (median absolute deviation) or the whole distribution's (central 95%).

    Returns
    -------
    float
        NaN when the weights sum to 0.
    """
    pm = np.asarray(pm, float)
    ok = np.isfinite(pm).all(axis=1) & np.isfinite(weights) & (weights > 0)
    if pm_error is not None:
        ok &= np.isfinite(pm_error).all(axis=1)
    w = np.asarray(weights, float)[ok]
    if w.sum() <= 0:
        return float("nan")
    variances = []
    for axis in range(2):
        values = pm[ok, axis]
        if core:
            center = weighted_median(values, w)
            var = (1.4826 * weighted_median(np.abs(values - center), w)) ** 2
        else:
            var = ((weighted_quantile(values, w, 0.975) - weighted_quantile(values, w, 0.025)) / 3.92) ** 2
        if pm_error is not None:
            var = max(var - weighted_median(np.asarray(pm_error, float)[ok, axis] ** 2, w), 0.0)
        variances.append(var)
    return float(np.sqrt(np.mean(variances)))


def radial_profile(
    radius_deg: np.ndarray, member_prob: np.ndarray, n_bins: int = PROFILE_BINS, scale: float = 1.0
) -> dict[str, list[float]]:
    """Members and other stars per square arcminute in equal-width radius bins out to the furthest star.

    Members count ``member_prob`` where it is above 0.5, the others ``1 - member_prob``; ``scale``
    multiplies the counts (catalogue rows per sampled row). Bins beyond the edge of a square
    cone are partly empty, so their densities read low.

    Parameters
    ----------
    radius_deg : numpy.ndarray
        Distance of each star from the centre, degrees.
    member_prob : numpy.ndarray
        Member probability of each star.
    n_bins : int
        Number of radius bins.
    scale : float
        Catalogue stars per star given (1 unless the stars are a sample).

    Returns
    -------
    dict
        ``edges_arcmin`` (n_bins + 1), ``member_density_per_arcmin2`` and ``other_density_per_arcmin2``
        (n_bins each).
    """
    r = np.asarray(radius_deg, float) * 60.0
    p = np.nan_to_num(np.asarray(member_prob, float), nan=0.0)
    ok = np.isfinite(r)
    r, p = r[ok], p[ok]
    r_max = float(r.max()) if len(r) else 0.0
    edges = np.linspace(0.0, r_max if r_max > 0 else 1.0, n_bins + 1)
    area = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)
    members = np.histogram(r, edges, weights=np.where(p > MEMBER_THRESHOLD, p, 0.0))[0] * scale
    others = np.histogram(r, edges, weights=1.0 - p)[0] * scale
    return {
        "edges_arcmin": [round(float(e), 4) for e in edges],
        "member_density_per_arcmin2": [float(v) for v in members / area],
        "other_density_per_arcmin2": [float(v) for v in others / area],
    }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def check_plausibility(
    member_prob: np.ndarray,
    radius: np.ndarray | None = None,
    pm: np.ndarray | None = None,
    pm_error: np.ndarray | None = None,
    scale: float = 1.0,
    log_likelihood_ratio: float | None = None,
    min_log_likelihood_ratio: float = MIN_LOG_LIKELIHOOD_RATIO,
    null_permutations: int | None = None,
    outlier_stars: float = 0.0,
) -> dict[str, Any]:
    """Judge whether the stars weighted by ``member_prob`` form a cluster, and say why.

    Parameters
    ----------
    member_prob : numpy.ndarray
        (n,) member probability of each scored star (NaN counts as 0).
    radius : numpy.ndarray, optional
        (n,) distance from the centre in degrees; without it the spatial test is skipped.
    pm : numpy.ndarray, optional
        (n, 2) pmra, pmdec in mas/yr; without it the proper-motion test is skipped.
    pm_error : numpy.ndarray, optional
        (n, 2) their errors; given, the dispersions compared are error-deconvolved.
    scale : float
        Catalogue stars per star given (for the radial profile of a sample).
    log_likelihood_ratio : float, optional
        The membership model's log-likelihood over its no-cluster null's (the same model on
        the stars with shuffled positions); given, the spatial
        test is ``log_likelihood_ratio >= min_log_likelihood_ratio`` instead of the radius ratio.
    min_log_likelihood_ratio : float
        Threshold of that test (raised to ``NULL_RATIO_PER_SQRT_MEMBER`` sqrt(members) for large groups).
    null_permutations : int, optional
        How many shuffles the null's log-likelihood is the mean of (reported with the ratio).
    outlier_stars : float
        Stars of the model's outlier component on the cluster's profile (``model.cluster_outliers``):
        the ratio sums over them as over the members, so the sqrt rule counts them too.

    Returns
    -------
    dict
        ``cluster_found`` (bool), ``cluster_reason`` (str) and ``diagnostics``: ``cluster_share``,
        ``n_members``, ``member_median_radius_arcmin``, ``other_median_radius_arcmin``,
        ``radius_ratio``, ``member_pm_dispersion``, ``other_pm_dispersion`` (mas/yr),
        ``pm_dispersion_ratio``, ``pm_dispersion_deconvolved``, ``radial_profile``, ``thresholds``
        and ``tests`` (which tests ran). Values that cannot be computed are None.
    """
    p = np.clip(np.nan_to_num(np.asarray(member_prob, float), nan=0.0), 0.0, 1.0)
    n = len(p)
    is_member = p > MEMBER_THRESHOLD
    w_member = np.where(is_member, p, 0.0)
    w_other = 1.0 - p
    n_members = int(is_member.sum())
    diagnostics: dict[str, Any] = {
        "n_judged": n,
        "n_members": n_members,
        "cluster_share": float(n_members / n) if n else None,
        "thresholds": {
            "max_radius_ratio": MAX_RADIUS_RATIO,
            "max_pm_dispersion_ratio": MAX_PM_DISPERSION_RATIO,
            "min_members": MIN_MEMBERS,
        },
        "tests": [],
    }
    failures: list[str] = []
    if radius is not None:
        radius = np.asarray(radius, float)
        member_r = weighted_median(radius, w_member) * 60.0
        other_r = weighted_median(radius, w_other) * 60.0
        ratio = member_r / other_r if other_r > 0 else float("nan")
        diagnostics.update(
            member_median_radius_arcmin=_finite(member_r),
            other_median_radius_arcmin=_finite(other_r),
            radius_ratio=_finite(ratio),
            radial_profile=radial_profile(radius, p, scale=scale),
        )
        diagnostics["tests"].append("spatial")
        if log_likelihood_ratio is not None:
            diagnostics.update(
                log_likelihood_ratio=_finite(float(log_likelihood_ratio)),
                min_log_likelihood_ratio=float(min_log_likelihood_ratio),
            )
            shuffles = ""
            if null_permutations is not None:
                diagnostics["null_permutations"] = int(null_permutations)
                shuffles = f", the mean over {int(null_permutations)} shuffles" if null_permutations > 1 else ""
            on_profile = n_members + max(float(outlier_stars), 0.0)
            needed = max(float(min_log_likelihood_ratio), NULL_RATIO_PER_SQRT_MEMBER * float(np.sqrt(on_profile)))
            diagnostics["min_log_likelihood_ratio"] = needed
            if not log_likelihood_ratio >= needed:
                failures.append(
                    f"not concentrated on the sky: the stars' positions add {log_likelihood_ratio:.1f} to the "
                    f"log-likelihood over the same stars with shuffled positions{shuffles} (a cluster needs >= {needed:.1f})"
                )
        elif not ratio < MAX_RADIUS_RATIO:
            failures.append(
                f"not concentrated on the sky: the members' median radius is {ratio:.2f} of the other "
                f"stars' (a cluster needs < {MAX_RADIUS_RATIO}; widen the cone if it is smaller than the cluster)"
            )
    if pm is not None:
        pm = np.asarray(pm, float)
        member_s = pm_dispersion(pm, w_member, pm_error)
        other_s = pm_dispersion(pm, w_other, pm_error, core=False)
        ratio = member_s / other_s if other_s > 0 else float("nan")
        diagnostics.update(
            member_pm_dispersion=_finite(member_s),
            other_pm_dispersion=_finite(other_s),
            pm_dispersion_ratio=_finite(ratio),
            pm_dispersion_deconvolved=pm_error is not None,
        )
        diagnostics["tests"].append("proper_motion")
        if not ratio < MAX_PM_DISPERSION_RATIO:
            failures.append(
                f"not tight in proper motion: the members' dispersion is {ratio:.2f} of the other stars' "
                f"(a cluster needs < {MAX_PM_DISPERSION_RATIO})"
            )
    if n_members < MIN_MEMBERS:
        failures.insert(
            0, f"only {n_members} stars with member_prob > {MEMBER_THRESHOLD} (at least {MIN_MEMBERS} needed)"
        )
    elif w_other.sum() < MIN_OTHERS:
        failures.insert(
            0, "almost every star is a member: no other stars to compare with (widen the cone beyond the cluster)"
        )
    if failures:
        return {"cluster_found": False, "cluster_reason": "; ".join(failures), "diagnostics": diagnostics}
    if not diagnostics["tests"]:
        reason = "not checked: the features hold neither positions nor proper motions"
    else:
        reason = "passes: " + " and ".join(
            {"spatial": "concentrated on the sky", "proper_motion": "tight in proper motion"}[t]
            for t in diagnostics["tests"]
        )
    return {"cluster_found": True, "cluster_reason": reason, "diagnostics": diagnostics}


def check_features(member_prob: np.ndarray, features: np.ndarray, feature_names: Sequence[str]) -> dict[str, Any]:
    """:func:`check_plausibility` on prepared physical features (xi, eta in degrees; pmra, pmdec).

    Used where the cluster group is decided (no error columns there: observed dispersions).

    Parameters
    ----------
    member_prob : numpy.ndarray
        (n,) member probability of each star.
    features : numpy.ndarray
        (n, d) physical features.
    feature_names : sequence of str
        Their names.

    Returns
    -------
    dict
        As :func:`check_plausibility`.
    """
    names = list(feature_names)
    features = np.asarray(features, float)
    radius = pm = None
    if "xi" in names and "eta" in names:
        radius = np.hypot(features[:, names.index("xi")], features[:, names.index("eta")])
    if "pmra" in names and "pmdec" in names:
        pm = features[:, [names.index("pmra"), names.index("pmdec")]]
    return check_plausibility(member_prob, radius, pm)


def check_table(
    member_prob: np.ndarray,
    table: pd.DataFrame,
    center: Sequence[float] | None,
    scale: float = 1.0,
    **null: Any,
) -> dict[str, Any]:
    """:func:`check_plausibility` on catalogue rows: radius from ra/dec around ``center``, pm and errors.

    Parameters
    ----------
    member_prob : numpy.ndarray
        (n,) member probability of each row (scored rows only).
    table : pandas.DataFrame
        The rows, with ``ra``, ``dec``, ``pmra``, ``pmdec`` and ``*_error`` where available.
    center : sequence of float, optional
        [ra, dec] of the projection centre; None skips the spatial test.
    scale : float
        Catalogue stars per row given.
    **null
        ``log_likelihood_ratio`` and ``min_log_likelihood_ratio`` of :func:`check_plausibility`.

    Returns
    -------
    dict
        As :func:`check_plausibility`.
    """
    radius = pm = pm_error = None
    if center is not None and {"ra", "dec"} <= set(table.columns):
        xi, eta = gnomonic_project(table["ra"].to_numpy(float), table["dec"].to_numpy(float), *center)
        radius = np.hypot(xi, eta)
    if {"pmra", "pmdec"} <= set(table.columns):
        pm = table[["pmra", "pmdec"]].to_numpy(float)
        if {"pmra_error", "pmdec_error"} <= set(table.columns):
            pm_error = table[["pmra_error", "pmdec_error"]].to_numpy(float)
            if not np.isfinite(pm_error).any():
                pm_error = None
    return check_plausibility(member_prob, radius, pm, pm_error, scale=scale, **null)


class StarSample:
    """A uniform random sample of at most ``size`` scored stars, collected chunk by chunk.

    Every scored star gets a random key; the ``size`` smallest keys are kept, so memory stays
    bounded whatever the catalogue's size and the sample is exactly the whole catalogue below it.

    Parameters
    ----------
    size : int
        Largest number of rows kept.
    seed : int
        Seed of the random keys (the same catalogue gives the same sample).
    """

    def __init__(self, size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        self.size = int(size)
        self.rng = np.random.default_rng(seed)
        self.n_seen = 0
        self._rows: pd.DataFrame | None = None
        # Offered rows not merged yet: merging (a sort of the whole sample) waits until they
        # could fill a sample, which leaves the result unchanged (the smallest keys win).
        self._pending: list[pd.DataFrame] = []
        self._n_pending = 0

    def update(self, predictions: pd.DataFrame, catalog: pd.DataFrame) -> None:
        """Offer a chunk: its predictions and the catalogue rows they belong to, in the same order.

        Parameters
        ----------
        predictions : pandas.DataFrame
            With ``label`` (-1 unscored) and ``member_prob``.
        catalog : pandas.DataFrame
            The chunk's catalogue rows.
        """
        scored = predictions["label"].to_numpy() >= 0
        n_scored = int(scored.sum())
        if not n_scored:
            return
        keys = self.rng.random(n_scored)
        self.n_seen += n_scored
        # Once the sample is full only keys below its largest can enter: most rows of a long stream skip the copy.
        chosen = np.flatnonzero(scored)
        if self._rows is not None and len(self._rows) >= self.size:
            keep = keys < self._largest_key
            chosen, keys = chosen[keep], keys[keep]
            if not len(chosen):
                return
        columns = [c for c in SAMPLE_COLUMNS if c in catalog.columns]
        rows = catalog[columns].iloc[chosen].reset_index(drop=True)
        rows["member_prob"] = predictions["member_prob"].to_numpy(float)[chosen]
        rows["_key"] = keys
        self._pending.append(rows)
        self._n_pending += len(rows)
        if self._n_pending >= self.size:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending rows into the sample, keeping the ``size`` smallest keys."""
        if not self._pending:
            return
        parts = ([] if self._rows is None else [self._rows]) + self._pending
        merged = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        self._pending, self._n_pending = [], 0
        if len(merged) > self.size:
            merged = merged.nsmallest(self.size, "_key").reset_index(drop=True)
        self._rows = merged
        self._largest_key = float(merged["_key"].max())

    @property
    def rows(self) -> pd.DataFrame:
        """The sampled rows (catalogue columns + ``member_prob``); empty before any scored star."""
        self._merge()
        if self._rows is None:
            return pd.DataFrame(columns=["member_prob"])
        return self._rows.drop(columns="_key")

    @property
    def scale(self) -> float:
        """Catalogue stars scored per sampled star."""
        self._merge()
        return self.n_seen / len(self._rows) if self._rows is not None and len(self._rows) else 1.0

    def check(self, center: Sequence[float] | None, **null: Any) -> dict[str, Any]:
        """:func:`check_table` on the sample.

        Parameters
        ----------
        center : sequence of float, optional
            The projection centre.
        **null
            The model's comparison with its no-cluster null (:func:`check_plausibility`).

        Returns
        -------
        dict
            As :func:`check_plausibility`, with ``diagnostics.n_judged`` the sample's size.
        """
        rows = self.rows
        return check_table(rows["member_prob"].to_numpy(float), rows, center, scale=self.scale, **null)


def apply_verdict(summary: ClusterSummary, check: dict[str, Any], user_group: bool = False) -> ClusterSummary:
    """The cluster summary with the plausibility verdict; without a cluster, no members.

    Parameters
    ----------
    summary : ClusterSummary
        The cluster summary; it is not changed.
    check : dict
        :func:`check_plausibility`'s answer.
    user_group : bool
        The user named the group: the verdict is reported but the members are kept.

    Returns
    -------
    ClusterSummary
        A new summary (:meth:`ClusterSummary.with_verdict`).
    """
    return summary.with_verdict(check, user_group)


def no_cluster_warning(summary: ClusterSummary) -> str | None:
    """The one-line warning printed when no cluster was found (None when one was).

    Parameters
    ----------
    summary : ClusterSummary
        A summary that went through :func:`apply_verdict`.

    Returns
    -------
    str or None
    """
    if summary.found:
        return None
    return f"warning: no cluster found, members set to 0: {summary.cluster_reason or ''}"


def astrometry_line(summary: ClusterSummary) -> str | None:
    """One line of the cluster's mean proper motion (and parallax) with standard errors, and whose estimate it is.

    Parameters
    ----------
    summary : ClusterSummary
        A cluster summary (the means of pmra, pmdec and optionally parallax with their errors;
        ``mean_source``: ``model`` for a fitted mean, else the members' weighted mean).

    Returns
    -------
    str or None
        None when no cluster was found or the summary has no finite mean proper motion.
    """
    if not summary.found:
        return None

    def value(column: str) -> str | None:
        mean, error = summary.mean(column), summary.mean_error(column)
        if not np.isfinite(mean):
            return None
        return f"{mean:.3f} ± {error:.3f}" if np.isfinite(error) else f"{mean:.3f}"

    pmra, pmdec, parallax = value("pmra"), value("pmdec"), value("parallax")
    if pmra is None or pmdec is None:
        return None
    if summary.mean_source == "model":
        source = "fitted by the model to every star"
    else:
        source = f"weighted mean of the {summary.n_members} stars with member_prob > {MEMBER_THRESHOLD}"
    line = f"cluster mean: pmra {pmra}, pmdec {pmdec} mas/yr"
    if parallax is not None:
        line += f", parallax {parallax} mas"
    return line + f" ({source}; statistical errors)"


def diagnostics_line(summary: ClusterSummary) -> str | None:
    """One line of the numbers behind the verdict (share, the null's log-likelihood ratio, radius ratio, pm dispersion ratio).

    Parameters
    ----------
    summary : ClusterSummary
        A summary with ``diagnostics``.

    Returns
    -------
    str or None
        None when the summary has no diagnostics.
    """
    d = summary.diagnostics
    if not d:
        return None
    parts = []
    if d.get("cluster_share") is not None:
        parts.append(f"share {d['cluster_share']:.3f}")
    null = d.get("log_likelihood_ratio")
    if null is not None:  # the spatial test compares with the no-cluster null; the radius ratio is only reported
        shuffles = d.get("null_permutations")
        over = f" (mean of {shuffles} shuffles)" if shuffles and shuffles > 1 else ""
        parts.append(
            f"positions add {null:.1f} to the log-likelihood over shuffled ones{over} "
            f"(>= {d['min_log_likelihood_ratio']:.1f} needed)"
        )
    if d.get("radius_ratio") is not None:
        needed = "reported" if null is not None else f"< {MAX_RADIUS_RATIO} needed"
        parts.append(
            f"median radius {d['member_median_radius_arcmin']:.2f}' vs others' {d['other_median_radius_arcmin']:.2f}' "
            f"(ratio {d['radius_ratio']:.2f}, {needed})"
        )
    if d.get("pm_dispersion_ratio") is not None:
        kind = "deconvolved " if d.get("pm_dispersion_deconvolved") else ""
        parts.append(
            f"{kind}pm dispersion {d['member_pm_dispersion']:.2f} vs others' {d['other_pm_dispersion']:.2f} mas/yr "
            f"(ratio {d['pm_dispersion_ratio']:.2f}, < {MAX_PM_DISPERSION_RATIO} needed)"
        )
    return "cluster check: " + "; ".join(parts) if parts else None


def zero_member_prob_file(path: str | Path, chunk_size: int = 262_144) -> None:
    """Rewrite a streamed predictions file (.parquet or .csv) with ``member_prob`` (and its spread) 0 where scored.

    Read and written chunk by chunk into a temporary file that then replaces ``path``, so memory
    stays bounded.

    Parameters
    ----------
    path : str or pathlib.Path
        The predictions file written by :func:`grasp_dl.inference.predict.predict_to_file`.
    chunk_size : int
        Rows per chunk.
    """
    from grasp_dl.data.catalog import CatalogChunkWriter

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        chunks = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size))
    else:
        chunks = pd.read_csv(path, chunksize=chunk_size, keep_default_na=False, na_values=[""], dtype={"flag": str})
    # The writer's temporary file has a unique name; it replaces ``path`` once every chunk is read.
    with CatalogChunkWriter(path) as writer:
        for chunk in chunks:
            scored = chunk["label"].to_numpy() >= 0
            for column in ("member_prob", "member_prob_std"):
                if column in chunk.columns:
                    chunk[column] = np.where(scored, 0.0, chunk[column].to_numpy(float))
            if "flag" in chunk.columns:
                chunk["flag"] = chunk["flag"].fillna("").astype(str)
            writer.write(chunk)


def finish_summary(
    summary: ClusterSummary, check: dict[str, Any], user_group: bool = False, literature: Any = None
) -> ClusterSummary:
    """The plausibility verdict (:func:`apply_verdict`), then the comparison with the literature if a cluster is named.

    Parameters
    ----------
    summary : ClusterSummary
        The cluster summary; it is not changed.
    check : dict
        :func:`check_plausibility`'s answer.
    user_group : bool
        The user chose the group (memberships are kept whatever the verdict).
    literature : grasp_dl.data.clusters.LiteratureCluster, optional
        The named cluster's published astrometry.

    Returns
    -------
    ClusterSummary
        A new summary with the verdict (``cluster_found``, ``cluster_reason``, ``diagnostics``)
        and, with ``literature``, the comparison (``literature``, ``literature_warning``).
    """
    summary = apply_verdict(summary, check, user_group)
    if literature is not None:
        from grasp_dl.data.clusters import compare_with_literature

        summary = summary.with_literature(compare_with_literature(summary, literature))
    return summary


def zero_member_prob(predictions: pd.DataFrame) -> pd.DataFrame:
    """Set ``member_prob`` (and ``member_prob_std``) to 0 on the scored rows of an in-memory table.

    Parameters
    ----------
    predictions : pandas.DataFrame
        The per-star table, changed in place.

    Returns
    -------
    pandas.DataFrame
        ``predictions``.
    """
    scored = predictions["label"].to_numpy() >= 0
    for column in ("member_prob", "member_prob_std"):
        if column in predictions.columns:
            predictions.loc[scored, column] = 0.0
    return predictions


def report_lines(summary: ClusterSummary) -> list[str]:
    """Lines for the command line: the numbers behind the verdict, the no-cluster warning, the literature check.

    Parameters
    ----------
    summary : ClusterSummary
        A summary that went through :func:`finish_summary`.

    Returns
    -------
    list of str
    """
    from grasp_dl.data.clusters import literature_lines

    lines = [
        line for line in (diagnostics_line(summary), astrometry_line(summary), no_cluster_warning(summary)) if line
    ]
    return lines + literature_lines(summary)
