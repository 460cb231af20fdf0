"""Pathfinder (Linsley et al., NeurIPS 2018; the Long Range Arena version of Tay et al., ICLR 2021):
is there a path between the two dots of a grayscale image? Binary classification of pixel
sequences.

Official layout (LRA release, folder ``pathfinder32``; likewise ``pathfinder64/128/256``)::

    pathfinder32/<difficulty>/imgs/<n>/sample_<k>.png     grayscale PNG, 32 x 32
    pathfinder32/<difficulty>/metadata/<n>.npy            one line per image

with ``<difficulty>`` one of ``curv_baseline`` (easy), ``curv_contour_length_9`` (intermediate),
``curv_contour_length_14`` (hard; the "Pathfinder" task of the S4 and LRU papers, the default).
Despite their extension, the LRA metadata files are plain text: one image per line, fields
separated by single spaces, as written by the pathfinder generator
(``subpath filename index label continuity contour_length distractor_length paddle_length
paddle_thickness paddle_margin n_contrasts``), e.g. ``imgs/0 sample_0.png 0 1 ...``; field 0 is
the folder, field 1 the file name, field 3 the label (1: connected). A true NumPy ``.npy`` of
strings with the same columns is read too. The release holds one empty PNG
(``curv_baseline/imgs/0/sample_172.png`` of ``pathfinder32``); like the LRA pipeline, which
filters out empty images, the loader skips empty files and counts them in ``meta``.

A preprocessed file ``pathfinder<res>_<difficulty>.npz`` (``x``: ``(n, res, res)`` or
``(n, res * res)`` ``uint8``, ``y``: ``(n,)`` labels 0/1), written by :func:`prepare_pathfinder`
(``shrinkssm data prepare pathfinder``), loads in a second instead of reading 200,000 PNGs.

An image becomes a ``(res * res, 1)`` sequence in raster order. There is no official split: a
stratified test split of ``test_fraction`` (default 0.1, seed ``test_seed``) is carved first,
then validation from the rest, as for ``mnist`` (see :mod:`shrinkssm.data.images`; LRA used
80/10/10 of each difficulty).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from shrinkssm._checks import check_choice

from ._common import check_bool, check_int, missing_files
from .formats import DataFileError, DataNotFoundError, data_home
from .images import _classification_splits, images_to_sequences
from .splits import DataSplits

__all__ = [
    "DIFFICULTIES",
    "RESOLUTIONS",
    "is_installed",
    "load_pathfinder",
    "npz_name",
    "pathfinder_dir",
    "prepare_pathfinder",
    "read_metadata",
    "read_pathfinder_folder",
]

RESOLUTIONS = (32, 64, 128, 256)
DIFFICULTIES = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}
DEFAULT_DIFFICULTY = "curv_contour_length_14"
_NPY_MAGIC = b"\x93NUMPY"

INSTALL = (
    "unpack the LRA release (lra_release.gz) and set data.root=DIR, a directory holding "
    "pathfinder32/ (default $SHRINKSSM_DATA/pathfinder), or write the fast cache once with "
    "`shrinkssm data prepare pathfinder source=DIR`, which puts pathfinder32_<difficulty>.npz in "
    "the default directory (or in --dest DIR)"
)


def _difficulty_folder(difficulty: str) -> str:
    valid = list(DIFFICULTIES) + list(DIFFICULTIES.values())
    check_choice("difficulty", difficulty, valid)
    return DIFFICULTIES.get(difficulty, difficulty)


def npz_name(resolution: int, difficulty: str) -> str:
    """File name of the preprocessed cache, e.g. ``pathfinder32_curv_contour_length_14.npz``."""
    return f"pathfinder{resolution}_{_difficulty_folder(difficulty)}.npz"


def pathfinder_dir(root: Path | None, resolution: int, difficulty: str) -> Path:
    """The ``<difficulty>`` folder (with ``imgs/`` and ``metadata/``) under ``root``.

    ``root`` may be the parent of ``pathfinder<res>``, ``pathfinder<res>`` itself, or the difficulty
    folder; default ``$SHRINKSSM_DATA/pathfinder``. Returns the first candidate that exists (the
    deepest one when none does).
    """
    folder = _difficulty_folder(difficulty)
    root = data_home() / "pathfinder" if root is None else Path(root)
    candidates = [root / f"pathfinder{resolution}" / folder, root / folder, root]
    for candidate in candidates:
        if (candidate / "metadata").is_dir():
            return candidate
    return candidates[0]


def read_metadata(path: Path) -> list[tuple[str, str, int]]:
    """``(folder, file name, label)`` per image of one metadata file (text, or a NumPy string array).

    Raises
    ------
    DataFileError
        A line with fewer than 4 fields, or a label that is not 0 or 1.
    """
    raw = Path(path).read_bytes()
    if raw.startswith(_NPY_MAGIC):
        try:
            table = np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as exc:
            raise DataFileError(f"Pathfinder metadata {path}: unreadable .npy ({exc})") from exc
        rows = [[str(v) for v in row] for row in np.atleast_2d(table)]
    else:
        try:
            rows = [line.split() for line in raw.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise DataFileError(f"Pathfinder metadata {path} is neither text nor a .npy file") from exc
    entries = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 4 or row[3] not in ("0", "1"):
            raise DataFileError(
                f"Pathfinder metadata {path}, line {number}: expected 'folder file index label ...' "
                f"with label 0 or 1, found {' '.join(row)[:80]!r}"
            )
        entries.append((row[0], row[1], int(row[3])))
    return entries


def _read_png(path: Path, resolution: int) -> np.ndarray:
    """``(res, res) uint8`` grayscale pixels of one PNG (colour is converted to luma)."""
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow comes with matplotlib, a dependency of shrinkssm
        raise ImportError("reading Pathfinder PNGs needs Pillow: pip install pillow") from exc
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataFileError(f"corrupt or unreadable Pathfinder image {path}: {exc}") from exc
    if pixels.shape != (resolution, resolution):
        raise DataFileError(
            f"Pathfinder image {path} is {pixels.shape}, expected ({resolution}, {resolution})"
        )
    return pixels


def _numeric_stem(path: Path) -> tuple[int, int, str]:
    """Sort key: numeric stems (``0.npy``, ``1.npy``, ..., ``10.npy``) in numeric order, then the rest."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def read_pathfinder_folder(directory: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read every image listed in ``directory/metadata/*.npy`` (metadata files in numeric order).

    Returns
    -------
    images : numpy.ndarray
        ``(n, res, res) uint8``.
    labels : numpy.ndarray
        ``(n,) int64``.
    info : dict
        ``{"metadata_files", "skipped_empty"}``.

    Raises
    ------
    DataNotFoundError
        No metadata file, or an image it lists is missing.
    DataFileError
        Corrupt metadata or image, or an entry pointing outside ``directory``.
    """
    directory = Path(directory)
    metadata = sorted((directory / "metadata").glob("*.npy"), key=_numeric_stem)
    if not metadata:
        raise DataNotFoundError(f"Pathfinder: no metadata/*.npy in {directory}. How to get them: {INSTALL}.")
    base = directory.resolve()
    images, labels, skipped = [], [], []
    for meta_file in metadata:
        for folder, fname, label in read_metadata(meta_file):
            path = directory / folder / fname
            if base not in path.resolve().parents:
                raise DataFileError(
                    f"Pathfinder metadata {meta_file} points outside {directory}: {folder}/{fname}"
                )
            if not path.is_file():
                raise DataNotFoundError(f"Pathfinder image {path} listed in {meta_file} is missing")
            if path.stat().st_size == 0:
                skipped.append(f"{folder}/{fname}")
                continue
            images.append(_read_png(path, resolution))
            labels.append(label)
    if not images:
        raise DataFileError(f"Pathfinder folder {directory} lists no readable image")
    info = {"metadata_files": len(metadata), "skipped_empty": skipped}
    return np.stack(images), np.asarray(labels, dtype=np.int64), info


def _read_npz(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, res, res) uint8, labels (n,) int64)`` of a preprocessed file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise DataFileError(
                    f"Pathfinder cache {path} must hold arrays 'x' and 'y', found {sorted(archive)}"
                )
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError, EOFError) as exc:
        raise DataFileError(f"corrupt Pathfinder cache {path}: {exc}") from exc
    n = x.shape[0] if x.ndim else 0
    pixels = resolution * resolution
    if x.dtype != np.uint8 or x.ndim not in (2, 3, 4) or n == 0 or x[0].size != pixels:
        raise DataFileError(
            f"Pathfinder cache {path}: 'x' must be uint8 (n, {resolution}, {resolution}) or (n, {pixels}), "
            f"found {x.shape} {x.dtype}"
        )
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all():
        raise DataFileError(
            f"Pathfinder cache {path}: 'y' must be ({n},) labels 0/1, found {y.shape} {y.dtype}"
        )
    return x.reshape(n, resolution, resolution), y.astype(np.int64)


def prepare_pathfinder(
    dest: str | Path | None = None,
    *,
    source: str | Path | None = None,
    resolution: int = 32,
    difficulty: str = DEFAULT_DIFFICULTY,
    overwrite: bool = False,
) -> Path:
    """Read the PNG folder once and write ``pathfinder<res>_<difficulty>.npz`` into ``dest``.

    Parameters
    ----------
    dest : str or Path, optional
        Directory for the cache (default ``$SHRINKSSM_DATA/pathfinder``).
    source : str or Path, optional
        Where the official folder is (any ``root`` :func:`pathfinder_dir` accepts); default ``dest``.
    resolution, difficulty : int, str
        Which images.
    overwrite : bool
        Replace an existing cache.

    Returns
    -------
    Path
        The ``.npz`` written (``x``: ``(n, res, res) uint8``, ``y``: ``(n,) int64``).
    """
    check_choice("resolution", resolution, RESOLUTIONS)
    check_bool(overwrite, "overwrite")
    dest = data_home() / "pathfinder" if dest is None else Path(dest)
    out = dest / npz_name(resolution, difficulty)
    if out.exists() and not overwrite:
        raise ValueError(f"refusing to overwrite {out}; pass overwrite=True")
    directory = pathfinder_dir(dest if source is None else Path(source), resolution, difficulty)
    images, labels, _ = read_pathfinder_folder(directory, resolution)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, x=images, y=labels)
    os.replace(tmp, out)
    return out


def is_installed() -> bool:
    """Whether the default root holds the default images (32 x 32, hard): cache or PNG folder."""
    root = data_home() / "pathfinder"
    cache = root / npz_name(32, DEFAULT_DIFFICULTY)
    return cache.is_file() or (pathfinder_dir(root, 32, DEFAULT_DIFFICULTY) / "metadata").is_dir()


def load_pathfinder(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    resolution: int = 32,
    difficulty: str = DEFAULT_DIFFICULTY,
    test_fraction: float = 0.1,
    test_seed: int = 0,
    normalize: str = "unit",
) -> DataSplits:
    """Pathfinder images as pixel sequences ``(res * res, 1)``, two classes.

    Parameters
    ----------
    root : Path, optional
        Parent of ``pathfinder<res>/``, that folder, the difficulty folder, or a directory (or the
        path) of a ``pathfinder<res>_<difficulty>.npz`` cache, which is preferred when present.
        Default ``$SHRINKSSM_DATA/pathfinder``.
    val_fraction, seed : float, int
        Validation carved (stratified) from what the test split leaves.
    resolution : int
        32 (default), 64, 128 or 256 (Path-X).
    difficulty : str
        ``curv_contour_length_14`` / ``hard`` (default), ``curv_contour_length_9`` /
        ``intermediate``, ``curv_baseline`` / ``easy``.
    test_fraction, test_seed : float, int
        The stratified test split, independent of ``seed``.
    normalize : str
        ``"unit"`` (pixels / 255), ``"standard"`` or ``"none"``; see :mod:`shrinkssm.data.transforms`.

    Returns
    -------
    DataSplits
        Inputs ``(num, res * res, 1) uint8`` (normalised per batch), targets ``(num,)`` 0/1.
    """
    check_choice("resolution", resolution, RESOLUTIONS)
    check_int(test_seed, "test_seed")
    folder = _difficulty_folder(difficulty)
    base = data_home() / "pathfinder" if root is None else Path(root)
    cache = base if base.suffix == ".npz" else base / npz_name(resolution, folder)
    if cache.is_file():
        images, labels = _read_npz(cache, resolution)
        meta = {"source": str(cache), "skipped_empty": None}
    else:
        directory = pathfinder_dir(base, resolution, folder)
        if not (directory / "metadata").is_dir() or not (directory / "imgs").is_dir():
            prefix = f"pathfinder{resolution}/{folder}"
            expected = [f"{prefix}/metadata/<n>.npy", f"{prefix}/imgs/<n>/sample_<k>.png",
                        f"or {npz_name(resolution, folder)}"]  # fmt: skip
            raise missing_files("pathfinder", base, expected, {}, INSTALL)
        images, labels, info = read_pathfinder_folder(directory, resolution)
        meta = {"source": str(directory), **info}
    meta.update(resolution=resolution, difficulty=folder, class_names=["disconnected", "connected"])
    return _classification_splits(
        "pathfinder", (images_to_sequences(images), labels), None,
        n_classes=2, max_value=255, val_fraction=val_fraction, seed=seed,
        test_fraction=test_fraction, test_seed=test_seed, normalize=normalize,
        permute=False, permute_seed=0, meta=meta,
    )  # fmt: skip
