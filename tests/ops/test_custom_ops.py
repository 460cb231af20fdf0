"""The native kernels as PyTorch custom operators (namespace ``shrinkssm``): ``torch.library.opcheck``
on every operator (schema, fake tensors, autograd registration, AOT dispatch with dynamic shapes),
``torch.compile(fullgraph=True)`` of the LRU and the selective layer against eager (values and
gradients, the operators present in the captured graph), and ``torch.export`` of a model against
its eager outputs.

The compile tests use the ``aot_eager`` backend (Dynamo's whole-graph capture and AOTAutograd, which
run every fake implementation and registered backward); the same tests through Inductor take
minutes of code generation and are marked slow."""

from __future__ import annotations

import copy

import pytest
import torch

from shrinkssm.nn import LRU, ModelConfig, SelectiveSSM, SSMModel
from shrinkssm.ops import native_available
from shrinkssm.ops.selective_scan import ScanLayout, lanes_for

pytestmark = [
    pytest.mark.skipif(not native_available(), reason="native extension not built"),
    pytest.mark.usefixtures("one_torch_thread"),  # see tests/conftest.py
]

OPS = torch.ops.shrinkssm
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def rand(*shape, dtype=torch.float64, grad=False, seed=[0]):  # noqa: B006 (a running seed)
    seed[0] += 1
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed[0]), dtype=dtype)
    return t.requires_grad_(grad)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------
# opcheck on every operator
# ------------------------------------------------------------------------------------------------


def lru_inputs(dtype, h0, grad, nb=2, L=13, Hi=3, Ho=2, Np=16):
    lam_r = 0.9 * torch.rand(Np, dtype=dtype, generator=torch.Generator().manual_seed(1))
    lam_i = 0.3 * torch.rand(Np, dtype=dtype, generator=torch.Generator().manual_seed(2))
    args = [rand(nb, L, Hi, dtype=dtype), lam_r, lam_i, rand(Hi, Np, dtype=dtype), rand(Hi, Np, dtype=dtype),
            rand(Ho, Np, dtype=dtype), rand(Ho, Np, dtype=dtype)]
    args += [rand(nb, Np, dtype=dtype), rand(nb, Np, dtype=dtype)] if h0 else [None, None]
    return [None if a is None else a.requires_grad_(grad) for a in args]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h0", [True, False])
def test_opcheck_lru_forward_with_autograd(dtype, h0):
    args = lru_inputs(dtype, h0, grad=True)
    torch.library.opcheck(OPS.lru_forward, (*args, 5, True), test_utils=OPCHECK_TESTS)


def test_opcheck_lru_forward_without_checkpoints():
    args = lru_inputs(torch.float32, True, grad=False)
    torch.library.opcheck(OPS.lru_forward, (*args, 4, False), test_utils=OPCHECK_TESTS)
    ck = OPS.lru_forward(*args, 4, False)[3]
    assert ck.numel() == 0  # nothing stored when no backward will run


@pytest.mark.parametrize("want_h0", [True, False])
def test_opcheck_lru_backward(want_h0):
    args = lru_inputs(torch.float64, True, grad=False)
    y, hlr, hli, ckr, cki = OPS.lru_forward(*args, 5, True)
    u, lr, li, Br, Bi, Cr, Ci, _h0r, _h0i = args
    grads = (rand(*y.shape), rand(*hlr.shape), rand(*hli.shape))
    torch.library.opcheck(OPS.lru_backward, (*grads, u, lr, li, Br, Bi, Cr, Ci, ckr, cki, 5, want_h0),
                          test_utils=OPCHECK_TESTS)
    # no gradient of the last state (None) is the same as a zero one
    full = OPS.lru_backward(y.new_ones(y.shape), None, None, u, lr, li, Br, Bi, Cr, Ci, ckr, cki, 5, want_h0)
    zero = OPS.lru_backward(y.new_ones(y.shape), torch.zeros_like(hlr), torch.zeros_like(hli), u, lr, li,
                            Br, Bi, Cr, Ci, ckr, cki, 5, want_h0)
    for a, b in zip(full, zero):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h0", [True, False])
def test_opcheck_scan(h0):
    N = 7
    lam = torch.view_as_real(torch.polar(torch.rand(N, dtype=torch.float64) * 0.9,
                                         torch.rand(N, dtype=torch.float64) * 6))
    args = (lam.clone().requires_grad_(), rand(2, 9, N, 2, grad=True), rand(2, N, 2, grad=True) if h0 else None)
    torch.library.opcheck(OPS.scan_forward, args, test_utils=OPCHECK_TESTS)
    h = OPS.scan_forward(*[None if a is None else a.detach() for a in args])
    bwd = (lam, h, None if args[2] is None else args[2].detach(), rand(*h.shape), h0)
    torch.library.opcheck(OPS.scan_backward, bwd, test_utils=OPCHECK_TESTS)


def selective_inputs(kind, dtype=torch.float64, nb=2, L=11, E=5, K=3, grad=True):
    g = torch.Generator().manual_seed(7)
    lanes = lanes_for(dtype)
    u, dl = rand(nb, L, E, dtype=dtype), torch.rand(nb, L, E, generator=g, dtype=dtype) * 0.5 + 0.01
    if kind == "shared":
        layout = ScanLayout.shared(E, K, lanes)
        alr = layout.pack_shared(-(torch.rand(E, K, generator=g, dtype=dtype) + 0.1))
        ali = Bi = Ci = None
        Br, Cr = rand(nb, L, K, dtype=dtype), rand(nb, L, K, dtype=dtype)
    else:
        layout, pos = ScanLayout.ragged(torch.tensor([0, 0, 1, 3, 3, 3, 4]), E, lanes)
        S = layout.n_states
        alr = layout.pack(-(torch.rand(7, generator=g, dtype=dtype) + 0.1), pos)
        ali = layout.pack(torch.randn(7, generator=g, dtype=dtype), pos)
        Br, Bi, Cr, Ci = (rand(nb, L, S, dtype=dtype) for _ in range(4))
    diff = [None if t is None else t.requires_grad_(grad) for t in (u, dl, alr, ali, Br, Bi, Cr, Ci)]
    kidx = layout.slot_column if layout.is_shared else None
    return (*diff, layout.bucket_chan, layout.offsets, kidx, max(layout.n_columns, 1))


@pytest.mark.parametrize("kind", ["shared", "complex"])
@pytest.mark.parametrize("want_decay", [True, False])
def test_opcheck_selective(kind, want_decay):
    args = selective_inputs(kind)
    torch.library.opcheck(OPS.selective_forward, (*args, 4, True, want_decay), test_utils=OPCHECK_TESTS)
    plain = selective_inputs(kind, grad=False)
    y, ck, _ = OPS.selective_forward(*plain, 4, True, False)
    torch.library.opcheck(OPS.selective_backward, (rand(*y.shape), *plain[:-1], ck, plain[-1], 4),
                          test_utils=OPCHECK_TESTS)


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) against eager
# ------------------------------------------------------------------------------------------------


class GraphRecorder:
    """A torch.compile backend that keeps every captured FX graph and runs it with ``inner``."""

    def __init__(self, inner: str):
        self.inner, self.graphs = inner, []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.backends.registry.lookup_backend(self.inner)(gm, example_inputs)

    def ops_called(self) -> set[str]:
        return {str(n.target) for gm in self.graphs for n in gm.graph.nodes if n.op == "call_function"}


BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


def compile_and_compare(module, inputs, backend, tol):
    """Run ``module`` eagerly and compiled (fullgraph) from the same state; compare outputs, the
    gradients of every parameter and input, and every buffer. Returns the compile backend."""
    torch._dynamo.reset()
    eager = copy.deepcopy(module)
    recorder = GraphRecorder(backend)
    compiled = torch.compile(module, fullgraph=True, backend=recorder)
    x_c = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    x_e = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    y_c, y_e = compiled(*x_c), eager(*x_e)
    w = rand(*y_e.shape, dtype=y_e.dtype)
    (y_c * w).sum().backward()
    (y_e * w).sum().backward()
    assert rel_err(y_c, y_e) < tol
    for (name, p_c), p_e in zip(module.named_parameters(), eager.parameters()):
        assert (p_c.grad is None) == (p_e.grad is None), name
        if p_e.grad is not None and p_e.numel():
            assert rel_err(p_c.grad, p_e.grad) < tol, name
    for a, b in zip(x_c, x_e):
        if b.grad is not None:
            assert rel_err(a.grad, b.grad) < tol
    for (name, b_c), b_e in zip(module.named_buffers(), eager.buffers()):
        if b_e.numel():
            assert rel_err(b_c.double(), b_e.double()) < tol, name
    return recorder


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_lru_layer_matches_eager(backend):
    torch.manual_seed(0)
    layer = LRU(4, 20, scan="native")   # 20 states: padded to 32 inside the operator
    rec = compile_and_compare(layer, [rand(3, 37, 4, dtype=torch.float32)], backend, tol=1e-4)
    assert len(rec.graphs) == 1
    assert "shrinkssm.lru_forward.default" in rec.ops_called()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_selective_layer_matches_eager(backend):
    # training mode: the surrogate statistics are updated inside the compiled graph as well
    torch.manual_seed(0)
    layer = SelectiveSSM(4, 8, scan="native")
    layer.train()
    rec = compile_and_compare(layer, [rand(2, 19, 4, dtype=torch.float32)], backend, tol=1e-4)
    assert "shrinkssm.selective_forward.default" in rec.ops_called()
    assert int(layer.sur_steps) == 1


def test_compiled_wide_lru_uses_scan_operator():
    # H_in + H_out above FUSED_MAX_WIDTH: torch GEMMs around the native scan operator
    torch.manual_seed(0)
    layer = LRU(96, 5, scan="native").double()
    rec = compile_and_compare(layer, [rand(2, 6, 96)], "aot_eager", tol=1e-10)
    assert "shrinkssm.scan_forward.default" in rec.ops_called()


# ------------------------------------------------------------------------------------------------
# torch.export for inference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["lru", "selective"])
def test_exported_model_matches_eager(layer):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, d_model=8, d_state=12, layer=layer, scan="native")
    model = SSMModel(cfg, d_input=3, d_output=5).eval()
    x = rand(4, 30, 3, dtype=torch.float32)
    with torch.no_grad():
        want = model(x)
        program = torch.export.export(model, (x,))
        got = program.module()(x)
        other = rand(4, 30, 3, dtype=torch.float32)          # not the tracing input
        torch.testing.assert_close(program.module()(other), model(other), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    op = "lru_forward" if layer == "lru" else "selective_forward"
    assert f"torch.ops.shrinkssm.{op}" in program.graph_module.code


# ------------------------------------------------------------------------------------------------
# Eager calls: straight to the implementation, with the same results as through the dispatcher
# ------------------------------------------------------------------------------------------------


def lru_case():
    from shrinkssm.ops import lru_recurrence

    g = torch.Generator().manual_seed(3)
    N, H = 21, 3
    lam = torch.polar(0.5 + 0.49 * torch.rand(N, generator=g, dtype=torch.float64),
                      6 * torch.rand(N, generator=g, dtype=torch.float64))
    cplx = dict(generator=g, dtype=torch.complex128)
    args = [torch.randn(2, 15, H, generator=g, dtype=torch.float64), lam, torch.randn(N, H, **cplx),
            torch.randn(2, N, **cplx), torch.randn(2, N, **cplx)]  # u, lam, B, C (H_out = 2), h0
    leaves = [a.requires_grad_() for a in args]

    def run(backend):
        u, lam, B, C, h0 = leaves
        y, h = lru_recurrence(u, lam, B, C, h0, backend=backend, return_state=True)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        loss = (y * w).sum() + (h * h0.conj()).real.sum()
        return [y, h, *torch.autograd.grad(loss, leaves)]

    return run


def selective_case():
    from shrinkssm.ops.selective_scan import selective_scan

    u, dl, alr, ali, Br, Bi, Cr, Ci, bchan, boff, _kidx, _K = selective_inputs("complex", grad=True)
    layout = ScanLayout(5, lanes_for(torch.float64), bchan, boff)
    alpha, B, C = torch.complex(alr, ali), torch.complex(Br, Bi), torch.complex(Cr, Ci)
    leaves = [u, dl, alpha.detach().requires_grad_(), B.detach().requires_grad_(), C.detach().requires_grad_()]

    def run(backend):
        y, decay = selective_scan(*leaves, layout, backend=backend, return_decay=True)
        return [y, decay, *torch.autograd.grad((y ** 2).sum(), leaves)]

    return run


def scan_case():
    from shrinkssm.ops import scan

    g = torch.Generator().manual_seed(4)
    lam = torch.polar(0.9 * torch.rand(6, generator=g, dtype=torch.float64),
                      torch.rand(6, generator=g, dtype=torch.float64))
    leaves = [lam.requires_grad_(), torch.randn(3, 8, 6, generator=g, dtype=torch.complex128).requires_grad_(),
              torch.randn(3, 6, generator=g, dtype=torch.complex128).requires_grad_()]

    def run(backend):
        h = scan(*leaves, backend=backend)
        return [h, *torch.autograd.grad((h.abs() ** 2).sum(), leaves)]

    return run


@pytest.mark.parametrize("case", [lru_case, selective_case, scan_case])
def test_eager_direct_path_equals_dispatcher_and_reference(case, monkeypatch):
    from shrinkssm.ops import _op_dispatch

    run = case()
    direct = run("native")
    reference = run("ref")
    monkeypatch.setattr(_op_dispatch, "direct", lambda args: False)   # every call through the dispatcher
    dispatched = run("native")
    for a, b, r in zip(direct, dispatched, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)               # the same kernels, bit for bit
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_eager_calls_bypass_the_dispatcher(monkeypatch):
    import dataclasses

    from shrinkssm.ops import _native_backend

    def refuse(*args):
        raise AssertionError("eager call went through the dispatcher")

    for name in ("LRU_FORWARD", "LRU_BACKWARD"):
        monkeypatch.setattr(_native_backend, name, dataclasses.replace(getattr(_native_backend, name), op=refuse))
    layer = LRU(3, 10, scan="native")
    layer(torch.randn(2, 5, 3)).sum().backward()
    assert layer.B_re.grad is not None
    with torch.no_grad():
        layer(torch.randn(2, 5, 3))
    tracing = torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True)
    with pytest.raises(AssertionError, match="dispatcher"), tracing:
        layer(torch.randn(2, 5, 3))                                    # tracing: the operator is used


def test_second_derivatives_are_refused_on_both_paths(monkeypatch):
    from shrinkssm.ops import _op_dispatch

    layer = LRU(2, 6, scan="native").double()
    u = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    for dispatched in (False, True):
        if dispatched:
            monkeypatch.setattr(_op_dispatch, "direct", lambda args: False)
        (g,) = torch.autograd.grad(layer(u).sum(), u, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiable once|no autograd formula"):
            g.sum().backward()
    monkeypatch.undo()   # a second derivative that does not pass through the kernels is fine:
    (g,) = torch.autograd.grad(layer(u).sum(), u, create_graph=True)
    (gD,) = torch.autograd.grad((g * u).sum(), layer.D, allow_unused=True)   # via the skip term only
    torch.testing.assert_close(gD, u.sum((0, 1)))


def test_operators_refuse_inputs_the_kernels_cannot_take():
    args = lru_inputs(torch.float32, True, grad=False)
    bad_np = [a[..., :-1] if a is not None and a.shape[-1] == 16 else a for a in args]  # Np = 15
    with pytest.raises(ValueError, match="lru_forward: need Np a multiple of 16"):
        OPS.lru_forward(*bad_np, 4, True)
    mixed = [args[0], *(a.double() for a in args[1:7]), None, None]
    with pytest.raises(ValueError, match=r"lru_forward: lr must be a CPU torch.float32 tensor of shape \(16,\)"):
        OPS.lru_forward(*mixed, 4, True)
    with pytest.raises(ValueError, match="lru_forward: tensors must be float32 or float64"):
        OPS.lru_forward(args[0].to(torch.int64), *args[1:], 4, True)
    y, hlr, hli, ckr, cki = OPS.lru_forward(*args, 4, True)
    with pytest.raises(ValueError, match="lru_backward: ckr must be"):
        OPS.lru_backward(y, None, None, *args[:7], ckr[:, :-1], cki, 4, False)
    with pytest.raises(ValueError, match=r"scan_forward: h0 must be .* shape \(2, 3, 2\)"):
        OPS.scan_forward(torch.zeros(3, 2), torch.zeros(2, 5, 3, 2), torch.zeros(2, 4, 2))
    sel = selective_inputs("shared", grad=False)
    with pytest.raises(ValueError, match="selective_forward: Br must be"):
        OPS.selective_forward(*sel[:4], sel[4][..., :-1], *sel[5:], 4, True, False)
    with pytest.raises(ValueError, match="imaginary parts"):
        OPS.selective_forward(sel[0], sel[1], sel[2], sel[2], *sel[4:], 4, True, False)


def test_saved_export_runs_in_a_fresh_process_after_importing_shrinkssm_ops(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=1, d_model=8, d_state=12, layer="selective", scan="native")
    model = SSMModel(cfg, d_input=3, d_output=5).eval()
    x = rand(2, 20, 3, dtype=torch.float32)
    with torch.no_grad():
        torch.export.save(torch.export.export(model, (x,)), tmp_path / "model.pt2")
        torch.save({"x": x, "y": model(x)}, tmp_path / "io.pt")
    code = (
        "import sys, torch, shrinkssm.ops\n"
        f"program = torch.export.load({str(tmp_path / 'model.pt2')!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "torch.testing.assert_close(program.module()(io['x']), io['y'], rtol=1e-5, atol=1e-6)\n"
        "print('same outputs')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "same outputs" in done.stdout, done.stderr[-2000:]
