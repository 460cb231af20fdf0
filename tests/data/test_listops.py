"""ListOps: the generator (format, lengths, distinct splits, values against an independent
evaluator, determinism) and the loader of the official TSV files (written here by hand)."""

from __future__ import annotations

import json
import random
import re
import statistics

import numpy as np
import pytest
from official_layouts import listops_source, write_listops_tsv

from shrinkssm.data import DataFileError, DataNotFoundError, load_dataset
from shrinkssm.data.listops import (
    VOCAB,
    evaluate,
    generate_listops,
    parse_source,
    random_tree,
    to_source,
)

INNERMOST = re.compile(r"\[(MIN|MAX|MED|SM)((?: \d)+) \]")
REDUCE = {
    "MIN": min,
    "MAX": max,
    "MED": lambda v: int(statistics.median(v)),  # LRA: int(np.median(v)), i.e. rounded down
    "SM": lambda v: sum(v) % 10,
}


def brute_force_value(source: str) -> int:
    """Independent evaluator: drop parentheses, then rewrite innermost ``[OP d d ... ]`` by their values."""
    text = " ".join(source.replace("(", " ").replace(")", " ").split())
    while True:
        reduced = INNERMOST.sub(lambda m: str(REDUCE[m.group(1)]([int(d) for d in m.group(2).split()])), text)
        if reduced == text:
            break
        text = reduced
    assert text.isdigit() and len(text) == 1, f"did not reduce to a digit: {text[:60]!r}"
    return int(text)


def tree_stats(tree, depth=1):
    """(max depth, list of argument counts, token count without parentheses)."""
    if isinstance(tree, int):
        return depth, [], 1
    _, args = tree
    stats = [tree_stats(a, depth + 1) for a in args]
    return (
        max(s[0] for s in stats),
        [len(args)] + [n for s in stats for n in s[1]],
        2 + sum(s[2] for s in stats),
    )


def read_rows(path):
    lines = path.read_text().splitlines()
    return lines[0], [tuple(line.split("\t")) for line in lines[1:]]


# ---------------------------------------------------------------------------- expressions
def test_official_string_layout_and_round_trip():
    tree = ("[MAX", (2, 9, ("[MIN", (4, 7)), 0))
    assert to_source(tree) == "( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )"
    assert to_source(tree) == listops_source(("[MAX", [2, 9, ("[MIN", [4, 7]), 0]))
    assert parse_source(to_source(tree)) == tree
    assert evaluate(tree) == brute_force_value(to_source(tree)) == 9
    assert to_source(5) == "5" and parse_source("5") == 5


@pytest.mark.parametrize(
    "tree, value",
    [
        (("[MED", (1, 2)), 1),  # even count: mean of the middle two, rounded down
        (("[MED", (3, 8, 1, 6)), 4),
        (("[MED", (9, 0, 4)), 4),
        (("[SM", (9, 8, 7)), 4),
        (("[MIN", (3, ("[MAX", (1, 8)), 5)), 3),
    ],
)
def test_operators(tree, value):
    assert evaluate(tree) == value == brute_force_value(to_source(tree))


def test_parse_rejects_malformed_expressions():
    for bad in ("( [MAX 1 2 )", "[MAX ]", "1 2", "[FOO 1 ]", "[MAX 12 3 ]", "]"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_random_trees_follow_the_recipe():
    rng = random.Random(3)
    for _ in range(300):
        tree, length = random_tree(rng, max_depth=5, max_args=4)
        depth, arities, tokens = tree_stats(tree)
        assert depth <= 5 and all(2 <= a <= 4 for a in arities) and tokens == length
        assert parse_source(to_source(tree)) == tree
        assert evaluate(tree) == brute_force_value(to_source(tree))
    # The root is an operator with probability 0.25 (depth 1 < max_depth).
    rng = random.Random(0)
    roots = [not isinstance(random_tree(rng, max_depth=2, max_args=3)[0], int) for _ in range(20000)]
    assert abs(np.mean(roots) - 0.25) < 0.012  # 4 standard deviations
    # A tree that reaches max_len tokens is abandoned.
    rng = random.Random(1)
    for _ in range(200):
        drawn = random_tree(rng, max_len=30)
        assert drawn is None or drawn[1] < 30


# ------------------------------------------------------------------------------ generator
@pytest.fixture(scope="module")
def lra_sized(tmp_path_factory):
    """A small set with the LRA bounds (500 < length < 2000, depth 10, 10 arguments)."""
    out = tmp_path_factory.mktemp("listops")
    generate_listops(out, 120, 20, 20, seed=5)
    return out


def test_generated_files_have_the_official_layout(lra_sized):
    seen = set()
    for split, n in (("train", 120), ("val", 20), ("test", 20)):
        header, rows = read_rows(lra_sized / f"basic_{split}.tsv")
        assert header == "Source\tTarget" and len(rows) == n
        for source, target in rows:
            tree = parse_source(source)
            depth, arities, length = tree_stats(tree)
            assert 500 < length < 2000 and depth <= 10 and all(2 <= a <= 10 for a in arities)
            assert source == to_source(tree) and source.startswith("( ")
            assert int(target) == brute_force_value(source)
            assert source not in seen  # distinct within and across splits
            seen.add(source)


def test_generator_is_deterministic_by_seed(tmp_path, lra_sized):
    generate_listops(tmp_path / "a", 120, 20, 20, seed=5)
    for split in ("train", "val", "test"):
        name = f"basic_{split}.tsv"
        assert (tmp_path / "a" / name).read_bytes() == (lra_sized / name).read_bytes()
    generate_listops(tmp_path / "b", 120, 20, 20, seed=6)
    assert (tmp_path / "b" / "basic_train.tsv").read_bytes() != (lra_sized / "basic_train.tsv").read_bytes()


def test_generator_checks_its_arguments(tmp_path):
    generate_listops(tmp_path, 5, 1, 1, min_len=10, max_len=40, max_depth=4, max_args=4)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_listops(tmp_path, 5, 1, 1, min_len=10, max_len=40)
    generate_listops(tmp_path, 5, 1, 1, min_len=10, max_len=40, max_depth=4, overwrite=True)
    with pytest.raises(ValueError, match="strictly between"):
        generate_listops(tmp_path / "x", 5, 1, 1, min_len=10, max_len=11)
    with pytest.raises(ValueError, match="at most 37 tokens"):  # depth 3, 5 args: 2 + 5 * (2 + 5 * 1)
        generate_listops(tmp_path / "x", 5, 1, 1, min_len=37, max_len=100, max_depth=3, max_args=5)
    with pytest.raises(ValueError, match="n_train"):
        generate_listops(tmp_path / "x", 0, 1, 1)
    with pytest.raises(ValueError, match="distinct expressions"):
        # Lengths strictly between 0 and 2: only the 10 digits exist.
        generate_listops(tmp_path / "x", 8, 2, 2, min_len=0, max_len=2)


# --------------------------------------------------------------------------------- loader
SOURCES = [
    (("[MAX", [2, 9, ("[MIN", [4, 7]), 0]), 9),
    (("[SM", [1, 2]), 3),
    (("[MED", [5, ("[SM", [9, 9]), 1]), 5),
    (("[MIN", [6, 7, 8]), 6),
]


@pytest.fixture
def listops_dir(tmp_path):
    """The LRA release layout: ``lra_release/listops-1000/basic_{train,val,test}.tsv``."""
    root = tmp_path / "lra_release"
    directory = root / "listops-1000"
    rows = [(listops_source(t), v) for t, v in SOURCES]
    write_listops_tsv(directory / "basic_train.tsv", rows * 5)  # 20 rows
    write_listops_tsv(directory / "basic_val.tsv", rows[:2])
    write_listops_tsv(directory / "basic_test.tsv", rows[2:])
    return root


def ids(*tokens):
    return [VOCAB.index(t) for t in tokens]


def test_loader_tokens_lengths_and_spec(listops_dir):
    data = load_dataset("listops", root=listops_dir)
    spec = data.spec
    assert (spec.kind, spec.n_classes, spec.vocab_size, spec.tokens, spec.variable_length) == (
        "classification", 10, 16, True, True,
    )  # fmt: skip
    assert spec.seq_len == 9 and data.train.inputs.dtype.is_floating_point is False
    assert (len(data.train), len(data.val), len(data.test)) == (20, 2, 2)
    first = ids("[MAX", "2", "9", "[MIN", "4", "7", "]", "0", "]")
    assert data.train.inputs[0].tolist() == first and data.train.inputs[1, 4:].tolist() == [0] * 5
    assert data.train.lengths[:4].tolist() == [9, 4, 8, 5]
    assert data.train.targets[:4].tolist() == [9, 3, 5, 6]
    assert data.val.targets.tolist() == [9, 3] and data.test.targets.tolist() == [5, 6]
    assert data.meta["val_source"] == "basic_val.tsv" and json.loads(json.dumps(data.meta))
    batch = next(data.test.iterate(2, shuffle=False, seed=0, epoch=0, drop_last=False))
    assert batch.x.dtype.is_floating_point is False and batch.mask.sum(1).tolist() == [8, 5]
    # Parentheses kept: the token stream is the whole source.
    with_parens = load_dataset("listops", root=listops_dir, keep_parentheses=True)
    assert with_parens.spec.vocab_size == 18
    source = listops_source(SOURCES[0][0]).split()
    assert with_parens.train.inputs[0, : len(source)].tolist() == ids(*source)
    assert with_parens.train.lengths[0].item() == len(source)


def test_loader_options(listops_dir):
    short = load_dataset("listops", root=listops_dir, max_len=5, max_train=3)
    assert short.spec.seq_len == 5 and len(short.train) == 3
    assert short.meta["dropped_longer_than_max_len"] == {"train": 10, "val": 1, "test": 1}
    assert short.train.targets.tolist() == [3, 6, 3]
    carved = load_dataset("listops", root=listops_dir, official_val=False, val_fraction=0.25, seed=1)
    assert (len(carved.train), len(carved.val)) == (15, 5)
    again = load_dataset("listops", root=listops_dir, official_val=False, val_fraction=0.25, seed=1)
    assert carved.val.inputs.equal(again.val.inputs)
    with pytest.raises(ValueError, match="no expression"):
        load_dataset("listops", root=listops_dir, max_len=2)
    with pytest.raises(ValueError, match="max_train"):
        load_dataset("listops", root=listops_dir, max_train=0)


def test_loader_reads_generated_files_and_a_quick_config(tmp_path):
    generate_listops(tmp_path, 300, 30, 30, min_len=20, max_len=100, max_depth=4, max_args=5, seed=2)
    data = load_dataset("listops", root=tmp_path)
    assert data.spec.seq_len < 100 and int(data.train.lengths.min()) > 20
    _, rows = read_rows(tmp_path / "basic_train.tsv")
    assert data.train.targets.tolist() == [int(t) for _, t in rows]
    for i in (0, 7, 299):  # tokens spell the source without parentheses
        expected = [t for t in rows[i][0].split() if t not in "()"]
        assert data.train.inputs[i, : data.train.lengths[i]].tolist() == ids(*expected)


def test_missing_and_corrupt_files(tmp_path, listops_dir):
    with pytest.raises(DataNotFoundError, match=r"(?s)basic_train.tsv  MISSING.*prepare listops"):
        load_dataset("listops", root=tmp_path / "nowhere")
    path = listops_dir / "listops-1000" / "basic_val.tsv"
    cases = {
        "Input\tOutput\n": "header",
        "Source\tTarget\n( [MAX 1 2 ] )\t10\n": "target must be an integer 0-9",
        "Source\tTarget\n( [MAX 1 2 ] )\n": "expected 2 tab-separated fields",
        "Source\tTarget\n( [MAX 1 12 ] )\t2\n": "unknown token '12'",
        "Source\tTarget\n( [FOO 1 2 ] )\t2\n": "unknown token '\\[FOO'",
        "Source\tTarget\n\t2\n": "empty expression",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataFileError, match=message):
            load_dataset("listops", root=listops_dir)
    path.write_bytes(b"Source\tTarget\n( [MAX 1 \xff ] )\t1\n")
    with pytest.raises(DataFileError, match="not UTF-8"):
        load_dataset("listops", root=listops_dir)
