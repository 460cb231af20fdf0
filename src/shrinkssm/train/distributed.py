"""Data-parallel training on PyTorch's own engine (torch.distributed), kept out of the loop's way.

A run started by ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``) joins a process group -- gloo on CPUs, nccl on GPUs -- with a timeout, so a
peer that dies makes collectives fail instead of hanging forever. A plain ``python -m shrinkssm``
run is a world of one, and every function here is then a cheap no-op.

What the trainer needs, and nothing more: who am I (:class:`DistEnv`), sum statistics over ranks,
agree on a value chosen by rank 0, gather one object per rank, and a barrier.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, preference: str) -> torch.device:
        """``preference`` is "auto", "cpu" or "cuda"; a GPU job uses the GPU of its local rank."""
        use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")

    # -- collectives (no-ops in a world of one) ---------------------------------------------------
    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Add up a dict of numbers over all ranks (every rank must pass the same keys)."""
        if not self.enabled:
            return stats
        keys = sorted(stats)
        values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is True on every rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def broadcast_(self, tensors) -> None:
        """Overwrite every tensor in ``tensors`` with rank 0's values, in place."""
        if self.enabled:
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto", timeout_seconds: float = 600.0) -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (once per process).

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        Picks the backend: nccl when the run uses CUDA, gloo otherwise.
    timeout_seconds : float
        How long a collective may wait for a peer before it fails with an error.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        env = DistEnv(rank, world_size, local_rank)
        backend = "nccl" if env.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def shutdown_distributed() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
