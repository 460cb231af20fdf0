"""The SSD scan (shrinkssm.ops.ssd_scan): the chunked form against the sequential reference, the
reference against a dense brute-force solve and against gradcheck, and the stability of the
segment sums."""

from __future__ import annotations

import importlib

import pytest
import torch

from shrinkssm.ops.ssd_scan import (auto_chunk_size, resolve_chunk_size, ssd_scan, ssd_scan_chunked,
                                    ssd_scan_ref)


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
        ssd_scan(x, dt, A, B, C, backend="parallel")
    with pytest.raises(ValueError, match="dt must be"):
        ssd_scan(x, dt[:, :, :2], A, B, C)


# ------------------------------------------------------------------------------------------------
# chunk_size="auto", the written-out within-chunk backward, the solve between chunks
# ------------------------------------------------------------------------------------------------

_ssd = importlib.import_module("shrinkssm.ops.ssd_scan")


@pytest.mark.parametrize("L,H,P,G,N", [(13, 4, 3, 2, 5), (50, 4, 2, 1, 3), (100, 2, 8, 1, 16)])
def test_auto_chunk_equals_explicit_chunk_and_reference(L, H, P, G, N):
    ts = _inputs(L=L, H=H, P=P, G=G, N=N, init=True, grad=True, seed=L)
    Q = auto_chunk_size(L, H, P, G, N)
    assert 1 <= Q <= L
    y_ref, S_ref = ssd_scan_ref(*ts, return_final_state=True)
    outs = {}
    for chunk in ("auto", Q, 7):
        y, S = ssd_scan(*ts, return_final_state=True, chunk_size=chunk)
        torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(S, S_ref, rtol=1e-11, atol=1e-11)
        outs[chunk] = (y, torch.autograd.grad((y * y_ref.detach()).sum() + S.square().sum(), ts))
    torch.testing.assert_close(outs["auto"][0], outs[Q][0], rtol=0, atol=0)  # "auto" is that Q
    g_ref = torch.autograd.grad((y_ref * y_ref.detach()).sum() + S_ref.square().sum(), ts)
    for a, b, c in zip(outs["auto"][1], outs[7][1], g_ref):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-10)


def test_auto_chunk_size_rule():
    """In range, capped at L, padding under one chunk per chunk, growing with P N and with L, and
    the old default off the CPU."""
    for L in (1, 2, 7, 100, 784, 2048, 16384):
        for P, N in ((8, 32), (8, 256), (64, 64), (64, 256)):
            Q = auto_chunk_size(L, 4, P, 1, N)
            nc = -(-L // Q)
            assert 1 <= Q <= L and nc * Q - L < nc
            assert min(L, 16) / 2 <= Q <= 256                 # the range, up to evening out
            assert auto_chunk_size(L, 4, P, 1, N, device_type="cuda") == min(64, L)
    assert auto_chunk_size(784, 4, 8, 1, 256) == 32 == auto_chunk_size(784, 4, 8, 1, 32)
    assert auto_chunk_size(784, 2, 64, 1, 256) > auto_chunk_size(784, 2, 64, 1, 64) > 32
    assert auto_chunk_size(4096, 4, 8, 1, 64) > auto_chunk_size(784, 4, 8, 1, 64)
    assert auto_chunk_size(256, 4, 8, 1, 64) == 32                   # short sequences: not shorter
    assert resolve_chunk_size(100, 10, 4, 8, 1, 64) == 10            # explicit: itself, capped at L
    assert resolve_chunk_size("auto", 784, 4, 8, 1, 64) == 32


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "fast", "AUTO", None])
def test_invalid_chunk_size_names_the_key_and_the_choices(bad):
    x, dt, A, B, C = _inputs()
    with pytest.raises(ValueError, match=r"chunk_size must be a positive integer or 'auto'"):
        ssd_scan(x, dt, A, B, C, chunk_size=bad)


def test_chunked_gradcheck_float64_heads_sharing_a_group_and_padding():
    """Four heads of one group (the within-chunk backward sums C B^T's gradient over them) and a
    length the chunk does not divide."""
    ts = _inputs(b=1, L=7, H=4, P=2, G=1, N=3, init=True, grad=True, seed=5)
    assert torch.autograd.gradcheck(
        lambda *a: ssd_scan_chunked(*a, return_final_state=True, chunk_size=3), ts)


def test_prefix_scan_path_equals_reference(monkeypatch):
    """More boundaries than DENSE_BOUNDARY_MAX take the prefix scan: same values and gradients."""
    monkeypatch.setattr(_ssd, "DENSE_BOUNDARY_MAX", 3)
    ts = _inputs(L=13, G=2, init=True, grad=True, seed=9)
    y_ref, S_ref = ssd_scan_ref(*ts, return_final_state=True)
    y, S = ssd_scan_chunked(*ts[:5], ts[5], True, chunk_size=2)          # 7 chunks, 8 boundaries
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(S, S_ref, rtol=1e-11, atol=1e-11)
    g = torch.autograd.grad(y.sum() + S.sum(), ts)
    g_ref = torch.autograd.grad(y_ref.sum() + S_ref.sum(), ts)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_dense_boundary_solve_is_exact_after_huge_early_decays():
    """Boundary log-decays of -1e5 early and -0.01 later: the dense solve (float32) sums each
    segment itself, so the late decays keep full relative accuracy against a sequential float64
    loop (a difference of running sums near -1e5 would lose about 1e-2 of them in float32)."""
    g = torch.Generator().manual_seed(0)
    K, F = 40, 6
    l = torch.full((1, 2, K), -0.01, dtype=torch.float64)
    l[:, :, 1:5] = -1e5
    l[:, 1, 20:] = -0.3
    st = torch.randn(1, 2, K, F, generator=g, dtype=torch.float64)
    ref, S = [], torch.zeros(1, 2, F, dtype=torch.float64)
    for k in range(K):
        S = torch.exp(l[:, :, k, None]) * S + st[:, :, k]
        ref.append(S)
    ref = torch.stack(ref, 2)
    dense = _ssd._chunk_boundaries(l.float(), st.float()).double()
    scan = _ssd._prefix_scan(l.float(), st.float()).double()
    torch.testing.assert_close(dense, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scan, ref, rtol=1e-5, atol=1e-5)
