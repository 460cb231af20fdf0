"""ListOps: nested list operations on digits, ten-way classification of the result.

Two parts:

* **A generator** written from the specification of the Long Range Arena (LRA) release (Tay et al.,
  "Long Range Arena", ICLR 2021, which adapts Nangia & Bowman, "ListOps", 2018): operators MIN,
  MAX, MED (median, rounded down), SM (sum modulo 10) on digits 0-9; trees of depth at most 10
  with 2 to 10 arguments per operator; sequences whose length lies strictly between 500 and 2000
  tokens; 96,000 / 2,000 / 2,000 distinct expressions for train / val / test. It writes the
  official files. Random draws follow the specification's recipe: at every depth below the
  maximum a node is an operator with probability 0.25 (otherwise a digit drawn uniformly); an
  operator draws its argument count uniformly in ``[2, max_args]``, then its arguments, then its
  operator uniformly. The root sits at depth 1.
* **A loader** of the official files ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``
  (LRA release folder ``listops-1000``). Each file is tab-separated with the header line
  ``Source<TAB>Target``; ``Target`` is the value 0-9 and ``Source`` the expression, tokens separated
  by single spaces, every operator application written as a binary left-nested tuple in
  parentheses: ``[MAX 1 7 2 ]`` is stored as ``( ( ( ( [MAX 1 ) 7 ) 2 ) ] )``.

Token length. The specification counts a digit as one token and an operator application as two
(its ``[OP`` and its ``]``) plus its arguments: parentheses are not counted. The loader follows
that count: parentheses are dropped (``keep_parentheses=False``, the default), so the model sees
``[MAX 1 7 2 ]`` as 5 tokens, sequences are at most 1999 tokens long. The LRA input pipeline
tokenised with a tokenizer that drops every non-alphanumeric character, ``]`` included, which
makes expressions ambiguous; like the S4 code base we keep ``]``.

Vocabulary (``vocab_size`` 16, or 18 with parentheses): ``0`` padding, ``1``-``10`` the digits
``0``-``9``, ``11`` ``[MIN``, ``12`` ``[MAX``, ``13`` ``[MED``, ``14`` ``[SM``, ``15`` ``]``, then
``16`` ``(`` and ``17`` ``)``.

Validation. ListOps has an official validation file, so validation is ``basic_val.tsv`` (not carved
from the training data) and ``val_fraction`` / ``seed`` are not used, unless
``official_val=False``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from ._common import check_bool, check_int, missing_files, pad_rows
from .formats import DataFileError, data_home
from .sequence import SequenceData
from .splits import VAL_STREAM, DataSplits, TaskSpec, holdout

__all__ = [
    "OPERATORS",
    "TSV_FILES",
    "VOCAB",
    "evaluate",
    "generate_listops",
    "listops_dir",
    "load_listops",
    "parse_source",
    "random_tree",
    "read_listops_tsv",
    "to_source",
]

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_P = 0.25  # probability that a node above the maximum depth is an operator
TSV_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
HEADER = "Source\tTarget"
RELEASE_DIR = "listops-1000"  # the folder of the LRA release holding the three files
VOCAB = ("<pad>",) + tuple(str(d) for d in range(10)) + OPERATORS + (END, "(", ")")
PAD_ID = 0
N_CLASSES = 10

INSTALL = (
    "run `shrinkssm data prepare listops` (generates the LRA-sized set from the specification into "
    "$SHRINKSSM_DATA/listops; `shrinkssm data prepare listops --dest DIR n_train=... min_len=... "
    "max_len=...` for a smaller one, then data.root=DIR), or unpack the LRA release and set "
    f"data.root=.../lra_release/{RELEASE_DIR}"
)

# A tree node: a digit, or (operator, arguments).
Node = int | tuple[str, tuple["Node", ...]]


# ------------------------------------------------------------------------------- expressions
class _TooLong(Exception):
    """Raised inside :func:`random_tree` once a tree reaches ``max_len`` tokens."""


def random_tree(
    rng: random.Random, *, max_depth: int = 10, max_args: int = 10, max_len: int | None = None
) -> tuple[Node, int] | None:
    """Draw one expression tree from the LRA recipe (see the module docstring).

    Parameters
    ----------
    rng : random.Random
        The source of randomness.
    max_depth : int
        Nodes at this depth are digits; the root is at depth 1.
    max_args : int
        Operators take ``2 .. max_args`` arguments.
    max_len : int, optional
        Stop drawing (return None) as soon as the tree has ``max_len`` tokens: such a tree would be
        rejected anyway, and drawing it whole can take long.

    Returns
    -------
    (tree, length) or None
        ``length`` counts digits, operators and ``]`` (no parentheses).
    """
    count = [0]

    def grow(depth: int) -> Node:
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            count[0] += 1
            if max_len is not None and count[0] >= max_len:
                raise _TooLong
            return rng.choice(range(10))
        count[0] += 2
        n_args = rng.randint(2, max_args)
        args = tuple(grow(depth + 1) for _ in range(n_args))
        return (rng.choice(OPERATORS), args)

    try:
        tree = grow(1)
    except _TooLong:
        return None
    if max_len is not None and count[0] >= max_len:
        return None
    return tree, count[0]


def _median_floor(values: list[int]) -> int:
    """Median rounded down (the LRA ``int(np.median(values))`` for non-negative values)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


def evaluate(tree: Node) -> int:
    """The value 0-9 of an expression tree."""
    if isinstance(tree, int):
        return tree
    op, args = tree
    values = [evaluate(a) for a in args]
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        return _median_floor(values)
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown operator {op!r}; valid: {OPERATORS}")


def to_source(tree: Node) -> str:
    """The official ``Source`` string of a tree, every application a left-nested binary tuple.

    ``("[MAX", (1, 7, 2))`` -> ``"( ( ( ( [MAX 1 ) 7 ) 2 ) ] )"``.
    """
    out: list[str] = []

    def emit(node: Node) -> None:
        if isinstance(node, int):
            out.append(str(node))
            return
        op, args = node
        out.extend(["("] * (len(args) + 1))
        out.append(op)
        for arg in args:
            emit(arg)
            out.append(")")
        out.extend([END, ")"])

    emit(tree)
    return " ".join(out)


def parse_source(source: str) -> Node:
    """Parse a ``Source`` string (parentheses ignored) back into a tree.

    Raises
    ------
    ValueError
        Unknown token, an operator with fewer than one argument, unbalanced ``]``, trailing tokens.
    """
    stack: list[tuple[str, list[Node]]] = []
    result: Node | None = None
    for token in source.split():
        if token in ("(", ")"):
            continue
        if result is not None:
            raise ValueError(f"tokens after the end of the expression: {token!r}")
        if token in OPERATORS:
            stack.append((token, []))
        elif token == END:
            if not stack or not stack[-1][1]:
                raise ValueError("']' without an open operator that has arguments")
            op, args = stack.pop()
            node: Node = (op, tuple(args))
            if stack:
                stack[-1][1].append(node)
            else:
                result = node
        elif len(token) == 1 and token.isdigit():
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        else:
            raise ValueError(f"unknown token {token!r}")
    if stack or result is None:
        raise ValueError("incomplete expression (an operator is not closed by ']')")
    return result


def _max_tree_len(max_depth: int, max_args: int) -> int:
    """Tokens of the largest tree the recipe can draw."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


# -------------------------------------------------------------------------------- generator
def generate_listops(
    out_dir: str | Path,
    n_train: int = 96_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    *,
    min_len: int = 500,
    max_len: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Generate ListOps and write ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv``.

    Expressions are drawn with :func:`random_tree` and kept when ``min_len < length < max_len``
    (length without parentheses, as in the LRA specification) and not drawn before, so the three
    splits hold distinct expressions. The first ``n_train`` kept ones go to train, the next
    ``n_val`` to val, the last ``n_test`` to test.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed.
    n_train, n_val, n_test : int
        Split sizes (LRA: 96,000 / 2,000 / 2,000); at least 1 each.
    min_len, max_len : int
        Exclusive bounds of the token length (LRA: 500, 2000).
    max_depth, max_args : int
        Tree depth (root at depth 1) and arguments per operator (LRA: 10, 10).
    seed : int
        The files are a function of all arguments (same arguments, same bytes).
    overwrite : bool
        Replace existing files; otherwise existing files are an error.

    Returns
    -------
    dict
        ``{"train": path, "val": path, "test": path}``.

    Raises
    ------
    ValueError
        Bad arguments, existing files without ``overwrite``, or bounds that the recipe (almost)
        never meets (more than ``2000 * total + 100000`` draws without enough distinct trees).

    Notes
    -----
    With the LRA bounds about one draw in 12 is kept, at about 1 ms of CPU per kept expression
    (mean length about 1,050 tokens): the LRA-sized set takes about 2 minutes of CPU and 690 MB
    of disk (the parentheses take most of it); the loader reads it in about 10 seconds. Labels
    are not balanced: 0 and 9 are about 17% each, the other digits 7-9%.
    """
    minimum = {
        "n_train": 1,
        "n_val": 1,
        "n_test": 1,
        "min_len": 0,
        "max_len": 2,
        "max_depth": 1,
        "max_args": 2,
    }
    values = dict(n_train=n_train, n_val=n_val, n_test=n_test, min_len=min_len, max_len=max_len,
                  max_depth=max_depth, max_args=max_args, seed=seed)  # fmt: skip
    for name, value in values.items():
        check_int(value, name, minimum.get(name, 0))
    check_bool(overwrite, "overwrite")
    if max_len - min_len < 2:
        raise ValueError(f"no length lies strictly between min_len={min_len} and max_len={max_len}")
    if _max_tree_len(max_depth, max_args) <= min_len:
        raise ValueError(
            f"trees of depth {max_depth} with at most {max_args} arguments have at most "
            f"{_max_tree_len(max_depth, max_args)} tokens: none is longer than min_len={min_len}"
        )
    out_dir = Path(out_dir)
    paths = {split: out_dir / fname for split, fname in TSV_FILES.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"refusing to overwrite {existing}; pass overwrite=True")

    rng = random.Random(seed)
    total = n_train + n_val + n_test
    seen: set[str] = set()
    rows: list[str] = []
    budget = 2000 * total + 100_000
    for _ in range(budget):
        drawn = random_tree(rng, max_depth=max_depth, max_args=max_args, max_len=max_len)
        if drawn is None or drawn[1] <= min_len:
            continue
        source = to_source(drawn[0])
        if source in seen:
            continue
        seen.add(source)
        rows.append(f"{source}\t{evaluate(drawn[0])}\n")
        if len(rows) == total:
            break
    else:
        raise ValueError(
            f"only {len(rows)} of {total} distinct expressions with {min_len} < length < {max_len} "
            f"after {budget} draws; widen the bounds or raise max_depth / max_args"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, total)}
    for split, (start, stop) in bounds.items():
        _write_atomic(paths[split], HEADER + "\n" + "".join(rows[start:stop]))
    return paths


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="ascii", newline="\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- loader
_TOKEN_IDS = {tok: i for i, tok in enumerate(VOCAB)}
# One character per token, so that a whole source converts with C-speed string methods.
_SHORT = {"[MIN": "m", "[MAX": "M", "[MED": "d", "[SM": "s"}
_LUT_PAREN = np.full(256, -1, dtype=np.int16)
for _tok, _char in list(_SHORT.items()) + [(str(d), str(d)) for d in range(10)] + [(t, t) for t in "]()"]:
    _LUT_PAREN[ord(_char)] = _TOKEN_IDS[_tok]
_LUT = _LUT_PAREN.copy()
_LUT[[ord("("), ord(")")]] = -2  # dropped
_TARGETS = frozenset(str(d) for d in range(N_CLASSES))


def _tokenize(source: str, keep_parentheses: bool) -> np.ndarray | None:
    """``(len,) uint8`` token ids of a source string, or None when it holds an unknown token."""
    for token, char in _SHORT.items():
        source = source.replace(token, char)
    n_tokens = len(source.split())
    compact = source.replace(" ", "")
    if len(compact) != n_tokens or not compact.isascii():
        return None  # a token of more than one character that is no operator
    ids = (_LUT_PAREN if keep_parentheses else _LUT)[np.frombuffer(compact.encode("ascii"), dtype=np.uint8)]
    if (ids == -1).any():
        return None
    return ids[ids >= 0].astype(np.uint8)


def _parse_line(line: str, keep_parentheses: bool, where: str) -> tuple[np.ndarray | None, int]:
    """Token ids and target of one data line (``(None, -1)`` for a blank line)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None, -1
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataFileError(f"{where}: expected 2 tab-separated fields, found {len(fields)}")
    ids = _tokenize(fields[0], keep_parentheses)
    if ids is None or ids.size == 0:
        bad = next((t for t in fields[0].split() if t not in _TOKEN_IDS), "")
        raise DataFileError(
            f"{where}: unknown token {bad!r} or empty expression; tokens are {', '.join(VOCAB[1:])}"
        )
    target = fields[1].strip()
    if target not in _TARGETS:
        raise DataFileError(f"{where}: target must be an integer 0-9, found {target!r}")
    return ids, int(target)


def read_listops_tsv(path: Path, *, keep_parentheses: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Read one official ListOps file.

    Parameters
    ----------
    path : Path
        ``basic_{train,val,test}.tsv``: header ``Source<TAB>Target``, then one expression per line.
    keep_parentheses : bool
        Keep ``(`` and ``)`` as tokens (ids 16, 17).

    Returns
    -------
    tokens : list of numpy.ndarray
        ``(len_i,) uint8`` token ids (see the module docstring), one per line.
    targets : numpy.ndarray
        ``(n,) int64`` in ``[0, 10)``.

    Raises
    ------
    DataFileError
        Wrong header, a line without exactly two tab-separated fields, an unknown token, an empty
        expression, or a target that is not an integer 0-9; the message names file and line.
    """
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        try:
            header = handle.readline()
            if header.strip() != HEADER:
                found = repr(header[:40]) if header else "an empty file"
                raise DataFileError(
                    f"ListOps file {path}: first line must be the header 'Source\\tTarget', found {found}"
                )
            tokens, targets = [], []
            for number, line in enumerate(handle, start=2):
                ids, target = _parse_line(line, keep_parentheses, f"{path}, line {number}")
                if ids is not None:
                    tokens.append(ids)
                    targets.append(target)
        except UnicodeDecodeError as exc:
            raise DataFileError(f"ListOps file {path} is not UTF-8 text: {exc}") from exc
    return tokens, np.asarray(targets, dtype=np.int64)


def listops_dir(root: Path | None) -> Path:
    """The directory of the files: ``root`` or ``root/listops-1000`` (default ``$SHRINKSSM_DATA/listops``)."""
    root = data_home() / "listops" if root is None else Path(root)
    nested = root / RELEASE_DIR
    return nested if nested.is_dir() else root


def load_listops(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_len: int | None = None,
    max_train: int | None = None,
    keep_parentheses: bool = False,
    official_val: bool = True,
) -> DataSplits:
    """ListOps from the official TSV files: token sequences, ten classes.

    Parameters
    ----------
    root : Path, optional
        Directory holding ``basic_{train,val,test}.tsv`` (or its parent holding ``listops-1000``);
        default ``$SHRINKSSM_DATA/listops``.
    val_fraction, seed : float, int
        Used only with ``official_val=False`` (validation carved from the training file,
        stratified); otherwise the official validation file is the validation split.
    max_len : int, optional
        Drop expressions longer than ``max_len`` tokens from every split (for quick runs on a
        generated set of short expressions); the number dropped is recorded in ``meta``. Dropping
        test expressions changes the benchmark: leave None for reported results.
    max_train : int, optional
        Keep only the first ``max_train`` training expressions (after ``max_len``).
    keep_parentheses : bool
        Keep ``(`` and ``)`` as tokens (length then counts them too).
    official_val : bool
        Use ``basic_val.tsv`` as validation (default) or carve validation from the training file.

    Returns
    -------
    DataSplits
        Inputs ``(num, L) uint8`` tokens, right-padded with 0, with lengths; targets ``(num,)``;
        ``L`` is the longest kept expression. Spec: classification, 10 classes, ``tokens=True``,
        ``vocab_size`` 16 (18 with parentheses), ``variable_length=True``.
    """
    check_int(max_len, "max_len", 1, allow_none=True)
    check_int(max_train, "max_train", 1, allow_none=True)
    check_bool(keep_parentheses, "keep_parentheses")
    check_bool(official_val, "official_val")
    directory = listops_dir(root)
    found = {f: (directory / f).is_file() for f in TSV_FILES.values()}
    if not all(found.values()):
        raise missing_files("listops", directory, list(TSV_FILES.values()), found, INSTALL)

    splits, dropped = {}, {}
    for split, fname in TSV_FILES.items():
        tokens, targets = read_listops_tsv(directory / fname, keep_parentheses=keep_parentheses)
        keep = np.ones(len(tokens), dtype=bool)
        if max_len is not None:
            keep = np.fromiter((len(t) <= max_len for t in tokens), dtype=bool, count=len(tokens))
        dropped[split] = int((~keep).sum())
        kept = np.flatnonzero(keep)
        if split == "train" and max_train is not None:
            kept = kept[:max_train]
        if kept.size == 0:
            raise ValueError(f"no expression of {directory / fname} has at most max_len={max_len} tokens")
        splits[split] = ([tokens[i] for i in kept], targets[kept])
    seq_len = max(len(t) for rows, _ in splits.values() for t in rows)
    data = {}
    for split, (rows, targets) in splits.items():
        padded, lengths = pad_rows(rows, seq_len, dtype=np.dtype(np.uint8), pad_value=PAD_ID)
        data[split] = SequenceData(padded, targets, lengths=lengths)
    if official_val:
        train, val = data["train"], data["val"]
    else:
        train, val = holdout(data["train"], val_fraction, seed=seed, stream=VAL_STREAM)
    vocab = VOCAB if keep_parentheses else VOCAB[:-2]
    spec = TaskSpec(
        kind="classification", d_input=len(vocab), seq_len=seq_len, n_classes=N_CLASSES, tokens=True,
        vocab_size=len(vocab), metric="accuracy", variable_length=True, name="listops",
    )  # fmt: skip
    meta = {
        "name": "listops",
        "root": str(directory),
        "files": {split: str(directory / f) for split, f in TSV_FILES.items()},
        "vocab": list(vocab),
        "pad_id": PAD_ID,
        "val_source": "basic_val.tsv" if official_val else f"carved from basic_train.tsv ({val_fraction})",
        "seed": seed,
        "val_fraction": None if official_val else val_fraction,
        "max_len": max_len,
        "max_train": max_train,
        "dropped_longer_than_max_len": dropped,
        "keep_parentheses": keep_parentheses,
        "sizes": {"train": len(train), "val": len(val), "test": len(data["test"])},
        "class_names": [str(d) for d in range(N_CLASSES)],
    }
    return DataSplits(train, val, data["test"], spec, meta)
