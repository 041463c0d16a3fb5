"""The optimiser and the learning-rate schedule of a run (``optim`` section), built by
:func:`mmvid.engine.loop.build_training`:

- :func:`parameter_groups`: the model's parameters, split by modality (``optim.lr_scale``) and by whether weight
  decay applies (``optim.no_decay_norm_bias``); one group of every parameter, as before these options, when
  neither is set (so old checkpoints' optimizer states keep loading);
- :func:`make_optimizer`: ``adam`` (the paper: Adam, betas 0.9/0.999, L2 weight decay added to the gradient),
  ``adamw`` (Loshchilov & Hutter: decoupled weight decay, lr x wd x w subtracted from the weights), ``sgd``
  (momentum, optionally Nesterov's);
- :func:`make_scheduler`: stepped once after every epoch. ``step``: torch's StepLR(step_size, gamma), the paper's;
  ``cosine``: lr_e = min + (lr - min) (1 + cos(pi e / E)) / 2 over the E epochs (torch's CosineAnnealingLR with
  T_max = E, eta_min = min, in its closed form); ``warmup_cosine``: lr_e = lr (e + 1) / W for the first W epochs,
  then the cosine over the remaining E - W; ``none``: lr throughout. A group with a multiplier (``lr_scale``) or
  added by a plug-in follows the same curve from its own starting lr (its floor scaled alike);
- :func:`check_accumulation`: gradient accumulation (``optim.accumulate``) only with plug-ins that take one
  optimisation pass per batch and leave the gradients alone (those that act in ``after_backward`` read the batch's
  outputs and would see one batch's outputs beside several batches' gradients).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from mmvid.balance.base import Balancer
from mmvid.errors import MmvidError

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names (as ``model.named_parameters`` gives them) of the parameters that ``optim.no_decay_norm_bias``
    exempts from weight decay: every parameter of a normalisation layer (BatchNorm, GroupNorm, LayerNorm, ...)
    and every bias."""
    names = set()
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORMS) or name == "bias":
                names.add(f"{prefix}.{name}" if prefix else name)
    return names


def parameter_groups(model: nn.Module, optim) -> list[dict[str, Any]]:
    """The optimizer's parameter groups for ``model`` under the ``optim`` section.

    Neither ``lr_scale`` nor ``no_decay_norm_bias`` set: one group of ``model.parameters()`` (the layout of every
    run before these options). Otherwise one group per (modality of the encoder the parameter belongs to, or
    none for the fusion and head; decays or not), the group of the rest of the model with decay first (its lr is
    the one metrics.jsonl reports), then in the order of ``model.named_parameters``; each group carries its
    own ``lr`` (lr x lr_scale[m]) and ``weight_decay`` (0 for the exempt ones)."""
    if not optim.lr_scale and not optim.no_decay_norm_bias:
        return [{"params": list(model.parameters())}]
    exempt = no_decay_names(model) if optim.no_decay_norm_bias else set()
    groups: dict[tuple[str | None, bool], list[nn.Parameter]] = {(None, True): []}
    for name, p in model.named_parameters():
        parts = name.split(".")
        modality = parts[1] if parts[0] == "encoders" and len(parts) > 2 else None
        groups.setdefault((modality, name not in exempt), []).append(p)
    return [{"params": ps, "lr": optim.lr * optim.lr_scale.get(m, 1.0) if m else optim.lr,
             "weight_decay": optim.weight_decay if decays else 0.0, "modality": m or "", "decay": decays}
            for (m, decays), ps in groups.items() if ps]


def plugin_group(module: nn.Module, optim) -> list[dict[str, Any]]:
    """The groups of a plug-in's own trainable modules (a balancer's heads, MS-Mix's intensity heads): one group
    at the base lr, split by decay as :func:`parameter_groups` when ``no_decay_norm_bias`` is set."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not optim.no_decay_norm_bias:
        return [{"params": [p for _, p in trainable]}]
    exempt = no_decay_names(module)
    split = {True: [p for n, p in trainable if n not in exempt], False: [p for n, p in trainable if n in exempt]}
    return [{"params": ps, "weight_decay": optim.weight_decay if decays else 0.0, "modality": "", "decay": decays}
            for decays, ps in split.items() if ps]


def make_optimizer(params, optim) -> torch.optim.Optimizer:
    """``optim.name`` over ``params`` (parameters or the groups of :func:`parameter_groups`): Adam(betas 0.9,
    0.999) as the paper, AdamW (decoupled decay), or SGD with momentum (Nesterov's with ``optim.nesterov``)."""
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=optim.nesterov)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, betas=(0.9, 0.999), weight_decay=optim.weight_decay)
    return torch.optim.Adam(params, lr=optim.lr, betas=(0.9, 0.999), weight_decay=optim.weight_decay)


def lr_factor(optim, epochs: int) -> Callable[[int], float]:
    """Epoch e -> the factor of each group's starting lr, for ``cosine``, ``warmup_cosine`` and ``none``
    (formulas in the module's docstring). The floor ``min_lr`` is a fraction min_lr / lr of each group's lr."""
    floor = optim.min_lr / optim.lr
    if optim.schedule == "none":
        return lambda e: 1.0
    warm = optim.warmup_epochs if optim.schedule == "warmup_cosine" else 0

    def factor(e: int) -> float:
        if e < warm:
            return (e + 1) / warm
        span = max(epochs - warm, 1)
        return floor + (1 - floor) * (1 + math.cos(math.pi * min(e - warm, span) / span)) / 2

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, optim, epochs: int):
    """The schedule ``optim.schedule`` of a run of ``epochs`` epochs, stepped after each epoch. Built after every
    parameter group exists (the plug-ins' included): each group then follows it from its own starting lr."""
    if optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, optim.step_size, optim.gamma)
    factor = lr_factor(optim, epochs)
    # A plain function per group: LambdaLR's state_dict then saves none of it (the checkpoint holds plain
    # types; the schedule is rebuilt from the config on resume, and last_epoch says where it is).
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda e: factor(e) for _ in optimizer.param_groups])


def accumulation_group(batch: int, total: int, k: int) -> tuple[int, int]:
    """(place of the epoch's batch ``batch`` in its accumulation group, the group's number of batches): groups
    of ``k`` batches from the epoch's first, the last one shorter when ``k`` does not divide ``total``."""
    start = batch - batch % k
    return batch - start, min(k, total - start)


def check_accumulation(cfg, balancer: Balancer) -> None:
    """``optim.accumulate`` > 1 only with a balancer that neither acts in ``after_backward`` nor takes several
    passes per batch (one line naming it otherwise)."""
    if cfg.optim.accumulate == 1:
        return
    kind = type(balancer)
    if kind.after_backward is not Balancer.after_backward or kind.passes is not Balancer.passes:
        raise MmvidError(f"config optim.accumulate={cfg.optim.accumulate}: balancer {cfg.balance.name!r} steers each optimizer step "
                         f"on that batch's outputs (after_backward or several passes), which accumulated gradients "
                         f"of several batches would not match; use optim.accumulate=1 (or a larger data.batch_size)")


@contextmanager
def own_groups(cfg) -> Iterator[None]:
    """Around a plug-in's ``setup``: a plug-in that regroups the optimizer's parameters itself (ATF: one group per
    encoder, moved out of group 0) cannot also be given the groups of ``optim.lr_scale`` / ``no_decay_norm_bias``;
    torch's ValueError becomes one line."""
    try:
        yield
    except ValueError as e:
        if "more than one parameter group" not in str(e):
            raise
        raise MmvidError(f"balancer {cfg.balance.name!r} sets its own learning rate per encoder, which "
                         f"optim.lr_scale / optim.no_decay_norm_bias would split again; leave those at their "
                         f"defaults with this balancer") from None
