"""Tests of shrinkssm.lti.analysis against plain references.

References: a Python-loop simulation (impulse response), the explicit DTFT sum of that impulse
response (frequency response, H2 norm), slycot's ab13dd (H∞ norm).
"""
import math

import numpy as np
import pytest
import torch
from lti_helpers import impulse_by_simulation, random_dense, random_lru, real_form

from shrinkssm.lti import (
    DiagonalSystem,
    frequency_response,
    h2_norm,
    hinf_norm,
    impulse_response,
)

try:
    import slycot
except ImportError:  # pragma: no cover - depends on the environment
    slycot = None
needs_slycot = pytest.mark.skipif(slycot is None, reason="slycot is not installed")

SYSTEMS = {
    "lru": lambda: random_lru(6, 2, seed=0),
    "lru_rect": lambda: random_lru(5, 3, 2, seed=1),
    "dense": lambda: random_dense(4, 2, rho=0.8, seed=2),
}


@pytest.mark.parametrize("name", SYSTEMS)
def test_impulse_response_matches_simulation(name):
    sys = SYSTEMS[name]()
    h = impulse_response(sys, 40)
    assert h.shape == (40, sys.n_outputs, sys.n_inputs) and h.dtype == torch.float64
    np.testing.assert_allclose(h.numpy(), impulse_by_simulation(sys, 40), atol=1e-12)


def test_impulse_response_includes_D_at_zero_and_keeps_dtype():
    sys = DiagonalSystem(torch.tensor([0.5]), torch.ones(1, 1), torch.ones(1, 1), torch.tensor([2.0]))
    h = impulse_response(sys, 3)
    assert h.dtype == torch.float32
    np.testing.assert_allclose(h[:, 0, 0].numpy(), [3.0, 0.5, 0.25])


def test_impulse_response_bad_input():
    sys = random_lru(2, 1)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="length"):
            impulse_response(sys, bad)
    unstable = DiagonalSystem(torch.tensor([3.0 + 0j], dtype=torch.complex128), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
    assert impulse_response(unstable, 5)[4, 0, 0] == 81.0  # unstable is fine while finite
    with pytest.raises(ValueError, match="overflows"):
        impulse_response(unstable, 800)


@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.parametrize("output", ["real", "complex"])
def test_frequency_response_is_the_dtft_of_the_impulse_response(name, output):
    sys = SYSTEMS[name]()
    L = 400  # |lam| <= 0.95: 0.95^400 ~ 1e-9
    w = np.linspace(-np.pi, np.pi, 37)
    if output == "real":
        h = impulse_by_simulation(sys, L)
    else:  # complex map: C A^k B (+ D at 0), built by hand
        from lti_helpers import np_sys
        A, B, C, D = np_sys(sys)
        h = np.array([C @ np.linalg.matrix_power(A, k) @ B for k in range(L)])
        h[0] += D
    ref = np.einsum("kij,wk->wij", h, np.exp(-1j * np.outer(w, np.arange(L))))
    G = frequency_response(sys, torch.from_numpy(w), output=output)
    assert G.shape == (37, sys.n_outputs, sys.n_inputs) and G.dtype == torch.complex128
    np.testing.assert_allclose(G.numpy(), ref, atol=1e-7)


def test_frequency_response_real_symmetry_and_input_checks():
    sys = random_lru(5, 2, seed=3)
    w = torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    torch.testing.assert_close(frequency_response(sys, -w), frequency_response(sys, w).conj())
    assert frequency_response(sys, 0.5).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="omega contains NaN"):
        frequency_response(sys, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        frequency_response(sys, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="output"):
        frequency_response(sys, w, output="imag")
    unstable = DiagonalSystem(torch.tensor([1.0 + 0j]), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
    with pytest.raises(ValueError, match="stable"):
        frequency_response(unstable, w)


def _standard_form_real(sys):
    """This package's y[k] = Re(C x[k]) + D u[k] in the standard form x+ = A x + B u, y = C' x + D' u."""
    A, B, C, D = real_form(sys)
    return A, B, C @ A, C @ B + D


@needs_slycot
@pytest.mark.parametrize("make", [lambda: random_lru(8, 2, seed=4), lambda: random_lru(6, 1, rmin=0.99, rmax=0.99999, seed=5),
                                  lambda: random_lru(7, 3, 2, seed=6), lambda: random_dense(5, 2, seed=7)])
def test_hinf_norm_matches_slycot(make):
    sys = make()
    A, B, C, D = _standard_form_real(sys)
    n, m, p = A.shape[0], B.shape[1], C.shape[0]
    ref, _ = slycot.ab13dd("D", "I", "N", "D", n, m, p, A, np.eye(n), B, C, D)
    assert hinf_norm(sys) == pytest.approx(ref, rel=1e-7)


def test_hinf_norm_finds_a_narrow_resonance():
    """One mode at |lam| = 1 - 1e-5: the peak 1/(1-|lam|) is 1e-5 wide, far narrower than the grid."""
    lam = (1 - 1e-5) * np.exp(1j * 1.234567)
    sys = DiagonalSystem(torch.tensor([lam], dtype=torch.complex128), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
    assert hinf_norm(sys, output="complex") == pytest.approx(1 / 1e-5, rel=1e-6)
    plain_grid = torch.linspace(-math.pi, math.pi, 4097, dtype=torch.float64)
    assert float(frequency_response(sys, plain_grid, output="complex").abs().max()) < 1e4  # not trivial


def test_hinf_norm_bounds_the_grid_and_the_impulse_response():
    sys = random_lru(12, 2, seed=8)
    w = torch.linspace(0, math.pi, 5001, dtype=torch.float64)
    grid_max = float(torch.linalg.matrix_norm(frequency_response(sys, w), ord=2).max())
    norm = hinf_norm(sys)
    assert grid_max <= norm * (1 + 1e-9)
    assert norm <= grid_max * 1.01
    for output in ("real", "complex"):  # ||G||_2^2 = mean over w of ||G||_F^2 <= min(H) ||G||_inf^2
        assert hinf_norm(sys, output) >= h2_norm(sys, output) / math.sqrt(2) * (1 - 1e-12)
    with pytest.raises(ValueError, match="n_grid"):
        hinf_norm(sys, n_grid=2)


@pytest.mark.parametrize("name", SYSTEMS)
def test_h2_norm_is_the_energy_of_the_impulse_response(name):
    sys = SYSTEMS[name]()
    h = impulse_by_simulation(sys, 600)
    assert h2_norm(sys) == pytest.approx(math.sqrt((h**2).sum()), rel=1e-9)


def test_h2_norm_complex_view():
    from lti_helpers import np_sys
    sys = random_lru(6, 2, 3, seed=9)
    A, B, C, D = np_sys(sys)
    h = np.array([C @ np.linalg.matrix_power(A, k) @ B for k in range(600)])
    h[0] += D
    assert h2_norm(sys, output="complex") == pytest.approx(math.sqrt((np.abs(h) ** 2).sum()), rel=1e-9)


def test_norms_reject_unstable():
    unstable = DiagonalSystem(torch.tensor([1.2 + 0j]), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
    for fn in (hinf_norm, h2_norm):
        with pytest.raises(ValueError, match="stable"):
            fn(unstable)
