"""IDX and CIFAR readers against files written independently in the official layouts."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from official_layouts import cifar_batch_bytes, idx_bytes, write_idx

from shrinkssm.data.formats import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataFileError,
    find_file,
    parse_idx,
    read_cifar_batch,
    read_idx,
)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 2, 3)])
def test_parse_idx_round_trips_every_type_code(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    out = parse_idx(idx_bytes(array))
    assert out.shape == shape and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # a writable, native-endian copy


def test_idx_magic_numbers_are_the_published_ones():
    assert (
        idx_bytes(np.zeros((2, 28, 28), np.uint8))[:4]
        == IDX_IMAGES_MAGIC.to_bytes(4, "big")
        == b"\x00\x00\x08\x03"
    )
    assert idx_bytes(np.zeros(2, np.uint8))[:4] == IDX_LABELS_MAGIC.to_bytes(4, "big") == b"\x00\x00\x08\x01"


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_raw_and_gzip(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=gz)
    np.testing.assert_array_equal(read_idx(path, expected_magic=IDX_IMAGES_MAGIC), images)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)


def _corrupt_cases():
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    return {
        "shorter than the 4-byte magic": good[:3],
        "does not start with two zero bytes": b"\x01" + good[1:],
        "unknown type code": good[:2] + b"\x07" + good[3:],
        "0 dimensions": good[:3] + b"\x00",
        "shorter than its 16-byte header": good[:10],
        "holds only 39 bytes": good[:-1],
        "1 unexpected trailing bytes": good + b"\x00",
    }


@pytest.mark.parametrize("fragment", list(_corrupt_cases()))
def test_parse_idx_rejects_damaged_files_with_a_clear_message(fragment):
    with pytest.raises(DataFileError, match="corrupt or truncated IDX file my.idx") as info:
        parse_idx(_corrupt_cases()[fragment], source="my.idx")
    assert fragment in str(info.value)


def test_read_idx_checks_the_expected_magic(tmp_path):
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), gz=False)
    with pytest.raises(DataFileError, match="magic number 0x00000801, expected 0x00000803"):
        read_idx(path, expected_magic=IDX_IMAGES_MAGIC)


def test_read_idx_truncated_file_names_the_path(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((10, 28, 28), np.uint8))[:5000])
    with pytest.raises(DataFileError, match=f"corrupt or truncated IDX file {path}.*only 5000 bytes"):
        read_idx(path)


def test_read_idx_truncated_or_garbled_gzip(tmp_path):
    packed = gzip.compress(idx_bytes(np.random.default_rng(2).integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    truncated = tmp_path / "a.gz"
    truncated.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataFileError, match=f"corrupt or truncated gzip file {truncated}"):
        read_idx(truncated)
    garbled = tmp_path / "b.gz"
    garbled.write_bytes(packed[:20] + bytes(255 - b for b in packed[20:200]) + packed[200:])
    with pytest.raises(DataFileError, match="corrupt or truncated gzip file"):
        read_idx(garbled)


def test_find_file_prefers_raw_then_gzip(tmp_path):
    assert find_file(tmp_path, "x") is None
    (tmp_path / "x.gz").write_bytes(b"")
    assert find_file(tmp_path, "x") == tmp_path / "x.gz"
    (tmp_path / "x").write_bytes(b"")
    assert find_file(tmp_path, "x") == tmp_path / "x"


# ------------------------------------------------------------------------------------- CIFAR
def test_read_cifar_batch_official_layout(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (6, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9]
    path = tmp_path / "data_batch_1"
    path.write_bytes(cifar_batch_bytes(data, labels))
    out_data, out_labels = read_cifar_batch(path)
    np.testing.assert_array_equal(out_data, data)
    np.testing.assert_array_equal(out_labels, labels)
    assert out_labels.dtype == np.int64


def test_read_cifar_batch_accepts_python3_str_keys(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": data, "labels": [0, 9]}, protocol=4))
    assert read_cifar_batch(path)[1].tolist() == [0, 9]


def test_read_cifar_batch_truncated(tmp_path):
    blob = cifar_batch_bytes(np.zeros((4, 3072), np.uint8), [0, 1, 2, 3])
    path = tmp_path / "data_batch_2"
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(DataFileError, match=f"corrupt or truncated CIFAR batch {path}: cannot unpickle"):
        read_cifar_batch(path)


def test_read_cifar_batch_refuses_foreign_globals_without_running_them(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")

    class Evil:
        def __reduce__(self):
            import os

            return (os.remove, (str(victim),))

    path = tmp_path / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataFileError, match="refusing to unpickle"):
        read_cifar_batch(path)
    assert victim.read_text() == "still here"


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2, 3], "expected a pickled dict"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, r"\(n, 3072\) uint8"),
        ({b"data": np.zeros((2, 3072), np.int16), b"labels": [0, 1]}, r"\(n, 3072\) uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"in \[0, 10\)"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, r"in \[0, 10\)"),
    ],
)
def test_read_cifar_batch_rejects_wrong_contents(tmp_path, payload, message):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataFileError, match=message):
        read_cifar_batch(path)
