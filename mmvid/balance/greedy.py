"""Greedy learner re-balancing (Wu et al. 2022, "Characterizing and overcoming the greedy nature of
learning in multi-modal deep neural networks"), on the ``mmtm`` fusion.

Reference: nyukat/greedy_multimodal_learning, ``src/callbacks.py`` (``Bias_Mitigation_Strong``, the
"guided" algorithm of ``configs/training_guided.gin``), ``src/balanced_mmtm.py`` and ``train.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, unwrap
from mmvid.balance.mmtm import MMTMFusion
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def speed_groups(model: nn.Module, modalities: list[str]) -> tuple[dict[str, list], dict[str, list]]:
    """Parameters of each modality's MMTM bypass and main branch, as the reference groups them by name:
    bypass_m = every block's shared squeeze layer + its excitation layer for m; main_m = encoder m + head m."""
    net = unwrap(model)
    bypass = {m: net.fusion.bypass_parameters(m) for m in modalities}
    main = {m: list(net.encoders[m].parameters()) + list(net.head.heads[m].parameters()) for m in modalities}
    return bypass, main


def speed_ratio(params: list[nn.Parameter]) -> float:
    """sum ||g||^2 / sum ||theta||^2 over ``params`` (the step's learning speed of one group)."""
    g2 = sum(float(p.grad.detach().float().pow(2).sum()) for p in params if p.grad is not None)
    w2 = sum(float(p.detach().float().pow(2).sum()) for p in params)
    return g2 / max(w2, 1e-30)


@BALANCERS.register("greedy", doc="Greedy: curation steps replace a modality's MMTM excitation by its running average (needs --fusion mmtm).")
class GreedyRebalance(Balancer):
    """Balanced multimodal learning, the reference's guided algorithm:

    * speeds, after each backward of a normal step: M^bypass_m += ||g||^2/||theta||^2 of m's MMTM bypass,
      M^main_m += the same of m's main branch (sums since the start of training, :func:`speed_groups`);
      conditional learning speed BDR_m = log10(M^bypass_m / M^main_m); d = BDR_0 - BDR_1.
    * from epoch ``start_epoch`` (0-based; 1 = the reference's starting_epoch 2, counted from 1) a step
      with |d| > ``epsilon`` (0.01) starts ``window`` (5) curation steps that care for modality 0 when
      d > 0, else modality 1: in every MMTM block that modality's excitation is replaced by its running
      average (:class:`mmvid.balance.mmtm.MMTMBlock`); no speed is measured during curation.
    * ``loss: branches`` (reference): the loss is sum_m CE(head_m(z_m), y) over the per-modality heads
      (``fused``: the augmentation's loss on the averaged logits).
    * ``average: own`` keeps each modality's own running excitation; ``first`` feeds every running
      average with the first modality's excitation, as the reference code does (equal channels needed).

    Needs ``--fusion mmtm`` and exactly two modalities.
    """

    @dataclass
    class Settings:
        epsilon: float = spec(0.01, ge=0.0, le=1000.0, help="imbalance threshold of the conditional learning speeds",
                              ref="greedy_multimodal_learning callbacks.py")
        window: int = spec(5, ge=1, le=1_000_000, help="steps per re-balancing window", ref="greedy_multimodal_learning callbacks.py")
        start_epoch: int = spec(1, ge=0, le=1_000_000, help="first epoch of re-balancing", ref="greedy_multimodal_learning callbacks.py")
        loss: str = spec("branches", choices=("branches", "fused"), help="per-head loss (the reference) or the fused loss",
                         ref="greedy_multimodal_learning (branches)")
        average: str = spec("own", choices=("own", "first"), help="each modality's own running average, or the first's (the reference's shared one)",
                            ref="greedy_multimodal_learning balanced_mmtm.py (first)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.epsilon = self.settings.epsilon
        self.window = self.settings.window
        self.start_epoch = self.settings.start_epoch
        self.loss_mode = self.settings.loss
        self.average = self.settings.average
        self.sums = {"bypass": [0.0, 0.0], "main": [0.0, 0.0]}
        self.unlocked = False
        self.curating = False
        self.curation_step = 0
        self.caring = 0
        self.d: float | None = None

    def check(self, model_cfg, augment_name: str) -> None:
        if model_cfg.fusion != "mmtm" or len(self.modalities) != 2:
            raise MmvidError(f"balancer greedy steers the MMTM cross-modal blocks of two modalities; use --fusion mmtm "
                             f"with two data.modalities (got fusion {model_cfg.fusion!r}, modalities {self.modalities})")

    def setup(self, model, ctx):
        fusion = unwrap(model).fusion
        if not isinstance(fusion, MMTMFusion):  # check() saw the config; a model built otherwise is refused here
            raise MmvidError(f"balancer greedy steers the MMTM fusion; the model's fusion is {type(fusion).__name__}: "
                             f"use --fusion mmtm")
        fusion.average_source = self.average
        return None

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        if ctx.epoch >= self.start_epoch:
            self.unlocked = True

    def on_batch(self, inputs, y, ctx):
        unwrap(ctx.model).fusion.care = self.modalities[self.caring] if self.curating else None
        return inputs, y

    def loss(self, loss, out, inputs, y, ctx):
        if self.loss_mode == "fused":
            return loss
        logits = unwrap(ctx.model).head.modality_logits(out.fused)
        mix = out.mix if out.mix is not None and out.mix.stage == "fused" else None
        return sum(mixed_cross_entropy(logits[m], y, mix or modality_mix(out.mix, m)) for m in self.modalities)

    def speed_difference(self, model) -> float:
        """Add this step's speeds to the running sums; d = BDR_0 - BDR_1 with BDR_m = log10(M^bypass_m / M^main_m)."""
        bypass, main = speed_groups(model, self.modalities)
        for i, m in enumerate(self.modalities):
            self.sums["bypass"][i] += speed_ratio(bypass[m])
            self.sums["main"][i] += speed_ratio(main[m])
        bdr = [math.log10(max(self.sums["bypass"][i], 1e-300) / max(self.sums["main"][i], 1e-300)) for i in range(2)]
        return bdr[0] - bdr[1]

    @torch.no_grad()
    def after_backward(self, model, out, y, ctx) -> None:
        fusion = unwrap(model).fusion
        curated = self.curating
        means = {}
        for p, e in fusion.excitations(out.extras).items():  # each block's batch means, averaged over ranks
            sums = ctx.all_reduce(torch.cat([e[m].detach().float().sum(0).cpu() for m in self.modalities]))
            n = float(ctx.all_reduce(torch.tensor(float(len(y)))))
            means[p] = dict(zip(self.modalities, torch.split(sums / n, [e[m].shape[1] for m in self.modalities])))
        fusion.update_averages(means)
        fusion.care = None
        if self.unlocked and self.curating:
            self.curation_step += 1
            if self.curation_step == self.window:
                self.curating = False
        else:
            self.d = self.speed_difference(model)
            self.curating, self.caring = False, 0
            if self.unlocked and abs(self.d) > self.epsilon:
                self.curating, self.curation_step = True, 0
                self.caring = 1 if self.d < 0 else 0
        # As the reference's batch log: the last measured d (it is not re-measured during curation).
        self.stats.add({"greedy_d": self.d, "greedy_curation": float(curated)})


    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "unlocked": self.unlocked, "curating": self.curating,
                "curation_step": self.curation_step, "caring": self.caring, "d": self.d}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"]
        self.unlocked, self.curating = state["unlocked"], state["curating"]
        self.curation_step, self.caring, self.d = state["curation_step"], state["caring"], state["d"]
