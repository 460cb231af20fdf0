"""A regression guard on speed: for every instruction-set path of the native kernels that this CPU
runs, the LRU layer's forward + backward must be at least 2x faster than the pure-PyTorch "ref"
scan at a mid-size shape (one thread, best of 3, the two timed in turns in the same process).

A generous bound on purpose: the native kernels are 5-10x faster than "ref" where they are
healthy, so this fails only when a path has lost most of its speed (as the AVX2 path once had,
unnoticed, at 0.5x). Full figures come from ``benchmarks/scan.py``."""

from __future__ import annotations

import time

import pytest
import torch

from shrinkssm import ops
from shrinkssm.nn import LRU

pytestmark = [
    pytest.mark.skipif(not ops.native_available(), reason="native extension not built"),
    pytest.mark.usefixtures("one_torch_thread"),  # see tests/conftest.py
]

SHAPE = dict(batch=16, length=512, d_model=8, d_state=128)
MIN_SPEEDUP = 2.0
REPEATS = 3


def forward_backward_seconds(layer: LRU, u: torch.Tensor) -> float:
    """Wall-clock seconds of one forward + backward (gradients of the input and every parameter)."""
    layer.zero_grad(set_to_none=True)
    u.grad = None
    start = time.perf_counter()
    layer(u).sum().backward()
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def best_times():
    """Best-of-3 seconds of "ref" and of every native path, timed in interleaved rounds."""
    torch.manual_seed(0)
    layer = LRU(SHAPE["d_model"], SHAPE["d_state"])
    u = torch.randn(SHAPE["batch"], SHAPE["length"], SHAPE["d_model"], requires_grad=True)
    before = ops.native_isa()
    candidates = ["ref", *ops.native_isas()]
    best = dict.fromkeys(candidates, float("inf"))
    try:
        for name in candidates:  # warm-up: first calls allocate and load
            layer.scan = "ref" if name == "ref" else "native"
            if name != "ref":
                ops.set_native_isa(name)
            forward_backward_seconds(layer, u)
        for _ in range(REPEATS):
            for name in candidates:
                layer.scan = "ref" if name == "ref" else "native"
                if name != "ref":
                    ops.set_native_isa(name)
                best[name] = min(best[name], forward_backward_seconds(layer, u))
    finally:
        ops.set_native_isa(before)
    return best


@pytest.mark.parametrize("isa", ops.native_isas())
def test_native_path_at_least_twice_as_fast_as_ref(isa, best_times):
    speedup = best_times["ref"] / best_times[isa]
    shape = ", ".join(f"{k} {v}" for k, v in SHAPE.items())
    assert speedup >= MIN_SPEEDUP, (
        f"native path {isa!r}: LRU forward + backward ({shape}, one thread) takes "
        f"{best_times[isa] * 1e3:.1f} ms, only {speedup:.2f}x the speed of scan='ref' "
        f"({best_times['ref'] * 1e3:.1f} ms); at least {MIN_SPEEDUP}x expected")
