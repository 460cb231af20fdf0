"""Benchmark: what checksummed, checked checkpoints cost against a plain ``torch.save``/``load``.

For a model (and its AdamW state after one step) of the sMNIST shape (1 block, d_model 8, N 256)
and of the sCIFAR shape (6 blocks, d_model 512, N 384), it times

* ``save_checkpoint`` (SHA-256 of every tensor and of the payload, serialise in memory, write to a
  temporary, fsync, rename) against ``torch.save`` to a file plus ``fsync`` (the old path);
* ``load_checkpoint`` (read, verify every checksum, check every field and that the weights are
  finite) against ``torch.load(weights_only=True)``;
* the checksum alone, and SHA-256's throughput on this CPU (its instruction set decides it: the
  SHA extensions where OpenSSL finds them).

Candidates are interleaved and each figure is the median of the repeats; one torch thread.

Run:  python benchmarks/checkpoint.py [--repeats 7] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train.checkpoint import checksum, load_checkpoint, save_checkpoint


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
        isa = ", ".join(f for f in ("sha_ni", "avx512f", "avx2") if f in flags)
    except (OSError, StopIteration):
        model, isa = platform.processor() or platform.machine(), "?"
    return f"{model} ({isa}); torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def payload_for(n_layers: int, d_model: int, d_state: int) -> dict:
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(n_layers=n_layers, d_model=d_model, d_state=d_state),
                     d_input=3, d_output=10, task="classification")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16, 3)).sum().backward()
    opt.step()
    return {"step": 1, "epoch": 0, "batch": 1, "config": {}, "model_io": {
        "d_input": 3, "d_output": 10, "task": "classification"}, "layout": model.layout(),
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {},
        "compressor": {"history": {"events": []}, "stopped": False},
        "rng": {"torch_per_rank": [torch.get_rng_state()], "cuda": None},
        "extra": {"initial_dims": model.state_dims(), "train_seconds": 0.0}}


def plain_save(path: Path, payload: dict) -> None:
    with open(path, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(cpu_name())
    block = os.urandom(64 << 20)
    t = statistics.median(timed(lambda: hashlib.sha256(block).digest()) for _ in range(3))
    print(f"SHA-256 (hashlib/OpenSSL): {len(block) / t / 1e9:.2f} GB/s")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        for name, shape in (("sMNIST 1x8x256", (1, 8, 256)), ("sCIFAR 6x512x384", (6, 512, 384))):
            payload = payload_for(*shape)
            new, old = tmp / "new.pt", tmp / "old.pt"
            times = {k: [] for k in ("save", "torch.save", "load", "torch.load", "checksum")}
            for _ in range(args.repeats):                  # interleaved
                times["save"].append(timed(lambda: save_checkpoint(new, payload)))
                times["torch.save"].append(timed(lambda: plain_save(old, payload)))
                times["load"].append(timed(lambda: load_checkpoint(new)))
                times["torch.load"].append(timed(lambda: torch.load(old, weights_only=True)))
                times["checksum"].append(timed(lambda: checksum(payload)))
            med = {k: statistics.median(v) for k, v in times.items()}
            size = new.stat().st_size / 1e6
            print(f"{name}: {size:.1f} MB  save {med['save'] * 1e3:.1f} ms vs torch.save+fsync "
                  f"{med['torch.save'] * 1e3:.1f} ms ({med['save'] / med['torch.save']:.2f}x); "
                  f"load {med['load'] * 1e3:.1f} ms vs torch.load {med['torch.load'] * 1e3:.1f} ms "
                  f"({med['load'] / med['torch.load']:.2f}x); checksum alone "
                  f"{med['checksum'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
