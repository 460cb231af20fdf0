"""UCR / UEA time-series classification from the archives' ``.ts`` files.

The ``.ts`` format (sktime / aeon, used by the UCR and UEA archives since 2018): ``#`` comment lines,
then header lines ``@problemName NAME``, ``@timeStamps false``, ``@missing true|false``,
``@univariate true|false``, ``@dimensions D``, ``@equalLength true|false``, ``@seriesLength L``,
``@classLabel true LABEL ...`` (keys are case-insensitive), then ``@data`` and one case per line:
the ``D`` channels separated by ``:``, each a comma-separated list of values (``?`` for a missing
value), and the class label last. Files: ``<root>/<Name>/<Name>_TRAIN.ts`` and ``_TEST.ts`` (also
``<root>/<Name>_TRAIN.ts``).

Where the files come from. The reader is written from the format above and needs no package, so
any copy of the archives works (``root=``). Without ``root`` it reads the sets bundled in the
``aeon`` package (``pip install aeon``; about 230 MB with numba and llvmlite, and at the time of
writing it pins ``numpy < 2.4``): ``<aeon>/datasets/data``, located without importing aeon. They
include ArrowHead, GunPoint, ItalyPowerDemand, OSULeaf, ACSF1 (univariate), BasicMotions (6
channels) and JapaneseVowels (12 channels, lengths 7-29), PickupGestureWiimoteZ (unequal lengths).

Sequences: ``(num, L, C) float32``, ``L`` the longest series of the data set; shorter series are
right-padded with 0 and carry ``lengths`` (batches then have a mask). With
``normalize="standard"`` (default) each channel is standardised with the mean and standard
deviation of the valid steps of the training split (after validation is carved), padding stays 0.
Labels are numbered in the order of the ``@classLabel`` header. Validation is carved from the
official training split (stratified); the official test split is the test split.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shrinkssm._checks import check_choice

from ._common import missing_files
from .formats import DataFileError, data_home
from .sequence import SequenceData
from .splits import VAL_STREAM, DataSplits, TaskSpec, holdout

__all__ = [
    "TsFile",
    "aeon_data_dir",
    "load_ucr",
    "read_ts",
    "ucr_files",
]

NORMALIZE = ("standard", "none")
MISSING = ("error", "mean")

INSTALL = (
    "pip install aeon (bundles ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels, "
    "OSULeaf, ACSF1, ...), or copy <Name>/<Name>_TRAIN.ts and <Name>_TEST.ts from the UCR/UEA "
    "archives (timeseriesclassification.com) into a directory and set data.root=DIR "
    "data.options.dataset=<Name> "
    "(default without aeon: $SHRINKSSM_DATA/ucr)"
)


@dataclass(frozen=True)
class TsFile:
    """The content of one ``.ts`` file.

    Attributes
    ----------
    series : list of numpy.ndarray
        One ``(L_i, C) float64`` array per case (NaN where the file has ``?``).
    labels : numpy.ndarray
        ``(num,) int64`` indices into ``class_names``.
    class_names : tuple of str
        The ``@classLabel`` header, in order.
    header : dict
        Lower-cased header keys -> raw value strings.
    """

    series: list[np.ndarray]
    labels: np.ndarray
    class_names: tuple[str, ...]
    header: dict[str, str]


def _parse_header(line: str, header: dict[str, str], where: str) -> None:
    key, _, value = line[1:].partition(" ")
    key = key.lower()
    header[key] = value.strip()
    if key == "timestamps" and value.strip().lower() == "true":
        raise DataFileError(f"{where}: time-stamped .ts files are not supported")
    if key == "targetlabel" and value.strip().lower().startswith("true"):
        raise DataFileError(
            f"{where}: a regression .ts file (@targetlabel); only classification is supported"
        )


def _parse_case(line: str, n_channels: int | None, where: str) -> tuple[np.ndarray, str]:
    *channels, label = line.split(":")
    if not channels:
        raise DataFileError(f"{where}: expected channels separated by ':' and a class label last")
    if n_channels is not None and len(channels) != n_channels:
        raise DataFileError(f"{where}: {len(channels)} channels, the header says {n_channels}")
    values = []
    for channel in channels:
        try:
            values.append(np.array(channel.replace("?", "nan").split(","), dtype=np.float64))
        except ValueError as exc:
            raise DataFileError(f"{where}: a value is not a number ({exc})") from exc
    lengths = {v.size for v in values}
    if len(lengths) != 1:
        raise DataFileError(f"{where}: channels of one case differ in length ({sorted(lengths)})")
    return np.stack(values, axis=1), label.strip()  # (L_i, C)


def read_ts(path: Path) -> TsFile:
    """Read a classification ``.ts`` file (see the module docstring for the format).

    Raises
    ------
    DataFileError
        No ``@data`` line, no ``@classLabel true`` header, time stamps, a case with a wrong channel
        count, channels of unequal length, a value that is not a number, a label not declared in
        the header, or no case at all; the message names file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFileError(f".ts file {path} is not text: {exc}") from exc
    header: dict[str, str] = {}
    series, labels = [], []
    in_data, class_index, n_channels = False, None, None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}, line {number}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataFileError(
                    f"{where}: expected a header line '@...' before '@data', found {line[:40]!r}"
                )
            if line.lower() == "@data":
                classes = header.get("classlabel", "").split()
                if not classes or classes[0].lower() != "true" or len(classes) < 3:
                    raise DataFileError(
                        f"{path}: header needs '@classLabel true <label> <label> ...' before @data"
                    )
                class_index = {c: i for i, c in enumerate(classes[1:])}
                if "dimensions" in header:
                    if not header["dimensions"].isdigit() or int(header["dimensions"]) < 1:
                        raise DataFileError(f"{path}: @dimensions must be a positive integer")
                    n_channels = int(header["dimensions"])
                in_data = True
            else:
                _parse_header(line, header, where)
            continue
        values, label = _parse_case(line, n_channels, where)
        if label not in class_index:
            raise DataFileError(f"{where}: class label {label!r} is not in the header's {list(class_index)}")
        n_channels = values.shape[1]
        series.append(values)
        labels.append(class_index[label])
    if not in_data:
        raise DataFileError(f"{path}: no '@data' line")
    if not series:
        raise DataFileError(f"{path}: no case after '@data'")
    return TsFile(series, np.asarray(labels, dtype=np.int64), tuple(class_index), header)


def aeon_data_dir() -> Path | None:
    """``<aeon>/datasets/data`` of an installed aeon (found without importing it), else None."""
    try:
        spec = importlib.util.find_spec("aeon")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return directory if directory.is_dir() else None


def _default_root() -> Path:
    return aeon_data_dir() or data_home() / "ucr"


def ucr_files(root: Path | None, name: str) -> dict[str, Path]:
    """``{"train": path, "test": path}`` of data set ``name`` under ``root`` (nested folder first)."""
    root = _default_root() if root is None else Path(root)
    for folder in (root / name, root):
        paths = {s: folder / f"{name}_{s.upper()}.ts" for s in ("train", "test")}
        if all(p.is_file() for p in paths.values()):
            return paths
    return {s: root / name / f"{name}_{s.upper()}.ts" for s in ("train", "test")}


def _to_padded(series: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(num, L, C) float64`` right-padded with 0, and ``(num,) int64`` lengths."""
    out = np.zeros((len(series), seq_len, series[0].shape[1]), dtype=np.float64)
    for i, s in enumerate(series):
        out[i, : s.shape[0]] = s
    return out, np.fromiter((s.shape[0] for s in series), dtype=np.int64, count=len(series))


def _valid_steps(data: SequenceData) -> np.ndarray:
    """``(n_valid_steps, C)`` values of the valid steps of a split."""
    inputs = data.inputs.numpy()
    if data.lengths is None:
        return inputs.reshape(-1, inputs.shape[2])
    mask = np.arange(data.seq_len)[None, :] < data.lengths.numpy()[:, None]
    return inputs[mask]


def _rescaled(data: SequenceData, mean: np.ndarray, std: np.ndarray) -> SequenceData:
    """``(x - mean) / std`` at valid steps, 0 at padded ones."""
    inputs = (data.inputs.numpy().astype(np.float64) - mean) / std
    if data.lengths is not None:
        inputs[np.arange(data.seq_len)[None, :] >= data.lengths.numpy()[:, None]] = 0.0
    return SequenceData(inputs.astype(np.float32), data.targets, data.lengths)


def load_ucr(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    dataset: str = "ArrowHead",
    normalize: str = "standard",
    missing: str = "error",
) -> DataSplits:
    """A UCR/UEA classification data set from its ``_TRAIN.ts`` / ``_TEST.ts`` files.

    Parameters
    ----------
    root : Path, optional
        Directory holding ``<dataset>/<dataset>_TRAIN.ts`` (or the files directly); default aeon's
        bundled data, else ``$SHRINKSSM_DATA/ucr``.
    val_fraction, seed : float, int
        Validation carved from the official training cases, stratified.
    dataset : str
        Data set name as in the archive, e.g. ``ArrowHead``, ``BasicMotions``, ``JapaneseVowels``.
    normalize : str
        ``"standard"`` (per channel, training statistics) or ``"none"``.
    missing : str
        ``"error"`` (default): a missing value (``?``) is an error; ``"mean"``: it becomes the
        channel's training mean (0 after standardisation).

    Returns
    -------
    DataSplits
        Inputs ``(num, L, C) float32``; ``lengths`` when the series differ in length; targets
        ``(num,)``. Spec: classification, ``d_input = C``, ``n_classes`` from the header.
    """
    name = dataset
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"dataset must be a UCR/UEA data set name such as 'ArrowHead', got {name!r}")
    check_choice("normalize", normalize, NORMALIZE)
    check_choice("missing", missing, MISSING)
    paths = ucr_files(root, name)
    if not all(p.is_file() for p in paths.values()):
        directory = paths["train"].parent
        expected = [p.name for p in paths.values()]
        raise missing_files(
            "ucr", directory, expected, {p.name: p.is_file() for p in paths.values()}, INSTALL
        )
    train_file, test_file = read_ts(paths["train"]), read_ts(paths["test"])
    if train_file.class_names != test_file.class_names:
        raise DataFileError(
            f"{name}: train and test files declare different classes "
            f"({train_file.class_names} vs {test_file.class_names})"
        )
    channels = {s.shape[1] for s in train_file.series + test_file.series}
    if len(channels) != 1:
        raise DataFileError(f"{name}: cases have different channel counts {sorted(channels)}")
    seq_len = max(s.shape[0] for s in train_file.series + test_file.series)
    variable = any(s.shape[0] != seq_len for s in train_file.series + test_file.series)
    splits = {}
    for split, ts in (("train", train_file), ("test", test_file)):
        inputs, lengths = _to_padded(ts.series, seq_len)
        splits[split] = SequenceData(inputs, ts.labels, lengths if variable else None)
    train, val = holdout(splits["train"], val_fraction, seed=seed, stream=VAL_STREAM)
    splits["train"], splits["val"] = train, val
    steps = _valid_steps(train)
    has_nan = any(bool(np.isnan(_valid_steps(d)).any()) for d in splits.values())
    if has_nan and missing == "error":
        raise ValueError(f"UCR data set {name!r} has missing values ('?'); pass missing='mean' to fill them")
    if np.isnan(steps).all(axis=0).any():
        raise DataFileError(f"UCR data set {name!r}: a channel has no value in the training split")
    mean = np.nanmean(steps, axis=0)
    std = np.nanstd(steps, axis=0)
    if normalize == "none":
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std = np.where(std > 0, std, 1.0)  # a constant channel is only centred
    if has_nan:  # fill with the training mean: after standardising, 0
        for split, d in splits.items():
            x = d.inputs.numpy().astype(np.float64)
            x = np.where(np.isnan(x), np.nanmean(steps, axis=0), x)
            splits[split] = SequenceData(x, d.targets, d.lengths)
    splits = {s: _rescaled(d, mean, std) for s, d in splits.items()}
    spec = TaskSpec(
        kind="classification", d_input=len(mean), seq_len=seq_len, n_classes=len(train_file.class_names),
        metric="accuracy", variable_length=variable, name="ucr",
    )  # fmt: skip
    meta = {
        "name": "ucr",
        "dataset": name,
        "files": {s: str(p) for s, p in paths.items()},
        "class_names": list(train_file.class_names),
        "normalize": {"mode": normalize, "mean": mean.tolist(), "std": std.tolist()},
        "missing": missing if has_nan else None,
        "seed": seed,
        "val_fraction": val_fraction,
        "sizes": {s: len(splits[s]) for s in ("train", "val", "test")},
    }
    return DataSplits(splits["train"], splits["val"], splits["test"], spec, meta)
