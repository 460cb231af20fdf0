"""IMDB (aclImdb folders) and AAN (LRA pair TSVs) as byte sequences, on small files in the
official layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_layouts import make_imdb_dir, write_aan_tsv

from shrinkssm.data import DataFileError, DataNotFoundError, load_dataset


def as_bytes(row: torch.Tensor, length: int | None = None) -> bytes:
    values = row.tolist() if length is None else row[:length].tolist()
    return bytes(values)


# ------------------------------------------------------------------------------------ IMDB
@pytest.fixture
def imdb(tmp_path):
    return tmp_path, make_imdb_dir(tmp_path, n_per_class=(10, 4))


def test_imdb_bytes_labels_and_splits(imdb):
    parent, written = imdb
    data = load_dataset("imdb", root=parent, val_fraction=0.2, seed=3)
    spec = data.spec
    assert (spec.kind, spec.n_classes, spec.vocab_size, spec.tokens, spec.variable_length) == (
        "classification", 2, 256, True, True,
    )  # fmt: skip
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 8)
    assert data.train.inputs.dtype == torch.uint8
    longest = max(len(t) for texts in written.values() for t in texts)
    assert spec.seq_len == longest
    # Test split in file-name order, negatives first: bytes and labels exactly as written.
    expected = written[("test", 0)] + written[("test", 1)]
    for i, text in enumerate(expected):
        assert as_bytes(data.test.inputs[i], int(data.test.lengths[i])) == text
        assert data.test.inputs[i, len(text) :].sum() == 0
    assert data.test.targets.tolist() == [0] * 4 + [1] * 4
    # Train + val are the training reviews (UTF-8 bytes of 'café' kept as two tokens), stratified.
    seen = {as_bytes(s.inputs[i], int(s.lengths[i])) for s in (data.train, data.val) for i in range(len(s))}
    assert seen == set(written[("train", 0)] + written[("train", 1)])
    assert np.bincount(data.val.targets.numpy()).tolist() == [2, 2]
    # Root may be the aclImdb folder itself; the split is a function of the seed.
    again = load_dataset("imdb", root=parent / "aclImdb", val_fraction=0.2, seed=3)
    assert again.val.inputs.equal(data.val.inputs)


def test_imdb_truncation(imdb):
    parent, written = imdb
    data = load_dataset("imdb", root=parent, max_len=20)
    assert data.spec.seq_len == 20 and int(data.test.lengths.max()) == 20
    assert as_bytes(data.test.inputs[0]) == written[("test", 0)][0][:20]
    assert data.meta["truncated"]["test"] == sum(
        len(t) > 20 for t in written[("test", 0)] + written[("test", 1)]
    )


def test_imdb_missing_and_bad_files(tmp_path, imdb):
    with pytest.raises(DataNotFoundError, match=r"(?s)train/pos  MISSING.*aclImdb_v1"):
        load_dataset("imdb", root=tmp_path / "nowhere")
    parent, _ = imdb
    (parent / "aclImdb" / "test" / "pos" / "99_9.txt").write_bytes(b"")
    with pytest.raises(DataFileError, match="no text"):
        load_dataset("imdb", root=parent)
    for f in (parent / "aclImdb" / "test" / "pos").glob("*.txt"):
        f.unlink()
    with pytest.raises(DataFileError, match="holds no .txt review"):
        load_dataset("imdb", root=parent)


# ------------------------------------------------------------------------------------- AAN
PAIRS = [
    (1, b"Paper one cites 'two'.\nNew line\tand tab.", b"Paper two."),
    (0, b"Unrelated text \xc3\xa9 bytes", b"Another paper, a bit longer than the first."),
    (1, b"x", b"Short \\ backslash"),
    (0, b"Fourth", b"Pair"),
]


@pytest.fixture
def aan_dir(tmp_path):
    """The LRA release layout ``lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv``."""
    directory = tmp_path / "lra_release" / "tsv_data"
    write_aan_tsv(directory / "new_aan_pairs.train.tsv", PAIRS * 3)
    write_aan_tsv(directory / "new_aan_pairs.eval.tsv", PAIRS[:2])
    write_aan_tsv(directory / "new_aan_pairs.test.tsv", PAIRS[2:])
    return tmp_path / "lra_release"


def test_aan_pair_layout(aan_dir):
    data = load_dataset("aan", root=aan_dir)
    doc_len = max(len(d) for _, a, b in PAIRS for d in (a, b))
    assert data.meta["pair"] == {"n_documents": 2, "document_len": doc_len, "pad_id": 0}
    spec = data.spec
    assert (spec.seq_len, spec.vocab_size, spec.n_classes, spec.tokens) == (2 * doc_len, 256, 2, True)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 2, 2)
    assert data.train.lengths is None and data.meta["val_source"] == "new_aan_pairs.eval.tsv"
    assert json.loads(json.dumps(data.meta))
    for split, pairs in ((data.train, PAIRS * 3), (data.val, PAIRS[:2]), (data.test, PAIRS[2:])):
        x = split.inputs.view(len(split), 2, doc_len)  # how a model splits the two documents
        for i, (label, first, second) in enumerate(pairs):
            assert as_bytes(x[i, 0], len(first)) == first and as_bytes(x[i, 1], len(second)) == second
            assert x[i, 0, len(first) :].sum() == 0 and x[i, 1, len(second) :].sum() == 0
            assert split.targets[i].item() == label
    batch = next(data.test.iterate(2, shuffle=False, seed=0, epoch=0, drop_last=False))
    assert batch.mask is None and tuple(batch.x.shape) == (2, 2 * doc_len)


def test_aan_options(aan_dir):
    short = load_dataset("aan", root=aan_dir, max_len=5)
    assert short.meta["pair"]["document_len"] == 5 and short.spec.seq_len == 10
    assert as_bytes(short.test.inputs[1]) == b"Fourt" + b"Pair\x00"
    raw = load_dataset("aan", root=aan_dir, decode_literals=False)
    x = raw.test.inputs.view(2, 2, -1)
    assert as_bytes(x[0, 0], 4) == b"b'x'"  # the field as stored
    carved = load_dataset("aan", root=aan_dir / "tsv_data", official_val=False, val_fraction=0.25, seed=0)
    assert (len(carved.train), len(carved.val)) == (9, 3)


def test_aan_plain_text_fields_and_headers(tmp_path):
    directory = tmp_path / "aan"
    plain = [(label, a.replace(b"\n", b" ").replace(b"\t", b" "), b) for label, a, b in PAIRS]
    for name in ("train", "eval", "test"):
        write_aan_tsv(directory / f"new_aan_pairs.{name}.tsv", plain, literals=False)
    path = directory / "new_aan_pairs.test.tsv"
    path.write_text("label\tid1\tid2\ttext1\ttext2\n" + path.read_text())
    data = load_dataset("aan", root=directory)
    assert len(data.test) == 4
    assert as_bytes(data.test.inputs.view(4, 2, -1)[1, 0], len(plain[1][1])) == plain[1][1]


def test_aan_missing_and_corrupt_files(tmp_path, aan_dir):
    with pytest.raises(DataNotFoundError, match=r"(?s)new_aan_pairs.eval.tsv  MISSING.*lra_release"):
        load_dataset("aan", root=tmp_path / "nowhere")
    path = aan_dir / "tsv_data" / "new_aan_pairs.test.tsv"
    cases = {
        "1.0\tA\tB\tb'x'\n": "expected 5 tab-separated fields",
        "2.0\tA\tB\tb'x'\tb'y'\n": "label must be 0 or 1",
        "1\tA\tB\tb'x\\'\tb'y'\n": "does not parse",
        "": "holds no pair",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataFileError, match=message):
            load_dataset("aan", root=aan_dir)
