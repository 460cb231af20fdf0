"""Per-batch input transforms: the normalisation applied when raw (``uint8``) inputs become
``float32`` batches.

Three modes, chosen with the ``normalize=`` option of the image data sets:

* ``"unit"`` (default): ``x / max_value``, pixels in ``[0, 1]`` (``max_value`` 255 for MNIST and
  CIFAR, 16 for sklearn digits).
* ``"standard"``: ``(x - mean) / std`` per channel, with ``mean`` and ``std`` computed on the
  training split only (after validation is carved out), never on validation or test data.
* ``"none"``: the raw values as ``float32``.

Statistics of ``uint8`` data are computed exactly from per-channel histograms, so no float copy
of the whole split is ever made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from shrinkssm._checks import check_choice

__all__ = ["NORMALIZATIONS", "Normalize", "channel_stats", "make_normalize"]

NORMALIZATIONS = ("unit", "standard", "none")
_CHUNK = 4096  # samples per chunk when accumulating float statistics


@dataclass(frozen=True)
class Normalize:
    """``x -> (x - mean) / std`` over the last (channel) axis, returned as ``float32``.

    Parameters
    ----------
    mean, std : tuple of float
        One value per channel, or a single value for all channels; ``std > 0``.

    Call with ``x: (B, L, C)`` of any real dtype; returns ``(B, L, C) float32``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in np.atleast_1d(self.mean)))
        object.__setattr__(self, "std", tuple(float(s) for s in np.atleast_1d(self.std)))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std has {len(self.std)}")
        if not all(math.isfinite(m) for m in self.mean) or not all(
            math.isfinite(s) and s > 0 for s in self.std
        ):
            raise ValueError(f"mean must be finite and std finite and > 0, got {self.mean}, {self.std}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.mean) not in (1, x.shape[-1]):
            raise ValueError(f"Normalize has {len(self.mean)} channels, input has {x.shape[-1]}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        return (x.to(torch.float32) - mean) / std


def channel_stats(inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation.

    Parameters
    ----------
    inputs : torch.Tensor
        ``(num, L, C)``, any real dtype; ``num * L > 0``.

    Returns
    -------
    mean, std : numpy.ndarray
        ``(C,) float64`` each.
    """
    if inputs.ndim != 3 or inputs.shape[0] * inputs.shape[1] == 0:
        raise ValueError(f"channel_stats needs non-empty (num, L, C) inputs, got {tuple(inputs.shape)}")
    n_channels = inputs.shape[2]
    if inputs.dtype == torch.uint8:
        flat = inputs.reshape(-1, n_channels).numpy()
        values = np.arange(256, dtype=np.float64)
        mean, var = np.empty(n_channels), np.empty(n_channels)
        for c in range(n_channels):
            hist = np.bincount(flat[:, c], minlength=256).astype(np.float64)
            total = hist.sum()
            mean[c] = hist @ values / total
            var[c] = hist @ (values - mean[c]) ** 2 / total
        return mean, np.sqrt(var)
    count, total = 0, np.zeros(n_channels)
    for start in range(0, inputs.shape[0], _CHUNK):
        chunk = inputs[start : start + _CHUNK].to(torch.float64).reshape(-1, n_channels)
        count += chunk.shape[0]
        total += chunk.sum(0).numpy()
    mean = total / count
    squares = np.zeros(n_channels)
    for start in range(0, inputs.shape[0], _CHUNK):
        chunk = inputs[start : start + _CHUNK].to(torch.float64).reshape(-1, n_channels)
        squares += ((chunk - torch.from_numpy(mean)) ** 2).sum(0).numpy()
    return mean, np.sqrt(squares / count)


def make_normalize(mode: str, train_inputs: torch.Tensor, *, max_value: float) -> tuple[Normalize, dict]:
    """Build the transform for ``mode`` (see the module docstring) and a record for ``meta``.

    Parameters
    ----------
    mode : str
        One of :data:`NORMALIZATIONS`.
    train_inputs : torch.Tensor
        ``(num, L, C)`` raw training inputs (used by ``"standard"`` only).
    max_value : float
        Largest raw value (used by ``"unit"`` only).

    Returns
    -------
    transform : Normalize
    record : dict
        ``{"mode", "mean", "std"}`` as plain lists, for the run's metadata.
    """
    if mode == "unit":
        transform = Normalize(mean=(0.0,), std=(float(max_value),))
    elif mode == "standard":
        mean, std = channel_stats(train_inputs)
        # A constant channel is only centred (std 1), rather than divided by zero.
        transform = Normalize(mean=tuple(mean), std=tuple(np.where(std > 0, std, 1.0)))
    elif mode == "none":
        transform = Normalize(mean=(0.0,), std=(1.0,))
    else:
        check_choice("normalize", mode, NORMALIZATIONS)
    return transform, {"mode": mode, "mean": list(transform.mean), "std": list(transform.std)}
