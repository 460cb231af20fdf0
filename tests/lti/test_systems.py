"""Tests of shrinkssm.lti.systems: validation, dtypes, and the two 2N realizations."""
import numpy as np
import pytest
import torch
from lti_helpers import impulse_by_simulation, random_dense, random_lru, real_form

from shrinkssm.lti import (
    DenseSystem,
    DiagonalSystem,
    conjugate_realization,
    real_realization,
    to_dense,
)


def _parts(N=3, H=2):
    return (torch.full((N,), 0.5 + 0.1j, dtype=torch.complex128), torch.ones(N, H, dtype=torch.complex128),
            torch.ones(H, N, dtype=torch.complex128), torch.zeros(H, dtype=torch.float64))


def test_properties_and_dense_D():
    sys = DiagonalSystem(*_parts(3, 2))
    assert (sys.n_states, sys.n_inputs, sys.n_outputs) == (3, 2, 2)
    assert sys.dtype == torch.complex128 and sys.D.dtype == torch.float64
    assert torch.equal(sys.D_matrix, torch.zeros(2, 2, dtype=torch.float64))
    dense = DiagonalSystem(sys.lam, torch.ones(3, 2), torch.ones(4, 3), torch.ones(4, 2))
    assert (dense.n_inputs, dense.n_outputs) == (2, 4)
    assert dense.D_matrix.shape == (4, 2)


def test_real_inputs_promoted_to_complex():
    sys = DiagonalSystem(torch.tensor([0.5, -0.2]), torch.ones(2, 1), torch.ones(1, 2), torch.zeros(1))
    assert sys.dtype == torch.complex64 and sys.lam.dtype == torch.complex64 and sys.D.dtype == torch.float32
    mixed = DiagonalSystem(torch.tensor([0.5], dtype=torch.float32), torch.ones(1, 1, dtype=torch.complex128),
                           torch.ones(1, 1), torch.zeros(1, dtype=torch.float32))
    assert mixed.dtype == torch.complex128 and mixed.D.dtype == torch.float64
    ints = DiagonalSystem([0.5], [[1]], [[2]], [3])  # array-likes, integer entries
    assert ints.B.dtype.is_complex and float(ints.D[0]) == 3.0


def test_to_changes_dtype():
    sys = random_lru(4, 2)
    s32 = sys.to(torch.complex64)
    assert s32.dtype == torch.complex64 and s32.D.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        sys.to(torch.float32)


@pytest.mark.parametrize("field,value,match", [
    ("lam", torch.ones(2, 2, dtype=torch.complex128), "lam must be 1-D"),
    ("lam", torch.zeros(0, dtype=torch.complex128), "at least one state"),
    ("B", torch.ones(4, 2, dtype=torch.complex128), "B has shape"),
    ("C", torch.ones(2, 4, dtype=torch.complex128), "C has shape"),
    ("D", torch.zeros(3), r"D has shape"),
    ("D", torch.zeros(2, 3), r"D has shape"),
    ("D", torch.zeros(2, 2, 2), "1-D .* or 2-D"),
    ("D", torch.zeros(2, dtype=torch.complex128), "D must be real"),
    ("B", torch.ones(3, 2, dtype=torch.bool), "bool"),
    ("B", torch.ones(3, 2, dtype=torch.float16), "float16"),
    ("B", "abc", "array-like"),
])
def test_bad_shapes_and_dtypes(field, value, match):
    parts = dict(zip(["lam", "B", "C", "D"], _parts(3, 2)))
    parts[field] = value
    with pytest.raises(ValueError, match=match):
        DiagonalSystem(**parts)


@pytest.mark.parametrize("field", ["lam", "B", "C", "D"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rejected(field, bad):
    parts = dict(zip(["lam", "B", "C", "D"], _parts(3, 2)))
    t = parts[field].clone()
    t.view(-1)[0] = bad
    parts[field] = t
    with pytest.raises(ValueError, match=f"{field} contains NaN or inf"):
        DiagonalSystem(**parts)


def test_elementwise_D_needs_square():
    lam, B, _, _ = _parts(3, 2)
    with pytest.raises(ValueError, match="H_in == H_out"):
        DiagonalSystem(lam, B, torch.ones(4, 3), torch.zeros(2))


def test_dense_system_validation():
    A = torch.eye(3) * 0.5
    sys = DenseSystem(A, torch.ones(3, 1), torch.ones(2, 3), torch.zeros(2, 1))
    assert sys.dtype == torch.complex64 and sys.n_states == 3
    with pytest.raises(ValueError, match="square"):
        DenseSystem(torch.ones(3, 2), torch.ones(3, 1), torch.ones(1, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="A contains NaN"):
        DenseSystem(torch.full((3, 3), float("nan")), torch.ones(3, 1), torch.ones(1, 3), torch.zeros(1))
    with pytest.raises(ValueError, match="B has shape"):
        DenseSystem(A, torch.ones(2, 1), torch.ones(1, 3), torch.zeros(1))


def test_frozen():
    sys = random_lru(2, 1)
    with pytest.raises(AttributeError):
        sys.lam = torch.zeros(2)


def test_real_realization_layout():
    """The matrices are exactly the blocks of docs/design.md §5."""
    sys = random_lru(5, 2, 3, seed=1)
    rs = real_realization(sys)
    A, B, C, _ = real_form(sys)
    assert rs.n_states == 10
    np.testing.assert_array_equal(rs.A.real.numpy(), A)
    np.testing.assert_array_equal(rs.B.real.numpy(), B)
    np.testing.assert_array_equal(rs.C.real.numpy(), C)
    assert float(rs.A.imag.abs().max()) == 0.0
    assert torch.equal(rs.D, sys.D)


@pytest.mark.parametrize("make", [lambda: random_lru(4, 2, seed=2), lambda: random_lru(3, 1, 2, seed=3),
                                  lambda: random_dense(3, 2, seed=4)])
def test_realizations_have_the_same_real_map(make):
    sys = make()
    ref = impulse_by_simulation(sys, 25)
    for other in (conjugate_realization(sys), real_realization(sys), to_dense(sys)):
        np.testing.assert_allclose(impulse_by_simulation(other, 25), ref, atol=1e-12)


def test_conjugate_realization_structure():
    sys = random_lru(3, 2, seed=5)
    cs = conjugate_realization(sys)
    assert isinstance(cs, DiagonalSystem) and cs.n_states == 6
    torch.testing.assert_close(cs.lam[3:], sys.lam.conj())
    torch.testing.assert_close(cs.C[:, :3], sys.C / 2)
    dense = conjugate_realization(random_dense(3, 1, seed=6))
    assert isinstance(dense, DenseSystem) and dense.n_states == 6


def test_realization_rejects_non_systems():
    with pytest.raises(ValueError, match="DiagonalSystem or DenseSystem"):
        real_realization(torch.zeros(3))
