"""Classic input mixup (Zhang et al. 2017) and Multimodal Mixup, MM (paper Sec. 3.2, Eq. 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmvid.augment.base import Augmentation, Mix, beta_sample, random_perm
from mmvid.registry import AUGMENTS
from mmvid.schema import spec


@dataclass
class BetaMixSettings:
    alpha: float = spec(0.2, gt=0.0, le=1000.0, help="lambda ~ Beta(alpha, alpha), drawn once per batch",
                        ref="paper Table 3 (CREMA-D: 0.5, recipes/cremad.yaml)")


@AUGMENTS.register("none")
class NoAugment(Augmentation):
    """Plain training: loss = CE(logits, y)."""


class _BetaMix(Augmentation):
    """lambda ~ Beta(alpha, alpha) once per batch, one permutation pi; partner weight w = 1 - lambda."""

    key = "*"
    Settings = BetaMixSettings

    def sample(self, y: torch.Tensor, ctx) -> Mix | None:
        lam = beta_sample(self.settings.alpha, ctx.generator)
        perm = random_perm(y.shape[0], y.device, ctx.generator)
        return Mix(self.stage, perm, {self.key: 1.0 - lam}, 1.0 - lam)


@AUGMENTS.register("mixup", doc="Input mixup of every modality, same lambda ~ Beta(alpha, alpha) (reference).")
class InputMixup(_BetaMix):
    """Input-level mixup of every modality with the same lambda and pi (a reference baseline):
    x~_m = lambda x_m,i + (1 - lambda) x_m,pi(i); loss = lambda CE(., y_i) + (1 - lambda) CE(., y_pi(i))."""

    stage = "input"
    Settings = BetaMixSettings


@AUGMENTS.register("mm", doc="MM: mixup of the fused feature before the head (Eq. 3).")
class MultimodalMixup(_BetaMix):
    """MM (paper Eq. 3): mix the fused multimodal feature h = fuse(z) just before the head,
    h~ = lambda h_i + (1 - lambda) h_pi(i), lambda ~ Beta(alpha, alpha); the target is mixed alike.
    For decision fusion h is [z_a; z_v], so every z_m is mixed with the same lambda and pi."""

    stage = "fused"
    key = "fused"
    Settings = BetaMixSettings
