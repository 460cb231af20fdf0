"""Tests of shrinkssm.ops.scan: every backend against the plain reference, the reference against
closed forms computed independently (numpy, brute force), gradients in complex128 and gradcheck."""

from __future__ import annotations

import importlib
import logging
import os

import numpy as np
import pytest
import torch

from shrinkssm import ops
from shrinkssm.ops import _native_backend, lru_recurrence, scan
from shrinkssm.ops._chunked import scan_chunked

scan_module = importlib.import_module("shrinkssm.ops.scan")  # the attribute ops.scan is the function
NATIVE = ops.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="native extension not built")
FAST_BACKENDS = ["chunked", pytest.param("native", marks=needs_native)]
ALL_BACKENDS = ["ref", *FAST_BACKENDS]
REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def make_lam(N, dtype=torch.complex128, r_min=0.5, r_max=0.99, seed=0):
    """(N,) eigenvalues uniform on the ring r_min <= |lam| <= r_max, random phases."""
    g = torch.Generator().manual_seed(seed)
    r = torch.sqrt(torch.rand(N, generator=g, dtype=torch.float64) * (r_max**2 - r_min**2) + r_min**2)
    theta = torch.rand(N, generator=g, dtype=torch.float64) * 2 * np.pi
    return torch.polar(r, theta).to(dtype)


def make_lru(nb, L, H_in, H_out, N, dtype=torch.complex128, seed=0, h0=True, **ring):
    g = torch.Generator().manual_seed(seed + 1)
    real = REAL_OF[dtype]
    u = torch.randn(nb, L, H_in, generator=g, dtype=real)
    B = torch.randn(N, H_in, generator=g, dtype=dtype) / np.sqrt(H_in)
    C = torch.randn(H_out, N, generator=g, dtype=dtype) / np.sqrt(N)
    x0 = torch.randn(nb, N, generator=g, dtype=dtype) if h0 else None
    return u, make_lam(N, dtype, seed=seed, **ring), B, C, x0


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def lru_loss(y, h_last, wy, wh):
    """A real loss that touches every output (h_last through a complex weight)."""
    return (y * wy).sum() + (h_last * wh.conj()).real.sum()


def lru_grads(backend, u, lam, B, C, h0, seed=3):
    args = leaves(u, lam, B, C, h0)
    y, h_last = lru_recurrence(*args, backend=backend, return_state=True)
    g = torch.Generator().manual_seed(seed)  # weights drawn in double: the same for every dtype
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    wh = torch.randn(h_last.shape, generator=g, dtype=torch.complex128).to(h_last.dtype)
    grads = torch.autograd.grad(lru_loss(y, h_last, wy, wh), [a for a in args if a is not None])
    return y.detach(), h_last.detach(), grads


# ------------------------------------------------------------------------------------------------
# The reference against independent closed forms
# ------------------------------------------------------------------------------------------------


def test_scan_ref_matches_closed_form():
    # h[k] = lam^(k+1) h0 + sum_{j<=k} lam^(k-j) b[j], evaluated term by term in numpy
    nb, L, N = 2, 9, 5
    lam = make_lam(N).numpy()
    rng = np.random.default_rng(0)
    b = rng.standard_normal((nb, L, N)) + 1j * rng.standard_normal((nb, L, N))
    h0 = rng.standard_normal((nb, N)) + 1j * rng.standard_normal((nb, N))
    expect = np.zeros((nb, L, N), complex)
    for k in range(L):
        expect[:, k] = lam ** (k + 1) * h0 + sum(lam ** (k - j) * b[:, j] for j in range(k + 1))
    got = ops.scan_ref(torch.from_numpy(lam), torch.from_numpy(b), torch.from_numpy(h0))
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-12, atol=1e-12)


def test_lru_ref_matches_impulse_response():
    # y[k] = sum_j Re(C diag(lam^j) B) u[k-j] + Re(C diag(lam^(k+1)) h0): a convolution in numpy
    nb, L, H_in, H_out, N = 2, 12, 3, 2, 6
    u, lam, B, C, h0 = (t.numpy() for t in make_lru(nb, L, H_in, H_out, N))
    kernel = np.stack([(C @ np.diag(lam**j) @ B).real for j in range(L)])  # (L, H_out, H_in)
    expect = np.zeros((nb, L, H_out))
    for k in range(L):
        expect[:, k] = (C @ np.diag(lam ** (k + 1)) @ h0.T).real.T
        for j in range(k + 1):
            expect[:, k] += u[:, k - j] @ kernel[j].T
    h_last = sum((lam ** (L - 1 - k))[None] * (u[:, k] @ B.T) for k in range(L)) + lam**L * h0
    y, x = ops.lru_recurrence_ref(*(torch.from_numpy(t) for t in (u, lam, B, C, h0)))
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.numpy(), h_last, rtol=1e-10, atol=1e-12)


def test_scan_docstring_example():
    h = scan(torch.tensor([0.5 + 0.0j]), torch.ones(1, 3, 1, dtype=torch.complex64), backend="ref")
    torch.testing.assert_close(h.real.flatten(), torch.tensor([1.0, 1.5, 1.75]))


# ------------------------------------------------------------------------------------------------
# Every backend against the reference (complex128: forward and gradients)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("shape", [(3, 37, 20), (1, 50, 33), (40, 5, 8), (2, 1, 1)])
def test_scan_matches_ref(backend, with_h0, shape):
    nb, L, N = shape
    g = torch.Generator().manual_seed(1)
    lam = make_lam(N)
    b = torch.randn(nb, L, N, generator=g, dtype=torch.complex128)
    h0 = torch.randn(nb, N, generator=g, dtype=torch.complex128) if with_h0 else None
    w = torch.randn(nb, L, N, generator=g, dtype=torch.complex128)
    out = {}
    for be in ("ref", backend):
        args = leaves(lam, b, h0)
        h = scan(*args, backend=be)
        grads = torch.autograd.grad((h * w.conj()).real.sum(), [a for a in args if a is not None])
        out[be] = (h, grads)
    torch.testing.assert_close(out[backend][0], out["ref"][0], rtol=1e-10, atol=1e-12)
    for got, want in zip(out[backend][1], out["ref"][1]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize(
    "shape",  # (B, L, H_in, H_out, N)
    [(3, 37, 5, 4, 20), (1, 70, 3, 2, 40), (33, 9, 2, 3, 17), (1, 1, 1, 1, 1), (2, 3, 1, 1, 1)],
)
def test_lru_matches_ref(backend, with_h0, shape):
    u, lam, B, C, h0 = make_lru(*shape, h0=with_h0)
    y_ref, x_ref, g_ref = lru_grads("ref", u, lam, B, C, h0)
    y, x, g = lru_grads(backend, u, lam, B, C, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=1e-12)
    for name, got, want in zip(["u", "lam", "B", "C", "h0"], g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11, msg=f"gradient of {name}")


@needs_native
@pytest.mark.parametrize("widths", [(100, 70), (170, 1)])
def test_native_wide_layers_use_scan_kernel_and_match_ref(widths, monkeypatch):
    # H_in + H_out > FUSED_MAX_WIDTH: GEMMs around the native scan kernel
    H_in, H_out = widths
    assert H_in + H_out > scan_module.FUSED_MAX_WIDTH
    called = []
    real_scan = _native_backend.scan_native
    monkeypatch.setattr(_native_backend, "scan_native", lambda *a: called.append(1) or real_scan(*a))
    u, lam, B, C, h0 = make_lru(2, 11, H_in, H_out, 9)
    y_ref, x_ref, g_ref = lru_grads("ref", u, lam, B, C, h0)
    y, x, g = lru_grads("native", u, lam, B, C, h0)
    assert called, "the wide path did not run the native scan kernel"
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x, x_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@needs_native
@pytest.mark.parametrize("chunk", [1, 3, 7, 11, 64])
def test_native_fused_checkpoint_chunks(chunk):
    # chunk sizes that divide L, do not divide it, equal it, exceed it
    u, lam, B, C, h0 = make_lru(2, 11, 3, 2, 19)
    y_ref, _x_ref, g_ref = lru_grads("ref", u, lam, B, C, h0)
    args = leaves(u, lam, B, C, h0)
    y, x = _native_backend.lru_fused(*args, chunk=chunk)
    g = torch.Generator().manual_seed(3)
    wy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    wh = torch.randn(x.shape, generator=g, dtype=x.dtype)
    grads = torch.autograd.grad(lru_loss(y, x, wy, wh), args)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("chunk", [1, 2, 5, 13, 40])
def test_chunked_any_chunk_length(chunk):
    g = torch.Generator().manual_seed(2)
    lam = make_lam(6)
    b = torch.randn(2, 13, 6, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, 6, generator=g, dtype=torch.complex128)
    torch.testing.assert_close(scan_chunked(lam, b, h0, chunk=chunk), ops.scan_ref(lam, b, h0))


# ------------------------------------------------------------------------------------------------
# gradcheck (finite differences, complex128, small shapes)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scan_gradcheck(backend):
    lam, b, h0 = leaves(make_lam(3), torch.randn(2, 5, 3, dtype=torch.complex128),
                        torch.randn(2, 3, dtype=torch.complex128))
    assert torch.autograd.gradcheck(lambda *a: scan(*a, backend=backend), (lam, b, h0))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_lru_gradcheck(backend):
    args = leaves(*make_lru(2, 6, 2, 3, 4))

    def f(*a):
        return lru_recurrence(*a, backend=backend, return_state=True)

    assert torch.autograd.gradcheck(f, tuple(args))


@needs_native
def test_native_wide_gradcheck(monkeypatch):
    monkeypatch.setattr(scan_module, "FUSED_MAX_WIDTH", 0)  # force GEMMs + native scan
    args = leaves(*make_lru(2, 6, 2, 3, 5))
    assert torch.autograd.gradcheck(
        lambda *a: lru_recurrence(*a, backend="native", return_state=True), tuple(args)
    )


# ------------------------------------------------------------------------------------------------
# Numerical safety: |lam| -> 1, long sequences, zero inputs, float32
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_lam_near_one(backend):
    # L = 4096 with |lam| = 0.9999: the state keeps ~ e^-0.4 of its start, powers never blow up
    nb, L, N = 2, 4096, 8
    lam = torch.polar(torch.full((N,), 0.9999, dtype=torch.float64),
                      torch.linspace(0, 3, N, dtype=torch.float64))
    g = torch.Generator().manual_seed(4)
    b = torch.randn(nb, L, N, generator=g, dtype=torch.complex128)
    h0 = torch.randn(nb, N, generator=g, dtype=torch.complex128)
    w = torch.randn(nb, L, N, generator=g, dtype=torch.complex128)
    res = {}
    for be in ("ref", backend):
        args = leaves(lam, b, h0)
        h = scan(*args, backend=be)
        res[be] = (h, torch.autograd.grad((h * w.conj()).real.sum(), args))
    torch.testing.assert_close(res[backend][0], res["ref"][0], rtol=1e-9, atol=1e-9)
    for got, want in zip(res[backend][1], res["ref"][1]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_lru_float32_lam_near_one(backend):
    # float32 over L = 4096 with |lam| up to 0.9999, against complex128 ground truth
    u, lam, B, C, h0 = make_lru(2, 4096, 3, 2, 24, r_min=0.99, r_max=0.9999)
    y64, _, g64 = lru_grads("ref", u, lam, B, C, h0)
    lo = [t.to(torch.complex64) if t.is_complex() else t.float() for t in (u, lam, B, C, h0)]
    y32, _, g32 = lru_grads(backend, *lo)
    assert rel_err(y32.double(), y64) < 1e-4  # measured ~6e-6 (as the float32 reference loop)
    for name, got, want in zip(["u", "lam", "B", "C", "h0"], g32, g64):
        assert torch.isfinite(got).all(), name
        assert rel_err(got.to(want.dtype), want) < 2e-4, name  # measured <= 2e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_inputs_give_finite_gradients(backend):
    # log-space scans produce NaN gradients here; ours must stay finite (and exact)
    N = 6
    lam = make_lam(N)
    _, _, B, C, _ = make_lru(2, 9, 3, 2, N)
    u = torch.zeros(2, 9, 3, dtype=torch.float64)
    y, x, (gu, glam, gB, gC) = lru_grads(backend, u, lam, B, C, None)
    assert (y == 0).all() and (x == 0).all()
    for t in (gu, glam, gB, gC):
        assert torch.isfinite(t).all()
    assert (glam == 0).all() and (gC == 0).all()  # no state ever, so no lam / C sensitivity
    assert gu.abs().max() > 0  # the input still matters
    b = leaves(torch.zeros(2, 9, N, dtype=torch.complex128))[0]
    lam_leaf = leaves(lam)[0]
    h = scan(lam_leaf, b, backend=backend)
    (h.abs() ** 2).sum().backward()
    assert torch.isfinite(lam_leaf.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_lam_zero_is_finite(backend):
    lam = torch.zeros(4, dtype=torch.complex128)
    args = leaves(lam, torch.randn(2, 7, 4, dtype=torch.complex128))
    h = scan(*args, backend=backend)
    torch.testing.assert_close(h, args[1].detach())  # no memory at all
    h.abs().sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_float32_matches_complex128(backend):
    u, lam, B, C, h0 = make_lru(4, 300, 5, 3, 40, r_min=0.9, r_max=0.999)
    y64, x64, g64 = lru_grads("ref", u, lam, B, C, h0)
    lo = [t.to(torch.complex64) if t.is_complex() else t.float() for t in (u, lam, B, C, h0)]
    y32, x32, g32 = lru_grads(backend, *lo)
    assert y32.dtype == torch.float32 and x32.dtype == torch.complex64
    assert rel_err(y32.double(), y64) < 2e-5  # measured ~1e-6 (as the float32 reference loop)
    assert rel_err(x32.to(torch.complex128), x64) < 2e-5
    for name, got, want in zip(["u", "lam", "B", "C", "h0"], g32, g64):
        assert got.dtype == REAL_OF.get(want.dtype, torch.complex64) or got.dtype in (
            torch.float32, torch.complex64), name
        assert rel_err(got.to(want.dtype), want) < 3e-5, name  # measured <= 4e-6


# ------------------------------------------------------------------------------------------------
# Layouts: non-contiguous inputs, conjugate / negative views, gradients that are views
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_and_lazy_views(backend):
    u, lam, B, C, h0 = make_lru(3, 10, 4, 3, 12)
    # build the same values through strided / transposed / conjugated / negated views
    u_nc = u.transpose(0, 1).contiguous().transpose(0, 1)  # (B, L, H) with permuted strides
    lam_nc = torch.stack([lam, lam], 1)[:, 0]  # stride 2
    B_nc = B.conj().resolve_conj().conj()  # lazy conjugate bit, same values
    C_nc = -((-C).resolve_neg())  # lazy negative bit
    h0_nc = h0.t().contiguous().t()
    assert not u_nc.is_contiguous() and not lam_nc.is_contiguous() and B_nc.is_conj()
    y_ref, x_ref = lru_recurrence(u, lam, B, C, h0, backend="ref", return_state=True)
    y, x = lru_recurrence(u_nc, lam_nc, B_nc, C_nc, h0_nc, backend=backend, return_state=True)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x, x_ref)
    b = (u[..., :1] * lam).transpose(0, 1).contiguous().transpose(0, 1)  # (B, L, N) strided
    torch.testing.assert_close(scan(lam_nc, b.conj(), h0_nc, backend=backend),
                               ops.scan_ref(lam, b.conj().resolve_conj(), h0))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_expanded_output_gradient_and_state_only_gradient(backend):
    # y.sum() hands back an expanded (stride 0) gradient; h_last alone leaves y's gradient None
    u, lam, B, C, h0 = make_lru(2, 8, 3, 2, 5)
    results = {}
    for be in ("ref", backend):
        args = leaves(u, lam, B, C, h0)
        y, x = lru_recurrence(*args, backend=be, return_state=True)
        g_sum = torch.autograd.grad(y.sum(), args, retain_graph=True)
        y, x = lru_recurrence(*args, backend=be, return_state=True)
        g_state = torch.autograd.grad(x.abs().sum(), args, allow_unused=True)
        results[be] = (g_sum, g_state)
    for got, want, arg in zip(results[backend][0] + results[backend][1],
                              results["ref"][0] + results["ref"][1], args + args):
        # an unused input may get None (autograd) or zeros (a fused kernel): both mean zero
        got = torch.zeros_like(arg) if got is None else got
        want = torch.zeros_like(arg) if want is None else want
        torch.testing.assert_close(got, want)


@needs_native
def test_native_double_backward_is_refused():
    args = leaves(*make_lru(1, 4, 2, 2, 3))
    y = lru_recurrence(*args, backend="native")
    (gu,) = torch.autograd.grad(y.sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError):
        gu.sum().backward()


# ------------------------------------------------------------------------------------------------
# Native kernels: instruction sets, threads, determinism
# ------------------------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize(
    "h_in, h_out, n",
    # widths below, at and above the register blocks (4 and 8 outputs) and their remainders;
    # state counts that fill 1 / several vectors of every width, with and without padding
    # (12, 5, 13): the small-state code of the backward (1 or 2 vectors) with an 8-wide block of
    # input channels and a remainder
    [(3, 2, 37), (8, 8, 16), (13, 9, 70), (4, 12, 129), (1, 17, 8), (12, 5, 13)],
)
def test_native_every_instruction_set(dtype, h_in, h_out, n):
    ext = _native_backend._ext
    isas = ext.available_isas()
    before = ext.isa()
    assert isas[0] in ("base", "neon")
    if not os.environ.get(ops.ISA_ENV):
        assert before == isas[-1]  # the best one is picked on load
    u, lam, B, C, h0 = make_lru(3, 21, h_in, h_out, n, dtype=dtype)
    y_ref, _x_ref, g_ref = lru_grads("ref", u, lam, B, C, h0)
    b = u[..., :1].to(dtype) * B[:, 0]  # (B, L, N)
    h_ref = ops.scan_ref(lam, b, h0)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.complex64 else {"rtol": 1e-10, "atol": 1e-12}
    try:
        for isa in isas:
            ext.set_isa(isa)
            y, _x, g = lru_grads("native", u, lam, B, C, h0)
            torch.testing.assert_close(y, y_ref, **tol, msg=isa)
            for got, want in zip(g, g_ref):
                torch.testing.assert_close(got, want, **tol, msg=isa)
            torch.testing.assert_close(scan(lam, b, h0, backend="native"), h_ref, **tol, msg=isa)
    finally:
        ext.set_isa(before)
    with pytest.raises(ValueError, match="not available"):
        ext.set_isa("sse9")


@needs_native
@pytest.mark.parametrize("nb", [1, 2, 5, 40])
def test_native_thread_counts_agree(nb):
    # nb < threads splits the states over threads; otherwise rows are split. N = 70 pads to 5
    # units of 64 bytes: 3 threads on one row make parts of 1 and 2 units, which the kernels run
    # by their small-state code (states in registers) at an offset into the state vector, on
    # every instruction set; 1 thread runs the whole row (the generic code where it is wider).
    u, lam, B, C, h0 = make_lru(nb, 30, 3, 2, 70, dtype=torch.complex64)
    old, ext = torch.get_num_threads(), _native_backend._ext
    before = ext.isa()
    try:
        for isa in ext.available_isas():
            ext.set_isa(isa)
            out = {}
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                out[n] = lru_grads("native", u, lam, B, C, h0)
            for n in (2, 3):
                torch.testing.assert_close(out[n][0], out[1][0], rtol=1e-5, atol=1e-6, msg=isa)
                for got, want in zip(out[n][2], out[1][2]):
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=isa)
    finally:
        torch.set_num_threads(old)
        ext.set_isa(before)


@needs_native
def test_native_is_deterministic():
    u, lam, B, C, h0 = make_lru(50, 40, 4, 4, 64, dtype=torch.complex64)
    first = lru_grads("native", u, lam, B, C, h0)
    for _ in range(3):
        again = lru_grads("native", u, lam, B, C, h0)
        assert torch.equal(again[0], first[0])
        assert all(torch.equal(a, b) for a, b in zip(again[2], first[2]))


# ------------------------------------------------------------------------------------------------
# Errors and backend choice
# ------------------------------------------------------------------------------------------------


def test_unknown_backend_lists_valid_ones():
    u, lam, B, C, _ = make_lru(1, 3, 1, 1, 2)
    with pytest.raises(ValueError, match="auto, ref, chunked, native"):
        lru_recurrence(u, lam, B, C, backend="cuda")
    with pytest.raises(ValueError, match="unknown scan backend"):
        scan(lam, torch.zeros(1, 3, 2, dtype=lam.dtype), backend="fast")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"u": torch.zeros(3, 2)}, r"u must have shape \(B, L, H_in\)"),
        ({"u": torch.zeros(1, 3, 2, dtype=torch.float64)}, r"B must have shape \(N, H_in\)"),
        ({"u": torch.zeros(1, 3, 1, dtype=torch.float32)}, "u is torch.float32 but lam is"),
        ({"u": torch.zeros(1, 3, 1, dtype=torch.int64)}, "u must be float32 or float64"),
        ({"u": torch.zeros(1, 0, 1, dtype=torch.float64)}, "L must be at least 1"),
        ({"lam": torch.ones(2, dtype=torch.float64)}, "lam must be complex64 or complex128"),
        ({"lam": torch.ones(3, dtype=torch.complex128)}, r"B must have shape \(N, H_in\)"),
        ({"B": torch.ones(2, 1, dtype=torch.complex64)}, "B is torch.complex64 but lam is"),
        ({"C": torch.ones(1, 3, dtype=torch.complex128)}, r"C must have shape \(H_out, N\)"),
        ({"C": [[1.0]]}, "C must be a torch.Tensor"),
        ({"h0": torch.zeros(2, 2, dtype=torch.complex128)}, r"h0 must have shape \(B, N\)"),
        ({"h0": torch.zeros(1, 2, dtype=torch.float64)}, "h0 must be complex64 or complex128"),
    ],
)
def test_lru_bad_inputs(change, match):
    u, lam, B, C, h0 = make_lru(1, 3, 1, 1, 2)
    kw = {"u": u, "lam": lam, "B": B, "C": C, "h0": h0}
    kw.update(change)
    for backend in ALL_BACKENDS:
        backend = getattr(backend, "values", [backend])[0]
        with pytest.raises(ValueError, match=match):
            lru_recurrence(kw["u"], kw["lam"], kw["B"], kw["C"], kw["h0"], backend=backend)


@pytest.mark.parametrize(
    "lam, b, h0, match",
    [
        (torch.ones(2, dtype=torch.complex64), torch.ones(1, 3, 3, dtype=torch.complex64), None,
         "lam has 2 states but b has N=3"),
        (torch.ones(2, dtype=torch.complex64), torch.ones(3, 2, dtype=torch.complex64), None,
         r"b must have shape \(B, L, N\)"),
        (torch.ones(2, dtype=torch.complex64), torch.ones(1, 3, 2, dtype=torch.complex128), None,
         "b is torch.complex128 but lam is torch.complex64"),
        (torch.ones(2, dtype=torch.complex64), torch.ones(1, 3, 2, dtype=torch.complex64),
         torch.ones(2, 2, dtype=torch.complex64), r"h0 must have shape \(B, N\)"),
        (torch.ones(2, dtype=torch.complex64), torch.ones(0, 3, 2, dtype=torch.complex64), None,
         "B must be at least 1"),
    ],
)
def test_scan_bad_inputs(lam, b, h0, match):
    with pytest.raises(ValueError, match=match):
        scan(lam, b, h0)


def test_native_missing_gives_clear_error_and_auto_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(_native_backend, "_ext", None)
    monkeypatch.setattr(_native_backend, "_LOAD_ERROR", "ImportError: simulated")
    monkeypatch.setattr(scan_module, "_fallback_logged", False)
    u, lam, B, C, h0 = make_lru(2, 5, 2, 2, 3)
    assert not ops.native_available()
    with pytest.raises(RuntimeError, match="could not be loaded.*simulated"):
        lru_recurrence(u, lam, B, C, backend="native")
    with pytest.raises(RuntimeError, match="backend='chunked'"):
        scan(lam, torch.zeros(1, 2, 3, dtype=lam.dtype), backend="native")
    with caplog.at_level(logging.DEBUG, logger="shrinkssm.ops.scan"):
        y = lru_recurrence(u, lam, B, C, h0)  # auto
        lru_recurrence(u, lam, B, C, h0)
    torch.testing.assert_close(y, lru_recurrence(u, lam, B, C, h0, backend="ref"))
    records = [r for r in caplog.records if "not available" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG  # logged once


def test_auto_rule(monkeypatch):
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert ops.resolve_backend("auto", cpu) == ("native" if NATIVE else "chunked")
    monkeypatch.setattr(_native_backend, "_ext", None)
    small, large = scan_module.CHUNKED_CPU_MAX_STATES, scan_module.CHUNKED_CPU_MAX_STATES + 1
    assert ops.resolve_backend("auto", cpu, small) == "chunked"  # no native kernels
    assert ops.resolve_backend("auto", cpu, large) == "ref"
    assert ops.resolve_backend("auto", meta) == "chunked"  # any non-CPU device
    assert ops.resolve_backend("ref", cpu) == "ref"
    with pytest.raises(ValueError, match="CPU tensors only"):
        ops.resolve_backend("native", meta)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_on_gpu_matches_ref():
    args = [t.cuda() for t in make_lru(3, 100, 4, 3, 16)]
    y_ref, _x_ref, g_ref = lru_grads("ref", *args)
    y, _x, g = lru_grads("auto", *args)
    torch.testing.assert_close(y, y_ref)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_smnist_shape_and_very_long_sequence(backend):
    # the benchmark shape in float64 against the reference, then L = 16384 with |lam| = 0.99999
    u, lam, B, C, h0 = make_lru(50, 784, 8, 8, 256, r_min=0.9, r_max=0.999)
    y_ref, _x_ref, g_ref = lru_grads("ref", u, lam, B, C, h0)
    y, _x, g = lru_grads(backend, u, lam, B, C, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    u, lam, B, C, h0 = make_lru(2, 16384, 2, 2, 16, r_min=0.9999, r_max=0.99999)
    y64, _, g64 = lru_grads("ref", u, lam, B, C, h0)
    lo = [t.to(torch.complex64) if t.is_complex() else t.float() for t in (u, lam, B, C, h0)]
    y32, _, g32 = lru_grads(backend, *lo)
    assert rel_err(y32.double(), y64) < 3e-4
    for got, want in zip(g32, g64):
        assert torch.isfinite(got).all() and rel_err(got.to(want.dtype), want) < 1e-3


@needs_native
def test_native_kernels_leave_the_callers_floating_point_mode_alone():
    # the kernels flush subnormals to zero while they run (see _native/common.h); the process
    # must see no change: a subnormal times one is still that subnormal afterwards
    u, lam, B, C, h0 = make_lru(2, 40, 3, 2, 20, dtype=torch.complex64)
    lru_grads("native", u, lam, B, C, h0)
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * torch.ones(1)).item() == pytest.approx(1e-39, rel=1e-3)


@needs_native
def test_native_lru_with_subnormal_adjoints_matches_reference():
    # eigenvalues small enough that states and adjoints decay into the subnormal range: the
    # kernels flush those to zero, which changes nothing visible at float32 precision
    u, lam, B, C, h0 = make_lru(2, 300, 3, 2, 20, dtype=torch.complex64)
    lam = lam * 0.05
    y_ref, _x, g_ref = lru_grads("ref", u, lam, B, C, h0)
    y, _x, g = lru_grads("native", u, lam, B, C, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(g, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
