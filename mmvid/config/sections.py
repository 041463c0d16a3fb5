"""The run configuration's sections, fields and constants: what a recipe, the CLI flags and ``--set`` may set,
each field declared once with its type and range (:func:`mmvid.schema.spec`). Imports no torch and nothing of
mmvid's above :mod:`mmvid.schema`, so the data and model layers read these declarations too."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from mmvid.errors import MmvidError
from mmvid.schema import check_value, field_types, spec

MODALITIES = ("audio", "video", "flow")
INITS = ("ogm-ge", "remix", "torch")  # model.init, applied by mmvid.models.init.initialise
# Keys a saved config may lack because the run was saved before the key existed, with the value that run was
# trained with when it differs from today's default (a resumed, evaluated or reused run says what it did).
ABSENT_MEANS = {"model.init": "torch"}
PROTOCOLS = ("clean", "reference")
# What the best epoch of a run is chosen on, in words, for every place that reports it (summary line, evaluate,
# report, sweep tables): reference selects on test as the published code does, and says so wherever it appears.
SELECTED_ON_TEST = {"reference": "selected on test, as the reference code does", "clean": "no validation split"}


# Each field declares what it accepts next to its default (mmvid.schema.spec): a new field with its range is one
# line. resolve_config checks every value wherever it comes from (recipe, flag, --set, a saved config).
@dataclass
class DataConfig:
    # cache name under <workspace>/caches (a plain name: it is joined to that folder), or the path of a .h5 cache
    # file; None = the only / latest one
    dataset: str | None = spec(None, name=True, or_path=".h5")
    modalities: list[str] = spec(factory=lambda: ["audio", "video"], choices=MODALITIES)
    batch_size: int = spec(64, ge=1, le=65536)
    workers: int = spec(0, ge=0, le=1024)
    val_fraction: float = spec(0.1, ge=0.0, lt=1.0)  # held out of train for model selection; never select on test
    crop_size: int | None = spec(None, ge=1, le=8192)  # train random-resized-crop / test resize; None = cache image size
    random_crop: bool = True  # train-time random resized crop (scale 0.5-1) of frames/flow
    flip: bool = True
    # clip: one crop (scale 0.5-1) and flip per clip, shared by its frames (mmvid); reference: one RandomResizedCrop
    # (scale 0.08-1) and flip per frame, drawn as the OGM-GE lineage's loaders draw them (mmvid.data.crop)
    crop: str = spec("clip", choices=("clip", "reference"))
    # Prepare parameters the cache must have been made with (e.g. {frame_select: ogm-ge}): a cache made otherwise
    # is refused in one line when a loader opens it (mmvid.data.params.check_prepared); none = any cache
    prepared: dict[str, Any] | None = None
    cache_in_memory: bool = False
    cache_on_gpu: bool = False  # serve every split from tensors on the training device (mmvid.data.device_loader)


FREEZES = ("none", "encoders", "bn")  # model.freeze (mmvid.models.classifier.MultimodalClassifier.train)


@dataclass
class EncoderChoice:
    """One modality's encoder (``model.encoders.<modality>``): every key optional, model.encoder's by default."""

    name: str | None = None  # an ENCODERS name (`mmvid train --list`); none = model.encoder
    # Its settings (`mmvid train --list NAME`), over model.encoder_args when the name is model.encoder's
    args: dict[str, Any] = field(default_factory=dict)
    # Initial weights: a local state dict (torchvision, timm, an mmvid encoder's), an mmvid run folder or checkpoint
    # (its encoder of this modality), or a torchvision weight name (IMAGENET1K_V1, through torchvision's cache)
    weights: str | None = None
    weights_sha256: str | None = None  # recorded by the run: the weights file's SHA-256


@dataclass
class EncodersConfig:
    audio: EncoderChoice = field(default_factory=EncoderChoice)
    video: EncoderChoice = field(default_factory=EncoderChoice)
    flow: EncoderChoice = field(default_factory=EncoderChoice)


@dataclass
class ModelConfig:
    encoder: str = "resnet18"  # every modality's encoder, an ENCODERS name: resnet18 (paper) | small (CPU-sized) ...
    encoder_args: dict[str, Any] = field(default_factory=dict)  # its settings (`mmvid train --list NAME`)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)  # per modality: another encoder, weights
    # The encoders of another run (folder or checkpoint) as initial weights, e.g. unimodal pre-training
    init_from: str | None = None
    init_from_sha256: str | None = None  # recorded by the run: that checkpoint's SHA-256
    # none | encoders (linear probing: the encoders neither train nor update BN statistics) | bn (the encoders'
    # BatchNorm layers keep their running statistics; every weight trains)
    freeze: str = spec("none", choices=FREEZES)
    width: int = spec(32, ge=1, le=4096)  # channels of the first stage of the small encoder
    fusion: str = "concat"  # a FUSIONS name, checked by the registry
    calibrate: bool = False  # the pre-fusion calibration module (mmvid.models.calibration)
    fusion_args: dict[str, Any] = field(default_factory=dict)  # the fusion's own settings (`mmvid train --list NAME`)
    calibration_args: dict[str, Any] = field(default_factory=dict)  # the calibration's (`mmvid train --list prefusion`)
    # Initial weights of a ResNet-18 model (mmvid.models.init): ogm-ge (OGM-GE main.py's weight_init: conv
    # kaiming-normal fan_out, BN 1/0, every fusion/head Linear Xavier-normal with zero bias) | remix (the backbone's
    # own loops only, BN weights N(1, 0.02), Linear layers PyTorch's default: Remix, MMCosine, BalanceBenchmark)
    # | torch (PyTorch's and torchvision's defaults: mmvid before this option). The small encoder keeps torch's.
    init: str = spec("ogm-ge", choices=INITS)
    # Remix's baseline (baseline.py): a linear head h_m(z_m) per named modality, trained with
    # L = L_fused + sum_m weight_m CE(h_m(z_m), y) every step; e.g. {audio: 0.5, video: 0.5}. Empty = off.
    aux_loss: dict[str, float] = field(default_factory=dict)


@dataclass
class AugmentConfig:
    name: str = "none"  # an AUGMENTS name, checked by the registry
    # The augmentation's own settings (its Settings dataclass: `mmvid train --list NAME`), e.g. B-MM's beta and
    # warm-up, mixup's alpha; checked by resolve_config, saved in full (every setting with the value it ran with).
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BalanceConfig:
    name: str = "none"  # a BALANCERS name, checked by the registry
    args: dict[str, Any] = field(default_factory=dict)  # the balancer's own settings (`mmvid train --list NAME`)


OPTIMIZERS = ("adam", "adamw", "sgd")  # optim.name, built by mmvid.engine.optim
SCHEDULES = ("step", "cosine", "warmup_cosine", "none")  # optim.schedule, per epoch (mmvid.engine.optim)


@dataclass
class OptimConfig:
    # adam (the paper, betas 0.9/0.999, L2 weight decay) | adamw (decoupled weight decay: BalanceBenchmark, OPM)
    # | sgd (OGM-GE, MMPareto, ...; momentum, optionally Nesterov's)
    name: str = spec("adam", choices=OPTIMIZERS)
    momentum: float = spec(0.9, ge=0.0, lt=1.0)  # sgd only
    nesterov: bool = False  # sgd only: Nesterov momentum (needs momentum > 0)
    lr: float = spec(1e-3, gt=0.0, le=10.0)
    weight_decay: float = spec(1e-4, ge=0.0, le=10.0)
    no_decay_norm_bias: bool = False  # no weight decay on normalisation layers' parameters and on biases
    # Learning-rate multiplier per modality's encoder, e.g. {audio: 0.5}: that encoder's lr = lr x 0.5 (the rest
    # of the model, fusion and head, keeps lr); every schedule scales each group from its own starting lr.
    lr_scale: dict[str, float] = field(default_factory=dict)
    accumulate: int = spec(1, ge=1, le=65536)  # batches whose gradients are summed (averaged) per optimizer step
    # step (the paper's StepLR) | cosine (lr -> min_lr over the run) | warmup_cosine (linear warm-up over
    # warmup_epochs, then cosine) | none (constant); stepped after every epoch
    schedule: str = spec("step", choices=SCHEDULES)
    step_size: int = spec(30, ge=1, le=1_000_000)  # StepLR period in epochs (schedule step)
    gamma: float = spec(0.1, gt=0.0, le=1.0)  # StepLR decay factor (schedule step)
    warmup_epochs: int = spec(5, ge=1, le=1_000_000)  # schedule warmup_cosine: epochs of linear warm-up
    min_lr: float = spec(0.0, ge=0.0, le=10.0)  # schedule cosine / warmup_cosine: the last lr (torch's eta_min)
    grad_clip: float | None = spec(None, gt=0.0, le=1e9)  # max gradient norm; None = no clipping


@dataclass
class TrackConfig:
    """Experiment tracking beside metrics.jsonl (mmvid.tracking): the loggers are TrainConfig.logger."""

    # Each logger's own settings by its name, e.g. {wandb: {project: mine}} (--set track.args.wandb.project=mine)
    args: dict[str, Any] = field(default_factory=dict)
    every: int = spec(1, ge=1, le=1_000_000)  # log the per-step scalars (loss, lr, plug-ins') every N steps
    # Runs logged together: a W&B group, a TensorBoard folder <workspace>/sweeps/<group>/tensorboard (mmvid sweep)
    group: str | None = spec(None, name=True)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = spec(60, ge=1, le=1_000_000)
    seed: int = spec(0, ge=0, le=2**32 - 1)  # numpy's and torch's seed range
    device: str = spec("auto", choices=("auto", "cpu", "cuda"))
    amp: str = spec("off", choices=("off", "bf16", "fp16"))
    gpus: int = spec(1, ge=1, le=4096)
    channels_last: bool = False  # NHWC convolutions (tensor cores under AMP on CUDA)
    compile: bool = False  # torch.compile the training step's model
    run_name: str | None = spec(None, name=True)  # the folder <workspace>/runs/<run_name>: a plain name, never a path
    # The train-set monitor each epoch (per-modality train accuracy and s_m, paper Fig. 1): the fraction of the
    # train rows it evaluates, a fixed seeded subsample (engine.monitor_rows); true = 1 (all), false = 0 (off).
    # A plug-in that steers on train-set statistics keeps what it needs (B-MM: the whole set, engine.monitor_plan).
    monitor_train: float = spec(1.0, ge=0.0, le=1.0, bools=True)
    eval_every: int = spec(1, ge=1, le=1_000_000)  # val/test evaluation every N epochs, and always at the last
    # Model selection (docs/methods.md "Reference protocol"). clean: a validation split (data.val_fraction) is
    # held out of train and the best epoch is chosen on it. reference: as OGM-GE and Data Remixing do, every
    # training clip trains, test is evaluated every epoch and the best epoch is chosen on test (labelled so).
    protocol: str = spec("clean", choices=PROTOCOLS)
    # Plug-ins from outside mmvid (mmvid.plugins): Python files (absolute paths once resolved) or module names,
    # imported before the plug-in settings are checked; with --plugin, every one this run used is recorded here.
    plugins: list[str] = spec(factory=list, items="plug-in files (.py) or module names")
    plugin_sha256: dict[str, str] = field(default_factory=dict)  # each plug-in file's SHA-256, recorded by the run
    # Loggers of the curves (mmvid.tracking: tensorboard, wandb, csv; none: off); metrics.jsonl is always written
    logger: list[str] = spec(factory=list, items="logger names (tensorboard, wandb, csv; none: off)")
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_key(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set a dotted key such as ``model.fusion`` (checked against its field's rule); ``augment.args.k``
    sets inside a dict field. A whole section (``data``) cannot be replaced by a value."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(obj, dict):
            obj[".".join(parts[i:])] = value
            return
        fields_ = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields_:
            raise MmvidError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(fields_))}")
        sub = getattr(obj, part)
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(sub):
                raise MmvidError(f"config {key}={value!r}: {key} is a section, not a value; set its keys, e.g. "
                                 f"{key}.{dataclasses.fields(sub)[0].name}=..., or give it as a mapping in a recipe")
            setattr(obj, part, check_value(fields_[part], field_types(obj)[part], value, f"config {key}"))
            return
        obj = sub
        if not dataclasses.is_dataclass(obj) and not isinstance(obj, dict):
            raise MmvidError(f"config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")


def _flatten(d: dict[str, Any], prefix: str = "", sections: TrainConfig | Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        sub = getattr(sections, str(k), None) if dataclasses.is_dataclass(sections) else None
        if v is None and dataclasses.is_dataclass(sub):
            continue  # an empty section in a recipe keeps its defaults
        if isinstance(v, dict) and dataclasses.is_dataclass(sub):
            out.update(_flatten(v, key + ".", sub))
        else:
            out[key] = v
    return out

