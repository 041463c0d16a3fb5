"""The registries of the plug-in families (encoders, fusions, augmentations, balancers, calibration), each a
:class:`Registry` (defined in :mod:`mmvid.registry_base`, which the data sources' registry shares).

Entries are registered by decorator at import time of an explicitly imported module
(``mmvid.models.encoders``, ``mmvid.models.fusions``, ``mmvid.models.calibration``, ``mmvid.augment``,
``mmvid.balance``); nothing scans folders.

Settings: a registered class declares what it accepts once, as a nested dataclass ``Settings`` of typed
fields with ``spec(...)`` (default, range or choices, one line of meaning, where the reference sets it)::

    @BALANCERS.register("ogm-ge")
    class OGMGE(Balancer):
        @dataclass
        class Settings:
            alpha: float = spec(0.8, gt=0, le=100, help="modulation strength", ref="OGM-GE main.py --alpha")

A class registered without its own ``Settings`` has none (it does not inherit its parent's: each entry
says what it reads). :func:`check_plugin_settings` turns a config's mapping (``balance.args``,
``augment.args``, ``model.fusion_args``, ``model.calibration_args``) into that dataclass, checked; the
plug-in reads ``self.settings.alpha``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmvid.registry_base import NoSettings, Registry
from mmvid.schema import check_settings, field_default, field_types, rule_of


class EpochMeans:
    """Running means of per-step statistics over one epoch, for the ``log()`` line of metrics.jsonl:
    ``add({"name": value})`` once per step, ``means()`` -> name -> the sum of its values divided by the number
    of ``add`` calls (a name left out of a step's call counts as 0 in that step)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.last: dict[str, float] = {}  # the latest ``add`` call's values (the per-step curves, mmvid.tracking)

    def add(self, stats: dict[str, float]) -> None:
        self.last = {k: float(v) for k, v in stats.items()}
        for k, v in self.last.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def means(self) -> dict[str, float]:
        """name -> its sum over the epoch's ``add`` calls divided by their number (``{}`` before the first)."""
        return {k: v / self.n for k, v in self.sums.items()} if self.n else {}


class Plugin:
    """What augmentations and balancers share: per-epoch logging and state that survives a resume.

    Epoch statistics: a plug-in adds its per-step numbers to :attr:`stats` (``self.stats.add({"ogm_coeff_audio":
    k})``); :meth:`on_epoch_start` starts them afresh and :meth:`log` returns their means over the epoch, so a
    plug-in that logs only such means needs neither. One that overrides them calls ``super().on_epoch_start(ctx)``
    first, and ``super().log()`` for the means beside its own numbers.
    """

    # What the plug-in steers on, which the engine then measures after every epoch (engine.monitor_plan):
    # ctx.train_scores (per-modality s_m over the train set): False: not needed; "any": a monitor over a fixed
    # subsample of the train rows will do; "full" (or True): the whole train set, whatever monitor_train says.
    needs_train_scores: bool | str = False
    needs_val_scores: bool = False  # ctx.val_scores every epoch, whatever eval_every says
    # Held-out clips of its own (weights or a schedule estimated on held-out clips): refused under protocol reference,
    # which holds no validation split out (mmvid.engine.checks.reference_refusal).
    needs_val_split: bool = False

    Settings: type = NoSettings  # the registered class's own (Registry.register)
    family: Registry | None = None  # AUGMENTS or BALANCERS, for the messages of read_settings

    def read_settings(self, cfg) -> Any:
        """``cfg.args`` (the plug-in's config section) as this class's checked :attr:`Settings`."""
        family = self.family
        return check_settings(type(self).Settings, cfg.args, f"{family.kind} {cfg.name!r}", family.args_key)

    def __setattr__(self, name: str, value) -> None:
        # A plug-in's own attribute named like a hook (``self.epoch_order = [...]``) would hide the hook from
        # the training loop, which would then fail far from the cause.
        hook = getattr(type(self), name, None)
        if callable(hook) and not callable(value):
            raise TypeError(f"{type(self).__name__}.{name} is a hook of the training loop; name the attribute otherwise")
        super().__setattr__(name, value)

    def __init__(self) -> None:
        self.stats = EpochMeans()  # this epoch's running sums (reset by on_epoch_start, averaged by log)

    def on_epoch_start(self, ctx) -> None:
        """Before each epoch: the epoch's :attr:`stats` start empty."""
        self.stats = EpochMeans()

    def log(self) -> dict:
        """Coefficients for this epoch's metrics.jsonl line: here the means of :attr:`stats` over the epoch."""
        return self.stats.means()

    @classmethod
    def never_acted(cls, settings: Any, records: list[dict[str, Any]]) -> str | None:
        """Why a finished run of this plug-in shows, from its logged statistics, that the plug-in never acted
        (B-MM whose warm-up outlasted the run, a window of epochs that never opened, a coefficient that stayed
        0), in a few words for a results table; None when it acted or its log cannot tell.

        ``settings``: the run's checked :attr:`Settings`; ``records``: the run's metrics.jsonl lines, one per
        epoch, each holding what :meth:`log` returned. A plug-in that can go unused overrides this, so that a
        sweep table does not report an untouched baseline as the method's result."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_plugin_settings(registry: Registry, name: str, args: Any, where: Any = "") -> Any:
    """``registry``'s entry ``name`` settings from the mapping ``args``: unknown keys, wrong types and values
    out of range are one line naming the plug-in and the key (:func:`mmvid.schema.check_settings`);
    ``where`` ends that line (`` (in recipe x.yaml)``)."""
    return check_settings(registry.settings(name), args, f"{registry.kind} {name!r}", registry.args_key, where)


def settings_table(registry: Registry, name: str) -> list[dict[str, str]]:
    """One row per setting of entry ``name``: key, type, default, valid values, meaning, reference."""
    from mmvid.schema import Rule, _what

    cls = registry.settings(name)
    types_ = field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        rule = rule_of(f) or Rule()
        tp = types_[f.name]
        has_rule = any(v is not None for v in (rule.ge, rule.gt, rule.le, rule.lt, rule.choices))
        rows.append({"key": f.name, "default": _show(field_default(f)),
                     "valid": rule.describe(tp) if has_rule else _what(tp),
                     "help": f.metadata.get("help", ""), "ref": f.metadata.get("ref", "")})
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict) and not value:
        return "{}"
    return str(value)


# Encoders (mmvid.models.encoders): model.encoder's settings under model.encoder_args, a modality's own under
# model.encoders.<modality>.args.
ENCODERS: Registry = Registry("encoder", "model.encoder_args")
FUSIONS: Registry = Registry("fusion", "model.fusion_args")
CALIBRATIONS: Registry = Registry("calibration", "model.calibration_args")
AUGMENTS: Registry = Registry("augmentation", "augment.args")
BALANCERS: Registry = Registry("balancer", "balance.args")
REGISTRIES = (ENCODERS, FUSIONS, CALIBRATIONS, AUGMENTS, BALANCERS)
