"""Tests of shrinkssm.ops.block: the fused block tail and the native batch norm against torch."""

import pytest
import torch
import torch.nn.functional as F

from shrinkssm.ops import block
from shrinkssm.ops.block import (
    FUSED_BLOCK_MAX_WIDTH,
    batch_norm_fork,
    batch_norm_rows,
    encode_norm_fork,
    fused_block_available,
    glu_block,
    glu_block_mean,
    glu_block_ref,
    linear,
)

needs_kernel = pytest.mark.skipif(not fused_block_available(), reason="native extension not built")


def _isas():
    return block._ext.available_isas() if block._ext is not None else []


@pytest.fixture
def each_isa(request):
    """Run under one instruction-set path, restoring the default afterwards."""
    before = block._ext.isa()
    block._ext.set_isa(request.param)
    yield request.param
    block._ext.set_isa(before)


def _tail_inputs(shape, h, dtype, skip=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g, dtype=dtype)).requires_grad_()
    x, y, u = rnd(*shape, h), rnd(*shape, h, scale=2.0), rnd(*shape, h)
    D = rnd(h) if skip else None
    return [x, y, u if skip else None, D, rnd(2 * h, h, scale=h**-0.5), rnd(2 * h)]


def _value_and_grads(fn, inputs, gout):
    out = fn(*inputs)
    leaves = [t for t in inputs if t is not None]
    return out, torch.autograd.grad(out, leaves, gout)


@needs_kernel
@pytest.mark.parametrize("h", [8, 16, 5, FUSED_BLOCK_MAX_WIDTH])
@pytest.mark.parametrize("skip", [True, False])
def test_glu_block_equals_the_torch_formulation_in_float64(h, skip):
    # 3 x 37 positions: not a multiple of the kernel's tile of 32 positions
    inputs = _tail_inputs((3, 37), h, torch.float64, skip)
    gout = torch.randn(3, 37, h, dtype=torch.float64)
    out, grads = _value_and_grads(glu_block, inputs, gout)
    ref, ref_grads = _value_and_grads(glu_block_ref, inputs, gout)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-11, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
@pytest.mark.parametrize("h, shape", [(8, (4, 50)), (12, (4, 50)), (16, (3, 37)), (8, (1, 3))])
def test_glu_block_float32_on_every_path_matches_float64_torch(each_isa, h, shape):
    # 16: two-vector rows on AVX2 / SSE2; (3, 37) and (1, 3): tiles whose position count is not a
    # multiple of four (the remainder loop of the input gradient)
    inputs = _tail_inputs(shape, h, torch.float32)
    gout = torch.randn(*shape, h)
    out, grads = _value_and_grads(glu_block, inputs, gout)
    inputs64 = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    ref, ref_grads = _value_and_grads(glu_block_ref, inputs64, gout.double())
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=2e-6)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=2e-5 * want.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
def test_float32_gelu_and_sigmoid_hold_at_extreme_arguments(each_isa):
    # GELU across [-30, 30] (erf saturates, exp(-z^2/2) underflows) and gates far into both
    # tails of the sigmoid (the kernel's exp is clamped at +-87 / 88)
    h = 8
    y = torch.linspace(-30, 30, 64 * h).reshape(64, h)
    w = torch.zeros(2 * h, h)
    w[:h] = torch.eye(h)                                   # a = g
    bias = torch.cat([torch.zeros(h), torch.linspace(-200, 200, h)])   # c = W_c g + bias_c
    w[h:] = 0.5 * torch.eye(h)
    x = torch.zeros_like(y).requires_grad_()
    inputs = [x, y.requires_grad_(), None, None, w.requires_grad_(), bias.requires_grad_()]
    gout = torch.ones_like(y)
    out, grads = _value_and_grads(glu_block, inputs, gout)
    ref, ref_grads = _value_and_grads(
        glu_block_ref, [x.detach().double().requires_grad_(), y.detach().double().requires_grad_(), None, None,
                        w.detach().double().requires_grad_(), bias.detach().double().requires_grad_()],
        gout.double())
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert torch.allclose(out.double(), ref, rtol=2e-6, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("skip", [True, False])
def test_glu_block_gradcheck_float64(skip):
    inputs = _tail_inputs((2, 35), 8, torch.float64, skip)
    assert torch.autograd.gradcheck(lambda *t: glu_block(*t), tuple(inputs), eps=1e-6, atol=1e-6)


@needs_kernel
@needs_kernel
def test_glu_block_and_batch_norm_threads_split_positions_without_changing_results():
    # 128 x 2000 x 16 values: above the kernels' threshold for using threads (4e6)
    inputs = _tail_inputs((128, 2000), 16, torch.float32)
    gout = torch.randn(128, 2000, 16)
    x = inputs[0].detach().reshape(-1, 16).requires_grad_()
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            tail = _value_and_grads(glu_block, inputs, gout)
            norm = _value_and_grads(lambda *t: batch_norm_rows(*t, None, None), [x, w, b],
                                    gout.reshape(-1, 16))
            results.append((tail, norm))
    finally:
        torch.set_num_threads(threads)
    (tail1, norm1), (tail2, norm2) = results
    assert torch.equal(tail1[0], tail2[0]) and torch.equal(tail1[1][1], tail2[1][1])  # per position
    for a, c in zip(tail1[1] + norm1[1], tail2[1] + norm2[1]):   # sums over positions: rounding
        assert torch.allclose(a, c, rtol=1e-4, atol=1e-4 * c.abs().max().item())
    assert torch.allclose(norm1[0], norm2[0], rtol=1e-5, atol=1e-5)


def test_glu_block_falls_back_to_torch_where_the_kernel_does_not_apply():
    h = FUSED_BLOCK_MAX_WIDTH + 1                           # wider than the kernel takes
    inputs = _tail_inputs((2, 9), h, torch.float64)
    assert torch.equal(glu_block(*inputs), glu_block_ref(*inputs))
    mixed = _tail_inputs((2, 9), 8, torch.float64)
    mixed[1] = mixed[1].detach().float()                    # mixed dtypes: torch promotes
    assert torch.equal(glu_block(*mixed), glu_block_ref(*mixed))


@needs_kernel
@pytest.mark.parametrize("m, h", [(39, 8), (1000, 5), (2, 16)])
def test_batch_norm_rows_equals_torch_batch_norm_in_float64(m, h):
    torch.manual_seed(0)
    x = (3 * torch.randn(m, h, dtype=torch.float64) + 5).requires_grad_()
    w = torch.randn(h, dtype=torch.float64, requires_grad=True)
    b = torch.randn(h, dtype=torch.float64, requires_grad=True)
    stats = [torch.randn(h, dtype=torch.float64), torch.rand(h, dtype=torch.float64)]
    ref_stats = [s.clone() for s in stats]
    gv = torch.randn(m, h, dtype=torch.float64)
    out = batch_norm_rows(x, w, b, *stats, 0.1, 1e-5)
    grads = torch.autograd.grad(out, [x, w, b], gv)
    ref = F.batch_norm(x, *ref_stats, w, b, True, 0.1, 1e-5)
    ref_grads = torch.autograd.grad(ref, [x, w, b], gv)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-11)
    for got, want in zip(stats, ref_stats):                 # running mean and unbiased variance
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@needs_kernel
def test_batch_norm_rows_gradcheck_float64():
    torch.manual_seed(1)
    x = torch.randn(37, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: batch_norm_rows(*t, None, None), (x, w, b), eps=1e-6,
                                    atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
def test_batch_norm_rows_float32_is_accurate_far_from_zero_mean(each_isa):
    # mean 1000, std 0.01: a one-pass sum of squares in float32 would lose every digit
    torch.manual_seed(2)
    x64 = 1000 + 0.01 * torch.randn(5000, 8, dtype=torch.float64)
    x = x64.float().requires_grad_()
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    gv = torch.randn(5000, 8)
    out = batch_norm_rows(x, w, b, None, None)
    gx, = torch.autograd.grad(out, [x], gv)
    x_ref = x.detach().double().requires_grad_()
    ref = F.batch_norm(x_ref, None, None, w.double(), b.double(), True, 0.1, 1e-5)
    gx_ref, = torch.autograd.grad(ref, [x_ref], gv.double())
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.allclose(gx.double(), gx_ref, rtol=1e-3, atol=1e-3 * gx_ref.abs().max().item())


@needs_kernel
@pytest.mark.parametrize("used", [(1, 1, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1)])
def test_batch_norm_fork_sums_its_consumers_gradients_like_autograd(used):
    torch.manual_seed(3)
    x = torch.randn(70, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    g = [torch.randn(70, 8, dtype=torch.float64) for _ in range(3)]

    def loss(outs):
        return sum((o * gi).sum() for o, gi, u in zip(outs, g, used) if u)
    stats, ref_stats = [torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)], None
    ref_stats = [s.clone() for s in stats]
    got = torch.autograd.grad(loss(batch_norm_fork(x, w, b, *stats)), [x, w, b], allow_unused=True)
    v = F.batch_norm(x, *ref_stats, w, b, True, 0.1, 1e-5)
    want = torch.autograd.grad(loss((v, v, x)), [x, w, b], allow_unused=True)
    for a, c in zip(got, want):
        if c is None:                                       # w, b unused when only x is
            assert a is None or torch.equal(a, torch.zeros_like(a))
        else:
            assert torch.allclose(a, c, rtol=1e-11, atol=1e-12)
    assert all(torch.allclose(s, r, rtol=1e-12) for s, r in zip(stats, ref_stats))


@pytest.mark.parametrize("d_in", [1, 3])
def test_linear_equals_torch_linear_with_gradients(d_in):
    torch.manual_seed(4)
    x = torch.randn(4, 33, d_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, d_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 33, 8, dtype=torch.float64)
    got = _value_and_grads(linear, [x, w, b], g)
    want = _value_and_grads(F.linear, [x, w, b], g)
    assert torch.allclose(got[0], want[0], rtol=1e-13, atol=1e-13)
    for a, c in zip(got[1], want[1]):
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("want_x_grad", [True, False])
def test_linear_one_input_kernel_in_float32_matches_float64_torch(want_x_grad):
    # more rows than one run of the kernel's float partial sums (256), so that the runs and their
    # double total are exercised; the float64 reference is independent of the kernel
    torch.manual_seed(5)
    x = torch.rand(3, 700, 1, requires_grad=want_x_grad)
    w, b = torch.randn(8, 1, requires_grad=True), torch.randn(8, requires_grad=True)
    g = torch.randn(3, 700, 8)
    leaves = [t for t in (x, w, b) if t.requires_grad]
    out = linear(x, w, b)
    grads = torch.autograd.grad(out, leaves, g)
    x64, w64, b64 = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, w, b))
    ref = F.linear(x64, w64, b64)
    ref_grads = torch.autograd.grad(ref, [t for t in (x64, w64, b64) if t.requires_grad], g.double())
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@needs_kernel
def test_batch_norm_rows_updates_running_statistics_as_an_inplace_op():
    x = torch.randn(40, 4, dtype=torch.float64)
    w, b = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    versions = rm._version, rv._version
    batch_norm_rows(x, w, b, rm, rv, 0.1, 1e-5)
    assert rm._version > versions[0] and rv._version > versions[1]
    assert torch.allclose(rm, 0.1 * x.mean(0)) and torch.allclose(rv, 0.9 + 0.1 * x.var(0))


def test_glu_block_refuses_a_skip_term_without_its_input():
    x, y, _, D, w, b = _tail_inputs((1, 3), 4, torch.float64)
    with pytest.raises(ValueError, match="skip term"):
        glu_block(x, y, None, D, w, b)


def _pooled_block(fork, tail, x, bn_w, bn_b, y_of, D, W, bias, pool_w):
    """norm -> (mixer stand-in) -> tail -> mean pooling over dim 1 -> a linear functional: the
    shape of a classifier's block, whose output gradient is a broadcast over positions."""
    v, v_skip, xr = fork(x, bn_w, bn_b)
    out = tail(xr, y_of(v), v_skip, D, W, bias)
    return ((out.sum(1) * (1.0 / out.shape[1])) * pool_w).sum()


def _pooled_inputs(b, L, h, dtype, seed=5):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0, shift=0.0):
        return (scale * torch.randn(*s, generator=g, dtype=dtype) + shift).requires_grad_()
    return [rnd(b, L, h, shift=0.5), rnd(h, shift=1.0), rnd(h), rnd(h), rnd(2 * h, h, scale=h**-0.5),
            rnd(2 * h), rnd(b, h)]


def _ref_fork(x, w, b):
    v = F.batch_norm(x.reshape(-1, x.shape[-1]), None, None, w, b, True, 0.1, 1e-5).view_as(x)
    return v, v, x


def _kernel_fork(x, w, b):
    return batch_norm_fork(x, w, b, None, None)


def _mixer(v):  # a stand-in for the mixer: elementwise, so the gradient of v is a full (B, L, H) array
    return torch.tanh(v) * 1.5


def test_row_broadcast_recognises_only_broadcasts_over_dimension_one():
    rows = torch.randn(4, 8)
    assert torch.equal(block._row_broadcast(rows[:, None, :].expand(4, 30, 8)), rows)
    assert block._row_broadcast(rows[:, None, :].expand(4, 30, 8).contiguous()) is None
    assert block._row_broadcast(torch.randn(4, 30, 8)) is None
    assert block._row_broadcast(rows.t()[:, None, :].expand(8, 30, 4)) is None   # rows not contiguous
    assert block._row_broadcast(rows[:, None, :]) is None                         # L = 1: nothing to save
    assert block._row_broadcast(rows.expand(3, 4, 8)) is None                     # broadcast over dim 0


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
@pytest.mark.parametrize("b, L, h", [(3, 37, 8), (2, 70, 16), (4, 5, 5)])
def test_pooled_block_gradients_read_per_row_match_float64_torch(each_isa, b, L, h):
    # the output gradient arrives as a broadcast over L: the tail and the batch norm read it per
    # batch row; L = 37, 70: batch rows change inside the kernel's tiles of 32 positions
    inputs = _pooled_inputs(b, L, h, torch.float32)
    x, bn_w, bn_b, D, W, bias, pool_w = inputs
    loss = _pooled_block(_kernel_fork, glu_block, x, bn_w, bn_b, _mixer, D, W, bias, pool_w)
    got = torch.autograd.grad(loss, inputs)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    x, bn_w, bn_b, D, W, bias, pool_w = inputs64
    ref = _pooled_block(_ref_fork, glu_block_ref, x, bn_w, bn_b, _mixer, D, W, bias, pool_w)
    want = torch.autograd.grad(ref, inputs64)
    assert abs(loss.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    for a, c in zip(got, want):
        assert torch.allclose(a.double(), c, rtol=1e-4, atol=2e-5 * c.abs().max().item())


@needs_kernel
def test_pooled_block_gradients_per_row_equal_those_of_the_materialised_gradient(monkeypatch):
    # the per-row reading is the same arithmetic as reading the copied (M, H) gradient: bitwise
    inputs = _pooled_inputs(3, 45, 8, torch.float32, seed=7)

    def grads():
        x, bn_w, bn_b, D, W, bias, pool_w = inputs
        return torch.autograd.grad(
            _pooled_block(_kernel_fork, glu_block, x, bn_w, bn_b, _mixer, D, W, bias, pool_w), inputs)
    calls = []
    real = block._row_broadcast
    monkeypatch.setattr(block, "_row_broadcast", lambda g: calls.append(real(g)) or calls[-1])
    per_row = grads()
    assert len(calls) == 2 and all(c is not None for c in calls)     # the tail and the batch norm
    monkeypatch.setattr(block, "_row_broadcast", lambda g: None)
    copied = grads()
    for a, c in zip(per_row, copied):
        assert torch.equal(a, c)


@needs_kernel
def test_pooled_block_gradcheck_float64():
    inputs = _pooled_inputs(2, 35, 4, torch.float64, seed=9)
    assert torch.autograd.gradcheck(
        lambda *t: _pooled_block(_kernel_fork, glu_block, t[0], t[1], t[2], _mixer, *t[3:]), inputs)


@needs_kernel
def test_batch_norm_fork_keeps_the_shape_of_its_input():
    x = torch.randn(3, 10, 8, dtype=torch.float64, requires_grad=True)
    w, b = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    v, v2, xr = batch_norm_fork(x, w, b, None, None)
    assert v.shape == v2.shape == xr.shape == (3, 10, 8)
    want = F.batch_norm(x.reshape(-1, 8), None, None, w, b, True, 0.1, 1e-5).view_as(x)
    assert torch.allclose(v, want, rtol=1e-12, atol=1e-12) and torch.equal(xr, x)


def _enc_norm_inputs(shape, h, dtype, shift=0.0, seed=11):
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, scale=1.0, grad=True):
        t = scale * torch.randn(*s, generator=g, dtype=dtype)
        return t.requires_grad_() if grad else t
    x = rnd(*shape, 1, scale=0.3, grad=False) + shift
    return x, [rnd(h, 1), rnd(h), rnd(h) + 1.0, rnd(h)]


def _enc_norm_ref(x, ew, eb, bw, bb, rm, rv):
    """The plain formulation: torch's linear layer, then torch's training-mode batch norm."""
    hh = F.linear(x, ew, eb)
    v = F.batch_norm(hh.reshape(-1, hh.shape[-1]), rm, rv, bw, bb, True, 0.1, 1e-5).view_as(hh)
    return v, v, hh


def _enc_norm_loss(outs, grads, used):
    return sum((o * g).sum() for o, g, u in zip(outs, grads, used) if u)


@needs_kernel
@pytest.mark.parametrize("used", [(1, 1, 1), (1, 0, 1), (0, 1, 0), (1, 1, 0), (0, 0, 1)])
@pytest.mark.parametrize("broadcast", [True, False])
def test_encode_norm_fork_equals_linear_then_batch_norm_in_float64(used, broadcast):
    b, L, h = 3, 45, 8
    x, params = _enc_norm_inputs((b, L), h, torch.float64, shift=0.4)
    rows = torch.randn(b, 1, h, dtype=torch.float64)
    gouts = [torch.randn(b, L, h, dtype=torch.float64) for _ in range(2)]
    gouts.append(rows.expand(b, L, h) if broadcast else rows.expand(b, L, h).contiguous())
    stats = [torch.full((h,), 0.3, dtype=torch.float64), torch.full((h,), 2.0, dtype=torch.float64)]
    ref_stats = [s.clone() for s in stats]
    outs = encode_norm_fork(x, *params, *stats)
    got = torch.autograd.grad(_enc_norm_loss(outs, gouts, used), params, allow_unused=True)
    want_outs = _enc_norm_ref(x, *params, *ref_stats)
    want = torch.autograd.grad(_enc_norm_loss(want_outs, gouts, used), params, allow_unused=True)
    for o, w in zip(outs, want_outs):
        assert o.shape == (b, L, h) and torch.allclose(o, w, rtol=1e-12, atol=1e-12)
    for s, r in zip(stats, ref_stats):
        assert torch.allclose(s, r, rtol=1e-12, atol=1e-14)
    for a, c in zip(got, want):
        if c is None:                                    # the norm's parameters when only h is used
            assert a is None or torch.allclose(a, torch.zeros_like(a), atol=1e-12)
        else:
            assert torch.allclose(a, c, rtol=1e-10, atol=1e-11 * max(1.0, c.abs().max().item()))


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
@pytest.mark.parametrize("shift", [0.0, 40.0])
def test_encode_norm_fork_float32_matches_float64_torch(each_isa, shift):
    # shift 40: |mean x| >> std x, where sums about zero would lose the variance to cancellation;
    # 2 x 300 positions: more than one run of the kernel's partial sums
    b, L, h = 2, 300, 8
    x, params = _enc_norm_inputs((b, L), h, torch.float32, shift=shift, seed=13)
    gouts = [torch.randn(b, L, h), torch.randn(b, L, h), torch.randn(b, 1, h).expand(b, L, h)]
    stats = [torch.zeros(h), torch.ones(h)]
    outs = encode_norm_fork(x, *params, *stats)
    got = torch.autograd.grad(_enc_norm_loss(outs, gouts, (1, 1, 1)), params)
    p64 = [t.detach().double().requires_grad_() for t in params]
    stats64 = [torch.zeros(h, dtype=torch.float64), torch.ones(h, dtype=torch.float64)]
    want_outs = _enc_norm_ref(x.double(), *p64, *stats64)
    want = torch.autograd.grad(_enc_norm_loss(want_outs, [g.double() for g in gouts], (1, 1, 1)), p64)
    assert torch.allclose(outs[0].double(), want_outs[0], rtol=1e-4, atol=1e-4)
    assert torch.allclose(outs[2].double(), want_outs[2], rtol=1e-6, atol=1e-5)
    for s, r in zip(stats, stats64):
        assert torch.allclose(s.double(), r, rtol=1e-4, atol=1e-5)
    for a, c in zip(got, want):
        assert torch.allclose(a.double(), c, rtol=1e-3, atol=1e-4 * c.abs().max().item())


@needs_kernel
def test_encode_norm_fork_gradcheck_float64():
    x, params = _enc_norm_inputs((2, 33), 5, torch.float64, shift=0.7, seed=17)

    def fn(*p):   # all three outputs used; the residual's gradient a broadcast over positions
        v, v2, hh = encode_norm_fork(x, *p, None, None)
        return (v * v2).sum(1), hh.sum(1) * 0.5
    assert torch.autograd.gradcheck(fn, params)


@needs_kernel
def test_encode_norm_fork_gives_the_input_a_gradient_when_it_needs_one():
    # the fused kernel has no input gradient: an input that needs one takes the separate operations
    x, params = _enc_norm_inputs((2, 20), 4, torch.float64, seed=19)
    x.requires_grad_()
    v, _, hh = encode_norm_fork(x, *params, None, None)
    gx, = torch.autograd.grad((v ** 2).sum() + hh.sum(), [x])
    want_v, _, want_h = _enc_norm_ref(x, *params, None, None)
    want, = torch.autograd.grad((want_v ** 2).sum() + want_h.sum(), [x])
    assert torch.allclose(gx, want, rtol=1e-10, atol=1e-12)


@needs_kernel
def test_model_with_one_input_channel_fuses_encoder_and_norm_without_changing_the_step(monkeypatch):
    from shrinkssm.nn import ModelConfig, SSMModel

    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_state=6, d_model=8, n_layers=2), d_input=1, d_output=4).double()
    x, y = torch.rand(3, 40, 1, dtype=torch.float64), torch.randint(0, 4, (3,))
    calls = []
    real = block._EncodeNormFork.apply
    monkeypatch.setattr(block._EncodeNormFork, "apply", lambda *a: calls.append(1) or real(*a))

    def step():
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]
    before = [b.clone() for b in model.buffers()]
    fused = step()
    assert calls == [1]
    for b, saved in zip(model.buffers(), before):
        b.copy_(saved)
    monkeypatch.setattr(block, "_enc_norm_applies", lambda *a: False)
    plain = step()
    assert calls == [1]
    for a, c in zip(fused, plain):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)


def _mean_ref(*t):
    return glu_block_ref(*t).mean(1)


@needs_kernel
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("b, L, h", [(3, 37, 8), (2, 64, 16), (4, 1, 5), (1, 100, 24)])
def test_glu_block_mean_equals_the_mean_of_the_torch_tail_in_float64(b, L, h, skip):
    # L = 37, 100: batch rows end inside the kernel's tiles of 32 positions
    inputs = _tail_inputs((b, L), h, torch.float64, skip=skip, seed=b * L + h)
    gout = torch.randn(b, h, dtype=torch.float64)
    out, grads = _value_and_grads(glu_block_mean, inputs, gout)
    ref, ref_grads = _value_and_grads(_mean_ref, inputs, gout)
    assert out.shape == (b, h)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-13)
    for a, c in zip(grads, ref_grads):
        assert torch.allclose(a, c, rtol=1e-11, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("each_isa", _isas(), indirect=True)
def test_glu_block_mean_float32_on_every_path_matches_float64_torch(each_isa):
    inputs = _tail_inputs((5, 77), 8, torch.float32, seed=3)
    gout = torch.randn(5, 8)
    out, grads = _value_and_grads(glu_block_mean, inputs, gout)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref, ref_grads = _value_and_grads(_mean_ref, inputs64, gout.double())
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6)
    for a, c in zip(grads, ref_grads):
        assert torch.allclose(a.double(), c, rtol=1e-4, atol=1e-5 * max(1.0, c.abs().max().item()))


@needs_kernel
def test_glu_block_mean_gradcheck_float64():
    inputs = _tail_inputs((2, 35), 4, torch.float64, seed=5)
    assert torch.autograd.gradcheck(glu_block_mean, inputs)


@needs_kernel
def test_glu_block_mean_with_threads_keeps_whole_rows_per_part():
    # above the kernel's threading threshold (4e6 values) the rows are split over 8 parts: each
    # part holds whole rows, so every thread count gives the single-thread result bit for bit
    inputs = [t.detach() for t in _tail_inputs((48, 5300), 16, torch.float32, seed=11)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = glu_block_mean(*inputs)
        torch.set_num_threads(2)
        two = glu_block_mean(*inputs)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    ref = glu_block_ref(*[t.double() if t is not None else None for t in inputs]).mean(1)
    assert torch.allclose(one.double(), ref, rtol=1e-5, atol=1e-6)


def test_glu_block_mean_falls_back_to_the_mean_of_glu_block(monkeypatch):
    inputs = _tail_inputs((2, 9), 6, torch.float64, seed=2)
    monkeypatch.setattr(block, "_use_kernel", lambda *a: False)
    assert torch.allclose(glu_block_mean(*inputs), _mean_ref(*inputs), rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match=r"\(B, L, H\)"):
        glu_block_mean(*[t[0] if t is not None and t.ndim == 3 else t for t in inputs])


def test_model_pools_in_its_last_block_without_changing_the_step():
    # SSMModel.forward fuses the mean pooling into the last block: same loss and gradients as
    # pooling the features it returns unpooled
    from shrinkssm.nn import ModelConfig, SSMModel

    torch.manual_seed(0)
    for n_layers, d_input in ((2, 1), (1, 3)):
        model = SSMModel(ModelConfig(d_state=6, d_model=8, n_layers=n_layers), d_input=d_input,
                         d_output=4).double()
        x, y = torch.rand(3, 40, d_input, dtype=torch.float64), torch.randint(0, 4, (3,))
        fused = F.cross_entropy(model(x), y)
        g_fused = torch.autograd.grad(fused, list(model.parameters()))
        plain = F.cross_entropy(model.head(model.pool(model.features(x), None)), y)
        g_plain = torch.autograd.grad(plain, list(model.parameters()))
        assert torch.allclose(fused, plain, rtol=1e-12)
        for a, c in zip(g_fused, g_plain):
            assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)
