"""Run configuration: dataclass defaults <- YAML recipe <- CLI flags, validated, saved with every run.

``resolve_config(recipe, overrides)`` is the one entry point. Overrides are dotted keys
(``{"model.fusion": "concat", "augment.name": "bmm"}``); unknown keys, values of the wrong type and
values outside the range each field declares (:func:`mmvid.schema.spec`) are a one-line
:class:`MmvidError`. Imports no torch: a bad option fails fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmvid.errors import MmvidError
from mmvid.schema import check_dataclass, check_option, check_value, field_types, spec
from mmvid.workspace import RUN_MARK, write_atomic

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


@dataclass
class ModelConfig:
    encoder: str = spec("resnet18", choices=("resnet18", "small"))  # resnet18 (paper) | small (CPU-sized)
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


@dataclass
class OptimConfig:
    name: str = spec("adam", choices=("adam", "sgd"))  # adam (the paper, betas 0.9/0.999) | sgd (OGM-GE, MMPareto, ...)
    momentum: float = spec(0.9, ge=0.0, lt=1.0)  # sgd only
    lr: float = spec(1e-3, gt=0.0, le=10.0)
    weight_decay: float = spec(1e-4, ge=0.0, le=10.0)
    step_size: int = spec(30, ge=1, le=1_000_000)  # StepLR period in epochs
    gamma: float = spec(0.1, gt=0.0, le=1.0)  # StepLR decay factor
    grad_clip: float | None = spec(None, gt=0.0, le=1e9)  # max gradient norm; None = no clipping


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


RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# What a recipe's ``paper:`` section may say: the published figure its runs are compared with (mmvid sweep).
PAPER_KEYS = {"table": (int, str), "row": str, "column": str, "accuracy": (int, float), "note": str}
PAPER_KINDS = {"table": "table number or name", "row": "text", "column": "text", "accuracy": "number", "note": "text"}


@dataclass
class Recipe:
    """A recipe file read with its bases: ``config`` (sections for :func:`resolve_config`) and ``paper``
    (the published figure its runs reproduce, or None). ``files``: the recipe and its bases, base first."""

    path: Path
    config: dict[str, Any]
    paper: dict[str, Any] | None
    files: list[Path]


def find_recipe(path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe path as given (the current folder, or for a base the folder of the recipe that names it),
    else a name in recipes/; ``.yaml`` may be left out."""
    path = Path(path)
    names = [path] if path.suffix else [path, path.with_suffix(".yaml")]
    roots = [Path()] if path.is_absolute() else [relative_to if relative_to is not None else Path(), RECIPES]
    found = [root / n for root in roots for n in names if (root / n).exists()]
    for cand in found:
        if cand.is_file():
            return cand
    if found:
        raise MmvidError(f"recipe {found[0]} is not a file; give the path of a YAML recipe")
    raise MmvidError(f"recipe {str(path)!r} not found; give a YAML path or a name from recipes/")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:  # safe_load: a recipe from someone else builds plain values only, never objects
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise MmvidError(f"recipe {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 YAML") from None
    except OSError as e:
        raise MmvidError(f"recipe {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise MmvidError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MmvidError(f"recipe {path} must be a YAML mapping of config sections")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Sections merge key by key (a recipe names only what differs from its base); values replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check_paper(paper: Any, path: Path) -> dict[str, Any]:
    if not isinstance(paper, dict):
        raise MmvidError(f"recipe {path}: paper must be a mapping of {', '.join(PAPER_KEYS)}")
    for k, v in paper.items():
        if k not in PAPER_KEYS:
            raise MmvidError(f"recipe {path}: unknown paper key {k!r}; valid keys: {', '.join(PAPER_KEYS)}")
        if not isinstance(v, PAPER_KEYS[k]) or isinstance(v, bool):
            raise MmvidError(f"recipe {path}: paper.{k}={v!r} must be a {PAPER_KINDS[k]}")
    if "accuracy" in paper and not 0 <= paper["accuracy"] <= 100:
        raise MmvidError(f"recipe {path}: paper.accuracy={paper['accuracy']} must be a percentage in [0, 100]")
    return dict(paper)


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> Recipe:
    """Read a recipe and the recipes it ``extends`` (a name or a list, each relative to this file or in
    recipes/; later ones and then this file win, section by section). ``paper`` is not inherited."""
    path = find_recipe(path) if not _seen else Path(path)
    key = path.resolve()
    if key in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, key))
        raise MmvidError(f"recipe {path} extends itself ({chain}); remove one of the extends")
    data = _read_yaml(path)
    if isinstance(data.get("plugins"), list):  # a plug-in file named relative to its recipe's folder
        from mmvid.plugins import is_file_spec

        # as an absolute path: what --plugin records (mmvid.plugins.resolve), whichever folder the recipe was named from
        data["plugins"] = [str((path.parent / p).resolve()) if isinstance(p, str) and is_file_spec(p) and not Path(p).expanduser().is_absolute()
                           else p for p in data["plugins"]]
    bases = data.pop("extends", None) or []
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise MmvidError(f"recipe {path}: extends must be a recipe name or a list of them")
    paper = data.pop("paper", None)
    merged: dict[str, Any] = {}
    files: list[Path] = []
    for base in bases:
        parent = read_recipe(find_recipe(base, path.parent), (*_seen, key))
        merged = _merge(merged, parent.config)
        files += [f for f in parent.files if f not in files]
    return Recipe(path, _merge(merged, data), _check_paper(paper, path) if paper is not None else None, files + [path])


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The config sections of a recipe, its bases merged in."""
    return read_recipe(path).config


def resolve_config(recipe: str | Path | dict | None = None, overrides: dict[str, Any] | None = None,
                   sources: dict[str, str] | None = None, notes: list[str] | None = None,
                   saved: bool = False) -> TrainConfig:
    """Defaults, then the recipe, then CLI overrides (dotted keys; ``None`` values are skipped), then what
    the protocol implies (:func:`apply_protocol`; its notes are appended to ``notes``).

    Every value is checked against its field's rule as it is set; an error names the key, what it
    accepts and where the value came from (``sources``: key -> the CLI flag that gave it). Then the
    plug-ins' settings (:func:`check_plugin_args`): unknown keys, types and ranges of ``augment.args``,
    ``balance.args``, ``model.fusion_args`` and ``model.calibration_args``, each filled in with its
    defaults. ``augment.<name>.<key>`` (``balance.<name>.<key>``) gives a setting of the plug-in ``name``,
    used when that plug-in runs (a data set's recipe gives B-MM's and MM's values once). A key of the older
    layout (``augment.beta``, now ``augment.bmm.beta``) is moved there, with a one-line note: appended to
    ``notes``, or printed once (stderr) when ``notes`` is None. ``saved``: a run's own config
    (config_from_dict), whose old-layout keys that its augmentation never read are dropped.
    """
    cfg = TrainConfig()
    data = recipe if isinstance(recipe, dict) else (load_recipe(recipe) if recipe else {})
    where = f" (in recipe {recipe})" if recipe is not None and not isinstance(recipe, dict) else ""
    moved: dict[str, tuple[Any, str]] = {}  # old key -> (value, where)
    # (augment|balance, plug-in name) -> key -> (value, where it came from, 0: the recipe | 1: an override)
    sections: dict[tuple[str, str], dict[str, tuple[Any, str, int]]] = {}
    items = [(k, v, where, 0) for k, v in _flatten(data, "", cfg).items()]
    items += [(k, v, f" (given by {sources[k]})" if sources and k in sources else "", 1)
              for k, v in (overrides or {}).items() if v is not None]
    origins: dict[str, str] = {}  # balance.args.alpha -> where its value came from (for the plug-ins' errors)
    for key, value, given, level in items:
        origins.update({f"{key}.{k}": given for k in value} if key in PLUGIN_ARGS and isinstance(value, dict)
                       else {key: given})
        family, _, rest = key.partition(".")
        if key in LEGACY_KEYS:
            moved[key] = (value, given)
            origins[f"augment.args.{rest}"] = given
            for owner in LEGACY_OWNERS[rest]:
                sections.setdefault(("augment", owner), {})[rest] = (value, given, level)
            continue
        if family in PLUGIN_SECTIONS and rest and rest.split(".")[0] not in _names(getattr(cfg, family)) \
                and ("." in rest or isinstance(value, dict)):
            name, _, sub = rest.partition(".")
            for k, v in ({sub: value} if sub else value).items():
                sections.setdefault((family, name), {})[str(k)] = (v, given, level)  # checked with ``given``
            continue
        _set_from(cfg, key, value, given)
    check_dataclass(cfg, "config ")
    check_aux_loss(cfg)
    if cfg.data.prepared:  # each key a prepare parameter with a value it accepts, before anything runs
        from mmvid.data.params import prepared_params  # no heavy import: the parameters' declarations only

        prepared_params(cfg.data.prepared)
    said = _legacy_note(cfg, moved, sections, saved)
    _import_plugins(cfg, saved, notes)
    _apply_sections(cfg, sections)
    check_plugin_args(cfg, lambda key: origins.get(key, where))
    if said:
        _note(f"config {said}", notes)
    apply_protocol(cfg, {k for k, v in (overrides or {}).items() if v is not None}, sources, notes)
    return cfg


def _import_plugins(cfg: TrainConfig, saved: bool, notes: list[str] | None) -> None:
    """The plug-ins from outside mmvid, before their settings are checked. Those given with ``--plugin`` are
    imported at the user's request and recorded with their hashes; a recipe's must be among them (or installed); a saved run's are only
    checked against what the user gave (:func:`mmvid.plugins.check_recorded`: loading a run runs no code)."""
    from mmvid import plugins

    if saved:
        for text in plugins.check_recorded(cfg.plugins, cfg.plugin_sha256):
            _note(text, notes)
        return
    # A recipe's (or --set's) plug-ins must have been given with --plugin (or be installed): a recipe runs no code.
    # Its relative files are already its folder's (read_recipe).
    for text in plugins.check_recorded(cfg.plugins, {}, plugins.RECIPE):
        _note(text, notes)
    given = [plugins.resolve(s) for s in cfg.plugins]
    loaded = plugins.loaded()
    cfg.plugins = list(dict.fromkeys(given + list(loaded)))
    cfg.plugin_sha256 = {s: loaded[s] for s in cfg.plugins if loaded.get(s)}


PLUGIN_SECTIONS = ("augment", "balance")  # config sections whose plug-ins may be given settings by name
PLUGIN_ARGS = ("model.fusion_args", "model.calibration_args", "augment.args", "balance.args")
# Keys of the layout before each plug-in declared its own settings (now augment.<owner>.<key>, LEGACY_OWNERS).
# A recipe, a --set, a saved config.yaml or a checkpoint that names them keeps loading (with a note).
LEGACY_OWNERS = {"alpha": ("mixup", "mm"), **{k: ("bmm",) for k in ("warmup", "beta", "rho_stat", "lambda_map", "rho_split",
                                                                     "stage", "unimodal")}}
LEGACY_KEYS = {f"augment.{k}" for k in LEGACY_OWNERS}
# Their defaults in that layout (B-MM's stage and unimodal away from these under another augmentation were an error)
LEGACY_DEFAULTS = {"augment.stage": "feature", "augment.unimodal": "mask"}
_NOTED: set[str] = set()


def _names(section: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(section)}


def _note(text: str, notes: list[str] | None) -> None:
    if notes is not None:
        notes.append(text)
    elif text not in _NOTED:  # once per process: a sweep or a resumed run resolves the same config again
        import sys

        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr)


def _legacy_note(cfg: TrainConfig, moved: dict[str, tuple[Any, str]], sections: dict, saved: bool) -> str:
    """The note on old-layout keys (``augment.beta`` -> ``augment.bmm.beta``: B-MM's setting, used when B-MM
    runs, as the old key was; ``augment.alpha`` -> mixup's and mm's), '' when there were none. B-MM's stage and
    unimodal away from their defaults under another augmentation stay an error (as they were) in a recipe or
    --set; a saved run drops them with the note."""
    if not moved:
        return ""
    said, dropped = [], []
    for key, (value, where) in moved.items():
        short = key.split(".")[-1]
        owners = LEGACY_OWNERS[short]
        if key in LEGACY_DEFAULTS and cfg.augment.name not in owners and str(value) != LEGACY_DEFAULTS[key]:
            if not saved:
                raise MmvidError(f"config {key}={value} is a B-MM option (now augment.args.{short} with augment.name=bmm); "
                                 f"augment.name={cfg.augment.name} does not use it: remove it or use augment.name=bmm{where}")
            dropped.append(f"{key}={value}")
            sections[("augment", "bmm")].pop(short)
            continue
        said.append(f"{key} -> {' and '.join(f'augment.{o}.{short}' for o in owners)}")
    text = f"{', '.join(said)} (each augmentation's own settings, `mmvid train --list NAME`)" if said else ""
    if dropped:
        text += ("; " if text else "") + f"dropped {', '.join(dropped)} (augmentation {cfg.augment.name!r} never read it)"
    return text


def _apply_sections(cfg: TrainConfig, sections: dict[tuple[str, str], dict[str, tuple[Any, str, int]]]) -> None:
    """``augment.<name>.<key>``: every named plug-in's settings are checked (a misspelled one is an error even
    when another plug-in runs); the running plug-in takes its own: a recipe's under ``args``, an override's
    over ``args`` (the command line beats the recipe, whichever form each uses)."""
    from mmvid.registry import AUGMENTS, BALANCERS, check_plugin_settings, load_plugins

    load_plugins()
    for (family, name), values in sections.items():
        reg = AUGMENTS if family == "augment" else BALANCERS
        if name not in reg:
            key, (_, given, _) = next(iter(values.items()))
            raise MmvidError(f"unknown config key {family}.{name}.{key}: {name!r} is no {reg.kind} (a plug-in's "
                             f"settings by name: {family}.NAME.KEY, NAME one of {', '.join(reg.names())}){given}")
        for key, (value, given, _) in values.items():
            check_plugin_settings(reg, name, {key: value}, given)
        section = getattr(cfg, family)
        if section.name == name:
            args = dict(section.args) if isinstance(section.args, dict) else {}
            low = {k: v for k, (v, _, level) in values.items() if level == 0}
            high = {k: v for k, (v, _, level) in values.items() if level == 1}
            section.args = {**low, **args, **high}


def check_plugin_args(cfg: TrainConfig, where: Any = "") -> None:
    """Every plug-in's settings of ``cfg``, checked (:func:`mmvid.registry.check_plugin_settings`) and
    written back in full: each mapping then holds every setting of its plug-in with the value the run uses.
    Imports the plug-in modules (torch): it runs after the core checks above, which a bad option fails first."""
    from mmvid.registry import AUGMENTS, BALANCERS, CALIBRATIONS, FUSIONS, check_plugin_settings, load_plugins

    load_plugins()
    for reg, section, name, attr in ((FUSIONS, cfg.model, cfg.model.fusion, "fusion_args"),
                                     (CALIBRATIONS, cfg.model, CALIBRATION, "calibration_args"),
                                     (AUGMENTS, cfg.augment, cfg.augment.name, "args"),
                                     (BALANCERS, cfg.balance, cfg.balance.name, "args")):
        at = where if callable(where) else (lambda key, where=where: where)
        settings = check_plugin_settings(reg, name, getattr(section, attr),
                                         lambda key, reg=reg: at(f"{reg.args_key}.{key}" if key else reg.args_key))
        setattr(section, attr, asdict(settings))


CALIBRATION = "prefusion"  # the one CALIBRATIONS entry, model.calibrate's module (mmvid.models.calibration)


def check_aux_loss(cfg: TrainConfig) -> None:
    """``model.aux_loss``: a finite weight in (0, 1000] per modality of ``data.modalities``, and no balancer
    (balancers compute their own loss from the augmentation's, several of them replacing it: the auxiliary
    term would be dropped or counted twice). Converts the weights to float in place."""
    aux = cfg.model.aux_loss
    if not aux:
        return
    unknown = sorted(str(m) for m in set(aux) - set(cfg.data.modalities))
    if unknown:
        raise MmvidError(f"config model.aux_loss names {unknown}, not in data.modalities {cfg.data.modalities}; "
                         f"give one weight per modality, e.g. model.aux_loss='{{audio: 0.5, video: 0.5}}'")
    cfg.model.aux_loss = {m: check_option(f"config model.aux_loss.{m}", aux[m], float, gt=0.0, le=1000.0)
                          for m in cfg.data.modalities if m in aux}
    if cfg.balance.name != "none":
        raise MmvidError(f"config model.aux_loss (Remix's baseline heads) cannot be combined with balancer "
                         f"{cfg.balance.name!r}, which computes its own loss; remove model.aux_loss or use --balance none")


def apply_protocol(cfg: TrainConfig, given: set[str] = frozenset(), sources: dict[str, str] | None = None,
                   notes: list[str] | None = None) -> None:
    """What ``protocol: reference`` implies: no validation split (every training clip trains) and test
    evaluated after every epoch.

    A recipe's (or the default) ``data.val_fraction`` is replaced by 0, so that the saved config says what
    ran, with a line in ``notes``; a ``data.val_fraction`` above 0 given beside the protocol among the
    overrides (``given``: the command line) contradicts it and is an error, as is ``eval_every`` other than 1.
    """
    if cfg.protocol != "reference":
        return
    flag = lambda key: f" (given by {sources[key]})" if sources and key in sources else ""  # noqa: E731
    if cfg.eval_every != 1:
        raise MmvidError(f"config eval_every={cfg.eval_every}{flag('eval_every')}: protocol reference evaluates test "
                         f"after every epoch (the best epoch is chosen on test); leave eval_every at 1 or use protocol clean")
    if cfg.data.val_fraction > 0:
        if "data.val_fraction" in given:
            raise MmvidError(f"config data.val_fraction={cfg.data.val_fraction}{flag('data.val_fraction')}: protocol "
                             f"reference trains on every training clip and holds no validation split out; leave "
                             f"data.val_fraction out or use protocol clean")
        if notes is not None:
            notes.append(f"protocol reference: every training clip trains (data.val_fraction={cfg.data.val_fraction} "
                         f"is not used) and the best epoch is {SELECTED_ON_TEST['reference']}")
        cfg.data.val_fraction = 0.0


def _set_from(cfg: TrainConfig, key: str, value: Any, where: str) -> None:
    try:
        set_key(cfg, key, value)
    except MmvidError as e:
        raise MmvidError(f"{e}{where}") from None


def config_from_dict(d: dict[str, Any], notes: list[str] | None = None) -> TrainConfig:
    """Rebuild a saved config (checkpoint / run folder) exactly; a key it lacks takes the value runs were
    trained with before the key existed (:data:`ABSENT_MEANS`), else today's default."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key, value in ABSENT_MEANS.items():
        section, name = key.split(".")
        if isinstance(d.get(section), dict) and name not in d[section]:
            d[section][name] = value
    return resolve_config(d, notes=notes, saved=True)


def canonical_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config (any layout mmvid wrote) as today's resolved config dict, every plug-in setting filled
    in (so that a run saved before a setting moved or was declared compares equal to the same settings
    now); a config that no longer resolves is returned as it is (the caller names the key that differs)."""
    try:
        return config_from_dict(d, notes=[]).to_dict()
    except MmvidError:
        return d


def save_config(cfg: TrainConfig, path: Path) -> None:
    """A run's config.yaml; its first line (a YAML comment) marks the folder as a run mmvid wrote."""
    write_atomic(path, f"{RUN_MARK}: written by `mmvid train` (a run folder; this file is also a recipe)\n"
                 + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
