"""Tests of shrinkssm.nn.selective: the block against Mamba-1's equations written out independently,
the recurrent step, padding, the surrogate's statistics and HSVs against brute force (direct
averages, shrinkssm.lti, the SVD of a Hankel matrix), the per-channel balancing against
shrinkssm.lti's balanced truncation, the reductions' bookkeeping (parameters, tags, layouts)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shrinkssm import lti
from shrinkssm.lti.balancing import balance_batch
from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.nn.selective import (
    ALPHA_FLOOR,
    SelectiveSSM,
    balance_channel,
    calibrate_surrogates,
    state_scores,
)
from shrinkssm.ops import native_available

SCANS = ["ref", "chunked",
         pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="no native"))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


def make_layer(N=6, H=5, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return SelectiveSSM(H, N, **kw).to(dtype)


def inputs(nb=3, L=17, H=5, seed=1, dtype=torch.float64):
    return torch.randn(nb, L, H, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def mamba_reference(layer: SelectiveSSM, u: torch.Tensor):
    """Mamba-1's block written out with explicit loops (mamba_simple.Mamba + selective_scan_ref).

    Returns the output and the intermediate delta, B, C (for the statistics tests)."""
    E, N, R, K = layer.d_inner, layer.n_diag, layer.dt_rank, layer.d_conv
    nb, L, _ = u.shape
    xz = u @ layer.in_proj.weight.T
    x, z = xz[..., :E], xz[..., E:]
    w = layer.conv.weight[:, 0, :]                                         # (E, K)
    xc = torch.zeros_like(x)
    for t in range(L):
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                xc[:, t] += w[:, k] * x[:, s]
    x = F.silu(xc + layer.conv.bias)
    dbc = x @ layer.x_proj_weight.T
    dt, B, C = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
    delta = F.softplus(dt @ layer.dt_proj.weight.T + layer.dt_proj.bias)
    A = -torch.exp(layer.A_log)
    h = torch.zeros(nb, E, N, dtype=u.dtype)
    ys = []
    for t in range(L):
        dt_ = delta[:, t, :, None]                                          # (B, E, 1)
        h = torch.exp(dt_ * A) * h + dt_ * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + layer.D * x[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ layer.out_proj.weight.T, delta, B, C


def trained_stats_layer(N=4, seed=0, surrogate="second_moment", **kw):
    """A layer with clearly non-trivial statistics (steps 0.1-0.5, so A_bar <= 0.91)."""
    layer = make_layer(N=N, seed=seed, dt_min=0.1, dt_max=0.5, surrogate=surrogate, surrogate_momentum=None,
                       scan="ref", **kw)
    with torch.no_grad():
        for k in range(3):
            layer(inputs(seed=10 + k))
    return layer


# ------------------------------------------------------------------------------------------------
# The block
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", SCANS)
def test_forward_equals_mamba_equations(scan):
    layer = make_layer(scan=scan)
    u = inputs()
    expect = mamba_reference(layer, u)[0]
    torch.testing.assert_close(layer(u), expect, rtol=1e-10, atol=1e-12)


def test_initialisation_follows_mamba():
    layer = make_layer(N=8, H=16, dtype=torch.float32)
    torch.testing.assert_close(-torch.exp(layer.A_log), -torch.arange(1, 9.0).repeat(32, 1))
    dt = F.softplus(layer.dt_proj.bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert torch.equal(layer.D, torch.ones(32))
    assert layer.dt_rank == 1 and tuple(layer.x_proj_weight.shape) == (1 + 16, 32)
    assert layer.A_log._no_weight_decay and layer.D._no_weight_decay
    assert layer.d_state == 8 and layer.state_size == 32 * 8


@pytest.mark.parametrize("scan", SCANS)
def test_step_by_step_equals_forward(scan):
    layer = make_layer(scan=scan).eval()
    u = inputs()
    state, ys = None, []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, 1), layer(u), rtol=1e-10, atol=1e-12)


def test_left_padding_leaves_valid_outputs_and_statistics_unchanged():
    layer = make_layer(surrogate_momentum=None)
    u = inputs(nb=2, L=12)
    pad = 5
    padded = torch.cat([torch.randn(2, pad, 5, dtype=u.dtype), u], 1)
    mask = torch.ones(2, 12 + pad, dtype=torch.bool)
    mask[:, :pad] = False
    ref = copy.deepcopy(layer)
    y = layer(padded, mask)
    y_ref = ref(u)
    torch.testing.assert_close(y[:, pad:], y_ref, rtol=1e-10, atol=1e-12)
    for name in ("sur_a", "sur_dtB", "sur_C", "sur_BB", "sur_CC"):
        torch.testing.assert_close(getattr(layer, name), getattr(ref, name), rtol=1e-10, atol=1e-14)


def test_gradients_reach_every_used_parameter():
    layer = make_layer()
    layer(inputs()).square().sum().backward()
    for name, p in layer.named_parameters():
        if p.numel():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="dt_min"):
        SelectiveSSM(4, 4, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="reduction"):
        SelectiveSSM(4, 4, reduction="modal")
    with pytest.raises(ValueError, match="surrogate"):
        SelectiveSSM(4, 4, surrogate="median")
    with pytest.raises(ValueError, match="backend"):
        SelectiveSSM(4, 4, scan="parallel")
    layer = make_layer()
    with pytest.raises(ValueError, match="shape"):
        layer(torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="mask"):
        layer(inputs(), torch.ones(3, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# The surrogate
# ------------------------------------------------------------------------------------------------


def test_statistics_equal_brute_force_averages():
    layer = make_layer(N=4, surrogate_momentum=None)
    batches = [inputs(seed=20 + k) for k in range(3)]
    stats = {k: [] for k in ("a", "dtB", "C", "BB", "CC")}
    A = -torch.exp(layer.A_log.detach())
    for u in batches:
        with torch.no_grad():
            _, delta, B, C = mamba_reference(layer, u)
            layer(u)
        n = delta.shape[0] * delta.shape[1]
        stats["a"].append(torch.exp(delta[..., None] * A).sum((0, 1)) / n)
        stats["dtB"].append(sum(delta[b, t, :, None] * B[b, t] for b in range(3) for t in range(17)) / n)
        stats["C"].append(C.mean((0, 1)))
        stats["BB"].append(sum(delta[b, t, :, None, None] ** 2 * torch.outer(B[b, t], B[b, t])
                               for b in range(3) for t in range(17)) / n)
        stats["CC"].append(sum(torch.outer(C[b, t], C[b, t]) for b in range(3) for t in range(17)) / n)
    for key, buf in (("a", "sur_a"), ("dtB", "sur_dtB"), ("C", "sur_C"), ("BB", "sur_BB"), ("CC", "sur_CC")):
        torch.testing.assert_close(getattr(layer, buf), sum(stats[key]) / 3, rtol=1e-10, atol=1e-14)
    assert int(layer.sur_steps) == 3


def test_moving_average_weights_and_eval_mode_does_not_track():
    layer = make_layer(N=4, surrogate_momentum=0.25)
    u1, u2 = inputs(seed=1), inputs(seed=2)
    one, two = copy.deepcopy(layer), copy.deepcopy(layer)
    layer(u1)
    layer(u2)
    one(u1)
    two(u2)
    torch.testing.assert_close(layer.sur_C, 0.75 * one.sur_C + 0.25 * two.sur_C)
    before = layer.sur_C.clone()
    layer.eval()(u1)
    assert torch.equal(layer.sur_C, before)


def _hankel_hsv(A_bar, Bm, Cm, K=200):
    """HSVs from the SVD of the block Hankel matrix H[i, j] = C A^(i+j) B (truncated at K blocks;
    the surrogates here have |eig(A_bar)| <= 0.91, so the tail is below 1e-8)."""
    powers = [torch.eye(A_bar.shape[0], dtype=A_bar.dtype)]
    for _ in range(2 * K - 1):
        powers.append(powers[-1] @ A_bar)
    M = Cm @ torch.stack(powers) @ Bm                                   # (2K, out, in)
    idx = torch.arange(K)[:, None] + torch.arange(K)[None, :]
    H = M[idx].permute(0, 2, 1, 3).reshape(K * Cm.shape[0], K * Bm.shape[1])
    return torch.linalg.svdvals(H)


@pytest.mark.parametrize("surrogate", ["second_moment", "mean"])
def test_surrogate_hsvs_against_lti_and_a_hankel_matrix(surrogate):
    layer = trained_stats_layer(surrogate=surrogate)
    systems = layer.surrogate_systems()
    hsvs = layer.hankel_singular_values()
    assert len(systems) == len(hsvs) == layer.d_inner
    for c in (0, 5):
        sys = systems[c]
        ours = hsvs[c]
        scale = float(ours[0])
        torch.testing.assert_close(ours, lti.hankel_singular_values(sys), rtol=1e-7, atol=1e-12 * scale)
        brute = _hankel_hsv(*(t.real for t in (sys.A, sys.B, sys.C)))[: ours.numel()]
        torch.testing.assert_close(ours, brute, rtol=1e-6, atol=1e-9 * scale)


def test_second_moment_surrogate_dominates_the_mean_one():
    """E[b b^T] = b_bar b_bar^T + Cov(b), so the second-moment Gramians are never smaller."""
    sm = trained_stats_layer(surrogate="second_moment")
    mean = copy.deepcopy(sm)
    mean.surrogate = "mean"
    for s, m in zip(sm._realizations(), mean._realizations()):
        assert torch.linalg.eigvalsh(s.Sb - m.Sb).min() > -1e-12
        assert torch.linalg.eigvalsh(s.Sc - m.Sc).min() > -1e-12
    energy = lambda layer: sum(h.sum() for h in layer.hankel_singular_values())  # noqa: E731
    assert energy(sm) >= energy(mean)


def test_calibrate_surrogates_averages_batches_in_eval_mode():
    torch.manual_seed(0)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=5, d_state=4, norm="batch")
    model = SSMModel(cfg, d_input=2, d_output=3).double()
    bn = model.blocks[0].norm.running_mean.clone()
    xs = [torch.randn(2, 9, 2, dtype=torch.float64) for _ in range(3)]
    assert calibrate_surrogates(model, xs) == 3
    assert model.training and torch.equal(model.blocks[0].norm.running_mean, bn)
    layer = model.blocks[0].selective
    model.eval()
    expect = []
    for x in xs:
        h = model.blocks[0].norm(model.encoder(x), None)
        expect.append(layer._branch(h, None)[4].mean((0, 1)))
    torch.testing.assert_close(layer.sur_C, sum(expect) / 3)


# ------------------------------------------------------------------------------------------------
# Per-channel balancing
# ------------------------------------------------------------------------------------------------


def test_balance_channel_transforms_are_lti_balanced_truncation():
    """The transforms balance the surrogate exactly like shrinkssm.lti (same reduced transfer
    function of (T^- A_bar T, T^- b, c T)); alpha, L_in, L_out re-diagonalise T^- G T; and with a
    constant step d the run-time transition exp(d alpha) approaches the balanced truncation as d -> 0
    (the transitions differ by O(d^2), the projection and the exponential commuting to first order
    only; the frequency responses, whose DC gain divides by I - A = O(d), by O(d))."""
    g_ = torch.Generator().manual_seed(0)
    n, r = 7, 3
    g = -(torch.rand(n, generator=g_, dtype=torch.float64) * 3.7 + 0.3)
    b, c = torch.randn(2, n, generator=g_, dtype=torch.float64)
    w = torch.linspace(0, math.pi, 257, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)

    def response(lam, bb, cc):
        sys = lti.DiagonalSystem(lam.to(torch.complex128), bb.to(torch.complex128)[:, None],
                                 cc.to(torch.complex128)[None, :], zero)
        return sys, lti.frequency_response(sys, w)

    errors = []
    for d in (0.2, 0.02):
        A_bar = torch.diag(torch.exp(d * g))
        full, _ = response(torch.exp(d * g), b, c)
        bt, info = lti.balanced_truncation(full, r)
        expect = lti.frequency_response(bt, w)
        sr = balance_batch(A_bar[None].numpy(), torch.outer(b, b)[None].numpy(), torch.outer(c, c)[None].numpy())[0]
        T, Tm = (torch.from_numpy(t) for t in sr.transforms(np.arange(r)))
        torch.testing.assert_close(Tm @ T, torch.eye(r, dtype=torch.float64), atol=1e-10, rtol=0)
        reduced = lti.DenseSystem(Tm @ A_bar @ T, (Tm @ b)[:, None], (c @ T)[None, :], zero)
        ours = lti.frequency_response(reduced, w)
        torch.testing.assert_close(ours, expect, rtol=1e-8, atol=1e-10)
        st = balance_channel(A_bar, torch.outer(b, b), torch.outer(c, c), torch.diag(g), r)
        torch.testing.assert_close(st.hsv, info.hsv, rtol=1e-8, atol=1e-10 * float(st.hsv[0]))
        torch.testing.assert_close(st.L_in @ torch.diag(g).to(st.L_in.dtype) @ st.L_out, torch.diag(st.alpha),
                                   atol=1e-9, rtol=0)
        eye = torch.eye(r, dtype=torch.complex128)
        torch.testing.assert_close(st.L_in @ st.L_out, eye, atol=1e-9, rtol=0)
        cplx = st.L_in.dtype
        _, run_time = response(torch.exp(d * st.alpha), st.L_in @ b.to(cplx), c.to(cplx) @ st.L_out)
        errors.append(float((run_time - expect).abs().max() / expect.abs().max()))
    assert errors[1] < errors[0] / 5


def test_balance_channel_guards():
    g_ = torch.Generator().manual_seed(1)
    n = 5
    A_bar = torch.diag(torch.rand(n, generator=g_, dtype=torch.float64) * 0.4 + 0.5)
    b, c = torch.randn(2, n, generator=g_, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    # zero surrogate map: one state with zero maps
    st = balance_channel(A_bar, torch.zeros(n, n, dtype=torch.float64), torch.outer(c, c), -eye, 2)
    assert st.alpha.shape == (1,) and not st.L_in.any() and "zero" in st.notes[0]
    # an unstable projected generator is moved to the floor
    st = balance_channel(A_bar, torch.outer(b, b), torch.outer(c, c), eye, 2)
    assert (st.alpha.real <= -ALPHA_FLOOR).all() and any("floor" in note for note in st.notes)


def test_state_scores_zero_for_unreachable_and_unobservable_coordinates():
    g_ = torch.Generator().manual_seed(2)
    A_bar = torch.diag(torch.tensor([0.5, 0.7, 0.8, 0.9], dtype=torch.float64))
    b, c = torch.randn(2, 4, generator=g_, dtype=torch.float64)
    b[1], c[3] = 0.0, 0.0
    s = state_scores(A_bar, torch.outer(b, b), torch.outer(c, c))
    assert s[1] < 1e-12 * s.max() and s[3] < 1e-12 * s.max() and (s[[0, 2]] > 0).all()
    # one decoupled coordinate scores its own HSV, |b c| / (1 - a^2)
    one = state_scores([[0.5]], [[4.0]], [[9.0]])
    torch.testing.assert_close(one, torch.tensor([6.0 / (1 - 0.25)], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# Reductions of the layer
# ------------------------------------------------------------------------------------------------


def test_per_channel_reduction_keeps_unreduced_channels_exactly():
    layer = trained_stats_layer(N=6)
    ref = copy.deepcopy(layer)
    ranks = [6] * layer.d_inner
    ranks[3] = 2
    report = layer.reduce_(ranks)
    assert report.old_size == 6 * layer.d_inner and report.new_size <= report.old_size - 4
    assert layer.is_balanced_form and layer.channel_orders()[3] <= 2
    u = inputs(seed=7)
    x, _, delta, Bx, Cx = ref._branch(u, None)
    y0, y1 = ref._ssm(x, delta, Bx, Cx), layer._ssm(x, delta, Bx, Cx)
    keep = [c for c in range(layer.d_inner) if c != 3]
    torch.testing.assert_close(y1[..., keep], y0[..., keep], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("reduction", ["per_channel", "shared"])
def test_reduced_layer_step_equals_forward_and_backends_agree(reduction, scan):
    layer = trained_stats_layer(N=6, reduction=reduction)
    layer.reduce_(3)
    layer.scan = scan
    if reduction == "per_channel":
        assert layer.n_real + 2 * layer.n_complex == layer.state_size
    else:
        assert layer.n_diag == 3 and tuple(layer.x_proj_weight.shape) == (layer.dt_rank + 6, layer.d_inner)
    layer.eval()
    u = inputs()
    state, ys = None, []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state)
        ys.append(y)
    y_fwd = layer(u)
    torch.testing.assert_close(torch.stack(ys, 1), y_fwd, rtol=1e-9, atol=1e-12)
    layer.scan = "ref"
    torch.testing.assert_close(layer(u), y_fwd, rtol=1e-10, atol=1e-13)


def test_reduced_state_statistics_equal_brute_force():
    layer = trained_stats_layer(N=8)
    layer.reduce_(4)                        # (this case gives real and complex states)
    assert not layer.has_surrogate()        # the new states' decay statistics start afresh
    u = inputs(seed=30)
    with torch.no_grad():
        layer(u)
        x, _, delta, _, _ = layer._branch(u, None)
    n = delta.shape[0] * delta.shape[1]
    alpha = torch.complex(-torch.exp(layer.cx_alpha_log), layer.cx_alpha_im)
    expect = torch.exp(delta[..., layer.cx_chan] * alpha).sum((0, 1)) / n
    torch.testing.assert_close(torch.complex(layer.sur_a_cx[:, 0], layer.sur_a_cx[:, 1]), expect)
    expect_re = torch.exp(delta[..., layer.re_chan] * -torch.exp(layer.re_alpha_log)).sum((0, 1)) / n
    torch.testing.assert_close(layer.sur_a_re, expect_re)
    assert layer.has_surrogate() and layer.n_complex > 0
    # a second reduction works from the reduced form
    before = layer.state_size
    layer.reduce_(2)
    assert layer.state_size < before


@pytest.mark.parametrize("reduction", ["per_channel", "shared"])
def test_reduce_replaces_parameters_keeps_names_tags_and_optimizer_works(reduction):
    layer = trained_stats_layer(N=6, reduction=reduction)
    names = [n for n, _ in layer.named_parameters()]
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(inputs()).sum().backward()
    opt.step()
    layer.reduce_(3)
    assert [n for n, _ in layer.named_parameters()] == names
    assert layer.last_replaced and all(old is not new for old, new in layer.last_replaced.values())
    from shrinkssm.compress import swap_parameters
    swap_parameters(opt, layer.last_replaced.values())
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in params for p in layer.parameters())
    if reduction == "per_channel":
        assert layer.re_alpha_log._no_weight_decay and layer.cx_alpha_log._no_weight_decay
    else:
        assert layer.A_log._no_weight_decay
    opt.zero_grad()
    layer(inputs()).sum().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def test_shared_reduction_drops_a_dead_state_first():
    layer = make_layer(N=5, reduction="shared", surrogate_momentum=None, scan="ref")
    with torch.no_grad():
        layer.x_proj_weight[layer.dt_rank + 2] = 0.0          # B(x)[2] == 0: state 2 is unreachable
        layer(inputs())
    plan = layer.plan_reduction(lambda hsv, n: 4)
    scores = plan.detail.scores
    assert scores[2] < 1e-6 * scores.max() and scores.sum() == pytest.approx(1.0)
    report = layer.reduce_(plan)
    assert layer.n_diag == 4 and "[0, 1, 3, 4]" in report.notes[0]
    torch.testing.assert_close(-torch.exp(layer.A_log[0]), -torch.tensor([1.0, 2, 4, 5], dtype=torch.float64))


def test_reduction_needs_statistics_and_valid_arguments():
    layer = make_layer()
    plan = layer.plan_reduction(lambda hsv, n: 2)
    assert plan.skipped is not None
    with pytest.raises(ValueError, match="statistics"):
        layer.reduce_(2)
    layer(inputs())
    with pytest.raises(ValueError, match="not available"):
        layer.reduce_(2, method="modal")
    with pytest.raises(ValueError, match="per-channel ranks"):
        layer.reduce_([2, 2])
    with pytest.raises(ValueError, match="options"):
        layer.reduce_(2, score="hinf")
    report = layer.reduce_(6)
    assert not report.changed and "no-op" in report.notes[0]


def test_reduce_to_a_plan_of_another_layer_is_refused():
    a, b = trained_stats_layer(), trained_stats_layer(seed=1)
    with pytest.raises(ValueError, match="another layer"):
        b.reduce_(a.plan_reduction(lambda hsv, n: 2))


@pytest.mark.parametrize("reduction", ["per_channel", "shared"])
def test_model_layout_round_trip_after_reduction(reduction):
    torch.manual_seed(0)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=5, d_state=6, norm="layer",
                      selective_reduction=reduction)
    model = SSMModel(cfg, d_input=2, d_output=3).double()
    model(torch.randn(4, 11, 2, dtype=torch.float64))
    model.ssm_layers()[0].reduce_(3)
    layout = model.layout()
    assert layout["state_dims"][1] == 6 and len(layout["layers"]) == 2
    fresh = SSMModel(cfg, d_input=2, d_output=3).double()
    fresh.apply_layout_(layout)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 8, 2, dtype=torch.float64)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert fresh.ssm_layers()[0].plan_reduction(lambda h, n: 2).hsv.tolist() == \
        model.ssm_layers()[0].plan_reduction(lambda h, n: 2).hsv.tolist()
    with pytest.raises(ValueError, match="kind of layer"):
        fresh.apply_layout_({"state_dims": [6, 6], "dense_skip": [False, False]})


def test_model_step_for_a_selective_language_model():
    torch.manual_seed(0)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=6, d_state=4, norm="batch")
    model = SSMModel(cfg, d_input=7, d_output=7, task="lm").double().eval()
    x = torch.randint(0, 7, (2, 9))
    states, outs = model.init_states(2), []
    for t in range(9):
        out, states = model.step(x[:, t], states)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), model(x), rtol=1e-10, atol=1e-12)


def test_config_validation():
    with pytest.raises(ValueError, match="dt_min"):
        ModelConfig(layer="selective", dt_min=0.5, dt_max=0.1)
    cfg = ModelConfig(layer="selective", scan="chunked", n_layers=1, d_model=4, d_state=3)  # accepted now
    assert SSMModel(cfg, d_input=2, d_output=3).blocks[0].mixer.scan == "chunked"
    with pytest.raises(ValueError, match="layer"):
        ModelConfig(layer="mamba3")
