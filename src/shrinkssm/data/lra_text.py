"""The two byte-level text tasks of the Long Range Arena (Tay et al., ICLR 2021): IMDB sentiment
classification ("Text") and AAN document matching ("Retrieval"), read from their official files.

Tokens are bytes. A document is the byte string of its text (UTF-8 as stored), each byte one token
with id equal to its value; id 0 is padding (NUL bytes, which do not occur in real text, are
removed). ``vocab_size`` is 256, tokens are stored ``uint8``. Documents longer than ``max_len``
bytes are truncated (LRA: 4,096 for IMDB in the S4 setup, 4,000 per document for AAN).

IMDB (``imdb``)
    The official Large Movie Review Dataset folder (Maas et al., ACL 2011):
    ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, 12,500 reviews per folder; label 1 for
    ``pos``, 0 for ``neg``; ``train/unsup`` is ignored. Validation is carved from the training
    reviews (stratified); the official test reviews are the test split.

AAN (``aan``)
    The LRA release files ``new_aan_pairs.train.tsv``, ``new_aan_pairs.eval.tsv``,
    ``new_aan_pairs.test.tsv`` (folder ``lra_release/tsv_data``): no header, tab-separated,
    no quoting, five fields per line: ``label`` (``0``/``1``, possibly written ``0.0``/``1.0``),
    ``id1``, ``id2``, ``text1``, ``text2``. In the release the texts are Python bytes literals
    (``b'...'`` with backslash escapes, as written from TensorFlow bytes); with
    ``decode_literals=True`` (default) such a field is decoded to the bytes it stands for, any
    other field is taken as UTF-8 text. (The LRA and S4 pipelines tokenised the field characters
    as stored, escapes included.) ``eval`` is the official validation split.

    **Pair layout.** Each example holds two documents. Inputs are ``(num, 2 * L)`` tokens:
    document 1 in positions ``[0, L)``, document 2 in ``[L, 2 L)``, each right-padded with 0 inside
    its half; batches carry no mask (``lengths`` is None). ``meta["pair"]`` records
    ``{"n_documents": 2, "document_len": L, "pad_id": 0}``. A model consumes it as the LRA
    two-tower ("dual encoder") setup: ``x.view(B, 2, L)`` -> ``(2 B, L)``, encode both halves with
    the same encoder, per-document mask ``x != 0``, pool each over its valid steps (an empty
    document has none: clamp the count to 1), then classify ``[h1, h2, h1 * h2, h1 - h2]`` into 2
    classes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from ._common import check_bool, check_int, missing_files, pad_rows
from .formats import DataFileError, data_home
from .sequence import SequenceData
from .splits import VAL_STREAM, DataSplits, TaskSpec, holdout

__all__ = [
    "AAN_FILES",
    "IMDB_DIR",
    "aan_dir",
    "imdb_dir",
    "load_aan",
    "load_imdb",
    "read_aan_tsv",
    "read_imdb_split",
    "text_to_tokens",
]

PAD_ID = 0
VOCAB_SIZE = 256
IMDB_DIR = "aclImdb"
IMDB_CLASSES = ("neg", "pos")
AAN_FILES = {
    "train": "new_aan_pairs.train.tsv",
    "val": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
AAN_DIR = "tsv_data"  # folder of the LRA release holding the three files

INSTALL = {
    "imdb": (
        "unpack the official aclImdb_v1.tar.gz (Large Movie Review Dataset) and set data.root=DIR, the "
        f"{IMDB_DIR} directory or its parent (default: $SHRINKSSM_DATA/{IMDB_DIR}); it must hold "
        "train/pos, train/neg, test/pos, test/neg with one <id>_<rating>.txt per review"
    ),
    "aan": (
        "unpack the LRA release (lra_release.gz) and set data.root=.../lra_release/tsv_data holding "
        + ", ".join(AAN_FILES.values())
        + " (default: $SHRINKSSM_DATA/aan)"
    ),
}


def text_to_tokens(data: bytes, max_len: int) -> np.ndarray:
    """``(min(n, max_len),) uint8`` byte tokens of ``data``, NUL bytes removed, truncated to ``max_len``."""
    tokens = np.frombuffer(data, dtype=np.uint8)
    if tokens.size and not tokens.all():
        tokens = tokens[tokens != PAD_ID]
    return tokens[:max_len]


# ------------------------------------------------------------------------------------ IMDB
def imdb_dir(root: Path | None) -> Path:
    """The ``aclImdb`` directory: ``root`` or ``root/aclImdb`` (default ``$SHRINKSSM_DATA/aclImdb``)."""
    root = data_home() / IMDB_DIR if root is None else Path(root)
    nested = root / IMDB_DIR
    return nested if nested.is_dir() else root


def _imdb_folders() -> list[str]:
    return [f"{split}/{cls}" for split in ("train", "test") for cls in IMDB_CLASSES]


def read_imdb_split(directory: Path, split: str) -> tuple[list[bytes], np.ndarray, list[str]]:
    """Read ``directory/split/{neg,pos}/*.txt``.

    Returns
    -------
    texts : list of bytes
        File contents, negatives first, each class in file-name order.
    labels : numpy.ndarray
        ``(n,) int64``: 0 ``neg``, 1 ``pos``.
    names : list of str
        ``"<split>/<class>/<file>"`` per review.
    """
    texts, labels, names = [], [], []
    for label, cls in enumerate(IMDB_CLASSES):
        folder = Path(directory) / split / cls
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise DataFileError(f"IMDB folder {folder} holds no .txt review")
        for path in files:
            texts.append(path.read_bytes())
            labels.append(label)
            names.append(f"{split}/{cls}/{path.name}")
    return texts, np.asarray(labels, dtype=np.int64), names


def load_imdb(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_len: int = 4096,
) -> DataSplits:
    """IMDB reviews as byte sequences (LRA "Text"): binary sentiment classification.

    Parameters
    ----------
    root : Path, optional
        The ``aclImdb`` directory or its parent (default ``$SHRINKSSM_DATA/aclImdb``).
    val_fraction, seed : float, int
        Validation carved from the 25,000 training reviews, stratified.
    max_len : int
        Truncate reviews to this many bytes (LRA / S4: 4096).

    Returns
    -------
    DataSplits
        Inputs ``(num, L) uint8`` byte tokens, right-padded with 0, with lengths; ``L`` is
        ``min(max_len, longest review)``. Targets ``(num,)`` in {0, 1}. Spec: classification,
        2 classes, ``tokens=True``, ``vocab_size=256``, ``variable_length=True``.

    Raises
    ------
    DataNotFoundError
        A folder is missing. DataFileError: a folder without reviews, or an empty review.
    """
    check_int(max_len, "max_len", 1)
    directory = imdb_dir(root)
    found = {f: (directory / f).is_dir() for f in _imdb_folders()}
    if not all(found.values()):
        raise missing_files("imdb", directory, _imdb_folders(), found, INSTALL["imdb"])
    parts, truncated = {}, {}
    for split in ("train", "test"):
        texts, labels, names = read_imdb_split(directory, split)
        rows = [text_to_tokens(t, len(t)) for t in texts]
        truncated[split] = sum(r.size > max_len for r in rows)
        rows = [r[:max_len] for r in rows]
        empty = [n for n, r in zip(names, rows, strict=True) if r.size == 0]
        if empty:
            raise DataFileError(
                f"IMDB reviews with no text: {empty[:5]} ({len(empty)} in all) in {directory}"
            )
        parts[split] = (rows, labels)
    seq_len = max(r.size for rows, _ in parts.values() for r in rows)
    data = {}
    for split, (rows, labels) in parts.items():
        padded, lengths = pad_rows(rows, seq_len, dtype=np.dtype(np.uint8), pad_value=PAD_ID)
        data[split] = SequenceData(padded, labels, lengths=lengths)
    train, val = holdout(data["train"], val_fraction, seed=seed, stream=VAL_STREAM)
    spec = TaskSpec(
        kind="classification", d_input=VOCAB_SIZE, seq_len=seq_len, n_classes=2, tokens=True,
        vocab_size=VOCAB_SIZE, metric="accuracy", variable_length=True, name="imdb",
    )  # fmt: skip
    meta = {
        "name": "imdb",
        "root": str(directory),
        "tokens": "bytes (id = byte value, 0 = padding)",
        "pad_id": PAD_ID,
        "max_len": max_len,
        "truncated": truncated,
        "seed": seed,
        "val_fraction": val_fraction,
        "sizes": {"train": len(train), "val": len(val), "test": len(data["test"])},
        "class_names": list(IMDB_CLASSES),
    }
    return DataSplits(train, val, data["test"], spec, meta)


# ------------------------------------------------------------------------------------- AAN
def aan_dir(root: Path | None) -> Path:
    """The directory of the AAN files: ``root`` or ``root/tsv_data`` (default ``$SHRINKSSM_DATA/aan``)."""
    root = data_home() / "aan" if root is None else Path(root)
    nested = root / AAN_DIR
    return nested if nested.is_dir() else root


def _field_bytes(field: bytes, decode_literals: bool, where: str) -> bytes:
    """The document bytes of one text field (a ``b'...'`` literal decoded when asked)."""
    if decode_literals and len(field) >= 3 and field[:2] in (b"b'", b'b"') and field[-1:] == field[1:2]:
        try:
            value = ast.literal_eval(field.decode("utf-8"))
        except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
            raise DataFileError(
                f"{where}: text field looks like a bytes literal but does not parse: {exc}"
            ) from exc
        if not isinstance(value, bytes):
            raise DataFileError(f"{where}: text field is a literal of type {type(value).__name__}, not bytes")
        return value
    return field


def read_aan_tsv(
    path: Path, *, max_len: int, decode_literals: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Read one AAN pairs file.

    Parameters
    ----------
    path : Path
        ``new_aan_pairs.{train,eval,test}.tsv``: ``label, id1, id2, text1, text2`` per line.
    max_len : int
        Truncate each document to this many bytes.
    decode_literals : bool
        Decode ``b'...'`` text fields (see the module docstring).

    Returns
    -------
    docs1, docs2 : list of numpy.ndarray
        ``(len_i,) uint8`` byte tokens per document (possibly empty).
    labels : numpy.ndarray
        ``(n,) int64`` in {0, 1}.

    Raises
    ------
    DataFileError
        A line without exactly five tab-separated fields, a label that is not 0 or 1, a bad
        literal; the message names file and line. A first line whose label field reads
        ``label`` is taken as a header and skipped.
    """
    docs1, docs2, labels = [], [], []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            fields = line.split(b"\t")
            where = f"{path}, line {number}"
            if len(fields) != 5:
                raise DataFileError(
                    f"{where}: expected 5 tab-separated fields (label, id1, id2, text1, text2), "
                    f"found {len(fields)}"
                )
            if number == 1 and fields[0].strip().lower() == b"label":
                continue
            try:
                label = float(fields[0])
            except ValueError:
                label = -1.0
            if label not in (0.0, 1.0):
                raise DataFileError(f"{where}: label must be 0 or 1, found {fields[0][:20]!r}")
            docs1.append(text_to_tokens(_field_bytes(fields[3], decode_literals, where), max_len))
            docs2.append(text_to_tokens(_field_bytes(fields[4], decode_literals, where), max_len))
            labels.append(int(label))
    if not labels:
        raise DataFileError(f"AAN file {path} holds no pair")
    return docs1, docs2, np.asarray(labels, dtype=np.int64)


def load_aan(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_len: int = 4000,
    decode_literals: bool = True,
    official_val: bool = True,
) -> DataSplits:
    """AAN document matching (LRA "Retrieval"): do two papers cite one another? Byte level, pairs.

    Parameters
    ----------
    root : Path, optional
        Directory holding the three ``new_aan_pairs.*.tsv`` files (or its parent holding
        ``tsv_data``); default ``$SHRINKSSM_DATA/aan``.
    val_fraction, seed : float, int
        Used only with ``official_val=False`` (validation carved from the training pairs,
        stratified); by default the official ``eval`` file is the validation split.
    max_len : int
        Bytes kept per document (LRA: 4000).
    decode_literals : bool
        Decode ``b'...'`` text fields into the bytes they stand for.
    official_val : bool
        Use ``new_aan_pairs.eval.tsv`` as validation (default).

    Returns
    -------
    DataSplits
        Inputs ``(num, 2 L) uint8``: document 1 in ``[0, L)``, document 2 in ``[L, 2 L)``, each
        right-padded with 0; no lengths (see the module docstring for how a model consumes it).
        ``L = min(max_len, longest document)``. Targets ``(num,)`` in {0, 1}. Spec:
        classification, 2 classes, ``tokens=True``, ``vocab_size=256``, ``seq_len = 2 L``.
        ``meta["pair"] = {"n_documents": 2, "document_len": L, "pad_id": 0}``.
    """
    check_int(max_len, "max_len", 1)
    check_bool(decode_literals, "decode_literals")
    check_bool(official_val, "official_val")
    directory = aan_dir(root)
    found = {f: (directory / f).is_file() for f in AAN_FILES.values()}
    if not all(found.values()):
        raise missing_files("aan", directory, list(AAN_FILES.values()), found, INSTALL["aan"])
    parts = {
        split: read_aan_tsv(directory / fname, max_len=max_len, decode_literals=decode_literals)
        for split, fname in AAN_FILES.items()
    }
    doc_len = max(max(d.size for d in docs) for d1, d2, _ in parts.values() for docs in (d1, d2))
    doc_len = max(doc_len, 1)
    data, empty = {}, {}
    for split, (docs1, docs2, labels) in parts.items():
        pairs = np.zeros((len(labels), 2 * doc_len), dtype=np.uint8)  # (num, 2 L), 0 = padding
        for i, (first, second) in enumerate(zip(docs1, docs2, strict=True)):
            pairs[i, : first.size] = first
            pairs[i, doc_len : doc_len + second.size] = second
        data[split] = SequenceData(pairs, labels)
        empty[split] = sum(d.size == 0 for d in docs1) + sum(d.size == 0 for d in docs2)
    if official_val:
        train, val = data["train"], data["val"]
    else:
        train, val = holdout(data["train"], val_fraction, seed=seed, stream=VAL_STREAM)
    spec = TaskSpec(
        kind="classification", d_input=VOCAB_SIZE, seq_len=2 * doc_len, n_classes=2, tokens=True,
        vocab_size=VOCAB_SIZE, metric="accuracy", variable_length=False, n_segments=2, name="aan",
    )  # fmt: skip
    meta = {
        "name": "aan",
        "root": str(directory),
        "files": {split: str(directory / f) for split, f in AAN_FILES.items()},
        "pair": {"n_documents": 2, "document_len": doc_len, "pad_id": PAD_ID},
        "tokens": "bytes (id = byte value, 0 = padding)",
        "max_len": max_len,
        "decode_literals": decode_literals,
        "empty_documents": empty,
        "val_source": AAN_FILES["val"]
        if official_val
        else f"carved from {AAN_FILES['train']} ({val_fraction})",
        "seed": seed,
        "val_fraction": None if official_val else val_fraction,
        "sizes": {"train": len(train), "val": len(val), "test": len(data["test"])},
        "class_names": ["unrelated", "related"],
    }
    return DataSplits(train, val, data["test"], spec, meta)
