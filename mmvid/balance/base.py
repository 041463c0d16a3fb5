"""Interface of the BALANCERS family: one object attached at the named hook points of the one
training loop in :mod:`mmvid.engine`, grouped by the stage they change (as BalanceBenchmark does):

==================  =========================================================================
hook                when / what it may change
==================  =========================================================================
``setup``           once, after the model is built: return extra trainable modules (heads, ...)
``on_epoch_start``  before each epoch (ctx.train_scores holds last epoch's train-set statistics)
``epoch_order``     data stage, once per epoch after ``on_epoch_start``: given the epoch's shuffled order
                    of training samples (positions in ctx.splits.train, before it is shared out to
                    ranks and cut into batches), may return it reordered (e.g. one subset per modality),
                    or with entries repeated (e.g. resampled copies; the epoch's length follows)
``on_batch``        data stage: may return modified (inputs, y)
``passes``          optimisation passes on the batch: a list, one loss -> backward -> ``after_backward``
                    -> step per item, with ``ctx.focus`` = the item (default ``[None]``: one step;
                    or e.g. one pass per modality on the same forward)
``loss``            loss stage: given the step's ModelOutput and the augmentation's loss
``after_backward``  optimisation stage: gradients are unscaled (after ``scaler.unscale_``) and not
                    yet clipped; may rescale gradients or learning rates
``on_epoch_end``    after the epoch's evaluation; may update statistics
==================  =========================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from mmvid.augment.base import modality_mix, target_probability
from mmvid.data.torch_dataset import finish_batch
from mmvid.errors import MmvidError
from mmvid.measures import eval_mode
from mmvid.models.fusions import split_head_fusions
from mmvid.registry import BALANCERS, FUSIONS, Plugin


def unwrap(model: nn.Module) -> nn.Module:
    """The classifier inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def encoder_parameters(model: nn.Module, m: str) -> list[nn.Parameter]:
    """Every trainable parameter of modality m's encoder (all of them, not chosen by name or rank)."""
    return [p for p in unwrap(model).encoders[m].parameters() if p.requires_grad]


@torch.no_grad()
def unimodal_logits(model: nn.Module, out) -> dict[str, torch.Tensor]:
    """Paper Eq. 5 on the step's (detached, float32) encoder features and mix: m -> (B, C) logits of m alone
    (:meth:`mmvid.models.classifier.MultimodalClassifier.masked_features`)."""
    return unwrap(model).unimodal_logits({m: z.detach().float() for m, z in out.raw.items()}, out.mix)


def scored_logits(model: nn.Module, out, score: str) -> dict[str, torch.Tensor]:
    """Unimodal logits for a balancer's scores: ``mask`` (paper Eq. 5, :func:`unimodal_logits`) or
    ``split-head`` (the slices of the fused head, as OGM-GE's and OPM's reference code)."""
    if score == "mask":
        return unimodal_logits(model, out)
    with torch.no_grad():
        return unwrap(model).split_head_logits({m: z.detach().float() for m, z in out.features.items()})


def check_split_heads(model_cfg, key: str = "heads", value: str = "split", other: str = "linear") -> None:
    """``balance.args.<key>=<value>`` reads slices of the fused head: refuse fusions that have none (their
    class's ``split_head``, :class:`mmvid.models.fusions.Fusion`)."""
    if not getattr(FUSIONS.get(model_cfg.fusion), "split_head", False):
        raise MmvidError(f"balance.args.{key}={value} needs --fusion {split_head_fusions()} (got "
                         f"{model_cfg.fusion!r}); use balance.args.{key}={other}")


def modality_scores(logits: dict[str, torch.Tensor], out, y: torch.Tensor, ctx) -> dict[str, float]:
    """s_m = sum_i p_m,i[y~_i] over the batch, summed over ranks; y~ is the target modality m's features
    were mixed towards (plain y without mixing)."""
    mods = list(logits)
    local = torch.stack([target_probability(logits[m], y, modality_mix(out.mix, m)).sum().detach().cpu().double()
                         for m in mods])
    return dict(zip(mods, ctx.all_reduce(local).tolist()))


def device_batches(ctx, rows: np.ndarray, train: bool = False) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The batches of ``ctx.loader(rows, train)`` on ``ctx.device``, decoded there: (m -> (B, ...) inputs as
    the model takes them, (B,) labels). ``train``: with the training crops and flips."""
    for inputs, y in ctx.loader(rows, train=train):
        yield finish_batch({k: v.to(ctx.device, non_blocking=True) for k, v in inputs.items()}), y.to(ctx.device)


@torch.no_grad()
def per_sample_pass(ctx, rows: np.ndarray, measure: Callable[[dict[str, torch.Tensor], torch.Tensor], dict],
                    widths: dict, train: bool = False, modules: tuple[nn.Module, ...] = ()) -> dict:
    """One eval-mode, no-gradient pass over ``rows`` (positions in the cache, e.g. ``ctx.splits.train``) that
    keeps one measurement per sample, the rows shared out over the ranks: rank r measures rows r, r + W,
    r + 2W, ... (W = ``ctx.world_size``), and the results are summed over ranks (each row is measured by one
    rank and zero on the others), so that every rank gets the whole (N, ...) result.

    measure(inputs, y): on a batch of b rows (:func:`device_batches`), key -> (b, *widths[key]) tensor.
    widths: key -> the trailing shape of its per-sample value (``()`` for one number per sample), so that a
    rank without rows still takes part in the sum. The model (``ctx.model``, unwrapped) and ``modules``
    are in eval mode during the pass and back in their previous mode after it.
    Returns key -> (N, *widths[key]) float64 on the CPU, N = len(rows), in the order of ``rows``.
    """
    mine = np.arange(len(rows))[ctx.rank::ctx.world_size]
    out = {k: torch.zeros(len(rows), *w, dtype=torch.float64) for k, w in widths.items()}
    pos = 0
    with eval_mode(unwrap(ctx.model), *modules):
        for inputs, y in device_batches(ctx, rows[mine], train):
            at = torch.as_tensor(mine[pos:pos + len(y)])
            for k, v in measure(inputs, y).items():
                out[k][at] = v.detach().double().cpu()
            pos += len(y)
    return {k: ctx.all_reduce(v) for k, v in out.items()}


class Balancer(Plugin):
    """Its settings (``balance.args``) are its class's ``Settings`` dataclass (``mmvid train --list NAME``),
    read as ``self.settings``; an unknown key, a wrong type or a value out of range is a one-line error."""

    family = BALANCERS
    min_modalities = 2  # most balancers compare modalities; a lone modality has nothing to balance

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__()
        self.cfg = cfg  # BalanceConfig (name + args)
        self.settings = self.read_settings(cfg)
        self.modalities = list(modalities)

    start: int = 0  # first epoch (0-based) of a method that acts in a window of epochs
    end: int | None = None  # last epoch of that window; None = to the end

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` lies in the method's window [start, end]."""
        return epoch >= self.start and (self.end is None or epoch <= int(self.end))

    @classmethod
    def never_acted(cls, settings, records: list[dict[str, Any]]) -> str | None:
        """A method acting in a window of epochs (``start`` / ``end`` settings) never acted when no logged epoch
        (records: one per epoch, 0-based) lay in that window."""
        start, end = getattr(settings, "start", None), getattr(settings, "end", None)
        if start is None or not records:
            return None
        epochs = [int(r.get("epoch", i)) for i, r in enumerate(records)]
        if any(e >= start and (end is None or e <= int(end)) for e in epochs):
            return None
        return f"its window of epochs [{start}, {'end' if end is None else end}] never opened in {len(records)} epochs"

    def check(self, model_cfg, augment_name: str) -> None:
        """Raise MmvidError when this balancer cannot work with the fusion / augmentation / modalities."""
        if len(self.modalities) < self.min_modalities:
            raise MmvidError(f"balancer {self.cfg.name!r} needs at least {self.min_modalities} modalities, "
                             f"data.modalities has {self.modalities}; add a modality or use --balance none")
        if getattr(self, "score", None) == "split-head":  # scores read from slices of the fused head
            check_split_heads(model_cfg, "score", "split-head", "mask (paper Eq. 5)")

    def setup(self, model: nn.Module, ctx) -> nn.Module | None:
        return None

    def epoch_order(self, order: list[int], ctx) -> list[int]:
        return order

    def on_batch(self, inputs: dict[str, torch.Tensor], y: torch.Tensor, ctx):
        return inputs, y

    def passes(self, ctx) -> list:
        return [None]

    def loss(self, loss: torch.Tensor, out, inputs, y: torch.Tensor, ctx) -> torch.Tensor:
        return loss

    def after_backward(self, model: nn.Module, out, y: torch.Tensor, ctx) -> None:
        pass

    def on_epoch_end(self, ctx) -> None:
        pass

