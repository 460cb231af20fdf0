"""The native SSD scan (shrinkssm.ops._ssd_native, kernel src/shrinkssm/ops/_native/ssd.c) against the
sequential reference: values, final states and gradients on every instruction-set path, float32
and float64, shapes that exercise the kernel's padding (N not a multiple of the lanes), its row
blocks (P not a multiple of 4), several groups and chunk lengths that do not divide L; gradcheck;
results independent of the thread count; the operators (opcheck, compile, refused inputs); and
how "auto" chooses."""

from __future__ import annotations

import importlib

import pytest
import torch

from shrinkssm.nn import Mamba2SSM
from shrinkssm.ops import _native_backend, native_available
from shrinkssm.ops import _ssd_native as ssd_native
from shrinkssm.ops.ssd_scan import resolve_ssd_backend, ssd_scan, ssd_scan_ref

pytestmark = [
    pytest.mark.skipif(not native_available(), reason="native extension not built"),
    pytest.mark.usefixtures("one_torch_thread"),  # see tests/conftest.py
]

_ssd = importlib.import_module("shrinkssm.ops.ssd_scan")
OPS = torch.ops.shrinkssm
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _inputs(b=2, L=13, H=4, P=3, G=2, N=5, dtype=torch.float64, seed=0, init=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    ts = [r(b, L, H, P), torch.nn.functional.softplus(r(b, L, H)), -torch.exp(r(H)), r(b, L, G, N), r(b, L, G, N)]
    ts.append(r(b, H, P, N) if init else None)
    return [t if t is None else t.requires_grad_(True) for t in ts]


def _run(ts, backend, chunk=None):
    """y, the final state and the gradients of every input of a weighted sum of both."""
    leaves = [t for t in ts if t is not None]
    if backend == "native":
        y, S = ssd_native.ssd_scan_native(*ts, return_final_state=True, chunk=chunk)
    else:
        y, S = ssd_scan_ref(*ts, return_final_state=True)
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    wS = torch.randn(S.shape, generator=g, dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad((y * wy).sum() + (S * wS).sum(), leaves)
    return [y.detach(), S.detach(), *grads]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


NAMES = ["y", "final state", "dx", "ddt", "dA", "dB", "dC", "dS0"]
SHAPES = [  # (b, L, H, P, G, N, init)
    (2, 13, 4, 3, 2, 5, True),        # N below the lanes, P below a row block, 2 groups
    (1, 70, 2, 8, 1, 17, True),       # N just above a 16-lane block
    (3, 41, 6, 5, 3, 32, False),      # 3 groups of 2 heads, a block of 4 rows and one more
    (2, 1, 1, 1, 1, 1, False),        # one step, one of everything
    (1, 37, 4, 16, 2, 40, True),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_native_equals_reference_float64_on_every_instruction_set(shape):
    b, L, H, P, G, N, init = shape
    ts = _inputs(b, L, H, P, G, N, init=init, seed=L)
    want = _run(ts, "ref")
    before = _native_backend.native_isa()
    try:
        for isa in _native_backend.native_isas():
            _native_backend.set_native_isa(isa)
            for chunk in (None, 1, 4):                             # 4: the last chunk short
                got = _run(ts, "native", chunk)
                for name, a, w in zip(NAMES, got, want):
                    assert rel_err(a, w) < 1e-12, (isa, chunk, name)
    finally:
        _native_backend.set_native_isa(before)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_native_float32_matches_the_float64_reference_on_every_instruction_set(shape):
    b, L, H, P, G, N, init = shape
    ts64 = _inputs(b, L, H, P, G, N, init=init, seed=L + 1)
    want = _run(ts64, "ref")
    ts32 = [None if t is None else t.detach().float().requires_grad_(True) for t in ts64]
    before = _native_backend.native_isa()
    try:
        for isa in _native_backend.native_isas():
            _native_backend.set_native_isa(isa)
            got = _run(ts32, "native")
            assert got[0].dtype == torch.float32
            for name, a, w in zip(NAMES, got, want):
                assert rel_err(a, w) < 2e-5, (isa, name)
    finally:
        _native_backend.set_native_isa(before)


def test_native_gradcheck_float64():
    ts = _inputs(b=2, L=6, H=4, P=5, G=2, N=3, init=True, seed=3)
    assert torch.autograd.gradcheck(
        lambda *a: ssd_native.ssd_scan_native(*a, return_final_state=True, chunk=4), ts)


def test_native_results_do_not_depend_on_the_thread_count():
    ts = _inputs(b=5, L=200, H=4, P=8, G=2, N=24, dtype=torch.float32, init=True, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(ts, "native")
        torch.set_num_threads(3)
        three = _run(ts, "native")
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(NAMES, one, three):
        assert torch.equal(a, b), name


def test_zero_steps_leave_the_state_unchanged_and_strong_decays_stay_finite():
    x, dt, A, B, C, S0 = _inputs(L=6, init=True)
    with torch.no_grad():
        y, S = ssd_scan(x, torch.zeros_like(dt), A, B, C, S0, True, backend="native")
    assert torch.equal(S, S0)
    # log-decays summing to about -1e5 in float32: the decays underflow to 0, nothing overflows
    x, dt, A, B, C, _ = _inputs(b=1, L=400, H=2, P=2, G=1, N=3, seed=2)
    A = torch.tensor([-50.0, -0.01], dtype=torch.float64)
    ts = [t.detach() for t in (x, 5 * dt, A, B, C)]
    y = ssd_scan(*[t.float() for t in ts], backend="native")
    assert torch.isfinite(y).all()
    assert rel_err(y, ssd_scan_ref(*ts)) < 1e-4


def test_native_is_differentiable_once():
    ts = _inputs(L=5)
    y = ssd_scan(*ts[:5], backend="native")
    (gx,) = torch.autograd.grad(y.square().sum(), ts[0], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        gx.sum().backward()


# ------------------------------------------------------------------------------------------------
# The operators
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", [True, False])
def test_opcheck_ssd_forward_with_autograd(dtype, init):
    x, dt, A, B, C, S0 = _inputs(b=2, L=9, H=4, P=3, G=2, N=5, dtype=dtype, init=init)
    torch.library.opcheck(OPS.ssd_forward, (x, dt, A, B, C, S0, 4, True), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("gfin", [True, False])
def test_opcheck_ssd_backward(gfin):
    x, dt, A, B, C, S0 = (t if t is None else t.detach() for t in _inputs(L=9, init=True))
    _, fin, ck = OPS.ssd_forward(x, dt, A, B, C, S0, 4, True)
    gy = torch.randn(x.shape, dtype=x.dtype)
    gf = torch.randn_like(fin) if gfin else None
    torch.library.opcheck(OPS.ssd_backward, (gy, gf, x, dt, A, B, C, ck, 4, True),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_dispatcher_and_direct_path_agree():
    ts = _inputs(L=11, init=True)
    direct = _run(ts, "native", chunk=4)
    leaves = [t for t in ts if t is not None]
    y, S, _ = OPS.ssd_forward(*ts, 4, True)                         # through the dispatcher
    g = torch.Generator().manual_seed(7)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    wS = torch.randn(S.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((y * wy).sum() + (S * wS).sum(), leaves)
    for name, a, b in zip(NAMES, [y, S, *grads], direct):
        assert torch.equal(a.detach(), b), name


def test_operators_refuse_inputs_the_kernel_cannot_take():
    x, dt, A, B, C, _ = (t if t is None else t.detach() for t in _inputs())
    with pytest.raises(ValueError, match="dt must be a CPU"):
        OPS.ssd_forward(x, dt[:, :, :2], A, B, C, None, 4, False)
    with pytest.raises(ValueError, match="multiple of G"):
        OPS.ssd_forward(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1),
                        None, 4, False)
    with pytest.raises(ValueError, match="chunk >= 1"):
        OPS.ssd_forward(x, dt, A, B, C, None, 0, False)
    with pytest.raises(ValueError, match="S0 must be"):
        OPS.ssd_forward(x, dt, A, B, C, torch.zeros(1, 2, 3), 4, False)
    with pytest.raises(ValueError, match="float32 or float64"):
        OPS.ssd_forward(*(t.half() for t in (x, dt, A, B, C)), None, 4, False)
    _, _, ck = OPS.ssd_forward(x, dt, A, B, C, None, 4, True)
    with pytest.raises(ValueError, match="ck must be"):
        OPS.ssd_backward(torch.zeros_like(x), None, x, dt, A, B, C, ck[:, :, :1], 4, False)


def test_compiled_mamba2_layer_matches_eager():
    torch.manual_seed(0)
    layer = Mamba2SSM(8, 12, headdim=4, ngroups=2, scan="native").train()
    layer.track_gramians = False   # the statistics' data-dependent branches break a full graph
    u = torch.randn(2, 19, 8)
    seen = []

    def recording_aot_eager(gm, example_inputs):                    # the captured graph's calls
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(layer, backend=recording_aot_eager, fullgraph=True)
    want = layer(u)
    want.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    got = compiled(u)
    got.square().sum().backward()
    assert rel_err(got, want) < 1e-5
    assert "shrinkssm.ssd_forward.default" in seen
    for g_c, (name, p) in zip(grads, layer.named_parameters()):
        assert rel_err(p.grad, g_c) < 1e-4, name


# ------------------------------------------------------------------------------------------------
# What "auto" means
# ------------------------------------------------------------------------------------------------


def test_auto_chooses_native_for_small_head_states_and_chunked_otherwise(monkeypatch):
    cpu, f32, f64 = torch.device("cpu"), torch.float32, torch.float64
    assert resolve_ssd_backend("auto", cpu, P=8, N=256, dtype=f32) == "native"     # 8 KiB
    assert resolve_ssd_backend("auto", cpu, P=16, N=256, dtype=f32) == "native"    # 16 KiB
    assert resolve_ssd_backend("auto", cpu, P=32, N=256, dtype=f32) == "chunked"   # 32 KiB
    assert resolve_ssd_backend("auto", cpu, P=16, N=256, dtype=f64) == "chunked"
    assert resolve_ssd_backend("auto", cpu, P=64, N=64, dtype=f32) == "native"
    assert resolve_ssd_backend("chunked", cpu, P=8, N=16) == "chunked"
    assert resolve_ssd_backend("native", cpu, P=64, N=1024) == "native"            # forced
    for dev in ("meta", "cuda"):
        assert resolve_ssd_backend("auto", torch.device(dev), P=8, N=16) == "chunked"
        with pytest.raises(ValueError, match="CPU only"):
            resolve_ssd_backend("native", torch.device(dev))
    with pytest.raises(ValueError, match="valid: auto, chunked, native, ref"):
        resolve_ssd_backend("parallel", cpu)
    monkeypatch.setattr(_native_backend, "_ext", None)
    assert resolve_ssd_backend("auto", cpu, P=8, N=16) == "chunked"
    with pytest.raises(RuntimeError, match="compiled extension"):
        resolve_ssd_backend("native", cpu)


def test_ssd_scan_auto_runs_the_backend_it_resolves(monkeypatch):
    calls = []
    for name in ("ssd_scan_native", "ssd_scan_chunked"):
        original = getattr(_ssd, name)
        monkeypatch.setattr(_ssd, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    small = _inputs(H=2, P=8, G=1, N=16, dtype=torch.float32)
    wide = _inputs(H=2, P=64, G=1, N=256, dtype=torch.float32, L=3)
    ssd_scan(*small)
    ssd_scan(*wide)
    ssd_scan(*(t[:, :0] if t.ndim >= 3 else t for t in small[:5]))          # L = 0: chunked
    assert calls == ["ssd_scan_native", "ssd_scan_chunked", "ssd_scan_chunked"]
