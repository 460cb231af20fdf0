"""Readers for the official on-disk formats of the image data sets: IDX and CIFAR python batches.

Both readers are written from the format descriptions, check every size they are told about, and
turn anything malformed into a :class:`DataFileError` that names the file and the problem. A
missing file is a :class:`DataNotFoundError` (a ``FileNotFoundError``) whose message lists the
files expected and how to get them. Nothing here downloads.

References
----------
* IDX: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database", file format section. A file is
  a 4-byte magic number (two zero bytes, a type code, the number of dimensions), then one
  big-endian ``uint32`` per dimension, then the data in C order, big-endian. MNIST and
  Fashion-MNIST image files have magic ``0x00000803`` (ubyte, 3 dims), label files ``0x00000801``
  (ubyte, 1 dim).
* CIFAR python batches: A. Krizhevsky, "The CIFAR-10 dataset", "python version". Each batch file
  is a pickled dict with ``b"data"``, a ``(10000, 3072) uint8`` array whose rows hold the red,
  then green, then blue 32x32 plane in row-major order, and ``b"labels"``, a list of ints 0-9.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DataFileError",
    "DataNotFoundError",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "data_home",
    "find_file",
    "parse_idx",
    "read_idx",
    "read_cifar_batch",
]

IDX_IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions (count, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension (count,)

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class DataFileError(ValueError):
    """A data file exists but is corrupt, truncated or not in the expected format."""


class DataNotFoundError(FileNotFoundError):
    """Files a data set needs are not where they were looked for.

    The message lists the directory searched, every expected file name, and how to get them.
    """


def data_home() -> Path:
    """Base directory for data sets a user copies in by hand (the default ``root`` of several).

    ``$SHRINKSSM_DATA`` if set, else ``$XDG_DATA_HOME/shrinkssm``, else
    ``~/.local/share/shrinkssm``. Nothing is ever written there by shrinkssm.
    """
    if os.environ.get("SHRINKSSM_DATA"):
        return Path(os.environ["SHRINKSSM_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "shrinkssm"


def find_file(root: Path, name: str) -> Path | None:
    """Return ``root/name`` or ``root/name.gz``, whichever exists (the raw file first), else None."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping it when it starts with the gzip magic bytes (whatever its name)."""
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"corrupt or truncated gzip file {path}: {exc}") from exc


def parse_idx(buffer: bytes, *, source: str = "<bytes>", expected_magic: int | None = None) -> np.ndarray:
    """Decode an IDX byte string into a native-endian numpy array.

    Parameters
    ----------
    buffer : bytes
        The whole (decompressed) file.
    source : str
        Name used in error messages.
    expected_magic : int, optional
        The 4-byte magic number the file must carry (e.g. :data:`IDX_IMAGES_MAGIC`).

    Returns
    -------
    numpy.ndarray
        Shape given by the header dimensions, dtype from the type code (native byte order,
        writable copy).

    Raises
    ------
    DataFileError
        Bad magic number, unknown type code, zero dimensions, or a data section shorter
        (truncated) or longer (trailing bytes) than the header promises.
    """
    prefix = f"corrupt or truncated IDX file {source}"
    if len(buffer) < 4:
        raise DataFileError(f"{prefix}: {len(buffer)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(buffer[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataFileError(f"{prefix}: magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    if buffer[0] != 0 or buffer[1] != 0:
        raise DataFileError(f"{prefix}: magic number 0x{magic:08x} does not start with two zero bytes")
    code, ndim = buffer[2], buffer[3]
    if code not in _IDX_DTYPES:
        raise DataFileError(f"{prefix}: unknown type code 0x{code:02x} (valid: 08, 09, 0b, 0c, 0d, 0e)")
    if ndim == 0:
        raise DataFileError(f"{prefix}: header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buffer) < header:
        raise DataFileError(f"{prefix}: {len(buffer)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{ndim}I", buffer[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)  # Python ints: no overflow on a garbage header
    expected = header + count * dtype.itemsize
    if len(buffer) < expected:
        raise DataFileError(
            f"{prefix}: header declares shape {dims} ({expected} bytes in all) "
            f"but the file holds only {len(buffer)} bytes"
        )
    if len(buffer) > expected:
        raise DataFileError(
            f"{prefix}: {len(buffer) - expected} unexpected trailing bytes after the data of shape {dims}"
        )
    data = np.frombuffer(buffer, dtype=dtype, count=count, offset=header)
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed (detected from its first bytes).

    See :func:`parse_idx` for the returned array and the errors raised.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path), expected_magic=expected_magic)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds plain numpy arrays and nothing else.

    The CIFAR batches are pickles; a pickle can run any callable it names. Only the few globals
    needed to rebuild an ``ndarray`` (and ``_codecs.encode``, which Python 3 uses to pickle bytes
    in protocol 2) are allowed.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataFileError(f"refusing to unpickle {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, *, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch file (``data_batch_1`` ... ``test_batch``).

    Parameters
    ----------
    path : Path
        The pickled batch.
    n_classes : int
        Labels must lie in ``[0, n_classes)``.

    Returns
    -------
    data : numpy.ndarray, (n, 3072) uint8
        Rows as stored: red plane, green plane, blue plane, each 32x32 row-major.
    labels : numpy.ndarray, (n,) int64

    Raises
    ------
    DataFileError
        The file does not unpickle (corrupt, truncated, foreign globals), is not a dict with
        ``b"data"`` and ``b"labels"``, or the sizes, dtype or label range are wrong.
    """
    path = Path(path)
    prefix = f"corrupt or truncated CIFAR batch {path}"
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except DataFileError:
        raise
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean the same here
        raise DataFileError(f"{prefix}: cannot unpickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataFileError(f"{prefix}: expected a pickled dict, found {type(batch).__name__}")
    # Pickles written by Python 3 with str keys are accepted too.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataFileError(f"{prefix}: no {key!r} entry (keys: {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataFileError(f"{prefix}: 'data' must be a (n, 3072) uint8 array, found {shape} {dtype}")
    labels = np.asarray(batch["labels"])
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataFileError(f"{prefix}: {labels.shape} labels for {data.shape[0]} images")
    if (
        not np.issubdtype(labels.dtype, np.integer)
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= n_classes
    ):
        raise DataFileError(f"{prefix}: labels must be integers in [0, {n_classes})")
    return np.ascontiguousarray(data), labels.astype(np.int64)
