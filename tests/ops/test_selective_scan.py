"""Tests of shrinkssm.ops.selective_scan: the reference against a closed form computed independently
(numpy, state by state), the native kernel against the reference (values, decay sums, gradients,
float32 and float64, real and complex states, every instruction set and thread count),
gradcheck, the vector exp / sin / cos through the kernel, the bucket layout and bad inputs.

The chunked backend (end of the file): values and gradients of every input against the reference
(float64, complex128 states in a ragged layout), lengths that the chunk does not divide, length 1,
gradcheck, strong and near-1 decays, that "auto" picks it off the CPU (and that the selective and
Mamba-2 layers pass "auto" through), and that its sequential steps grow like sqrt(L), not L."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from shrinkssm.nn.mamba2 import Mamba2SSM
from shrinkssm.nn.selective import SelectiveSSM
from shrinkssm.ops import _native_backend, native_available
from shrinkssm.ops import selective_scan as sel_module
from shrinkssm.ops._selective_chunked import default_chunk, varying_scan_chunked
from shrinkssm.ops.selective_scan import (
    ScanLayout,
    lanes_for,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

ssd_module = importlib.import_module("shrinkssm.ops.ssd_scan")   # the package exports the function ssd_scan
NATIVE = native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="native extension not built")
BACKENDS = ["ref", "chunked", pytest.param("native", marks=needs_native)]
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


def make_case(kind, dtype=torch.float64, nb=2, L=37, E=11, K=5, n_states=29, seed=0):
    """Inputs of one scan: kind "shared" (Mamba's structure), "real" or "complex" (per-state)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(nb, L, E, generator=g, dtype=dtype)
    delta = torch.rand(nb, L, E, generator=g, dtype=dtype) * 0.6 + 0.01
    lanes = lanes_for(dtype)
    if kind == "shared":
        layout = ScanLayout.shared(E, K, lanes)
        A = -(torch.rand(E, K, generator=g, dtype=dtype) * 3 + 0.1)
        alpha = layout.pack_shared(A)
        B = torch.randn(nb, L, K, generator=g, dtype=dtype)
        C = torch.randn(nb, L, K, generator=g, dtype=dtype)
        return u, delta, alpha, B, C, layout
    chan = torch.randint(0, E - 1, (n_states,), generator=g)      # channel E-1 gets no state
    layout, pos = ScanLayout.ragged(chan, E, lanes)
    S = layout.n_states
    re = -(torch.rand(n_states, generator=g, dtype=dtype) * 2 + 0.05)
    if kind == "complex":
        im = torch.randn(n_states, generator=g, dtype=dtype) * 4
        alpha = layout.pack(torch.complex(re, im), pos)
        cdt = COMPLEX_OF[dtype]
        B = torch.randn(nb, L, S, generator=g, dtype=cdt)
        C = torch.randn(nb, L, S, generator=g, dtype=cdt)
    else:
        alpha = layout.pack(re, pos)
        B = torch.randn(nb, L, S, generator=g, dtype=dtype)
        C = torch.randn(nb, L, S, generator=g, dtype=dtype)
    return u, delta, alpha, B, C, layout


def leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def run(backend, u, delta, alpha, B, C, layout, seed=5):
    args = leaves(u, delta, alpha, B, C)
    y, decay = selective_scan(*args, layout, backend=backend, return_decay=True)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad((y * w).sum() + (y ** 2).sum(), args)
    return y.detach(), decay, grads


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------
# The reference against an independent closed form
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shared", "real", "complex"])
def test_ref_matches_closed_form(kind):
    # h[t] = sum_{s<=t} prod_{s<r<=t} exp(delta[r] alpha) * delta[s] u[s] B[s], state by state in numpy
    u, delta, alpha, B, C, layout = make_case(kind, L=9, E=5, K=3, n_states=7)
    y = selective_scan_ref(u, delta, alpha, B, C, layout).numpy()
    chan = layout.state_channel().numpy()
    col = layout.state_column().numpy() if layout.is_shared else np.arange(layout.n_states)
    un, dn, an, Bn, Cn = (t.numpy() for t in (u, delta, alpha, B, C))
    expect = np.zeros_like(un)
    for b in range(un.shape[0]):
        for i in np.flatnonzero(chan >= 0):
            c, k = chan[i], col[i]
            for t in range(un.shape[1]):
                h = sum(np.exp(an[i] * dn[b, s + 1:t + 1, c].sum()) * dn[b, s, c] * un[b, s, c] * Bn[b, s, k]
                        for s in range(t + 1))
                expect[b, t, c] += np.real(Cn[b, t, k] * h)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


def test_docstring_example():
    layout = ScanLayout.shared(n_channels=1, n_columns=1, lanes=16)
    alpha = layout.pack_shared(torch.full((1, 1), -math.log(2.0)))
    ones = torch.ones(1, 3, 1)
    y = selective_scan(ones, ones, alpha, ones, ones, layout, backend="ref")
    torch.testing.assert_close(y.flatten(), torch.tensor([1.0, 1.5, 1.75]))


def test_decay_sum_is_the_sum_of_transitions():
    u, delta, alpha, B, C, layout = make_case("complex", L=6, E=4, n_states=5)
    _, decay = selective_scan_ref(u, delta, alpha, B, C, layout, return_decay=True)
    chan = layout.state_channel()
    i = int((chan >= 0).nonzero()[0])
    expect = torch.exp(delta[..., chan[i]] * alpha[i]).sum()
    torch.testing.assert_close(decay[i], expect)


# ------------------------------------------------------------------------------------------------
# Native kernel against the reference
# ------------------------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["shared", "real", "complex"])
@pytest.mark.parametrize("shape", [(2, 37, 11), (1, 1, 3), (3, 70, 20)])
def test_native_matches_ref(kind, dtype, shape):
    nb, L, E = shape
    case = make_case(kind, dtype, nb=nb, L=L, E=E, K=4, n_states=3 * E)
    y_ref, d_ref, g_ref = run("ref", *case)
    y, d, g = run("native", *case)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    used = case[-1].state_channel() >= 0
    assert rel_err(y, y_ref) < tol
    assert rel_err(d[used], d_ref[used]) < tol
    for name, a, b in zip(["u", "delta", "alpha", "B", "C"], g, g_ref):
        if name == "alpha":
            a, b = a[used], b[used]
        assert rel_err(a, b) < 10 * tol, name


@needs_native
@pytest.mark.parametrize("chunk", [1, 3, 32, 200])
def test_native_checkpoint_chunks(chunk, monkeypatch):
    case = make_case("complex", L=45)
    y_ref, _, g_ref = run("ref", *case)
    monkeypatch.setattr(sel_module, "CHECKPOINT_CHUNK", chunk)
    y, _, g = run("native", *case)
    assert rel_err(y, y_ref) < 1e-12
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["shared", "real", "complex"])
def test_gradcheck(backend, kind):
    u, delta, alpha, B, C, layout = make_case(kind, nb=2, L=6, E=3, K=2, n_states=4)
    inputs = leaves(u, delta, alpha, B, C)
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, layout, backend=backend), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_every_instruction_set(dtype):
    ext = _native_backend._ext
    case = make_case("complex", dtype)
    y_ref, _, g_ref = run("ref", *case)
    shared = make_case("shared", dtype)
    ys_ref = run("ref", *shared)[0]
    before = ext.isa()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    try:
        for isa in ext.available_isas():
            ext.set_isa(isa)
            y, _, g = run("native", *case)
            assert rel_err(y, y_ref) < tol, isa
            assert rel_err(g[2], g_ref[2]) < 10 * tol, isa
            assert rel_err(run("native", *shared)[0], ys_ref) < tol, isa
    finally:
        ext.set_isa(before)


@needs_native
def test_native_results_do_not_depend_on_thread_count():
    case = make_case("shared", torch.float32, nb=5, L=300, E=40, K=16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, d1, g1 = run("native", *case)
        torch.set_num_threads(3)
        y3, d3, g3 = run("native", *case)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y3) and torch.equal(d1, d3)
    assert all(torch.equal(a, b) for a, b in zip(g1, g3))


@needs_native
def test_native_double_backward_is_refused():
    u, delta, alpha, B, C, layout = make_case("real")
    args = leaves(u, delta, alpha, B, C)
    y = selective_scan(*args, layout, backend="native")
    (gu,) = torch.autograd.grad(y.sum(), [args[0]], create_graph=True)
    with pytest.raises(RuntimeError):
        gu.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_inputs_and_zero_steps_give_finite_gradients(backend):
    u, delta, alpha, B, C, layout = make_case("complex")
    u, delta = torch.zeros_like(u), torch.zeros_like(delta)
    y, decay, grads = run(backend, u, delta, alpha, B, C, layout)
    assert torch.equal(y, torch.zeros_like(y))
    used = layout.state_channel() >= 0
    torch.testing.assert_close(decay[used], torch.full_like(decay[used], u.shape[0] * u.shape[1]))
    assert all(torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------------------------------
# The kernel's exp and sincos (read through the decay sums of one step)
# ------------------------------------------------------------------------------------------------


def _decays(alpha_values, dtype):
    """exp(alpha) for many alphas through the kernel: one step, delta = 1."""
    n = alpha_values.shape[0]
    lanes = lanes_for(dtype)
    layout, pos = ScanLayout.ragged(torch.arange(n), n, lanes)
    alpha = layout.pack(alpha_values, pos)
    S = layout.n_states
    ones = torch.ones(1, 1, n, dtype=dtype)
    coef = torch.zeros(1, 1, S, dtype=alpha.dtype)
    _, decay = selective_scan(ones, ones, alpha, coef, coef, layout, backend="native", return_decay=True)
    return decay[pos]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_exp_sin_cos_accuracy(dtype):
    x = torch.cat([-torch.logspace(-6, 2.8, 600, dtype=torch.float64), torch.tensor([0.0, -1e-300])])
    x = x.to(dtype).double()  # the reference sees exactly the kernel's arguments
    got = _decays(x.to(dtype), dtype).double()
    expect = torch.exp(x)
    tiny = expect < (1.2e-38 if dtype == torch.float32 else 2.3e-308)
    eps = torch.finfo(dtype).eps
    assert ((got - expect).abs() <= 4 * eps * expect + 1.2e-38 * tiny).all()
    # complex: exp(-s + i w) for |w| up to 1e3
    w = torch.linspace(-1000, 1000, 801, dtype=torch.float64)
    z = torch.complex(torch.full_like(w, -0.25), w).to(COMPLEX_OF[dtype]).to(torch.complex128)
    got = _decays(z.to(COMPLEX_OF[dtype]), dtype).to(torch.complex128)
    err = (got - torch.exp(z)).abs() / torch.exp(z).abs()
    assert err.max() < 16 * eps


@needs_native
def test_kernel_exp_underflows_to_zero_and_nan_propagates():
    got = _decays(torch.tensor([-200.0, -1e6, float("nan")]), torch.float32)
    assert got[0] == 0 and got[1] == 0 and torch.isnan(got[2])


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


def test_ragged_layout_pads_each_bucket_to_its_largest_channel():
    counts = [5, 1, 1, 1, 3, 0, 2, 2, 1]
    chan = torch.tensor([c for c, k in enumerate(counts) for _ in range(k)])
    layout, pos = ScanLayout.ragged(chan, len(counts), lanes=4)
    # channels sorted by size: [0 (5), 4 (3), 6, 7 (2)] [1, 2, 3, 8 (1)]; channel 5 has no state
    assert layout.bucket_chan.tolist() == [[0, 4, 6, 7], [1, 2, 3, 8]]
    assert layout.offsets.tolist() == [0, 20, 24]
    state_chan = layout.state_channel()
    assert torch.equal(state_chan[pos], chan)
    assert len(set(pos.tolist())) == len(pos)
    # states of one channel keep their order along the slots
    assert pos[chan == 0].tolist() == [0, 4, 8, 12, 16]


def test_shared_layout_packs_channel_major_per_bucket():
    layout = ScanLayout.shared(n_channels=3, n_columns=2, lanes=4)
    A = torch.arange(6.0).reshape(3, 2)
    packed = layout.pack_shared(A)
    assert packed.tolist() == [0.0, 2.0, 4.0, 0.0, 1.0, 3.0, 5.0, 0.0]
    assert layout.state_column().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert layout.state_channel().tolist() == [0, 1, 2, -1, 0, 1, 2, -1]


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="at most once"):
        ScanLayout(2, 2, torch.tensor([[0, 0]]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="multiples"):
        ScanLayout(2, 2, torch.tensor([[0, 1]]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="state_channel"):
        ScanLayout.ragged(torch.tensor([0, 5]), 3, 4)


# ------------------------------------------------------------------------------------------------
# Bad inputs and backend choice
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    (lambda a: a.__setitem__(0, a[0][..., :-1]), "same shape"),
    (lambda a: a.__setitem__(1, a[1].float()), "delta is"),
    (lambda a: a.__setitem__(2, a[2][:-1]), "S = "),
    (lambda a: a.__setitem__(3, a[3][:, :-1]), "B must have shape"),
    (lambda a: a.__setitem__(4, a[4].to(torch.complex128)), "shared C must be real"),
    (lambda a: a.__setitem__(2, a[2].to(torch.complex128)), "per-state layout"),
    (lambda a: a.__setitem__(0, a[0].int()), "float32 or float64"),
])
def test_bad_inputs(change, match):
    args = list(make_case("shared")[:5])
    layout = make_case("shared")[5]
    change(args)
    with pytest.raises(ValueError, match=match):
        selective_scan(*args, layout, backend="ref")


def test_unknown_backend_and_wrong_lanes():
    case = make_case("shared", torch.float64)
    with pytest.raises(ValueError, match="valid backends"):
        selective_scan(*case, backend="parallel")
    if NATIVE:
        u, delta, alpha, B, C, _ = case
        wrong = ScanLayout.shared(u.shape[-1], B.shape[-1], lanes=16)  # float64 needs 8
        with pytest.raises(ValueError, match="lanes"):
            selective_scan(u, delta, wrong.pack_shared(torch.zeros(u.shape[-1], B.shape[-1], dtype=u.dtype)),
                           B, C, wrong, backend="native")


def test_auto_uses_ref_without_the_extension(monkeypatch):
    monkeypatch.setattr(_native_backend, "_ext", None)
    monkeypatch.setattr(_native_backend, "_LOAD_ERROR", "ImportError: test")
    case = make_case("real")
    torch.testing.assert_close(selective_scan(*case, backend="auto"), selective_scan_ref(*case))
    with pytest.raises(RuntimeError, match="compiled extension"):
        selective_scan(*case, backend="native")


# ------------------------------------------------------------------------------------------------
# The chunked backend
# ------------------------------------------------------------------------------------------------


def sequential(a, b):
    """h[:, t] = a[:, t] h[:, t-1] + b[:, t] from zero, written out step by step (independent of the
    library)."""
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


def assert_matches_ref(case, tol=1e-12, chunk=None):
    """Chunked against the reference: y, the decay sums and the gradients of u, delta, alpha, B, C."""
    y_ref, d_ref, g_ref = run("ref", *case)
    if chunk is None:
        y, d, g = run("chunked", *case)
    else:
        args = leaves(*case[:5])
        y, d = selective_scan_chunked(*args, case[5], return_decay=True, chunk=chunk)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(y.dtype)
        g = torch.autograd.grad((y * w).sum() + (y ** 2).sum(), args)
        y = y.detach()
    used = case[-1].state_channel() >= 0
    assert rel_err(y, y_ref) < tol
    assert torch.equal(d[used], d_ref[used])          # the same exp(delta alpha), summed alike
    for name, a, b in zip(["u", "delta", "alpha", "B", "C"], g, g_ref):
        if name == "alpha":
            a, b = a[used], b[used]
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < 10 * tol, name


# ------------------------------------------------------------------------------------------------
# Against the reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shared", "real", "complex"])
@pytest.mark.parametrize("L", [1, 2, 3, 10, 37, 64, 101])
def test_chunked_matches_ref(kind, L):
    # default chunk ceil(sqrt(L)): 37 -> 7 (6 chunks, 5 padded steps), 101 -> 11, 64 -> 8 exactly
    assert_matches_ref(make_case(kind, L=L))


@pytest.mark.parametrize("chunk", [1, 2, 5, 16, 45, 1000])
def test_chunked_matches_ref_for_every_chunk_length(chunk):
    assert_matches_ref(make_case("complex", L=45, seed=3), chunk=chunk)


@pytest.mark.parametrize("L, chunk", [(1, None), (9, 3), (10, 3), (17, None), (30, 4), (30, 30)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_varying_scan_equals_the_loop(L, chunk, dtype):
    g = torch.Generator().manual_seed(L)
    a = torch.rand(2, L, 6, generator=g, dtype=torch.float64) * 1.2 - 0.1    # some |a| > 1, some < 0
    b = torch.randn(2, L, 6, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        a = torch.polar(a.abs(), torch.randn(2, L, 6, generator=g, dtype=torch.float64))
        b = torch.complex(b, torch.randn(2, L, 6, generator=g, dtype=torch.float64))
    a, b = leaves(a, b)
    h, h_loop = varying_scan_chunked(a, b, chunk), sequential(a, b)
    w = torch.randn(h.shape, generator=g, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad((h * w).real.sum(), [a, b])
    grads_loop = torch.autograd.grad((h_loop * w).real.sum(), [a, b])
    torch.testing.assert_close(h, h_loop, rtol=1e-12, atol=1e-13)
    for x, y in zip(grads, grads_loop):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13)


def test_default_chunk_is_ceil_sqrt():
    assert [default_chunk(L) for L in (1, 2, 4, 5, 9, 10, 784, 785)] == [1, 2, 2, 3, 3, 4, 28, 29]


def test_bad_chunk_and_shapes_are_refused():
    a = torch.ones(1, 4, 2)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        varying_scan_chunked(a, a, chunk=0)
    with pytest.raises(ValueError, match="one shape"):
        varying_scan_chunked(a, a[:, :3])


@pytest.mark.parametrize("kind", ["shared", "complex"])
def test_chunked_gradcheck_with_a_padded_chunk(kind):
    u, delta, alpha, B, C, layout = make_case(kind, nb=2, L=7, E=3, K=2, n_states=4)
    inputs = leaves(u, delta, alpha, B, C)
    # chunk 3 on 7 steps: two full chunks, one padded
    assert torch.autograd.gradcheck(lambda *x: selective_scan_chunked(*x, layout, chunk=3), inputs,
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


def test_float32_agrees_with_the_float64_reference():
    case64 = make_case("complex", L=300)
    case32 = [t.to(torch.float32 if not t.is_complex() else torch.complex64) for t in case64[:5]]
    y32 = selective_scan(*case32, case64[5], backend="chunked")
    y64 = selective_scan_ref(*case64)
    assert y32.dtype == torch.float32
    assert rel_err(y32.double(), y64) < 1e-5


# ------------------------------------------------------------------------------------------------
# Numerical safety
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("scale, L", [
    (1e4, 300),        # exp(delta alpha) underflows to exactly 0
    (1333.0, 300),     # delta alpha from -70 to -2700: subnormal decays (torch.cumprod's backward gives nan)
    (1e-7, 4096),      # |a| within 1e-6 of 1 over a long sequence
])
def test_strong_and_near_one_decays_are_finite_and_match_ref(kind, scale, L):
    u, delta, alpha, B, C, layout = make_case(kind, L=L, nb=1, E=4, n_states=6)
    alpha = alpha * scale if kind == "real" else torch.complex(alpha.real * scale, alpha.imag)
    a = torch.exp(delta[..., layout.state_channel().clamp_min(0)] * alpha)
    if scale > 1:
        assert (a.abs() < 1e-300).any()                       # the case really has such decays
    else:
        assert (a.abs() > 1 - 1e-6).all()
    y, _, grads = run("chunked", u, delta, alpha, B, C, layout)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    assert_matches_ref((u, delta, alpha, B, C, layout), tol=1e-13 if scale > 1 else 1e-12)


def test_near_one_decay_in_float32_over_a_long_sequence():
    case = make_case("complex", L=8192, nb=1, E=3, n_states=4)
    u, delta, alpha, B, C, layout = case
    alpha = torch.complex(alpha.real * 1e-6, alpha.imag)
    c32 = [t.to(torch.float32 if not t.is_complex() else torch.complex64) for t in (u, delta, alpha, B, C)]
    y, _, grads = run("chunked", *c32, layout)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    y64 = selective_scan_ref(u, delta, alpha, B, C, layout)
    assert rel_err(y.double(), y64) < 1e-3


# ------------------------------------------------------------------------------------------------
# "auto" off the CPU
# ------------------------------------------------------------------------------------------------


def test_auto_resolves_to_chunked_off_the_cpu(monkeypatch):
    for dev in ("meta", "cuda", "mps"):
        assert resolve_backend("auto", torch.device(dev)) == "chunked"
        assert resolve_backend("chunked", torch.device(dev)) == "chunked"
        assert resolve_backend("ref", torch.device(dev)) == "ref"
        with pytest.raises(ValueError, match="CPU tensors only"):
            resolve_backend("native", torch.device(dev))
    # the CPU is unchanged: native with the extension, ref without it
    assert resolve_backend("auto", torch.device("cpu")) == ("native" if NATIVE else "ref")
    monkeypatch.setattr(_native_backend, "_ext", None)
    assert resolve_backend("auto", torch.device("cpu")) == "ref"
    assert resolve_backend("auto", torch.device("meta")) == "chunked"
    with pytest.raises(ValueError, match="valid backends: auto, ref, chunked, native"):
        resolve_backend("parallel", torch.device("cpu"))


def spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        calls.append(args[0].device.type)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_auto_runs_the_chunked_scan_on_a_non_cpu_device(monkeypatch):
    chunked = spy(monkeypatch, sel_module, "selective_scan_chunked")
    ref = spy(monkeypatch, sel_module, "selective_scan_ref")
    case = make_case("complex", L=10)
    y, decay = selective_scan(*(t.to("meta") for t in case[:5]), case[5], backend="auto", return_decay=True)
    assert (y.device.type, tuple(y.shape), tuple(decay.shape)) == ("meta", (2, 10, 11), (case[2].shape[0],))
    assert chunked == ["meta"] and ref == []


def test_selective_layer_passes_auto_through(monkeypatch):
    chunked = spy(monkeypatch, sel_module, "selective_scan_chunked")
    ref = spy(monkeypatch, sel_module, "selective_scan_ref")
    layer = SelectiveSSM(4, 3).eval()
    assert layer.scan == "auto"
    with torch.no_grad():
        layer(torch.randn(2, 5, 4))                                  # CPU: native or ref, never chunked
    assert chunked == [] and ref == ([] if NATIVE else ["cpu"])
    ref.clear()
    out = layer.to("meta")(torch.randn(2, 5, 4, device="meta"))
    assert out.device.type == "meta" and chunked == ["meta"] and ref == []


def test_mamba2_layer_uses_the_chunked_ssd_scan_off_the_cpu(monkeypatch):
    chunked = spy(monkeypatch, ssd_module, "ssd_scan_chunked")
    native = spy(monkeypatch, ssd_module, "ssd_scan_native")
    ref = spy(monkeypatch, ssd_module, "ssd_scan_ref")
    layer = Mamba2SSM(8, 4, headdim=4).eval()
    assert layer.scan == "auto"
    layer(torch.randn(2, 5, 8))                                      # CPU: native with the extension
    assert (native, chunked) == ((["cpu"], []) if NATIVE else ([], ["cpu"]))
    native.clear(), chunked.clear()
    out = layer.to("meta")(torch.randn(2, 5, 8, device="meta"))
    assert out.device.type == "meta" and chunked == ["meta"] and native == ref == []


# ------------------------------------------------------------------------------------------------
# Structure: no Python loop over time
# ------------------------------------------------------------------------------------------------


class CountOps(TorchDispatchMode):
    """Counts every aten operation dispatched (forward and autograd's backward alike)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def op_counts(backend, L, kind="complex"):
    """(forward ops, forward + backward ops) of one scan of length L."""
    case = make_case(kind, L=L, nb=1, E=3, n_states=4)
    args = leaves(*case[:5])
    with CountOps() as count:
        y = selective_scan(*args, case[5], backend=backend)
        forward = count.n
        torch.autograd.grad(y.square().sum(), args)
    return forward, count.n


@pytest.mark.parametrize("kind", ["shared", "complex"])
def test_sequential_steps_grow_like_sqrt_length(kind):
    f1, t1 = op_counts("chunked", 1, kind)
    f100, t100 = op_counts("chunked", 100, kind)
    f1600, t1600 = op_counts("chunked", 1600, kind)
    for L, f in ((100, f100), (1600, f1600)):
        # the loops: T = ceil(sqrt(L)) local steps of two operations, ceil(L / T) - 1 carry steps
        # of one, plus a fixed count; the reference runs two operations per time step
        assert f - f1 <= 3 * (2 * math.sqrt(L) + 2), (L, f - f1)
    # forward + backward: 16 times the length costs about 4 times the operations (sqrt), not 16
    assert (t1600 - t1) / (t100 - t1) < 6
    assert t1600 - t1 < 1600
    # the same measures tell the reference's loop over time apart
    (r1, rt1), (r100, rt100), (r1600, rt1600) = (op_counts("ref", L, kind) for L in (1, 100, 1600))
    assert r1600 - r1 >= 2 * 1599 and (rt1600 - rt1) / (rt100 - rt1) > 14
