"""The run configuration: one schema, YAML files, dotted command-line overrides.

A run config has four sections, each a pydantic model that forbids unknown keys and checks types
and ranges: ``data`` (:class:`DataConfig`), ``model`` (:class:`shrinkssm.nn.ModelConfig`),
``train`` (:class:`TrainConfig`) and ``compress`` (:class:`CompressConfig`). Errors name the key,
what was wrong and, for unknown keys, the valid ones::

    config error: compress.tolerance: unknown key; valid keys in 'compress': mode, tol, ...

Overrides use dotted names and YAML values: ``train.steps=2000 compress.tol=0.02``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shrinkssm.nn.model import ModelConfig

__all__ = ["RunConfig", "DataConfig", "TrainConfig", "CompressConfig", "ConfigError",
           "load_config", "parse_overrides", "apply_overrides"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Which data set, where its files are, how validation is carved."""

    name: str = Field("mnist", description="see `shrinkssm data list`")
    root: str | None = Field(None, description="directory of the data files (loader default if null)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of train held out")
    options: dict[str, Any] = Field(default_factory=dict, description="loader-specific options")


class TrainConfig(_Section):
    """Optimisation, evaluation, logging and checkpointing."""

    steps: int = Field(3000, ge=1, description="optimizer steps in the whole run")
    batch_size: int = Field(50, ge=1)
    lr: float = Field(4e-3, gt=0.0, description="peak learning rate")
    ssm_lr_factor: float = Field(0.5, gt=0.0, le=1.0,
                                 description="lr factor of nu, theta, gamma and B (no weight decay)")
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm, null = off")
    seed: int = 0
    eval_every: int = Field(250, ge=1, description="validate every this many steps")
    eval_batches: int | None = Field(None, ge=1, description="cap on validation batches, null = all")
    log_every: int = Field(25, ge=1, description="metrics.jsonl line every this many steps")
    checkpoint_every: int = Field(500, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads, null = torch default")
    keep_freed_memory: bool = Field(True, description="glibc: reuse freed memory instead of "
                                    "page-faulting it in again every step (see train/allocator.py)")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop", description="stop at a non-finite loss (keeping the last good checkpoint), or "
        "skip the step (at most 10 in a row)")
    progress: bool = True
    tensorboard: bool = False
    dist_timeout: float = Field(600.0, gt=0.0, description="seconds a process waits for its "
                                "peers in data-parallel runs before failing")


class CompressConfig(_Section):
    """In-training compression (:class:`shrinkssm.compress.Compressor`)."""

    mode: Literal["tolerance", "fixed", "pragmatic", "none"] = "tolerance"
    tol: float = Field(0.01, ge=0.0, lt=1.0, description="Hankel energy discarded per reduction")
    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="states dropped per reduction (fixed)")
    n_points: int = Field(4, ge=0, description="equidistant reduction points ...")
    window: float = Field(0.1, gt=0.0, le=1.0, description="... within this fraction of training")
    steps: list[int] | None = Field(None, description="explicit reduction steps (override n_points)")
    method: Literal["balanced", "singular_perturbation", "modal", "random"] = "balanced"
    output: Literal["complex", "real"] = "complex"
    selection: Literal["largest", "smallest"] = "largest"
    gate: float = Field(0.95, gt=0.0, le=1.0)
    min_rank: int = Field(1, ge=1)
    optimizer_state: Literal["reset", "slice", "restart"] = Field(
        "restart", description="Adam state of replaced parameters; restart measured best "
        "(experiments/optimizer_state.py)")
    margin: float = Field(0.02, ge=0.0, description="pragmatic: tolerated validation drop")


class RunConfig(_Section):
    """Everything a run needs; saved as ``config.yaml`` in the run directory."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.model.r_min >= self.model.r_max:
            raise ValueError(f"model.r_min ({self.model.r_min}) must be below model.r_max "
                             f"({self.model.r_max})")
        window = self.compress.window * self.train.steps
        if not self.compress.steps and self.compress.n_points > window:
            raise ValueError(f"compress.n_points ({self.compress.n_points}) reduction points do "
                             f"not fit into the first {window:g} steps (compress.window x "
                             "train.steps); lengthen training, widen the window or set "
                             "compress.steps")
        if self.compress.steps and max(self.compress.steps) > self.train.steps:
            raise ValueError(f"compress.steps {self.compress.steps} go beyond train.steps "
                             f"({self.train.steps})")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _valid_keys(loc: tuple) -> tuple[str, list[str]]:
    """The section name and the valid keys at the place an error points to."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    where = ".".join(str(p) for p in loc[:-1]) or "the config"
    return where, list(model.model_fields)


def _closest(key: str, valid: list[str]) -> list[str]:
    """A likely intended key: a close spelling, or a key that one is a prefix of the other."""
    close = difflib.get_close_matches(key, valid, n=1)
    if not close:
        close = [v for v in valid if key.startswith(v) or v.startswith(key)][:1]
    return close


def _explain(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            where, valid = _valid_keys(loc)
            close = _closest(str(loc[-1]), valid)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{key}: unknown key{hint}; valid keys in {where!r}: {', '.join(valid)}")
        else:
            given = err.get("input")
            shown = f" (got {given!r})" if not isinstance(given, dict) else ""
            lines.append(f"{key}: {err['msg']}{shown}")
    return "config error:\n  " + "\n  ".join(lines)


def build_config(data: dict) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`, raising :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_explain(error)) from None


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=2000", "data.name=digits"]`` -> nested dict with YAML-parsed values."""
    nested: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def apply_overrides(config: RunConfig | dict, overrides: list[str]) -> RunConfig:
    """A new config with dotted ``overrides`` applied and everything validated again."""
    base = config.model_dump() if isinstance(config, RunConfig) else config
    return build_config(_merge(base, parse_overrides(overrides)))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    return apply_overrides(data, overrides or [])
