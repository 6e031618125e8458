"""TensorBatchLoader: slices of one tensor, seeded per epoch, sharded per rank."""

import pytest
import torch

from grasp_dl.data.loader import TensorBatchLoader, batch_stars, is_block


def _rows(loader):
    return torch.cat([idx for _, idx in loader])


def test_every_row_once_per_epoch_and_batches_match_rows():
    x = torch.arange(1000, dtype=torch.float32)[:, None].repeat(1, 3)
    loader = TensorBatchLoader(x, 64, shuffle=True, seed=3)
    assert len(loader) == 16
    rows = _rows(loader)
    assert sorted(rows.tolist()) == list(range(1000))
    assert rows.tolist() != list(range(1000))
    for features, idx in loader:
        torch.testing.assert_close(features, x[idx])


def test_order_depends_on_seed_and_epoch_only():
    x = torch.randn(500, 2)
    a, b = TensorBatchLoader(x, 50, shuffle=True, seed=1), TensorBatchLoader(x, 50, shuffle=True, seed=1)
    assert torch.equal(_rows(a), _rows(b))
    assert torch.equal(_rows(a), _rows(a))  # iterating again without set_epoch repeats the epoch
    a.sampler.set_epoch(1)
    assert not torch.equal(_rows(a), _rows(b))
    b.sampler.set_epoch(1)
    assert torch.equal(_rows(a), _rows(b))
    c = TensorBatchLoader(x, 50, shuffle=True, seed=2)
    assert not torch.equal(_rows(b), _rows(c))


def test_unshuffled_keeps_order():
    x = torch.randn(10, 2)
    assert _rows(TensorBatchLoader(x, 3)).tolist() == list(range(10))


def test_no_batch_of_one_in_training():
    x = torch.randn(65, 2)
    loader = TensorBatchLoader(x, 32, shuffle=True)
    sizes = [len(b) for b, _ in loader]
    assert sizes == [32, 33] and len(loader) == 2


def test_ranks_shard_evenly_and_cover_everything():
    x = torch.randn(101, 2)
    shards = [TensorBatchLoader(x, 16, shuffle=True, seed=0, rank=r, world_size=3) for r in range(3)]
    lengths = {len(_rows(s)) for s in shards}
    assert lengths == {34}  # 101 rows padded to 102, 34 per rank
    assert {len(s) for s in shards} == {3}
    covered = torch.cat([_rows(s) for s in shards])
    assert set(covered.tolist()) == set(range(101))
    first = [set(_rows(s).tolist()) for s in shards]
    assert len(first[0] & first[1]) <= 1


def test_blocks_hold_the_same_batches_in_the_same_order():
    x = torch.randn(1000, 3)
    plain = list(TensorBatchLoader(x, 64, shuffle=True, seed=5))
    blocked = TensorBatchLoader(x, 64, shuffle=True, seed=5, batches_per_block=5)
    blocks = list(blocked)
    assert len(blocked) == len(blocks) == 4  # 16 batches: 5 + 5 + 5 + 1
    assert [len(block) for block in blocks] == [5, 5, 5, 1]
    assert all(is_block(block) for block in blocks) and not is_block(plain[0])
    flat = [batch for block in blocks for batch in block]
    assert len(flat) == len(plain)
    for (xa, ia), (xb, ib) in zip(plain, flat, strict=True):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    assert [batch_stars(block) for block in blocks] == [320, 320, 320, 40]
    assert batch_stars(plain[0]) == 64
    with pytest.raises(ValueError, match="batches_per_block"):
        TensorBatchLoader(x, 64, batches_per_block=0)
