"""Tests of shrinkssm.lti.balancing: the square-root balancing both layer kinds call.

Independent checks: Gramians from scipy's general Stein solver (solve_discrete_lyapunov), HSVs as
sqrt(eig(P Q)) of those, the balanced realization's Gramians (diag(sigma)) from scipy, the batched
routine against the per-system one and against lti.balanced_truncation (the LRU's), impulse
responses by plain matrix powers, and each guard on a system built to trigger it.
"""

import numpy as np
import pytest
import scipy.linalg
import torch

from shrinkssm.lti import DenseSystem, DiagonalSystem, balanced_truncation, frequency_response, impulse_response
from shrinkssm.lti.balancing import (
    MAX_COND_DROPS,
    MODULUS_MARGIN,
    REAL_PART_MARGIN,
    balance_batch,
    balanced_truncation_batch,
    clamp_modulus,
    clamp_real_part,
    coordinate_energy,
    modal_form,
    square_root,
    stein_gramians,
    truncate,
)


def scipy_gramians(A, Sb, Sc):
    P = scipy.linalg.solve_discrete_lyapunov(A, Sb)
    Q = scipy.linalg.solve_discrete_lyapunov(A.conj().T, Sc)
    return P, Q


def scipy_hsv(A, Sb, Sc):
    P, Q = scipy_gramians(A, Sb, Sc)
    return np.sort(np.sqrt(np.clip(np.linalg.eigvals(P @ Q).real, 0.0, None)))[::-1]


def rotation_block_system(rng, n_real=3, n_pairs=2):
    """A real block-diagonal stable A (1x1 and 2x2 rotation-scaling blocks, as a reduced selective
    channel's surrogate), with random input/output energies of full rank."""
    blocks = [np.array([[a]]) for a in rng.uniform(-0.9, 0.9, n_real)]
    for r, phi in zip(rng.uniform(0.3, 0.95, n_pairs), rng.uniform(0.1, 3.0, n_pairs)):
        blocks.append(r * np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]))
    A = scipy.linalg.block_diag(*blocks)
    n = A.shape[0]
    F, G = rng.standard_normal((n, 2)), rng.standard_normal((3, n))
    return A, F @ F.T, G.T @ G


def random_batch(kind, S=4, n=6, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "blocks":
        return [np.stack(x) for x in zip(*(rotation_block_system(rng) for _ in range(S)))]
    As, Sbs, Scs = [], [], []
    for _ in range(S):
        if kind == "real_diagonal":
            A = np.diag(rng.uniform(-0.95, 0.95, n))
            B, C = rng.standard_normal((n, 1)), rng.standard_normal((1, n))
        elif kind == "complex_diagonal":
            A = np.diag(rng.uniform(0.3, 0.95, n) * np.exp(1j * rng.uniform(0, 2 * np.pi, n)))
            B = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
            C = rng.standard_normal((2, n)) + 1j * rng.standard_normal((2, n))
        else:  # dense, non-normal, complex
            G = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
            A = 0.9 * G / np.abs(np.linalg.eigvals(G)).max()
            B = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
            C = rng.standard_normal((2, n)) + 1j * rng.standard_normal((2, n))
        As.append(A), Sbs.append(B @ B.conj().T), Scs.append(C.conj().T @ C)
    return np.stack(As), np.stack(Sbs), np.stack(Scs)


KINDS = ["real_diagonal", "complex_diagonal", "blocks", "dense"]


# ------------------------------------------------------------------------------------ Gramians
@pytest.mark.parametrize("kind", KINDS)
def test_batched_gramians_equal_scipy_solver(kind):
    A, Sb, Sc = random_batch(kind)
    P, Q = stein_gramians(A, Sb, Sc)
    assert P.shape == A.shape and np.isrealobj(P) == np.isrealobj(A)
    for i in range(A.shape[0]):
        P_ref, Q_ref = scipy_gramians(A[i], Sb[i], Sc[i])
        np.testing.assert_allclose(P[i], P_ref, rtol=1e-10, atol=1e-12 * np.abs(P_ref).max())
        np.testing.assert_allclose(Q[i], Q_ref, rtol=1e-10, atol=1e-12 * np.abs(Q_ref).max())


def test_ill_conditioned_eigenbasis_goes_through_scipy():
    """A nearly defective A (a Jordan-like block): the eigenbasis route would lose ~8 digits;
    the result still solves the Stein equation to rounding."""
    A = np.array([[[0.5, 1.0], [1e-13, 0.5]], [[0.3, 0.0], [0.0, -0.2]]])
    Sb = np.stack([np.eye(2), np.ones((2, 2))])
    Sc = np.stack([np.diag([1.0, 2.0]), np.eye(2)])
    P, Q = stein_gramians(A, Sb, Sc)
    for i in range(2):
        np.testing.assert_allclose(P[i], A[i] @ P[i] @ A[i].T + Sb[i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Q[i], A[i].T @ Q[i] @ A[i] + Sc[i], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ square root
@pytest.mark.parametrize("kind", KINDS)
def test_hsvs_equal_scipy_and_batch_equals_per_system(kind):
    A, Sb, Sc = random_batch(kind, seed=1)
    batch = balance_batch(A, Sb, Sc)
    assert len(batch) == A.shape[0]
    for i, sr in enumerate(batch):
        ref = scipy_hsv(A[i], Sb[i], Sc[i])
        k = sr.n_nonzero
        # eig(P Q) carries an absolute error of ~eps * sigma_1^2: compare the squares
        np.testing.assert_allclose(sr.hsv[:k] ** 2, ref[:k] ** 2, rtol=1e-7, atol=1e-13 * ref[0] ** 2)
        assert np.all(sr.hsv[k:] == 0) and np.all(ref[k:] <= 1e-6 * ref[0])
        single = square_root(*stein_gramians(A[i], Sb[i], Sc[i]))
        np.testing.assert_allclose(single.hsv, sr.hsv, rtol=1e-12, atol=1e-14 * sr.hsv[0])


@pytest.mark.parametrize("kind", KINDS)
def test_transforms_balance_the_system(kind):
    """T^- T = I, and the Gramians of (T^- A T, T^- F, G T) from scipy are both diag(sigma)."""
    A, Sb, Sc = random_batch(kind, S=1, seed=2)
    A, Sb, Sc = A[0], Sb[0], Sc[0]
    sr = square_root(*stein_gramians(A, Sb, Sc))
    k = sr.n_nonzero
    T, Tm = sr.transforms(np.arange(k))
    np.testing.assert_allclose(Tm @ T, np.eye(k), atol=1e-9)
    if k == A.shape[0]:  # full balanced realization (the random systems here are minimal)
        P_b, Q_b = scipy_gramians(Tm @ A @ T, Tm @ Sb @ Tm.conj().T, T.conj().T @ Sc @ T)
        scale = sr.hsv[0]
        np.testing.assert_allclose(P_b, np.diag(sr.hsv[:k]), atol=1e-8 * scale)
        np.testing.assert_allclose(Q_b, np.diag(sr.hsv[:k]), atol=1e-8 * scale)


def test_coordinate_energy_of_decoupled_and_dead_coordinates():
    a = np.array([0.5, 0.7, 0.8, 0.9])
    b, c = np.array([1.0, 0.0, 2.0, -1.0]), np.array([0.5, 1.5, -1.0, 0.0])  # 1 unreachable, 3 unseen
    sr = square_root(*stein_gramians(np.diag(a), np.outer(b, b), np.outer(c, c)))
    e = coordinate_energy(sr)
    assert e[1] < 1e-12 * e.max() and e[3] < 1e-12 * e.max() and (e[[0, 2]] > 0).all()
    assert e.sum() >= sr.hsv.sum() * (1 - 1e-12)  # sum_n |T[n, k] T^-[k, n]| >= (T^- T)_kk = 1
    one = coordinate_energy(square_root(*stein_gramians(np.array([[0.5]]), np.array([[4.0]]), np.array([[9.0]]))))
    np.testing.assert_allclose(one, [6.0 / (1 - 0.25)])


# ------------------------------------------------------------------------ balanced truncation
def test_batch_equals_truncate_system_by_system():
    A, Sb, Sc = random_batch("blocks", S=5, seed=3)
    orders = [1, 2, 3, 5, 7]
    batch = balanced_truncation_batch(A, Sb, Sc, orders)
    for i, tr in enumerate(batch):
        sr = square_root(*stein_gramians(A[i], Sb[i], Sc[i]))
        eye = np.eye(A.shape[-1])
        one = truncate(sr, A[i], eye, eye, orders[i], real=True)
        assert tr.order == one.order <= orders[i] and tr.notes == one.notes
        np.testing.assert_allclose(tr.lam, one.lam, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tr.C @ tr.B, one.C @ one.B, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("real", [True, False])
def test_batch_reduces_like_lti_balanced_truncation(real):
    """A batch of diagonal systems reduced by the batched routine has the transfer function of
    lti.balanced_truncation (the LRU's per-system routine) of the same system."""
    rng = np.random.default_rng(4)
    S, n, r = 3, 8, 3
    if real:
        lam = rng.uniform(-0.9, 0.95, (S, n)).astype(complex)
        B, C = rng.standard_normal((S, n, 1)), rng.standard_normal((S, 1, n))
    else:
        lam = rng.uniform(0.3, 0.95, (S, n)) * np.exp(1j * rng.uniform(0, 2 * np.pi, (S, n)))
        B = rng.standard_normal((S, n, 1)) + 1j * rng.standard_normal((S, n, 1))
        C = rng.standard_normal((S, 1, n)) + 1j * rng.standard_normal((S, 1, n))
    A = np.stack([np.diag(x if not real else x.real) for x in lam])
    Sb, Sc = B @ np.swapaxes(B, 1, 2).conj(), np.swapaxes(C, 1, 2).conj() @ C
    batch = balanced_truncation_batch(A, Sb, Sc, [r] * S, B=B, C=C, max_states=[r] * S)
    w = torch.linspace(0, np.pi, 201, dtype=torch.float64)
    for i, tr in enumerate(batch):
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=complex))  # noqa: E731
        full = DiagonalSystem(t(lam[i]), t(B[i]), t(C[i]), torch.zeros(1, dtype=torch.float64))
        ref, info = balanced_truncation(full, r)
        ours = DiagonalSystem(t(tr.lam), t(tr.B), t(tr.C), torch.zeros(1, dtype=torch.float64))
        assert tr.order == info.order == r
        if real:
            assert ours.n_states <= r  # pairs folded into one state each
            torch.testing.assert_close(frequency_response(ours, w), frequency_response(ref, w), rtol=1e-8, atol=1e-10)
        else:
            torch.testing.assert_close(frequency_response(ours, w, output="complex"),
                                       frequency_response(ref, w, output="complex"), rtol=1e-8, atol=1e-10)


def test_unfolded_pairs_give_an_exact_diagonal_form():
    A, Sb, Sc = random_batch("blocks", S=1, seed=5)
    tr = balanced_truncation_batch(A, Sb, Sc, [5], fold_pairs=False)[0]
    assert np.count_nonzero(tr.lam.imag) >= 2  # this case has a conjugate pair
    np.testing.assert_allclose(tr.B @ tr.C, np.eye(5), atol=1e-9)  # W^-1 T^- T W
    np.testing.assert_allclose(tr.B @ A[0] @ tr.C, np.diag(tr.lam), atol=1e-9)


# ------------------------------------------------------------------------------------- guards
def test_zero_hsvs_cap_the_order_and_a_zero_map_keeps_one_silent_state():
    a = np.array([0.9, -0.5, 0.3, 0.6])
    b, c = np.array([1.0, 1.0, 0.0, 0.0]), np.ones(4)   # two reachable states
    tr = balanced_truncation_batch(np.diag(a)[None], np.outer(b, b)[None], np.outer(c, c)[None], [3])[0]
    assert tr.order == 2 and any("only 2 nonzero Hankel singular value" in n for n in tr.notes)
    zero = np.zeros((4, 4))
    for domain, G, slowest in (("discrete", np.diag(a), 0.9), ("continuous", np.diag([-3.0, -0.2, -1.0, -5.0]), -0.2)):
        tr = balanced_truncation_batch(np.diag(a)[None], zero[None], np.outer(c, c)[None], [2], F=G[None],
                                       domain=domain)[0]
        assert tr.order == 0 and tr.lam.tolist() == [slowest] and not tr.B.any() and not tr.C.any()
        assert any("every Hankel singular value is zero" in n for n in tr.notes)


def test_silent_state_of_a_real_system_is_the_upper_member_of_a_pair():
    G = np.array([[-0.1, -2.0, 0.0], [2.0, -0.1, 0.0], [0.0, 0.0, -1.0]])
    tr = truncate(square_root(np.zeros((3, 3)), np.eye(3)), G, np.eye(3), np.eye(3), 2, real=True,
                  domain="continuous")
    np.testing.assert_allclose(tr.lam, [-0.1 + 2.0j])


def test_ill_conditioned_eigenvectors_lower_the_order_then_give_up():
    A, Sb, Sc = random_batch("dense", S=1, n=12, seed=6)
    sr = square_root(*stein_gramians(A[0], Sb[0], Sc[0]))
    eye = np.eye(12)
    T, Tm = sr.transforms(np.arange(8))
    cond8 = np.linalg.cond(np.linalg.eig(Tm @ A[0] @ T)[1])
    tr = truncate(sr, A[0], eye, eye, 8, real=False, max_cond=cond8 * (1 - 1e-3))
    assert tr.order < 8 and sum("near-defective" in n for n in tr.notes) == 8 - tr.order
    T, Tm = sr.transforms(np.arange(tr.order))
    assert np.linalg.cond(np.linalg.eig(Tm @ A[0] @ T)[1]) <= cond8
    for domain in ("discrete", "continuous"):
        with pytest.raises(ValueError, match="near-defective"):
            truncate(sr, A[0], eye, eye, MAX_COND_DROPS + 3, real=False, domain=domain, max_cond=1.0)


def test_state_budget_counts_real_eigenvalues_as_whole_states():
    """Real poles in a real system: the order is lowered until the diagonal form fits max_states."""
    a = np.array([0.95, -0.7, 0.5, 0.2, -0.3, 0.6])
    b, c = np.ones(6), np.ones(6)
    tr = balanced_truncation_batch(np.diag(a)[None], np.outer(b, b)[None], np.outer(c, c)[None], [4],
                                   max_states=[2])[0]
    assert tr.lam.size <= 2 and tr.order <= 4
    unbounded = balanced_truncation_batch(np.diag(a)[None], np.outer(b, b)[None], np.outer(c, c)[None], [4])[0]
    assert unbounded.order == 4 and unbounded.lam.size == 4   # every reduced pole of a symmetric system is real


def test_clamp_modulus_moves_eigenvalues_inside_the_disk():
    notes = []
    lam = np.array([0.5 + 0.1j, 1.0 + 0j, 0.8 + 0.8j, 1 - 1e-9 + 0j])
    out = clamp_modulus(lam, notes)
    assert np.abs(out).max() <= 1 - MODULUS_MARGIN + 1e-16
    np.testing.assert_allclose(np.angle(out), np.angle(lam))
    assert out[0] == lam[0] and len(notes) == 1 and "3 reduced eigenvalue" in notes[0]
    assert np.float32(np.abs(out).max()) < 1.0  # still below 1 when stored in float32


def test_clamp_real_part_moves_eigenvalues_left_of_the_floor():
    notes = []
    lam = np.array([-1.0, 0.3, -1e-6 + 2j, -REAL_PART_MARGIN])
    out = clamp_real_part(np.array([-1.0, 0.3, -1e-6, -1e-4]), notes)   # a real array, as eig returns
    np.testing.assert_array_equal(out, [-1.0, -REAL_PART_MARGIN, -REAL_PART_MARGIN, -REAL_PART_MARGIN])
    assert len(notes) == 1 and "2 reduced eigenvalue" in notes[0]
    notes = []
    out = clamp_real_part(lam, notes)
    np.testing.assert_array_equal(out.imag, lam.imag)   # only the real part moves
    assert (out.real <= -REAL_PART_MARGIN).all() and "2 reduced eigenvalue" in notes[0]


def test_unstable_projected_generator_is_clamped_end_to_end():
    a = np.array([0.6, 0.7, 0.8, 0.9])
    b, c = np.ones(4), np.ones(4)
    tr = balanced_truncation_batch(np.diag(a)[None], np.outer(b, b)[None], np.outer(c, c)[None], [2],
                                   F=np.eye(4)[None], domain="continuous")[0]
    assert (tr.lam.real <= -REAL_PART_MARGIN).all() and any("floor" in n for n in tr.notes)


def test_modal_form_of_a_real_matrix_maps_pairs_to_one_state():
    rng = np.random.default_rng(15)
    A = rng.standard_normal((5, 5)) * 0.3
    B, C = rng.standard_normal((5, 2)), rng.standard_normal((3, 5))
    modal = modal_form(A, B, C, real=True)
    n_real = int(np.count_nonzero(np.linalg.eigvals(A).imag == 0))
    assert modal.lam.size == n_real + (5 - n_real) // 2
    red = DiagonalSystem(torch.from_numpy(modal.lam.astype(complex)), torch.from_numpy(modal.B),
                         torch.from_numpy(modal.C), torch.zeros(3, 2))
    ref = np.array([C @ np.linalg.matrix_power(A, k) @ B for k in range(30)])
    np.testing.assert_allclose(impulse_response(red, 30).numpy(), ref, atol=1e-12)


def test_dense_lti_system_and_its_numbers_go_through_this_module():
    """lti.balanced_truncation of a DenseSystem keeps the order the batched routine keeps."""
    A, Sb, Sc = random_batch("dense", S=1, n=7, seed=8)
    rng = np.random.default_rng(8)
    B = rng.standard_normal((7, 1)) + 1j * rng.standard_normal((7, 1))
    C = rng.standard_normal((1, 7)) + 1j * rng.standard_normal((1, 7))
    sys = DenseSystem(torch.from_numpy(A[0]), torch.from_numpy(B), torch.from_numpy(C), torch.zeros(1))
    red, info = balanced_truncation(sys, 3)
    tr = balanced_truncation_batch(A, (B @ B.conj().T)[None], (C.conj().T @ C)[None], [3], B=B[None], C=C[None])[0]
    np.testing.assert_allclose(np.sort_complex(tr.lam), np.sort_complex(red.lam.numpy()), rtol=1e-8, atol=1e-10)
    assert info.order == tr.order == 3
