"""Tests of shrinkssm.lti.gramians against independent references.

References: scipy.linalg.solve_discrete_lyapunov (golden Gramians), the Kronecker-product form of
the Stein equation, slycot's ab09ad (HSVs by Hammarling's method), the singular values of a block
Hankel matrix of Markov parameters (no Gramian at all), and closed forms for N = 1.
"""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lti_helpers import np_sys, random_dense, random_lru, real_form

from shrinkssm.lti import (
    DenseSystem,
    DiagonalSystem,
    discrete_lyapunov,
    dlyap,
    gramians,
    hankel_singular_values,
    hsvd,
    rank_for_energy,
)

try:
    import slycot
except ImportError:  # pragma: no cover - depends on the environment
    slycot = None
needs_slycot = pytest.mark.skipif(slycot is None, reason="slycot is not installed")


def scipy_gramians(A, B, C):
    """Golden values from scipy.linalg.solve_discrete_lyapunov."""
    P = scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)
    return P, Q


def hsv_from_gramians(P, Q):
    ev = np.linalg.eigvals(P @ Q)
    return np.sort(np.sqrt(np.abs(ev.real)))[::-1]


SYSTEMS = {
    "lru": lambda: random_lru(12, 3, seed=0),
    "lru_slow": lambda: random_lru(10, 2, rmin=0.99, rmax=0.9999, seed=1),
    "lru_rect": lambda: random_lru(7, 2, 4, seed=2),
    "lru_siso": lambda: random_lru(9, 1, seed=3),
    "dense": lambda: random_dense(8, 2, seed=4),
}


# ------------------------------------------------------------------------------------- Gramians
@pytest.mark.parametrize("name", SYSTEMS)
def test_complex_gramians_match_scipy(name):
    sys = SYSTEMS[name]()
    A, B, C, _ = np_sys(sys)
    P_ref, Q_ref = scipy_gramians(A, B, C)
    P, Q = gramians(sys, output="complex")
    assert P.dtype == torch.complex128 and P.shape == (sys.n_states,) * 2
    scale = max(np.abs(P_ref).max(), np.abs(Q_ref).max())
    np.testing.assert_allclose(P.numpy(), P_ref, atol=1e-11 * scale)
    np.testing.assert_allclose(Q.numpy(), Q_ref, atol=1e-11 * scale)


@pytest.mark.parametrize("name", SYSTEMS)
def test_real_gramians_match_scipy_on_real_form(name):
    sys = SYSTEMS[name]()
    A, B, C, _ = real_form(sys)
    P_ref, Q_ref = scipy_gramians(A, B, C)
    P, Q = gramians(sys, output="real")
    assert P.dtype == torch.float64 and P.shape == (2 * sys.n_states,) * 2
    scale = max(np.abs(P_ref).max(), np.abs(Q_ref).max())
    np.testing.assert_allclose(P.numpy(), P_ref, atol=1e-11 * scale)
    np.testing.assert_allclose(Q.numpy(), Q_ref, atol=1e-11 * scale)


def test_gramians_solve_the_stein_equations_with_conjugate_on_the_right_side():
    """Residuals of P = L P L^H + B B^H and Q = L^H Q L + C^H C (the trap of docs/design.md §3.1)."""
    sys = random_lru(6, 2, seed=7)
    A, B, C, _ = np_sys(sys)
    P, Q = (x.numpy() for x in gramians(sys))
    np.testing.assert_allclose(A @ P @ A.conj().T + B @ B.conj().T, P, atol=1e-12)
    np.testing.assert_allclose(A.conj().T @ Q @ A + C.conj().T @ C, Q, atol=1e-12)
    wrong_Q = (C.conj().T @ C) / (1 - np.diag(A)[:, None] * np.diag(A).conj()[None, :])
    assert np.abs(wrong_Q - Q).max() > 1e-3  # the conjugate really matters


def test_gramians_keep_caller_precision():
    sys = random_lru(5, 2, seed=8, dtype=torch.complex64)
    P, Q = gramians(sys)
    assert P.dtype == torch.complex64 and Q.dtype == torch.complex64
    Pr, _ = gramians(sys, output="real")
    assert Pr.dtype == torch.float32


def test_gramians_reject_unstable_and_bad_output():
    sys = DiagonalSystem(torch.tensor([0.5, 1.0 + 0j]), torch.ones(2, 1), torch.ones(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="stable"):
        gramians(sys)
    with pytest.raises(ValueError, match="output"):
        gramians(random_lru(2, 1), output="imaginary")
    unstable_dense = DenseSystem(torch.tensor([[0.5, 2.0], [0.0, 1.1]]), torch.ones(2, 1), torch.ones(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="spectral radius"):
        gramians(unstable_dense)


def test_discrete_lyapunov_against_kronecker_form():
    """vec(X) = (I - conj(A) kron A)^-1 vec(Q): independent of scipy's bilinear method."""
    rng = np.random.default_rng(9)
    for dtype in (np.float64, np.complex128):
        A = rng.standard_normal((6, 6)).astype(dtype)
        if dtype == np.complex128:
            A = A + 1j * rng.standard_normal((6, 6))
        A *= 0.95 / np.abs(np.linalg.eigvals(A)).max()
        Q = rng.standard_normal((6, 6)).astype(dtype)
        X = dlyap(torch.from_numpy(A), torch.from_numpy(Q)).numpy()
        vec = np.linalg.solve(np.eye(36) - np.kron(A, A.conj()), Q.reshape(-1))  # row-major vec
        np.testing.assert_allclose(X, vec.reshape(6, 6), atol=1e-10)
        assert X.dtype == dtype
    assert discrete_lyapunov is dlyap


def test_discrete_lyapunov_bad_input():
    with pytest.raises(ValueError, match="stable"):
        dlyap(torch.eye(2) * 1.5, torch.eye(2))
    with pytest.raises(ValueError, match="square"):
        dlyap(torch.eye(2), torch.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        dlyap(torch.full((2, 2), float("nan")), torch.eye(2))


# ------------------------------------------------------------------------------------------ HSVs
@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.parametrize("output", ["complex", "real"])
def test_hsv_match_gramian_eigenvalues(name, output):
    sys = SYSTEMS[name]()
    A, B, C, _ = np_sys(sys) if output == "complex" else real_form(sys)
    ref = hsv_from_gramians(*scipy_gramians(A, B, C))
    hsv = hankel_singular_values(sys, output=output)
    assert hsv.dtype == torch.float64 and hsv.shape == (A.shape[0],)
    assert bool((hsv[1:] <= hsv[:-1]).all())
    np.testing.assert_allclose(hsv.numpy(), ref, atol=1e-9 * ref[0])


def test_hsv_of_one_state_closed_form():
    """SISO, N = 1: sigma = |c b| / (1 - |lam|^2) (complex view); the real view against scipy."""
    lam, b, c = 0.7 * np.exp(0.3j), 0.4 - 0.2j, 1.5 + 0.5j
    c128 = torch.complex128
    sys = DiagonalSystem(torch.tensor([lam], dtype=c128), torch.tensor([[b]], dtype=c128),
                         torch.tensor([[c]], dtype=c128), torch.zeros(1))
    assert float(hsvd(sys)[0]) == pytest.approx(abs(b * c) / (1 - abs(lam) ** 2), rel=1e-13)
    A, B, C, _ = real_form(sys)
    np.testing.assert_allclose(hsvd(sys, "real").numpy(), hsv_from_gramians(*scipy_gramians(A, B, C)), rtol=1e-10)


@pytest.mark.parametrize("output", ["complex", "real"])
def test_hsv_equal_singular_values_of_the_hankel_matrix(output):
    """Gramian-free: sigma are the singular values of [h_{i+j}], h_k = C A^k B (delayed convention)."""
    sys = random_lru(6, 2, rmin=0.3, rmax=0.7, seed=10)
    A, B, C, _ = np_sys(sys) if output == "complex" else real_form(sys)
    K = 80  # 0.7^80 ~ 4e-13
    markov = [C @ np.linalg.matrix_power(A, k) @ B for k in range(2 * K)]
    H = np.block([[markov[i + j] for j in range(K)] for i in range(K)])
    ref = np.linalg.svd(H, compute_uv=False)[: A.shape[0]]
    np.testing.assert_allclose(hsvd(sys, output).numpy(), ref, atol=1e-10 * ref[0])


@needs_slycot
@pytest.mark.parametrize("name", ["lru", "lru_slow", "lru_rect", "dense"])
def test_real_hsv_match_slycot(name):
    """slycot ab09ad (dico='D') on the real 2N form returns the HSVs (docs/design.md §5)."""
    sys = SYSTEMS[name]()
    A, B, C, _ = real_form(sys)
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    *_, ref = slycot.ab09ad("D", "B", "N", n, m, p, A, B, C, nr=n)
    ref = np.sort(ref)[::-1]
    np.testing.assert_allclose(hsvd(sys, "real").numpy(), ref, atol=1e-9 * ref[0])


@needs_slycot
def test_complex_hsv_match_slycot_on_realified_complex_system():
    """The complex-input/complex-output system, written in real arithmetic, has every complex HSV twice."""
    sys = random_lru(8, 2, 3, seed=11)
    A, B, C, _ = np_sys(sys)
    Ar = np.block([[A.real, -A.imag], [A.imag, A.real]])
    Br = np.block([[B.real, -B.imag], [B.imag, B.real]])
    Cr = np.block([[C.real, -C.imag], [C.imag, C.real]])
    *_, ref = slycot.ab09ad("D", "B", "N", 16, 4, 6, Ar, Br, Cr, nr=16)
    hsv = hsvd(sys).numpy()
    np.testing.assert_allclose(np.repeat(hsv, 2), np.sort(ref)[::-1], atol=1e-9 * hsv[0])


@pytest.mark.parametrize("output", ["complex", "real"])
def test_hsv_invariant_under_permutation_and_diagonal_scaling(output):
    sys = random_lru(10, 2, seed=12)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    scale = torch.exp(torch.linspace(-2, 2, 10, dtype=torch.float64)) * torch.exp(1j * torch.linspace(0, 3, 10, dtype=torch.float64))
    moved = DiagonalSystem(sys.lam[perm], scale[:, None] * sys.B[perm], sys.C[:, perm] / scale[None, :], sys.D)
    ref = hsvd(sys, output)
    np.testing.assert_allclose(hsvd(moved, output).numpy(), ref.numpy(), atol=1e-10 * float(ref[0]))
    assert float(ref[-1]) > 0 or output == "real"  # the test is not trivially comparing zeros


def test_hsv_zero_for_uncontrollable_and_unobservable_states():
    sys = random_lru(6, 2, seed=13)
    B = sys.B.clone()
    B[0] = 0  # state 0 uncontrollable
    C = sys.C.clone()
    C[:, 1] = 0  # state 1 unobservable
    hsv = hsvd(DiagonalSystem(sys.lam, B, C, sys.D))
    assert bool(torch.isfinite(hsv).all())
    assert int((hsv == 0).sum()) == 2 and float(hsv[3]) > 0
    zero = hsvd(DiagonalSystem(sys.lam, torch.zeros_like(B), C, sys.D), "real")
    assert zero.shape == (12,) and float(zero.abs().max()) == 0.0


def test_hsv_float64_whatever_the_input_precision():
    s64 = random_lru(8, 2, seed=14)
    h32 = hsvd(s64.to(torch.complex64))
    assert h32.dtype == torch.float64
    np.testing.assert_allclose(h32.numpy(), hsvd(s64).numpy(), rtol=1e-4, atol=1e-5 * float(h32[0]))


def test_hsv_repeated_eigenvalues():
    """Two identical modes with parallel B rows: a SISO system that is really first order."""
    lam = torch.tensor([0.8 + 0.1j, 0.8 + 0.1j, -0.3 + 0j], dtype=torch.complex128)
    B = torch.tensor([[1.0], [2.0], [1.0]], dtype=torch.complex128)
    C = torch.ones(1, 3, dtype=torch.complex128)
    hsv = hsvd(DiagonalSystem(lam, B, C, torch.zeros(1)))
    A = np.diag(lam.numpy())
    ref = hsv_from_gramians(*scipy_gramians(A, B.numpy(), C.numpy()))
    np.testing.assert_allclose(hsv.numpy()[:2], ref[:2], rtol=1e-12)
    assert ref[2] < 1e-6  # sqrt(eig(PQ)) only gets the zero to ~sqrt(eps) ...
    assert float(hsv[2]) == 0.0  # ... the pivoted square-root factors see the rank exactly


# -------------------------------------------------------------------------------- rank_for_energy
def rank_for_energy_ref(hsv, tau):
    """The definition, literally (plain loop)."""
    if tau == 0:
        return len(hsv)
    total = sum(hsv)
    acc = 0.0
    for r, s in enumerate(hsv, start=1):
        acc += s
        if acc >= (1 - tau) * total:
            return r
    return len(hsv)


def test_rank_for_energy_examples():
    h = torch.tensor([3.0, 1.0, 0.5, 0.5])
    assert rank_for_energy(h, 0.2) == 2
    assert rank_for_energy(h, 0.0) == 4
    assert rank_for_energy(h, 0.05) == 4
    assert rank_for_energy(h, 0.41) == 1
    assert rank_for_energy(torch.tensor([2.0, 1.0, 0.0, 0.0]), 0.0) == 4  # tau = 0 changes nothing
    assert rank_for_energy(torch.tensor([2.0, 1.0, 0.0, 0.0]), 1e-9) == 2
    assert rank_for_energy(torch.zeros(3), 0.5) == 1
    assert rank_for_energy(np.array([1.0]), 0.9) == 1


@pytest.mark.parametrize("hsv,tau,match", [
    (torch.tensor([1.0, 2.0]), 0.1, "descending"),
    (torch.tensor([1.0, -0.5]), 0.1, "negative"),
    (torch.tensor([1.0, float("nan")]), 0.1, "NaN"),
    (torch.zeros(0), 0.1, "non-empty"),
    (torch.ones(2, 2), 0.1, "1-D"),
    (torch.tensor([1.0]), 1.0, "tau"),
    (torch.tensor([1.0]), -0.1, "tau"),
    (torch.tensor([1.0]), float("nan"), "tau"),
    (torch.tensor([1.0]), "0.1", "tau"),
])
def test_rank_for_energy_bad_input(hsv, tau, match):
    with pytest.raises(ValueError, match=match):
        rank_for_energy(hsv, tau)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=40),
       st.floats(0, 0.999, allow_nan=False))
def test_rank_for_energy_matches_definition(values, tau):
    hsv = sorted(values, reverse=True)
    r = rank_for_energy(torch.tensor(hsv, dtype=torch.float64), tau)
    ref = rank_for_energy_ref(hsv, tau)
    if r != ref:  # only a rounding tie at the threshold may differ (cumsum vs loop order)
        cum = np.cumsum(hsv)
        assert abs(cum[min(r, ref) - 1] - (1 - tau) * cum[-1]) <= 1e-12 * cum[-1]
    assert 1 <= r <= len(hsv)


# ------------------------------------------------------------------------------ property tests
def _random_system(N, H, rmax, seed):
    return random_lru(N, H, rmin=min(0.5, rmax), rmax=rmax, seed=seed)


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 40), H=st.integers(1, 4), rmax=st.sampled_from([0.5, 0.9, 0.999, 0.99999]),
       seed=st.integers(0, 2**31), output=st.sampled_from(["complex", "real"]))
def test_hsv_property_random_systems(N, H, rmax, seed, output):
    sys = _random_system(N, H, rmax, seed)
    A, B, C, _ = np_sys(sys) if output == "complex" else real_form(sys)
    P, Q = scipy_gramians(A, B, C)
    ref = hsv_from_gramians(P, Q)
    hsv = hsvd(sys, output).numpy()
    assert np.isfinite(hsv).all() and (hsv >= 0).all() and (np.diff(hsv) <= 0).all()
    # absolute accuracy of any Gramian-based method: ~ sqrt(eps * ||P|| ||Q||)
    tol = 1e-6 * math.sqrt(np.abs(P).max() * np.abs(Q).max()) + 1e-9 * ref[0]
    np.testing.assert_allclose(hsv, ref, atol=tol)
    np.testing.assert_allclose(hsv.sum(), ref.sum(), rtol=1e-6)


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(N=st.sampled_from([128, 256, 512]), H=st.sampled_from([1, 8, 64]),
       rmax=st.sampled_from([0.999, 0.99999]), seed=st.integers(0, 2**31))
def test_hsv_property_large_systems(N, H, rmax, seed):
    sys = random_lru(N, H, rmin=0.9, rmax=rmax, seed=seed)
    A, B, C, _ = np_sys(sys)
    P, Q = scipy_gramians(A, B, C)
    ref = hsv_from_gramians(P, Q)
    hsv = hsvd(sys).numpy()
    tol = 1e-6 * math.sqrt(np.abs(P).max() * np.abs(Q).max()) + 1e-9 * ref[0]
    np.testing.assert_allclose(hsv, ref, atol=tol)
