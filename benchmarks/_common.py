"""Helpers shared by the benchmarks: what machine and code path a figure comes from, and how to time.

Every benchmark prints where its figures come from (:func:`describe`: CPU model, the instruction
set extensions that matter, torch's and MKL's dispatch, the native kernels' path, threads, load
average) and times candidates interleaved (:func:`time_round_robin`: one call of each per round,
medians), so that the noise of a shared machine hits every candidate alike.

The native kernels' instruction-set *path* (``base``, ``avx2``, ``avx512``; ``neon`` on aarch64) is
seen and forced through :func:`native_isas` / :func:`set_native_isa`, which use the public
``shrinkssm.ops.native_isas()`` / ``set_native_isa()`` when the installed shrinkssm has them and
the extension's own ``available_isas()`` / ``set_isa()`` otherwise. :func:`init_native_isa`
applies ``SHRINKSSM_NATIVE_ISA`` (call it first thing in ``main``; a public API reads it at import
already). :func:`isa_env` gives the environment of a process that emulates a machine of that path
as a whole: torch's own kernels (``ATEN_CPU_CAPABILITY``), MKL (``MKL_ENABLE_INSTRUCTIONS``),
oneDNN (``ONEDNN_MAX_CPU_ISA``) and XLA (``--xla_cpu_max_isa``) restricted alike; torch reads these
only at start-up, so such a process must be a new one (:func:`reexec_with_isa`).

Run the scripts from the repository root (``python benchmarks/NAME.py``): this directory is then on
``sys.path`` and ``import _common`` finds this file.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

ISA_ENV = "SHRINKSSM_NATIVE_ISA"
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "asimd")  # asimd is what Linux calls NEON on aarch64

# What a process emulating a machine of a path restricts beside our kernels (x86 only: on aarch64
# there is one path worth emulating and these libraries do not apply).
_MACHINE_WIDE = {
    "avx512": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2", "xla": "AVX2"},
    "base": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
             "ONEDNN_MAX_CPU_ISA": "SSE41", "xla": "SSE4_2"},
}
# torch.backends.cpu.get_cpu_capability() that each ATEN_CPU_CAPABILITY value must give
_ATEN_EXPECTED = {"avx2": "AVX2", "default": "DEFAULT"}


# ------------------------------------------------------------------------------------------------
# The machine
# ------------------------------------------------------------------------------------------------


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else ``lscpu``, else what :mod:`platform` knows)."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model Name")):  # x86; some aarch64 kernels
            return line.split(":", 1)[1].strip()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> dict[str, bool]:
    """Which of avx2, fma, avx512f and asimd (NEON) the CPU reports (/proc/cpuinfo flags)."""
    have: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):  # x86 / aarch64
            have |= set(line.split(":", 1)[1].split())
    return {f: f in have for f in FLAGS_OF_INTEREST}


def load_average() -> float:
    """1-minute load average (nan where unknown): other processes on the cores distort figures."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


@functools.cache
def mkl_isa() -> str:
    """The instruction set MKL dispatches to in this process ("AVX-512", "AVX2", "SSE4.2", ...),
    read from MKL's own verbose report of one small SGEMM (MKL names it once per process, hence
    the cache); "none" without MKL."""
    if not torch.backends.mkl.is_available():
        return "none"
    a = torch.ones(8, 8)
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
                a @ a
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    m = re.search(r"architecture .*?\(Intel\(R\) ([^)]+)\)", text)
    return m.group(1) if m else "unknown"


# ------------------------------------------------------------------------------------------------
# The native kernels' path (public API when present, the extension's own functions otherwise)
# ------------------------------------------------------------------------------------------------


def _ext():
    from shrinkssm.ops import _native_backend

    return _native_backend._ext


def native_isas() -> list[str]:
    """Native paths compiled and supported on this CPU, best last ([] without the extension)."""
    from shrinkssm import ops

    if hasattr(ops, "native_isas"):
        return list(ops.native_isas())
    ext = _ext()
    return [] if ext is None else list(ext.available_isas())


def set_native_isa(name: str) -> None:
    """Use the native path ``name``; ValueError naming the valid paths if it is not one of them."""
    from shrinkssm import ops

    valid = native_isas()
    if name not in valid:
        raise ValueError(f"{name!r} is not a native path of this CPU; valid: {', '.join(valid) or 'none'}")
    if hasattr(ops, "set_native_isa"):
        ops.set_native_isa(name)
    else:
        _ext().set_isa(name)


def native_isa() -> str | None:
    """The native path in use, or None without the extension."""
    from shrinkssm.ops import _native_backend

    return _native_backend.native_isa()


def native_threading() -> str | None:
    """How the extension runs threads ("openmp", "pthreads", ...), or None without it."""
    ext = _ext()
    return None if ext is None or not hasattr(ext, "threading") else ext.threading()


def init_native_isa() -> None:
    """Apply ``SHRINKSSM_NATIVE_ISA`` if it is set (also where the library does not read it yet);
    exits with a one-line message if it names no path of this CPU."""
    name = os.environ.get(ISA_ENV)
    if not name:
        return
    try:
        set_native_isa(name)
    except ValueError as exc:
        raise SystemExit(f"{ISA_ENV}={name}: {exc}") from None


def isa_env(path: str, machine_wide: bool = True) -> dict[str, str]:
    """Environment variables for a new process that runs on native path ``path``; with
    ``machine_wide`` also torch's, MKL's, oneDNN's and XLA's code restricted to that instruction set
    (a fair emulation of a machine that has nothing better). Add them to ``os.environ``."""
    env = {ISA_ENV: path}
    extra = _MACHINE_WIDE.get(path, {}) if machine_wide and platform.machine() in ("x86_64", "AMD64") else {}
    for key, value in extra.items():
        if key == "xla":
            flags = re.sub(r"--xla_cpu_max_isa=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
            env["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa={value}".strip()
        else:
            env[key] = value
    return env


def check_machine_wide() -> list[str]:
    """Problems with the machine-wide restriction asked for in the environment (empty if torch and
    MKL honour it): compares torch's CPU capability and MKL's dispatch with what was asked."""
    problems = []
    want = os.environ.get("ATEN_CPU_CAPABILITY")
    got = torch.backends.cpu.get_cpu_capability()
    if want in _ATEN_EXPECTED and got != _ATEN_EXPECTED[want]:
        problems.append(f"ATEN_CPU_CAPABILITY={want} but torch runs {got}")
    want_mkl = os.environ.get("MKL_ENABLE_INSTRUCTIONS")
    if want_mkl and torch.backends.mkl.is_available():
        got_mkl = mkl_isa().replace("-", "").replace(".", "_").upper()
        if got_mkl != want_mkl.replace("-", "").upper():
            problems.append(f"MKL_ENABLE_INSTRUCTIONS={want_mkl} but MKL runs {mkl_isa()}")
    return problems


_REEXEC_MARK = "_SHRINKSSM_BENCH_REEXEC"


def reexec_with_env(env: dict[str, str]) -> None:
    """Restart this script (same arguments) in a new process with ``env`` added to the environment,
    for settings that torch or its libraries read only at start-up; returns at once if the
    environment already holds ``env`` or this process is such a restart. Call it before any
    timing."""
    if os.environ.get(_REEXEC_MARK) or all(os.environ.get(k) == v for k, v in env.items()):
        return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env, _REEXEC_MARK: "1"})


def reexec_with_isa(path: str | None, machine_wide: bool = True) -> None:
    """:func:`reexec_with_env` with :func:`isa_env` of ``path`` (nothing if ``path`` is None)."""
    if path is not None:
        reexec_with_env(isa_env(path, machine_wide))


# ------------------------------------------------------------------------------------------------
# Threads and timing
# ------------------------------------------------------------------------------------------------


def set_threads(n: int) -> None:
    """torch (and MKL inside it) on ``n`` threads; the native kernels follow torch's count."""
    torch.set_num_threads(n)
    if n == 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # only allowed before any inter-op work has started
            pass


def one_thread_env(xla_flags: str | None = None) -> dict[str, str]:
    """Environment variables that keep a new process's thread pools (OpenMP, MKL, OpenBLAS, XLA)
    at one thread; the XLA flags are added to ``xla_flags`` (default: this process's)."""
    xla = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    for flag in ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"):
        if flag not in xla:
            xla = f"{xla} {flag}".strip()
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "XLA_FLAGS": xla}


def time_round_robin(fns: dict, rounds: int, burn_in: int = 1,
                     clock: Callable[[], float] = time.perf_counter, run: int = 1) -> dict:
    """Median seconds per call of every candidate: ``burn_in`` untimed rounds, then ``rounds``
    rounds of one call of each in turn (so that machine noise hits every candidate alike).

    ``run = k > 1``: k consecutive calls of a candidate per round, the first untimed, so that each
    timed call follows a call of the same candidate, as training steps follow each other (with
    ``run = 1`` every call follows another candidate's, which left the caches cold for it)."""
    return {k: statistics.median(v) for k, v in time_samples(fns, rounds, burn_in, clock, run).items()}


def time_samples(fns: dict, rounds: int, burn_in: int = 1,
                 clock: Callable[[], float] = time.perf_counter, run: int = 1) -> dict:
    """As :func:`time_round_robin`, but every timed call's seconds (lists, in order)."""
    for _ in range(burn_in):
        for fn in fns.values():
            fn()
    samples: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for i in range(run):
                t0 = clock()
                fn()
                if i or run == 1:
                    samples[name].append(clock() - t0)
    return samples


def sgemm_gflops(rounds: int = 7, size: int = 1024) -> float:
    """This process's SGEMM rate (``a @ b``, float32, size x size, torch's threads), GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    t = time_round_robin({"mm": lambda: a @ b}, rounds, burn_in=2)["mm"]
    return 2 * size**3 / t / 1e9


# ------------------------------------------------------------------------------------------------
# The sMNIST training step (the published model: 1 block, d_model 8, batch 50, length 784, AdamW)
# ------------------------------------------------------------------------------------------------

SMNIST = {"batch": 50, "length": 784, "d_model": 8}


def smnist_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (50, 784, 1) float32 in [0, 1), y: (50,) int64 classes 0..9."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(SMNIST["batch"], SMNIST["length"], 1, generator=g),
            torch.randint(0, 10, (SMNIST["batch"],), generator=g))


def smnist_model(d_state: int, seed: int = 0, scan: str = "auto"):
    """(model, optimizer): ``SSMModel(ModelConfig(d_state=N))`` with the trainer's own AdamW
    parameter groups (``shrinkssm.train.optim.build_optimizer`` at the default settings)."""
    from shrinkssm.nn import ModelConfig, SSMModel
    from shrinkssm.train.config import TrainConfig
    from shrinkssm.train.optim import build_optimizer

    torch.manual_seed(seed)
    model = SSMModel(ModelConfig(d_state=d_state, d_model=SMNIST["d_model"], scan=scan), d_input=1, d_output=10)
    return model, build_optimizer(model, TrainConfig())


def train_step_fn(model, optimizer, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    """One training step as the trainer does it: forward, cross-entropy, backward, AdamW, zero
    the gradients. Returns the loss (a float)."""
    import torch.nn.functional as F

    def step() -> float:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


# ------------------------------------------------------------------------------------------------
# What a figure comes from
# ------------------------------------------------------------------------------------------------


def describe() -> list[str]:
    """Lines naming the machine and code path: CPU model and flags, torch / MKL dispatch, the
    native path, threads and the load average."""
    flags = cpu_flags()
    have = ", ".join(f for f, ok in flags.items() if ok) or "none of " + ", ".join(FLAGS_OF_INTEREST)
    isa = native_isa()
    native = (f"path {isa} of [{', '.join(native_isas())}] ({native_threading()})" if isa
              else "not available")
    lines = [
        f"CPU: {cpu_model()} ({platform.machine()}, {os.cpu_count()} logical cores; flags: {have})",
        f"torch {torch.__version__}: ATen capability {torch.backends.cpu.get_cpu_capability()}, "
        f"MKL {mkl_isa()}; {torch.get_num_threads()} thread(s)",
        f"native kernels: {native}",
        f"load average (1 min): {load_average():.2f}"
        + ("  -- other processes are busy: absolute figures are distorted" if load_average() > 0.7 else ""),
    ]
    problems = check_machine_wide()
    if problems:
        lines.append("WARNING: " + "; ".join(problems))
    return lines


def print_header(title: str | None = None) -> None:
    if title:
        print(title)
    for line in describe():
        print("  " + line)
