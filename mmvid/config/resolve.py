"""The one entry point: :func:`resolve_config` (dataclass defaults <- YAML recipe <- CLI flags <- ``--set``),
every value checked, then the plug-ins' settings and what the protocol implies; and a run's saved config read
back (:func:`config_from_dict`) or written (:func:`save_config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from mmvid.config.encoders import check_encoders, encoder_entries
from mmvid.config.optim import check_optim
from mmvid.config.recipes import load_recipe
from mmvid.config.sections import ABSENT_MEANS, SELECTED_ON_TEST, TrainConfig, _flatten, set_key
from mmvid.errors import MmvidError
from mmvid.schema import check_dataclass, check_option
from mmvid.tracking.base import check_loggers
from mmvid.workspace import RUN_MARK, write_atomic


def resolve_config(recipe: str | Path | dict | None = None, overrides: dict[str, Any] | None = None,
                   sources: dict[str, str] | None = None, notes: list[str] | None = None,
                   saved: bool = False) -> TrainConfig:
    """Defaults, then the recipe, then CLI overrides (dotted keys; ``None`` values are skipped), then what
    the protocol implies (:func:`apply_protocol`; its notes are appended to ``notes``).

    Every value is checked against its field's rule as it is set; an error names the key, what it
    accepts and where the value came from (``sources``: key -> the CLI flag that gave it). Then the
    plug-ins' settings (:func:`check_plugin_args`): unknown keys, types and ranges of ``augment.args``,
    ``balance.args``, ``model.fusion_args`` and ``model.calibration_args``, each filled in with its
    defaults, and the encoders (:func:`mmvid.config.encoders.check_encoders`). ``augment.<name>.<key>`` (``balance.<name>.<key>``) gives a setting of the plug-in ``name``,
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
    check_optim(cfg)
    check_loggers(cfg)  # logger names, their packages and their settings (track.args)
    if cfg.data.prepared:  # each key a prepare parameter with a value it accepts, before anything runs
        from mmvid.data.params import prepared_params  # no heavy import: the parameters' declarations only

        prepared_params(cfg.data.prepared)
    said = _legacy_note(cfg, moved, sections, saved)
    _import_plugins(cfg, saved, notes)
    _apply_sections(cfg, sections)
    check_plugin_args(cfg, lambda key: origins.get(key, where))
    check_encoders(cfg, lambda key: origins.get(key, where), saved)
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
    cfg.plugins = list(dict.fromkeys(given + plugins.providers([cls for _, _, cls in plugin_entries(cfg, known_only=True)])))
    cfg.plugin_sha256 = {s: loaded[s] for s in cfg.plugins if loaded.get(s)}


def plugin_entries(cfg: TrainConfig, known_only: bool = False) -> list[tuple[str, str, Any]]:
    """(kind, name, registered class) of every plug-in ``cfg`` uses: fusion, augmentation, balancer, calibration,
    encoders. An unknown name is the registry's one-line error, or, with ``known_only``, left out (for the
    plug-ins' recording, which runs before the settings check names it)."""
    from mmvid.plugins import load_plugins
    from mmvid.registry import AUGMENTS, BALANCERS, CALIBRATIONS, FUSIONS

    load_plugins()
    named = [(FUSIONS, cfg.model.fusion), (AUGMENTS, cfg.augment.name), (BALANCERS, cfg.balance.name)]
    named += [(CALIBRATIONS, CALIBRATION)] if cfg.model.calibrate else []
    return [(reg.kind, name, reg.get(name)) for reg, name in named if not known_only or name in reg] + \
        [("encoder", name, cls) for name, cls in encoder_entries(cfg)]


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
    from mmvid.plugins import load_plugins
    from mmvid.registry import AUGMENTS, BALANCERS, check_plugin_settings

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
    from mmvid.plugins import load_plugins
    from mmvid.registry import AUGMENTS, BALANCERS, CALIBRATIONS, FUSIONS, check_plugin_settings

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
