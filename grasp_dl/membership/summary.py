"""The cluster summary: what a prediction found, as one immutable record.

:class:`ClusterSummary` is what ``grasp-dl predict`` writes as ``<output>.summary.json``, what
``grasp-dl train`` reports and what the survey tabulates. It is built once from the running sums
(:class:`grasp_dl.membership.rules.SummaryAccumulator`) and every later step (the model's own
astrometry, the plausibility verdict, the literature comparison, the run's paths) returns a new
summary through a named method, so no step changes a summary another one still holds.
:meth:`ClusterSummary.to_dict` gives the JSON keys and values and :meth:`ClusterSummary.from_dict`
reads them back; the summary also reads as that mapping (``summary["n_members"]``) for callers
written against the dictionary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: The catalogue columns whose mean the summary reports, in the order of the JSON keys.
MEAN_COLUMNS = ("pmra", "pmdec", "parallax")

#: Model astrometry keys (``model=xd``'s fitted cluster mean) and the column each gives.
MODEL_MEAN_KEYS = {"pmra": "xd_mean_pmra", "pmdec": "xd_mean_pmdec", "parallax": "xd_mean_parallax"}


_ABSENT = object()


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _float_or_nan(value: Any) -> float:
    """A stored mean as a float: JSON's null (a non-finite value when written) reads back as NaN."""
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class ColumnMean:
    """The cluster's mean of one catalogue column and its standard error.

    ``members`` and ``error_members`` keep the members' weighted average (and its error) when a
    model's fitted mean is the one reported, so that both stay in the summary.
    """

    value: float
    error: float
    members: float | None = None
    error_members: float | None = None


@dataclass(frozen=True, eq=True)
class ClusterSummary(Mapping[str, Any]):
    """Members, mean astrometry, verdict and literature comparison of the cluster found in a catalogue.

    Fields that no step has filled are None (or empty) and left out of :meth:`to_dict`, so the
    JSON holds what was computed; ``mean_source`` is always written (null when no cluster was found).

    Attributes
    ----------
    cluster_group : int
        The group named the cluster.
    n_rows, n_scored, n_members : int
        Rows read, rows scored, and stars with member_prob above the threshold.
    sum_member_prob : float
        Sum of member_prob over every row.
    center : tuple of float or None
        The projection centre (ra, dec) in degrees.
    means : dict of str to ColumnMean
        Per catalogue column present (pmra, pmdec, parallax), the cluster's mean and error.
    not_scored : dict of str to int
        Rows not scored, by flag.
    model_astrometry : dict
        The model's own fitted cluster astrometry (``xd_*``), written as top-level keys.
    mean_source : str or None
        ``model`` when the model's fitted mean is reported, ``members`` for the members' average,
        None when no cluster was found (no mean is reported).
    cluster_found, cluster_reason, diagnostics
        The plausibility verdict and the numbers behind it.
    literature, literature_warning
        The comparison with a named cluster's published astrometry; the warning is None when the
        values agree.
    figure, start_vs_end, checkpoint, catalog
        What ``grasp-dl predict`` adds: the figure's path, the model's start-versus-end
        comparison, the checkpoint and the catalogue scored.
    """

    cluster_group: int
    n_rows: int = 0
    n_scored: int = 0
    n_members: int = 0
    sum_member_prob: float = 0.0
    center: tuple[float, ...] | None = None
    means: dict[str, ColumnMean] = field(default_factory=dict)
    not_scored: dict[str, int] = field(default_factory=dict)
    model_astrometry: dict[str, Any] = field(default_factory=dict)
    mean_source: str | None = "members"
    cluster_found: bool | None = None
    cluster_reason: str | None = None
    diagnostics: dict[str, Any] | None = None
    literature: dict[str, Any] | None = None
    literature_warning: str | None = None
    figure: str | None = None
    start_vs_end: Any = None
    checkpoint: str | None = None
    catalog: str | None = None

    # --- reading ------------------------------------------------------------------------------

    def mean(self, column: str) -> float:
        """The reported mean of ``column`` (NaN when the catalogue has no such column or no member)."""
        entry = self.means.get(column)
        return entry.value if entry is not None else float("nan")

    def mean_error(self, column: str) -> float:
        """The standard error of :meth:`mean` (NaN when unknown)."""
        entry = self.means.get(column)
        return entry.error if entry is not None else float("nan")

    @property
    def found(self) -> bool:
        """Whether a cluster was found; a summary not yet judged counts as found."""
        return self.cluster_found is not False

    # --- steps --------------------------------------------------------------------------------

    def with_model_astrometry(self, astrometry: Mapping[str, Any]) -> ClusterSummary:
        """This summary with the model's own fitted astrometry added (``xd_*`` keys)."""
        return replace(self, model_astrometry={**self.model_astrometry, **astrometry})

    def with_model_mean(self, model_group: int = 0) -> ClusterSummary:
        """Report the model's fitted mean (and its error, where it has one) as the cluster's.

        The members' average moves to ``members`` (``mean_<column>_members`` in the JSON) and,
        where the model gives its mean's error, the members' error to ``error_members``.
        ``mean_source`` says which is reported. A summary of another group than the model's
        (the user's ``cluster_group``) keeps the members' average.

        Parameters
        ----------
        model_group : int
            The group the model's fitted mean belongs to.

        Returns
        -------
        ClusterSummary
        """
        means = dict(self.means)
        adopted = False
        if self.cluster_group == model_group:
            for column, key in MODEL_MEAN_KEYS.items():
                value = self.model_astrometry.get(key)
                if not _finite(value) or column not in means:
                    continue
                old = means[column]
                new = replace(old, value=float(value), members=old.value)
                error = self.model_astrometry.get(f"{key}_error")
                if _finite(error):
                    new = replace(new, error=float(error), error_members=old.error)
                means[column] = new
                adopted = True
        return replace(self, means=means, mean_source="model" if adopted else "members")

    def with_verdict(self, check: Mapping[str, Any], user_group: bool = False) -> ClusterSummary:
        """This summary with the plausibility verdict; without a cluster, no members.

        Parameters
        ----------
        check : mapping
            :func:`~grasp_dl.membership.guards.check_plausibility`'s answer.
        user_group : bool
            The user named the group: the verdict is reported but the members are kept.

        Returns
        -------
        ClusterSummary
            A new summary; ``self`` is unchanged.
        """
        found = bool(check["cluster_found"])
        reason = check["cluster_reason"]
        changes: dict[str, Any] = {}
        if not found and user_group:
            reason += " (memberships kept: the group was chosen by the user)"
        elif not found:
            nan = float("nan")
            changes = {
                "mean_source": None,
                "n_members": 0,
                "sum_member_prob": 0.0,
                "means": {
                    column: ColumnMean(
                        nan,
                        nan,
                        None if entry.members is None else nan,
                        None if entry.error_members is None else nan,
                    )
                    for column, entry in self.means.items()
                },
            }
        return replace(self, cluster_found=found, cluster_reason=reason, diagnostics=check["diagnostics"], **changes)

    def with_literature(self, comparison: Mapping[str, Any]) -> ClusterSummary:
        """This summary with a literature comparison (``literature`` and ``literature_warning``).

        Parameters
        ----------
        comparison : mapping
            :func:`grasp_dl.data.clusters.compare_with_literature`'s answer.

        Returns
        -------
        ClusterSummary
        """
        return replace(self, literature=comparison["literature"], literature_warning=comparison["literature_warning"])

    def with_run(self, **paths: Any) -> ClusterSummary:
        """This summary with what the command adds (``figure``, ``start_vs_end``, ``checkpoint``, ``catalog``)."""
        return replace(self, **paths)

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The summary as the JSON object of ``<output>.summary.json`` (keys in the file's order).

        Non-finite numbers stay floats here; the writer turns them into ``null``.

        Returns
        -------
        dict
        """
        out: dict[str, Any] = {
            "cluster_group": self.cluster_group,
            "n_rows": self.n_rows,
            "n_scored": self.n_scored,
            "n_members": self.n_members,
            "sum_member_prob": self.sum_member_prob,
            "center": list(self.center) if self.center is not None else None,
        }
        for column, entry in self.means.items():
            out[f"mean_{column}"], out[f"mean_{column}_error"] = entry.value, entry.error
        if self.not_scored:
            out["not_scored"] = dict(self.not_scored)
        out.update(self.model_astrometry)
        for column, entry in self.means.items():
            if entry.members is not None:
                out[f"mean_{column}_members"] = entry.members
            if entry.error_members is not None:
                out[f"mean_{column}_error_members"] = entry.error_members
        out["mean_source"] = self.mean_source
        optional = {
            "cluster_found": self.cluster_found,
            "cluster_reason": self.cluster_reason,
            "diagnostics": self.diagnostics,
            "literature": self.literature,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        if self.literature is not None:
            out["literature_warning"] = self.literature_warning
        run = {"figure": self.figure, "start_vs_end": self.start_vs_end, "checkpoint": self.checkpoint}
        out.update({key: value for key, value in run.items() if value is not None})
        if self.catalog is not None:
            out["catalog"] = self.catalog
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterSummary:
        """Read a summary back from its JSON object (:meth:`to_dict`, or a ``.summary.json`` file).

        A ``null`` mean reads as NaN; keys beyond the named fields are the model's own astrometry.

        Parameters
        ----------
        data : mapping
            The JSON object.

        Returns
        -------
        ClusterSummary
        """
        data = dict(data)
        means: dict[str, ColumnMean] = {}
        for column in MEAN_COLUMNS:
            if f"mean_{column}" not in data:
                continue
            members = data.pop(f"mean_{column}_members", _ABSENT)
            error_members = data.pop(f"mean_{column}_error_members", _ABSENT)
            means[column] = ColumnMean(
                _float_or_nan(data.pop(f"mean_{column}")),
                _float_or_nan(data.pop(f"mean_{column}_error", None)),
                None if members is _ABSENT else _float_or_nan(members),
                None if error_members is _ABSENT else _float_or_nan(error_members),
            )
        center = data.pop("center", None)
        named = {f.name for f in fields(cls)} - {"means", "model_astrometry", "center"}
        values = {key: data.pop(key) for key in list(data) if key in named}
        return cls(
            **values,
            center=tuple(float(c) for c in center) if center is not None else None,
            means=means,
            model_astrometry=data,
        )

    # --- the mapping view, for callers written against the dictionary --------------------------

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    __hash__ = None  # type: ignore[assignment]  # mutable containers inside: not hashable


def as_summary(summary: ClusterSummary | Mapping[str, Any]) -> ClusterSummary:
    """``summary`` as a :class:`ClusterSummary` (a JSON object is read with :meth:`ClusterSummary.from_dict`)."""
    return summary if isinstance(summary, ClusterSummary) else ClusterSummary.from_dict(summary)
