"""How many threads the control core's dense linear algebra (NumPy/SciPy BLAS) may use.

The core factorises N x N matrices with LAPACK, often inside a training loop whose own threads
(PyTorch's OpenMP pool) keep the cores busy. A multithreaded BLAS then fights that pool: measured
on a loaded 2-core machine, the HSVs of an N = 384 layer took 15-28 s with OpenBLAS on 2 threads
and 0.07-0.09 s on one. Every public function of :mod:`shrinkssm.lti` therefore runs its BLAS
calls single-threaded by default (through ``threadpoolctl``); :func:`set_blas_threads` changes that
(e.g. for N in the thousands on an idle many-core machine).
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, TypeVar

from threadpoolctl import ThreadpoolController

__all__ = ["set_blas_threads", "blas_threads", "limited_blas"]

F = TypeVar("F", bound=Callable)

_threads: int | None = 1
_controller: ThreadpoolController | None = None
_local = threading.local()


def set_blas_threads(n: int | None) -> None:
    """Threads for the core's BLAS/LAPACK calls: an int >= 1, or None for the library default."""
    global _threads
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"BLAS threads must be an int >= 1 or None, got {n!r}")
    _threads = n


def blas_threads() -> int | None:
    """The current setting of :func:`set_blas_threads`."""
    return _threads


def limited_blas(fn: F) -> F:
    """Run ``fn`` with the BLAS thread limit (once per outermost call; nesting is free)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _controller
        if _threads is None or getattr(_local, "active", False):
            return fn(*args, **kwargs)
        if _controller is None:
            _controller = ThreadpoolController()
        _local.active = True
        try:
            with _controller.limit(limits=_threads, user_api="blas"):
                return fn(*args, **kwargs)
        finally:
            _local.active = False

    return wrapper  # type: ignore[return-value]
