"""The pooled membership of anchored deep models: the pool, the kept start mixture, the host's switch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grasp_dl.data.astrometry import StarData
from grasp_dl.mixtures.cluster_field import ClusterFieldMixture
from grasp_dl.models.start_pool import (
    POOL_KEY,
    describe_pool,
    pool_cluster_probability,
    pool_groups,
    restore_start_mixture,
    start_cluster_probability,
    start_pool_state,
)
from tests.test_anchoring import NAMES, _field_and_cluster, _ToyModule


def test_pool_is_the_geometric_mean_of_the_two_opinions() -> None:
    start = np.array([0.999, 0.001, 0.5, 0.9, np.nan])
    network = np.array([0.3, 0.7, 0.8, 0.9, 0.6])
    pooled = pool_cluster_probability(start, network)
    # a confident start outvotes an unsure network; an unsure start leaves the decision to the network
    assert pooled[0] > 0.9 and pooled[1] < 0.1 and pooled[2] > 0.5
    # two equal opinions give that opinion back (no double counting), a missing start keeps the network's
    assert pooled[3] == pytest.approx(0.9) and pooled[4] == pytest.approx(0.6)
    np.testing.assert_allclose(pool_cluster_probability(network[:4], start[:4]), pooled[:4])


def test_pool_groups_keep_the_other_groups_proportions() -> None:
    q = np.array([[0.2, 0.6, 0.2], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    out = pool_groups(q, 1, np.array([0.99, 0.5, 0.01]))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert out[0, 1] > 0.6 and out[0, 0] == pytest.approx(out[0, 2])
    assert out[1, 1] < 0.5 and out[1, 0] == pytest.approx(out[1, 2])
    assert out[2, 0] == pytest.approx(out[2, 2])  # the network gave the others nothing: they share evenly


def _fitted_start(seed: int = 0) -> tuple[ClusterFieldMixture, np.ndarray, np.ndarray]:
    x, truth = _field_and_cluster(seed=seed)
    stars = StarData(x[:, 2:4], np.zeros((len(x), 2, 2)), np.hypot(x[:, 0], x[:, 1]))
    mixture = ClusterFieldMixture(n_field=1, n_starts=1, use_errors=False, seed=seed).fit(stars)
    return mixture, x, truth


def test_the_kept_start_scores_stars_as_the_fitted_one_after_a_json_round_trip() -> None:
    mixture, x, truth = _fitted_start()
    state = json.loads(json.dumps(start_pool_state(mixture, 0)))
    restored = restore_start_mixture(state)
    before = start_cluster_probability(mixture, 0, x, NAMES)
    np.testing.assert_allclose(start_cluster_probability(restored, 0, x, NAMES), before, rtol=1e-10)
    assert ((before > 0.5) == truth).mean() > 0.98
    # features without positions cannot be scored by a spatial start
    assert start_cluster_probability(restored, 0, x[:, 2:], NAMES[2:]) is None
    assert "component 0" in describe_pool(state) and describe_pool(None) is None
    with pytest.raises(ValueError, match="unknown start mixture kind"):
        restore_start_mixture({**state, "kind": "nope"})
    photometric = ClusterFieldMixture(photometry=True)
    assert start_pool_state(photometric, 0) is None


def test_cluster_field_start_round_trips() -> None:
    x, _ = _field_and_cluster(1500, 100)
    stars = StarData(x[:, 2:4], np.tile(np.eye(2) * 0.01, (len(x), 1, 1)), np.hypot(x[:, 0], x[:, 1]))
    mixture = ClusterFieldMixture(n_field=1, n_starts=1, max_iter=30).fit(stars)
    restored = restore_start_mixture(json.loads(json.dumps(start_pool_state(mixture, 0))))
    np.testing.assert_allclose(
        start_cluster_probability(restored, 0, x, NAMES), start_cluster_probability(mixture, 0, x, NAMES)
    )


def test_host_pools_only_its_start_group_and_only_when_switched_on() -> None:
    mixture, x, truth = _fitted_start()
    # a network that lost a third of the cluster's members (probability 0.45 where the start is sure)
    network = np.where(truth, 0.9, 0.02)
    network[np.flatnonzero(truth)[::3]] = 0.45
    q = np.column_stack([network, 1.0 - network])
    module = _ToyModule(np.log(q), x)
    catalog = torch.zeros(len(x), 1)
    qt = torch.as_tensor(q, dtype=torch.float32)
    assert module.pooled_proba(catalog, qt) is qt  # no kept start: the network's own
    module.fit_results[POOL_KEY] = start_pool_state(mixture, 0)
    pooled = module.pooled_proba(catalog, qt).numpy()
    np.testing.assert_allclose(pooled.sum(axis=1), 1.0, atol=1e-6)
    assert ((pooled[:, 0] > 0.5) == truth).mean() > ((q[:, 0] > 0.5) == truth).mean()
    assert ((pooled[:, 0] > 0.5) & truth).sum() > ((q[:, 0] > 0.5) & truth).sum()
    module.hparams["anchor"] = {"pool": False}
    assert module.pooled_proba(catalog, qt) is qt
    module.hparams["anchor"] = {}
    module.decided_group.fill_(1)  # another group named the cluster: nothing to pool
    assert module.pooled_proba(catalog, qt) is qt


def test_an_error_aware_start_is_pooled_with_each_stars_errors() -> None:
    x, truth = _field_and_cluster(seed=1)
    rng = np.random.default_rng(1)
    error = np.where(rng.random(len(x)) < 0.3, 1.0, 0.02)  # a third of the stars faint, 1 mas/yr errors
    observed = x.copy()
    observed[:, 2:4] += rng.normal(0, 1, (len(x), 2)) * error[:, None]
    covariances = np.einsum("n,ij->nij", error**2, np.eye(2))
    stars = StarData(observed[:, 2:4], covariances, np.hypot(x[:, 0], x[:, 1]))
    mixture = ClusterFieldMixture(n_field=1, n_starts=1, seed=1).fit(stars)
    state = start_pool_state(mixture, 0)
    assert state["use_errors"] is True and start_pool_state(_fitted_start()[0], 0)["use_errors"] is False
    q = np.column_stack([np.full(len(x), 0.5), np.full(len(x), 0.5)])  # an undecided network
    module = _ToyModule(np.log(q), observed)
    catalog = torch.zeros(len(x), 1)
    assert not module.pool_uses_errors
    module.fit_results[POOL_KEY] = state
    assert module.pool_uses_errors
    with_errors = module.pooled_proba_stars(catalog, stars).numpy()[:, 0]
    qt = torch.as_tensor(q, dtype=torch.float32)
    assert module.pooled_proba(catalog, qt) is qt  # without the errors an error-aware start is not pooled
    exact = pool_cluster_probability(start_cluster_probability(mixture, 0, observed, NAMES), q[:, 0])
    faint_members = truth & (error > 0.5)
    # scored with their errors, faint members scattered off the cluster's motion stay members
    assert (with_errors[faint_members] > 0.5).mean() > (exact[faint_members] > 0.5).mean() + 0.2
    assert ((with_errors > 0.5) == truth).mean() > 0.97
    module.hparams["anchor"] = {"pool": False}
    assert not module.pool_uses_errors
    np.testing.assert_allclose(module.pooled_proba_stars(catalog, stars).numpy(), q, atol=1e-6)


def test_a_deep_model_that_never_agreed_with_its_start_reports_the_start_alone() -> None:
    mixture, x, truth = _fitted_start()
    start = np.column_stack([np.where(truth, 0.95, 0.02), np.where(truth, 0.05, 0.98)])
    module = _ToyModule(np.log(start), x)
    module.set_anchor(start, 0)
    module.fit_results[POOL_KEY] = start_pool_state(mixture, 0)
    with torch.no_grad():
        module.logits[:, 0] = 5.0  # group 0 swallows the field...
    module._best_state = module._copy_state()  # ...and no earlier state of the model agreed better
    catalog = torch.zeros(len(x), 1)
    report = module.guard_start(catalog)
    assert report.drifted and "the membership is the start's" in report.action
    assert module.fit_results[POOL_KEY]["start_only"] is True
    q = module.network_proba(catalog)
    pooled = module.pooled_proba(catalog, q).numpy()[:, 0]
    np.testing.assert_allclose(pooled, start_cluster_probability(mixture, 0, x, NAMES), rtol=1e-5, atol=1e-6)
    assert ((pooled > 0.5) == truth).mean() > 0.98 and ((q.numpy()[:, 0] > 0.5) == truth).mean() < 0.1
    np.testing.assert_allclose(pool_cluster_probability(np.array([0.9]), np.array([0.1]), 1.0), [0.9])


def test_the_deep_models_say_shrinks_with_its_agreement_with_the_start() -> None:
    from grasp_dl.models.start_pool import start_weight

    assert start_weight({}) == 0.5 and start_weight({"agreement": 1.0}) == 0.5
    assert start_weight({"agreement": 0.6}) == pytest.approx(0.7) and start_weight({"agreement": 0.0}) == 1.0
    assert start_weight({"agreement": 0.9, "start_only": True}) == 1.0
    mixture, x, truth = _fitted_start()
    start = np.column_stack([np.where(truth, 0.95, 0.02), np.where(truth, 0.05, 0.98)])
    module = _ToyModule(np.log(start), x)
    module.set_anchor(start, 0)
    module.fit_results[POOL_KEY] = start_pool_state(mixture, 0)
    report = module.guard_start(torch.zeros(len(x), 1))
    assert module.fit_results[POOL_KEY]["agreement"] == report.agreement == 1.0
    assert report.extra["start_weight"] == 0.5
