"""Tests of shrinkssm.lti.reduction.

Independent checks: the H∞ bound measured on a dense frequency grid (with points around every
pole), impulse responses of the non-diagonal balanced model (plain matrix powers), slycot's
ab09ad reduced model (same transfer function for balanced truncation), Gramians of the balanced
coordinates from scipy (diag(sigma)), exact DC gains from the definition, brute-force mode scores.
"""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lti_helpers import (
    impulse_by_simulation,
    max_error,
    np_sys,
    random_dense,
    random_lru,
    real_form,
)

from shrinkssm.lti import (
    DenseSystem,
    DiagonalSystem,
    ReductionInfo,
    balanced_singular_perturbation,
    balanced_truncation,
    balred,
    frequency_response,
    hsvd,
    impulse_response,
    modal_truncation,
    random_truncation,
    reduce_system,
)
from shrinkssm.lti.reduction import (
    MAX_COND_DROPS,
    MODULUS_MARGIN,
    _balanced_reduced_dense,
)

try:
    import slycot
except ImportError:  # pragma: no cover - depends on the environment
    slycot = None
needs_slycot = pytest.mark.skipif(slycot is None, reason="slycot is not installed")

OUTPUTS = ["complex", "real"]


def assert_valid(red: DiagonalSystem, info: ReductionInfo, sys):
    """Finite, stable, consistent with its info."""
    for t in (red.lam, red.B, red.C, red.D):
        assert bool(torch.isfinite(t).all())
    assert float(red.lam.abs().max()) < 1.0
    assert red.n_states == info.rank and red.dtype == sys.dtype
    assert info.hsv.dtype == torch.float64 and info.hsv.device.type == "cpu"
    assert bool((info.hsv[1:] <= info.hsv[:-1]).all())
    assert 0.0 <= info.kept_energy <= 1.0 + 1e-12
    assert info.seconds >= 0


# ---------------------------------------------------------------------------- balanced truncation
def scipy_hsv(sys, output: str) -> np.ndarray:
    """HSVs from scipy's general Stein solver: sqrt(eig(P Q)), descending. ``"real"`` uses the real
    2N form built in lti_helpers, ``"complex"`` the system's own (A, B, C); no shrinkssm code."""
    A, B, C, _ = real_form(sys) if output == "real" else np_sys(sys)
    P = scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)
    return np.sort(np.sqrt(np.clip(np.linalg.eigvals(P @ Q).real, 0.0, None)))[::-1]


def real_order(red: DiagonalSystem, output: str) -> int:
    """McMillan order of the reduced system in the view ``output``, counted from its eigenvalues:
    a complex LRU state is a conjugate pair (2 real states) in the real view, a real one is 1."""
    if output == "complex":
        return red.n_states
    lam = red.lam.detach().cpu().numpy()
    return int(np.where(lam.imag == 0, 1, 2).sum())


def hinf_error_on_grid(sys, red, n: int = 4096) -> float:
    """max over a frequency grid (plus points around every pole) of sigma_max(G(w) - G_r(w)), with
    G(z) = D + C_r (I - z^-1 A_r)^-1 B_r evaluated from the real 2N forms (no shrinkssm code)."""
    w = np.linspace(0.0, np.pi, n)
    poles = np.concatenate([np.diag(np_sys(s)[0]) for s in (sys, red)])
    width = np.maximum(1 - np.abs(poles), 1e-9)
    w = np.unique(np.concatenate([w] + [np.abs(np.angle(np.exp(1j * (np.angle(poles) + o * width))))
                                       for o in (-3, -1, -0.3, 0, 0.3, 1, 3)]))

    def response(s):
        A, B, C, D = real_form(s)
        eye = np.eye(A.shape[0])
        return np.stack([D + C @ np.linalg.solve(eye - np.exp(-1j * wk) * A, B) for wk in w])

    return float(np.linalg.norm(response(sys) - response(red), ord=2, axis=(1, 2)).max())


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("rank", [1, 3, 8, 15])
def test_balanced_truncation_hinf_bound(output, rank):
    """The reported bound is 2 * sum of the discarded HSVs, with the HSVs from scipy and the order
    read off the reduced system, and the H-inf error measured on a frequency grid respects it."""
    sys = random_lru(16, 2, seed=rank)
    red, info = balanced_truncation(sys, rank, output=output)
    assert_valid(red, info, sys)
    assert info.rank <= rank and info.method == "balanced" and info.output == output
    order = real_order(red, output)
    assert info.order == order
    assert order <= (rank if output == "complex" else 2 * rank)
    if output == "complex":
        assert red.n_states == rank                    # no guard acts on these systems
    else:
        assert order >= 2 * rank - 1                   # at most one real eigenvalue costs a state
    hsv = scipy_hsv(sys, output)
    # HSVs near sqrt(eps) * sigma_1 carry that much absolute error in any Gramian-based method
    np.testing.assert_allclose(info.hsv.numpy(), hsv, rtol=1e-7, atol=1e-7 * hsv[0])
    bound = 2 * hsv[order:].sum()
    assert info.error_bound == pytest.approx(bound, rel=1e-7, abs=1e-6 * hsv[0])
    assert info.kept_energy == pytest.approx(hsv[:order].sum() / hsv.sum(), rel=1e-7)
    err = hinf_error_on_grid(sys, red)
    assert err <= bound * (1 + 1e-8) + 1e-12
    assert err >= 0.05 * hsv[order]  # the reduction really changed the map (lower bound sigma_{r+1})


@pytest.mark.parametrize("output", OUTPUTS)
def test_complex_bound_also_holds_for_the_complex_map(output):
    sys = random_lru(12, 2, 3, seed=21)
    red, info = balanced_truncation(sys, 5, output="complex")
    assert max_error(sys, red, output="complex") <= info.error_bound * (1 + 1e-8)


@pytest.mark.parametrize("output", OUTPUTS)
def test_rediagonalised_equals_balanced_dense_model(output):
    """The diagonal form reproduces the balanced (non-diagonal) reduced model to ~1e-10."""
    sys = random_lru(24, 3, seed=3, rmin=0.8, rmax=0.99)
    red, info = balanced_truncation(sys, 7, output=output)
    dense = _balanced_reduced_dense(sys, info.order, output)
    assert isinstance(dense, DenseSystem) and dense.n_states == info.order
    h_dense = impulse_by_simulation(dense, 200)  # matrix powers of the balanced A_r, plain loop
    h_diag = impulse_response(red, 200).numpy()
    scale = np.abs(h_dense).max()
    np.testing.assert_allclose(h_diag, h_dense, atol=1e-10 * scale)


@pytest.mark.parametrize("output", OUTPUTS)
def test_balanced_coordinates_are_balanced(output):
    """In the full balanced realization both Gramians (scipy) equal diag(sigma)."""
    sys = random_lru(10, 2, seed=4)
    hsv = hsvd(sys, output).numpy()
    full = _balanced_reduced_dense(sys, hsv.size, output)
    A, B, C = (t.numpy() for t in (full.A, full.B, full.C))
    P = scipy.linalg.solve_discrete_lyapunov(A, B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, C.conj().T @ C)
    np.testing.assert_allclose(P, np.diag(hsv), atol=1e-9 * hsv[0])
    np.testing.assert_allclose(Q, np.diag(hsv), atol=1e-9 * hsv[0])


@pytest.mark.parametrize("output", OUTPUTS)
def test_reduced_hsvs_do_not_exceed_the_kept_ones(output):
    """Discrete time: Sigma_1 - P_r = A12 Sigma_2 A12^H-driven Stein solution >= 0, so sigma_i(red) <= sigma_i."""
    sys = random_lru(20, 2, seed=4)
    red, info = balanced_truncation(sys, 6, output=output)
    kept = info.hsv[: info.order].numpy()
    got = hsvd(red, output).numpy()[: info.order]
    assert (got <= kept * (1 + 1e-9)).all()
    assert got[0] > 0.5 * kept[0]


@needs_slycot
def test_real_balanced_truncation_matches_slycot_transfer_function():
    """slycot ab09ad (square-root B&T, dico='D') on the real form: same reduced transfer function."""
    sys = random_lru(10, 2, seed=5)
    red, info = balanced_truncation(sys, 4, output="real")
    A, B, C, D = real_form(sys)
    nr, Ar, Br, Cr, hsv = slycot.ab09ad("D", "B", "N", 20, 2, 2, A, B, C, nr=info.order)
    assert nr == info.order
    np.testing.assert_allclose(np.sort(hsv)[::-1], info.hsv.numpy(), atol=1e-9 * hsv.max())
    w = np.linspace(0, np.pi, 301)
    z = np.exp(1j * w)
    # this package: y[k] = Re(C x[k]) + D u[k] => G(z) = z C_r (zI - A_r)^-1 B_r + D in slycot's matrices
    ref = np.array([zz * Cr @ np.linalg.solve(zz * np.eye(nr) - Ar, Br) for zz in z]) + D
    got = frequency_response(red, torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-8 * np.abs(ref).max())


def test_complex_reduction_is_not_worse_than_bound_in_float32():
    sys = random_lru(32, 4, seed=6, dtype=torch.complex64)
    red, info = balanced_truncation(sys, 8)
    assert red.dtype == torch.complex64 and red.D.dtype == torch.float32
    assert_valid(red, info, sys)
    assert max_error(sys.to(torch.complex128), red.to(torch.complex128)) <= info.error_bound * 1.001 + 1e-5


def test_selection_smallest_keeps_the_smallest_directions():
    sys = random_lru(12, 2, seed=7)
    red, info = balanced_truncation(sys, 3, selection="smallest")
    hsv = info.hsv.numpy()
    np.testing.assert_allclose(info.kept_energy, hsv[-3:].sum() / hsv.sum(), rtol=1e-12)
    dense = _balanced_reduced_dense(sys, 3, selection="smallest")
    np.testing.assert_allclose(impulse_response(red, 100).numpy(), impulse_by_simulation(dense, 100), atol=1e-10)
    assert (hsvd(red).numpy() <= hsv[-3:] * (1 + 1e-9)).all()
    assert info.error_bound == pytest.approx(2 * hsv[:-3].sum())
    assert max_error(sys, red) <= info.error_bound


def test_aliases_and_dispatcher():
    sys = random_lru(8, 2, seed=8)
    assert balred is balanced_truncation
    a, _ = balanced_truncation(sys, 3)
    b, info = reduce_system(sys, 3, method="balanced", output="complex")
    torch.testing.assert_close(a.lam, b.lam)
    for method in ("balanced", "singular_perturbation", "modal", "random"):
        red, info = reduce_system(sys, 3, method=method)
        assert isinstance(red, DiagonalSystem) and isinstance(info, ReductionInfo) and red.n_states == 3
        assert info.method == method
    with pytest.raises(ValueError, match="method"):
        reduce_system(sys, 3, method="hankel")
    with pytest.raises(ValueError, match=r"does not take \['score'\]"):
        reduce_system(sys, 3, method="balanced", score="hinf")


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [balanced_truncation, balanced_singular_perturbation, modal_truncation, random_truncation])
def test_bad_rank_and_unstable_input(fn):
    sys = random_lru(4, 1)
    for bad in (0, -2, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="rank"):
            fn(sys, bad)
    assert fn(sys, np.int64(2))[0].n_states == 2  # numpy integers are fine
    unstable = DiagonalSystem(torch.tensor([0.5, 1.0 + 1e-12j]) * torch.tensor([1.0, 1.0]), torch.ones(2, 1),
                              torch.ones(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="stable"):
        fn(unstable, 1)
    with pytest.raises(ValueError, match="DiagonalSystem or DenseSystem"):
        fn("not a system", 1)


def test_bad_options():
    sys = random_lru(4, 1)
    with pytest.raises(ValueError, match="output"):
        balanced_truncation(sys, 2, output="imag")
    with pytest.raises(ValueError, match="selection"):
        balanced_truncation(sys, 2, selection="middle")
    with pytest.raises(ValueError, match="score"):
        modal_truncation(sys, 2, score="energy")
    with pytest.raises(ValueError, match="max_cond"):
        balanced_truncation(sys, 2, max_cond=0.5)
    with pytest.raises(ValueError, match="generator"):
        random_truncation(sys, 2, generator=3)


def test_nan_never_gets_in():
    with pytest.raises(ValueError, match="NaN"):
        balanced_truncation(DiagonalSystem(torch.tensor([0.5, float("nan")]), torch.ones(2, 1), torch.ones(1, 2),
                                           torch.zeros(1)), 1)


@pytest.mark.parametrize("method", ["balanced", "singular_perturbation", "modal", "random"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_rank_at_least_N_is_a_noop(method, output):
    sys = random_lru(5, 2, seed=9)
    red, info = reduce_system(sys, 5, method=method, output=output)
    assert info.rank == 5 and info.order == (5 if output == "complex" else 10)
    assert info.error_bound == 0.0 and info.kept_energy == 1.0
    assert "nothing to reduce" in info.notes[0]
    torch.testing.assert_close(red.lam, sys.lam)
    torch.testing.assert_close(red.D_matrix, sys.D_matrix)
    if method != "singular_perturbation":
        assert red is sys
    else:
        assert red.D.ndim == 2  # BSP always hands back a dense D
    assert reduce_system(sys, 50, method=method)[1].rank == 5


@pytest.mark.parametrize("output", OUTPUTS)
def test_tiny_systems(output):
    one = random_lru(1, 1, seed=10)
    red, info = balanced_truncation(one, 1, output=output)
    assert red is one and info.rank == 1
    two = random_lru(2, 1, seed=11)
    red, info = balanced_truncation(two, 1, output=output)
    assert_valid(red, info, two)
    assert red.n_states == 1 and max_error(two, red) <= info.error_bound * (1 + 1e-8)


@pytest.mark.parametrize("output", OUTPUTS)
def test_uncontrollable_states_cap_the_rank(output):
    sys = random_lru(8, 1, seed=12)
    B = sys.B.clone()
    B[3:] = 0  # only 3 controllable modes
    sys = DiagonalSystem(sys.lam, B, sys.C, sys.D)
    red, info = balanced_truncation(sys, 6, output=output)
    assert_valid(red, info, sys)
    assert info.rank == 3 and info.order == (3 if output == "complex" else 6)
    assert any("nonzero Hankel singular value" in n for n in info.notes)
    assert max_error(sys, red) <= 1e-8  # nothing of the map was lost
    red, info = balanced_singular_perturbation(sys, 6, output=output)
    assert info.rank == 3 and max_error(sys, red) <= 1e-8


@pytest.mark.parametrize("method", ["balanced", "singular_perturbation"])
def test_all_zero_hsv_gives_a_silent_state(method):
    sys = random_lru(4, 2, seed=13)
    sys = DiagonalSystem(sys.lam, torch.zeros_like(sys.B), sys.C, sys.D)
    red, info = reduce_system(sys, 2, method=method)
    assert red.n_states == 1 and float(red.B.abs().max()) == 0.0 and float(red.C.abs().max()) == 0.0
    assert bool(torch.isfinite(red.lam).all()) and 0 < float(red.lam.abs()) < 1
    assert any("every Hankel singular value is zero" in n for n in info.notes)
    assert max_error(sys, red) <= 1e-12


@pytest.mark.parametrize("output", OUTPUTS)
def test_repeated_eigenvalues(output):
    sys = random_lru(6, 2, seed=14)
    lam = torch.cat([sys.lam[:3], sys.lam[:3]])  # every eigenvalue twice
    sys = DiagonalSystem(lam, sys.B, sys.C, sys.D)
    red, info = balanced_truncation(sys, 4, output=output)
    assert_valid(red, info, sys)
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8) + 1e-12


def test_real_reduced_eigenvalues_are_kept_finite_and_noted():
    """Real poles in the real view give real reduced eigenvalues (phase 0 or pi): finite, noted."""
    lam = torch.tensor([0.95, -0.7, 0.5 + 0.4j, 0.3 - 0.6j], dtype=torch.complex128)
    sys = DiagonalSystem(lam, torch.ones(4, 1), torch.ones(1, 4), torch.zeros(1))
    red, info = balanced_truncation(sys, 2, output="real")
    assert_valid(red, info, sys)
    n_real = int((red.lam.imag == 0).sum())
    assert n_real >= 1 and any(f"{n_real} reduced eigenvalue(s) are real" in n for n in info.notes)
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8)


def test_eigenvalue_too_close_to_the_unit_circle_is_clamped_end_to_end():
    lam = torch.tensor([1 - 1e-9, 0.3 + 0.2j, -0.4], dtype=torch.complex128)
    sys = DiagonalSystem(lam, torch.ones(3, 1), torch.ones(1, 3), torch.zeros(1))
    red, info = balanced_truncation(sys, 1)
    assert float(red.lam.abs().max()) <= 1 - MODULUS_MARGIN + 1e-15
    assert any("moved radially" in n for n in info.notes)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("method", ["balanced", "singular_perturbation"])
def test_dense_input_both_views(output, method):
    sys = random_dense(8, 2, 3, seed=28)
    red, info = reduce_system(sys, 3, method=method, output=output)
    assert_valid(red, info, sys)
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8)


# ------------------------------------------------------------------------ near-defective guard
def _cond_at(sys, order, output="complex"):
    A = _balanced_reduced_dense(sys, order, output).A.numpy()
    return np.linalg.cond(np.linalg.eig(A)[1])


def test_near_defective_lowers_the_order():
    sys = random_lru(24, 2, seed=16)
    rank = 10
    max_cond = _cond_at(sys, rank) * (1 - 1e-3)
    assert max_cond > 1.0
    red, info = balanced_truncation(sys, rank, max_cond=max_cond)
    assert info.rank < rank
    assert sum("near-defective" in n for n in info.notes) == rank - info.rank
    assert _cond_at(sys, info.order) <= max_cond
    assert_valid(red, info, sys)
    assert info.error_bound == pytest.approx(2 * info.hsv[info.order:].sum().item())
    assert max_error(sys, red) <= info.error_bound


def test_near_defective_gives_up_with_a_clear_error():
    sys = random_lru(24, 2, seed=17)
    with pytest.raises(ValueError, match="near-defective"):
        balanced_truncation(sys, MAX_COND_DROPS + 4, max_cond=1.0)


def test_jordan_block_dense_system():
    """A defective A: diagonalising it as is must fail loudly; a real reduction must still work."""
    A = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, -0.2]], dtype=torch.complex128)
    sys = DenseSystem(A, torch.tensor([[0.0], [1.0], [1.0]]), torch.tensor([[1.0, 0.0, 1.0]]), torch.zeros(1))
    with pytest.raises(ValueError, match="near-defective"):
        balanced_truncation(sys, 3)
    red, info = balanced_truncation(sys, 2)
    assert_valid(red, info, sys)
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8)


def test_dense_input_is_reduced_and_diagonalised():
    sys = random_dense(10, 2, seed=18)
    red, info = balanced_truncation(sys, 4)
    assert isinstance(red, DiagonalSystem) and red.n_states == 4
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8)
    same, _ = balanced_truncation(sys, 10)  # no-op: diagonalised only
    np.testing.assert_allclose(impulse_response(same, 50).numpy(), impulse_by_simulation(sys, 50), atol=1e-9)


# ---------------------------------------------------------------- balanced singular perturbation
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("rank", [1, 4, 9])
def test_singular_perturbation_matches_dc_gain_and_bound(output, rank):
    sys = random_lru(12, 2, 3, seed=19 + rank)
    red, info = balanced_singular_perturbation(sys, rank, output=output)
    assert_valid(red, info, sys)
    assert red.D.shape == (3, 2)
    zero = torch.zeros(1, dtype=torch.float64)
    G0, Gr0 = frequency_response(sys, zero), frequency_response(red, zero)
    np.testing.assert_allclose(Gr0.numpy(), G0.numpy(), atol=1e-10 * float(G0.abs().max()))
    # DC gain from the definition, not from frequency_response
    A, B, C, D = np_sys(sys)
    dc = (C @ np.linalg.solve(np.eye(12) - A, B)).real + D
    np.testing.assert_allclose(G0.numpy()[0].real, dc, atol=1e-10)
    assert max_error(sys, red) <= info.error_bound * (1 + 1e-8)
    hsv = info.hsv.numpy()
    assert info.error_bound >= 2 * hsv[info.order:].sum()


def test_singular_perturbation_differs_from_truncation():
    sys = random_lru(10, 1, seed=22)
    bt, _ = balanced_truncation(sys, 3)
    sp, _ = balanced_singular_perturbation(sys, 3)
    zero = torch.zeros(1, dtype=torch.float64)
    dc = complex(frequency_response(sys, zero)[0, 0, 0])
    assert abs(complex(frequency_response(bt, zero)[0, 0, 0]) - dc) > 1e-6  # truncation misses DC ...
    assert abs(complex(frequency_response(sp, zero)[0, 0, 0]) - dc) < 1e-10 * abs(dc)  # ... BSP does not


# ------------------------------------------------------------------------- modal and random
@pytest.mark.parametrize("selection", ["largest", "smallest"])
def test_modal_truncation_keeps_the_right_modes(selection):
    sys = random_lru(10, 2, seed=23)
    lam, B, C = sys.lam.numpy(), sys.B.numpy(), sys.C.numpy()
    mag = np.abs(lam)
    score = np.array([np.linalg.norm(C[:, j]) * np.linalg.norm(B[j]) / (1 - abs(lam[j])) for j in range(10)])
    for name, values in (("magnitude", mag), ("hinf", score)):
        red, info = modal_truncation(sys, 4, score=name, selection=selection)
        order = np.argsort(-values if selection == "largest" else values)[:4]
        expected = tuple(sorted(int(i) for i in order))
        assert info.kept_states == expected
        np.testing.assert_array_equal(red.lam.numpy(), lam[list(expected)])
        np.testing.assert_array_equal(red.B.numpy(), B[list(expected)])
        assert info.error_bound is None
        bound = float(next(n for n in info.notes if "triangle" in n).split(":")[-1])
        assert max_error(sys, red) <= bound * (1 + 1e-8)
        np.testing.assert_allclose(bound, np.delete(score, list(expected)).sum(), rtol=1e-5)


def test_modal_truncation_of_a_dense_system():
    sys = random_dense(6, 2, seed=24)
    red, info = modal_truncation(sys, 3)
    eig = np.linalg.eigvals(sys.A.numpy())
    np.testing.assert_allclose(np.sort(np.abs(red.lam.numpy())), np.sort(np.abs(eig))[-3:], rtol=1e-10)
    assert any("diagonalised" in n for n in info.notes)
    bound = float(next(n for n in info.notes if "triangle" in n).split(":")[-1])
    assert max_error(sys, red) <= bound * (1 + 1e-6)


def test_random_truncation_is_reproducible():
    sys = random_lru(12, 2, seed=25)
    a, ia = random_truncation(sys, 5, generator=torch.Generator().manual_seed(3))
    _, ib = random_truncation(sys, 5, generator=torch.Generator().manual_seed(3))
    assert ia.kept_states == ib.kept_states and len(set(ia.kept_states)) == 5
    torch.testing.assert_close(a.lam, sys.lam[list(ia.kept_states)])
    assert ia.error_bound is None
    assert 0 < ia.kept_energy < 1


def test_kept_energy_of_modal_is_measured_on_the_reduced_system():
    sys = random_lru(10, 2, seed=26)
    red, info = modal_truncation(sys, 4)
    assert info.kept_energy == pytest.approx(float(hsvd(red).sum() / hsvd(sys).sum()), rel=1e-10)


# ------------------------------------------------------------------------------ property tests
@settings(max_examples=12, deadline=None)
@given(N=st.integers(2, 40), H=st.integers(1, 3), rmax=st.sampled_from([0.5, 0.9, 0.999, 0.99999]),
       frac=st.floats(0.05, 0.95), seed=st.integers(0, 2**31), output=st.sampled_from(OUTPUTS))
def test_balanced_truncation_property(N, H, rmax, frac, seed, output):
    sys = random_lru(N, H, rmin=min(0.5, rmax), rmax=rmax, seed=seed)
    rank = max(1, int(frac * N))
    red, info = balanced_truncation(sys, rank, output=output)
    assert_valid(red, info, sys)
    assert 1 <= info.rank <= rank
    hsv = info.hsv.numpy()
    # slack: HSVs below sqrt(eps) * sigma_1 carry absolute errors of that size
    slack = 1e-6 * hsv[0] * len(hsv)
    assert max_error(sys, red, n_uniform=1024) <= info.error_bound * (1 + 1e-6) + slack


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(N=st.sampled_from([128, 256, 512]), H=st.sampled_from([1, 8, 32]),
       rmax=st.sampled_from([0.999, 0.99999]), frac=st.floats(0.05, 0.5), seed=st.integers(0, 2**31),
       output=st.sampled_from(OUTPUTS))
def test_balanced_truncation_property_large(N, H, rmax, frac, seed, output):
    sys = random_lru(N, H, rmin=0.9, rmax=rmax, seed=seed)
    rank = max(1, int(frac * N))
    red, info = balanced_truncation(sys, rank, output=output)
    assert_valid(red, info, sys)
    hsv = info.hsv.numpy()
    assert max_error(sys, red, n_uniform=2048) <= info.error_bound * (1 + 1e-6) + 1e-6 * hsv[0] * len(hsv)


# -------------------------------------------------------------------------- cache, docstrings
def test_balancing_cache_is_reused_and_invalidated_by_in_place_changes():
    sys = random_lru(10, 2, seed=27)
    hsv = hsvd(sys)
    hsv[0] = -1.0  # the caller's copy; the cache must not see this
    red_cached, info = balanced_truncation(sys, 4)
    assert float(info.hsv[0]) > 0
    fresh, _ = balanced_truncation(DiagonalSystem(sys.lam, sys.B, sys.C, sys.D), 4)
    torch.testing.assert_close(red_cached.lam, fresh.lam, rtol=0, atol=0)
    before = hsvd(sys)
    sys.B.mul_(2.0)  # in place, as an optimizer step would do on shared storage
    np.testing.assert_allclose(hsvd(sys).numpy(), 2 * before.numpy(), rtol=1e-10)  # P x4, sigma x2


def test_docstring_examples_run():
    import doctest
    import importlib

    # importlib: the attribute shrinkssm.lti.gramians is the function of the same name
    for name in ("systems", "gramians", "reduction"):
        module = importlib.import_module(f"shrinkssm.lti.{name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0
