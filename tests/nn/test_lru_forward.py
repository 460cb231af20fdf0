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
