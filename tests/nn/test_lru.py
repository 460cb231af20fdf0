"""Tests of shrinkssm.nn.lru: the LRU layer, its system() bridge and reduce_()."""

import math

import pytest
import torch

from shrinkssm import lti
from shrinkssm.nn import LRU, SSM_LR_GROUP


def _layer(h=3, n=24, seed=0, scan="ref", **kw):
    torch.manual_seed(seed)
    return LRU(h, n, scan=scan, **kw).double()


def _inputs(b=4, length=60, h=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, h, generator=g, dtype=torch.float64)


def test_init_puts_eigenvalues_on_the_ring():
    layer = LRU(4, 2000, r_min=0.5, r_max=0.8, max_phase=math.pi / 10)
    lam = layer.eigenvalues().detach()
    assert lam.abs().min() >= 0.5 - 1e-6 and lam.abs().max() <= 0.8 + 1e-6
    assert lam.angle().min() >= 0 and lam.angle().max() <= math.pi / 10 + 1e-6
    # |lam|^2 uniform on [r_min^2, r_max^2]: its mean is the midpoint
    assert abs(float((lam.abs() ** 2).mean()) - (0.25 + 0.64) / 2) < 0.02
    gamma = layer.gamma_log.exp().detach()
    assert torch.allclose(gamma, torch.sqrt(1 - lam.abs() ** 2), atol=1e-5)


def test_system_is_the_map_of_forward():
    """The impulse response of layer.system() (computed by lti) equals the layer's own output."""
    layer = _layer()
    length, h = 40, 3
    response = lti.impulse_response(layer.system(), length)           # (L, H_out, H_in)
    for j in range(h):
        u = torch.zeros(1, length, h, dtype=torch.float64)
        u[0, 0, j] = 1.0
        y = layer(u)[0]                                                 # (L, H)
        assert torch.allclose(y, response[:, :, j], atol=1e-12)


@pytest.mark.parametrize("scan", ["ref", "chunked", "auto"])
def test_step_by_step_equals_forward(scan):
    layer = _layer(scan=scan)
    u = _inputs()
    y = layer(u)
    state, outs = None, []
    for k in range(u.shape[1]):
        y_k, state = layer.step(u[:, k], state)
        outs.append(y_k)
    assert torch.allclose(torch.stack(outs, 1), y, atol=1e-10)
    y_full, last = layer(u, return_state=True)
    assert torch.allclose(last, state, atol=1e-10)
    # continuing from a state equals running the concatenation
    y_a, s_a = layer(u[:, :25], return_state=True)
    y_b = layer(u[:, 25:], state=s_a)
    assert torch.allclose(torch.cat([y_a, y_b], 1), y, atol=1e-10)


def test_padding_mask_keeps_padding_out_of_the_state():
    layer = _layer()
    u = _inputs(b=1, length=30)
    y = layer(u)
    noise = torch.randn(1, 10, 3, dtype=torch.float64) * 100
    # right padding: valid outputs unchanged
    mask = torch.tensor([[True] * 30 + [False] * 10])
    y_right = layer(torch.cat([u, noise], 1), mask=mask)
    assert torch.allclose(y_right[:, :30], y, atol=1e-12)
    # left padding: padded inputs never enter the state
    mask = torch.tensor([[False] * 10 + [True] * 30])
    y_left = layer(torch.cat([noise, u], 1), mask=mask)
    assert torch.allclose(y_left[:, 10:], y, atol=1e-12)


def test_parameter_tags():
    layer = LRU(4, 8)
    for name in ("nu_log", "theta_log", "gamma_log", "B_re", "B_im"):
        p = getattr(layer, name)
        assert p._lr_group == SSM_LR_GROUP and p._no_weight_decay
    for name in ("C_re", "C_im", "D"):
        assert getattr(getattr(layer, name), "_lr_group", None) is None


@pytest.mark.parametrize("output", ["complex", "real"])
def test_reduce_respects_the_error_bound_on_sequences(output):
    """||y - y_r||_2 <= bound * ||u||_2 per sequence: the H-infinity bound, measured in time."""
    layer = _layer(n=32)
    u = _inputs(b=6, length=400)
    y = layer(u)
    report = layer.reduce_(12, output=output)
    assert report.old_d_state == 32 and report.new_d_state == layer.d_state <= 12
    assert layer.nu_log.shape == (layer.d_state,) and layer.B_re.shape == (layer.d_state, 3)
    y_r = layer(u)
    err = (y - y_r).flatten(1).norm(dim=1)
    assert torch.all(err <= report.error_bound * u.flatten(1).norm(dim=1) * (1 + 1e-9))
    if output == "complex":
        assert report.error_bound == pytest.approx(2 * float(report.hsv[layer.d_state:].sum()))


def test_small_tau_keeps_the_function_nearly_unchanged():
    layer = _layer(n=64)
    u = _inputs(length=200)
    y = layer(u)
    rank = lti.rank_for_energy(lti.hankel_singular_values(layer.system()), 1e-4)
    layer.reduce_(rank)
    rel = (layer(u) - y).norm() / y.norm()
    assert rel < 1e-3


def test_reduced_layer_equals_the_lti_reduction():
    layer = _layer(n=20)
    expected, _ = lti.balanced_truncation(layer.system(), 8)
    layer.reduce_(8)
    got = lti.impulse_response(layer.system(), 50)
    want = lti.impulse_response(expected, 50)
    assert torch.allclose(got, want, atol=1e-10)


def test_reduce_replaces_parameters_and_reports_pairs():
    layer = _layer(n=16)
    layer.B_re._custom = "kept"
    old = dict(layer.named_parameters())
    layer.reduce_(6)
    new = dict(layer.named_parameters())
    assert set(layer.last_replaced) == set(old)
    for name, (before, after) in layer.last_replaced.items():
        assert before is old[name] and after is new[name] and after is not before
    assert layer.B_re._custom == "kept" and layer.B_re._lr_group == SSM_LR_GROUP


def test_reduce_to_full_rank_is_a_no_op():
    layer = _layer(n=10)
    params = list(layer.parameters())
    report = layer.reduce_(10)
    assert not report.changed and report.new_d_state == 10
    assert all(a is b for a, b in zip(params, layer.parameters()))
    with pytest.raises(ValueError, match="rank"):
        layer.reduce_(0)


def test_singular_perturbation_gives_a_dense_skip_and_matches_dc_gain():
    layer = _layer(n=20)
    dc = lti.frequency_response(layer.system(), torch.tensor([0.0]))
    report = layer.reduce_(6, method="singular_perturbation")
    assert layer.dense_skip and layer.D.shape == (3, 3) and report.new_d_state == 6
    dc_r = lti.frequency_response(layer.system(), torch.tensor([0.0]))
    assert torch.allclose(dc, dc_r, atol=1e-8)
    y = layer(_inputs())                                   # the dense skip runs
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("method, options", [("modal", {"score": "hinf"}), ("random", {}),
                                             ("balanced", {"selection": "smallest"})])
def test_other_methods_give_finite_stable_layers(method, options):
    layer = _layer(n=20)
    layer.reduce_(7, method=method, **options)
    assert layer.d_state <= 7
    lam = layer.eigenvalues().detach()
    assert torch.all(lam.abs() < 1)
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def test_real_eigenvalue_gets_a_small_positive_phase_not_minus_infinity():
    layer = _layer(n=4)
    lam = torch.tensor([0.9, 0.5 + 0.3j, -0.7, 0.2j], dtype=torch.complex128)
    sys = lti.DiagonalSystem(lam[:3], torch.ones(3, 3, dtype=torch.complex128),
                             torch.ones(3, 3, dtype=torch.complex128), torch.zeros(3, dtype=torch.float64))
    notes = layer._load_system(sys)
    assert any("real axis" in n for n in notes)
    assert torch.isfinite(layer.theta_log).all()
    assert torch.allclose(layer.eigenvalues().detach(), lam[:3], atol=1e-6)


def test_unrepresentable_system_is_refused_and_the_layer_is_kept():
    layer = _layer(n=4)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    sys = lti.DiagonalSystem(torch.tensor([0.5, 0.0], dtype=torch.complex128),
                             torch.ones(2, 3, dtype=torch.complex128),
                             torch.ones(3, 2, dtype=torch.complex128), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="zero eigenvalue"):
        layer._load_system(sys)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_resize_then_load_restores_a_reduced_layer():
    layer = _layer(n=16)
    layer.reduce_(5, method="singular_perturbation")
    fresh = _layer(n=16)
    fresh.resize_(layer.d_state, layer.dense_skip)
    fresh.double().load_state_dict(layer.state_dict())
    u = _inputs()
    assert torch.equal(fresh(u), layer(u))


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="r_min"):
        LRU(4, 8, r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="max_phase"):
        LRU(4, 8, max_phase=7.0)
    with pytest.raises(ValueError, match=r"\(B, L, 4\)"):
        LRU(4, 8)(torch.zeros(2, 5, 3))


def test_gradients_reach_every_parameter():
    layer = _layer()
    layer(_inputs()).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _numpy_system(layer):
    """(A, B, C, D) of the layer from its raw parameters, in NumPy (no shrinkssm code):
    lam = exp(-exp(nu_log) + i exp(theta_log)), B = gamma (B_re + i B_im), C = C_re + i C_im."""
    import numpy as np

    f = lambda t: t.detach().double().numpy()  # noqa: E731
    lam = np.exp(-np.exp(f(layer.nu_log)) + 1j * np.exp(f(layer.theta_log)))
    B = np.exp(f(layer.gamma_log))[:, None] * (f(layer.B_re) + 1j * f(layer.B_im))
    return np.diag(lam), B, f(layer.C_re) + 1j * f(layer.C_im), f(layer.D)


def _numpy_balanced_truncation(A, B, C, rank):
    """Square-root balanced truncation written out with scipy's Stein solver, Cholesky and SVD;
    returns the (dense, not diagonalised) reduced (A_r, B_r, C_r) and all HSVs (descending)."""
    import numpy as np
    import scipy.linalg

    P = scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)
    Lc, Lo = np.linalg.cholesky(P), np.linalg.cholesky(Q)
    U, s, Vh = np.linalg.svd(Lo.conj().T @ Lc)
    scale = s[:rank] ** -0.5
    T = Lc @ Vh[:rank].conj().T * scale[None, :]
    Ti = scale[:, None] * (U[:, :rank].conj().T @ Lo.conj().T)
    return Ti @ A @ T, Ti @ B, C @ T, s


def _simulate(A, B, C, D, u):
    """y[k] = Re(C x[k]) + D u[k], x[k] = A x[k-1] + B u[k]: a plain loop; u (b, L, H) tensor."""
    import numpy as np

    un = u.numpy()
    x = np.zeros((un.shape[0], A.shape[0]), dtype=complex)
    out = []
    for k in range(un.shape[1]):
        x = x @ A.T + un[:, k] @ B.T
        out.append((x @ C.T).real + un[:, k] * D)
    return torch.from_numpy(np.stack(out, 1))


def _smooth_inputs(b=4, length=300, h=3, seed=2):
    """Sequences like real signals: a few slow sinusoids plus a random walk, per channel."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)[None, :, None]
    freq = 0.01 + 0.2 * torch.rand(b, 1, h, generator=g, dtype=torch.float64)
    phase = 6.3 * torch.rand(b, 1, h, generator=g, dtype=torch.float64)
    walk = torch.randn(b, length, h, generator=g, dtype=torch.float64).cumsum(1) / math.sqrt(length)
    return torch.sin(freq * t + phase) + walk


def test_fixed_gamma_is_a_buffer_and_survives_reduction():
    """With a fixed (buffer) gamma the reduced layer computes the balanced truncation of the map it
    had: its outputs equal those of a balanced truncation written out here with scipy, and move
    by at most 2 sum(discarded sigma) ||u|| per sequence (the H-infinity bound)."""
    layer = _layer(n=12, train_gamma=False)
    assert "gamma_log" not in dict(layer.named_parameters())
    A, B, C, D = _numpy_system(layer)
    A_r, B_r, C_r, hsv = _numpy_balanced_truncation(A, B, C, 8)
    u = torch.cat([_inputs(length=300), _smooth_inputs()])
    y = layer(u).detach()
    assert torch.allclose(y, _simulate(A, B, C, D, u), atol=1e-10)     # the parameters read right
    report = layer.reduce_(8)
    assert layer.d_state == 8 and layer.gamma_log.shape == (8,)
    assert "gamma_log" not in dict(layer.named_parameters()) and "gamma_log" in dict(layer.named_buffers())
    bound = 2 * float(hsv[8:].sum())
    assert report.error_bound == pytest.approx(bound, rel=1e-6)
    y_r = layer(u).detach()
    expected = _simulate(A_r, B_r, C_r, D, u)
    assert torch.allclose(y_r, expected, atol=1e-8 * float(expected.abs().max()))
    err = (y - y_r).flatten(1).norm(dim=1)
    assert torch.all(err <= bound * u.flatten(1).norm(dim=1) * (1 + 1e-9))
    assert float(err.min()) > 0                                     # and it really was reduced


def test_system_follows_a_fused_optimizer_step():
    # torch's fused AdamW changes parameters in place without bumping their version counter; the
    # cached system must not outlive the values it was computed from
    from shrinkssm.train.config import TrainConfig
    from shrinkssm.train.optim import build_optimizer

    torch.manual_seed(0)
    layer = LRU(d_model=4, d_state=6)
    opt = build_optimizer(layer, TrainConfig(lr=0.01))
    assert opt.defaults.get("fused") is True
    before = layer.system()
    assert layer.system() is before                     # unchanged parameters: the same object
    layer(torch.randn(2, 5, 4)).sum().backward()
    opt.step()
    after = layer.system()
    assert after is not before
    f64 = lambda t: t.detach().double()  # noqa: E731
    lam = torch.exp(torch.complex(-torch.exp(f64(layer.nu_log)), torch.exp(f64(layer.theta_log))))
    assert torch.allclose(after.lam, lam, rtol=0, atol=1e-15)
    assert not torch.allclose(before.lam, after.lam)
