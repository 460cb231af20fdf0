"""The LRU's forward on the real arrays of the fused kernel equals the complex formulation."""

import pytest
import torch

from shrinkssm.nn import LRU
from shrinkssm.ops import lru_recurrence, native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="native extension not built")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [13, 16, 40])
def test_forward_on_kernel_arrays_equals_lru_recurrence_with_gradients(dtype, n):
    torch.manual_seed(0)
    layer = LRU(6, n).to(dtype)
    assert layer._use_real_kernel(torch.zeros(1, 1, 6, dtype=dtype))
    u = torch.randn(3, 70, 6, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 70, 6, dtype=dtype)
    params = list(layer.parameters())

    assert all(t.is_contiguous() for t in layer._kernel_arrays())   # what the kernel reads

    def grads(y):
        return torch.autograd.grad(y, [u, *params], g, allow_unused=True)
    fast = layer(u, skip=False)
    ref = lru_recurrence(u, layer.eigenvalues(), layer.input_matrix(), layer.output_matrix(),
                         backend="native")
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    assert torch.allclose(fast, ref, **tol)
    for a, b in zip(grads(fast), grads(ref)):
        if b is None:                                        # D: no skip term here
            assert a is None
            continue
        assert torch.allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, b.abs().max().item()))
    # the skip term and the ref backend agree as well
    y_ref = lru_recurrence(u, layer.eigenvalues(), layer.input_matrix(), layer.output_matrix(),
                           backend="ref") + u * layer.D
    assert torch.allclose(layer(u), y_ref, **tol)


def test_state_and_other_backends_take_the_general_path():
    torch.manual_seed(1)
    layer = LRU(4, 9, scan="ref").double()
    assert not layer._use_real_kernel(torch.zeros(1, 1, 4, dtype=torch.float64))
    layer.scan = "native"
    assert not layer._use_real_kernel(torch.zeros(1, 1, 4, dtype=torch.float32))  # dtype mismatch
    u = torch.randn(2, 11, 4, dtype=torch.float64)
    y, h = layer(u, return_state=True)
    y2 = layer(u[:, 6:], state=layer(u[:, :6], return_state=True)[1])
    assert torch.allclose(y[:, 6:], y2, atol=1e-12) and h.shape == (2, 9)


def _by_complex_torch(nu, theta, gam, b_re, b_im, c_re, c_im):
    lam = torch.exp(torch.complex(-torch.exp(nu), torch.exp(theta)))
    b = torch.complex(b_re, b_im) * torch.exp(gam)[:, None]
    return lam.real, lam.imag, b.real.T, b.imag.T, c_re, c_im


def _raw_parameters(n, h_in=3, h_out=4, dtype=torch.float64):
    torch.manual_seed(1)
    raw = [torch.randn(n, dtype=dtype) * 0.5 for _ in range(3)]
    raw += [torch.randn(n, h_in, dtype=dtype) for _ in range(2)]
    raw += [torch.randn(h_out, n, dtype=dtype) for _ in range(2)]
    return [t.requires_grad_() for t in raw]


def _weighted_grads(outputs, n, weights, raw):
    return torch.autograd.grad(sum((o[..., :n] * w).sum() for o, w in zip(outputs, weights)), raw)


@pytest.mark.parametrize("n, pad", [(5, 11), (16, 0)])
def test_kernel_arrays_in_c_are_the_map_and_its_gradient(n, pad):
    """The C parameter map and its backward against gradcheck (float64) and against autograd
    through the map written in complex torch operations; the padding stays zero."""
    from shrinkssm.nn.lru import _KernelArrays
    from shrinkssm.ops import _native_backend
    raw = _raw_parameters(n)
    assert _native_backend.lru_params_available(tuple(raw))
    assert torch.autograd.gradcheck(lambda *p: _KernelArrays.apply(*p, pad), raw)
    fast, ref = _KernelArrays.apply(*raw, pad), _by_complex_torch(*raw)
    for f, r in zip(fast, ref):
        assert torch.equal(f[..., n:], torch.zeros_like(f[..., n:]))
        assert torch.allclose(f[..., :n], r, rtol=1e-14, atol=1e-15)
    weights = [torch.randn_like(r) for r in ref]
    for a, b in zip(_weighted_grads(fast, n, weights, raw), _weighted_grads(ref, n, weights, raw)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    # float32 arrays are the float64 map rounded (the C code computes in double, rounds once)
    fast32 = _KernelArrays.apply(*(t.detach().float() for t in raw), pad)
    for f, r in zip(fast32, fast):
        assert torch.allclose(f.double(), r.detach(), rtol=1e-6, atol=1e-7)


def test_layer_kernel_arrays_are_the_same_with_and_without_the_c_map(monkeypatch):
    from shrinkssm.ops import _native_backend
    torch.manual_seed(3)
    layer = LRU(5, 11).double()
    weights = [torch.randn_like(t) for t in layer._kernel_arrays()]

    def run():
        out = layer._kernel_arrays()
        return out, torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)),
                                        [p for name, p in layer.named_parameters() if name != "D"])
    c_out, c_grads = run()
    monkeypatch.setattr(_native_backend, "lru_params_available", lambda tensors: False)
    t_out, t_grads = run()
    for a, b in zip((*c_out, *c_grads), (*t_out, *t_grads)):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-14)


def test_fixed_gamma_gets_no_gradient_and_the_rest_still_do():
    torch.manual_seed(2)
    layer = LRU(4, 9, train_gamma=False)
    u = torch.randn(2, 30, 4)
    layer(u).square().sum().backward()
    assert not layer.gamma_log.requires_grad and layer.gamma_log.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
