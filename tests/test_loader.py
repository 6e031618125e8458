"""TensorBatchLoader: slices of one tensor, seeded per epoch, sharded per rank."""

import torch

from grasp_dl.data.loader import TensorBatchLoader


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
