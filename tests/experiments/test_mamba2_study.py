"""Tests of experiments/mamba2_study.py (the Mamba-2 comparison grid), its report section and
benchmarks/mamba2_decode.py (decoding speed and state memory)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mamba2_decode as decode  # noqa: E402
import mamba2_study as study  # noqa: E402
import report  # noqa: E402
import study1_long as grid  # noqa: E402
from shrinkssm.nn import ModelConfig, SSMModel  # noqa: E402

TINY = {"tiny": ["data.name=digits", "model.layer=mamba2", "model.n_layers=1", "model.d_model=8",
                 "model.headdim=4", "model.d_state=8", "model.norm=layer", "train.batch_size=16",
                 "train.lr=0.004"]}


def _model(d_state=8, form="exact", task="classification", layers=1, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(layer="mamba2", n_layers=layers, d_model=8, headdim=4, d_state=d_state,
                      norm="layer", mamba2_reduction=form)
    if task == "lm":
        return SSMModel(cfg, d_input=11, d_output=11, task="lm")
    return SSMModel(cfg, d_input=1, d_output=10)


def _reduce(model, r):
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 40, 1) if not model.tokens else torch.randint(0, 11, (4, 40)))
    for layer in model.ssm_layers():
        layer.apply_reduction_(layer.plan_reduction(lambda hsv, size: r))
    return model.eval()


# -- the plan -------------------------------------------------------------------------------------
def test_the_plan_runs_four_arms_per_seed_in_seed_order_and_sizes_direct_after_exact(tmp_path):
    specs = study.plan(["tiny"], [0, 1], 50, task_overrides=TINY)
    assert [s.name for s in specs] == [f"{a}-seed{k}" for k in (0, 1) for a in study.ARMS]
    by = {s.name: s for s in specs}
    assert "model.mamba2_reduction=exact" in by["exact-seed1"].overrides
    assert "model.mamba2_reduction=folded" in by["folded-seed1"].overrides
    for name in ("exact-seed0", "folded-seed0"):
        assert set(study.COMPRESS) <= set(by[name].overrides)
    for name in ("full-seed0", "direct-seed0"):
        assert "compress.mode=none" in by[name].overrides
    assert by["direct-seed1"].direct_of == "exact-seed1"
    assert all(f"train.seed={s.seed}" in s.overrides for s in specs)
    assert {"train.steps=50", "train.eval_every=10", "train.checkpoint_every=5"} <= set(specs[0].overrides)
    direct = by["direct-seed0"]
    assert not grid.ready(direct, tmp_path)
    (tmp_path / direct.study / "exact-seed0").mkdir(parents=True)
    (tmp_path / direct.study / "exact-seed0" / "summary.json").write_text(json.dumps({"state_dims": [3]}))
    assert grid.ready(direct, tmp_path)
    cmd = grid.command(direct, tmp_path, 1)
    assert "model.d_state=3" in cmd and "model.d_state=8" not in cmd
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        study.plan(["nope"], [0], 10, task_overrides=TINY)
    assert study.plan(["mnist"], [0])[0].overrides.count("train.steps=800") == 1


# -- decoding and state memory --------------------------------------------------------------------
def test_state_bytes_count_the_conv_window_and_the_ssm_state_of_each_form():
    E, heads, P, N, r, k = 16, 4, 4, 8, 3, 4 - 1          # d_model 8, expand 2, d_conv 4
    full = _model(N, task="lm", layers=2)
    assert decode.state_bytes(full.init_states(5), 5) == 2 * 4 * ((E + 2 * N) * k + heads * P * N)
    exact = _reduce(_model(N, "exact", task="lm", layers=2), r)
    # exact: B and C are projected after the convolution, whose window keeps width N
    assert decode.state_bytes(exact.init_states(3), 3) == 2 * 4 * ((E + 2 * N) * k + heads * P * r)
    folded = _reduce(_model(N, "folded", task="lm", layers=2), r)
    assert decode.state_bytes(folded.init_states(1), 1) == 2 * 4 * ((E + 2 * r) * k + heads * P * r)
    with pytest.raises(ValueError):
        decode.state_bytes(full.init_states(1), 0)


def test_the_classifier_stack_stepped_equals_its_forward_features():
    model = _reduce(_model(8, "exact"), 5)
    x = torch.randn(3, 12, 1)
    with torch.no_grad():
        want = model.features(x)                                              # (3, 12, 8)
        states, got = model.init_states(3), []
        for t in range(12):
            h, states = decode._stack_step(model, x[:, t], states)
            got.append(h)
    torch.testing.assert_close(torch.stack(got, 1), want, atol=1e-5, rtol=1e-5)


def test_measure_counts_every_stream_and_times_each_model_at_each_batch():
    ticks = [0.0]

    def clock():                                           # every timed call takes 0.25 s
        ticks[0] += 0.25
        return ticks[0]

    models = {"lm": _model(8, task="lm"), "cls": _model(4)}
    res = decode.measure(models, (1, 4), n_tokens=10, rounds=3, clock=clock)
    assert res["lm"]["tokens_per_s"] == {1: pytest.approx(40.0), 4: pytest.approx(160.0)}
    assert res["cls"]["state_dims"] == [4]
    assert res["cls"]["state_bytes"] == 4 * ((16 + 8) * 3 + 16 * 4)
    run, memory = decode.decode_fn(models["lm"], 2, 3)
    run()                                                   # greedy tokens feed back without error
    with pytest.raises(ValueError):
        decode.decode_fn(models["lm"], 0, 3)


# -- the report -----------------------------------------------------------------------------------
def _fake(run_dir, test, secs, dims, tps1, tps64, mem, metric="accuracy"):
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({
        "metric": metric, f"test_{metric}": test, f"test_{metric}_at_best_val": test, "steps": 100,
        "train_seconds": secs, "state_dims": [dims], "state_sizes": [16 * dims], "parameters": 1000}))
    (run_dir / "decode.json").write_text(json.dumps({
        "tokens_per_s": {"1": tps1, "64": tps64}, "state_bytes_per_sequence": mem, "cpu": "Test CPU"}))


def test_the_report_pairs_by_seed_says_what_is_done_and_where_each_form_pays(tmp_path):
    base = tmp_path / "mamba2-mnist"
    for seed, d in ((0, 0.01), (1, 0.02), (2, 0.03)):
        _fake(base / f"full-seed{seed}", 0.90, 100.0, 64, 1000.0, 10000.0, 4000.0)
        _fake(base / f"exact-seed{seed}", 0.80 + d, 80.0, 16, 900.0, 20000.0, 2000.0)
        _fake(base / f"folded-seed{seed}", 0.80, 50.0, 16, 1000.0, 30000.0, 1000.0)
        if seed < 2:
            _fake(base / f"direct-seed{seed}", 0.80, 50.0, 16, 1000.0, 30000.0, 1000.0)
    (base / "direct-seed2" / "checkpoints").mkdir(parents=True)
    (base / "direct-seed2" / "checkpoints" / "last.pt").write_bytes(b"")
    text = "\n".join(report.mamba2_section("mnist", "T", root=tmp_path))
    assert "Runs done (11 of 12)" in text and "resumed next session): direct-seed2." in text
    assert "| exact | 1 | [16] | 256 | 1,000 | 82.00 | 82.00 | 80 | 1.25x | 900 | 20,000 | 0.90 | 2.00 | 2,000 | 0.50 |" in text
    # exact - direct over seeds 0, 1: 1 and 2 points; t(0.975, 1) = 12.706, s = 0.7071
    half = 12.7062047 * math.sqrt(0.5) / math.sqrt(2)
    assert f"| exact | direct | +1.50 (95% t-interval [{1.5 - half:+.2f}, {1.5 + half:+.2f}], n = 2) | not distinguishable |" in text
    # exact - full: -9, -8, -7 points (all below 0)
    assert "| exact | full | -8.00 (" in text and "| worse |" in text
    assert "| exact | 1.25x | 0.90x | 2.00x | 0.50x |" in text
    assert "| folded | 2.00x | 1.00x | 3.00x | 0.25x |" in text
    assert ("- **exact**: training pays (1.25x the full run's speed); decoding at batch 1 costs (0.90x); "
            "decoding at batch 64 pays (2.00x)") in text
    assert "decoding at batch 1 is level (1.00x)" in text
    assert "the direct run is not" not in text                # both forms ended at 16


def test_the_report_marks_bits_per_char_lower_is_better(tmp_path):
    base = tmp_path / "mamba2-shakespeare"
    _fake(base / "full-seed0", 2.0, 100.0, 64, 1.0, 1.0, 1.0, "bits_per_char")
    _fake(base / "exact-seed0", 2.5, 100.0, 16, 1.0, 1.0, 1.0, "bits_per_char")
    text = "\n".join(report.mamba2_section("shakespeare", "T", root=tmp_path))
    assert "| exact | full | -0.500 (one seed, no interval, n = 1) | one seed |" in text   # 3 decimals
    assert "| exact | 0 | [16] | 256 | 1,000 | 2.500 | 2.500 |" in text
    assert "positive means the compressed run is better" in text
    assert "The uncompressed runs reach 2.000 bits per character" in text   # the full run's 2.0


# -- one real, tiny grid ----------------------------------------------------------------------------
def test_a_tiny_real_grid_runs_end_to_end_and_measures_decoding(tmp_path):
    specs = study.plan(["tiny"], [0], 20, task_overrides=TINY, extra=["train.eval_batches=2"])
    result = grid.run_grid(specs, tmp_path, jobs=1, poll=0.2, say=lambda *_: None)
    assert not result.failed and len(result.finished) == 4, result
    runs = {s.name.split("-")[0]: grid.summary_of(s.run_dir(tmp_path)) for s in specs}
    assert runs["full"]["state_dims"] == [8]
    assert runs["exact"]["state_dims"] == runs["folded"]["state_dims"] == runs["direct"]["state_dims"]
    assert runs["exact"]["state_dims"][0] < 8
    written = study.measure_decoding(tmp_path, n_tokens=4, rounds=1, say=lambda *_: None)
    assert len(written) == 4
    dec = json.loads((specs[1].run_dir(tmp_path) / "decode.json").read_text())
    assert dec["timed_with"] == ["direct", "exact", "folded", "full"]
    assert dec["state_dims"] == runs["exact"]["state_dims"] and dec["tokens_per_s"]["64"] > 0
    assert study.measure_decoding(tmp_path, say=lambda *_: None) == []   # measured once
    text = "\n".join(report.mamba2_section("tiny", "T", root=tmp_path, seeds=(0,)))
    assert "Runs done (4 of 4)" in text and "Where each form pays" in text


# -- the report: recovery after each reduction ----------------------------------------------------
STEPS = range(10, 201, 10)                                  # logged every 10 steps, 200 steps


def _full_loss():
    return {s: 2.0 - 0.001 * s for s in STEPS}              # falls by itself, 0.01 per logged point


def _bumped(bump, at=100):
    """The full run's losses, plus ``bump[s]`` at the logged steps after the reduction at ``at``."""
    return {s: v + (bump.get(s, 0.0) if s > at else 0.0) for s, v in _full_loss().items()}


def _write_log(run_dir, losses, reductions=(), events=None, torn=False):
    """``metrics.jsonl`` as the trainer writes it (a reduction row, then the loss row of its step);
    ``reductions``: ``(step, val score before, after)``; ``events``: ``reductions.json``'s."""
    run_dir.mkdir(parents=True, exist_ok=True)
    red = {s: (b, a) for s, b, a in reductions}
    lines = []
    for step in sorted(losses):
        if step in red:
            lines.append(json.dumps({"step": step, "reduction": True, "state_dims": [4],
                                     "val_score_before": red[step][0], "val_score_after": red[step][1]}))
        lines.append(json.dumps({"step": step, "loss": losses[step], "lr": 0.001}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + ('{"step": 210, "lo' if torn else ""))
    if events is not None:
        (run_dir / "reductions.json").write_text(json.dumps({"events": events}))


def test_a_known_jump_and_its_recovery_come_out_as_computed_by_hand(tmp_path):
    # the fold adds 0.3, 0.2, 0.1 to the logged losses at 110, 120, 130, nothing after
    _write_log(tmp_path / "full-seed0", _full_loss())
    _write_log(tmp_path / "folded-seed0", _bumped({110: 0.3, 120: 0.2, 130: 0.1}),
               [(100, 0.50, 0.45)], torn=True,
               events=[{"step": 100, "metric_before": 0.5, "metric_after": 0.45, "rolled_back": False,
                        "layers": [{"layer": 0, "old": 8, "new": 4}]}])
    events, notes = report.run_recovery(tmp_path / "folded-seed0", tmp_path / "full-seed0",
                                        horizons=(30, 100, 300))
    assert notes == [] and len(events) == 1
    e = events[0]
    assert (e["step"], e["ordinal"], e["dims"], e["rolled_back"]) == (100, 1, "8→4", False)
    assert e["val_before"] == 0.5 and e["val_change"] == pytest.approx(-0.05)
    # before: mean of the losses at 90 and 100 (1.91, 1.90); after: at 110 and 120 (2.19, 2.08)
    assert e["before"] == pytest.approx(1.905) and e["after"] == pytest.approx(2.135)
    assert e["change"] == pytest.approx(0.23)
    # smoothed (2 points) at 120 2.135, 130 2.025, 140 1.915, 150 1.855 <= 1.905: 50 steps
    assert e["recovered"] == 50 and e["limit"] == "end of run" and e["searched_to"] == 200
    assert e["gap_before"] == pytest.approx(0.0, abs=1e-12) and e["gap_after"] == pytest.approx(0.25)
    assert e["gaps"][30] == pytest.approx(0.15)                    # over 120 and 130
    assert e["gaps"][100] == pytest.approx(0.0, abs=1e-12)         # over 190 and 200
    assert e["gaps"][300] is None                                  # step 400: beyond the run
    assert not any(e["crosses"].values()) and e["gap_end"] == pytest.approx(0.0, abs=1e-12)
    # a validation score recorded negated (bits per character) comes back in its own units
    events, _ = report.run_recovery(tmp_path / "folded-seed0", tmp_path / "full-seed0", sign=-1.0)
    assert events[0]["val_before"] == -0.5 and events[0]["val_change"] == pytest.approx(0.05)


def test_no_recovery_is_said_per_limit_and_a_gap_past_the_next_reduction_is_marked():
    full = sorted(_full_loss().items())
    stuck = sorted(_bumped({s: 0.5 for s in STEPS}, at=60).items())   # +0.5 from step 70 on
    steps = [60, 100]
    first = report.loss_recovery(stuck, steps, 0, full)
    assert first["recovered"] is None and first["limit"] == "next reduction" and first["next"] == 100
    assert first["searched_to"] == 100                   # the row at the next reduction's step counts
    assert first["crosses"] == {100: True, 300: True} and first["gaps"][100] == pytest.approx(0.5)
    # the second: before over 90, 100 (2.41, 2.40), after over 110, 120 (2.39, 2.38): recovered at 120
    second = report.loss_recovery(stuck, steps, 1, full)
    assert second["before"] == pytest.approx(2.405) and second["recovered"] == 20
    last = report.loss_recovery(stuck, [60], 0, full)
    assert last["recovered"] is None and last["limit"] == "end of run"
    assert report._recovered_cell(last) == "not within the run"
    assert report._recovered_cell(first) == "not before the next reduction (step 100)"
    assert report._recovered_text([None, 40], {"end of run"}) == "40; not within the run in 1 of 2"


def test_missing_rows_give_a_note_naming_the_run_not_a_crash(tmp_path):
    # no metrics.jsonl at all, but reductions.json has the event and its scores
    (tmp_path / "exact-seed0").mkdir()
    (tmp_path / "exact-seed0" / "reductions.json").write_text(json.dumps(
        {"events": [{"step": 100, "metric_before": 0.4, "metric_after": 0.4}]}))
    _write_log(tmp_path / "full-seed0", {s: v for s, v in _full_loss().items() if s != 110})
    events, notes = report.run_recovery(tmp_path / "exact-seed0", tmp_path / "full-seed0")
    assert events[0]["val_change"] == 0.0 and events[0]["before"] is None and events[0]["recovered"] is None
    assert "exact-seed0: no metrics.jsonl" in notes
    assert any("fewer than 2 logged training losses between the start and the reduction at step 100 (0)"
               in n for n in notes)
    # loss rows but no reduction anywhere
    _write_log(tmp_path / "folded-seed0", _full_loss())
    events, notes = report.run_recovery(tmp_path / "folded-seed0", None)
    assert events == [] and notes == ["folded-seed0: no reduction recorded (no `reduction` rows in "
                                      "metrics.jsonl, no events in reductions.json)"]
    # the full run lacks a step the gap needs; a reduction row without its scores
    _write_log(tmp_path / "exact-seed1", _full_loss(), [(100, None, None)])
    events, notes = report.run_recovery(tmp_path / "exact-seed1", tmp_path / "full-seed0")
    assert events[0]["gap_after"] is None and events[0]["gap_before"] == pytest.approx(0.0, abs=1e-12)
    assert events[0]["val_before"] is None and events[0]["change"] == pytest.approx(-0.02)
    assert "exact-seed1, reduction at step 100: the full run has no logged training loss at step 110" in notes
    assert "exact-seed1, reduction at step 100: validation score before the reduction not recorded" in notes
    (tmp_path / "exact-seed1" / "reductions.json").write_text("[1, 2]")
    assert "exact-seed1: reductions.json is not a JSON object with a list 'events'" in \
        report.run_recovery(tmp_path / "exact-seed1", None)[1]


def test_the_section_tables_the_recovery_per_run_and_per_point_and_draws_the_curves(tmp_path):
    base = tmp_path / "mamba2-mnist"
    bumps = {0: {110: 0.3, 120: 0.2, 130: 0.1},                   # recovered after 50 steps
             1: {110: 0.5, 120: 0.4, 130: 0.3, 140: 0.2, 150: 0.1}}  # after 60 (mean(1.95, 1.84) at 160)
    for seed in (0, 1):
        for arm in ("full", "exact", "folded"):
            _fake(base / f"{arm}-seed{seed}", 0.5, 10.0, 4 if arm != "full" else 8, 1.0, 1.0, 1.0)
        _write_log(base / f"full-seed{seed}", _full_loss())
        _write_log(base / f"exact-seed{seed}", _full_loss(), [(100, 0.30, 0.30)])
        _write_log(base / f"folded-seed{seed}", _bumped(bumps[seed]), [(100, 0.30, 0.28 - 0.02 * seed)])
    text = "\n".join(report.mamba2_section("mnist", "T", root=tmp_path, figures=tmp_path / "figures"))
    assert "### Recovery after each reduction" in text and "logged every 10 steps" in text
    rows = text.split("### Recovery after each reduction")[1].splitlines()
    for i, line in enumerate(rows):                    # every table: as many cells as its header
        if line.startswith("|---"):
            assert line.count("|") == rows[i - 1].count("|") == rows[i + 1].count("|"), rows[i - 1]
    assert ("| folded | 1 | 100 | - | 30.00 | 26.00 | -4.00 | 1.905 | 2.335 | +0.430 | 60 | +0.000 | "
            "+0.450 | +0.000 | - | +0.000 |") in text
    assert ("| exact | 0 | 100 | - | 30.00 | 30.00 | +0.00 | 1.905 | 1.885 | -0.020 | 20 | +0.000 | "
            "+0.000 | +0.000 | - | +0.000 |") in text
    # over the two seeds: val -2 and -4 points, loss +0.23 and +0.43, recovered 50 and 60 steps
    assert ("| folded | 1 | 100 | 2 | -3.00 (-4.00 to -2.00) | +0.330 (+0.230 to +0.430) | 55 (50 to 60) | "
            "+0.000 | +0.350 (+0.250 to +0.450) | +0.000 | - | +0.000 |") in text
    assert "| exact | 1 | 100 | 2 | +0.00 | -0.020 | 20 | +0.000 | +0.000 | +0.000 | - | +0.000 |" in text
    assert ("- **exact**: at its 2 reductions the validation accuracy changed by +0.00 points (worse at 0, "
            "unchanged at 2") in text
    assert "at the earliest measurable point (20 steps after) in all 2" in text
    assert ("- **folded**: at its 2 reductions the validation accuracy changed by -3.00 (-4.00 to -2.00) "
            "points (worse at 2, unchanged at 0") in text
    assert "back at or below its level before the reduction in 2 of 2 cases, after 55 (50 to 60) steps" in text
    assert "the gap to the full run went from +0.000 just before to +0.350 just after" in text
    assert "- Mean size of the validation change at a reduction: folded 3.00, exact 0.00 points." in text
    figure = tmp_path / "figures" / "mamba2-mnist-recovery.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training loss around the reductions](figures/mamba2-mnist-recovery.png)" in text
    # runs without their metrics: said, not crashed
    for arm in ("exact", "folded"):
        for seed in (0, 1):
            (base / f"{arm}-seed{seed}" / "metrics.jsonl").unlink()
    text = "\n".join(report.mamba2_section("mnist", "T", root=tmp_path))
    assert "_No reduction with its metrics recorded in the compressed runs yet._" in text
    assert "- folded-seed1: no metrics.jsonl" in text
