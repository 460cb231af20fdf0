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
    ("train.steps=-3", "train.steps: must be >= 1 (got -3)"),
    ("train.steps=abc", "train.steps: must be an integer (got 'abc')"),
    ("compress.mode=aggressive", "'tolerance', 'fixed', 'pragmatic' or 'none'"),
    ("compress.tol=1.5", "compress.tol: must be < 1"),
    ("model.r_min=0.9999", "model.r_min: must be below model.r_max (0.999), got 0.9999"),
    # a check of a whole section names the key it is about, with no library prefix
    ("model.d_state=0", "model.d_state: must be >= 1, got 0"),
    ("model.d_state=x", "model.d_state: must be an integer or a list of integers"),
    ("model.d_state=[8, x]", "model.d_state[1]: must be an integer (got 'x')"),
    ("train.progress=maybe", "train.progress: must be true or false (got 'maybe')"),
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
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["train.steps=20", "compress.n_points=4"])
    # the window is a fraction of the run, and is printed as one, beside the steps it holds
    assert "compress.n_points: 4 reduction points do not fit into the first 0.1 of " \
        "train.steps=20 (2 steps)" in str(info.value)
    cfg = apply_overrides(RunConfig(), ["train.steps=20", "compress.n_points=0"])
    assert cfg.compress.n_points == 0


@pytest.mark.parametrize("override", ["model.d_state=0", "model.dt_min=0.5", "train.steps=0"])
def test_messages_carry_no_library_prefixes(override):
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), [override])
    text = str(info.value)
    assert "Value error" not in text and "Input should" not in text
    assert text.splitlines()[1].strip().startswith(override.split("=")[0] + ":")


def test_the_baseline_needs_no_room_for_reduction_points():
    cfg = apply_overrides(RunConfig(), ["train.steps=10", "compress.mode=none"])
    assert cfg.train.steps == 10
    cfg = apply_overrides(RunConfig(), ["train.steps=10", "compress.mode=none",
                                        "compress.steps=[50]"])
    assert cfg.compress.mode == "none"


@pytest.mark.parametrize("steps, eval_every, warmup, log_every", [
    (40, 2, 2, 1), (300, 15, 15, 3), (3000, 150, 100, 25), (200_000, 10_000, 100, 25),
])
def test_cadence_follows_the_length_of_the_run(steps, eval_every, warmup, log_every):
    train = apply_overrides(RunConfig(), [f"train.steps={steps}", "compress.mode=none"]).train
    assert (train.eval_every, train.warmup_steps, train.log_every) == (None, None, None)
    done = train.resolved()
    assert (done.eval_every, done.warmup_steps, done.log_every) == (eval_every, warmup, log_every)
    points = sum(1 for s in range(1, steps + 1) if s % done.eval_every == 0)
    assert 19 <= points <= 20                           # about 20 validation points
    assert done.warmup_steps <= 0.05 * steps


def test_explicit_cadence_wins_and_resolving_is_idempotent():
    cfg = apply_overrides(RunConfig(), ["train.steps=300", "train.eval_every=7",
                                        "train.warmup_steps=0", "train.log_every=50"]).resolved()
    assert (cfg.train.eval_every, cfg.train.warmup_steps, cfg.train.log_every) == (7, 0, 50)
    assert cfg.resolved() == cfg
    # a resolved config written to config.yaml reads back as the same run
    assert apply_overrides(cfg, []) == cfg


CONFIG_DIR = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["baseline", "tau0.01", "tau0.02", "tau0.04"])
def test_smnist_configs_carry_the_published_settings(name):
    from shrinkssm.train.trainer import build_compressor

    cfg = load_config(CONFIG_DIR / f"smnist_{name}.yaml")
    m, t, c = cfg.model, cfg.train, cfg.compress
    assert (m.n_layers, m.d_model, m.d_state, m.dropout, m.r_min, m.r_max) == (1, 8, 256, 0.1, 0.9, 0.999)
    assert (t.steps, t.batch_size, t.lr, t.lr_schedule, t.warmup_steps) == (200_000, 50, 4e-4, "constant", 0)
    assert (t.weight_decay, t.ssm_lr_factor, t.eval_every) == (0.0, 1.0, 5_000)
    assert (c.schedule, c.check_every, c.published_eval_every, c.window) == ("published", 2_000, 5_000, 0.1)
    assert "compress.schedule=published" in (CONFIG_DIR / f"smnist_{name}.yaml").read_text()
    compressed = cfg if name != "baseline" else apply_overrides(cfg, ["compress.mode=tolerance"])
    assert build_compressor(compressed).schedule.steps == (10_000, 20_000)
    described = apply_overrides(compressed, ["compress.schedule=described"])
    assert build_compressor(described).schedule.steps == tuple(range(2_000, 20_001, 2_000))
    if name == "baseline":
        assert c.mode == "none" and build_compressor(cfg).schedule.steps == ()
    else:
        assert (c.mode, c.tol) == ("tolerance", float(name[3:]))


@pytest.mark.parametrize("name", ["baseline", "tau0.05", "tau0.10", "tau0.15"])
def test_scifar_configs_carry_the_published_settings(name):
    from shrinkssm.train.trainer import build_compressor

    cfg = load_config(CONFIG_DIR / f"scifar_{name}.yaml")
    m, t, c = cfg.model, cfg.train, cfg.compress
    assert (m.n_layers, m.d_model, m.d_state, m.dropout) == (6, 512, 384, 0.1)
    assert (t.steps, t.batch_size, t.lr, t.lr_schedule, t.warmup_steps) == (180_000, 50, 1e-3, "cosine", 18_000)
    assert (t.weight_decay, t.ssm_lr_factor, t.eval_every) == (0.05, 0.25, 4_500)
    assert (c.schedule, c.check_every, c.published_eval_every) == ("published", 2_000, 4_500)
    compressed = cfg if name != "baseline" else apply_overrides(cfg, ["compress.mode=tolerance"])
    assert build_compressor(compressed).schedule.steps == (18_000,)


@pytest.mark.parametrize("overrides, message", [
    (["compress.schedule=published", "compress.steps=[5]"],
     "compress.steps: explicit reduction steps go with compress.schedule=equidistant, not published"),
    (["compress.schedule=described", "compress.check_every=1000"],
     "compress.schedule: described gives no reduction point in the first 0.1 of train.steps=3000"),
    (["compress.schedule=fast"], "compress.schedule: must be one of 'equidistant', 'described' or 'published'"),
    (["compress.check_every=0"], "compress.check_every: must be >= 1"),
    (["compress.track_every=0"], "compress.track_every: must be >= 1"),
])
def test_bad_schedules_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), overrides)
    assert message in str(info.value)
