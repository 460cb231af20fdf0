"""Tests of shrinkssm.compress.tracking: HSVs recorded every K steps, the overlap metric, resume."""

import json

import numpy as np
import pytest
import torch

from shrinkssm import lti
from shrinkssm.compress.tracking import (HSVTracker, layer_hsvs, ranking_stability, read_track,
                                         top_overlap)
from shrinkssm.nn import LRU
from shrinkssm.train import Trainer, apply_overrides

# -- the overlap metric, on hand-made data -----------------------------------------------------------
def test_top_overlap_counts_shared_members_of_the_top_sets():
    a, b = [5, 4, 3, 2, 1], [1, 2, 3, 4, 5]
    assert top_overlap(a, a, 3) == 1.0
    assert top_overlap(a, b, 2) == 0.0                      # {0, 1} vs {4, 3}
    assert top_overlap(a, b, 3) == pytest.approx(1 / 3)     # {0, 1, 2} vs {4, 3, 2}
    assert top_overlap(a, b, 5) == 1.0
    assert top_overlap([0.9, 0.1, 0.5, 0.4], [0.8, 0.6, 0.1, 0.7], 2) == 0.5   # {0, 2} vs {0, 3}
    assert top_overlap([1, 1, 1], [0, 1, 1], 1) == 0.0      # ties: lower index first, {0} vs {1}


@pytest.mark.parametrize("args, match", [(([1, 2], [1, 2, 3], 1), "one length"),
                                         (([1, 2], [2, 1], 0), r"r must lie in \[1, 2\]"),
                                         (([1, 2], [2, 1], 3), r"r must lie in \[1, 2\]")])
def test_top_overlap_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        top_overlap(*args)


def _row(step, d_state, hsv, energy):
    return {"step": step, "layers": [{"layer": 0, "d_state": d_state, "hsv": hsv, "state_energy": energy}]}


def test_ranking_stability_uses_the_rank_tau_keeps_and_skips_reductions():
    rows = [_row(10, 4, [0.5, 0.3, 0.15, 0.05], [0.4, 0.3, 0.2, 0.1]),
            _row(20, 4, [0.6, 0.3, 0.05, 0.05], [0.1, 0.4, 0.3, 0.2]),
            _row(30, 2, [0.7, 0.3], [0.3, 0.7]),            # reduced in between: not comparable
            _row(40, 2, [0.9, 0.1], [0.8, 0.2])]
    # tau = 0.2: r = 2 at step 10 (0.5 + 0.3 >= 0.8): top-2 {0, 1} vs {1, 2} -> 0.5
    # at step 20, r = 2 (0.6 + 0.3 >= 0.8): {1, 2} vs (no comparison, size changed)
    # at step 30, r = 2 of 2 -> 1.0 whatever the order
    assert ranking_stability(rows, 0, 0.2) == [(20, 2, 0.5), (40, 2, 1.0)]
    # tau = 0.5: r = 1: {0} vs {1} -> 0; {1} vs {0} at 40 -> 0
    assert ranking_stability(rows, 0, 0.5) == [(20, 1, 0.0), (40, 1, 0.0)]


# -- measurement against an independent solver ---------------------------------------------------------
def test_layer_hsvs_are_the_scipy_hsvs_and_energy_is_per_state(scipy_lru_hsv):
    torch.manual_seed(0)
    layer = LRU(d_model=4, d_state=12)
    measured = layer_hsvs(layer)
    np.testing.assert_allclose(measured.hsv, scipy_lru_hsv(layer), rtol=1e-5, atol=1e-8)
    assert measured.state_energy.shape == (12,) and (measured.state_energy >= 0).all()
    # a state the input cannot reach carries no energy, and the others keep theirs
    with torch.no_grad():
        layer.B_re[3].zero_()
        layer.B_im[3].zero_()
    energy = layer_hsvs(layer).state_energy
    assert energy[3] == pytest.approx(0.0, abs=1e-9 * energy.max())
    assert (np.delete(energy, 3) > 1e-6 * energy.max()).all()


def test_decoupled_states_get_their_own_hsv_as_energy():
    # B = e_j-rows on distinct channels and C matching: the states do not interact (P, Q diagonal)
    torch.manual_seed(1)
    layer = LRU(d_model=3, d_state=3)
    with torch.no_grad():
        layer.B_re.copy_(torch.eye(3) * torch.tensor([1.0, 2.0, 0.5])[:, None])
        layer.B_im.zero_()
        layer.C_re.copy_(torch.eye(3))
        layer.C_im.zero_()
    m = layer_hsvs(layer)
    np.testing.assert_allclose(np.sort(m.state_energy)[::-1], m.hsv, rtol=1e-6)


# -- the trainer records every K steps, resume-safe ---------------------------------------------------
TRACKED = ["compress.track_every=5"]


def test_tracking_records_every_k_steps_the_hsvs_of_the_layer_at_that_step(tiny_config, tmp_path, scipy_lru_hsv):
    cfg = apply_overrides(tiny_config, TRACKED)
    trainer = Trainer(cfg, tmp_path, stop_after=15)
    trainer.fit()
    rows = read_track(tmp_path / "hsv_track.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15]
    layer = trainer.model.ssm_layers()[0]
    np.testing.assert_allclose(rows[-1]["layers"][0]["hsv"], scipy_lru_hsv(layer), rtol=1e-5, atol=1e-9)
    assert rows[-1]["layers"][0]["d_state"] == layer.d_state
    # at the reduction point (step 10) the row holds what the compressor decided on, before it acted
    event = next(e for e in trainer.compressor.history if e.step == 10)
    assert rows[1]["layers"][0]["d_state"] == 24
    np.testing.assert_allclose(rows[1]["layers"][0]["hsv"], event.layers[0].hsv, rtol=1e-12)
    assert rows[2]["layers"][0]["d_state"] == event.layers[0].new < 24


def test_resume_neither_duplicates_nor_loses_tracked_points(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, TRACKED)
    whole = tmp_path / "whole"
    Trainer(cfg, whole).fit()
    expected = read_track(whole / "hsv_track.jsonl")
    assert [r["step"] for r in expected] == [5, 10, 15, 20, 25, 30, 35, 40]

    part = tmp_path / "part"
    Trainer(cfg, part, stop_after=15).fit()
    # a crash after a row was written but before its checkpoint, and a torn line
    path = part / "hsv_track.jsonl"
    with open(path, "a") as handle:
        handle.write(json.dumps({"step": 20, "layers": []}) + "\n" + '{"step": 25, "lay')
    Trainer(None, part, resume=True).fit()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20, 25, 30, 35, 40]      # each once
    for got, want in zip(read_track(path), expected):
        assert got["layers"][0]["d_state"] == want["layers"][0]["d_state"]
        np.testing.assert_allclose(got["layers"][0]["hsv"], want["layers"][0]["hsv"], rtol=1e-6)


def test_tracker_in_memory_and_its_errors():
    torch.manual_seed(0)
    model = torch.nn.Sequential(LRU(d_model=4, d_state=6))
    tracker = HSVTracker(3)
    assert [s for s in range(1, 10) if tracker.due(s)] == [3, 6, 9]
    row = tracker.record(3, model)
    assert row["step"] == 3 and len(row["layers"][0]["hsv"]) == 6 and tracker.rows == [row]
    np.testing.assert_allclose(row["layers"][0]["hsv"],
                               lti.hankel_singular_values(model[0].system()).numpy())
    with pytest.raises(ValueError, match="track_every must be >= 1"):
        HSVTracker(0)
