"""One split of a sequence data set held in memory, and the batches drawn from it.

:class:`SequenceData` stores inputs compactly (images stay ``uint8``) and converts them per batch.
:meth:`SequenceData.iterate` draws batches in an order that depends only on ``(seed, epoch)``, so a
run resumed at batch ``k`` of epoch ``e`` sees exactly the batches the uninterrupted run would
have seen, and shards every global batch over data-parallel ranks. The recipe follows the usual
epoch-seeded sampler (as ``torch.utils.data.DistributedSampler`` with ``set_epoch``), with the
batch size counted globally so that the samples of a step do not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = ["IGNORE_INDEX", "Batch", "SequenceData"]

IGNORE_INDEX = -100  # per-step class targets at padded steps (torch's cross-entropy default)

_SHUFFLE_STREAM = 0x5EED  # first word of the SeedSequence of the batch order (apart from splits)

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Batch:
    """A batch of sequences, ready for a model.

    Attributes
    ----------
    x : torch.Tensor
        ``(B, L, C) float32`` features, or ``(B, L) int64`` tokens.
    y : torch.Tensor
        Targets: ``(B,) int64`` class labels; ``(B, L) int64`` per-step classes (padded steps hold
        :data:`IGNORE_INDEX`); ``(B, D) float32`` or ``(B, L, D) float32`` for regression.
    mask : torch.Tensor or None
        ``(B, L) bool``, True at valid steps (valid steps come first: ``mask[b, k] = k < length[b]``).
        None when every sequence of the batch has full length ``L``.
    index : torch.Tensor or None
        ``(B,) int64`` positions of the samples in their :class:`SequenceData` (for tracing).
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None = None
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor moved to ``device`` (``index`` stays on the CPU)."""
        mask = None if self.mask is None else self.mask.to(device, non_blocking=non_blocking)
        return replace(
            self,
            x=self.x.to(device, non_blocking=non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            mask=mask,
        )


def _as_tensor(array: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """CPU tensor sharing memory with ``array`` where possible."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().contiguous()
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold numbers, found dtype {array.dtype}")
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def _check_non_negative_int(value: int, name: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _checked_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """Features ``(num, L, C)`` (``uint8`` kept, else ``float32``) or integer tokens ``(num, L)``."""
    if inputs.ndim == 2 and inputs.dtype.is_floating_point:
        raise ValueError(f"(num, L) inputs are tokens and must be integers, found {inputs.dtype}")
    if inputs.ndim not in (2, 3):
        shape = tuple(inputs.shape)
        raise ValueError(f"inputs must be (num, L, C) features or (num, L) tokens, got shape {shape}")
    if inputs.shape[1] == 0:
        raise ValueError("inputs have length L = 0")
    if inputs.ndim == 3 and inputs.dtype != torch.uint8:
        inputs = inputs.to(torch.float32)
    return inputs


def _checked_targets(targets: torch.Tensor, num: int, seq_len: int) -> torch.Tensor:
    """Class targets (num,) or (num, L) as int64; real targets (num, D) or (num, L, D) as float32."""
    shape = tuple(targets.shape)
    if targets.ndim == 0 or shape[0] != num:
        raise ValueError(f"targets must have a leading dimension of {num} (one per input), got {shape}")
    if targets.dtype.is_floating_point:
        targets, per_step = targets.to(torch.float32), targets.ndim == 3
        if targets.ndim > 3:
            raise ValueError(f"real targets must be (num, D) or (num, L, D), got {shape}")
    else:
        targets, per_step = targets.to(torch.int64), targets.ndim == 2
        if targets.ndim > 2:
            raise ValueError(f"class targets must be (num,) or (num, L), got {shape}")
    if per_step and shape[1] != seq_len:
        raise ValueError(f"per-step targets must have length L = {seq_len}, got {shape}")
    return targets


def _checked_lengths(lengths: torch.Tensor, num: int, seq_len: int) -> torch.Tensor:
    """``(num,) int64`` valid lengths in ``[1, L]``."""
    if lengths.dtype.is_floating_point or lengths.shape != (num,):
        raise ValueError(f"lengths must be ({num},) integers, got {tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.to(torch.int64)
    if num and (int(lengths.min()) < 1 or int(lengths.max()) > seq_len):
        raise ValueError(
            f"lengths must lie in [1, {seq_len}], got [{int(lengths.min())}, {int(lengths.max())}]"
        )
    return lengths


class SequenceData:
    """One split (train, val or test) of a sequence data set, in memory.

    Parameters
    ----------
    inputs : array or tensor
        ``(num, L, C)`` features of any real dtype; ``uint8`` is kept as is to save memory, other
        dtypes are stored as ``float32``. Or ``(num, L)`` integer tokens, stored as given and
        returned as ``int64``.
    targets : array or tensor
        ``(num,)`` class labels (integers, stored ``int64``), ``(num, L)`` per-step classes, or
        ``(num, D)`` / ``(num, L, D)`` regression targets (floats, stored ``float32``).
    lengths : array or tensor, optional
        ``(num,)`` valid lengths in ``[1, L]`` (valid steps first, padding after). None means every
        sequence has full length ``L``.
    transform : callable, optional
        Applied to each raw input batch (``(B, L, C)`` in the stored dtype); must return a
        ``float32`` tensor of the same shape (e.g. :class:`shrinkssm.data.transforms.Normalize`).
        Default: a plain cast to ``float32`` (``int64`` for tokens).

    Attributes
    ----------
    inputs, targets, lengths : torch.Tensor
        The stored tensors (CPU).
    transform : callable or None
    """

    def __init__(
        self,
        inputs: np.ndarray | torch.Tensor,
        targets: np.ndarray | torch.Tensor,
        lengths: np.ndarray | torch.Tensor | None = None,
        transform: Transform | None = None,
    ) -> None:
        inputs = _checked_inputs(_as_tensor(inputs, "inputs"))
        targets = _checked_targets(_as_tensor(targets, "targets"), *inputs.shape[:2])
        if lengths is not None:
            lengths = _checked_lengths(_as_tensor(lengths, "lengths"), *inputs.shape[:2])
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        self.inputs = inputs
        self.targets = targets
        self.lengths = lengths
        self.transform = transform

    # ----------------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def seq_len(self) -> int:
        """``L``, the (padded) sequence length."""
        return int(self.inputs.shape[1])

    @property
    def tokens(self) -> bool:
        """True when inputs are ``(num, L)`` integer tokens."""
        return self.inputs.ndim == 2

    @property
    def n_channels(self) -> int | None:
        """``C`` for feature inputs, None for tokens."""
        return None if self.tokens else int(self.inputs.shape[2])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.inputs.shape)
        varlen = "variable lengths" if self.lengths is not None else "full lengths"
        return f"SequenceData({shape} {str(self.inputs.dtype).removeprefix('torch.')}, {varlen})"

    # --------------------------------------------------------------------------------- subsets
    def subset(self, indices: Sequence[int] | np.ndarray) -> SequenceData:
        """A new split holding the samples at ``indices`` (copied), with the same transform."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        lengths = None if self.lengths is None else self.lengths[idx]
        return SequenceData(self.inputs[idx], self.targets[idx], lengths, self.transform)

    # --------------------------------------------------------------------------------- batches
    def batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """Gather the samples at ``indices`` into a :class:`Batch` (transform applied)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).reshape(-1)
        raw = self.inputs.index_select(0, idx)
        x = self._convert(raw)
        y = self.targets.index_select(0, idx)
        mask = None
        if self.lengths is not None:
            lengths = self.lengths.index_select(0, idx)
            if bool((lengths < self.seq_len).any()):
                mask = torch.arange(self.seq_len)[None, :] < lengths[:, None]  # (B, L)
        return Batch(x=x, y=y, mask=mask, index=idx)

    def _convert(self, raw: torch.Tensor) -> torch.Tensor:
        if self.transform is None:
            return raw.to(torch.int64) if self.tokens else raw.to(torch.float32)
        x = self.transform(raw)
        if not isinstance(x, torch.Tensor) or x.shape != raw.shape:
            got = getattr(x, "shape", type(x))
            raise ValueError(f"transform must return a tensor of shape {tuple(raw.shape)}, got {got}")
        expected = torch.int64 if self.tokens else torch.float32
        if x.dtype != expected:
            raise ValueError(f"transform must return {expected}, got {x.dtype}")
        return x

    def num_batches(self, batch_size: int, *, drop_last: bool, world_size: int = 1) -> int:
        """Number of batches :meth:`iterate` yields per epoch, the same on every rank.

        ``batch_size`` is the global batch size (see :meth:`iterate`); it must be a multiple of
        ``world_size``.
        """
        _check_non_negative_int(batch_size, "batch_size", 1)
        _check_non_negative_int(world_size, "world_size", 1)
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not a multiple of world_size {world_size}")
        full, rest = divmod(len(self), batch_size)
        return full if drop_last or rest == 0 else full + 1

    def epoch_order(self, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
        """``(num,) int64`` order of the samples in epoch ``epoch``: a function of ``(seed, epoch)`` only."""
        _check_non_negative_int(seed, "seed")
        _check_non_negative_int(epoch, "epoch")
        if not shuffle:
            return np.arange(len(self), dtype=np.int64)
        rng = np.random.default_rng(np.random.SeedSequence([_SHUFFLE_STREAM, int(seed), int(epoch)]))
        return rng.permutation(len(self)).astype(np.int64)

    def iterate(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        start_batch: int = 0,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Batch]:
        """Yield the batches of one epoch.

        Parameters
        ----------
        batch_size : int
            Global batch size: the samples of one step over all ranks. Each rank receives
            ``batch_size // world_size`` of them (``batch_size`` must be a multiple of
            ``world_size``), so the samples of step ``k`` do not depend on ``world_size`` and a
            checkpoint taken with one number of ranks resumes with another.
        shuffle : bool
            Shuffle with a permutation that depends only on ``(seed, epoch)``; False keeps the
            stored order (evaluation).
        seed, epoch : int
            Non-negative; ignored when ``shuffle`` is False.
        start_batch : int
            Skip the first ``start_batch`` batches (no data is touched for them): resuming at
            batch ``k`` yields exactly batches ``k, k+1, ...`` of the uninterrupted epoch.
        drop_last : bool
            Drop the final partial batch (training) or keep it (evaluation, so every sample is
            seen exactly once).
        rank, world_size : int
            Data-parallel sharding: rank ``r`` takes positions ``r, r + world_size, ...`` of each
            global batch. Shares are disjoint, cover the batch, and are equal-sized for every
            full batch. The final partial batch (only when ``drop_last`` is False) is shared as
            evenly as possible (sizes differ by at most one; a rank may get an empty batch when
            fewer samples than ranks remain), so every rank yields the same number of batches.

        Yields
        ------
        Batch
            :meth:`num_batches` ``- start_batch`` batches.

        Raises
        ------
        ValueError
            Bad sizes, ``rank`` outside ``[0, world_size)``, or ``start_batch`` past the epoch.
        """
        n_batches = self.num_batches(batch_size, drop_last=drop_last, world_size=world_size)
        _check_non_negative_int(rank, "rank")
        if rank >= world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        _check_non_negative_int(start_batch, "start_batch")
        if start_batch > n_batches:
            raise ValueError(f"start_batch {start_batch} is past the {n_batches} batches of the epoch")
        order = self.epoch_order(shuffle=shuffle, seed=seed, epoch=epoch)
        return self._batches(order, batch_size, start_batch, n_batches, rank, world_size)

    def _batches(
        self, order: np.ndarray, batch_size: int, start: int, stop: int, rank: int, world_size: int
    ) -> Iterator[Batch]:
        for b in range(start, stop):
            chunk = order[b * batch_size : (b + 1) * batch_size]
            yield self.batch(chunk[rank::world_size])
