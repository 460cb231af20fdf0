"""Pathfinder: the LRA PNG/metadata folder layout (PNGs written here by a minimal independent
encoder), the empty-image rule, the .npz cache and its prepare step, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from official_layouts import make_pathfinder_dir, png_bytes

from shrinkssm.data import DataFileError, DataNotFoundError, load_dataset
from shrinkssm.data.pathfinder import npz_name, prepare_pathfinder, read_metadata
from shrinkssm.data.prepare import prepare


def rows(split):
    return {bytes(split.inputs[i, :, 0].tolist()): int(split.targets[i]) for i in range(len(split))}


@pytest.fixture
def pathfinder_root(tmp_path):
    images, labels = make_pathfinder_dir(tmp_path, n_batches=3, n_per_batch=10, empty=(0, 2))
    return tmp_path, images, labels


def test_folder_layout_pixels_labels_and_splits(pathfinder_root):
    root, images, labels = pathfinder_root
    data = load_dataset("pathfinder", root=root, val_fraction=0.2, test_fraction=0.2, seed=1)
    spec = data.spec
    assert (spec.kind, spec.seq_len, spec.d_input, spec.n_classes) == ("classification", 1024, 1, 2)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 5, 6)  # 29 images: one was empty
    assert data.meta["skipped_empty"] == ["imgs/0/sample_2.png"]
    assert data.meta["difficulty"] == "curv_contour_length_14" and json.loads(json.dumps(data.meta))
    expected = {bytes(img.reshape(-1).tolist()): int(y) for img, y in zip(images, labels, strict=True)}
    together = {**rows(data.train), **rows(data.val), **rows(data.test)}
    assert together == expected  # every decoded pixel (raster order) and its label
    batch = next(data.test.iterate(6, shuffle=False, seed=0, epoch=0, drop_last=False))
    assert float(batch.x.max()) <= 1.0 and batch.x.shape == (6, 1024, 1)  # normalize="unit"
    # The same split from the difficulty folder itself, or with the alias of the difficulty.
    again = load_dataset(
        "pathfinder", root=root / "pathfinder32" / "curv_contour_length_14", val_fraction=0.2,
        test_fraction=0.2, seed=1, difficulty="hard",
    )  # fmt: skip
    assert again.test.inputs.equal(data.test.inputs)


def test_npz_cache_via_prepare(pathfinder_root, tmp_path):
    root, images, labels = pathfinder_root
    out = prepare("pathfinder", tmp_path / "cache", source=root)
    assert out.name == npz_name(32, "hard") == "pathfinder32_curv_contour_length_14.npz"
    with np.load(out) as archive:
        assert archive["x"].shape == (29, 32, 32) and np.array_equal(archive["y"], labels)
    from_cache = load_dataset("pathfinder", root=tmp_path / "cache", seed=4)
    from_folder = load_dataset("pathfinder", root=root, seed=4)
    assert from_cache.test.inputs.equal(from_folder.test.inputs)
    assert from_cache.train.targets.equal(from_folder.train.targets)
    assert load_dataset("pathfinder", root=out).spec.seq_len == 1024  # the file itself
    with pytest.raises(ValueError, match="refusing to overwrite"):
        prepare_pathfinder(tmp_path / "cache", source=root)
    np.savez(tmp_path / "cache" / out.name, x=np.zeros((3, 31, 31), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(DataFileError, match="'x' must be uint8"):
        load_dataset("pathfinder", root=tmp_path / "cache")


def test_metadata_as_text_or_numpy(tmp_path):
    text = tmp_path / "0.npy"
    text.write_text("imgs/0 sample_0.png 0 1 1.8 14\nimgs/0 sample_1.png 1 0 1.8 14\n")
    assert read_metadata(text) == [("imgs/0", "sample_0.png", 1), ("imgs/0", "sample_1.png", 0)]
    real = tmp_path / "1.npy"
    np.save(real, np.array([["imgs/1", "sample_0.png", "0", "1", "1.8"]]))
    assert read_metadata(real) == [("imgs/1", "sample_0.png", 1)]
    text.write_text("imgs/0 sample_0.png 0 7\n")
    with pytest.raises(DataFileError, match="label 0 or 1"):
        read_metadata(text)


def test_missing_and_corrupt(tmp_path, pathfinder_root):
    with pytest.raises(
        DataNotFoundError, match=r"(?s)pathfinder32/curv_contour_length_14/metadata.*lra_release"
    ):
        load_dataset("pathfinder", root=tmp_path / "nowhere")
    root, _, _ = pathfinder_root
    base = root / "pathfinder32" / "curv_contour_length_14"
    (base / "imgs" / "1" / "sample_3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataFileError, match="sample_3.png"):
        load_dataset("pathfinder", root=root)
    (base / "imgs" / "1" / "sample_3.png").write_bytes(png_bytes(np.zeros((16, 16), np.uint8)))
    with pytest.raises(DataFileError, match=r"is \(16, 16\), expected \(32, 32\)"):
        load_dataset("pathfinder", root=root)
    (base / "imgs" / "1" / "sample_3.png").unlink()
    with pytest.raises(DataNotFoundError, match="sample_3.png listed in"):
        load_dataset("pathfinder", root=root)
    (base / "imgs" / "1" / "sample_3.png").write_bytes(png_bytes(np.zeros((32, 32), np.uint8)))
    (root / "outside.png").write_bytes(png_bytes(np.zeros((32, 32), np.uint8)))
    (base / "metadata" / "9.npy").write_text("../.. outside.png 0 1\n")
    with pytest.raises(DataFileError, match="outside"):
        load_dataset("pathfinder", root=root)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        load_dataset("pathfinder", root=root, difficulty="medium")
