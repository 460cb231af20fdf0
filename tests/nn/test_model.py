"""Tests of shrinkssm.nn.model: the deep SSM, its pooling, masks, norms and recurrent mode."""

import pytest
import torch
from torch import nn

from shrinkssm.nn import MaskedBatchNorm, ModelConfig, SSMModel


def _model(task="classification", norm="batch", pooling="mean", tokens=None, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=2, d_model=6, d_state=10, norm=norm, pooling=pooling, scan="ref")
    d_in = 7 if task == "lm" or tokens else 2
    return SSMModel(cfg, d_input=d_in, d_output=5 if task != "regression" else 3, task=task,
                    tokens=tokens, **kw).double()


def test_shapes_for_each_task():
    x = torch.randn(4, 12, 2, dtype=torch.float64)
    assert _model("classification")(x).shape == (4, 5)
    assert _model("regression")(x).shape == (4, 12, 3)
    assert _model("regression", per_step=False)(x).shape == (4, 3)
    tokens = torch.randint(0, 7, (4, 12))
    assert _model("lm")(tokens).shape == (4, 12, 5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_over_valid_positions_ignores_padding(pooling):
    model = _model(norm="layer", pooling=pooling).eval()
    x = torch.randn(1, 9, 2, dtype=torch.float64)
    ref = model(x)
    padded = torch.cat([x, 50 * torch.randn(1, 4, 2, dtype=torch.float64)], 1)
    mask = torch.tensor([[True] * 9 + [False] * 4])
    assert torch.allclose(model(padded, mask), ref, atol=1e-12)


def test_masked_batch_norm_equals_batchnorm1d_without_mask_and_skips_padding_with_one():
    torch.manual_seed(0)
    x = torch.randn(4, 11, 6)
    ours, ref = MaskedBatchNorm(6), nn.BatchNorm1d(6)
    assert torch.allclose(ours(x), ref(x.transpose(1, 2)).transpose(1, 2), atol=1e-5)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-5)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x.transpose(1, 2)).transpose(1, 2), atol=1e-5)
    # statistics from valid positions only
    bn = MaskedBatchNorm(6)
    mask = torch.zeros(4, 11, dtype=torch.bool)
    mask[:, :5] = True
    x_pad = x.clone()
    x_pad[:, 5:] = 1e6
    out = bn(x_pad, mask)
    assert torch.allclose(out[:, :5], MaskedBatchNorm(6)(x[:, :5]), atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_recurrent_step_equals_forward_for_language_models(norm):
    model = _model("lm", norm=norm)
    tokens = torch.randint(0, 7, (3, 15))
    model.train()
    model(tokens)                                   # move batch-norm running statistics
    model.eval()
    full = model(tokens)
    states, outs = model.init_states(3), []
    for k in range(tokens.shape[1]):
        out, states = model.step(tokens[:, k], states)
        outs.append(out)
    assert torch.allclose(torch.stack(outs, 1), full, atol=1e-10)


def test_step_needs_eval_mode_and_a_per_step_model():
    model = _model("lm")
    with pytest.raises(RuntimeError, match="eval"):
        model.step(torch.zeros(2, dtype=torch.long), model.init_states(2))
    with pytest.raises(ValueError, match="per-step"):
        _model("classification").eval().step(torch.zeros(2, 2), [])


def test_ssm_layers_and_layout_round_trip_after_reduction():
    model = _model()
    assert model.state_dims() == [10, 10]
    model.ssm_layers()[0].reduce_(4)
    model.ssm_layers()[1].reduce_(3, method="singular_perturbation")
    layout = model.layout()
    assert layout["layers"] == [{"d_state": 4, "dense_skip": False}, {"d_state": 3, "dense_skip": True}]
    assert layout["state_dims"] == [4, 3]
    x = torch.randn(2, 8, 2, dtype=torch.float64)
    model.eval()
    # the layout of checkpoints written before per-layer layouts is read as well
    for saved in (layout, {"state_dims": [4, 3], "dense_skip": [False, True]}):
        fresh = _model()
        fresh.apply_layout_(saved)
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(model(x), fresh.eval()(x))
    with pytest.raises(ValueError, match="layers"):
        fresh.apply_layout_({"state_dims": [1], "dense_skip": [False]})
    with pytest.raises(ValueError, match="kind of layer"):
        fresh.apply_layout_({"layers": [{"n_bc": 4, "n_diag": 4, "n_real": 0, "n_complex": 0}] * 2})


def test_unknown_task_and_config_key():
    with pytest.raises(ValueError, match="task must be one of"):
        SSMModel(ModelConfig(), d_input=1, d_output=2, task="segmentation")
    with pytest.raises(ValueError, match="d_stat"):
        ModelConfig(d_stat=3)


def test_per_block_state_sizes():
    cfg = ModelConfig(n_layers=3, d_model=4, d_state=[8, 5, 3], scan="ref")
    assert SSMModel(cfg, d_input=1, d_output=2).state_dims() == [8, 5, 3]
    with pytest.raises(ValueError, match="3 blocks"):
        ModelConfig(n_layers=3, d_state=[8, 5])
    with pytest.raises(ValueError, match=">= 1"):
        ModelConfig(d_state=0)


def _tail_pair(dtype, **cfg):
    """Two copies of one model: the block tail fused (default) and as separate torch ops."""
    import copy
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(**{"d_model": 8, "d_state": 12, **cfg}), d_input=3, d_output=4).to(dtype)
    plain = copy.deepcopy(model)
    for block in plain.blocks:
        block.fused_tail = False
    return model, plain


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["lru", "masked", "dense_skip", "selective", "layer_norm", "eval"])
def test_fused_block_tail_gives_the_outputs_and_gradients_of_the_torch_tail(dtype, case):
    cfg = {"layer": "selective", "d_state": 4} if case == "selective" else {}
    if case == "layer_norm":
        cfg["norm"] = "layer"
    cfg["n_layers"] = 2
    fused, plain = _tail_pair(dtype, **cfg)
    if case == "dense_skip":
        for model in (fused, plain):
            for layer in model.ssm_layers():
                torch.manual_seed(1)
                layer.resize_(layer.d_state, dense_skip=True)
                layer.reset_parameters()
                layer.to(dtype)
    if case == "eval":
        fused.eval(), plain.eval()
    torch.manual_seed(2)
    x = torch.randn(5, 41, 3, dtype=dtype)
    mask = None
    if case == "masked":
        mask = torch.ones(5, 41, dtype=torch.bool)
        mask[1, 30:] = False
        mask[3, :7] = False
    outs, grads = [], []
    for model in (fused, plain):
        out = model(x, mask)
        out.square().sum().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    assert torch.allclose(outs[0], outs[1], **tol)
    for name, g in grads[1].items():
        if g is None:                                     # unused in this configuration
            assert grads[0][name] is None, name
            continue
        scale = g.abs().max().item() if dtype == torch.float32 else 1.0
        assert torch.allclose(grads[0][name], g, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1.0)), name
    for a, b in zip(fused.buffers(), plain.buffers()):    # batch-norm running statistics
        assert torch.allclose(a, b, **tol)


def test_dropout_in_training_takes_the_unfused_tail():
    fused, plain = _tail_pair(torch.float64, dropout=0.3)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    torch.manual_seed(5)
    a = fused(x)
    torch.manual_seed(5)
    b = plain(x)
    assert torch.equal(a, b)
