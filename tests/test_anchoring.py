"""The start anchor: options, drift detection, fallback, and a collapsing case that keeps its start."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from grasp_dl.models.anchoring import (
    ANCHOR_DEFAULTS,
    StartAnchor,
    anchor_options,
    describe_start_vs_end,
    detect_drift,
    group_check,
    membership_agreement,
)
from grasp_dl.runtime.errors import ConfigError

NAMES = ["xi", "eta", "pmra", "pmdec", "parallax"]


def _field_and_cluster(n_field: int = 3000, n_cluster: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Physical features of a flat field (0.2 deg cone, broad PM) and a concentrated, PM-tight cluster."""
    rng = np.random.default_rng(seed)
    r = 0.2 * np.sqrt(rng.random(n_field))
    t = rng.uniform(0, 2 * np.pi, n_field)
    field = np.column_stack(
        [
            r * np.cos(t),
            r * np.sin(t),
            rng.normal(-2, 3, n_field),
            rng.normal(-5, 3, n_field),
            rng.normal(0.2, 0.3, n_field),
        ]
    )
    cluster = np.column_stack(
        [
            rng.normal(0, 0.01, n_cluster),
            rng.normal(0, 0.01, n_cluster),
            rng.normal(1, 0.1, n_cluster),
            rng.normal(-3, 0.1, n_cluster),
            rng.normal(0.1, 0.05, n_cluster),
        ]
    )
    truth = np.r_[np.zeros(n_field, bool), np.ones(n_cluster, bool)]
    return np.vstack([field, cluster]), truth


def test_anchor_options_defaults_and_errors() -> None:
    assert anchor_options(None) == dict(ANCHOR_DEFAULTS)
    assert anchor_options({"weight": 5})["weight"] == 5.0
    with pytest.raises(ConfigError, match="unknown model.anchor"):
        anchor_options({"wieght": 1})
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        anchor_options({"weight": -1})
    with pytest.raises(ConfigError, match="min_agreement must be in"):
        anchor_options({"min_agreement": 1.5})


def test_membership_agreement() -> None:
    a = np.array([1, 1, 0, 0], bool)
    assert membership_agreement(a, a) == 1.0
    assert membership_agreement(a, ~a) == 0.0
    assert membership_agreement(a, np.array([1, 0, 0, 0], bool)) == pytest.approx(2 / 3)
    assert membership_agreement(np.zeros(4, bool), np.zeros(4, bool)) == 1.0


def test_group_check_tells_a_cluster_from_the_field() -> None:
    x, truth = _field_and_cluster()
    cluster = group_check(truth.astype(float), x, NAMES)
    assert cluster.passes and cluster.radius_ratio < 0.2 and cluster.pm_dispersion_ratio < 0.1
    assert cluster.mean_pmra == pytest.approx(1.0, abs=0.05)
    field = group_check((~truth).astype(float), x, NAMES)  # 95% of the stars, spread evenly
    assert not field.passes and field.radius_ratio > 0.7


def test_detect_drift_flags_a_start_turned_into_the_field() -> None:
    x, truth = _field_and_cluster()
    start = np.where(truth, 0.9, 0.05)
    same = detect_drift(start, start, x, NAMES)
    assert not same.drifted and same.agreement == 1.0 and same.reason == "kept"
    # the end's group holds the whole field: low agreement and no longer a cluster
    collapsed = detect_drift(start, np.full(len(truth), 0.95), x, NAMES)
    assert collapsed.drifted and collapsed.agreement < 0.1
    assert "agree" in collapsed.reason and "concentrated" in collapsed.reason
    assert collapsed.start.passes and not collapsed.end.passes
    # a slightly changed membership that is still the cluster is kept
    nudged = start.copy()
    nudged[np.flatnonzero(truth)[:10]] = 0.1
    kept = detect_drift(start, nudged, x, NAMES)
    assert not kept.drifted and kept.agreement > 0.9
    # ... unless it fell far below the best an earlier state reached
    assert detect_drift(start, nudged, x, NAMES, best_agreement=1.0, max_drop=0.01).drifted
    # a start with no members anchors nothing
    assert not detect_drift(np.zeros(len(truth)), start, x, NAMES).drifted


def test_describe_start_vs_end() -> None:
    x, truth = _field_and_cluster()
    start = np.where(truth, 0.9, 0.05)
    line = describe_start_vs_end(detect_drift(start, start, x, NAMES).to_dict())
    assert "start 150 members, mean pm (1.0" in line and "agreement F1 1.00" in line and "drifted" not in line
    report = detect_drift(start, np.full(len(truth), 0.95), x, NAMES)
    report.action = "restored"
    assert "drifted (its members agree" in describe_start_vs_end(report.to_dict())


def test_an_implausible_start_is_not_anchored() -> None:
    x, truth = _field_and_cluster()

    class Host(_ToyModule):
        init_calls = 0

        def physical_features(self, catalog):
            return x, NAMES

    start = np.column_stack([np.where(truth, 0.05, 0.98), np.where(truth, 0.95, 0.02)])  # group 0: the field
    module = Host(np.log(start), x)
    module.hparams["init"] = "xd"  # group 0 is the start's cluster group
    module.setup_ingredients(torch.zeros(len(x), 1), start)
    assert module._anchor_prob is None and module.fit_results["start_vs_end"]["anchored"] is False
    assert "not anchored" in describe_start_vs_end(module.fit_results["start_vs_end"])
    assert module.guard_start(torch.zeros(len(x), 1)) is None
    # a plausible start is anchored
    module.setup_ingredients(torch.zeros(len(x), 1), start[:, ::-1])
    assert module._anchor_prob is not None


class _Base:
    def setup_ingredients(self, catalog, resp) -> None:
        pass


class _ToyModule(StartAnchor, _Base, nn.Module):
    """The smallest host of the anchor: group logits are a free parameter per star."""

    def __init__(self, logits: np.ndarray, x: np.ndarray) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))
        self.register_buffer("decided_group", torch.tensor(0))
        self.hparams: dict[str, Any] = {"anchor": {}, "cluster_group": None}
        self.fit_results: dict[str, Any] = {}
        self.x = x
        self.device = torch.device("cpu")

    @property
    def cluster_group(self) -> int:
        return int(self.decided_group)

    def physical_features(self, catalog: torch.Tensor) -> tuple[np.ndarray, list[str]]:
        return self.x, NAMES

    @torch.no_grad()
    def predict_proba(self, catalog: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits, dim=1)

    def network_proba(self, catalog: torch.Tensor) -> torch.Tensor:
        return self.predict_proba(catalog)


def test_network_proba_has_one_definition_the_anchor_uses() -> None:
    from grasp_dl.models.base import ClusteringModule
    from grasp_dl.models.deep import DeepClusteringModule

    assert "network_proba" not in vars(StartAnchor)  # the host's, not a second copy in the mixin
    assert DeepClusteringModule.network_proba is ClusteringModule.network_proba


def test_guard_falls_back_to_the_weights_that_agreed_with_the_start() -> None:
    x, truth = _field_and_cluster()
    start = np.column_stack([np.where(truth, 0.95, 0.02), np.where(truth, 0.05, 0.98)])
    module = _ToyModule(np.log(start), x)
    module.set_anchor(start, 0)
    catalog = torch.zeros(len(x), 1)
    first = module.guard_start(catalog)
    assert not first.drifted and module.fit_results["start_vs_end"]["agreement"] == 1.0
    # training drifts: group 0 swallows the field
    with torch.no_grad():
        module.logits[:, 0] = 5.0
    report = module.guard_start(catalog)
    assert report.drifted and "restored" in report.action
    assert report.extra["drifted_agreement"] < 0.2 and report.agreement == 1.0
    q = module.predict_proba(catalog).numpy()[:, module.cluster_group]
    assert membership_agreement(q > 0.5, truth) == 1.0
    assert module.fit_results["start_vs_end"]["action"] == report.action
    # stars other than the training ones are not checked
    assert module.guard_start(catalog[:10]) is None


def test_guard_renames_the_start_group_when_another_was_named() -> None:
    x, truth = _field_and_cluster()
    start = np.column_stack([np.where(truth, 0.95, 0.02), np.where(truth, 0.05, 0.98)])
    module = _ToyModule(np.log(start), x)
    module.set_anchor(start, 0)
    module.decided_group.fill_(1)  # the rule named the field group
    report = module.guard_start(torch.zeros(len(x), 1))
    assert report.drifted and "named the start's group 0" in report.action
    assert module.cluster_group == 0 and report.end_group == 0 and report.agreement == 1.0


def test_anchor_loss_pulls_towards_the_start() -> None:
    x, truth = _field_and_cluster(300, 30)
    start = np.column_stack([np.where(truth, 0.95, 0.02), np.where(truth, 0.05, 0.98)])
    module = _ToyModule(np.zeros_like(start), x)
    module.set_anchor(start, 0)
    index = torch.arange(len(x))
    q = torch.softmax(module.logits, 1)
    far = module.anchor_loss(q, index)
    near = module.anchor_loss(torch.as_tensor(start, dtype=torch.float32), index)
    assert far.item() > near.item() > 0
    module.hparams["anchor"] = {"weight": 0}
    assert module.anchor_loss(q, index) is None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vade", "dec"])
def test_collapsing_case_ends_no_worse_than_its_start(tmp_path, model: str) -> None:
    """A faint 2% cluster in a bulge field (hard-field VaDE/DEC drift from their xd start without the anchor)."""
    from omegaconf import open_dict

    from grasp_dl.data.simulate import robustness_field_config
    from grasp_dl.jobs import train as pipeline
    from tests.hydra_configs import compose_config

    cfg = compose_config(
        "train",
        [
            f"model={model}",
            "experiment=hard_field",
            "data=ngc6558",
            "trainer.max_epochs=20",
            "model.pretrain_epochs=10",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            "seed=0",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.logger = None
        cfg.callbacks = None
        cfg.data.simulate = robustness_field_config(0.02, 5000, 1.0, "compact", "faint", seed=0)
    result = pipeline.train(cfg)
    module, dm = result.module, result.datamodule
    truth = dm.table["truth"].to_numpy()[dm.usable_rows()][dm.train_index.numpy()] == "cluster"
    start = module._anchor_prob.cpu().numpy() > 0.5
    train = dm.split_tensor("train")
    own = module.network_proba(train).numpy()[:, module.cluster_group] > 0.5
    stars = dm.star_data("train")
    assert module.pool_uses_errors  # the hard-field start is error-aware: pooled with each star's errors
    end = module.pooled_proba_stars(train, stars).numpy()[:, module.cluster_group] > 0.5
    start_f1, own_f1, end_f1 = (membership_agreement(m, truth) for m in (start, own, end))
    assert start_f1 > 0.6  # the start had the cluster
    assert own_f1 >= start_f1 - 0.1, (start_f1, own_f1)
    assert end_f1 >= start_f1 - 0.05, (start_f1, end_f1)
    report = module.fit_results["start_vs_end"]
    assert set(report) >= {"start", "end", "agreement", "drifted", "action"}
    assert report["start"]["n_members"] == int(start.sum())
    assert report["agreement"] == pytest.approx(membership_agreement(start, own), abs=1e-9)
    assert report["extra"]["pooled_with_start"] is True
    # the kept start travels with the checkpoint: a loaded model pools the same way
    from grasp_dl.inference.predict import load_clustering_module

    path = tmp_path / "anchored.ckpt"
    module.trainer.save_checkpoint(path)
    loaded = load_clustering_module(path)
    pooled = module.pooled_proba_stars(train, stars).numpy()
    np.testing.assert_allclose(loaded.pooled_proba_stars(train, stars).numpy(), pooled, atol=1e-5)
    assert not np.allclose(loaded.network_proba(train).numpy(), pooled)
    assert "start vs end of the clustering phase" in pipeline.summarise(result, cfg)
