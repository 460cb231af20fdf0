"""The native SSD scan (Mamba-2 heads) as PyTorch custom operators.

``shrinkssm::ssd_forward`` / ``shrinkssm::ssd_backward`` run the plain-C kernel of
``src/shrinkssm/ops/_native/ssd.c``: a sequential scan over time, one exp per head and step, whose
cost per step is proportional to ``P N`` per head (the chunked form's within-chunk part is not
proportional to ``N``). The recurrence and the argument conventions are those of
:mod:`shrinkssm.ops.ssd_scan`; this module owns what the C code assumes (contiguous CPU tensors
of one real dtype) and the checkpoint length. Each operator has a fake implementation, and the
forward's backward is registered as its autograd formula, so ``torch.compile`` and
``torch.export`` trace through them; in plain eager mode :func:`ssd_scan_native` calls the
implementations directly (:mod:`shrinkssm.ops._op_dispatch`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from shrinkssm.ops import _native_backend as _nb
from shrinkssm.ops._op_dispatch import OpSpec, call, checked

__all__ = ["NATIVE_STATE_BYTES", "checkpoint_chunk", "native_preferred", "padded_width", "ssd_scan_native"]

NATIVE_STATE_BYTES = 16 * 1024
"""Largest state of one head (``P x Np`` reals, in bytes) for which ``backend="auto"`` runs the
native kernel. Measured on one AVX-512 Xeon by ``benchmarks/mamba2_cost.py --scan-only``
(forward + backward, one thread, float32, batch 8, L 784) on each of its paths: up to 16 KiB
(float32 ``P N <= 4096``) the kernel was 1.3-4x faster than the chunked form on the avx2 and
avx512 paths (0.96-1.14x at 16 KiB on the baseline path); at 64 KiB (P 64, N 256) it was 2.6x
slower, where a head's state and the chunk it recomputes no longer stay in a core's caches while
the chunked form's matrix products run at full speed."""

_CHUNK_BYTES = 256 * 1024
"""Bytes of one chunk's recomputed states in the backward (T + 1 states of ``P x Np`` reals):
small enough to stay in a core's L2 cache."""


def padded_width(N: int, dtype: torch.dtype) -> int:
    """``N`` rounded up to 64 bytes of ``dtype`` (16 floats, 8 doubles): the kernel's state row."""
    w = _nb._lanes(dtype)
    return -(-N // w) * w


def _head_state_bytes(P: int, N: int, dtype: torch.dtype) -> int:
    """Bytes of one head's padded state (``P x Np`` reals of ``dtype``)."""
    return P * padded_width(N, dtype) * dtype.itemsize


def native_preferred(P: int, N: int, dtype: torch.dtype) -> bool:
    """True if the native kernel is the faster SSD scan for heads of width ``P`` with ``N`` states
    (a head's state at most :data:`NATIVE_STATE_BYTES`)."""
    return _head_state_bytes(P, N, dtype) <= NATIVE_STATE_BYTES


def checkpoint_chunk(P: int, N: int, dtype: torch.dtype) -> int:
    """Steps between stored states: ``T`` with ``(T + 1) P Np`` reals in :data:`_CHUNK_BYTES`,
    clipped to ``[4, 64]`` (memory for the checkpoints: ``b H ceil(L / T) P Np`` reals)."""
    return max(4, min(64, _CHUNK_BYTES // _head_state_bytes(P, N, dtype) - 1))


def _shapes(x: Tensor, B: Tensor) -> tuple[int, int, int, int, int, int]:
    nb, L, H, P = x.shape
    return nb, L, H, P, B.shape[2], B.shape[3]


def _check_args(op: str, x, dt, A, B, C, chunk: int) -> None:
    if x.ndim != 4 or B.ndim != 4:
        raise ValueError(f"shrinkssm::{op}: x must be (b, L, H, P) and B, C (b, L, G, N)")
    _nb._real_dtype(op, x)
    nb, L, H, P, G, N = _shapes(x, B)
    if G < 1 or H % G or chunk < 1 or min(nb, L, H, P, N) < 1:
        raise ValueError(f"shrinkssm::{op}: need H a multiple of G, chunk >= 1 and no empty axis, got "
                         f"x {tuple(x.shape)}, B {tuple(B.shape)}, chunk {chunk}")
    _nb._expect(op, x.dtype, dt=(dt, (nb, L, H)), A=(A, (H,)), B=(B, (nb, L, G, N)), C=(C, (nb, L, G, N)))


def _ssd_forward_impl(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, S0: Tensor | None, chunk: int,
                      save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Returns y (b, L, H, P), the final state (b, H, P, N) and, when ``save``, the states entering
    every chunk of ``chunk`` steps (b, H, ceil(L / chunk), P, Np) (else empty)."""
    _nb._require()
    x, dt, A, B, C = (_nb._flat(t) for t in (x, dt, A, B, C))
    S0 = None if S0 is None else _nb._flat(S0)
    nb, L, H, P, G, N = _shapes(x, B)
    y = x.new_empty(nb, L, H, P)
    fin = x.new_empty(nb, H, P, N)
    ck = x.new_empty((nb, H, _nb._n_chunks(L, chunk), P, padded_width(N, x.dtype)) if save else (0,))
    _nb._ext.ssd_forward(_nb._is_double(x), torch.get_num_threads(), nb, L, H, P, G, N, chunk, _nb._ptr(x),
                         _nb._ptr(dt), _nb._ptr(A), _nb._ptr(B), _nb._ptr(C), _nb._ptr(S0), _nb._ptr(y),
                         _nb._ptr(fin), _nb._ptr(ck))
    return y, fin, ck


def _check_ssd_forward(x, dt, A, B, C, S0, chunk, save) -> None:
    _check_args("ssd_forward", x, dt, A, B, C, chunk)
    nb, L, H, P, G, N = _shapes(x, B)
    _nb._expect("ssd_forward", x.dtype, S0=(S0, (nb, H, P, N)))


_ssd_forward = torch.library.custom_op("shrinkssm::ssd_forward", checked(_check_ssd_forward, _ssd_forward_impl),
                                      mutates_args=(), device_types="cpu")


@_ssd_forward.register_fake
def _(x, dt, A, B, C, S0, chunk, save):
    nb, L, H, P, G, N = _shapes(x, B)
    ck = (nb, H, _nb._n_chunks(L, chunk), P, padded_width(N, x.dtype)) if save else (0,)
    return x.new_empty(nb, L, H, P), x.new_empty(nb, H, P, N), x.new_empty(ck)


def _ssd_backward_impl(gy: Tensor, gfin: Tensor | None, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       ck: Tensor, chunk: int, want_S0: bool
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``ssd_forward`` from the gradients of y and of the final state (None: zero).
    Returns the gradients of x, dt, B, C (their shapes), the per-row gradient of A (b, H) (summed
    by the caller in a fixed order) and that of S0 (b, H, P, N) when ``want_S0`` (else empty)."""
    _nb._require()
    gy, x, dt, A, B, C, ck = (_nb._flat(t) for t in (gy, x, dt, A, B, C, ck))
    gfin = None if gfin is None else _nb._flat(gfin)
    nb, L, H, P, G, N = _shapes(x, B)
    gx, gdt, gB, gC = (torch.empty_like(t) for t in (x, dt, B, C))
    gA = x.new_empty(nb, H)
    gS0 = x.new_empty((nb, H, P, N) if want_S0 else (0,))
    _nb._ext.ssd_backward(_nb._is_double(x), torch.get_num_threads(), nb, L, H, P, G, N, chunk, _nb._ptr(x),
                          _nb._ptr(dt), _nb._ptr(A), _nb._ptr(B), _nb._ptr(C), _nb._ptr(ck), _nb._ptr(gy),
                          _nb._ptr(gfin), _nb._ptr(gx), _nb._ptr(gdt), _nb._ptr(gB), _nb._ptr(gC),
                          _nb._ptr(gA), _nb._ptr(gS0))
    return gx, gdt, gA, gB, gC, gS0


def _check_ssd_backward(gy, gfin, x, dt, A, B, C, ck, chunk, want_S0) -> None:
    _check_args("ssd_backward", x, dt, A, B, C, chunk)
    nb, L, H, P, G, N = _shapes(x, B)
    _nb._expect("ssd_backward", x.dtype, gy=(gy, (nb, L, H, P)), gfin=(gfin, (nb, H, P, N)),
                ck=(ck, (nb, H, _nb._n_chunks(L, chunk), P, padded_width(N, x.dtype))))


_ssd_backward = torch.library.custom_op("shrinkssm::ssd_backward", checked(_check_ssd_backward, _ssd_backward_impl),
                                       mutates_args=(), device_types="cpu")
SSD_BACKWARD = OpSpec(_ssd_backward, _ssd_backward_impl)


@_ssd_backward.register_fake
def _(gy, gfin, x, dt, A, B, C, ck, chunk, want_S0):
    nb, L, H, P, G, N = _shapes(x, B)
    return (torch.empty_like(x), torch.empty_like(dt), x.new_empty(nb, H), torch.empty_like(B),
            torch.empty_like(C), x.new_empty((nb, H, P, N) if want_S0 else (0,)))


def _ssd_setup_context(ctx, inputs, output):
    x, dt, A, B, C, S0, chunk, save = inputs
    if not save:
        return  # no_grad or no differentiable input: backward never runs
    ctx.set_materialize_grads(False)  # no zero gradients for the checkpoints or an unused output
    ctx.chunk, ctx.has_S0 = chunk, S0 is not None
    ctx.save_for_backward(x, dt, A, B, C, output[2])


def _ssd_backward_formula(ctx, gy, gfin, _gck):
    if not hasattr(ctx, "chunk"):
        raise RuntimeError("shrinkssm::ssd_forward was called with save=False; it cannot be "
                           "differentiated (call ssd_scan, which sets save when needed)")
    x, dt, A, B, C, ck = ctx.saved_tensors
    want_S0 = ctx.has_S0 and ctx.needs_input_grad[5]
    if gy is None:
        gy = torch.zeros_like(x)
    gx, gdt, gA, gB, gC, gS0 = call(SSD_BACKWARD, gy, gfin, x, dt, A, B, C, ck, ctx.chunk, want_S0)
    return gx, gdt, gA.sum(0), gB, gC, gS0 if want_S0 else None, None, None


_ssd_forward.register_autograd(_ssd_backward_formula, setup_context=_ssd_setup_context)
SSD_FORWARD = OpSpec(_ssd_forward, _ssd_forward_impl, _ssd_setup_context, _ssd_backward_formula)


def ssd_scan_native(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None = None,
                    return_final_state: bool = False, chunk: int | None = None
                    ) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan by the native kernel; arguments and results as
    :func:`shrinkssm.ops.ssd_scan.ssd_scan_ref` (validated by the caller, no axis empty).
    ``chunk``: steps between stored states (default :func:`checkpoint_chunk`)."""
    nb, L, H, P, G, N = _shapes(x, B)
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, initial_state))
    T = int(chunk or checkpoint_chunk(P, N, x.dtype))
    y, fin, _ = call(SSD_FORWARD, x, dt, A, B, C, initial_state, T, save)
    return (y, fin) if return_final_state else y
