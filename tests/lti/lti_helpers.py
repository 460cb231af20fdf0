"""Shared helpers for the shrinkssm.lti tests: random systems and plain reference computations.

The references here are deliberately naive (Python loops, explicit sums) so that they share no
code path with the library.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from shrinkssm.lti import DenseSystem, DiagonalSystem, frequency_response


def random_lru(N: int, H_in: int = 2, H_out: int | None = None, *, rmin: float = 0.5, rmax: float = 0.95,
               seed: int = 0, dtype=torch.complex128, dense_D: bool = False,
               max_phase: float = 2 * math.pi) -> DiagonalSystem:
    """An LRU-like diagonal system: |lam| uniform on [rmin, rmax], B scaled by sqrt(1 - |lam|^2)."""
    H_out = H_in if H_out is None else H_out
    rng = np.random.default_rng(seed)
    r = rng.uniform(rmin, rmax, N)
    lam = r * np.exp(1j * rng.uniform(0, max_phase, N))
    gamma = np.sqrt(1 - r**2)
    B = (rng.standard_normal((N, H_in)) + 1j * rng.standard_normal((N, H_in))) / math.sqrt(2 * H_in) * gamma[:, None]
    C = (rng.standard_normal((H_out, N)) + 1j * rng.standard_normal((H_out, N))) / math.sqrt(N)
    D = rng.standard_normal((H_out, H_in)) if (dense_D or H_in != H_out) else rng.standard_normal(H_in)
    sys = DiagonalSystem(torch.from_numpy(lam), torch.from_numpy(B), torch.from_numpy(C), torch.from_numpy(D))
    return sys.to(dtype)


def random_dense(N: int, H_in: int = 2, H_out: int | None = None, *, rho: float = 0.9, seed: int = 0) -> DenseSystem:
    """A non-normal dense stable system with spectral radius rho."""
    H_out = H_in if H_out is None else H_out
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))
    A = G / np.abs(np.linalg.eigvals(G)).max() * rho
    B = rng.standard_normal((N, H_in)) + 1j * rng.standard_normal((N, H_in))
    C = rng.standard_normal((H_out, N)) + 1j * rng.standard_normal((H_out, N))
    D = rng.standard_normal((H_out, H_in))
    return DenseSystem(torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C), torch.from_numpy(D))


def state_matrix(sys) -> np.ndarray:
    if isinstance(sys, DiagonalSystem):
        return np.diag(sys.lam.detach().cpu().to(torch.complex128).numpy())
    return sys.A.detach().cpu().to(torch.complex128).numpy()


def np_sys(sys):
    """(A, B, C, D_matrix) as complex128 / float64 NumPy arrays."""
    return (state_matrix(sys), sys.B.detach().cpu().to(torch.complex128).numpy(),
            sys.C.detach().cpu().to(torch.complex128).numpy(), sys.D_matrix.detach().cpu().double().numpy())


def real_form(sys):
    """The real 2N form of docs/design.md §5, built independently of the library: (A, B, C, D) float64."""
    A, B, C, D = np_sys(sys)
    Ar = np.block([[A.real, -A.imag], [A.imag, A.real]])
    return Ar, np.vstack([B.real, B.imag]), np.hstack([C.real, -C.imag]), D


def simulate(sys, u: np.ndarray) -> np.ndarray:
    """Plain loop: x[k] = A x[k-1] + B u[k], y[k] = Re(C x[k]) + D u[k]; u (L, H_in) -> y (L, H_out)."""
    A, B, C, D = np_sys(sys)
    x = np.zeros(A.shape[0], dtype=complex)
    ys = []
    for k in range(u.shape[0]):
        x = A @ x + B @ u[k]
        ys.append((C @ x).real + D @ u[k])
    return np.array(ys)


def impulse_by_simulation(sys, length: int) -> np.ndarray:
    """(L, H_out, H_in): column j is the simulated response to a unit impulse on input j."""
    H_in = sys.n_inputs
    out = np.zeros((length, sys.n_outputs, H_in))
    for j in range(H_in):
        u = np.zeros((length, H_in))
        u[0, j] = 1.0
        out[:, :, j] = simulate(sys, u)
    return out


def error_frequencies(*systems, n_uniform: int = 4096, output: str = "real") -> torch.Tensor:
    """A uniform grid plus 7 points around every pole of every system (where narrow peaks sit)."""
    if output == "real":
        grid = [np.linspace(0, np.pi, n_uniform)]
    else:
        grid = [np.linspace(-np.pi, np.pi, n_uniform, endpoint=False)]
    for sys in systems:
        lam = np.linalg.eigvals(state_matrix(sys))
        width = np.maximum(1 - np.abs(lam), 1e-9)
        for off in (-3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0):
            w = np.angle(lam) + off * width
            grid.append(np.abs(np.angle(np.exp(1j * w))) if output == "real" else w)
    return torch.from_numpy(np.unique(np.concatenate(grid)))


def max_error(sys, red, output: str = "real", n_uniform: int = 4096) -> float:
    """max over a dense grid of sigma_max(G(w) - G_r(w))."""
    w = error_frequencies(sys, red, n_uniform=n_uniform, output=output)
    diff = (frequency_response(sys, w, output=output).to(torch.complex128)
            - frequency_response(red, w, output=output).to(torch.complex128))
    return float(torch.linalg.matrix_norm(diff, ord=2).max())
