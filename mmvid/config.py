"""Run configuration: dataclass defaults <- YAML recipe <- CLI flags, validated, saved with every run.

``resolve_config(recipe, overrides)`` is the one entry point. Overrides are dotted keys
(``{"model.fusion": "concat", "augment.name": "bmm"}``); unknown keys and values of the wrong
type are a one-line :class:`MmvidError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmvid.errors import MmvidError

MODALITIES = ("audio", "video", "flow")
# Which cache dataset feeds which model modality (the cache names what is stored, the model what it means).
CACHE_KEY = {"audio": "spectrogram", "video": "frames", "flow": "flow"}


@dataclass
class DataConfig:
    dataset: str | None = None  # cache name under <workspace>/caches; None = the only / latest one
    modalities: list[str] = field(default_factory=lambda: ["audio", "video"])
    batch_size: int = 64
    workers: int = 0
    val_fraction: float = 0.1  # held out of train for model selection; never select on test
    crop_size: int | None = None  # train random-resized-crop / test resize; None = cache image size
    random_crop: bool = True  # train-time random resized crop (scale 0.5-1) of frames/flow
    flip: bool = True
    cache_in_memory: bool = False
    cache_on_gpu: bool = False  # serve every split from tensors on the training device (mmvid.data.device_loader)


@dataclass
class ModelConfig:
    encoder: str = "resnet18"  # resnet18 (paper) | small (CPU-sized)
    width: int = 32  # channels of the first stage of the small encoder
    fusion: str = "concat"
    calibrate: bool = False
    fusion_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    name: str = "none"
    alpha: float = 0.2  # Beta(alpha, alpha) for mixup / mm
    warmup: int = 10  # B-MM: epochs of plain training before mixing
    beta: float = 1.0  # B-MM: degree of mixup, lambda_weak = beta * tanh(r - 1)
    rho_stat: str = "score"  # B-MM: score | acc
    lambda_map: str = "scaled"  # B-MM: scaled | inside
    rho_split: str = "train"  # B-MM: rho over train (the paper) | val (held out; an mmvid option, not in the paper)
    stage: str = "feature"  # B-MM: mix the weak modality's feature (paper Fig. 3) | input (paper Sec. 3.3 text)
    unimodal: str = "mask"  # B-MM: unimodal predictions by masking (paper Eq. 5) | head (per-modality heads, decision fusion)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BalanceConfig:
    name: str = "none"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    step_size: int = 30
    gamma: float = 0.1
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 60
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "off"  # off | bf16 | fp16
    gpus: int = 1
    channels_last: bool = False  # NHWC convolutions (tensor cores under AMP on CUDA)
    compile: bool = False  # torch.compile the training step's model
    run_name: str | None = None
    monitor_train: bool = True  # per-modality train accuracy each epoch (paper Fig. 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choices_check(cfg: TrainConfig) -> None:
    checks = {
        "device": (cfg.device, ("auto", "cpu", "cuda")),
        "amp": (cfg.amp, ("off", "bf16", "fp16")),
        "augment.rho_stat": (cfg.augment.rho_stat, ("score", "acc")),
        "augment.lambda_map": (cfg.augment.lambda_map, ("scaled", "inside")),
        "augment.rho_split": (cfg.augment.rho_split, ("train", "val")),
        "augment.stage": (cfg.augment.stage, ("feature", "input")),
        "augment.unimodal": (cfg.augment.unimodal, ("mask", "head")),
        "model.encoder": (cfg.model.encoder, ("resnet18", "small")),
    }
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise MmvidError(f"config {key}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    bad = [m for m in cfg.data.modalities if m not in MODALITIES]
    if bad or len(cfg.data.modalities) < 1:
        raise MmvidError(f"config data.modalities={cfg.data.modalities} is not valid; use a subset of {', '.join(MODALITIES)}")
    positive = {"epochs": cfg.epochs, "data.batch_size": cfg.data.batch_size, "gpus": cfg.gpus}
    for key, value in positive.items():
        if value < 1:
            raise MmvidError(f"config {key}={value} must be at least 1")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise MmvidError(f"config data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
    if cfg.optim.lr <= 0:
        raise MmvidError(f"config optim.lr={cfg.optim.lr} must be positive")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a one-line error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise MmvidError(f"config {key}={value!r} must be true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise MmvidError(f"config {key}={value!r} must be a number")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise MmvidError(f"config {key}={value!r} must be {'an integer' if tp is int else 'a number'}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise MmvidError(f"config {key}={value!r} must be an integer")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise MmvidError(f"config {key}={value!r} must be a string")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise MmvidError(f"config {key}={value!r} must be a list")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise MmvidError(f"config {key}={value!r} must be a mapping")
        return dict(value)
    return value


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_key(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set a dotted key such as ``model.fusion``; ``augment.args.k`` sets inside a dict field."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(obj, dict):
            obj[".".join(parts[i:])] = value
            return
        types_ = _field_types(obj)
        if part not in types_:
            raise MmvidError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(types_))}")
        if i == len(parts) - 1:
            setattr(obj, part, _coerce(value, types_[part], key))
            return
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj) and not isinstance(obj, dict):
            raise MmvidError(f"config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")


def _flatten(d: dict[str, Any], prefix: str = "", sections: TrainConfig | Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    types_ = _field_types(sections) if dataclasses.is_dataclass(sections) else {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        sub = getattr(sections, k, None) if types_ else None
        if isinstance(v, dict) and dataclasses.is_dataclass(sub):
            out.update(_flatten(v, key + ".", sub))
        else:
            out[key] = v
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        candidate = Path(__file__).resolve().parent.parent / "recipes" / f"{path.name}"
        candidate = candidate if candidate.suffix else candidate.with_suffix(".yaml")
        if not candidate.exists():
            raise MmvidError(f"recipe {str(path)!r} not found; give a YAML path or a name from recipes/")
        path = candidate
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MmvidError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MmvidError(f"recipe {path} must be a YAML mapping of config sections")
    return data


def resolve_config(recipe: str | Path | dict | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe, then CLI overrides (dotted keys; ``None`` values are skipped)."""
    cfg = TrainConfig()
    data = recipe if isinstance(recipe, dict) else (load_recipe(recipe) if recipe else {})
    for key, value in _flatten(data, "", cfg).items():
        set_key(cfg, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_key(cfg, key, value)
    _choices_check(cfg)
    return cfg


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a saved config (checkpoint / run folder) exactly."""
    return resolve_config(d)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
