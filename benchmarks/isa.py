"""Every native instruction-set path of this CPU against the targets of the speed issue, one path
per process.

For each path the native kernels have here (``base``, ``avx2``, ``avx512``; ``neon`` on aarch64) a
fresh process is started with ``SHRINKSSM_NATIVE_ISA=<path>`` and, unless ``--kernels-only``, the
rest of the machine restricted alike (``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``,
``ONEDNN_MAX_CPU_ISA``: ``avx2`` for the avx2 path, the baseline for ``base``), so that each
column is a fair emulation of a machine that has nothing better; the process checks that torch and
MKL honour the restriction (``torch.backends.cpu.get_cpu_capability()`` and MKL's own report)
and the table warns if they do not. Each process runs on one thread, float32, and measures, with
the candidates of each figure timed interleaved (round-robin, medians):

1. the fused LRU forward (``lru_recurrence(..., backend="native")``, no grad) at the sMNIST shape
   (batch 50, length 784, d_model 8, N 256), in GFLOP/s counting ``B L N (8 H + 8)`` flops
   (``B u`` and ``Re(C x)``: 8 H per state and step; the complex recurrence: 8), and that as a
   share of the same process's SGEMM rate (1024 x 1024 ``a @ b``); target >= 30%;
2. the LRU layer's forward + backward with ``scan="native"`` against ``scan="ref"`` (the pure
   PyTorch backend); target >= 5x;
3. the selective scan's forward + backward (``SelectiveSSM(32, 16)``'s scan on its own inputs,
   batch 32, length 784: the shape of ``benchmarks/selective.py``) against its sequential
   reference; target >= 5x;
4. one training step of the sMNIST model (``SSMModel(ModelConfig(d_state=N), d_input=1,
   d_output=10)``, forward, cross-entropy, backward, AdamW with the trainer's parameter groups)
   at N = 256 and N = 13 (rounds of 5 consecutive steps of one size, the last 4 timed, as training
   runs them); target step(13) / step(256) <= 0.2.

``--train`` also runs the default ``shrinkssm train`` (``configs/quick.yaml``, ``train.threads=2``)
under each path and reports its training time (target <= 3 minutes on the avx2 path, and on any
better one) and test accuracy (>= 0.85), read from the run's ``summary.json``. It takes minutes per
path (an hour or more on a slow path), so it is opt-in.

Usage::

    python benchmarks/isa.py                       # every path of this CPU
    python benchmarks/isa.py --paths avx2 avx512   # some of them
    python benchmarks/isa.py --train               # also whole training runs (long)
    python benchmarks/isa.py --kernels-only        # restrict only our kernels, not torch / MKL
    python benchmarks/isa.py --clock cpu           # CPU time instead of wall clock (busy machine)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import _common  # benchmarks/_common.py

REPO = Path(__file__).resolve().parents[1]
SHAPE = (50, 784, 8, 256)          # batch, length, d_model, N: the sMNIST layer
SELECTIVE_SHAPE = (32, 784, 32, 16)  # batch, length, d_model, N per channel
TARGETS = {"fwd_share": 0.30, "layer_speedup": 5.0, "selective_speedup": 5.0, "step_ratio": 0.2,
           "train_seconds": 180.0, "test_accuracy": 0.85}
RESULT_TAG = "ISA_RESULT "
CLOCK = time.perf_counter  # --clock cpu: time.process_time (this one-thread process's CPU time)


# ------------------------------------------------------------------------------------------------
# The worker: one path, one process, one thread
# ------------------------------------------------------------------------------------------------


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def measure_lru(rounds: int) -> dict:
    from shrinkssm.nn import LRU
    from shrinkssm.ops import lru_recurrence

    batch, length, d_model, n = SHAPE
    torch.manual_seed(0)
    layer = LRU(d_model, n)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, length, d_model, generator=g)
    gy = torch.randn(batch, length, d_model, generator=g)
    with torch.no_grad():
        lam, B, C = layer.eigenvalues(), layer.input_matrix(), layer.output_matrix()
        y_native = lru_recurrence(u, lam, B, C, backend="native")
        y_ref = lru_recurrence(u, lam, B, C, backend="ref")
    err = _rel_err(y_native, y_ref)
    if not err < 1e-4:
        raise SystemExit(f"the native forward disagrees with ref on this path: relative error {err:.1e}")

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def fwd():
        with torch.no_grad():
            lru_recurrence(u, lam, B, C, backend="native")

    t = _common.time_round_robin({"sgemm": lambda: a @ b, "fwd": fwd}, 3 * rounds, burn_in=2, clock=CLOCK)
    sgemm = 2 * 1024**3 / t["sgemm"] / 1e9
    flops = batch * length * n * (8 * d_model + 8)
    fwd_gflops = flops / t["fwd"] / 1e9

    def fwd_bwd(backend):
        def run():
            layer.scan = backend
            x = u.detach().requires_grad_()
            layer(x).backward(gy)
            layer.zero_grad(set_to_none=True)
        return run

    tb = _common.time_round_robin({"native": fwd_bwd("native"), "ref": fwd_bwd("ref")}, rounds, clock=CLOCK)
    return {"sgemm_gflops": sgemm, "fwd_ms": 1e3 * t["fwd"], "fwd_gflops": fwd_gflops,
            "fwd_share": fwd_gflops / sgemm, "fwd_err": err,
            "layer_native_ms": 1e3 * tb["native"], "layer_ref_ms": 1e3 * tb["ref"],
            "layer_speedup": tb["ref"] / tb["native"]}


def measure_selective(rounds: int) -> dict:
    from shrinkssm.nn.selective import SelectiveSSM

    batch, length, d_model, n = SELECTIVE_SHAPE
    torch.manual_seed(0)
    layer = SelectiveSSM(d_model, n).eval()
    u = torch.randn(batch, length, d_model)
    with torch.no_grad():
        x, _, delta, Bx, Cx = layer._branch(u, None)
    inputs = [t.detach().clone().requires_grad_() for t in (x, delta, Bx, Cx)]
    params = [p for p in layer.parameters() if p.numel()]

    def scan(backend):
        def run():
            layer.scan = backend
            y = layer._ssm(*inputs)
            return torch.autograd.grad(y.square().sum(), inputs + params, allow_unused=True)
        return run

    with torch.no_grad():
        layer.scan = "native"
        y_native = layer._ssm(*inputs)
        layer.scan = "ref"
        y_ref = layer._ssm(*inputs)
    err = _rel_err(y_native, y_ref)
    if not err < 1e-4:
        raise SystemExit(f"the native selective scan disagrees with ref on this path: relative error {err:.1e}")
    t = _common.time_round_robin({"native": scan("native"), "ref": scan("ref")}, max(3, rounds // 2), clock=CLOCK)
    return {"selective_native_ms": 1e3 * t["native"], "selective_ref_ms": 1e3 * t["ref"],
            "selective_speedup": t["ref"] / t["native"]}


def measure_steps(rounds: int) -> dict:
    x, y = _common.smnist_batch()
    steps = {}
    for n in (256, 13):
        model, opt = _common.smnist_model(n)
        steps[n] = _common.train_step_fn(model, opt, x, y)
    # rounds of 5 consecutive steps per size, the last 4 timed: a step follows the previous step of
    # the same model, as in training (benchmarks/step_cost.py --order interleaved for the other way)
    t = _common.time_round_robin(steps, rounds, burn_in=2, clock=CLOCK, run=5)
    return {"step256_ms": 1e3 * t[256], "step13_ms": 1e3 * t[13], "step_ratio": t[13] / t[256]}


def worker(path: str, rounds: int) -> None:
    _common.init_native_isa()
    _common.set_threads(1)
    got = _common.native_isa()
    if got != path:
        raise SystemExit(f"asked for native path {path}, the kernels run {got}")
    out = {"path": path, "aten": torch.backends.cpu.get_cpu_capability(), "mkl": _common.mkl_isa(),
           "problems": _common.check_machine_wide(), "threads": torch.get_num_threads()}
    out.update(measure_lru(rounds))
    out.update(measure_selective(rounds))
    out.update(measure_steps(rounds))
    print(RESULT_TAG + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------
# The parent: one process per path, then the table
# ------------------------------------------------------------------------------------------------


def run_worker(path: str, rounds: int, machine_wide: bool, clock: str) -> dict:
    env = {**os.environ, **_common.one_thread_env(), **_common.isa_env(path, machine_wide)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", path, "--rounds", str(rounds),
                           "--clock", clock],
                          env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        return {"path": path, "error": " | ".join(tail) or f"exit code {proc.returncode}"}
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["seconds"] = time.perf_counter() - t0
    return result


def run_training(path: str, machine_wide: bool, overrides: list[str]) -> dict:
    """The default ``shrinkssm train`` on 2 threads under ``path``: training seconds, test accuracy."""
    env = {**os.environ, **_common.isa_env(path, machine_wide)}
    with tempfile.TemporaryDirectory(prefix=f"isa-{path}-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "shrinkssm", "train", "--config", str(REPO / "configs" / "quick.yaml"),
               "--out", str(out), "train.threads=2", "train.progress=false", *overrides]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        summary_file = out / "summary.json"
        if proc.returncode != 0 or not summary_file.exists():
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-2:]
            return {"train_error": " | ".join(tail) or f"exit code {proc.returncode}"}
        summary = json.loads(summary_file.read_text())
    return {"train_seconds": summary["train_seconds"], "test_accuracy": summary["test_accuracy"],
            "train_steps": summary.get("steps"), "state_dims": summary.get("state_dims")}


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return ""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def print_table(results: list[dict], with_train: bool) -> None:
    paths = [r["path"] for r in results]
    width = max(16, *(len(p) + 8 for p in paths))
    rows: list[tuple[str, str, str, bool | None]] = [  # label, key, format, higher is better (None: no target)
        ("SGEMM 1024^3, GFLOP/s", "sgemm_gflops", "{:.1f}", None),
        ("fused LRU forward, ms", "fwd_ms", "{:.2f}", None),
        ("fused LRU forward, GFLOP/s", "fwd_gflops", "{:.1f}", None),
        ("  share of SGEMM", "fwd_share", "{:.0%}", True),
        ("LRU layer f+b native, ms", "layer_native_ms", "{:.1f}", None),
        ("LRU layer f+b ref, ms", "layer_ref_ms", "{:.1f}", None),
        ("  ref / native", "layer_speedup", "{:.1f}x", True),
        ("selective scan f+b native, ms", "selective_native_ms", "{:.1f}", None),
        ("selective scan f+b ref, ms", "selective_ref_ms", "{:.1f}", None),
        ("  ref / native", "selective_speedup", "{:.1f}x", True),
        ("train step N=256, ms", "step256_ms", "{:.1f}", None),
        ("train step N=13, ms", "step13_ms", "{:.1f}", None),
        ("  N=13 / N=256", "step_ratio", "{:.2f}", False),
    ]
    if with_train:
        rows += [("shrinkssm train (2 thr), s", "train_seconds", "{:.0f}", False),
                 ("  test accuracy", "test_accuracy", "{:.3f}", True)]
    targets = {"fwd_share": ">= 30%", "layer_speedup": ">= 5x", "selective_speedup": ">= 5x",
               "step_ratio": "<= 0.2", "train_seconds": "<= 180 s", "test_accuracy": ">= 0.85"}
    print(f"\n{'figure (1 thread, float32)':32s} {'target':>9s} " + " ".join(f"{p:>{width}s}" for p in paths))
    for label, key, fmt, higher in rows:
        cells = []
        for r in results:
            value = r.get(key)
            if value is None:
                cells.append(f"{'-':>{width}s}")
                continue
            text = fmt.format(value)
            applies = higher is not None and not (key == "train_seconds" and r["path"] == "base")
            if applies:
                text += " " + _verdict(value, TARGETS[key], higher)
            cells.append(f"{text:>{width}s}")
        print(f"{label:32s} {targets.get(key, ''):>9s} " + " ".join(cells))
    print()
    for r in results:
        if "error" in r:
            print(f"  {r['path']}: FAILED: {r['error']}")
            continue
        env = f"ATen {r['aten']}, MKL {r['mkl']}, {r['threads']} thread(s), {r['seconds']:.0f} s"
        print(f"  {r['path']}: {env}" + (f"; WARNING: {'; '.join(r['problems'])}" if r["problems"] else ""))
        if "train_error" in r:
            print(f"  {r['path']}: shrinkssm train FAILED: {r['train_error']}")
        elif "train_seconds" in r:
            print(f"  {r['path']}: shrinkssm train: {r['train_steps']} steps, final state {r['state_dims']}")
    print("  (train seconds: target on the avx2 path and better ones; base has none)" if with_train else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", nargs="+", default=None, help="native paths to measure (default: all of this CPU)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median); figures use 1-3x this")
    parser.add_argument("--train", action="store_true", help="also the default `shrinkssm train` per path (long)")
    parser.add_argument("--train-override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for --train (e.g. train.steps=500 for a quick look)")
    parser.add_argument("--kernels-only", action="store_true",
                        help="restrict only our kernels (not torch's, MKL's, oneDNN's dispatch)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or the worker's CPU time (steadier on a busy machine)")
    parser.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.worker:
        worker(args.worker, args.rounds)
        return

    available = _common.native_isas()
    if not available:
        raise SystemExit("isa.py: the native kernels are not available (pip install -e . with a C compiler)")
    paths = args.paths or available
    unknown = [p for p in paths if p not in available]
    if unknown:
        raise SystemExit(f"isa.py: --paths {' '.join(unknown)}: not a native path of this CPU; "
                         f"valid: {', '.join(available)}")
    _common.print_header("machine (this process):")
    print(f"  one process per path, 1 thread, float32, medians of round-robin rounds (--rounds {args.rounds}, "
          f"clock: {args.clock}); "
          f"{'only our kernels restricted' if args.kernels_only else 'torch, MKL and oneDNN restricted alike'}")
    results = []
    for path in paths:
        print(f"  measuring {path} ...", flush=True)
        result = run_worker(path, args.rounds, not args.kernels_only, args.clock)
        if args.train and "error" not in result:
            print(f"  training {path} (shrinkssm train, 2 threads) ...", flush=True)
            result.update(run_training(path, not args.kernels_only, args.train_override))
        results.append(result)
    print_table(results, args.train)
    print(f"load average (1 min) at the end: {_common.load_average():.2f}")


if __name__ == "__main__":
    main()
