"""Our Mamba-2 and Mamba layers against Hugging Face's mixers (transformers, pure-PyTorch paths on
the CPU, random weights from small configs: nothing is downloaded), and shrinkssm.nn.from_hf on
checkpoint directories the tests write with save_pretrained. Skipped without transformers."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from shrinkssm.nn import Mamba2SSM, SelectiveSSM, from_hf, layer_from_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # see tests/conftest.py


def _randomise_(module: torch.nn.Module, seed: int) -> None:
    """Random values in every parameter (HF initialises D, norm weights and biases constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "A_log":
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 4 + 0.5))
            elif name == "norm.weight":
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def mamba2_config(**kw):
    base = dict(hidden_size=16, state_size=6, expand=2, head_dim=8, num_heads=4, n_groups=2,
                conv_kernel=4, chunk_size=5, num_hidden_layers=2, vocab_size=11,
                layer_norm_epsilon=1e-5)
    base.update(kw)
    return transformers.Mamba2Config(**base)


def _hf_forward(mixer, u):
    """The mixer's pure-PyTorch forward: ``torch_forward`` (Mamba2) / ``slow_forward`` (Mamba) in
    transformers 4.x; transformers 5 has only ``forward``, which takes that path on a CPU without
    the CUDA kernels."""
    for name in ("torch_forward", "slow_forward"):
        if hasattr(type(mixer), name):
            return getattr(mixer, name)(u)
    return mixer(u)


@pytest.mark.parametrize("n_groups,seq_len", [(1, 12), (2, 13), (4, 7)])
def test_mamba2_layer_matches_hf_mixer(n_groups, seq_len):
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = mamba2_config(n_groups=n_groups)
    torch.manual_seed(0)
    hf = Mamba2Mixer(cfg, layer_idx=0).eval()
    _randomise_(hf, seed=n_groups)
    ours = layer_from_hf(cfg.to_dict(), hf.state_dict())
    assert isinstance(ours, Mamba2SSM)
    assert (ours.nheads, ours.headdim, ours.ngroups, ours.d_state) == (4, 8, n_groups, 6)
    u = torch.randn(3, seq_len, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = _hf_forward(hf, u)
        got = ours(u)
        ours.scan = "ref"
        got_ref = ours(u)
        ours.scan = "auto"
    assert expected.abs().max() > 0.1    # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got_ref, expected, rtol=2e-5, atol=2e-5)
    # our recurrent step reproduces Hugging Face's forward too
    state, outs = None, []
    with torch.no_grad():
        for t in range(seq_len):
            out, state = ours.step(u[:, t], state)
            outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), expected, rtol=2e-5, atol=2e-5)


def test_mamba2_with_projection_biases_and_float64():
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = mamba2_config(use_bias=True)
    hf = Mamba2Mixer(cfg, layer_idx=0).double().eval()
    _randomise_(hf, seed=9)
    ours = layer_from_hf(cfg.to_dict(), hf.state_dict(), dtype=torch.float64)
    u = torch.randn(2, 9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # HF computes its gated norm in float32 whatever the input dtype
        torch.testing.assert_close(ours(u), _hf_forward(hf, u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seq_len", [1, 10])
def test_selective_layer_matches_hf_mamba_mixer(seq_len):
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = transformers.MambaConfig(hidden_size=12, state_size=5, expand=2, conv_kernel=3,
                                   time_step_rank=2, num_hidden_layers=1, vocab_size=11,
                                   use_mambapy=False)
    hf = MambaMixer(cfg, layer_idx=0).eval()
    _randomise_(hf, seed=3)
    ours = layer_from_hf(cfg.to_dict(), hf.state_dict())
    assert isinstance(ours, SelectiveSSM) and ours.dt_rank == 2 and ours.d_state == 5
    u = torch.randn(2, seq_len, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _hf_forward(hf, u)
        got = ours(u)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["mamba2", "mamba"])
def test_from_hf_reads_a_saved_checkpoint(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "mamba2":
        cfg = mamba2_config()
        model = transformers.Mamba2ForCausalLM(cfg).eval()
        mixer_forward = _hf_forward
    else:
        cfg = transformers.MambaConfig(hidden_size=12, state_size=5, expand=2, conv_kernel=3,
                                       num_hidden_layers=2, vocab_size=11, use_mambapy=False)
        model = transformers.MambaForCausalLM(cfg).eval()
        mixer_forward = _hf_forward
    for i, block in enumerate(model.backbone.layers):
        _randomise_(block.mixer, seed=10 + i)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    layers = from_hf(tmp_path)
    assert len(layers) == 2
    u = torch.randn(2, 8, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer, block in zip(layers, model.backbone.layers):
            assert isinstance(layer, Mamba2SSM if kind == "mamba2" else SelectiveSSM)
            torch.testing.assert_close(layer(u), mixer_forward(block.mixer, u), rtol=2e-5, atol=2e-5)
    # the same from PyTorch's .bin format, and the errors that name the file
    bin_dir = tmp_path / "bin"
    model.save_pretrained(bin_dir, safe_serialization=False)
    assert (bin_dir / "pytorch_model.bin").is_file()
    again = from_hf(bin_dir)
    torch.testing.assert_close(again[1].out_proj.weight, layers[1].out_proj.weight, rtol=0, atol=0)
    # and sharded safetensors (an index file and several shards)
    shard_dir = tmp_path / "shards"
    model.save_pretrained(shard_dir, max_shard_size="1KB")
    assert (shard_dir / "model.safetensors.index.json").is_file()
    sharded = from_hf(shard_dir)
    for a, b in zip(sharded, layers):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)


def test_from_hf_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama'; readable: mamba, mamba2"):
        from_hf(tmp_path)
    cfg = mamba2_config(time_step_limit=(0.0, 0.5)).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        from_hf(tmp_path)
    with pytest.raises(ValueError, match="time_step_limit"):
        layer_from_hf(cfg, {})
    with pytest.raises(ValueError, match="missing"):
        layer_from_hf(mamba2_config().to_dict(), {"A_log": torch.zeros(4)})
