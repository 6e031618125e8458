"""grasp-dl's Hydra plugin (Hydra loads plugins from the ``hydra_plugins`` namespace package only).

:class:`SurveySweeper`, the sweeper of ``grasp-dl survey`` (``conf/hydra/sweeper/survey.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # Hydra exports no public base for it


class SurveySweeper(BasicSweeper):
    """Hydra's basic sweeper, checking the first job of each batch only (``hydra/sweeper=survey``).

    Before launching a batch, Hydra composes every job's config in the launching process to catch
    a bad override early (``validate_batch_is_legal``), about 0.25 s a job: 7 s of the 31-field
    survey during which no job runs, and each job composes its config again where it runs. The
    survey's jobs differ only in ``cluster=NAME`` (a free string), so the first job's composition
    checks them all.
    """

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose the first job's config of ``batch`` (raises as Hydra's own check does)."""
        super().validate_batch_is_legal(list(batch)[:1])


__all__ = ["SurveySweeper"]
