"""What every clustering phase shares: which of its groups is the globular cluster."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.inference.membership import choose_cluster_group


class ClusterMembership:
    """Mixin for LightningModules with ``predict_proba``, a ``cluster_group`` buffer and hparams
    ``cluster_index`` (the user's choice, or None) and ``preprocessing`` (the data's state)."""

    @property
    def member_group(self) -> int:
        """The group that is the cluster: the user's ``cluster_index`` if set, else the decided one."""
        if self.hparams.cluster_index is not None:
            return int(self.hparams.cluster_index)
        return int(self.cluster_group)

    def physical_features(self, x: Tensor) -> tuple[np.ndarray, list[str]]:
        """Standardised features back in physical units, with their names (for the cluster rule)."""
        prep = self.hparams.preprocessing
        values = x.detach().cpu().numpy()
        if not prep:
            return values, [f"feature_{i}" for i in range(values.shape[1])]
        return FeatureScaler.from_state(prep["scaler"]).inverse_transform(values), list(prep["feature_names"])

    @torch.no_grad()
    def decide_member_group(self, x: Tensor, q: Tensor | None = None) -> int:
        """Apply the cluster rule of :mod:`grasp_dl.inference.membership` to ``x`` and remember the answer."""
        q = self.predict_proba(x) if q is None else q
        group = choose_cluster_group(q.cpu().numpy(), *self.physical_features(x))
        self.cluster_group.fill_(group)
        if hasattr(self, "fit_position_model"):
            # The position model that scores stars without astrometry follows the decision.
            self.fit_position_model(x, q)
        return group
