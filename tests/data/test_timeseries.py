"""UCR/UEA ``.ts`` files: the reader on files written here in the archive format, the loader's
padding, lengths and train-only standardisation, the errors, and (where aeon is installed) the
bundled data sets against aeon's own reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from official_layouts import make_ts_dir, ts_text

from shrinkssm.data import DataFileError, DataNotFoundError, load_dataset
from shrinkssm.data.timeseries import aeon_data_dir, read_ts

CLASSES = ["walk", "run", "sit"]


def random_cases(rng, n, n_channels, lengths):
    series = [
        rng.normal(loc=3.0, scale=2.0, size=(n_channels, int(lengths[i % len(lengths)]))) for i in range(n)
    ]
    labels = [i % len(CLASSES) for i in range(n)]
    return series, labels


@pytest.fixture
def equal_dir(tmp_path):
    rng = np.random.default_rng(0)
    train = random_cases(rng, 30, 2, [16])
    test = random_cases(rng, 9, 2, [16])
    make_ts_dir(tmp_path, "Toy", train, test, CLASSES)
    return tmp_path, train, test


@pytest.fixture
def unequal_dir(tmp_path):
    rng = np.random.default_rng(1)
    train = random_cases(rng, 12, 3, [5, 9, 7])
    test = random_cases(rng, 6, 3, [4, 11])
    make_ts_dir(tmp_path, "Vowels", train, test, CLASSES)
    return tmp_path, train, test


def test_read_ts_values_labels_and_header(equal_dir):
    root, train, _ = equal_dir
    ts = read_ts(root / "Toy" / "Toy_TRAIN.ts")
    assert ts.class_names == tuple(CLASSES) and ts.labels.tolist() == train[1]
    assert ts.header["problemname"] == "Toy" and ts.header["dimensions"] == "2"
    for got, want in zip(ts.series, train[0], strict=True):
        np.testing.assert_array_equal(got, want.T)  # repr() round-trips floats exactly


def test_equal_length_loader_standardises_with_training_statistics(equal_dir):
    root, train, test = equal_dir
    data = load_dataset("ucr", root=root, dataset="Toy", val_fraction=0.2, seed=0)
    spec = data.spec
    assert (spec.kind, spec.seq_len, spec.d_input, spec.n_classes, spec.variable_length) == (
        "classification", 16, 2, 3, False,
    )  # fmt: skip
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 9)
    assert data.train.lengths is None and np.bincount(data.val.targets.numpy()).tolist() == [2, 2, 2]
    x = data.train.inputs.numpy().astype(np.float64)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(0, 1)), 1, atol=1e-5)
    mean, std = (np.array(data.meta["normalize"][k]) for k in ("mean", "std"))
    raw_test = np.stack([s.T for s in test[0]])
    np.testing.assert_allclose(data.test.inputs.numpy(), (raw_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert data.test.targets.tolist() == test[1] and json.loads(json.dumps(data.meta))
    # The statistics are those of the training split only (not validation, not test).
    train_ids = {tuple(np.round(r, 4)) for r in data.train.inputs.numpy()[:, 0, :] * std + mean}
    assert len(train_ids) == 24
    raw = load_dataset("ucr", root=root, dataset="Toy", normalize="none")
    np.testing.assert_allclose(raw.test.inputs.numpy(), raw_test, rtol=1e-6)


def test_unequal_lengths_are_padded_with_lengths_and_mask(unequal_dir):
    root, train, test = unequal_dir
    data = load_dataset("ucr", root=root, dataset="Vowels", val_fraction=0.25)
    assert data.spec.variable_length and data.spec.seq_len == 11 and data.spec.d_input == 3
    assert data.test.lengths.tolist() == [s.shape[1] for s in test[0]]
    mean, std = (np.array(data.meta["normalize"][k]) for k in ("mean", "std"))
    for i, s in enumerate(test[0]):
        n = s.shape[1]
        np.testing.assert_allclose(data.test.inputs[i, :n].numpy(), (s.T - mean) / std, rtol=1e-5, atol=1e-5)
        assert data.test.inputs[i, n:].abs().sum() == 0
    # Mean / std over valid steps only (padding excluded).
    valid = np.concatenate(
        [data.train.inputs[i, : data.train.lengths[i]].numpy() for i in range(len(data.train))]
    )
    np.testing.assert_allclose(valid.mean(0), 0, atol=1e-5)
    batch = next(data.test.iterate(6, shuffle=False, seed=0, epoch=0, drop_last=False))
    assert batch.mask.sum(1).tolist() == data.test.lengths.tolist()


def test_missing_values(tmp_path):
    rng = np.random.default_rng(2)
    series, labels = random_cases(rng, 6, 1, [8])
    series[1][0, 3] = np.nan
    make_ts_dir(tmp_path, "Gappy", (series, labels), random_cases(rng, 3, 1, [8]), CLASSES)
    with pytest.raises(ValueError, match="missing values"):
        load_dataset("ucr", root=tmp_path, dataset="Gappy", val_fraction=0.0)
    data = load_dataset("ucr", root=tmp_path, dataset="Gappy", val_fraction=0.0, missing="mean")
    assert np.isfinite(data.train.inputs.numpy()).all() and data.train.inputs[1, 3, 0].item() == 0.0
    for s in series:
        s[0, :] = np.nan
    make_ts_dir(tmp_path, "Empty", (series, labels), random_cases(rng, 3, 1, [8]), CLASSES)
    with pytest.raises(DataFileError, match="a channel has no value"):
        load_dataset("ucr", root=tmp_path, dataset="Empty", val_fraction=0.0, missing="mean")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("@timeStamps false", "@timeStamps true"), "time-stamped"),
        (lambda t: t.replace("@data\n", ""), "expected a header line"),
        (lambda t: t.replace("@classLabel true walk run sit", "@classLabel false"), "@classLabel true"),
        (lambda t: t.rstrip("\n").rsplit(":", 1)[0] + ":jump\n", "'jump' is not in"),
        (lambda t: t + "1.0,2.0:run\n", "1 channels, the header says 2"),
        (lambda t: t + "1.0,2.0:1.0:run\n", "differ in length"),
        (lambda t: t + "1.0,abc:1.0,2.0:run\n", "not a number"),
        (lambda t: t.split("@data")[0] + "@data\n", "no case"),
        (lambda t: t.replace("@dimensions 2", "@dimensions two"), "@dimensions must be a positive integer"),
    ],
)
def test_format_errors(tmp_path, edit, message):
    rng = np.random.default_rng(3)
    series, labels = random_cases(rng, 3, 2, [4])
    path = tmp_path / "Bad_TRAIN.ts"
    path.write_text(edit(ts_text(series, labels, CLASSES, name="Bad")))
    with pytest.raises(DataFileError, match=message):
        read_ts(path)


def test_missing_files_and_bad_names(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)Nope_TRAIN.ts  MISSING.*pip install aeon"):
        load_dataset("ucr", root=tmp_path, dataset="Nope")
    with pytest.raises(ValueError, match="dataset must be"):
        load_dataset("ucr", root=tmp_path, dataset="../etc")


# --------------------------------------------------------- bundled data (needs aeon installed)
AEON_DIR = aeon_data_dir()
needs_aeon = pytest.mark.skipif(AEON_DIR is None, reason="aeon is not installed (pip install aeon)")


@needs_aeon
@pytest.mark.parametrize("name", ["ArrowHead", "BasicMotions", "JapaneseVowels"])
def test_reader_matches_aeon(name):
    aeon_datasets = pytest.importorskip("aeon.datasets")
    for split in ("train", "test"):
        X, y = aeon_datasets.load_classification(name, split=split, extract_path=str(AEON_DIR))
        ts = read_ts(AEON_DIR / name / f"{name}_{split.upper()}.ts")
        # aeon lower-cases header and labels (BasicMotions: 'Standing' -> 'standing'); we keep them.
        assert [ts.class_names[i].lower() for i in ts.labels] == [str(v) for v in y]
        assert len(ts.series) == len(X)
        for ours, theirs in zip(ts.series, X, strict=True):
            np.testing.assert_allclose(ours.T, np.asarray(theirs, dtype=np.float64), rtol=0, atol=0)


@needs_aeon
def test_bundled_japanese_vowels():
    data = load_dataset("ucr", dataset="JapaneseVowels")
    assert (len(data.train) + len(data.val), len(data.test)) == (270, 370)
    assert data.spec.d_input == 12 and data.spec.seq_len == 29 and data.spec.n_classes == 9
    assert int(data.train.lengths.min()) >= 7 and data.spec.variable_length
