"""ATF, adaptive tracking factor (Sun, Mai, Hu 2021) -- a reconstruction, as METHODS.md recommends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, encoder_parameters, unimodal_logits
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def atf_lr_ratios(losses: dict[str, float], gamma: float) -> dict[str, float]:
    """lr_m / base_lr = (l_m / mean_k l_k)^gamma: the modality with the lower loss (learning faster) is slowed."""
    mean = sum(losses.values()) / len(losses)
    return {m: (v / max(mean, 1e-12)) ** gamma for m, v in losses.items()}


@BALANCERS.register("atf", doc="ATF (reconstructed): encoder lr follows its unimodal loss, (l_m / mean l)^gamma.")
class AdaptiveTrackingFactor(Balancer):
    """ATF (reconstructed): every step, EMAs l_m (``momentum`` 0.9) of the unimodal CE losses (Eq. 5 masking,
    summed over ranks) set encoder m's learning rate to base_lr * (l_m / mean_k l_k)^gamma (``gamma`` 1.0),
    base_lr being the scheduled rate of the rest of the model. Each encoder gets its own param group."""

    @dataclass
    class Settings:
        gamma: float = spec(1.0, ge=0.0, le=1000.0, help="strength of the learning-rate rebalancing", ref="no public code (METHODS.md reconstruction)")
        momentum: float = spec(0.9, ge=0.0, le=1.0, help="momentum of the running per-modality statistics", ref="no public code (METHODS.md reconstruction)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.gamma = self.settings.gamma
        self.momentum = self.settings.momentum
        self.ema: dict[str, float] | None = None
        self.groups: dict[str, int] = {}

    def setup(self, model, ctx):
        """Move each encoder's parameters into a param group of its own (before any step: no state to move)."""
        opt = ctx.optimizer
        mine = {m: encoder_parameters(model, m) for m in self.modalities}
        ids = {id(p) for ps in mine.values() for p in ps}
        opt.param_groups[0]["params"] = [p for p in opt.param_groups[0]["params"] if id(p) not in ids]
        for m, ps in mine.items():
            self.groups[m] = len(opt.param_groups)
            opt.add_param_group({"params": ps, "lr": opt.param_groups[0]["lr"]})
        return None


    def after_backward(self, model, out, y, ctx) -> None:
        logits = unimodal_logits(model, out)
        local = torch.stack([mixed_cross_entropy(logits[m], y, modality_mix(out.mix, m)).detach().cpu().double() * len(y)
                             for m in self.modalities] + [torch.tensor(float(len(y)), dtype=torch.float64)])
        tot = ctx.all_reduce(local)
        now = {m: float(tot[i] / tot[-1]) for i, m in enumerate(self.modalities)}
        self.ema = now if self.ema is None else {m: self.momentum * self.ema[m] + (1 - self.momentum) * now[m] for m in now}
        ratios = atf_lr_ratios(self.ema, self.gamma)
        base = ctx.optimizer.param_groups[0]["lr"]
        for m, r in ratios.items():
            ctx.optimizer.param_groups[self.groups[m]]["lr"] = base * r
        self.stats.add({f"atf_lr_ratio_{m}": r for m, r in ratios.items()})


    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = state.get("ema")
