"""Small helpers shared by the loaders of the sequence data sets (ListOps, LRA text, Pathfinder,
UCR/UEA, forecasting, Shakespeare): option checks, the "files missing" error, and padding of
variable-length token rows. (A choice among named values is checked by
:func:`shrinkssm._checks.check_choice`, the package's one check for that.)

Nothing here knows about a particular data set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .formats import DataNotFoundError

__all__ = [
    "check_bool",
    "check_fraction",
    "check_int",
    "missing_files",
    "pad_rows",
    "token_dtype",
]


def check_int(value: object, name: str, minimum: int = 0, *, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= minimum`` (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{extra}, got {value!r}")


def check_bool(value: object, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_fraction(value: object, name: str, *, open_low: bool = False) -> float:
    """A number in ``[0, 1)`` (``(0, 1)`` with ``open_low``), else ``ValueError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0 < value < 1 if open_low else 0 <= value < 1):
        interval = "(0, 1)" if open_low else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def missing_files(
    name: str, root: Path, expected: Sequence[str], found: Mapping[str, bool], how: str
) -> DataNotFoundError:
    """The :class:`DataNotFoundError` of data set ``name``: directory, every expected file, how to get them.

    Parameters
    ----------
    name : str
        Registry name of the data set.
    root : Path
        Directory looked in.
    expected : sequence of str
        File or folder names (relative to ``root``) the data set needs.
    found : mapping
        ``expected`` entry -> whether it is there.
    how : str
        How to get the files.
    """
    where = f"{root}" if root.is_dir() else f"{root} (the directory does not exist)"
    lines = [f"  {f}  {'found' if found.get(f) else 'MISSING'}" for f in expected]
    return DataNotFoundError(
        f"data set {name!r}: files missing from {where}. Expected:\n" + "\n".join(lines)
        + f"\nHow to get them: {how}. Nothing is downloaded."
    )  # fmt: skip


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype holding token ids ``0 .. vocab_size - 1``: ``uint8``, ``int16`` or ``int32``."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def pad_rows(
    rows: Sequence[np.ndarray], seq_len: int, *, dtype: np.dtype, pad_value: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad 1-D rows of at most ``seq_len`` entries into one array.

    Parameters
    ----------
    rows : sequence of numpy.ndarray
        ``(len_i,)`` each, ``1 <= len_i <= seq_len``.
    seq_len : int
        ``L``.
    dtype : numpy.dtype
        Dtype of the result.
    pad_value : int
        Value of the padded entries.

    Returns
    -------
    padded : numpy.ndarray
        ``(len(rows), L)`` of ``dtype``; row ``i`` holds ``rows[i]`` then ``pad_value``.
    lengths : numpy.ndarray
        ``(len(rows),) int64``.
    """
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if len(rows) and (lengths.min() < 1 or lengths.max() > seq_len):
        raise ValueError(f"rows must hold 1 to {seq_len} entries, got {lengths.min()} to {lengths.max()}")
    padded = np.full((len(rows), seq_len), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded, lengths
