"""The SSD scan (shrinkssm.ops.ssd_scan): the chunked form against the sequential reference, the
reference against a dense brute-force solve and against gradcheck, and the stability of the
segment sums."""

from __future__ import annotations

import pytest
import torch

from shrinkssm.ops.ssd_scan import ssd_scan, ssd_scan_chunked, ssd_scan_ref


def _inputs(b=2, L=13, H=4, P=3, G=2, N=5, dtype=torch.float64, seed=0, init=False, grad=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = r(b, L, H, P)
    dt = torch.nn.functional.softplus(r(b, L, H))
    A = -torch.exp(r(H))
    B, C = r(b, L, G, N), r(b, L, G, N)
    S0 = r(b, H, P, N) if init else None
    ts = [x, dt, A, B, C] + ([S0] if init else [])
    if grad:
        for t in ts:
            t.requires_grad_(True)
    return ts


def _brute_force(x, dt, A, B, C, S0=None):
    """y[t] from the closed form: y[t] = sum_{s<=t} (prod_{s<u<=t} a[u]) (C[t].B[s]) dt[s] x[s]
    + (prod_{u<=t} a[u]) S0 C[t], with the products computed directly (no recurrence)."""
    b, L, H, P = x.shape
    G = B.shape[2]
    rep = H // G
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    a = torch.exp(dt * A)                                                   # (b, L, H)
    y = torch.zeros_like(x)
    for t in range(L):
        for s in range(t + 1):
            decay = a[:, s + 1:t + 1].prod(1)                               # (b, H)
            cb = (Ch[:, t] * Bh[:, s]).sum(-1)                              # (b, H)
            y[:, t] += (decay * cb * dt[:, s])[..., None] * x[:, s]
        if S0 is not None:
            y[:, t] += a[:, :t + 1].prod(1)[..., None] * torch.einsum("bhpn,bhn->bhp", S0, Ch[:, t])
    return y


@pytest.mark.parametrize("G", [1, 2, 4])
def test_reference_matches_brute_force_closed_form(G):
    x, dt, A, B, C, S0 = _inputs(L=7, G=G, init=True)
    y = ssd_scan_ref(x, dt, A, B, C, S0)
    torch.testing.assert_close(y, _brute_force(x, dt, A, B, C, S0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 13, 16])
@pytest.mark.parametrize("init", [False, True])
def test_chunked_equals_reference_values_final_state_and_gradients(G, chunk, init):
    ts = _inputs(L=13, G=G, init=init, grad=True, seed=chunk)
    y_ref, S_ref = ssd_scan_ref(*ts, return_final_state=True)
    y_ch, S_ch = ssd_scan_chunked(*ts[:5], ts[5] if init else None, True, chunk_size=chunk)
    torch.testing.assert_close(y_ch, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(S_ch, S_ref, rtol=1e-11, atol=1e-11)
    g = torch.Generator().manual_seed(1)
    wy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    wS = torch.randn(S_ref.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((y_ref * wy).sum() + (S_ref * wS).sum(), ts)
    g_ch = torch.autograd.grad((y_ch * wy).sum() + (S_ch * wS).sum(), ts)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "S0"], g_ch, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


def test_reference_gradcheck_float64():
    ts = _inputs(b=1, L=4, H=2, P=2, G=1, N=2, init=True, grad=True)
    assert torch.autograd.gradcheck(lambda *a: ssd_scan_ref(*a, return_final_state=True), ts)


def test_chunked_gradcheck_float64():
    ts = _inputs(b=1, L=5, H=2, P=2, G=2, N=2, init=True, grad=True, seed=3)
    assert torch.autograd.gradcheck(
        lambda *a: ssd_scan_chunked(*a, return_final_state=True, chunk_size=2), ts)


def test_chunked_float32_matches_float64_reference():
    ts64 = _inputs(b=2, L=100, H=4, P=8, G=2, N=16)
    ts32 = [t.float() for t in ts64]
    y = ssd_scan(*ts32, chunk_size=32)
    ref = ssd_scan_ref(*ts64)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


def test_split_sequence_with_final_state_continues_exactly():
    """Scanning [0, k) and then [k, L) from the returned state equals one scan of [0, L)."""
    x, dt, A, B, C = _inputs(L=20)
    y_all = ssd_scan_chunked(x, dt, A, B, C, chunk_size=6)
    y1, S = ssd_scan_chunked(x[:, :9], dt[:, :9], A, B[:, :9], C[:, :9], return_final_state=True,
                             chunk_size=6)
    y2 = ssd_scan_chunked(x[:, 9:], dt[:, 9:], A, B[:, 9:], C[:, 9:], S, chunk_size=6)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-12, atol=1e-12)


def test_zero_step_leaves_the_state_unchanged():
    x, dt, A, B, C, S0 = _inputs(L=6, init=True)
    dt = torch.zeros_like(dt)
    y, S = ssd_scan_chunked(x, dt, A, B, C, S0, True, chunk_size=4)
    torch.testing.assert_close(S, S0, rtol=0, atol=0)
    Ch = C.repeat_interleave(2, 2)
    torch.testing.assert_close(y, torch.einsum("bhpn,blhn->blhp", S0, Ch), rtol=1e-12, atol=1e-12)


def test_strong_decay_over_long_sequence_stays_finite_and_exact():
    """Log-decays summing to about -1e5 over the sequence: no overflow, no NaN, and the values
    still match the reference (float32 chunked against float64 reference)."""
    x, dt, A, B, C = _inputs(b=1, L=400, H=2, P=2, G=1, N=3)
    A = torch.tensor([-50.0, -0.01], dtype=torch.float64)
    dt = dt * 5
    ts = [x, dt, A, B, C]
    y, S = ssd_scan_chunked(*[t.float() for t in ts], return_final_state=True, chunk_size=64)
    assert torch.isfinite(y).all() and torch.isfinite(S).all()
    ref = ssd_scan_ref(*ts)
    assert (dt * A).sum(1).min() < -1e4
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    # gradients finite too
    ts32 = [t.float().requires_grad_(True) for t in ts]
    ssd_scan_chunked(*ts32, chunk_size=64).square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in ts32)


def test_bad_input_is_named():
    x, dt, A, B, C = _inputs(H=4, G=3, N=2)
    with pytest.raises(ValueError, match="multiple of the groups"):
        ssd_scan(x, dt, A, B, C)
    x, dt, A, B, C = _inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        ssd_scan(x, dt, A, B, C, backend="native")
    with pytest.raises(ValueError, match="dt must be"):
        ssd_scan(x, dt[:, :, :2], A, B, C)
