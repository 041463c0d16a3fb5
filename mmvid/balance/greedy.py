"""Greedy learner re-balancing (Wu et al. 2022), on the ``mmtm`` fusion -- a simplified reconstruction."""

from __future__ import annotations

import math
from typing import Any

import torch

from mmvid.augment.base import EpochMeans
from mmvid.balance.base import Balancer, encoder_parameters, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS


def learning_speed(params: list[torch.nn.Parameter]) -> float:
    """Conditional learning speed of one encoder: log(||grad||^2 / ||theta||^2) over all its parameters."""
    g2 = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
    w2 = sum(float(p.detach().float().pow(2).sum()) for p in params)
    return math.log(max(g2, 1e-30) / max(w2, 1e-30))


@BALANCERS.register("greedy", doc="Greedy: re-balancing steps cut the slower modality's MMTM input (needs --fusion mmtm).")
class GreedyRebalance(Balancer):
    """Greedy: after each step, d = speed_a - speed_v (:func:`learning_speed`, the balanced-learning
    difference); when |d| > ``epsilon`` (0.5) for ``window`` (5) consecutive steps, the next step is a
    re-balancing step in which the slower modality's MMTM excitation sees only its own feature and the
    running means (``momentum`` 0.9) of the others, so it must learn without cross-modal help.
    Needs ``--fusion mmtm`` and exactly two modalities."""

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.epsilon = float(self.args.get("epsilon", 0.5))
        self.window = int(self.args.get("window", 5))
        self.momentum = float(self.args.get("momentum", 0.9))
        self.run = 0
        self.care_next: str | None = None
        self.stats = EpochMeans()

    def check(self, model_cfg, augment_name: str) -> None:
        if model_cfg.fusion != "mmtm" or len(self.modalities) != 2:
            raise MmvidError(f"balancer greedy steers the MMTM cross-modal block of two modalities; use --fusion mmtm "
                             f"with two data.modalities (got fusion {model_cfg.fusion!r}, modalities {self.modalities})")

    def on_epoch_start(self, ctx) -> None:
        self.stats = EpochMeans()

    def on_batch(self, inputs, y, ctx):
        unwrap(ctx.model).fusion.care = self.care_next
        return inputs, y

    @torch.no_grad()
    def after_backward(self, model, out, y, ctx) -> None:
        fusion = unwrap(model).fusion
        rebalanced = fusion.care is not None
        fusion.care = None
        mods = self.modalities
        means = ctx.all_reduce(torch.stack([out.features[m].detach().float().sum(0).cpu() for m in mods]))
        n = float(ctx.all_reduce(torch.tensor(float(len(y)))))
        for i, m in enumerate(mods):
            buf = getattr(fusion, f"running_{m}")
            buf.mul_(self.momentum).add_((1 - self.momentum) * (means[i] / n).to(buf.device))
        speed = {m: learning_speed(encoder_parameters(model, m)) for m in mods}
        d = speed[mods[0]] - speed[mods[1]]
        self.run = self.run + 1 if abs(d) > self.epsilon else 0
        self.care_next = None
        if self.run >= self.window:
            self.care_next = min(speed, key=speed.get)
            self.run = 0
        self.stats.add({"greedy_d": d, "greedy_rebalance": float(rebalanced)})

    def log(self) -> dict[str, Any]:
        return self.stats.means()

    def state_dict(self) -> dict[str, Any]:
        return {"run": self.run, "care_next": self.care_next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run, self.care_next = state["run"], state["care_next"]
