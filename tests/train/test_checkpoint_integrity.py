"""Checkpoint integrity (issue 15): checksums, malformed fields, non-finite weights, all refused
with the checkpoint error -- in the library and as exit 2 of the CLI."""

import copy

import pytest
import torch

from shrinkssm.cli import main
from shrinkssm.train import CheckpointError, Trainer, load_checkpoint, save_checkpoint
from shrinkssm.train.checkpoint import checksum

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAYLOAD = dict(step=3, epoch=0, batch=3, config={},
               model_io={"d_input": 1, "d_output": 10, "task": "classification"},
               layout={"state_dims": [4], "dense_skip": [False]},
               model={"w": torch.linspace(-1.0, 1.0, 256), "b": torch.zeros(3)},
               optimizer={"state": {}, "param_groups": []}, scheduler={},
               compressor={"history": {"events": []}, "stopped": False},
               rng={"torch_per_rank": [torch.get_rng_state()], "cuda": None},
               extra={"initial_dims": [4], "train_seconds": 0.0})


def _flip_inside(path, tensor):
    """Flip four bytes in the middle of ``tensor``'s stored data inside the zip file."""
    raw = bytearray(path.read_bytes())
    data = tensor.numpy().tobytes()
    at = raw.find(data)
    assert at >= 0, "the tensor's bytes are stored uncompressed"
    middle = at + len(data) // 2
    raw[middle:middle + 4] = bytes(b ^ 0x5A for b in raw[middle:middle + 4])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_tensor_are_refused_naming_the_file_and_the_tensor(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, PAYLOAD)
    _flip_inside(path, PAYLOAD["model"]["w"])
    # the zip container itself does not notice: torch reads the changed number
    changed = torch.load(path, weights_only=True)["model"]["w"]
    assert not torch.equal(changed, PAYLOAD["model"]["w"])
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt: checksum mismatch in "
                                              r"tensor model\['w'\]"):
        load_checkpoint(path)


def test_a_changed_number_outside_the_tensors_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, PAYLOAD)
    data = torch.load(path, weights_only=True)
    data["step"] = 4                                   # the stored checksum is kept
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="checksum mismatch in its non-tensor fields"):
        load_checkpoint(path)


def test_a_checkpoint_without_its_checksum_record_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, PAYLOAD)
    data = torch.load(path, weights_only=True)
    del data["checksum"]
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="no valid checksum record"):
        load_checkpoint(path)


def test_the_checksum_sees_dtype_shape_and_every_value():
    base = checksum(PAYLOAD)
    assert base == checksum(copy.deepcopy(PAYLOAD))
    for change in (lambda p: p["model"].__setitem__("w", p["model"]["w"].double()),
                   lambda p: p["model"].__setitem__("w", p["model"]["w"].reshape(16, 16)),
                   lambda p: p["model"]["w"].__setitem__(7, 0.123),
                   lambda p: p["extra"].__setitem__("train_seconds", 1e-300),
                   lambda p: p["layout"]["dense_skip"].__setitem__(0, True)):
        other = copy.deepcopy(PAYLOAD)
        change(other)
        assert checksum(other)["payload"] != base["payload"]


def test_a_version_1_checkpoint_loads_with_a_warning(tmp_path, shrinkssm_log):
    path = tmp_path / "old.pt"
    torch.save({"format": "shrinkssm-checkpoint", "version": 1, **PAYLOAD}, path)
    assert load_checkpoint(path)["step"] == 3
    assert "without a checksum" in shrinkssm_log.text


def test_non_finite_weights_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "last.pt"
    bad = copy.deepcopy(PAYLOAD)
    bad["model"]["w"][:5] = float("nan")
    bad["model"]["w"][5] = float("inf")
    save_checkpoint(path, bad)
    with pytest.raises(CheckpointError, match=r"non-finite values: model\['w'\] \(6 of 256"):
        load_checkpoint(path)
    data = load_checkpoint(path, allow_nonfinite=True)
    assert int(torch.isnan(data["model"]["w"]).sum()) == 5


MALFORMED = {
    "step": lambda c: c.__setitem__("step", "12"),
    "layout": lambda c: c.__setitem__("layout", [24]),
    "layout.state_dims": lambda c: c["layout"].__setitem__("state_dims", ["24"]),
    "extra.initial_dims": lambda c: c["extra"].pop("initial_dims"),
    "extra": lambda c: c.__setitem__("extra", None),
    "extra.windows_per_rank": lambda c: c["extra"].__setitem__("windows_per_rank", 5),
    "rng": lambda c: c["rng"].__setitem__("torch_per_rank", [torch.zeros(7, dtype=torch.uint8)]),
    "compressor": lambda c: c["compressor"].pop("history"),
    "compressor.history": lambda c: c["compressor"].__setitem__("history", {"events": [{"x": 1}]}),
    "model_io": lambda c: c.__setitem__("model_io", {"d_input": "1"}),
    "model": lambda c: c["model"].__setitem__("layers.0.x", [1, 2]),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from shrinkssm.train import RunConfig, apply_overrides

    run = tmp_path_factory.mktemp("run")
    tiny = ["data.name=digits", "model.d_model=8", "model.d_state=24", "model.norm=layer",
            "train.steps=40", "train.batch_size=32", "train.progress=false",
            "compress.steps=[10, 20]", "compress.tol=0.05"]
    Trainer(apply_overrides(RunConfig(), tiny), run, stop_after=12).fit()
    return run


@pytest.mark.parametrize("field", sorted(MALFORMED))
def test_malformed_fields_are_the_checkpoint_error(trained_run, tmp_path, field, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    MALFORMED[field](ckpt)
    save_checkpoint(path, ckpt)                        # a valid checksum over a wrong body
    with pytest.raises(CheckpointError, match=r"last\.pt is malformed: " + field.split(".")[0]):
        Trainer(None, run, resume=True)
    for command in (["eval", str(run)], ["analyze", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "malformed" in err and str(path) in err and "Traceback" not in err


def test_cli_refuses_a_flipped_checkpoint_and_all_nan_weights(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    name = next(k for k in ckpt["model"] if k.endswith("B_re"))
    _flip_inside(path, ckpt["model"][name].contiguous())
    for command in (["eval", str(run)], ["analyze", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"checkpoint {path} is corrupt: checksum mismatch" in err and name in err
    for value in ckpt["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    save_checkpoint(path, ckpt)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "non-finite values" in err and "--allow-nonfinite" in err
    assert main(["eval", str(run), "--allow-nonfinite"]) == 0
    assert "mean nothing" in capsys.readouterr().err
