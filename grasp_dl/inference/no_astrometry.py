"""Score stars without astrometry (Gaia 2-parameter solutions) from their position (and photometry).

With no proper motion or parallax the deep models cannot place such a star, but its position
still says something: the cluster dominates near the centre, the field in the outskirts. The
module's position model (cluster share and Plummer scale fitted to its own member probabilities,
:mod:`grasp_dl.models.ingredients`) gives

    member_prob = share Plummer(r) / (share Plummer(r) + (1 - share) / (pi R^2))

a wide, rarely decisive probability. These rows are flagged ``scored:no_astrometry``; the other
groups share 1 - member_prob equally and VaDE's ``member_prob_std`` is sqrt(p (1 - p)).

A model that scores stars with their photometry too (``model=multimodal``,
:class:`~grasp_dl.runtime.capabilities.SpreadsMembershipOfStars`) scores them from their radius and
their colour-magnitude diagram instead: every group's probability and the ensemble's spread are its
own. The flag is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from grasp_dl.data.astrometry import astrometry_columns, no_astrometry_rows, star_data
from grasp_dl.data.prepare import PreparedCatalog
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.membership.rules import entropy
from grasp_dl.runtime.capabilities import ScoresPositions, SpreadsMembershipOfStars

FLAG_NO_ASTROMETRY = "scored:no_astrometry"


def score_without_astrometry(
    out: pd.DataFrame,
    module: Any,
    table: pd.DataFrame,
    prepared: PreparedCatalog,
    center: Sequence[float] | None,
    group: int,
) -> int:
    """Fill the rows of ``out`` that lack only astrometry from their position (and photometry); return how many.

    Needs the module's fitted position model (or its photometric scoring) and a centre; otherwise
    the rows stay unscored.
    """
    photometric = isinstance(module, SpreadsMembershipOfStars)
    if center is None or not (photometric or isinstance(module, ScoresPositions)):
        return 0
    if not {"ra", "dec"} <= set(table.columns):
        return 0
    rows = no_astrometry_rows(prepared.flags, prepared.feature_names)
    ra = table["ra"].to_numpy(dtype=float, na_value=np.nan)
    dec = table["dec"].to_numpy(dtype=float, na_value=np.nan)
    rows &= np.isfinite(ra) & np.isfinite(dec)
    if not rows.any():
        return 0
    std = None
    if photometric:
        stars = star_data(
            table.iloc[np.flatnonzero(rows)],
            center,
            astrometry_columns(prepared.feature_names),
            photometry=True,
            what=module.catalog_needs().stars,
        )
        prob, spread = module.predict_proba_spread(stars)
        p, std = prob[:, group], None if spread is None else spread[:, group]
    else:
        xi, eta = gnomonic_project(ra[rows], dec[rows], float(center[0]), float(center[1]))
        p = module.position_member_prob(np.hypot(xi, eta))
        if not np.isfinite(p).all():
            return 0
        k = int(module.hparams.n_clusters)
        prob = np.repeat(((1.0 - p) / (k - 1))[:, None], k, axis=1)
        prob[:, group] = p
    index = np.flatnonzero(rows)
    k = prob.shape[1]
    for j in range(k):
        out.loc[index, f"prob_{j}"] = prob[:, j]
    out.loc[index, "label"] = prob.argmax(axis=1)
    out.loc[index, "member_prob"] = p
    out.loc[index, "entropy"] = entropy(prob)
    if "member_prob_std" in out.columns:
        out.loc[index, "member_prob_std"] = np.sqrt(p * (1.0 - p)) if std is None else std
    out.loc[index, "flag"] = FLAG_NO_ASTROMETRY
    return int(rows.sum())
