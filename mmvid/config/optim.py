"""The checks of the ``optim`` section that one field's rule cannot state (:func:`check_optim`): the modalities
of ``optim.lr_scale`` and the options that only one optimiser reads. Imports no torch."""

from __future__ import annotations

from mmvid.config.sections import TrainConfig
from mmvid.errors import MmvidError
from mmvid.schema import check_option


def check_optim(cfg: TrainConfig) -> None:
    """``optim.lr_scale``: a multiplier in (0, 1000] per modality of ``data.modalities`` (converted to float in
    place); ``optim.nesterov`` only with ``optim.name`` sgd and a momentum above 0 (torch's SGD refuses it
    otherwise, and adam/adamw would silently ignore it)."""
    optim = cfg.optim
    scale = optim.lr_scale if isinstance(optim.lr_scale, dict) else None
    if scale is None:
        raise MmvidError(f"config optim.lr_scale={optim.lr_scale!r}: give a mapping of modality to multiplier, "
                         f"e.g. optim.lr_scale='{{audio: 0.5}}'")
    unknown = sorted(str(m) for m in set(scale) - set(cfg.data.modalities))
    if unknown:
        raise MmvidError(f"config optim.lr_scale names {unknown}, not in data.modalities {cfg.data.modalities}; "
                         f"give a multiplier per modality, e.g. optim.lr_scale='{{audio: 0.5}}'")
    optim.lr_scale = {m: check_option(f"config optim.lr_scale.{m}", scale[m], float, gt=0.0, le=1000.0)
                      for m in cfg.data.modalities if m in scale}
    if optim.schedule in ("cosine", "warmup_cosine") and optim.min_lr > optim.lr:
        raise MmvidError(f"config optim.min_lr={optim.min_lr} is above optim.lr={optim.lr}: the cosine schedule "
                         f"falls from optim.lr to optim.min_lr; give a smaller optim.min_lr")
    if optim.nesterov and (optim.name != "sgd" or optim.momentum == 0):
        raise MmvidError(f"config optim.nesterov=true needs optim.name=sgd with optim.momentum > 0 (now "
                         f"optim.name={optim.name}, optim.momentum={optim.momentum}); set those or drop optim.nesterov")
