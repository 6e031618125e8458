"""Score stars without astrometry (Gaia 2-parameter solutions) from their position alone.

With no proper motion or parallax the deep models cannot place such a star, but its position
still says something: the cluster dominates near the centre, the field in the outskirts. The
module's position model (cluster share and Plummer scale fitted to its own member probabilities,
:mod:`grasp_dl.models.ingredients`) gives

    member_prob = share Plummer(r) / (share Plummer(r) + (1 - share) / (pi R^2))

a wide, rarely decisive probability. These rows are flagged ``scored:no_astrometry``; the other
groups share 1 - member_prob equally and VaDE's ``member_prob_std`` is sqrt(p (1 - p)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.astrometry import ASTROMETRY, CORRELATION_COLUMN, ERROR_COLUMNS
from grasp_dl.data.prepare import PreparedCatalog
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.membership.rules import entropy
from grasp_dl.runtime.capabilities import ScoresPositions

FLAG_NO_ASTROMETRY = "scored:no_astrometry"
#: Features whose absence makes a row a "no astrometry" row (and nothing else missing).
_ASTROMETRIC_FEATURES = set(ASTROMETRY) | set(ERROR_COLUMNS.values()) | {CORRELATION_COLUMN}


def no_astrometry_rows(flags: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """Rows left out only because *all* their astrometric features are missing (a 2-parameter solution).

    A row missing only some of them (say pmra alone) is a damaged record, not a 2-parameter
    solution, and stays unscored.
    """
    astrometric = set(feature_names) & _ASTROMETRIC_FEATURES
    out = np.zeros(len(flags), dtype=bool)
    if not {"pmra", "pmdec"} <= astrometric:
        return out
    for i, flag in enumerate(flags):
        if isinstance(flag, str) and flag.startswith("missing:"):
            out[i] = set(flag[len("missing:") :].split("+")) == astrometric
    return out


def score_without_astrometry(
    out: pd.DataFrame,
    module: Any,
    table: pd.DataFrame,
    prepared: PreparedCatalog,
    center: Sequence[float] | None,
    group: int,
) -> int:
    """Fill the rows of ``out`` that lack only astrometry from their position; return how many.

    Needs the module's fitted position model and a centre; otherwise the rows stay unscored.
    """
    if center is None or not isinstance(module, ScoresPositions) or not {"ra", "dec"} <= set(table.columns):
        return 0
    rows = no_astrometry_rows(prepared.flags, prepared.feature_names)
    ra = table["ra"].to_numpy(dtype=float, na_value=np.nan)
    dec = table["dec"].to_numpy(dtype=float, na_value=np.nan)
    rows &= np.isfinite(ra) & np.isfinite(dec)
    if not rows.any():
        return 0
    xi, eta = gnomonic_project(ra[rows], dec[rows], float(center[0]), float(center[1]))
    p = module.position_member_prob(np.hypot(xi, eta))
    if not np.isfinite(p).all():
        return 0
    k = int(module.hparams.n_clusters)
    prob = np.repeat(((1.0 - p) / (k - 1))[:, None], k, axis=1)
    prob[:, group] = p
    index = np.flatnonzero(rows)
    for j in range(k):
        out.loc[index, f"prob_{j}"] = prob[:, j]
    out.loc[index, "label"] = prob.argmax(axis=1)
    out.loc[index, "member_prob"] = p
    out.loc[index, "entropy"] = entropy(prob)
    if "member_prob_std" in out.columns:
        out.loc[index, "member_prob_std"] = np.sqrt(p * (1.0 - p))
    out.loc[index, "flag"] = FLAG_NO_ASTROMETRY
    return int(rows.sum())
