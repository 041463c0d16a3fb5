"""Gradient-Blending, G-Blend (Wang et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, check_split_heads, device_batches, unwrap
from mmvid.errors import MmvidError
from mmvid.measures import eval_mode
from mmvid.registry import BALANCERS
from mmvid.schema import spec

FUSED = "fused"
HEADS = ("linear", "split")  # linear: an extra Linear per modality (paper); split: the fusion head's part (BalanceBenchmark)
LOSSES = ("mean", "batch_sum")  # per-epoch mean loss (paper); sum of batch-mean losses (BalanceBenchmark)


def gblend_weights(start: dict[str, tuple[float, float]], end: dict[str, tuple[float, float]]) -> dict[str, float]:
    """w_k prop. to |G_k| / O_k^2, normalised to sum 1; per head k, (train loss, val loss) at epochs n and n+N:

        G_k = L_val,k(n) - L_val,k(n+N),   O_k = (L_val,k - L_train,k)(n+N) - (L_val,k - L_train,k)(n).
    """
    raw = {}
    for k in start:
        (t0, v0), (t1, v1) = start[k], end[k]
        g, o = v0 - v1, (v1 - t1) - (v0 - t0)
        raw[k] = abs(g) / max(o * o, 1e-8)
    total = sum(raw.values())
    if total <= 0:
        return {k: 1.0 / len(raw) for k in raw}
    return {k: v / total for k, v in raw.items()}


@BALANCERS.register("gblend", doc="G-Blend: per-modality heads, loss weights from val/train losses per super-epoch.")
class GradientBlending(Balancer):
    """G-Blend: one extra linear head per modality on z_m plus the fused head;
    loss = w_fused L(fused) + sum_m w_m CE(head_m(z_m), y), with the weights re-estimated every
    ``super_epoch`` (N, default 2) epochs from the held-out validation split (never test) by
    :func:`gblend_weights`; train losses are the epoch's running means. Weights start uniform.

    ``heads``: ``linear`` (default) or ``split`` (modality m's part of the fusion head, W_m z_m + b / M, as
    BalanceBenchmark's ``Uni_res``; no extra parameters). ``losses``: ``mean`` (default, per-sample means) or
    ``batch_sum`` (the sum over the epoch's batches of each batch's mean loss, as BalanceBenchmark)."""

    min_modalities = 1
    needs_val_split = True  # its weights are estimated on held-out clips

    @dataclass
    class Settings:
        super_epoch: int = spec(2, ge=1, le=1_000_000, help="epochs between re-estimations of the blending weights",
                                ref="Wang et al. 2020 (no code from the authors)")
        heads: str = spec("linear", choices=HEADS, help="an extra linear head per modality (paper) or the fusion head's part (BalanceBenchmark)",
                          ref="BalanceBenchmark GBlending_trainer.py (split)")
        losses: str = spec("mean", choices=LOSSES, help="per-epoch mean loss (paper) or sum of batch-mean losses (BalanceBenchmark)",
                           ref="BalanceBenchmark GBlending_trainer.py (batch_sum)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.super_epoch = self.settings.super_epoch
        self.head_kind = self.settings.heads
        self.loss_stat = self.settings.losses
        keys = [FUSED, *modalities]
        self.weights = {k: 1.0 / len(keys) for k in keys}
        self.heads: nn.ModuleDict | None = None
        self.anchor: dict[str, Any] | None = None  # {"epoch", "losses"} at the window start n
        self._train = torch.zeros(len(keys), dtype=torch.float64)
        self._count = 0

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if self.head_kind == "split":
            check_split_heads(model_cfg)

    def setup(self, model, ctx) -> nn.Module | None:
        if len(ctx.splits.val) == 0:
            raise MmvidError(f"balancer gblend needs a validation split to estimate its weights, but it is empty "
                             f"(data.val_fraction={ctx.cfg.data.val_fraction} of {len(ctx.splits.train)} train clips); "
                             f"raise data.val_fraction (e.g. --set data.val_fraction=0.2) or use more clips")
        net = unwrap(model)
        if self.head_kind == "split":
            self.split = net.split_head_logits  # refuses fusions without a split head, with one line
            return None
        self.heads = nn.ModuleDict({m: nn.Linear(net.encoders[m].output_dim, ctx.num_classes) for m in self.modalities})
        return self.heads

    def head_logits(self, out) -> dict[str, torch.Tensor]:
        """Modality m's logits (B, C) from the fusion's input features z_m."""
        if self.head_kind == "split":
            return {m: v.float() for m, v in self.split({m: out.features[m] for m in self.modalities}).items()}
        return {m: self.heads[m](out.features[m].float()) for m in self.modalities}

    def head_losses(self, out, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {m: mixed_cross_entropy(logits, y, modality_mix(out.mix, m)) for m, logits in self.head_logits(out).items()}

    def _weight(self, n: int) -> float:
        """What one batch of n samples adds to the count a sum is divided by: n (mean) or 1 (batch_sum)."""
        return float(n) if self.loss_stat == "mean" else 1.0

    def loss(self, loss, out, inputs, y, ctx):
        losses = {FUSED: loss, **self.head_losses(out, y)}
        self._train += torch.tensor([float(v.detach()) for v in losses.values()], dtype=torch.float64) * self._weight(len(y))
        self._count += len(y)
        return sum(self.weights[k] * v for k, v in losses.items())

    @torch.no_grad()
    def _val_losses(self, ctx) -> torch.Tensor:
        net = ctx.model
        sums, n = torch.zeros(len(self.weights), dtype=torch.float64), 0
        with eval_mode(net):
            for inputs, y in device_batches(ctx, ctx.splits.val):
                out = net(inputs)
                losses = [F.cross_entropy(out.logits.float(), y)] + list(self.head_losses(out, y).values())
                sums += torch.tensor([float(v) for v in losses], dtype=torch.float64) * self._weight(len(y))
                n += len(y)
        return torch.cat([sums, torch.tensor([float(n)], dtype=torch.float64)])

    def on_epoch_end(self, ctx) -> None:
        val = ctx.all_reduce(self._val_losses(ctx))
        train = ctx.all_reduce(torch.cat([self._train, torch.tensor([float(self._count)], dtype=torch.float64)]))
        keys = list(self.weights)
        # batch_sum: the sums are not divided (all-reduced over ranks they add every rank's batches)
        tn, vn = (max(float(train[-1]), 1.0), max(float(val[-1]), 1.0)) if self.loss_stat == "mean" else (1.0, 1.0)
        losses = {k: (float(train[i] / tn), float(val[i] / vn)) for i, k in enumerate(keys)}
        self._train.zero_()
        self._count = 0
        if self.anchor is None:
            self.anchor = {"epoch": ctx.epoch, "losses": losses}
        elif ctx.epoch - self.anchor["epoch"] >= self.super_epoch:
            self.weights = gblend_weights(self.anchor["losses"], losses)
            self.anchor = {"epoch": ctx.epoch, "losses": losses}

    def log(self) -> dict[str, Any]:
        return {f"gblend_w_{k}": w for k, w in self.weights.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights, self.anchor = dict(state["weights"]), state["anchor"]
