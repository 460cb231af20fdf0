"""SequenceData and Batch: deterministic, resumable, shardable batches; masks; conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shrinkssm.data import IGNORE_INDEX, Batch, Normalize, SequenceData


def make_data(n=23, seq_len=5, channels=2, lengths=None, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, 256, (n, seq_len, channels), dtype=np.uint8)
    return SequenceData(inputs, np.arange(n) % 4, lengths=lengths)


def indices(batches):
    return [b.index.tolist() for b in batches]


def epoch(data, batch_size, **kw):
    args = dict(shuffle=True, seed=3, epoch=0, drop_last=False)
    args.update(kw)
    return list(data.iterate(batch_size, **args))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_and_epoch_give_the_same_batches():
    data = make_data()
    first, second = epoch(data, 4), epoch(data, 4)
    assert indices(first) == indices(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_each_epoch_is_a_permutation_that_depends_on_seed_and_epoch():
    data = make_data(n=50)
    orders = {(s, e): sum(indices(epoch(data, 7, seed=s, epoch=e)), []) for s in (0, 1) for e in (0, 1)}
    for order in orders.values():
        assert sorted(order) == list(range(50))
    assert len({tuple(o) for o in orders.values()}) == 4


def test_epoch_order_does_not_depend_on_batch_size_or_world_size():
    data = make_data(n=40)
    reference = sum(indices(epoch(data, 40)), [])
    for batch_size, world_size in [(1, 1), (8, 2), (10, 5)]:
        seen = []
        for b in range(data.num_batches(batch_size, drop_last=False, world_size=world_size)):
            shares = [
                list(data.iterate(batch_size, shuffle=True, seed=3, epoch=0, start_batch=b, drop_last=False,
                                  rank=r, world_size=world_size))[0].index.tolist()
                for r in range(world_size)
            ]  # fmt: skip
            seen += sorted(sum(shares, []), key=reference.index)
        assert seen == reference


def test_without_shuffle_the_stored_order_is_kept():
    data = make_data(n=10)
    assert sum(indices(epoch(data, 3, shuffle=False)), []) == list(range(10))
    np.testing.assert_array_equal(data.epoch_order(shuffle=False, seed=5, epoch=7), np.arange(10))


# -------------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_at_any_batch_continues_the_uninterrupted_sequence(drop_last):
    data = make_data(n=23)
    full = epoch(data, 4, epoch=2, drop_last=drop_last)
    for start in range(len(full) + 1):
        resumed = epoch(data, 4, epoch=2, drop_last=drop_last, start_batch=start)
        assert indices(resumed) == indices(full[start:])
        for a, b in zip(resumed, full[start:], strict=True):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_start_batch_skips_without_touching_data(monkeypatch):
    data = make_data(n=100)
    gathered = []
    original = SequenceData.batch
    monkeypatch.setattr(
        SequenceData, "batch", lambda self, idx: gathered.append(len(idx)) or original(self, idx)
    )
    assert len(epoch(data, 10, start_batch=8)) == 2
    assert gathered == [10, 10]


def test_start_batch_past_the_epoch_fails_at_call_time():
    data = make_data(n=23)
    with pytest.raises(ValueError, match="start_batch 7 is past the 6 batches"):
        data.iterate(4, shuffle=True, seed=0, epoch=0, drop_last=False, start_batch=7)
    assert epoch(data, 4, start_batch=6) == []


# ---------------------------------------------------------------------- drop_last and sizes
def test_drop_last_and_num_batches():
    data = make_data(n=23)
    kept = epoch(data, 5, drop_last=False)
    dropped = epoch(data, 5, drop_last=True)
    assert [len(b) for b in kept] == [5, 5, 5, 5, 3]
    assert [len(b) for b in dropped] == [5, 5, 5, 5]
    assert data.num_batches(5, drop_last=False) == 5 and data.num_batches(5, drop_last=True) == 4
    assert data.num_batches(23, drop_last=True) == data.num_batches(23, drop_last=False) == 1
    assert make_data(n=3).num_batches(5, drop_last=True) == 0


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_batch_size_is_refused(bad):
    with pytest.raises(ValueError, match="batch_size"):
        make_data().num_batches(bad, drop_last=False)


# --------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize(
    "n, batch_size, world_size, drop_last",
    [(23, 6, 3, False), (23, 6, 3, True), (21, 8, 4, False), (5, 4, 4, False)],
)
def test_shards_are_disjoint_cover_each_batch_and_are_equal_when_full(n, batch_size, world_size, drop_last):
    data = make_data(n=n)
    single = epoch(data, batch_size, drop_last=drop_last)
    per_rank = [
        epoch(data, batch_size, drop_last=drop_last, rank=r, world_size=world_size) for r in range(world_size)
    ]
    assert all(len(batches) == len(single) for batches in per_rank)  # ranks stay in lockstep
    for b, whole in enumerate(single):
        shares = [per_rank[r][b].index.tolist() for r in range(world_size)]
        flat = sum(shares, [])
        assert len(flat) == len(set(flat)) and set(flat) == set(whole.index.tolist())
        sizes = [len(s) for s in shares]
        if len(whole) == batch_size:
            assert sizes == [batch_size // world_size] * world_size
        else:
            assert max(sizes) - min(sizes) <= 1
        for r in range(world_size):
            assert per_rank[r][b].x.shape[1:] == whole.x.shape[1:]
    if not drop_last:  # evaluation: every sample exactly once over all ranks
        everything = sorted(i for batches in per_rank for batch in batches for i in batch.index.tolist())
        assert everything == list(range(n))


def test_sharding_arguments_are_checked():
    data = make_data()
    with pytest.raises(ValueError, match="not a multiple of world_size 4"):
        data.iterate(6, shuffle=True, seed=0, epoch=0, drop_last=True, world_size=4)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        data.iterate(6, shuffle=True, seed=0, epoch=0, drop_last=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed"):
        data.iterate(6, shuffle=True, seed=-1, epoch=0, drop_last=True)


# ------------------------------------------------------------------------ masks and lengths
def test_masks_follow_lengths_and_vanish_for_full_batches():
    lengths = np.array([3, 5, 1, 5, 5, 2])
    data = make_data(n=6, seq_len=5, lengths=lengths)
    batch = data.batch([0, 1, 2, 5])
    expected = np.arange(5)[None, :] < lengths[[0, 1, 2, 5], None]
    assert batch.mask.dtype == torch.bool and batch.mask.shape == (4, 5)
    np.testing.assert_array_equal(batch.mask.numpy(), expected)
    assert data.batch([1, 3, 4]).mask is None
    assert make_data(n=6).batch([0, 1]).mask is None


@pytest.mark.parametrize(
    "lengths, message",
    [
        ([0, 1], r"lengths must lie in \[1, 5\]"),
        ([1, 6], r"lengths must lie in \[1, 5\]"),
        ([1.0, 2.0], "integers"),
        ([1, 2, 3], r"\(2,\)"),
    ],
)
def test_bad_lengths_are_refused(lengths, message):
    with pytest.raises(ValueError, match=message):
        SequenceData(np.zeros((2, 5, 1), np.uint8), [0, 1], lengths=np.array(lengths))


# ------------------------------------------------------------------- conversions, transform
def test_uint8_is_stored_raw_and_converted_per_batch():
    data = make_data()
    assert data.inputs.dtype == torch.uint8
    batch = data.batch([2, 0])
    assert batch.x.dtype == torch.float32 and batch.y.dtype == torch.int64
    np.testing.assert_array_equal(batch.x.numpy(), data.inputs.numpy()[[2, 0]].astype(np.float32))


def test_transform_is_applied_per_batch():
    data = make_data()
    data.transform = Normalize(mean=(10.0, 20.0), std=(2.0, 4.0))
    raw = data.inputs.numpy()[[4, 1]].astype(np.float64)
    expected = (raw - np.array([10.0, 20.0])) / np.array([2.0, 4.0])
    np.testing.assert_allclose(data.batch([4, 1]).x.numpy(), expected, rtol=1e-6)


def test_a_transform_with_the_wrong_output_is_caught():
    data = make_data()
    data.transform = lambda x: x.to(torch.float64)
    with pytest.raises(ValueError, match="transform must return torch.float32"):
        data.batch([0])
    data.transform = lambda x: x[:, :2].float()
    with pytest.raises(ValueError, match="transform must return a tensor of shape"):
        data.batch([0])
    with pytest.raises(ValueError, match="transform must be callable"):
        SequenceData(np.zeros((2, 3, 1)), [0, 1], transform="unit")


def test_tokens_and_per_step_targets():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 80, (6, 9)).astype(np.int16)
    targets = np.roll(tokens, -1, axis=1).astype(np.int64)
    targets[:, -1] = IGNORE_INDEX
    data = SequenceData(tokens, targets, lengths=np.array([9, 9, 4, 9, 9, 9]))
    assert data.tokens and data.n_channels is None and data.seq_len == 9
    batch = data.batch([2, 3])
    assert batch.x.dtype == torch.int64 and batch.x.shape == (2, 9) and batch.y.shape == (2, 9)
    np.testing.assert_array_equal(batch.x.numpy(), tokens[[2, 3]])
    assert batch.mask[0].tolist() == [True] * 4 + [False] * 5


def test_float_inputs_and_regression_targets_become_float32():
    data = SequenceData(np.ones((3, 4, 2), np.float64), np.ones((3, 4, 1), np.float64))
    assert data.inputs.dtype == torch.float32 and data.targets.dtype == torch.float32
    assert data.batch([0]).y.shape == (1, 4, 1)


@pytest.mark.parametrize(
    "inputs, targets, message",
    [
        (np.zeros((2, 3, 1, 1)), [0, 1], r"\(num, L, C\) features or \(num, L\) tokens"),
        (np.zeros((2, 3)), [0, 1], "tokens and must be integers"),
        (np.zeros((2, 0, 1)), [0, 1], "L = 0"),
        (np.zeros((2, 3, 1)), [0, 1, 2], "leading dimension of 2"),
        (np.zeros((2, 3, 1)), np.zeros((2, 4), np.int64), "length L = 3"),
        (np.zeros((2, 3, 1)), np.zeros((2, 3, 1), np.int64), r"class targets must be \(num,\) or \(num, L\)"),
        (np.array([["a"], ["b"]]), [0, 1], "must hold numbers"),
    ],
)
def test_bad_inputs_and_targets_are_refused(inputs, targets, message):
    with pytest.raises(ValueError, match=message):
        SequenceData(inputs, np.asarray(targets))


def test_subset_copies_and_keeps_the_transform():
    data = make_data(lengths=np.arange(23) % 5 + 1)
    data.transform = Normalize(mean=(0.0,), std=(255.0,))
    part = data.subset([5, 2])
    assert len(part) == 2 and part.transform is data.transform
    assert torch.equal(part.inputs, data.inputs[[5, 2]]) and part.lengths.tolist() == [1, 3]
    before = data.inputs[5].clone()
    part.inputs[0] = 0 if int(before.max()) > 0 else 1
    assert torch.equal(data.inputs[5], before)  # a copy, not a view


def test_empty_split_and_empty_shares_keep_their_shapes():
    data = make_data(n=0)
    assert len(data) == 0 and data.num_batches(4, drop_last=False) == 0
    batch = make_data(n=5).batch([])
    assert batch.x.shape == (0, 5, 2) and len(batch) == 0


def test_batch_to_moves_every_tensor():
    batch = make_data(lengths=np.array([2] + [5] * 22)).batch([0, 1])
    moved = batch.to(torch.device("meta"))
    assert isinstance(moved, Batch)
    assert moved.x.device.type == moved.y.device.type == moved.mask.device.type == "meta"
    assert batch.x.device.type == "cpu"  # the original is untouched
    assert batch.to("cpu").mask is not None and make_data().batch([0]).to("cpu").mask is None
