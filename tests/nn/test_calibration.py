"""Tests of shrinkssm.nn.calibrate: a Mamba-2 mixer loaded from a Hugging Face checkpoint (random
weights written with save_pretrained, nothing downloaded) calibrated on its own inputs can plan and
apply a reduction; the statistics are the plain average of the per-batch statistics (values
against single-batch training-mode tracking), the same when calibrated again; parameters and
batch-norm statistics unchanged bitwise, no autograd graph, each module's mode restored; the
errors, which leave the statistics as they were; the selective layer through the same helper."""

from __future__ import annotations

import copy
import itertools
import re
import textwrap
from pathlib import Path

import pytest
import torch

from shrinkssm.nn import (LRU, Mamba2SSM, ModelConfig, SelectiveSSM, SSMModel, calibrate,
                          calibrate_surrogates, from_hf)

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = Mamba2SSM(8, 5, headdim=4, ngroups=2, chunk_size=4, **kw).double()
    with torch.no_grad():
        layer.conv1d.bias.uniform_(-0.5, 0.5)
        layer.dt_bias.add_(1.0)
    return layer


def batch(seed, nb=3, L=11, H=8):
    return torch.randn(nb, L, H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def single_batch_stats(layer, x, mask=None):
    """The statistics of one batch by the training-mode path (first batch: weight 1)."""
    fresh = copy.deepcopy(layer).train()
    fresh.reset_gramians_()
    with torch.no_grad():
        fresh(x, mask)
    return fresh.gram_P.clone(), fresh.gram_Q.clone()


def stats(layer):
    return {k: v.clone() for k, v in layer.state_dict().items() if k.startswith("gram_")}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# A mixer from a Hugging Face checkpoint
# ------------------------------------------------------------------------------------------------


def _saved_hf_mamba2(tmp_path):
    """A random 2-block Hugging Face Mamba2ForCausalLM saved to ``tmp_path``, and per block the
    4 inputs (3, 12, 16) its mixer saw on random tokens (forward hooks)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mamba2Config(hidden_size=16, state_size=6, expand=2, head_dim=8, num_heads=4,
                                    n_groups=2, conv_kernel=4, chunk_size=5, num_hidden_layers=2,
                                    vocab_size=11, layer_norm_epsilon=1e-5)
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    seen: list[list[torch.Tensor]] = [[] for _ in hf.backbone.layers]
    hooks = [block.mixer.register_forward_hook(
        lambda mod, args, kwargs, out, i=i: seen[i].append(args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for i, block in enumerate(hf.backbone.layers)]
    ids = torch.randint(0, 11, (4, 3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for chunk in ids:
            hf(chunk)
    for h in hooks:
        h.remove()
    return seen


def test_mixers_from_a_saved_hf_model_calibrate_on_their_inputs_then_plan_and_reduce(tmp_path):
    seen = _saved_hf_mamba2(tmp_path)
    layers = from_hf(tmp_path)
    rule = lambda hsv, size: max(1, size // 2)  # noqa: E731
    for layer, inputs in zip(layers, seen):
        assert len(inputs) == 4 and inputs[0].shape == (3, 12, 16)
        assert layer.plan_reduction(rule).skipped == "no Gramian statistics yet"
        params = {k: v.clone() for k, v in layer.named_parameters()}
        assert calibrate(layer, inputs) == 4
        assert layer.training and int(layer.gram_steps) == 4      # from_hf's mode (train), kept
        for k, v in layer.named_parameters():
            assert torch.equal(v, params[k]), k
        plan = layer.plan_reduction(rule)
        assert not plan.skipped and plan.ranks == [3, 3] and plan.hsv.numel() == 12
        u = inputs[0]
        with torch.no_grad():
            before = layer(u)
        report = layer.apply_reduction_(plan)
        assert report.changed and layer.d_state == 3 and layer.state_size == layer.d_inner * 3
        with torch.no_grad():
            after = layer(u)
        change = float((after - before).norm() / before.norm())
        assert 0.0 < change < 1.0, change       # reduced, still the same layer roughly


def test_the_readme_example_runs_and_reduces(tmp_path):
    seen = _saved_hf_mamba2(tmp_path)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Mamba-2 layers", 1)[1].split("\n## ", 1)[0]
    code = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "calibrate(" in b)
    code = textwrap.dedent(code).replace('"checkpoints/mamba2-small"', repr(str(tmp_path)))
    namespace = {"mixer_inputs": seen}
    exec(compile(code, "README.md", "exec"), namespace)
    assert [layer.d_state for layer in namespace["layers"]] == [3, 3]
    assert namespace["report"].changed


# ------------------------------------------------------------------------------------------------
# What the statistics are
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_statistics_are_the_plain_average_of_the_batches_and_recalibrating_repeats_them(momentum):
    layer = make_layer(gramian_momentum=momentum)
    a, b = batch(1), batch(2)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 6:] = False
    layer.train()
    with torch.no_grad():                              # older statistics, to be forgotten
        layer(batch(9))
        layer(batch(8))
    layer.eval()
    assert calibrate(layer, [a, (b, mask)]) == 2
    Pa, Qa = single_batch_stats(layer, a)
    Pb, Qb = single_batch_stats(layer, b, mask)
    assert not torch.allclose(Pa, Pb, rtol=1e-3)       # the average is not vacuous
    torch.testing.assert_close(layer.gram_P, (Pa + Pb) / 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(layer.gram_Q, (Qa + Qb) / 2, rtol=1e-12, atol=1e-15)
    assert int(layer.gram_steps) == 2 and layer.gramian_momentum == momentum
    first = stats(layer)
    calibrate(layer, [a, (b, mask)])                   # again, the same batches: the same, bitwise
    assert_same(stats(layer), first)
    # training afterwards continues the running average with the layer's own weight
    if momentum is not None:
        layer.train()
        with torch.no_grad():
            layer(a)
        torch.testing.assert_close(layer.gram_P, 0.9 * first["gram_P"] + 0.1 * Pa, rtol=1e-12, atol=1e-15)


def test_max_batches_reads_only_that_many():
    layer = make_layer()
    source = iter([batch(s) for s in range(5)])
    assert calibrate(layer, source, max_batches=2) == 2
    assert len(list(source)) == 3                      # the rest not read
    ref = make_layer()
    calibrate(ref, [batch(0), batch(1)])
    assert_same(stats(layer), stats(ref))


def test_a_reduced_layer_recalibrates_in_its_reduced_coordinates():
    layer = make_layer()
    calibrate(layer, [batch(1), batch(2)])
    layer.apply_reduction_(layer.plan_reduction(lambda hsv, size: size - 2))
    assert layer.ranks == [3, 3]
    calibrate(layer, [batch(3)])
    P, _ = single_batch_stats(layer, batch(3))
    torch.testing.assert_close(layer.gram_P, P, rtol=1e-12, atol=1e-15)
    assert not layer.plan_reduction(lambda hsv, size: size - 1).skipped


# ------------------------------------------------------------------------------------------------
# Nothing else changes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mamba2", "selective"])
def test_parameters_batch_norm_and_modes_are_untouched_and_no_graph_is_built(kind):
    torch.manual_seed(0)
    extra = dict(headdim=4, chunk_size=4) if kind == "mamba2" else {}
    cfg = ModelConfig(layer=kind, n_layers=2, d_model=8, d_state=4, norm="batch", dropout=0.3, **extra)
    model = SSMModel(cfg, d_input=2, d_output=3).double()
    model.train()
    model.blocks[1].eval()                             # mixed modes, restored module by module
    modes = {name: m.training for name, m in model.named_modules()}
    layers = model.ssm_layers()
    keep = {k: v.clone() for k, v in model.state_dict().items()
            if not k.split(".")[-1].startswith(("gram_", "sur_"))}
    assert any("running_mean" in k for k in keep)
    during = []
    hooks = [m.register_forward_hook(lambda mod, args, out: during.append(
        (mod.training, out.requires_grad, torch.is_grad_enabled()))) for m in layers]
    xs = [torch.randn(2, 9, 2, dtype=torch.float64) for _ in range(3)]
    assert calibrate(model, xs) == 3
    for h in hooks:
        h.remove()
    assert during == [(False, False, False)] * 6       # eval mode, no graph
    assert {name: m.training for name, m in model.named_modules()} == modes
    after = model.state_dict()
    for k, v in keep.items():
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in model.parameters())
    # not vacuous: a training-mode pass would have moved the batch-norm statistics
    trained = copy.deepcopy(model).train()
    with torch.no_grad():
        trained(xs[0])
    assert not torch.equal(trained.blocks[0].norm.running_mean, keep["blocks.0.norm.running_mean"])
    assert all(layer.has_statistics() for layer in layers)
    assert all(not layer._calibrating for layer in layers)


def test_selective_layers_calibrate_like_calibrate_surrogates():
    torch.manual_seed(0)
    cfg = ModelConfig(layer="selective", n_layers=2, d_model=5, d_state=4, norm="batch")
    model = SSMModel(cfg, d_input=2, d_output=3).double()
    other = copy.deepcopy(model)
    xs = [torch.randn(2, 9, 2, dtype=torch.float64) for _ in range(3)]
    assert calibrate(model, xs) == 3 == calibrate_surrogates(other, xs)
    for (k, v), w in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(v, w), k
    layer = model.blocks[0].selective
    assert isinstance(layer, SelectiveSSM) and int(layer.sur_steps) == 3
    assert not layer.plan_reduction(lambda hsv, size: 2).skipped


def test_the_layer_context_gathers_in_eval_mode_and_is_not_reentrant():
    layer = make_layer().eval()
    with torch.no_grad():
        layer(batch(1))
    assert not layer.has_gramians()                    # eval mode alone gathers nothing
    with layer.calibrating(), torch.no_grad():
        layer(batch(1))
        with pytest.raises(RuntimeError, match="already calibrating"):
            with layer.calibrating():
                pass
    assert int(layer.gram_steps) == 1 and not layer._calibrating


# ------------------------------------------------------------------------------------------------
# Errors: clear, and the statistics are those from before
# ------------------------------------------------------------------------------------------------


def _trained():
    layer = make_layer().train()
    with torch.no_grad():
        layer(batch(7))
    return layer


@pytest.mark.parametrize("batches,match", [
    ([], "batches is empty"),
    ([batch(1), torch.randn(3, 11, 6, dtype=torch.float64)],
     r"calibration batch 1 \(x of shape \(3, 11, 6\) torch.float64\): expected input of shape \(B, L, 8\)"),
    ([batch(1), (batch(2), torch.ones(3, 5, dtype=torch.bool))], r"calibration batch 1 .*mask must be"),
    ([batch(1), {"x": batch(2)}], "calibration batch 1: expected an input tensor x or an .x, mask. pair"),
    ([(batch(1), batch(2), None)], "got a tuple of 3"),
    ([(batch(1), torch.zeros(3, 11, dtype=torch.bool))], "held no valid position for 1 layer"),
    (batch(1), r"got one tensor of shape \(3, 11, 8\); pass \[x\]"),
])
def test_errors_name_the_batch_and_leave_the_statistics_and_mode_as_they_were(batches, match):
    layer = _trained()
    before = stats(layer)
    with pytest.raises(ValueError, match=match):
        calibrate(layer, batches)
    assert_same(stats(layer), before)
    assert layer.training and not layer._calibrating


def test_module_and_argument_errors():
    with pytest.raises(ValueError, match="contains no layer that gathers reduction statistics"):
        calibrate(LRU(4, 3), [torch.randn(1, 5, 4)])
    with pytest.raises(ValueError, match="max_batches must be >= 1, got 0"):
        calibrate(make_layer(), [batch(1)], max_batches=0)
    with pytest.raises(ValueError, match="max_batches must be a positive integer"):
        calibrate(make_layer(), [batch(1)], max_batches=1.5)
    layer = make_layer()
    calibrate(layer, itertools.repeat(batch(1)), max_batches=3)     # an endless source, cut off
    assert int(layer.gram_steps) == 3
