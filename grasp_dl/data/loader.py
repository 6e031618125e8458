"""Batches as slices of a tensor that already holds the whole catalogue.

A per-row ``Dataset.__getitem__`` plus default collate costs more than a small network's step
(``docs/src/speed.md``); here an epoch is one gather by a shuffled permutation followed by
contiguous slices (views).

Training loaders can hand out *blocks*: lists of consecutive mini-batches that one Lightning
``training_step`` consumes with one optimiser step each (:mod:`grasp_dl.engine.block_training`),
so the framework's fixed cost per step is paid once per block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from grasp_dl.runtime.errors import ConfigError

#: A mini-batch: standardised features and the rows of the split they come from.
Batch = tuple[Tensor, Tensor]


def is_block(batch: Any) -> bool:
    """Whether ``batch`` is a block (a list of mini-batches) rather than one mini-batch.

    Parameters
    ----------
    batch : object
        What a :class:`TensorBatchLoader` yielded.

    Returns
    -------
    bool
        True for a non-empty list of ``(features, rows)`` tuples.
    """
    return isinstance(batch, list) and bool(batch) and isinstance(batch[0], tuple)


def batch_stars(batch: Any) -> int:
    """Number of stars in a mini-batch or in a block of them.

    Parameters
    ----------
    batch : Batch or list of Batch
        One ``(features, rows)`` mini-batch or a block of them.

    Returns
    -------
    int
        The rows of the mini-batch, or of all mini-batches of the block.
    """
    return sum(len(x) for x, _ in batch) if is_block(batch) else len(batch[0])


class EpochPermutation:
    """Seeded shuffling whose order depends on (seed, epoch) only, so resumed runs repeat it.

    Lightning calls ``set_epoch`` on a loader's ``sampler`` at the start of every epoch.

    Parameters
    ----------
    seed : int, default 0
        Seed of the permutations.
    shuffle : bool, default True
        False keeps the rows in order every epoch.
    """

    def __init__(self, seed: int = 0, shuffle: bool = True) -> None:
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of this epoch.

        Parameters
        ----------
        epoch : int
            The epoch about to start (0-based).
        """
        self.epoch = epoch

    def order(self, n: int, device: torch.device | None = None) -> Tensor:
        """Row order of the current epoch (identity when not shuffling).

        Parameters
        ----------
        n : int
            Number of rows.
        device : torch.device, optional
            Where the returned index lives (the features' device).

        Returns
        -------
        torch.Tensor
            A permutation of ``0 .. n-1`` (int64).
        """
        if not self.shuffle:
            return torch.arange(n, device=device)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=generator).to(device)


class TensorBatchLoader:
    """Iterate over ``(features, row_index)`` batches of a catalogue tensor.

    Under DDP each rank takes every ``world_size``-th row of the permutation (padded by
    wrapping around, as ``DistributedSampler`` does) so all ranks run the same number of steps.
    A trailing batch of a single star is merged away in training (batch norm needs two).
    With ``batches_per_block`` set, it yields lists of that many consecutive batches instead
    (the last list may be shorter); ``len()`` then counts blocks. ``max_batches`` keeps only the
    first mini-batches of each epoch (``trainer.limit_train_batches`` counted in mini-batches).

    Parameters
    ----------
    features : torch.Tensor
        The whole split, stars x features, on the device batches should be on.
    batch_size : int
        Stars per mini-batch.
    shuffle : bool, default False
        Shuffle the rows every epoch (seeded by ``seed`` and the epoch).
    seed : int, default 0
        Seed of the shuffling.
    rank : int, default 0
        This process's rank under DDP.
    world_size : int, default 1
        Number of DDP processes.
    drop_singleton : bool, default True
        Merge a trailing batch of one star into the batch before it.
    batches_per_block : int, optional
        Yield blocks of this many consecutive mini-batches instead of single mini-batches.
    max_batches : int, optional
        Mini-batches per epoch at most (the first of the epoch's order); None for all.

    Raises
    ------
    ConfigError
        If ``batch_size`` or ``batches_per_block`` is not a positive integer, or ``max_batches`` is negative.
    """

    def __init__(
        self,
        features: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_singleton: bool = True,
        batches_per_block: int | None = None,
        max_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        if batches_per_block is not None and batches_per_block < 1:
            raise ConfigError(f"batches_per_block must be a positive integer or None, got {batches_per_block}")
        if max_batches is not None and max_batches < 0:
            raise ConfigError(f"max_batches must be a non-negative integer or None, got {max_batches}")
        self.features = features
        self.batch_size = int(batch_size)
        self.sampler = EpochPermutation(seed, shuffle)
        # Lightning probes loaders for these DataLoader attributes (epoch setting, shuffle checks).
        self.batch_sampler = None
        self.rank = rank
        self.world_size = world_size
        self.drop_singleton = drop_singleton
        self.batches_per_block = batches_per_block
        self.max_batches = max_batches

    @property
    def rows_per_rank(self) -> int:
        """Rows this rank sees per epoch (the catalogue split evenly, rounded up)."""
        return -(-len(self.features) // self.world_size)

    def _bounds(self) -> list[tuple[int, int]]:
        n = self.rows_per_rank
        bounds = [(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        if self.drop_singleton and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
            start, _ = bounds.pop(-2)
            bounds[-1] = (start, n)
        return bounds if self.max_batches is None else bounds[: self.max_batches]

    def __len__(self) -> int:
        """Mini-batches (or blocks, with ``batches_per_block``) per epoch on this rank."""
        n_batches = len(self._bounds())
        if self.batches_per_block is None:
            return n_batches
        return -(-n_batches // self.batches_per_block)

    def _rank_rows(self) -> Tensor:
        order = self.sampler.order(len(self.features), device=self.features.device)
        if self.world_size > 1:
            total = self.rows_per_rank * self.world_size
            if total > len(order):
                order = torch.cat([order, order[: total - len(order)]])
            order = order[self.rank :: self.world_size]
        return order

    def _batches(self) -> Iterator[Batch]:
        rows = self._rank_rows()
        features = self.features[rows]
        for start, stop in self._bounds():
            yield features[start:stop], rows[start:stop]

    def __iter__(self) -> Iterator[Batch] | Iterator[list[Batch]]:
        """One epoch: ``(features, rows)`` mini-batches, or blocks of them, in this epoch's order."""
        if self.batches_per_block is None:
            yield from self._batches()
            return
        block: list[Batch] = []
        for batch in self._batches():
            block.append(batch)
            if len(block) == self.batches_per_block:
                yield block
                block = []
        if block:
            yield block


def train_batch_limit(limit: Any, batches_per_step: int) -> int | None:
    """Mini-batches per epoch that ``trainer.limit_train_batches`` allows, or None for all.

    Parameters
    ----------
    limit : int, float or None
        The trainer's ``limit_train_batches``: a whole number of mini-batches, or a fraction of
        the epoch (None is Lightning's default, the whole epoch).
    batches_per_step : int
        Mini-batches per Lightning training step (``data.batches_per_step``).

    Returns
    -------
    int or None
        The number of mini-batches for a whole number; None for a fraction, which Lightning
        applies itself (only 0 and 1.0 when ``batches_per_step`` > 1).

    Raises
    ------
    ConfigError
        For a negative number, or a fraction other than 0 and 1.0 with ``batches_per_step`` > 1
        (Lightning would take that fraction of the blocks, not of the mini-batches).
    """
    limit = 1.0 if limit is None else limit  # Lightning's default: the whole epoch
    if isinstance(limit, int) and not isinstance(limit, bool):
        if limit < 0:
            raise ConfigError(f"trainer.limit_train_batches={limit} is not valid: give a whole number of at least 0")
        return int(limit)
    fraction = float(limit)
    if batches_per_step > 1 and fraction not in (0.0, 1.0):
        raise ConfigError(
            f"trainer.limit_train_batches={limit} would count blocks of data.batches_per_step={batches_per_step} "
            "mini-batches: give a whole number of mini-batches (e.g. 5), or set data.batches_per_step=1"
        )
    return None
