"""What a trained model can do beyond group probabilities, as ``typing.Protocol``s checked with ``isinstance``.

Training, prediction and the figures ask a module for a capability through these protocols rather
than by looking for attribute names, so each capability is declared in one place. They live in the
lowest layer because the figures (below the models) ask too; a user's own module has a capability
by defining the method, nothing to register.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ScoresStarsWithErrors(Protocol):
    """Scores stars with their own astrometry and error covariances (``model=xd``'s deconvolved mixture)."""

    def predict_proba_stars(self, stars: Any) -> Any:
        """Group probabilities, shape (n, n_clusters), of a ``StarData``."""


@runtime_checkable
class PoolsWithStart(Protocol):
    """Reports a membership pooled with the start mixture's (the anchored deep models, models/start_pool.py)."""

    def pool_start(self, x: Any, stars: Any = None) -> tuple[Any, float] | None:
        """The start's cluster probability of each star and its weight in the pool, or None."""


@runtime_checkable
class SamplesMembership(Protocol):
    """Gives each star's membership a spread over posterior draws (VaDE: ``member_prob_std``)."""

    def predict_proba_samples(
        self, x: Any, n_samples: int | None = None, rows: Any = None, pool: Any = None
    ) -> tuple[Any, Any]:
        """Mean and standard deviation of the group probabilities over draws."""


@runtime_checkable
class SpreadsMembershipOfStars(Protocol):
    """Scores stars (astrometry, errors, photometry) with an ensemble: its mean and spread (``model=multimodal``)."""

    def predict_proba_spread(self, stars: Any) -> tuple[Any, Any]:
        """Mean and standard deviation (None where there is no ensemble yet) of the group probabilities of a ``StarData``."""


@runtime_checkable
class FitsClusterAstrometry(Protocol):
    """Fits the cluster's own mean astrometry (``model=xd``: the deconvolved mean and dispersion)."""

    def cluster_astrometry(self) -> dict[str, float]:
        """The fitted astrometry, for summaries."""


@runtime_checkable
class ScoresPositions(Protocol):
    """Scores stars without astrometry from their radius alone (the position model of a clustering module)."""

    def position_member_prob(self, radius: Any) -> Any:
        """Member probability per radius (NaN when no position model was fitted)."""


@runtime_checkable
class HasLatentSpace(Protocol):
    """Maps standardised features into a latent space (the networks)."""

    def embed(self, x: Any) -> Any:
        """Latent points of standardised features."""


@runtime_checkable
class GroupProbabilities(Protocol):
    """Group probabilities of standardised features (every clustering module)."""

    def predict_proba(self, x: Any) -> Any:
        """Shape (n, n_clusters), rows sum to 1."""


@runtime_checkable
class ErrorAwareScoring(Protocol):
    """Says whether it scores stars with their errors, and scores them so (every clustering module)."""

    @property
    def scores_with_errors(self) -> bool:
        """Whether :meth:`proba_with_errors` is the module's reported membership."""

    def proba_with_errors(self, x: Any, stars: Any) -> Any:
        """Group probabilities of stars scored with their errors."""


@runtime_checkable
class ComparesWithNull(Protocol):
    """Compares its fit with a no-cluster null for the verdict (``model=xd`` with ``null_test``)."""

    def null_options(self) -> dict[str, float]:
        """What the verdict's spatial test needs of that comparison (empty when not run)."""


@runtime_checkable
class TakesPublishedCluster(Protocol):
    """Takes a published cluster (``data.cluster=NAME``) as a start and a prior (``model=xd``)."""

    literature: Any


@runtime_checkable
class KeepsFitResults(Protocol):
    """Keeps what training computed beside its weights, in its checkpoints (every clustering module)."""

    fit_results: dict[str, Any]


@runtime_checkable
class FitsPositionModel(Protocol):
    """Refits the position model that scores stars without astrometry from its group probabilities."""

    def fit_position_model(self, x: Any, q: Any) -> None:
        """Fit the cluster's share and scale to the probabilities ``q`` of the features ``x``."""


@runtime_checkable
class LogsEpochMeans(Protocol):
    """Logs a value as its mean over the epoch's batches (the deep models' speed mixin)."""

    def log_epoch_mean(self, name: str, value: Any, batch_size: int, prog_bar: bool = False) -> None:
        """Add ``value`` of a batch of ``batch_size`` to the epoch's mean of ``name``."""


@runtime_checkable
class ViewsAtLastEpochOnly(Protocol):
    """Says whether its TensorBoard views are drawn only after the last epoch (epochs that are many cheap EM steps)."""

    views_at_last_epoch_only: bool
