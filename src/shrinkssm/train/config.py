"""The run configuration: one schema, YAML files, dotted command-line overrides.

A run config has four sections, each a pydantic model that forbids unknown keys and checks types
and ranges: ``data`` (:class:`DataConfig`), ``model`` (:class:`shrinkssm.nn.ModelConfig`),
``train`` (:class:`TrainConfig`) and ``compress`` (:class:`CompressConfig`). Errors name the key,
what was wrong and, for unknown keys, the valid ones::

    config error: compress.tolerance: unknown key; valid keys in 'compress': mode, tol, ...

Overrides use dotted names and YAML values: ``train.steps=2000 compress.tol=0.02``.

Cadence that scales with the run. ``train.eval_every``, ``train.warmup_steps`` and
``train.log_every`` default to null, which :meth:`RunConfig.resolved` (called by the trainer, so
``config.yaml`` in a run directory holds the numbers that ran) turns into values that follow
``train.steps`` (T):

* ``eval_every``   = ceil(T / 20): about 20 validation points per run (plus the last step);
* ``warmup_steps`` = min(100, floor(T / 20)): at most 5% of the steps, 100 for long runs;
* ``log_every``    = min(25, max(1, T // 100)): about 100 metrics rows for short runs, every 25
  steps from T = 2,500 on.

An explicit value always wins. ``compress.mode=none`` schedules no reduction points at all, so
its ``n_points`` / ``window`` / ``steps`` need not fit the run.

Reduction schedules by name (``compress.schedule``, :mod:`shrinkssm.compress.schedule`):
``equidistant`` (``compress.n_points`` evenly over ``compress.window``, the default),
``described`` (a check every ``compress.check_every`` steps within the window, as the CompreSSM
paper describes) and ``published`` (of those, only the multiples of
``compress.published_eval_every``, as the published code runs: at 200k steps, 10,000 and 20,000).
``compress.track_every=K`` records every layer's HSVs every K steps without reducing
(``hsv_track.jsonl``, :mod:`shrinkssm.compress.tracking`).
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shrinkssm.compress import METHODS, MODES, OUTPUTS, SELECTIONS, STATE_POLICIES
from shrinkssm.compress.schedule import SCHEDULES, ReductionSchedule
from shrinkssm.nn.model import ModelConfig

__all__ = ["RunConfig", "DataConfig", "TrainConfig", "CompressConfig", "ConfigError",
           "load_config", "parse_overrides", "apply_overrides", "auto_eval_every", "CADENCE_HELP",
           "auto_warmup_steps", "auto_log_every"]


CADENCE_HELP = ("Short runs: unless set, train.eval_every, train.warmup_steps and train.log_every "
                "follow train.steps (T): validation every ceil(T/20) steps (about 20 points), "
                "warm-up min(100, T/20) steps (at most 5%), a metrics row every min(25, T/100) "
                "steps. compress.mode=none trains the uncompressed baseline. Every key, its type "
                "and range: src/shrinkssm/train/config.py; data sets: shrinkssm data list.")


def auto_eval_every(steps: int) -> int:
    """Validation interval for a run of ``steps`` steps: about 20 validation points."""
    return max(1, math.ceil(steps / 20))


def auto_warmup_steps(steps: int) -> int:
    """Linear warm-up length: at most 5% of ``steps``, and at most 100 steps."""
    return min(100, steps // 20)


def auto_log_every(steps: int) -> int:
    """Metrics-row interval: about 100 rows for short runs, every 25 steps for long ones."""
    return min(25, max(1, steps // 100))


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
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps; null = "
                                     "min(100, 5% of train.steps)")
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm, null = off")
    seed: int = 0
    eval_every: int | None = Field(None, ge=1, description="validate every this many steps; "
                                   "null = train.steps / 20, rounded up (about 20 points)")
    eval_batches: int | None = Field(None, ge=1, description="cap on validation batches, null = all")
    log_every: int | None = Field(None, ge=1, description="metrics.jsonl line every this many "
                                  "steps; null = train.steps / 100, at most 25")
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

    def resolved(self) -> "TrainConfig":
        """A copy with the null cadence settings (``eval_every``, ``warmup_steps``,
        ``log_every``) replaced by the values that follow ``steps`` (see the module docstring)."""
        auto = {"eval_every": auto_eval_every, "warmup_steps": auto_warmup_steps,
                "log_every": auto_log_every}
        return self.model_copy(update={key: rule(self.steps) for key, rule in auto.items()
                                       if getattr(self, key) is None})


class CompressConfig(_Section):
    """In-training compression (:class:`shrinkssm.compress.Compressor`, built from this section by
    :meth:`~shrinkssm.compress.Compressor.from_config`). The allowed values of ``mode``,
    ``method``, ``output``, ``selection`` and ``optimizer_state`` are the package's own lists
    (``shrinkssm.compress.MODES``, ``shrinkssm.lti.METHODS``, ...)."""

    mode: Literal[MODES] = "tolerance"
    tol: float = Field(0.01, ge=0.0, lt=1.0, description="Hankel energy discarded per reduction")
    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="states dropped per reduction (fixed)")
    schedule: Literal[SCHEDULES] = Field(
        "equidistant", description="when to reduce (shrinkssm.compress.schedule): equidistant = "
        "compress.n_points evenly over compress.window; described = every compress.check_every "
        "steps within compress.window (as the paper describes); published = those of them that "
        "are also multiples of compress.published_eval_every (what the published code runs)")
    n_points: int = Field(4, ge=0, description="equidistant reduction points ...")
    window: float = Field(0.1, gt=0.0, le=1.0, description="... within this fraction of training")
    steps: list[int] | None = Field(None, description="explicit reduction steps (override n_points)")
    check_every: int | None = Field(None, ge=1, description="described/published: steps between "
                                    "reduction checks; null = train.steps / 100 (2,000 at 200k)")
    published_eval_every: int | None = Field(
        None, ge=1, description="published: the published code's evaluation cadence that gates "
        "its checks; null = train.steps / 40 (5,000 at 200k)")
    track_every: int | None = Field(None, ge=1, description="record every layer's HSVs every this "
                                    "many steps without reducing (hsv_track.jsonl); null = off")
    method: Literal[METHODS] = "balanced"
    output: Literal[OUTPUTS] = "complex"
    selection: Literal[SELECTIONS] = "largest"
    gate: float = Field(0.95, gt=0.0, le=1.0)
    min_rank: int = Field(1, ge=1)
    optimizer_state: Literal[STATE_POLICIES] = Field(
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
            raise ValueError(f"model.r_min: must be below model.r_max ({self.model.r_max:g}), "
                             f"got {self.model.r_min:g}")
        c, steps = self.compress, self.train.steps
        if c.mode == "none":                    # the baseline: no reduction points at all
            return self
        if self.model.layer == "mamba2" and c.method != "balanced":
            raise ValueError(f"compress.method: model.layer=mamba2 reduces by balanced truncation "
                             f"only; set compress.method=balanced (got {c.method})")
        if c.schedule != "equidistant":
            if c.steps:
                raise ValueError(f"compress.steps: explicit reduction steps go with "
                                 f"compress.schedule=equidistant, not {c.schedule}")
            points = ReductionSchedule.for_run(
                steps, window=c.window, mode=c.mode, schedule=c.schedule,
                check_every=c.check_every, published_eval_every=c.published_eval_every)
            if not len(points):
                raise ValueError(f"compress.schedule: {c.schedule} gives no reduction point in "
                                 f"the first {c.window:g} of train.steps={steps}; lower "
                                 "compress.check_every or compress.published_eval_every, widen "
                                 "compress.window or lengthen train.steps")
            return self
        window = math.floor(c.window * steps)
        if not c.steps and c.n_points > window:
            raise ValueError(f"compress.n_points: {c.n_points} reduction points do not fit into "
                             f"the first {c.window:g} of train.steps={steps} ({window} "
                             f"step{'s' if window != 1 else ''}); lengthen train.steps, widen "
                             "compress.window, set compress.steps=[...] or compress.mode=none")
        if c.steps and max(c.steps) > steps:
            raise ValueError(f"compress.steps: {c.steps} go beyond train.steps={steps}")
        return self

    def resolved(self) -> "RunConfig":
        """A copy whose ``train`` section has its cadence filled in (:meth:`TrainConfig.resolved`)."""
        return self.model_copy(update={"train": self.train.resolved()})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _walk(loc: tuple) -> tuple[list[str], type[BaseModel], list[str]]:
    """Split an error location into the dotted key parts, the section model they end in, and
    the union-member tags pydantic appends (``('model', 'd_state', 'int')`` -> key
    ``model.d_state``, tags ``['int']``); list indices stay in the key as ``[i]``."""
    model: type[BaseModel] = RunConfig
    key: list[str] = []
    tags: list[str] = []
    in_field = False
    for part in loc:
        if isinstance(part, int) and tags:          # an element inside a union member
            tags.append(f"[{part}]")
        elif isinstance(part, int):
            key[-1:] = [f"{key[-1]}[{part}]"] if key else [f"[{part}]"]
        elif not in_field and str(part) in model.model_fields:
            key.append(str(part))
            annotation = getattr(model.model_fields[str(part)], "annotation", None)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            else:
                in_field = True
        elif in_field:
            tags.append(str(part))
        else:
            key.append(str(part))
    return key, model, tags


def _valid_keys(loc: tuple) -> tuple[str, list[str]]:
    """The section name and the valid keys at the place an error points to."""
    key, model, _ = _walk(loc[:-1])
    return ".".join(key) or "the config", list(model.model_fields)


def _closest(key: str, valid: list[str]) -> list[str]:
    """A likely intended key: a close spelling, or a key that one is a prefix of the other."""
    close = difflib.get_close_matches(key, valid, n=1)
    if not close:
        close = [v for v in valid if key.startswith(v) or v.startswith(key)][:1]
    return close


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "list[int]": "a list of integers, e.g. [64, 32]", "none": "null",
          "list[float]": "a list of numbers"}


def _rule(err: dict) -> str:
    """What a pydantic error asks for, in the config's words (no library prefixes)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}"
    if kind.startswith("int_"):
        return "must be an integer"
    if kind.startswith("float_"):
        return "must be a number"
    if kind.startswith("bool_"):
        return "must be true or false"
    if kind.startswith("string_"):
        return "must be a string"
    if kind in ("list_type", "tuple_type"):
        return "must be a list, e.g. [1, 2]"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping of keys"
    if kind == "missing":
        return "is required"
    msg = err["msg"]
    return msg[:1].lower() + msg[1:]


def _section_message(section: list[str], model: type[BaseModel], message: str) -> tuple[str, str]:
    """A check of a whole section (``"d_state must be >= 1, got 0"`` in ``model``) as the key it
    is about and the rule: ``("model.d_state", "must be >= 1, got 0")``."""
    dotted = re.match(r"^([a-z_]+\.[a-z_]+): (.*)$", message, re.S)
    if dotted:                                          # already "section.key: rule"
        return dotted.group(1), dotted.group(2)
    prefix = ".".join(section)
    fields = list(model.model_fields) if section else []

    def qualify(text: str) -> str:                      # bare field names -> dotted keys
        return re.sub(r"\b([a-z]+_[a-z_]+)\b",
                      lambda m: f"{prefix}.{m.group(1)}" if m.group(1) in fields else m.group(1),
                      text)

    first = re.match(r"^([a-z_]+)\s+(.*)$", message, re.S)
    if first and first.group(1) in fields:
        rest = first.group(2)
        value = re.match(r"^\(([^)]*)\)\s*(.*)$", rest, re.S)   # "dt_min (0.5) must be ..."
        if value:
            rest = f"{value.group(2)}, got {value.group(1)}"
        return f"{prefix}.{first.group(1)}", qualify(rest)
    named = next((f for f in fields if re.search(rf"\b{f}\b", message)), None)
    key = f"{prefix}.{named}" if named else (prefix or "the config")
    return key, qualify(message)


def _explain(error: ValidationError) -> str:
    lines: list[str] = []
    unions: dict[str, tuple[list[str], object]] = {}
    for err in error.errors():
        loc = tuple(err["loc"])
        key_parts, model, tags = _walk(loc)
        key = ".".join(key_parts) or "the config"
        given = err.get("input")
        shown = f" (got {given!r})" if not isinstance(given, dict) else ""
        if err["type"] == "extra_forbidden":
            where, valid = _valid_keys(loc)
            close = _closest(str(loc[-1]), valid)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{key}: unknown key{hint}; valid keys in {where!r}: {', '.join(valid)}")
        elif err["type"] == "value_error":
            message = str((err.get("ctx") or {}).get("error", err["msg"]))
            where, rule = _section_message(key_parts, model, message)
            lines.append(f"{where}: {rule}")
        elif tags:                                  # one member of a union type: say them all
            kinds, inner = unions.setdefault(key, ([], []))
            if len(tags) == 1:
                kinds.append((_KINDS.get(tags[0], tags[0]), given))
            else:                                   # an element of a list member is wrong
                inner.append(f"{key}{''.join(tags[1:])}: {_rule(err)}{shown}")
        else:
            lines.append(f"{key}: {_rule(err)}{shown}")
    for key, (kinds, inner) in unions.items():
        if inner:
            lines.extend(inner)
        elif kinds:
            lines.append(f"{key}: must be {' or '.join(k for k, _ in kinds)} (got {kinds[0][1]!r})")
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
