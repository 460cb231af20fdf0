"""The *folded* form of the Mamba-2 reduction: the truncated transforms folded into the weights.

The exact form (:mod:`~shrinkssm.nn.mamba2.reduction`) maps ``B_g`` and ``C_g`` after the
convolution and SiLU. The folded form moves the maps of group ``g``, ``M_in = T_r^-`` and
``M_out = T_r^T`` (each ``(r, N)``), *before* them, into the rows of ``in_proj`` that produce
``B_g`` and ``C_g`` and into the matching channels of the depthwise convolution. The result is a
plain layer with ``d_state = r``, no transform buffers and no extra cost per token.

With ``s_i[t]`` the projected signal of channel ``i`` (a row of ``in_proj``), ``w_i`` its kernel
(``d_conv`` taps) and ``b_i`` its conv bias, the exact form computes for a new channel ``j`` (row
``c = M[j]``)::

    B'_j[t] = sum_i c_i silu((w_i * s_i)[t] + b_i)           (* the causal convolution)

and the folded form::

    B'_j[t] ~ silu((w'_j * s'_j)[t] + b'_j)                  s'_j = sum_i c_i s_i  (in_proj rows M W)

What is folded, and how (``fold_maps``):

* **in_proj rows** (and their biases): ``W' = M W``: exact, a linear map of linear maps.
* **conv bias**: ``b'_j = sum_i c_i b_i``, plus, when ``in_proj`` has a bias ``beta``, the
  steady-state correction ``sum_i c_i beta_i sum_k w_i[k] - (M beta)_j sum_k w'_j[k]`` (the
  constant part of ``s`` passes the kernels it meets; the first ``d_conv - 1`` positions, where the
  causal window still holds zero padding, are not corrected).
* **conv kernels**: a depthwise kernel mixes no channels, so ``T`` passes through it exactly only
  when the channels it mixes share one kernel. Per tap ``k`` the new kernel is the least-squares
  fit of the pre-activation ``sum_i c_i w_i[k] s_i`` by ``w'_j[k] s'_j`` for inputs ``u`` white in
  time with unit covariance, i.e. ``s`` with covariance ``S = W W^T`` (the rows' Gram matrix)::

      w'_j[k] = (c^T S (c o w[:, k])) / (c^T S c)            (o: the element-wise product)

  (``sum_i c_i^2 w_i[k] / sum_i c_i^2`` when ``c^T S c = 0``; zero for a zero row). Exact when the
  kernels of the mixed channels are equal; otherwise **approximate**.
* **the SiLU**: ``silu(sum_i c_i p_i) != sum_i c_i silu(p_i)`` unless ``M`` only selects and
  permutes channels; nothing corrects it, so the folded layer is **approximate** whenever ``M``
  mixes. Training continues after the reduction.
* **the basis** (:func:`coordinate_basis`): any invertible ``S`` gives the same reduced linear
  system (``S T_r^-``, ``T_r S^-1``) but a different folded layer; the reduction takes the ``S``
  for which ``S T_r^-`` is the identity on ``r`` pivot columns, so that at full rank the folded
  layer is the original and each new channel is an old one plus what the truncation adds.

So the folded layer equals the exact reduced layer (to rounding) when every map only selects
channels (rows of the identity: a subset of the states, any order), and differs otherwise; the
change of output on held-out data is measured by the tests and quoted in the README.
"""

from __future__ import annotations

import numpy as np

__all__ = ["coordinate_basis", "fit_depthwise_kernels", "fold_maps"]


def coordinate_basis(M: np.ndarray) -> np.ndarray:
    """The change of the reduced basis ``S`` (``r x r``) that makes ``S M`` the identity on ``r``
    columns ``J`` of ``M``, chosen by QR with column pivoting (the best-conditioned ``M[:, J]``).

    Any invertible ``S`` gives the same reduced system (``T_r^- -> S T_r^-``, ``T_r -> T_r S^-1``);
    in the folded form it decides what the SiLU sees. With this ``S`` the new channel ``j`` is
    the old channel ``J_j`` plus what the truncation adds: at full rank ``S M = I`` (the folded
    layer is the original), and the closer the kept subspace is to ``r`` of the states, the closer
    both maps are to selections, for which the fold is exact.

    ``M: (r, N)`` float64 of full row rank -> ``S: (r, r)`` float64.
    """
    import scipy.linalg

    r = M.shape[0]
    _, _, piv = scipy.linalg.qr(M, mode="economic", pivoting=True)
    return np.linalg.inv(M[:, np.sort(piv[:r])])


def fit_depthwise_kernels(M: np.ndarray, S: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The folded kernels of the module docstring.

    Parameters
    ----------
    M : (r, N) float64
        The map of the group's channels (``T_r^-`` for ``B``, ``T_r^T`` for ``C``).
    S : (N, N) float64
        Covariance of the channels' projected signals (``W W^T``, symmetric PSD).
    w : (N, K) float64
        The channels' kernels, ``K = d_conv`` taps.

    Returns
    -------
    (r, K) float64: per new channel and tap, ``(c^T S (c o w[:, k])) / (c^T S c)``.
    """
    MS = M @ S                                                    # (r, N)
    weights = MS * M                                              # (r, N): c_l (S c)_l
    den = weights.sum(1)                                          # (r,) c^T S c
    scale = np.abs(MS).sum(1) * np.abs(M).sum(1)
    flat = den <= 1e-12 * np.maximum(scale, np.finfo(float).tiny)
    if flat.any():                                                # S sees nothing of c: plain weights c^2
        weights[flat] = M[flat] ** 2
        den = np.where(flat, weights.sum(1), den)
    out = weights @ w                                             # (r, K)
    zero = den <= 0
    den = np.where(zero, 1.0, den)
    out = out / den[:, None]
    out[zero] = 0.0
    return out


def fold_maps(M: np.ndarray, W: np.ndarray, beta: np.ndarray | None, w: np.ndarray,
              b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Fold the map ``M`` of one group's ``B`` (or ``C``) channels into their weights.

    Parameters
    ----------
    M : (r, N) float64
        The map (rows ``T_r^-`` for ``B``, ``T_r^T`` for ``C``).
    W : (N, d_model) float64
        The channels' rows of ``in_proj.weight``.
    beta : (N,) float64 or None
        Their ``in_proj`` biases.
    w : (N, K) float64
        Their depthwise kernels (``conv1d.weight[:, 0, :]``).
    b : (N,) float64 or None
        Their conv biases.

    Returns
    -------
    W' (r, d_model), beta' (r,) or None, w' (r, K), b' (r,) or None (module docstring; ``b'`` is
    None only when the conv has no bias, and then no bias correction is made).
    """
    W2 = M @ W
    w2 = fit_depthwise_kernels(M, W @ W.T, w)
    beta2 = None if beta is None else M @ beta
    b2 = None
    if b is not None:
        b2 = M @ b
        if beta is not None:
            b2 = b2 + M @ (beta * w.sum(1)) - beta2 * w2.sum(1)
    return W2, beta2, w2, b2
