"""Tests of experiments/study1_long.py (the long study's resumable grid) and its report section."""

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import scipy.stats

EXPERIMENTS = Path(__file__).parents[2] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import report  # noqa: E402
import study1_long as grid  # noqa: E402

TINY = {"tiny": ["data.name=digits", "model.norm=layer"]}


def _plan(seeds=(0, 1), steps=40, taus=grid.TAUS):
    return grid.plan(["tiny"], list(seeds), steps, taus, data_overrides=TINY)


def _finish(run_dir: Path, dims=(256,), test=0.9, val=0.9, seconds=10.0, steps=40, seed=0):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "state_dims": list(dims), "test_accuracy": test, "val_accuracy": val, "steps": steps,
        "train_seconds": seconds, "test_accuracy_at_best_val": test - 0.01,
        "best_val_accuracy": val}))
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"step": steps, "wall_seconds": seconds, "val_accuracy": val}) + "\n")


# -- the plan ---------------------------------------------------------------------------------------
def test_the_plan_pairs_every_compressed_run_with_a_direct_run_of_its_seed():
    specs = _plan()
    names = [s.name for s in specs]
    assert len(specs) == 2 + 3 * 2 + 3 * 2
    assert names[:2] == ["baseline-seed0", "baseline-seed1"]
    directs = [s for s in specs if s.direct_of]
    assert {(s.name, s.direct_of) for s in directs} == {
        (f"direct-tau{t}-seed{k}", f"tau{t}-seed{k}") for t in grid.TAUS for k in (0, 1)}
    for spec in specs:
        assert f"train.seed={spec.seed}" in spec.overrides
        assert {"model.d_state=256", "model.dropout=0.1", "train.lr=0.0004",
                "train.lr_schedule=constant", "train.weight_decay=0.0", "train.ssm_lr_factor=1.0",
                "compress.schedule=published", "train.steps=40"} <= set(spec.overrides)
    assert "compress.tol=0.02" in next(s for s in specs if s.name == "tau0.02-seed1").overrides
    assert "compress.mode=none" in directs[0].overrides
    # cadences follow the length: validation every 2.5%, HSVs every 1%, checkpoints <= 1000
    long = grid.plan(["tiny"], [0], 30_000, data_overrides=TINY)[0].overrides
    assert {"train.eval_every=750", "compress.track_every=300", "train.checkpoint_every=1000"} <= set(long)


def test_status_command_and_readiness_follow_the_run_directories(tmp_path):
    specs = {s.name: s for s in _plan(seeds=(0,))}
    base, comp, direct = specs["baseline-seed0"], specs["tau0.01-seed0"], specs["direct-tau0.01-seed0"]
    assert grid.status(base.run_dir(tmp_path)) == "new"
    cmd = grid.command(base, tmp_path, threads=1)
    assert cmd[1:6] == ["-m", "shrinkssm", "train", "--out", str(base.run_dir(tmp_path))]
    assert "train.threads=1" in cmd and "--force" not in cmd
    # died before its first checkpoint: started again over the leftovers
    base.run_dir(tmp_path).mkdir(parents=True)
    (base.run_dir(tmp_path) / "config.yaml").write_text("x")
    assert grid.status(base.run_dir(tmp_path)) == "started"
    assert "--force" in grid.command(base, tmp_path, 1)
    # a checkpoint: resumed as it is
    (base.run_dir(tmp_path) / "checkpoints").mkdir()
    (base.run_dir(tmp_path) / "checkpoints" / "last.pt").write_bytes(b"")
    assert grid.status(base.run_dir(tmp_path)) == "partial"
    assert grid.command(base, tmp_path, 2)[4:] == ["--resume", str(base.run_dir(tmp_path))]
    # a direct run waits for its compressed run, then trains at that run's final size
    assert not grid.ready(direct, tmp_path) and grid.ready(comp, tmp_path)
    _finish(comp.run_dir(tmp_path), dims=(47,))
    assert grid.ready(direct, tmp_path)
    assert "model.d_state=47" in grid.command(direct, tmp_path, 1)
    _finish(base.run_dir(tmp_path))
    assert grid.status(base.run_dir(tmp_path)) == "done"


class _FakeProc:
    """A run that takes ``ticks`` polls, then writes its summary (or is stopped by SIGTERM)."""

    def __init__(self, run_dir, dims, ticks, log):
        self.run_dir, self.dims, self.ticks, self.code, self.log = run_dir, dims, ticks, None, log

    def poll(self):
        if self.code is None:
            self.ticks -= 1
            if self.ticks <= 0:
                _finish(self.run_dir, self.dims)
                self.code = 0
        return self.code

    def send_signal(self, sig):
        assert sig == signal.SIGTERM
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints" / "last.pt").write_bytes(b"")
        self.log.append(("sigterm", self.run_dir.name))
        self.code = 143


def _fake_launcher(log, ticks=2, dims=(40,), clock=None):
    running = []

    def launch(cmd, out):
        run_dir = Path(cmd[cmd.index("--resume" if "--resume" in cmd else "--out") + 1])
        running[:] = [p for p in running if p.code is None]
        running.append(_FakeProc(run_dir, dims, ticks, log))
        log.append(("resume" if "--resume" in cmd else "start", run_dir.name, len(running),
                    next((c for c in cmd if c.startswith("model.d_state=") and run_dir.name.startswith("direct")), None)))
        return running[-1]

    return launch


def test_the_grid_skips_finished_runs_runs_two_at_a_time_and_orders_direct_runs(tmp_path):
    specs = _plan(seeds=(0,), taus=(0.01, 0.04))
    _finish(specs[0].run_dir(tmp_path))                     # the baseline is already done
    log = []
    result = grid.run_grid(specs, tmp_path, jobs=2, launch=_fake_launcher(log), poll=0, say=lambda *_: None)
    assert result.skipped == ["study1-long-tiny/baseline-seed0"]
    assert sorted(result.finished) == sorted(f"study1-long-tiny/{s.name}" for s in specs[1:])
    starts = [e for e in log if e[0] == "start"]
    assert max(e[2] for e in starts) <= 2                   # never more than --jobs at once
    order = [e[1] for e in starts]
    for tau in (0.01, 0.04):                                 # each direct run after its tau run
        assert order.index(f"direct-tau{tau}-seed0") > order.index(f"tau{tau}-seed0")
    assert {e[3] for e in starts if e[1].startswith("direct")} == {"model.d_state=40"}


def test_the_budget_stops_running_runs_and_the_next_session_resumes_them(tmp_path):
    specs = _plan(seeds=(0,), taus=(0.01,))
    now = [0.0]

    def clock():
        now[0] += 30.0                                       # every poll is half a minute
        return now[0]

    log = []
    first = grid.run_grid(specs, tmp_path, jobs=2, max_minutes=1.0, launch=_fake_launcher(log, ticks=10),
                          poll=0, clock=clock, say=lambda *_: None)
    assert sorted(first.stopped) == ["study1-long-tiny/baseline-seed0", "study1-long-tiny/tau0.01-seed0"]
    assert [e[1] for e in log if e[0] == "sigterm"] == ["baseline-seed0", "tau0.01-seed0"]
    assert first.waiting == ["study1-long-tiny/direct-tau0.01-seed0"] and not first.finished
    log.clear()
    second = grid.run_grid(specs, tmp_path, jobs=2, launch=_fake_launcher(log), poll=0, say=lambda *_: None)
    assert [e[:2] for e in log if e[0] != "start" or not e[1].startswith("direct")] == [
        ("resume", "baseline-seed0"), ("resume", "tau0.01-seed0")]
    assert len(second.finished) == 3 and not second.waiting
    third = grid.run_grid(specs, tmp_path, jobs=2, launch=_fake_launcher([]), poll=0, say=lambda *_: None)
    assert len(third.skipped) == 3 and not third.finished


def test_a_failed_compressed_run_leaves_its_direct_run_waiting(tmp_path):
    specs = _plan(seeds=(0,), taus=(0.01,))

    class Failing(_FakeProc):
        def poll(self):
            self.code = 1
            return 1

    result = grid.run_grid(specs[1:], tmp_path, jobs=1, launch=lambda cmd, out: Failing(None, None, 0, []),
                           poll=0, say=lambda *_: None)
    assert result.failed == [("study1-long-tiny/tau0.01-seed0", 1)]
    assert result.waiting == ["study1-long-tiny/direct-tau0.01-seed0"]


# -- the statistics -------------------------------------------------------------------------------
def test_t_interval_by_hand_and_against_scipy():
    mean, low, high = grid.t_interval([1.0, 2.0, 3.0])
    # two degrees of freedom: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so F(t) = 0.975 at
    # t^2 = 2 * 0.95^2 / (1 - 0.95^2); half-width t * s / sqrt(n) with s = 1, n = 3
    t = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))
    half = t / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-12)
    values = [0.8, -0.3, 1.9, 0.4, 1.1]
    ci = scipy.stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert grid.t_interval(values)[1:] == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert math.isnan(grid.t_interval([0.5])[1])
    with pytest.raises(ValueError):
        grid.t_interval([])


def test_paired_differences_pair_by_seed():
    groups = {"tau0.01": [{"seed": 0, "test_accuracy": 0.90}, {"seed": 1, "test_accuracy": 0.85},
                          {"seed": 2, "test_accuracy": 0.80}],
              "direct-tau0.01": [{"seed": 1, "test_accuracy": 0.80}, {"seed": 0, "test_accuracy": 0.91}]}
    got = grid.paired_differences(groups, 0.01)
    assert [s for s, _ in got] == [0, 1]                     # seed 2 has no direct run yet
    assert [d for _, d in got] == pytest.approx([-0.01, 0.05])


def test_top3_ranks_by_validation_never_by_test():
    runs = [{"seed": k, "val_accuracy": v, "test_accuracy": t}
            for k, v, t in [(0, 0.5, 0.99), (1, 0.9, 0.6), (2, 0.8, 0.7), (3, 0.7, 0.8), (4, 0.6, 0.98)]]
    mean, seeds = report.top_k_mean(runs)
    assert seeds == [1, 2, 3] and mean == pytest.approx((0.6 + 0.7 + 0.8) / 3)


def test_the_report_section_shows_paired_intervals_and_the_papers_sizes(tmp_path):
    study = "study1-long-tiny"
    diffs = {0: 0.010, 1: 0.020, 2: 0.030}
    for seed, d in diffs.items():
        _finish(tmp_path / study / f"baseline-seed{seed}", (256,), 0.9, seconds=100.0, seed=seed)
        for tau, n in ((0.01, 50), (0.02, 30), (0.04, 14)):
            _finish(tmp_path / study / f"tau{tau}-seed{seed}", (n + seed,), 0.85 + d, seconds=50.0)
            _finish(tmp_path / study / f"direct-tau{tau}-seed{seed}", (n + seed,), 0.85, seconds=40.0)
    text = "\n".join(report.long_study_section(study, "Long", root=tmp_path, figures=tmp_path / "fig"))
    half = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2)) / math.sqrt(3)   # points: diffs 1, 2, 3
    assert f"| 0.01 | 3 | +2.00 | [{2 - half:+.2f}, {2 + half:+.2f}] |" in text
    assert "| 50, 51, 52 | 47 | 2.00x (2.00-2.00) |" in text
    assert "not distinguishable from" in text                 # the interval holds 0
    assert "top 3 seeds" in text.lower() and (tmp_path / "fig" / f"{study}-accuracy.png").exists()


# -- one real, tiny grid -----------------------------------------------------------------------------
def test_a_tiny_real_grid_runs_end_to_end(tmp_path):
    specs = grid.plan(["tiny"], [0], 30, (0.2,), data_overrides=TINY,
                      extra=["model.d_state=16", "model.dropout=0.0", "train.lr=0.004",
                             "compress.check_every=3", "compress.published_eval_every=3"])
    result = grid.run_grid(specs, tmp_path, jobs=2, poll=0.2, say=lambda *_: None)
    assert not result.failed and len(result.finished) == 3, result
    comp = grid.summary_of(specs[1].run_dir(tmp_path))
    direct = grid.summary_of(specs[2].run_dir(tmp_path))
    assert comp["state_dims"][0] < 16 and direct["initial_state_dims"] == comp["state_dims"]
    assert (specs[1].run_dir(tmp_path) / "hsv_track.jsonl").exists()
    assert (specs[1].run_dir(tmp_path) / "checkpoints" / "best.pt").exists()
