"""Tests of shrinkssm.train.config: schema, YAML files, dotted overrides, error messages."""

from pathlib import Path

import pytest

from shrinkssm.data import dataset_options
from shrinkssm.train.config import ConfigError, RunConfig, apply_overrides, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_published_smnist_architecture_with_tau_001():
    cfg = RunConfig()
    assert cfg.data.name == "mnist"
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.d_state) == (1, 8, 256)
    assert (cfg.compress.mode, cfg.compress.tol, cfg.compress.n_points) == ("tolerance", 0.01, 4)


def test_the_issue_names_for_settings_exist():
    cfg = apply_overrides(RunConfig(), [
        "data.name=fashion-mnist", "model.n_layers=2", "model.d_model=16", "model.d_state=64",
        "train.steps=2000", "train.batch_size=32", "train.lr=1e-3", "train.seed=3",
        "compress.mode=fixed", "compress.tol=0.02"])
    assert (cfg.data.name, cfg.model.n_layers, cfg.model.d_model, cfg.model.d_state) == \
        ("fashion-mnist", 2, 16, 64)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed) == (2000, 32, 1e-3, 3)
    assert (cfg.compress.mode, cfg.compress.tol) == ("fixed", 0.02)


def test_override_values_are_yaml():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d.e=null", "d.f=true", "d.g=x"]) == \
        {"a": {"b": 1, "c": [1, 2]}, "d": {"e": None, "f": True, "g": "x"}}
    cfg = apply_overrides(RunConfig(), ["data.options.permute=true"])
    assert cfg.data.options == {"permute": True}


@pytest.mark.parametrize("override, message", [
    ("compress.tolerance=0.1", "compress.tolerance: unknown key (did you mean 'tol'?); valid keys in 'compress': mode, tol"),
    ("model.d_stat=3", "did you mean 'd_state'"),
    ("nonsense.key=1", "valid keys in 'the config': data, model, train, compress"),
    ("train.steps=-3", "train.steps: Input should be greater than or equal to 1"),
    ("train.steps=abc", "train.steps: Input should be a valid integer"),
    ("compress.mode=aggressive", "'tolerance', 'fixed', 'pragmatic' or 'none'"),
    ("compress.tol=1.5", "compress.tol: Input should be less than 1"),
    ("model.r_min=0.9999", "model.r_min (0.9999) must be below model.r_max"),
])
def test_bad_overrides_name_the_key_and_the_rule(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    assert message in str(info.value)


@pytest.mark.parametrize("item", ["train.steps", "=3", "train..steps=3"])
def test_malformed_overrides(item):
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides([item])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = apply_overrides(RunConfig(), ["compress.steps=[10, 20]", "train.steps=30"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_explicit_steps_beyond_training_are_refused():
    with pytest.raises(ConfigError, match="go beyond train.steps"):
        apply_overrides(RunConfig(), ["train.steps=100", "compress.steps=[50, 150]"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid_and_documented(path):
    text = path.read_text()
    assert text.startswith("#"), "a shipped config starts with a comment saying what it is for"
    assert "shrinkssm train" in text, "and the command that launches it"
    cfg = load_config(path)
    assert set(cfg.data.options) <= set(dataset_options(cfg.data.name)), "loader options exist"


def test_quick_config_is_the_default_run():
    quick = Path(__file__).parents[2] / "configs" / "quick.yaml"
    assert load_config(quick) == RunConfig()


def test_reduction_points_must_fit_the_window():
    with pytest.raises(ConfigError, match="do not fit into the first 2 steps"):
        apply_overrides(RunConfig(), ["train.steps=20", "compress.n_points=4"])
    cfg = apply_overrides(RunConfig(), ["train.steps=20", "compress.n_points=0"])
    assert cfg.compress.n_points == 0
