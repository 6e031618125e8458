"""StellarCatalogDataModule: one catalogue, prepared once, held as one tensor, batched by slices."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from grasp_dl.data.astrometry import StarData, astrometry_columns, no_astrometry_rows, star_data
from grasp_dl.data.catalog import read_catalog
from grasp_dl.data.loader import TensorBatchLoader, is_block, train_batch_limit
from grasp_dl.data.prepare import DEFAULT_FEATURES, PreparedCatalog, prepare_stellar_data
from grasp_dl.data.scaling import FeatureScaler
from grasp_dl.data.simulate import simulate_catalog
from grasp_dl.data.sky import gnomonic_project
from grasp_dl.data.training_catalog import CatalogNeeds, TrainingCatalog
from grasp_dl.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: Below this many usable stars a run still finishes but warns that it learnt nothing useful.
MIN_USEFUL_STARS = 500
QUALITY_KEYS = ("ruwe_max", "parallax_over_error_min", "mag_min", "mag_max")


def _plain(value: Any) -> Any:
    """Hydra hands DictConfig/ListConfig; keep plain Python containers in hparams and state."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


class StellarCatalogDataModule(L.LightningDataModule):
    """A stellar catalogue (file, DataFrame or simulation) as training and validation batches.

    Give exactly one of ``path`` (any format :func:`read_catalog` reads), ``catalog`` (an
    in-memory table) or ``simulate`` (keyword arguments of :func:`simulate_catalog`). The
    catalogue is prepared once (:func:`prepare_stellar_data`), standardised by a scaler fitted
    on all usable stars, and split into training and validation rows by ``seed``. ``cluster``
    names a globular cluster (:mod:`grasp_dl.data.clusters`, forgiving spelling): its published
    centre is used when ``center`` is None, and predictions compare the recovered astrometry
    with the published one; an unknown name raises :class:`~grasp_dl.runtime.errors.CatalogError`.

    Training batches come in blocks of ``batches_per_step`` mini-batches of ``batch_size``
    stars: one Lightning training step takes one optimiser step per mini-batch, so the
    framework's fixed cost per step is shared (the training itself is the same).
    """

    def __init__(
        self,
        path: str | None = None,
        catalog: Any = None,
        simulate: Mapping[str, Any] | None = None,
        columns: Mapping[str, str] | None = None,
        features: Sequence[str] = DEFAULT_FEATURES,
        center: Sequence[float] | None = None,
        cluster: str | None = None,
        quality: Mapping[str, float | None] | None = None,
        outlier_removal: bool = True,
        outlier_sigma: float = 10.0,
        scaling: str = "robust",
        val_fraction: float = 0.1,
        batch_size: int = 256,
        batches_per_step: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        sources = [s for s in (path, catalog, simulate) if s is not None]
        if len(sources) != 1:
            raise ConfigError(
                "give exactly one catalogue source: data.path=FILE, a catalog table in Python, "
                f"or data.simulate (got {len(sources)})"
            )
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}")
        if int(batches_per_step) < 1:
            raise ConfigError(f"data.batches_per_step must be a positive integer, got {batches_per_step}")
        quality = dict(_plain(quality) or {})
        unknown = set(quality) - set(QUALITY_KEYS)
        if unknown:
            raise ConfigError(f"unknown quality cut(s) {sorted(unknown)}: choose from {', '.join(QUALITY_KEYS)}")
        self.path = path
        self.catalog = catalog
        self.simulate = _plain(simulate)
        self.columns = _plain(columns)
        self.features = list(_plain(features))
        self.center = _plain(center)
        # A cluster by name (grasp_dl.data.clusters): its published centre unless data.center is given.
        self.cluster = None
        if cluster is not None:
            from grasp_dl.data.clusters import literature_cluster

            record = literature_cluster(str(cluster))
            self.cluster = record.name
            if self.center is None:
                self.center = list(record.center)
        self.quality = quality
        self.outlier_removal = outlier_removal
        self.outlier_sigma = float(outlier_sigma)
        self.scaling = scaling
        self.val_fraction = float(val_fraction)
        self.batch_size = int(batch_size)
        self.batches_per_step = int(batches_per_step)
        self.seed = int(seed)
        self.table: pd.DataFrame | None = None
        self.prepared: PreparedCatalog | None = None
        self.scaler: FeatureScaler | None = None
        self.data: torch.Tensor | None = None
        self.train_index: torch.Tensor | None = None
        self.val_index: torch.Tensor | None = None
        # Copies of the split tensors on the training device, made once (not per batch).
        self._device_copies: dict[tuple[str, str], torch.Tensor] = {}
        self._star_cache: dict[tuple[str, str, bool], StarData] = {}

    # ------------------------------------------------------------------ loading
    def load_table(self) -> pd.DataFrame:
        """Read (or simulate) the catalogue once and keep it for prediction output."""
        if self.table is None:
            if self.simulate is not None:
                self.table = simulate_catalog(**self.simulate)
            else:
                self.table = read_catalog(self.path if self.path is not None else self.catalog, self.columns)
        return self.table

    def prepare_options(self) -> dict[str, Any]:
        """Keyword arguments of prepare_stellar_data() this module uses (stored in checkpoints)."""
        q = self.quality
        mag_range = None
        if q.get("mag_min") is not None or q.get("mag_max") is not None:
            mag_range = [q.get("mag_min"), q.get("mag_max")]
        return {
            "features": list(self.features),
            "outlier_removal": bool(self.outlier_removal),
            "outlier_sigma": self.outlier_sigma,
            "ruwe_max": q.get("ruwe_max"),
            "parallax_over_error_min": q.get("parallax_over_error_min"),
            "mag_range": mag_range,
        }

    def setup(self, stage: str | None = None) -> None:
        """Prepare, standardise and split the catalogue; idempotent, so callers may run it early."""
        if self.data is not None:
            return
        table = self.load_table()
        self.prepared = prepare_stellar_data(table, center=self.center, **self.prepare_options())
        n = self.prepared.n_usable
        if n < MIN_USEFUL_STARS:
            log.warning(
                "only %d usable stars (of %d rows): too few to learn anything meaningful; "
                "the run will finish but its groups are not to be trusted",
                n,
                self.prepared.n_rows,
            )
        self.scaler = FeatureScaler(self.scaling).fit(self.prepared.features)
        self.data = torch.from_numpy(self.scaler.transform(self.prepared.features))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * n)) if n >= 4 else 0
        self.val_index = order[:n_val].sort().values
        self.train_index = order[n_val:].sort().values

    # ------------------------------------------------------------------ views
    @property
    def input_dim(self) -> int:
        """Number of features per star."""
        return len(self.features)

    @property
    def feature_names(self) -> list[str]:
        """Names of the prepared features (xi/eta in place of ra/dec)."""
        self._require_setup()
        return list(self.prepared.feature_names)

    @property
    def has_validation(self) -> bool:
        """Whether any rows were set aside for validation."""
        self._require_setup()
        return len(self.val_index) > 0

    def preprocessing_state(self) -> dict[str, Any]:
        """Everything prediction needs to prepare a new catalogue the same way (plain types)."""
        self._require_setup()
        return {
            "feature_names": self.feature_names,
            "center": list(self.prepared.center) if self.prepared.center is not None else None,
            "columns": self.columns,
            "scaler": self.scaler.state_dict(),
            # The astrometry whose measurement errors error-aware models use (and whose *_error
            # columns a catalogue then needs).
            "astrometry": astrometry_columns(self.features),
            # the literature cluster (data.cluster) whose published astrometry predictions are checked against
            "cluster": self.cluster,
            **self.prepare_options(),
        }

    # ------------------------------------------------------------------ measurement errors
    def star_data(
        self, split: str = "train", photometry: bool = False, what: str = "the error-aware model"
    ) -> StarData:
        """Astrometry, error covariances, radius (and photometry) of a split's rows, in ``data`` order.

        ``what`` names the setting that asked, for the error message when error columns are missing.
        """
        self._require_setup()
        if self.prepared.center is None:
            raise ConfigError(
                f"{what} needs the cluster centre: include ra and dec in data.features or give data.center"
            )
        key = ("stars", split, bool(photometry))
        if key not in self._star_cache:
            rows = self.usable_rows()
            stars = star_data(
                self.table.iloc[rows], self.prepared.center, astrometry_columns(self.features), photometry, what
            )
            index = {"train": self.train_index, "val": self.val_index, "all": None}[split]
            self._star_cache[key] = stars if index is None else stars.subset(index.numpy())
        return self._star_cache[key]

    def stars_without_astrometry(self, what: str | None = "the error-aware model") -> StarData:
        """The rows left out only for lacking astrometry (2-parameter sources) with a position: radius, position, photometry.

        Every process gets all of them (they are not split); their astrometry is NaN.
        """
        self._require_setup()
        if self.prepared.center is None:
            raise ConfigError(
                f"{what} needs the cluster centre: include ra and dec in data.features or give data.center"
            )
        key = ("without_astrometry",)
        if key not in self._star_cache:
            rows = no_astrometry_rows(self.prepared.flags, self.prepared.feature_names)
            for column in ("ra", "dec"):
                rows &= np.isfinite(self.table[column].to_numpy(dtype=float, na_value=np.nan))
            quantities = astrometry_columns(self.features)
            table = self.table.iloc[np.flatnonzero(rows)]
            self._star_cache[key] = star_data(table, self.prepared.center, quantities, True, what or "")
        return self._star_cache[key]

    def radius(self, split: str = "train") -> np.ndarray:
        """Distance from the centre (degrees) of a split's rows, in ``data`` order."""
        self._require_setup()
        if self.prepared.center is None:
            raise ConfigError(
                "the radius needs the cluster centre: include ra and dec in data.features or give data.center"
            )
        rows = self.usable_rows()
        xi, eta = gnomonic_project(
            self.table["ra"].to_numpy(float)[rows], self.table["dec"].to_numpy(float)[rows], *self.prepared.center
        )
        r = np.hypot(xi, eta)
        index = {"train": self.train_index, "val": self.val_index, "all": None}[split]
        return r if index is None else r[index.numpy()]

    def noise_factors(self, split: str = "train") -> torch.Tensor:
        """Per-star maps from unit normal draws to noise in the standardised features, (n, features, d).

        Row i holds the Cholesky factor of star i's error covariance of (pmra, pmdec[, parallax]),
        placed at those features' positions and divided by their scaling, so ``x + L_i @ eps``
        is the star re-observed with its own errors (noise augmentation). Features that are not
        astrometry get no noise.
        """
        stars = self.star_data(split, what="model.noise_augmentation")
        names = self.feature_names
        quantities = astrometry_columns(self.features)
        cov = np.nan_to_num(stars.covariances)
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(cov.shape[-1]))
        factors = np.zeros((len(cov), len(names), len(quantities)), dtype=np.float32)
        scale = np.asarray(self.scaler.scale_, dtype=float)
        for row, quantity in enumerate(quantities):
            if quantity in names:
                col = names.index(quantity)
                factors[:, col, :] = chol[:, row, :] / scale[col]
        return torch.from_numpy(factors)

    def training_catalog(self, needs: CatalogNeeds, device: torch.device | str | None = None) -> TrainingCatalog:
        """The training rows as a clustering module needs them (the :class:`TrainingCatalogSource` protocol).

        Parameters
        ----------
        needs : CatalogNeeds
            What the module needs beyond the features; only that is computed.
        device : torch.device, str or None
            Where the features and noise factors go (None: the trainer's device, else the CPU).

        Returns
        -------
        TrainingCatalog
            Features, and star data, radius and noise factors where asked for, in ``train_index`` order.

        Raises
        ------
        CatalogError
            When the catalogue lacks the columns a need requires (named with the setting that asked).
        ConfigError
            When a need requires the cluster centre and the data has none.
        """
        catalog = TrainingCatalog(
            features=self.split_tensor("train", device),
            stars=self.star_data("train", needs.photometry, what=needs.stars) if needs.stars else None,
            radius=self.radius("train") if needs.radius else None,
            noise_factors=self.noise_factors("train") if needs.noise_factors else None,
            without_astrometry=self.stars_without_astrometry(needs.stars) if needs.no_astrometry else None,
        )
        return catalog if device is None else catalog.to(device)

    def _require_setup(self) -> None:
        if self.data is None:
            raise RuntimeError("call setup() before using the prepared catalogue")

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def split_tensor(self, split: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The standardised rows of a split ('train', 'val', 'all') on ``device``, copied there once.

        On a GPU the whole catalogue then sits in device memory and batches are slices of it:
        no host-to-device copy per batch.
        """
        self._require_setup()
        device = torch.device(device) if device is not None else self._device()
        key = (split, str(device))
        if key not in self._device_copies:
            index = {"train": self.train_index, "val": self.val_index, "all": None}[split]
            rows = self.data if index is None else self.data[index]
            self._device_copies[key] = rows.to(device)
        return self._device_copies[key]

    def __getstate__(self) -> dict[str, Any]:
        # Device copies stay with the process that made them (ddp_spawn pickles the module).
        return {**self.__dict__, "_device_copies": {}, "_star_cache": {}}

    def _loader(
        self, split: str, shuffle: bool, batches_per_block: int | None = None, max_batches: int | None = None
    ) -> TensorBatchLoader:
        rank, world = self._rank_and_world()
        return TensorBatchLoader(
            self.split_tensor(split),
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
            drop_singleton=shuffle,
            batches_per_block=batches_per_block,
            max_batches=max_batches,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches of this module are slices of tensors already on the training device: pass them on.

        Lightning's generic transfer walks the batch as a collection on every step, which costs
        as much as a training step of the default network at batch 256 on a CPU. Anything not
        on ``device`` yet still goes through it.
        """
        batches = batch if is_block(batch) else [batch]
        if all(
            isinstance(part, (tuple, list))
            and all(isinstance(item, torch.Tensor) and item.device == device for item in part)
            for part in batches
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> TensorBatchLoader:
        """Blocks of ``batches_per_step`` shuffled batches of the training rows; each batch's
        second item indexes train_index.

        A whole-number ``trainer.limit_train_batches`` counts mini-batches: the loader yields
        only the first that many of each epoch, so Lightning's own limit (counted in blocks)
        never binds (:mod:`grasp_dl.engine.block_settings`).

        Raises
        ------
        ConfigError
            For a ``limit_train_batches`` fraction other than 0 and 1.0 with ``batches_per_step`` > 1.
        """
        self._require_setup()
        trainer = getattr(self, "trainer", None)
        limit = None if trainer is None else train_batch_limit(trainer.limit_train_batches, self.batches_per_step)
        return self._loader("train", shuffle=True, batches_per_block=self.batches_per_step, max_batches=limit)

    def val_dataloader(self) -> TensorBatchLoader | list:
        """Validation rows in order (no validation when val_fraction is 0)."""
        if not self.has_validation:
            return []
        return self._loader("val", shuffle=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        """Every usable star in catalogue order."""
        self._require_setup()
        return self._loader("all", shuffle=False)

    def usable_rows(self) -> np.ndarray:
        """Positions in the input table of the rows in ``data`` (the mask as indices)."""
        self._require_setup()
        return np.flatnonzero(self.prepared.mask)
