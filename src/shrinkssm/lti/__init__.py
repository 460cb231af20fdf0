"""Linear time-invariant systems in discrete time: Gramians, Hankel singular values, reduction.

Plain tensor mathematics: nothing here knows about ``nn.Module``, optimizers or data.

Conventions (written down once; every other docstring in the package refers back here)
-------------------------------------------------------------------------------------
* **Discrete time.** A diagonal (LRU-style) system is::

      x[k] = diag(lam) @ x[k-1] + B @ u[k]          x[k] complex (N,), u[k] real (H_in,)
      y[k] = Re(C @ x[k]) + D u[k]                  y[k] real (H_out,)

  with ``lam: (N,) complex``, ``B: (N, H_in) complex``, ``C: (H_out, N) complex`` and ``D`` either
  ``(H,)`` (elementwise skip, as in the LRU) or ``(H_out, H_in)`` (dense skip). A general system
  has a dense ``A: (N, N)`` in place of ``diag(lam)``.
* **Two views of the same layer** (``output=``):

  - ``"complex"``: the system ``u -> C x`` (complex output). This is what the CompreSSM paper
    measures; its error bound also bounds the real output ``Re(C x)``.
  - ``"real"``: the exact real map ``u -> Re(C x)``, through the 2N conjugate realization
    ``A~ = diag(lam, conj(lam))``, ``B~ = [B; conj(B)]``, ``C~ = [C, conj(C)] / 2``. Its HSVs are
    the true HSVs of the layer; there are 2N of them (the *real order*). Matrices computed in
    this view (``gramians(sys, output="real")``, the reduction) use the equivalent real form with
    state ``[Re x; Im x]`` (``docs/design.md`` §5, :func:`real_realization`), which has the same HSVs.
* **Gramians** solve Stein (discrete Lyapunov) equations, conjugate transposes (``^H``)
  everywhere::

      P = A P A^H + B B^H          (controllability)   P_ij = (B B^H)_ij / (1 - lam_i conj(lam_j))
      Q = A^H Q A + C^H C          (observability)     Q_ij = (C^H C)_ij / (1 - conj(lam_i) lam_j)

  Note that the conjugate sits on the *other* side in Q.
* **Hankel singular values** ``sigma = sqrt(eig(P Q))`` are real, >= 0 and returned in
  **descending** order. "Energy" is the plain sum of sigma (not sigma**2). ``tau`` is the
  fraction of that energy that a reduction *discards*.
* **Sizes.** ``N`` / ``rank`` count the stored complex states of a diagonal system (what a scan
  pays for). Where a real order is meant (``output="real"``) it is called ``order``.
* **Precision.** Computation runs in complex128 / float64 whatever the input dtype; results come
  back in the caller's dtype unless a function says otherwise.
* **Shape legend:** ``B`` batch, ``L`` length, ``H`` width (inputs/outputs), ``N`` states.
* **Where it runs.** Every routine detaches its inputs and computes on the CPU (NumPy / SciPy /
  LAPACK); results go back to the system's device. Nothing here is differentiable.
* **Exceptions to "caller's dtype".** Hankel singular values are always **float64** (on the
  system's device); ``ReductionInfo.hsv`` is a float64 CPU tensor. Norms are Python floats.
* **Stability.** Containers accept any finite system; Gramians, HSVs, reductions, frequency
  responses and norms need ``|eigenvalue| < 1`` and raise ``ValueError`` otherwise.
* **Delay convention of the Gramians.** The Stein equations above are those of the system
  ``x[k+1] = A x[k] + B u[k]``, ``y[k] = C x[k]`` (as in the paper and in slycot / MATLAB). This
  package's output ``y[k] = Re(C x[k])`` reads the state after the input of the same step, so its
  transfer function is ``z`` times that one: same modulus on the unit circle, hence the same H∞
  norm and the same balanced-truncation bound ``2 * sum(discarded sigma)``.

Modules
-------
:mod:`~shrinkssm.lti.systems` (containers, realizations), :mod:`~shrinkssm.lti.balancing`
(the square-root method on arrays, batched, and its guards against sigma = 0, |mu| >= 1 and
near-defective reduced matrices: the one balancing both layer kinds use),
:mod:`~shrinkssm.lti.gramians` (Gramians, HSVs, the energy rule), :mod:`~shrinkssm.lti.reduction`
(balanced truncation and alternatives of a system), :mod:`~shrinkssm.lti.analysis` (impulse /
frequency responses, norms).
"""
from ._blas import blas_threads, set_blas_threads
from .analysis import frequency_response, h2_norm, hinf_norm, impulse_response
from .balancing import SELECTIONS
from .gramians import (
    OUTPUTS,
    discrete_lyapunov,
    dlyap,
    gramians,
    hankel_singular_values,
    hsvd,
    rank_for_energy,
)
from .reduction import (
    METHODS,
    SCORES,
    ReductionInfo,
    balanced_states,
    balanced_singular_perturbation,
    balanced_truncation,
    balred,
    modal_truncation,
    random_truncation,
    reduce_system,
)
from .systems import (
    DenseSystem,
    DiagonalSystem,
    conjugate_realization,
    real_realization,
    to_dense,
)

__all__ = [
    "DiagonalSystem",
    "DenseSystem",
    "conjugate_realization",
    "real_realization",
    "to_dense",
    "gramians",
    "discrete_lyapunov",
    "dlyap",
    "hankel_singular_values",
    "hsvd",
    "rank_for_energy",
    "ReductionInfo",
    "balanced_truncation",
    "balred",
    "balanced_singular_perturbation",
    "modal_truncation",
    "random_truncation",
    "reduce_system",
    "balanced_states",
    "METHODS",
    "OUTPUTS",
    "SELECTIONS",
    "SCORES",
    "impulse_response",
    "frequency_response",
    "hinf_norm",
    "h2_norm",
    "set_blas_threads",
    "blas_threads",
]
