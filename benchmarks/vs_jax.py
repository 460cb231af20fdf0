"""Our sMNIST training step against the same model as a jitted JAX train step, in one run.

The JAX model is written here after the published LRU / CompreSSM method and matches
``SSMModel(ModelConfig(d_state=N), d_input=1, d_output=10)`` exactly: linear encoder (1 -> 8),
one block ``x + GLU(GELU(LRU(BatchNorm(x))))`` (batch norm over batch and time with batch
statistics and running averages, exact erf GELU, ``GLU: a * sigmoid(b)`` of a linear 8 -> 16),
mean pooling over time and a linear head (8 -> 10); cross-entropy; AdamW (optax) with the
trainer's three parameter groups (``nu, theta, gamma, B``: half the learning rate and no weight
decay; one-dimensional parameters: no weight decay; the rest: weight decay 0.05). The LRU runs
as the published code does: ``lam = exp(-exp(nu) + i exp(theta))``, ``B u`` per position, then
``jax.lax.associative_scan`` over ``(lam, B u)`` with the combine ``(a_i, b_i), (a_j, b_j) ->
(a_j a_i, a_j b_i + b_j)``, ``Re(C x) + D u``, ``vmap``-ed over the batch.

Before timing, the JAX model is given our model's initial weights and the two are checked to
compute the same function: the loss of one batch (float32 tolerance) and the parameters after one
AdamW step (which checks the gradients and the parameter groups).

Timing: batch 50, length 784, one thread on each side (torch ``set_num_threads(1)``; XLA
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``). JAX runs in a process of
its own (once its runtime is up, its threads slowed torch's in the same process), and the two are
timed in alternating blocks of ``--steps`` steps, so that machine noise hits both alike; reported
are the medians per step over all blocks (wall clock, and the process's CPU time), the ratio
JAX / ours (targets: >= 10x at N = 256, >= 3x at N = 13), and each side's CPU time per wall-clock
second (at most about 1.0 confirms one thread; well below 1, the process waited for a core).

Usage::

    python benchmarks/vs_jax.py                     # N = 256 and 13, best native path
    python benchmarks/vs_jax.py --isa avx2          # our avx2 path; torch, MKL and XLA restricted to AVX2
    python benchmarks/vs_jax.py --sizes 256 47 13 --blocks 8
    python benchmarks/vs_jax.py --pin 1             # both processes pinned to CPU 1

Needs ``pip install -e ".[bench]"`` (jax, optax).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LR, WEIGHT_DECAY, SSM_LR_FACTOR, BETAS, EPS = 4e-3, 0.05, 0.5, (0.9, 0.999), 1e-8  # TrainConfig defaults
BN_MOMENTUM, BN_EPS = 0.1, 1e-5
TARGETS = {256: 10.0, 13: 3.0}
ANSWER_TAG = "VS_JAX "


# ------------------------------------------------------------------------------------------------
# The JAX side (runs in its own process: --jax-worker)
# ------------------------------------------------------------------------------------------------


def jax_model(n_blocks: int, groups: dict[str, str]):
    """(loss_fn, grad_fn, train_step, tx): the sMNIST model in JAX over a flat dict of parameters named as
    in our ``state_dict`` (and a dict of batch-norm running statistics)."""
    import jax
    import jax.numpy as jnp
    import optax

    def combine(left, right):
        a_i, b_i = left
        a_j, b_j = right
        return a_j * a_i, a_j * b_i + b_j

    def lru(p, pre, seq):  # seq: (L, H) real -> (L, H) real
        lam = jnp.exp(-jnp.exp(p[pre + "nu_log"]) + 1j * jnp.exp(p[pre + "theta_log"]))      # (N,)
        B = (p[pre + "B_re"] + 1j * p[pre + "B_im"]) * jnp.exp(p[pre + "gamma_log"])[:, None]  # (N, H)
        C = p[pre + "C_re"] + 1j * p[pre + "C_im"]                                            # (H, N)
        bu = jax.vmap(lambda u: B @ u)(seq)                                                   # (L, N)
        lams = jnp.repeat(lam[None], seq.shape[0], axis=0)
        _, x = jax.lax.associative_scan(combine, (lams, bu))
        return jax.vmap(lambda xk, uk: (C @ xk).real + p[pre + "D"] * uk)(x, seq)

    def forward(p, bn, x):  # x: (B, L, 1) -> logits (B, 10), new running statistics
        h = x @ p["encoder.weight"].T + p["encoder.bias"]
        new_bn = {}
        for i in range(n_blocks):
            pre = f"blocks.{i}."
            flat = h.reshape(-1, h.shape[-1])
            mean, var = flat.mean(0), flat.var(0)
            m = flat.shape[0]
            new_bn[pre + "norm.running_mean"] = (1 - BN_MOMENTUM) * bn[pre + "norm.running_mean"] + BN_MOMENTUM * mean
            new_bn[pre + "norm.running_var"] = ((1 - BN_MOMENTUM) * bn[pre + "norm.running_var"]
                                                + BN_MOMENTUM * var * m / (m - 1))
            z = (h - mean) / jnp.sqrt(var + BN_EPS) * p[pre + "norm.weight"] + p[pre + "norm.bias"]
            y = jax.vmap(lambda s: lru(p, pre + "lru.", s))(z)
            y = jax.nn.gelu(y, approximate=False)
            a, gate = jnp.split(y @ p[pre + "glu.weight"].T + p[pre + "glu.bias"], 2, axis=-1)
            h = h + a * jax.nn.sigmoid(gate)
        return h.mean(1) @ p["head.weight"].T + p["head.bias"], new_bn

    def loss_fn(p, bn, x, y):
        logits, new_bn = forward(p, bn, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_bn

    settings = {"ssm": (LR * SSM_LR_FACTOR, 0.0), "no_decay": (LR, 0.0), "decay": (LR, WEIGHT_DECAY)}
    tx = optax.multi_transform(
        {g: optax.adamw(lr, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=wd) for g, (lr, wd) in settings.items()},
        groups)

    def train_step(p, bn, opt_state, x, y):
        (loss, new_bn), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, bn, x, y)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), new_bn, opt_state, loss

    grad_fn = jax.jit(jax.grad(lambda p, bn, x, y: loss_fn(p, bn, x, y)[0]))
    return jax.jit(loss_fn), grad_fn, jax.jit(train_step, donate_argnums=(0, 1, 2)), tx


def jax_worker(x64: bool) -> None:
    """Serve the parent one JSON command per line on stdin, one JSON answer per line on stdout;
    ``x64``: float64 enabled (for the exact check; arrays keep the dtypes they are sent in)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", x64)

    models = {}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            return
        if msg["cmd"] == "load":
            data = np.load(msg["file"])
            groups = msg["groups"]
            p = {k: jnp.asarray(data[k]) for k in groups}
            bn = {k: jnp.asarray(data[k]) for k in msg["buffers"]}
            x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"].astype(np.int32))
            loss_fn, grad_fn, step, tx = jax_model(msg["n_blocks"], groups)
            t0 = time.perf_counter()
            loss0 = float(loss_fn(p, bn, x, y)[0])
            grads = {k: np.asarray(v) for k, v in grad_fn(p, bn, x, y).items()}
            opt_state = tx.init(p)
            p, bn, opt_state, loss = step(p, bn, opt_state, x, y)
            jax.block_until_ready(p)
            compile_s = time.perf_counter() - t0
            np.savez(msg["out"], **{k: np.asarray(v) for k, v in p.items()},
                     **{"grad." + k: v for k, v in grads.items()})
            models[msg["n"]] = [p, bn, opt_state, x, y, step]
            answer = {"loss0": loss0, "loss_step": float(loss), "compile_s": compile_s,
                      "jax": jax.__version__, "devices": str(jax.devices())}
        elif msg["cmd"] == "time":
            m = models[msg["n"]]
            wall, cpu = [], []
            for _ in range(msg["steps"]):
                t0, c0 = time.perf_counter(), time.process_time()
                m[0], m[1], m[2], loss = m[5](*m[:5])
                jax.block_until_ready((m[0], loss))
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            answer = {"wall": wall, "cpu": cpu}
        else:
            answer = {"error": f"unknown command {msg['cmd']!r}"}
        print(ANSWER_TAG + json.dumps(answer), flush=True)


class JaxProcess:
    """The JAX worker process and its line protocol."""

    def __init__(self, env: dict[str, str], x64: bool = False) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--jax-worker"] + (["--x64"] if x64 else [])
        self.proc = subprocess.Popen(cmd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        while True:  # skip anything else the JAX process may print
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"vs_jax.py: the JAX process ended (exit code {self.proc.wait()}); "
                                 "see its error above")
            if line.startswith(ANSWER_TAG):
                break
        answer = json.loads(line[len(ANSWER_TAG):])
        if "error" in answer:
            raise SystemExit(f"vs_jax.py: JAX process: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
            except (SystemExit, BrokenPipeError, json.JSONDecodeError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------------
# Our side and the comparison
# ------------------------------------------------------------------------------------------------


def group_names(model, optimizer) -> dict[str, str]:
    """Parameter name -> the optimizer group it is in ("ssm", "no_decay", "decay")."""
    by_id = {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def check_same_function(n: int, model, optimizer, x, y, jax_proc: JaxProcess, tmp: Path) -> dict:
    """Load our initial weights into JAX; compare the loss of one batch and one AdamW step."""
    import torch
    import torch.nn.functional as F

    groups = group_names(model, optimizer)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    buffers = [k for k in sd if k.endswith(("running_mean", "running_var"))]
    weights = tmp / f"torch_{n}.npz"
    np.savez(weights, x=x.numpy(), y=y.numpy(), **{k: sd[k] for k in list(groups) + buffers})
    answer = jax_proc.ask(cmd="load", n=n, file=str(weights), out=str(tmp / f"jax_{n}.npz"), groups=groups,
                          buffers=buffers, n_blocks=len(model.blocks))
    with torch.no_grad():
        loss0 = F.cross_entropy(model(x), y).item()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # undo the running statistics
    F.cross_entropy(model(x), y).backward()
    grads = {name: p.grad.detach().numpy().copy() for name, p in model.named_parameters()}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    after = np.load(tmp / f"jax_{n}.npz")
    grad_rel = update_rel = 0.0
    for name, p in model.named_parameters():
        g_ours, g_jax = grads[name], after["grad." + name]
        grad_rel = max(grad_rel, float(np.linalg.norm(g_ours - g_jax) / max(np.linalg.norm(g_ours), 1e-30)))
        # Adam's first update is about lr * sign(g): compare it where the sign is not float32 noise
        stable = np.abs(g_ours) > 1e-3 * np.abs(g_ours).max()
        d_ours = (p.detach().numpy() - sd[name])[stable]
        d_jax = (after[name] - sd[name])[stable]
        if d_ours.size:
            update_rel = max(update_rel, float(np.abs(d_ours - d_jax).max() / max(np.abs(d_ours).max(), 1e-30)))
    return {"loss_ours": loss0, "loss_jax": answer["loss0"], "loss_rel": abs(loss0 - answer["loss0"]) / abs(loss0),
            "grad_rel": grad_rel, "update_rel": update_rel, "compile_s": answer["compile_s"], "jax": answer["jax"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 13], help="state sizes N")
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks per side and size")
    parser.add_argument("--steps", type=int, default=3, help="steps per block")
    parser.add_argument("--isa", default=None, help="our native path (torch, MKL and XLA restricted alike)")
    parser.add_argument("--kernels-only", action="store_true", help="with --isa: restrict only our kernels")
    parser.add_argument("--pin", type=int, default=None, metavar="CPU", help="pin both processes to this CPU")
    parser.add_argument("--jax-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--x64", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jax_worker:
        jax_worker(args.x64)
        return

    import _common  # benchmarks/_common.py

    env = {}
    if args.isa is not None:
        valid = _common.native_isas()
        if args.isa not in valid:
            raise SystemExit(f"vs_jax.py: --isa {args.isa}: not a native path of this CPU; "
                             f"valid: {', '.join(valid) or 'none (native kernels not available)'}")
        env.update(_common.isa_env(args.isa, not args.kernels_only))
    env.update(_common.one_thread_env(env.get("XLA_FLAGS")), JAX_PLATFORMS="cpu")
    _common.reexec_with_env(env)  # thread pools and dispatch are set at start-up
    missing = [m for m in ("jax", "optax") if importlib.util.find_spec(m) is None]
    if missing:  # found, not imported: JAX's runtime stays out of this process
        raise SystemExit(f"vs_jax.py: needs {' and '.join(missing)}; pip install -e \".[bench]\"")
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})  # the JAX process inherits it
    _common.init_native_isa()
    _common.set_threads(1)
    import torch

    from shrinkssm.train.config import TrainConfig
    from shrinkssm.train.optim import build_optimizer

    _common.print_header("device (our process):")
    print(f"  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}; affinity {sorted(os.sched_getaffinity(0))}")
    print(f"  JAX in its own process, timed in blocks of {args.steps} steps alternating with ours "
          f"({args.blocks} blocks each per size); medians per step")
    x, y = _common.smnist_batch()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vs_jax-") as tmp:
        # exact check, float64 on both sides (once: the function does not depend on N)
        n64 = min(args.sizes)
        model64, _ = _common.smnist_model(n64)
        model64 = model64.double()
        jax64 = JaxProcess({**os.environ}, x64=True)
        try:
            check64 = check_same_function(n64, model64, build_optimizer(model64, TrainConfig()), x.double(), y,
                                          jax64, Path(tmp))
        finally:
            jax64.close()
        print(f"  float64 check done (N={n64})", flush=True)
        jax_proc = JaxProcess({**os.environ})
        try:
            for n in args.sizes:
                model, opt = _common.smnist_model(n)
                check = check_same_function(n, model, opt, x, y, jax_proc, Path(tmp))
                step = _common.train_step_fn(model, opt, x, y)
                step()  # burn-in (JAX's first step ran in the check)
                jax_proc.ask(cmd="time", n=n, steps=1)
                ours = {"wall": [], "cpu": []}
                theirs = {"wall": [], "cpu": []}
                for _ in range(args.blocks):
                    for _ in range(args.steps):
                        t0, c0 = time.perf_counter(), time.process_time()
                        step()
                        ours["wall"].append(time.perf_counter() - t0)
                        ours["cpu"].append(time.process_time() - c0)
                    answer = jax_proc.ask(cmd="time", n=n, steps=args.steps)
                    theirs["wall"] += answer["wall"]
                    theirs["cpu"] += answer["cpu"]
                results[n] = (check, ours, theirs)
                print(f"  N={n} done (JAX compile + first step {check['compile_s']:.1f} s)", flush=True)
        finally:
            jax_proc.close()

    print(f"\nsame function? our initial weights in JAX (JAX {check64['jax']}); relative differences of the "
          "loss of one batch, the gradients (worst tensor, norm) and one AdamW step (worst tensor, entries "
          "with a clear gradient sign)")
    ok64 = check64["loss_rel"] < 1e-10 and check64["grad_rel"] < 1e-8 and check64["update_rel"] < 1e-8
    print(f"  float64, N={n64:<4d} loss {check64['loss_ours']:.9f} / {check64['loss_jax']:.9f}: "
          f"{check64['loss_rel']:.1e}, gradients {check64['grad_rel']:.1e}, AdamW step {check64['update_rel']:.1e}"
          f" -> {'the same function and optimizer' if ok64 else 'DIFFERENT: the timing compares unlike models'}")
    for n, (check, _, _) in results.items():
        ok = check["loss_rel"] < 1e-5 and check["grad_rel"] < 2e-2
        print(f"  float32, N={n:<4d} loss {check['loss_ours']:.6f} / {check['loss_jax']:.6f}: {check['loss_rel']:.1e}, "
              f"gradients {check['grad_rel']:.1e}, AdamW step {check['update_rel']:.1e} -> "
              f"{'agree to float32 rounding' if ok else 'DIFFERENT beyond float32 rounding'}")
    print(f"\n{'N':>5s} {'ours ms':>9s} {'JAX ms':>9s} {'JAX / ours':>11s}  {'target':>12s}   "
          f"{'CPU ms: ours':>12s} {'JAX':>8s} {'ratio':>7s}   {'CPU/wall: ours':>14s} {'JAX':>5s}")
    for n, (_, ours, theirs) in results.items():
        t_ours, t_jax = statistics.median(ours["wall"]), statistics.median(theirs["wall"])
        c_ours, c_jax = statistics.median(ours["cpu"]), statistics.median(theirs["cpu"])
        target = TARGETS.get(n)
        verdict = "" if target is None else f">= {target:g}x {'met' if t_jax / t_ours >= target else 'MISSED'}"
        print(f"{n:>5d} {1e3 * t_ours:>9.1f} {1e3 * t_jax:>9.1f} {t_jax / t_ours:>10.1f}x  {verdict:>12s}   "
              f"{1e3 * c_ours:>12.1f} {1e3 * c_jax:>8.1f} {c_jax / c_ours:>6.1f}x   "
              f"{sum(ours['cpu']) / sum(ours['wall']):>14.2f} {sum(theirs['cpu']) / sum(theirs['wall']):>5.2f}")
    print("  (targets on wall-clock medians; CPU time per step is the robust figure when the machine is busy: "
          "CPU/wall well below 1 means the process waited for a core)")
    print(f"\nour native path: {_common.native_isa()}; torch {torch.__version__} "
          f"(ATen {torch.backends.cpu.get_cpu_capability()}); load average (1 min) at the end: "
          f"{_common.load_average():.2f}")


if __name__ == "__main__":
    main()
