"""``model.n_clusters=auto``: the number of groups by the BIC of the start mixture.

For every k of ``model.n_clusters_range``: the ``init=xd`` mixture (its likelihood includes each
star's errors and position), else a full-covariance Gaussian mixture of the standardised
features. The curve goes into ``fit_results['n_clusters_curve']`` and the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.mixture import GaussianMixture

from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_RANGE = (2, 5)


def k_values(k_range: Sequence[int] | None) -> list[int]:
    """The numbers of groups ``model.n_clusters_range=[low, high]`` spans.

    Parameters
    ----------
    k_range : sequence of int or None
        ``[low, high]``; None takes the default [2, 5].

    Returns
    -------
    list of int

    Raises
    ------
    ConfigError
        Unless 2 <= low <= high.
    """
    lo, hi = (int(v) for v in (k_range or DEFAULT_RANGE))
    if not 2 <= lo <= hi:
        raise ConfigError(f"model.n_clusters_range={[lo, hi]} must be [low, high] with 2 <= low <= high")
    return list(range(lo, hi + 1))


def choose_n_clusters(datamodule: Any, options: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """The k of lowest BIC over ``options['n_clusters_range']``.

    Parameters
    ----------
    datamodule : StellarCatalogDataModule
        The set-up data module (its training rows, and star data with ``init='xd'``).
    options : mapping
        The model's options: ``n_clusters_range``, ``seed``, ``init``, ``xd``.

    Returns
    -------
    tuple of int and dict
        The chosen k and the curve ``{criterion, k, bic, chosen}``.

    Raises
    ------
    ConfigError
        For a bad ``n_clusters_range``.
    """
    from grasp_dl.models.ingredients import xd_options, xd_start_mixture

    ks = k_values(options.get("n_clusters_range"))
    seed = int(options.get("seed", 0) or 0)
    bics: list[float] = []
    if options.get("init") == "xd":
        xd = xd_options(options.get("xd"))
        stars = datamodule.star_data("train", xd["photometry"], what="model.n_clusters=auto with model.init=xd")
        for k in ks:
            bics.append(xd_start_mixture(k, seed, xd).fit(stars).bic())
        criterion = "bic of the error-deconvolved spatial mixture (model.init=xd)"
    else:
        x = datamodule.split_tensor("train", "cpu").double().numpy()
        for k in ks:
            gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(x)
            bics.append(float(gmm.bic(x)))
        criterion = "bic of a full-covariance Gaussian mixture on the standardised features"
    chosen = ks[int(np.argmin(bics))]
    curve = {"criterion": criterion, "k": ks, "bic": [float(b) for b in bics], "chosen": chosen}
    log.info("n_clusters=auto: %s; k=%s bic=%s -> %d", criterion, ks, [round(b, 1) for b in bics], chosen)
    return chosen, curve
