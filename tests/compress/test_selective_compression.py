"""Compression of selective (Mamba-style) models through shrinkssm.compress.Compressor, on real data
(sklearn digits): a layer's output before/after reductions with small tau, both reductions
(per-channel balanced truncation and the shared subset), the two surrogates, optimizer surgery,
pragmatic rollback, the agree hook, and that the scan's work follows the kept ranks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from shrinkssm.compress import Compressor
from shrinkssm.data import load_dataset
from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.nn.selective import SelectiveSSM


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _model(reduction="per_channel", N=12, surrogate="second_moment", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=8, d_state=N, norm="layer",
                      selective_reduction=reduction, selective_surrogate=surrogate, dt_min=0.01, dt_max=0.2)
    return SSMModel(cfg, d_input=1, d_output=10).double()


def _batches(data, epoch=0, size=64):
    return data.train.iterate(size, shuffle=True, seed=0, epoch=epoch, drop_last=True)


def _train(model, data, steps, compressor=None, optimizer=None, start=0):
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=3e-3)
    it, epoch, losses = _batches(data), 0, []
    for step in range(start + 1, start + steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            it = _batches(data, epoch)
            batch = next(it)
        loss = F.cross_entropy(model(batch.x.double()), batch.y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if compressor is not None:
            compressor.step(step, model, opt)
    return opt, losses


@pytest.fixture(scope="module")
def trained(digits):
    """Models trained for 40 steps (statistics tracked along the way), one per reduction kind."""
    out = {}
    for reduction in ("per_channel", "shared"):
        model = _model(reduction)
        _train(model, digits, 40)
        out[reduction] = model
    return out


def _val_x(data):
    return next(data.val.iterate(128, shuffle=False, seed=0, epoch=0, drop_last=False)).x.double()


def _scan_output(model, x):
    """The first layer's scan output (before skip and gate), whose inputs a reduction leaves unchanged;
    the logits of these small, briefly trained models hardly depend on the SSM path, so they would
    say little."""
    model.eval()
    block = model.blocks[0]
    with torch.no_grad():
        layer = block.mixer
        u, _, delta, Bx, Cx = layer._branch(block._norm(model.encoder(x), None), None)
        return layer._ssm(u, delta, Bx, Cx)


def _change(before, model, x):
    after = _scan_output(model, x)
    return ((after - before).norm() / before.norm()).item()


def _reduce(model, **kw):
    reduced = copy.deepcopy(model)
    event = Compressor([1], gate=1.0, **kw).reduce(1, reduced)
    return reduced, event


@pytest.mark.parametrize("reduction", ["per_channel", "shared"])
def test_small_tau_keeps_outputs_close_and_larger_tau_moves_them_more(digits, trained, reduction):
    model = trained[reduction]
    x = _val_x(digits)
    before = _scan_output(model, x)
    changes, sizes = [], []
    for tol in (0.01, 0.05, 0.3):
        reduced, event = _reduce(model, tol=tol)
        changes.append(_change(before, reduced, x))
        sizes.append(sum(layer.state_size for layer in reduced.ssm_layers()))
    full = sum(layer.state_size for layer in model.ssm_layers())
    assert sizes[0] < full and sizes[2] < sizes[0]          # something was reduced, more for larger tau
    assert changes[0] < 0.02, changes                        # measured: 0.5% (per channel), 0.7% (shared)
    assert changes[0] < changes[2], changes


def test_second_moment_surrogate_beats_the_mean_one_at_equal_size(digits):
    """Same per-channel ranks (fixed mode, half of every channel): the second-moment surrogate's
    balancing changes the outputs much less than the paper's mean surrogate."""
    x = _val_x(digits)
    changes = {}
    for surrogate in ("second_moment", "mean"):
        model = _model(surrogate=surrogate)
        _train(model, digits, 40)
        before = _scan_output(model, x)
        reduced, event = _reduce(model, mode="fixed", fraction=0.5)
        assert all(e.new == 6 for e in event.layers)
        changes[surrogate] = _change(before, reduced, x)
    assert changes["second_moment"] < 0.5 * changes["mean"], changes   # measured: 0.2% vs 1.0%


def test_tau_zero_changes_nothing(trained):
    model = copy.deepcopy(trained["per_channel"])
    params = list(model.parameters())
    state = copy.deepcopy(model.state_dict())
    event = Compressor([1], tol=0.0).reduce(1, model)
    assert all(e.skipped is not None for e in event.layers)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("reduction, policy", [("per_channel", "reset"), ("shared", "slice")])
def test_training_goes_on_after_reductions(digits, reduction, policy):
    model = _model(reduction)
    compressor = Compressor([8, 16], tol=0.05, optimizer_state=policy)
    opt, losses = _train(model, digits, 24, compressor)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert [e.step for e in compressor.history] == [8, 16]
    first = compressor.history.events[0]
    assert all(e.new < e.old or e.skipped for e in first.layers)
    assert any(e.skipped is None for e in first.layers)
    assert len(first.layers[0].hsv) == 16 * 12          # every channel's HSVs are recorded
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in model.parameters())
    assert len(held) == len(list(model.parameters()))


def test_pragmatic_rollback_restores_selective_layers(digits, trained):
    model = copy.deepcopy(trained["per_channel"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, digits, 2, optimizer=opt)
    layout, state = model.layout(), copy.deepcopy(model.state_dict())
    scores = iter([0.9, 0.1])
    compressor = Compressor([1], mode="pragmatic", fraction=0.5, evaluate=lambda m: next(scores))
    event = compressor.reduce(1, model, opt)
    assert event.rolled_back and compressor.stopped
    assert model.layout() == layout
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in model.parameters())
    _train(model, digits, 2, optimizer=opt)                  # and training goes on


def test_agree_hook_sets_every_process_to_the_same_ranks(trained):
    model = copy.deepcopy(trained["per_channel"])
    compressor = Compressor([1], tol=0.01, agree=lambda ranks: [2 for _ in ranks])
    compressor.reduce(1, model)
    for layer in model.ssm_layers():
        assert layer.channel_orders().tolist() == [2] * layer.d_inner


def test_mode_none_and_unsupported_methods(trained):
    model = copy.deepcopy(trained["shared"])
    event = Compressor([1], mode="none").reduce(1, model)
    assert all(e.skipped == "mode none" and len(e.hsv) == 16 * 12 for e in event.layers)
    with pytest.raises(ValueError, match="not available for selective"):
        Compressor([1], method="modal").reduce(1, model)


def test_random_shared_subset_is_reproducible(trained):
    kept = []
    for _ in range(2):
        model = copy.deepcopy(trained["shared"])
        event = Compressor([1], method="random", mode="fixed", fraction=0.5, seed=3).reduce(1, model)
        kept.append([e.notes for e in event.layers])
    assert kept[0] == kept[1] and "kept state indices" in kept[0][0][0]


def test_scan_work_follows_the_kept_ranks(trained):
    """The bucket layout holds the kept states plus at most the padding of each bucket to its
    largest channel; no state of the full size is scanned."""
    model = copy.deepcopy(trained["per_channel"])
    Compressor([1], tol=0.05, gate=1.0).reduce(1, model)
    for layer in model.ssm_layers():
        assert isinstance(layer, SelectiveSSM) and layer.is_balanced_form
        orders = layer.channel_orders()
        scanned = 0
        for kind, count in (("re", layer.n_real), ("cx", layer.n_complex)):
            if count:
                lay, _ = layer._layout(kind, torch.float64)
                scanned += lay.n_states * (2 if kind == "cx" else 1)
                lanes = lay.lanes
                per_bucket = lay.offsets.diff() // lanes
                assert (per_bucket > 0).all()
        assert layer.state_size == int(orders.sum()) < 16 * 12
        # padding bound: each bucket is padded to its own largest channel only
        assert scanned <= 2 * layer.state_size + 2 * lanes * int(orders.max())


@pytest.mark.parametrize("reduction", ["per_channel", "shared"])
def test_trainer_resume_after_a_reduction_equals_the_uninterrupted_run(tmp_path, reduction):
    """Checkpoints keep the selective layouts, the per-channel states and the surrogate statistics."""
    from shrinkssm.train import Trainer
    from shrinkssm.train.config import RunConfig, apply_overrides
    cfg = apply_overrides(RunConfig(), [
        "data.name=digits", "model.layer=selective", "model.d_model=8", "model.d_state=12",
        "model.norm=layer", f"model.selective_reduction={reduction}", "train.steps=30",
        "train.batch_size=32", "train.warmup_steps=5", "train.eval_every=15", "train.log_every=10",
        "train.checkpoint_every=12", "train.progress=false", "compress.steps=[8, 16]", "compress.tol=0.05"])
    Trainer(cfg, tmp_path / "whole").fit()
    Trainer(cfg, tmp_path / "split", stop_after=13).fit()
    Trainer(None, tmp_path / "split", resume=True).fit()
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)
    assert a["layout"] == b["layout"] and set(a["layout"]["layers"][0]) == {"n_bc", "n_diag", "n_real", "n_complex"}
    assert a["layout"]["state_dims"][0] < 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
