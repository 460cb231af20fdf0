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
