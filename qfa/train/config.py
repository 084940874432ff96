"""Typed training configuration, loaded from YAML/TOML presets with ``key=value`` overrides."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qfa.core.space import DATA_FIELDS, FP

__all__ = ["StageCfg", "TrainConfig", "load_config", "preset_path", "ConfigError"]

PRESETS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


@dataclass
class StageCfg:
    """One training stage. ``bits`` are the precisions sampled ([32] = the float supernet)."""
    name: str
    epochs: float
    bits: list[int]
    lr: float
    warmup_epochs: float = 0.0
    n_random: int | None = None             # random subnets a step here; None: the config's n_random
    deploy_quant: bool = False              # also quantize the int8 file's other 8-bit tensors (input,
                                            # hard-swish pre-activations, residual and SE tensors, logits)
    min_lowest_bits: bool = False           # the sandwich's min subnet at the stage's lowest bits every
                                            # step (the paper draws its bitwidth at random)


@dataclass
class TrainConfig:
    space: str = "fmnist"
    space_bits: list[int] | None = None     # override the preset's bit choices (e.g. add 32)
    in_channels: int | None = None          # space.in_channels; None: the data's (1 if all grey, else 3)
    num_classes: int | None = None          # space.num_classes; None: the data's (its class folders)
    resolutions: list[int] | None = None    # space.resolutions; None: the preset's
    act_quant: str = "bq"                   # bq | minmax | lsq (the ablation)
    data: str | None = None                 # None: Fashion-MNIST; else an ImageFolder root
    holdout_fraction: float = 0.1
    stages: list[StageCfg] = field(default_factory=list)
    batch_size: int = 64                    # per process
    n_random: int = 4                       # sandwich: max + min + n_random subnets a step
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5              # not on BN, biases or quantizer parameters
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0                   # soft-target CE against the float teacher
    grad_clip: float = 500.0
    dropout: float = 0.1
    seed: int = 0
    workers: int = 0
    calib_images: int = 2000
    eval_images: int = 2000                 # held-out images per end-of-stage check
    ckpt_every: int = 200                   # steps between checkpoints (and at every stage end)
    ckpt_every_s: float = 120.0             # ... and at most this many seconds between them
    threads: int | str = "auto"             # intra-op threads: N, or auto (the cores others leave free)
    device: str = "auto"                    # auto | cpu | cuda
    amp: bool = False                       # bf16 autocast on GPU
    channels_last: bool = False
    max_steps: int | None = None            # stop early (tests, benchmarks)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
        stages = d.get("stages", [])
        if not isinstance(stages, list) or not all(isinstance(s, (dict, StageCfg)) for s in stages):
            raise ConfigError(f"stages must be a list of mappings, got {stages!r:.80}")
        try:
            d["stages"] = [s if isinstance(s, StageCfg) else StageCfg(**s) for s in stages]
        except TypeError as e:
            raise ConfigError(f"bad stage entry: {e}") from None
        for i, st in enumerate(d["stages"]):
            _check_types(st, f"stages[{i}].")
        cfg = cls(**d)
        _check_types(cfg)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("config lists no training stages")
        for s in self.stages:
            if s.epochs <= 0 or s.lr <= 0:
                raise ConfigError(f"stage {s.name!r}: epochs and lr must be positive")
        if self.act_quant not in ("bq", "minmax", "lsq"):
            raise ConfigError(f"act_quant must be bq, minmax or lsq, got {self.act_quant!r}")
        if any(s.deploy_quant and s.bits == [FP] for s in self.stages):
            raise ConfigError("deploy_quant is an option of quantized stages, not of the float stage")
        if any(s.n_random is not None and s.n_random < 0 for s in self.stages):
            raise ConfigError("a stage's n_random must be >= 0")
        if not (self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 1)):
            raise ConfigError(f"threads must be auto or an integer >= 1, got {self.threads!r}")
        if not (isinstance(self.ckpt_every, int) and self.ckpt_every >= 1
                and isinstance(self.ckpt_every_s, (int, float)) and self.ckpt_every_s > 0):
            raise ConfigError("ckpt_every and ckpt_every_s must be positive")
        if self.batch_size < 1 or self.n_random < 0:
            raise ConfigError("batch_size must be >= 1 and n_random >= 0")


def _fits(value: Any, tp: Any) -> bool:
    """``value`` is of annotated type ``tp`` (int, float, bool, str, None, X | Y, list[X]);
    no coercion: ``"abc"`` is no int, ``True`` no number, NaN no float."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _check_types(obj: Any, prefix: str = "") -> None:
    for name, tp in typing.get_type_hints(type(obj)).items():
        if name == "stages":
            continue
        value = getattr(obj, name)
        if not _fits(value, tp):
            shown = getattr(tp, "__name__", str(tp)).replace("NoneType", "None")
            raise ConfigError(f"{prefix}{name} must be {shown}, got {value!r:.60}")


def preset_path(name: str) -> Path:
    return PRESETS / f"{name}.yaml"


def _parse_value(text: str) -> Any:
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(v)
        except ValueError:
            pass
    return v


def _apply(d: dict, key: str, value: Any) -> None:
    """Set ``key`` (``name``, ``space.<data field>`` or ``<stage name>.<field>``) in the plain
    config dict ``d``."""
    head, _, rest = key.partition(".")
    if head == "space" and rest in DATA_FIELDS:
        d[rest] = value
        return
    if rest:
        stage = next((s for s in d.get("stages", []) if s.get("name") == head), None)
        if stage is None:
            names = [s.get("name") for s in d.get("stages", [])]
            raise ConfigError(f"override {key!r}: no stage named {head!r} (stages: {names})")
        if rest not in {f.name for f in dataclasses.fields(StageCfg)}:
            raise ConfigError(f"override {key!r}: stages have no field {rest!r}")
        stage[rest] = value
        return
    if key not in d:
        raise ConfigError(f"unknown config key {key!r}; known: {sorted(d)}")
    d[key] = value


def load_config(path_or_preset: str, overrides: list[str] | None = None) -> TrainConfig:
    """A config from a YAML/TOML file or a preset name ('fmnist', 'paper'), then ``key=value``
    overrides (dotted, e.g. ``batch_size=32`` or ``stage1.epochs=2``)."""
    p = Path(path_or_preset)
    if not p.exists():
        if preset_path(path_or_preset).exists():
            p = preset_path(path_or_preset)
        else:
            presets = sorted(x.stem for x in PRESETS.glob("*.yaml"))
            raise ConfigError(f"config {path_or_preset!r} is neither a file nor a preset ({', '.join(presets)})")
    try:
        text = p.read_text()
        d = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config {p} must be a mapping")
    d = json.loads(json.dumps(d))  # plain containers
    base = TrainConfig().to_json()
    base.update(d)
    for ov in overrides or []:
        key, sep, val = ov.partition("=")
        if not sep:
            raise ConfigError(f"override {ov!r} must look like key=value")
        _apply(base, key.strip(), _parse_value(val))
    return TrainConfig.from_json(base)
