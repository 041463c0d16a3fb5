"""What a config's plug-ins accept, checked before any work starts (``mmvid train``, every run a sweep plans,
``diagnose``): unknown names, settings a plug-in cannot use, a balancer that refuses the fusion, a method that needs
a validation split under protocol reference."""

from __future__ import annotations

from typing import Any

from mmvid.engine.evaluation import monitor_plan
from mmvid.errors import MmvidError
from mmvid.models.classifier import check_calibration
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS


def check_plugins(cfg, console=None) -> None:
    """What a config's plug-ins accept, before any work: unknown names, args a plug-in cannot use, one
    augmentation's option under another augmentation, a balancer that refuses the fusion or modalities (one line each);
    on ``console``, a note when a plug-in needs more of the train-set monitor than monitor_train gives."""
    load_plugins()
    FUSIONS.get(cfg.model.fusion)
    check_calibration(cfg.model.fusion, cfg.model.calibrate)
    built = {}
    for reg, section, key in ((AUGMENTS, cfg.augment, "augment"), (BALANCERS, cfg.balance, "balance")):
        try:  # building parses the plug-in's args: a value it cannot use fails here, as one line
            built[key] = reg.build(section.name, section, cfg.data.modalities)
        except (TypeError, ValueError, AttributeError) as e:
            raise MmvidError(f"config {key}.args={section.args} is not valid for {reg.kind} {section.name!r}: {e}") from None
    built["balance"].check(cfg.model, cfg.augment.name)
    refusal = reference_refusal(cfg, built)
    if refusal:
        raise MmvidError(f"config protocol=reference holds no validation split out, but {refusal}; "
                         f"train it under protocol clean")
    if console is not None:
        note = monitor_plan(cfg, built["augment"], built["balance"])[1]
        if note:
            console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)


def reference_refusal(cfg, built: dict[str, Any] | None = None) -> str | None:
    """Why ``cfg``'s plug-ins cannot train under protocol reference, e.g. "balancer 'NAME' estimates on
    validation clips of its own" (None if they can): a plug-in that estimates on held-out clips (its
    ``needs_val_split``) needs the validation split that protocol reference does not hold out. ``built``: the plug-ins already built from ``cfg``
    ({"augment": ..., "balance": ...}); else they are built here (an error building them is left to
    :func:`check_plugins`)."""
    if cfg.protocol != "reference":
        return None
    if built is None:
        load_plugins()
        try:
            built = {"augment": AUGMENTS.build(cfg.augment.name, cfg.augment, cfg.data.modalities),
                     "balance": BALANCERS.build(cfg.balance.name, cfg.balance, cfg.data.modalities)}
        except (MmvidError, TypeError, ValueError, AttributeError):
            return None
    for key, kind in (("augment", "augmentation"), ("balance", "balancer")):
        plugin = built[key]
        if plugin.needs_val_split or plugin.needs_val_scores:
            return f"{kind} {getattr(cfg, key).name!r} estimates on validation clips of its own"
    return None
