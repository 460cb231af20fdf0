"""The data-set registry: names, options, install status, extension, and the package docstring."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from official_layouts import make_cifar_dir, make_idx_dir

import shrinkssm.data
from shrinkssm.data import (
    DEFAULT_DATASET,
    DataSplits,
    SequenceData,
    TaskSpec,
    available_datasets,
    dataset_options,
    holdout,
    load_dataset,
    register_dataset,
    registry,
)

BUILT_IN = {"mnist", "digits", "fashion-mnist", "mnist-idx", "cifar10"}


def test_package_docstring_example_runs():
    result = doctest.testmod(shrinkssm.data, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_available_datasets_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("SHRINKSSM_DATA", str(tmp_path))
    rows = {row.name: row for row in available_datasets()}
    assert BUILT_IN <= set(rows) and DEFAULT_DATASET == "mnist"
    assert rows["mnist"].installed and rows["digits"].installed and rows["mnist"].root is None
    assert not rows["cifar10"].installed and not rows["mnist-idx"].installed
    assert rows["cifar10"].root == str(tmp_path / "cifar-10-batches-py")
    assert rows["mnist-idx"].root == str(tmp_path / "mnist")
    assert rows["fashion-mnist"].root == "/usr/share/datasets/fashion-mnist"
    assert "apt-get install -y dataset-fashion-mnist" in rows["fashion-mnist"].how_to_install
    assert "grayscale" in rows["cifar10"].options and "permute" in rows["mnist"].options
    assert all(row.description and row.how_to_install for row in rows.values())
    # Files copied to the default places make them installed, and loadable without a root.
    make_cifar_dir(tmp_path, n_per_batch=2, n_test=2)
    make_idx_dir(tmp_path / "mnist", n_train=20, n_test=10)
    rows = {row.name: row for row in available_datasets()}
    assert rows["cifar10"].installed and rows["mnist-idx"].installed
    assert len(load_dataset("cifar10").test) == 2 and len(load_dataset("mnist-idx").test) == 10


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match="unknown data set 'mnits'; valid names: aan, cifar10, digits, fashion-mnist, forecast, imdb, "
        "listops, mnist, mnist-idx, pathfinder, shakespeare, ucr",
    ):
        load_dataset("mnits")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset(None)


def test_names_ignore_case_and_underscores(idx_dir):
    root, _ = idx_dir
    assert load_dataset("MNIST_IDX", root=root).spec.name == "mnist-idx"


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown option\(s\) \['grayscale'\] for data set 'digits'; valid options: test_fraction=0.1",
    ):
        load_dataset("digits", grayscale=True)
    assert dataset_options("cifar10") == {
        "normalize": "unit",
        "grayscale": False,
        "permute": False,
        "permute_seed": 0,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction="0.1"), "val_fraction"),
        (dict(seed=-2), "seed"),
    ],
)
def test_common_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


def _toy_loader(root=None, *, val_fraction=0.1, seed=0, n=40):
    """A variable-length regression set, as later loaders (UCR/UEA, forecasting) will be."""
    rng = np.random.default_rng(7)
    lengths = rng.integers(3, 11, n)
    inputs = rng.normal(size=(n, 10, 2)).astype(np.float32)
    full = SequenceData(inputs, rng.normal(size=(n, 1)), lengths=lengths)
    train, val = holdout(full, val_fraction, seed=seed)
    spec = TaskSpec(
        kind="regression", d_input=2, seq_len=10, d_output=1, metric="mse", variable_length=True, name="toy"
    )
    return DataSplits(train, val, full.subset(range(5)), spec)


def test_register_a_new_data_set(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_dataset(
        "toy-series",
        _toy_loader,
        description="toy",
        how_to_install="nothing to install",
        is_installed=lambda: True,
    )
    data = load_dataset("toy-series", n=50, val_fraction=0.2)
    assert (len(data.train), len(data.val)) == (40, 10)
    batch = next(data.train.iterate(40, shuffle=True, seed=0, epoch=0, drop_last=True))
    assert batch.mask is not None and batch.mask.sum(1).tolist() == data.train.lengths[batch.index].tolist()
    assert "toy-series" in {row.name for row in available_datasets()}
    with pytest.raises(ValueError, match="cannot register 'toy-series'"):
        register_dataset(
            "toy-series", _toy_loader, description="", how_to_install="", is_installed=lambda: True
        )
    with pytest.raises(ValueError, match="cannot register 'Bad_Name'"):
        register_dataset(
            "Bad_Name", _toy_loader, description="", how_to_install="", is_installed=lambda: True
        )
    with pytest.raises(ValueError, match="must take root and keyword-only"):
        register_dataset(
            "toy-2",
            lambda root, val_fraction, seed: None,
            description="",
            how_to_install="",
            is_installed=lambda: True,
        )
