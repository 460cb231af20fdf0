"""Tests of shrinkssm.train.checkpoint: atomic writes and clear errors on bad files."""

import pytest
import torch

from shrinkssm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

PAYLOAD = dict(step=3, epoch=0, batch=3, config={},
               model_io={"d_input": 1, "d_output": 10, "task": "classification"},
               layout={"state_dims": [4], "dense_skip": [False]}, model={"w": torch.ones(2)},
               optimizer={"state": {}, "param_groups": []}, scheduler={},
               compressor={"history": {"events": []}, "stopped": False},
               rng={"torch_per_rank": [torch.get_rng_state()], "cuda": None},
               extra={"initial_dims": [4], "train_seconds": 0.0})


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, PAYLOAD)
    data = load_checkpoint(path)
    assert data["step"] == 3 and torch.equal(data["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]     # no temporary left


def test_an_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, PAYLOAD)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {**PAYLOAD, "step": 4})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_file_is_called_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, PAYLOAD)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_strangers_and_gaps(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a shrinkssm checkpoint"):
        load_checkpoint(other)
    old = tmp_path / "old.pt"
    torch.save({"format": "shrinkssm-checkpoint", "version": 0}, old)
    with pytest.raises(CheckpointError, match="version 0"):
        load_checkpoint(old)
    partial = tmp_path / "partial.pt"
    torch.save({"format": "shrinkssm-checkpoint", "version": 1, "step": 1}, partial)
    with pytest.raises(CheckpointError, match="incomplete: missing epoch"):
        load_checkpoint(partial)
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path / "x.pt", {"step": 1})
