"""Interface of the BALANCERS family: one object attached at the named hook points of the one
training loop in :mod:`mmvid.engine`, grouped by the stage they change (as BalanceBenchmark does):

==================  =========================================================================
hook                when / what it may change
==================  =========================================================================
``setup``           once, after the model is built: return extra trainable modules (heads, ...)
``on_epoch_start``  before each epoch (ctx.train_scores holds last epoch's train-set statistics)
``on_batch``        data stage: may return modified (inputs, y)
``loss``            loss stage: given the step's ModelOutput and the augmentation's loss
``after_backward``  optimisation stage: gradients are unscaled (after ``scaler.unscale_``) and not
                    yet clipped; may rescale gradients or learning rates
``on_epoch_end``    after the epoch's evaluation; may update statistics
==================  =========================================================================
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Balancer:
    needs_train_scores = False

    def __init__(self, cfg, modalities: list[str]) -> None:
        self.cfg = cfg  # BalanceConfig (name + args)
        self.args = dict(cfg.args)
        self.modalities = list(modalities)

    def check(self, model_cfg, augment_name: str) -> None:
        """Raise MmvidError when this balancer cannot work with the fusion / augmentation."""

    def setup(self, model: nn.Module, ctx) -> nn.Module | None:
        return None

    def on_epoch_start(self, ctx) -> None:
        pass

    def on_batch(self, inputs: dict[str, torch.Tensor], y: torch.Tensor, ctx):
        return inputs, y

    def loss(self, loss: torch.Tensor, out, inputs, y: torch.Tensor, ctx) -> torch.Tensor:
        return loss

    def after_backward(self, model: nn.Module, out, y: torch.Tensor, ctx) -> None:
        pass

    def on_epoch_end(self, ctx) -> None:
        pass

    def log(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
