"""Tests of the Mamba-2 layer's reduction: the groups' data-driven Gramians against the Gramian
recurrences run step by step, the exact form at full rank against the original layer, the
protocol (plan, apply, report, layout through SSMModel and a checkpoint file), and the truncation
error on held-out digits falling as the rank grows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shrinkssm.compress import Compressor
from shrinkssm.nn import ModelConfig, ReductionPlan, ShrinkableLayer, SSMModel
from shrinkssm.nn.mamba2.gramians import gramian_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py



def inputs(nb=3, L=13, H=8, seed=1):
    return torch.randn(nb, L, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def scan_inputs(layer, u, mask=None):
    """x, dt, A, B, C of the layer's scan, as its forward computes them (for the brute force)."""
    L = u.shape[1]
    z, xbc, dt = layer._split_proj(layer.in_proj(u))
    xbc = F.silu(layer.conv1d(xbc.transpose(1, 2))[..., :L].transpose(1, 2))
    if mask is not None:
        xbc = xbc * mask[..., None]
    x, B, C = layer._split_xbc(xbc)
    dt = F.softplus(dt + layer.dt_bias)
    if mask is not None:
        dt = dt * mask[..., None]
    return x, dt, -torch.exp(layer.A_log), B, C


def brute_force_gramians(x, dt, A, B, C, valid):
    """P_g, Q_g by the Gramian recurrences run step by step per sequence and head:
    P(t) = a[t]^2 P(t-1) + ||dt x[t]||^2 B[t] B[t]^T (forward), Q(t) = C[t] C[t]^T + a[t+1]^2 Q(t+1)
    (backward), each averaged over the valid positions t and the heads of the group."""
    nb, L, H, _ = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    n = int(valid.sum())
    Ps, Qs = np.zeros((G, N, N)), np.zeros((G, N, N))
    a = torch.exp(dt * A).numpy()
    for b in range(nb):
        for h in range(H):
            g = h // rep
            P = np.zeros((N, N))
            for t in range(L):
                if not valid[b, t]:
                    continue
                Bt = B[b, t, g].numpy()
                P = a[b, t, h] ** 2 * P + float((dt[b, t, h] * x[b, t, h]).pow(2).sum()) * np.outer(Bt, Bt)
                Ps[g] += P / (n * rep)
            Q = np.zeros((N, N))
            for t in reversed(range(L)):
                if not valid[b, t]:
                    continue
                nxt = next((s for s in range(t + 1, L) if valid[b, s]), None)
                decay = 1.0 if nxt is None else float(np.prod(a[b, t + 1:nxt + 1, h]))
                Ct = C[b, t, g].numpy()
                Q = np.outer(Ct, Ct) + decay ** 2 * Q
                Qs[g] += Q / (n * rep)
    return Ps, Qs


@pytest.mark.parametrize("padded", [False, True])
def test_tracked_gramians_match_the_step_by_step_recurrences(padded, make_layer):
    layer = make_layer(gramian_momentum=None).train()
    u = inputs()
    mask = None
    if padded:
        mask = torch.ones(3, 13, dtype=torch.bool)
        mask[1, 9:] = False
        mask[2, 4:] = False
    with torch.no_grad():
        layer(u, mask)
        x, dt, A, B, C = scan_inputs(layer, u, None if mask is None else mask.double())
    valid = torch.ones(3, 13, dtype=torch.bool) if mask is None else mask
    Ps, Qs = brute_force_gramians(x, dt, A, B, C, valid)
    assert int(layer.gram_steps) == 1
    for g in range(2):
        np.testing.assert_allclose(layer.gram_P[g].numpy(), Ps[g], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(layer.gram_Q[g].numpy(), Qs[g], rtol=1e-10, atol=1e-14)
    assert np.linalg.eigvalsh(Ps[0]).min() > 0 and np.linalg.norm(Qs[1]) > 1e-3   # not vacuous
    # a second batch: a plain average of the two (gramian_momentum=None); then momentum 0.1
    u2 = inputs(seed=5)
    with torch.no_grad():
        layer(u2)
        P2, _ = brute_force_gramians(*scan_inputs(layer, u2), torch.ones(3, 13, dtype=torch.bool))
    np.testing.assert_allclose(layer.gram_P[0].numpy(), (Ps[0] + P2[0]) / 2, rtol=1e-10, atol=1e-14)
    layer.gramian_momentum = 0.1
    before = layer.gram_P.clone()
    with torch.no_grad():
        layer(u, mask)
    np.testing.assert_allclose(layer.gram_P[0].numpy(), 0.9 * before[0].numpy() + 0.1 * Ps[0],
                               rtol=1e-10, atol=1e-14)
    layer.eval()
    layer(u)                                                           # eval mode: not tracked
    assert int(layer.gram_steps) == 3


def test_gramian_weights_stay_finite_under_extreme_decay():
    """Log-decays summing to about -1e5 over the sequence: the weights are finite and equal the
    closed forms (each term a product of decays; kQ -> 1 and kP -> energy when the decay is total)."""
    nb, L, H = 1, 50, 2
    dt = torch.full((nb, L, H), 50.0, dtype=torch.float64)
    A = torch.tensor([-40.0, -1e-4], dtype=torch.float64)
    x = torch.ones(nb, L, H, 1, dtype=torch.float64)
    kP, kQ = gramian_weights(x, dt, A, torch.ones(nb, L, dtype=torch.bool), rep=1)
    assert torch.isfinite(kP).all() and torch.isfinite(kQ).all()
    torch.testing.assert_close(kQ[0, :, 0], torch.ones(L, dtype=torch.float64))   # a = exp(-2000)
    torch.testing.assert_close(kP[0, :, 0], torch.full((L,), 2500.0, dtype=torch.float64))
    a2 = float(np.exp(2 * 50.0 * -1e-4))
    expected_q = torch.tensor([sum(a2 ** k for k in range(s + 1)) for s in range(L)], dtype=torch.float64)
    torch.testing.assert_close(kQ[0, :, 1], expected_q, rtol=1e-12, atol=0)


def _trained(layer, batches=3):
    layer.train()
    with torch.no_grad():
        for s in range(batches):
            layer(inputs(seed=10 + s))
    return layer


def test_exact_form_at_full_rank_equals_the_original_and_balances_the_statistics(make_layer):
    layer = _trained(make_layer(gramian_momentum=None))
    original = copy.deepcopy(layer).eval()
    plan = layer.plan_reduction(lambda hsv, size: size)
    report = layer.apply_reduction_(plan, balance_all=True)
    assert layer.group_ranks == [5, 5] and layer.state_size == original.state_size
    assert not report.changed and layer.last_replaced == {}
    layer.eval()
    u = inputs(seed=3)
    torch.testing.assert_close(layer(u), original(u), rtol=1e-9, atol=1e-11)
    assert not torch.allclose(layer.red_in, torch.eye(5, dtype=torch.float64).repeat(2, 1))  # a real change of basis
    # the statistics moved with the basis: both Gramians are now diag(hsv) of the group
    hsv = [b.hsv for b in plan.detail.balancings]
    for g in range(2):
        P, Q = layer.gram_P[g].numpy(), layer.gram_Q[g].numpy()
        np.testing.assert_allclose(P, np.diag(hsv[g]), atol=1e-9 * hsv[g][0])
        np.testing.assert_allclose(Q, np.diag(hsv[g]), atol=1e-9 * hsv[g][0])


def test_truncated_layer_steps_like_its_forward_with_different_group_orders(make_layer):
    layer = _trained(make_layer())
    plan = layer.plan_reduction(lambda hsv, size: size)
    plan.ranks = [3, 2]
    report = layer.apply_reduction_(plan)
    assert report.changed and report.ranks == (3, 2) and layer.group_ranks == [3, 2]
    assert report.new_size == 2 * 4 * (3 + 2) == layer.state_size and report.error_bound is None
    assert any("not a bound" in n for n in report.notes)
    layer.eval()
    u = inputs(nb=2, L=9)
    y = layer(u)
    state, outs = None, []
    for t in range(9):
        out, state = layer.step(u[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-10, atol=1e-12)
    layer.scan = "ref"
    torch.testing.assert_close(layer(u), y, rtol=1e-10, atol=1e-12)
    y.sum().backward()                                                 # trains on
    assert layer.in_proj.weight.grad is not None
    # a second reduction composes with the first
    layer.train()
    _trained(layer, 1)
    again = layer.apply_reduction_(layer.plan_reduction(lambda hsv, size: max(1, size - 1)))
    assert layer.group_ranks == [2, 1] and again.old_size == report.new_size


def test_plan_apply_report_and_checkpoint_round_trip_through_ssmmodel(tmp_path, through_checkpoint):
    torch.manual_seed(0)
    cfg = ModelConfig(layer="mamba2", n_layers=2, d_model=8, d_state=6, headdim=4, ngroups=2,
                      chunk_size=8)
    model = SSMModel(cfg, d_input=2, d_output=3).double()
    layers = model.ssm_layers()
    assert all(isinstance(m, ShrinkableLayer) for m in layers)
    plan = layers[0].plan_reduction(lambda hsv, size: size)
    assert plan.skipped == "no Gramian statistics yet"
    model.train()
    with torch.no_grad():
        for s in range(2):
            model(torch.randn(4, 16, 2, dtype=torch.float64))
    plan = layers[0].plan_reduction(lambda hsv, size: max(1, size // 2))
    assert isinstance(plan, ReductionPlan) and plan.skipped is None
    assert plan.ranks == [3, 3] and plan.weights == [8, 8] and plan.target_size == 48
    assert plan.old_size == 16 * 6 and plan.old == 6 and plan.target == 3
    assert len(plan.hsv) == 12 and bool((plan.hsv[:-1] >= plan.hsv[1:]).all())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    event = Compressor([1], mode="fixed", fraction=0.5, gate=1.0).step(1, model, opt)
    assert [(e.old, e.new, e.old_size, e.new_size) for e in event.layers] == [(6, 3, 96, 48)] * 2
    assert model.state_dims() == [3, 3] and model.layout()["layers"][0] == {"d_state": 6, "ranks": [3, 3]}
    x = torch.randn(2, 10, 2, dtype=torch.float64)
    model(x).sum().backward()
    opt.step()
    model.eval()
    fresh = through_checkpoint(model, cfg, tmp_path / "model.pt")
    assert fresh.layout() == model.layout() and fresh.state_sizes() == model.state_sizes()
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="another layer"):
        fresh.ssm_layers()[0].apply_reduction_(plan)


def test_truncation_error_on_held_out_digits_falls_as_the_rank_grows(short_trained_mamba2):
    """A short training on sklearn digits, then every rank r of the one group: the relative change
    of the layer's output on held-out sequences falls with r (nearly monotone) and is zero at N."""
    N = 8
    model, held = short_trained_mamba2(N, "exact")
    block = model.blocks[0]
    with torch.no_grad():
        v = block.norm(model.encoder(held.x))                           # the mixer's input
        layer = block.mixer
        state_path = copy.deepcopy(layer)
        state_path.D.zero_()                                             # the output without the skip D x
        errors, path_errors, figures = [], [], []
        for r in range(1, N + 1):
            for full, errs in ((layer, errors), (state_path, path_errors)):
                red = copy.deepcopy(full)
                report = red.apply_reduction_(red.plan_reduction(lambda hsv, size, r=r: r))
                y = full(v)
                errs.append(float((red(v) - y).norm() / y.norm()))
            hsv = report.hsv.numpy()
            figures.append(2 * float(hsv[r:].sum() / hsv.sum()))
    print("relative output error by rank:", [f"{e:.3g}" for e in errors])
    print("the same without the skip term:", [f"{e:.3g}" for e in path_errors])
    print("2 sum(discarded sigma) / sum(sigma):", [f"{f:.3g}" for f in figures])
    for errs in (errors, path_errors):
        assert errs[-1] == 0.0                                           # rank N: unchanged
        assert errs[0] > 1e-3                                            # truncation does something
        for a, b in zip(errs, errs[1:]):
            assert b <= a * 1.1 + 1e-7                                   # falls (nearly monotone)
        assert errs[N // 2 - 1] < 0.3 * errs[0]
    assert all(a >= b for a, b in zip(figures, figures[1:]))
