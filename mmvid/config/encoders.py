"""The encoder part of a config, checked by :func:`mmvid.config.resolve_config`: ``model.encoder`` and
``model.encoder_args``, each ``model.encoders.<modality>`` (name, settings, weights), ``model.init_from`` and
``model.freeze`` (one line for any problem, before anything is built)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from mmvid.config.sections import MODALITIES, TrainConfig
from mmvid.errors import MmvidError


def check_encoders(cfg: TrainConfig, at: Callable[[str], str], saved: bool) -> None:
    """Every encoder ``cfg`` names (an ENCODERS name, its settings, the modality's input), its settings written
    back in full (``model.encoder_args``; ``model.encoders.<m>.args`` where the modality names its own);
    ``at(key)`` ends a line with where the value came from. Unless ``saved`` (a run's own config, whose files may
    have moved): each weights file or run folder exists, or is a torchvision weight name of the encoder."""
    from mmvid.models.encoders import check_encoder, encoder_choice
    from mmvid.registry import ENCODERS, check_plugin_settings
    from mmvid.schema import check_settings

    mc = cfg.model
    _known(ENCODERS, mc.encoder, "model.encoder", at)
    for m in MODALITIES:
        own = getattr(mc.encoders, m)
        if not isinstance(own.args, dict):
            raise MmvidError(f"config model.encoders.{m}.args={own.args!r} is not valid; it must be a mapping of "
                             f"the encoder's settings{at(f'model.encoders.{m}.args')}")
        if own.name is not None:
            _known(ENCODERS, own.name, f"model.encoders.{m}.name", at)
    # model.encoder's settings, checked even when no modality uses it (a misspelling is one line), written back
    # in full when one does
    settings = check_plugin_settings(ENCODERS, mc.encoder, mc.encoder_args, lambda key: at("model.encoder_args"))
    if any(not getattr(mc.encoders, m).name for m in cfg.data.modalities):
        mc.encoder_args = asdict(settings)
    for m in cfg.data.modalities:
        own = getattr(mc.encoders, m)
        name, args = encoder_choice(mc, m)
        key, prefix = (f"model.encoders.{m}.name" if own.name else "model.encoder"), f"model.encoders.{m}.args"
        check_settings(ENCODERS.settings(name), own.args, f"encoder {name!r}", prefix, lambda k: at(prefix))
        try:
            settings = check_encoder(name, m, args, key)
        except MmvidError as e:
            raise MmvidError(f"{e}{at(key)}") from None
        if own.name:
            own.args = asdict(settings)
    if mc.freeze == "encoders" and cfg.balance.name != "none":
        raise MmvidError(f"config model.freeze=encoders trains no encoder, whose learning balancer "
                         f"{cfg.balance.name!r} steers; use --balance none, or model.freeze=bn or none{at('model.freeze')}")
    if not saved:
        _check_files(cfg, at)


def _known(registry, name: Any, key: str, at: Callable[[str], str]) -> None:
    if not isinstance(name, str) or name not in registry:
        raise MmvidError(f"config {key}={name!r}: unknown encoder; choose one of: {', '.join(registry.names())} "
                         f"(a plug-in's: --plugin FILE){at(key)}")


def _check_files(cfg: TrainConfig, at: Callable[[str], str]) -> None:
    """Each weights file, run folder or torchvision weight name of ``cfg`` can be read (it is read at the start)."""
    from mmvid.models.encoders import _named_weights, encoder_choice
    from mmvid.models.pretrained import is_weight_name
    from mmvid.registry import ENCODERS

    mc = cfg.model
    if mc.init_from and not Path(mc.init_from).expanduser().exists():
        raise MmvidError(f"config model.init_from={mc.init_from}: no such run folder or checkpoint; give the folder "
                         f"of a run (or its checkpoint file) whose encoders to start from{at('model.init_from')}")
    if mc.init_from:  # the config records where it is, whatever the working folder of a later command
        mc.init_from = str(Path(mc.init_from).expanduser().resolve())
    for m in cfg.data.modalities:
        spec = getattr(mc.encoders, m).weights
        if not spec:
            continue
        key = f"model.encoders.{m}.weights"
        if is_weight_name(spec):
            name = encoder_choice(mc, m)[0]
            arch = getattr(ENCODERS.get(name), "arch", None)
            if arch is None or _named_weights(arch, spec) is None:
                raise MmvidError(f"config {key}={spec}: torchvision has no weights {spec!r} for encoder {name!r}; "
                                 f"give a state dict file, an mmvid run folder, or a name torchvision lists for "
                                 f"{name} (e.g. IMAGENET1K_V1){at(key)}")
        elif not Path(spec).expanduser().exists():
            raise MmvidError(f"config {key}={spec}: no such file or run folder; give a state dict file (.pt, .pth), "
                             f"an mmvid run folder or checkpoint, or a torchvision weight name (IMAGENET1K_V1){at(key)}")
        else:
            getattr(mc.encoders, m).weights = str(Path(spec).expanduser().resolve())


def encoder_entries(cfg: TrainConfig) -> list[tuple[str, Any]]:
    """(name, registered class) of each encoder ``cfg`` uses (unknown names left to :func:`check_encoders`)."""
    from mmvid.models.encoders import encoder_choice
    from mmvid.registry import ENCODERS

    names = {encoder_choice(cfg.model, m)[0] for m in cfg.data.modalities if m in MODALITIES}
    return [(n, ENCODERS.get(n)) for n in sorted(names) if isinstance(n, str) and n in ENCODERS]

