"""Stratified, deterministic hold-out splits; TaskSpec and DataSplits validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shrinkssm.data import DataSplits, SequenceData, TaskSpec, holdout, split_indices


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=2, max_size=300),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_stratified_split_is_a_proportional_partition(labels, fraction, seed):
    labels = np.array(labels)
    n = len(labels)
    n_held = int(np.floor(fraction * n + 0.5))
    if n_held >= n:
        with pytest.raises(ValueError, match="leaves none to keep"):
            split_indices(n, fraction, seed=seed, labels=labels)
        return
    kept, held = split_indices(n, fraction, seed=seed, labels=labels)
    assert len(held) == n_held
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(n))  # disjoint, covering
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)
    for c in np.unique(labels):
        count = np.sum(labels == c)
        assert abs(np.sum(labels[held] == c) - count * n_held / n) < 1


def test_split_is_a_function_of_seed_and_stream():
    labels = np.repeat(np.arange(5), 40)
    a = split_indices(200, 0.25, seed=4, labels=labels)
    b = split_indices(200, 0.25, seed=4, labels=labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], split_indices(200, 0.25, seed=5, labels=labels)[1])
    assert not np.array_equal(a[1], split_indices(200, 0.25, seed=4, labels=labels, stream=1)[1])
    assert [int(np.sum(labels[a[1]] == c)) for c in range(5)] == [10] * 5


def test_plain_random_split_without_labels():
    kept, held = split_indices(101, 0.3, seed=0)
    assert len(held) == 30 and len(kept) == 71 and not set(kept) & set(held)
    assert split_indices(10, 0.0, seed=0)[1].size == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=10, fraction=1.0, seed=0), r"fraction must be a number in \[0, 1\)"),
        (dict(n=10, fraction=-0.1, seed=0), r"fraction must be a number in \[0, 1\)"),
        (dict(n=10, fraction=0.5, seed=-1), "seed must be a non-negative int"),
        (dict(n=3, fraction=0.9, seed=0), "leaves none to keep"),
        (dict(n=4, fraction=0.5, seed=0, labels=np.zeros(3, int)), r"labels must be \(4,\) integers"),
        (dict(n=2, fraction=0.5, seed=0, labels=np.zeros(2)), r"labels must be \(2,\) integers"),
    ],
)
def test_split_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_indices(**kwargs)


def test_holdout_stratifies_on_class_labels_only():
    data = SequenceData(np.zeros((40, 3, 1), np.uint8), np.repeat([0, 1], [30, 10]))
    kept, held = holdout(data, 0.2, seed=0)
    assert len(held) == 8 and held.targets.tolist().count(1) == 2
    regression = SequenceData(np.zeros((40, 3, 1)), np.zeros((40, 2)))
    kept, held = holdout(regression, 0.25, seed=0)
    assert (len(kept), len(held)) == (30, 10)


# ------------------------------------------------------------------------------- TaskSpec
def test_task_spec_defaults_and_output_dim():
    spec = TaskSpec(kind="classification", d_input=1, seq_len=784, n_classes=10)
    assert spec.per_step is False and spec.output_dim == 10 and spec.metric == "accuracy"
    lm = TaskSpec(
        kind="lm", d_input=65, seq_len=256, n_classes=65, tokens=True, vocab_size=65, metric="bits_per_char"
    )
    assert lm.per_step is True and lm.output_dim == 65
    reg = TaskSpec(kind="regression", d_input=1, seq_len=96, d_output=24, metric="mse")
    assert reg.output_dim == 24


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="ranking", d_input=1, seq_len=5, n_classes=2), "kind must be one of"),
        (
            dict(kind="classification", d_input=1, seq_len=5, n_classes=2, metric="f1"),
            "metric must be one of",
        ),
        (dict(kind="classification", d_input=0, seq_len=5, n_classes=2), "d_input must be a positive int"),
        (dict(kind="classification", d_input=1, seq_len=5), "needs n_classes >= 2"),
        (dict(kind="regression", d_input=1, seq_len=5, metric="mse"), "needs d_output >= 1"),
        (
            dict(kind="classification", d_input=3, seq_len=5, n_classes=2, tokens=True, vocab_size=4),
            "vocab_size == d_input",
        ),
        (dict(kind="lm", d_input=3, seq_len=5, n_classes=3), "needs token inputs"),
        (
            dict(kind="lm", d_input=3, seq_len=5, n_classes=3, tokens=True, vocab_size=3, per_step=False),
            "per-step",
        ),
    ],
)
def test_task_spec_rejects_inconsistent_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**kwargs)


def test_data_splits_checks_splits_against_the_spec():
    split = SequenceData(np.zeros((4, 6, 2), np.uint8), [0, 1, 0, 1])
    spec = TaskSpec(kind="classification", d_input=2, seq_len=6, n_classes=2, name="toy")
    splits = DataSplits(split, split, split, spec)
    assert splits.summary().startswith("toy: train 4, val 4, test 4; L=6, C=2; classification, 2 classes")
    with pytest.raises(ValueError, match="train has length 6"):
        DataSplits(split, split, split, TaskSpec(kind="classification", d_input=2, seq_len=7, n_classes=2))
    with pytest.raises(ValueError, match="train has 2 channels, spec says d_input=3"):
        DataSplits(split, split, split, TaskSpec(kind="classification", d_input=3, seq_len=6, n_classes=2))
    with pytest.raises(ValueError, match="test must be a SequenceData"):
        DataSplits(split, split, None, spec)
