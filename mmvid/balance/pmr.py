"""Prototypical Modal Rebalance, PMR (Fan et al., CVPR 2023, "PMR: Prototypical Modal Rebalance for
Multimodal Learning")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, device_batches, modality_scores, unwrap
from mmvid.errors import MmvidError
from mmvid.measures import eval_mode, modality_ratios
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def class_prototypes(feats: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (C, d) and counts (C,): prototype c_k = sums[k] / counts[k] = mean z of class k."""
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, y, feats.double())
    return sums, torch.bincount(y, minlength=num_classes).double()


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, C) = -||z_i - c_k||_2 (Euclidean, not squared; no temperature): the prototypical classifier
    of modality m, as the reference's ``-EU_dist``. Computed directly, not through the matmul expansion
    that ``cdist`` uses for large inputs, so that it matches the reference to float precision."""
    return -torch.cdist(z.float(), protos.float(), compute_mode="donot_use_mm_for_euclid_dist")


def pmr_coefficients(scores: dict[str, float], alpha: float, scale: str = "constant") -> dict[str, float]:
    """Coefficient of L_PCE,m from the prototype scores s_m = sum_i softmax(-d_m)_i[y_i]: with
    rho_m = s_m / mean_{k != m} s_k (two modalities: rho_a = s_a / s_v), 0 unless rho_m < 1; for a weak
    modality ``alpha`` (``scale: constant``, the reference code: beta or lambda = 1 * alpha) or
    alpha * (1 / rho_m - 1) (``scale: ratio``, the paper's beta = alpha * (rho - 1) with rho the
    dominant-over-weak score ratio)."""
    out = {}
    for m, rho in modality_ratios(scores, baseline="others").items():
        out[m] = 0.0 if rho >= 1 else (alpha * (1 / max(rho, 1e-12) - 1) if scale == "ratio" else alpha)
    return out


def prototype_rows(n_rows: int, batch_size: int, fraction: float) -> int:
    """How many training rows build the prototypes: the reference stops after max(1, n_batches // 10)
    batches of the training loader (``fraction`` 0.1 = its 1/10), i.e. that many full batches."""
    n_batches = math.ceil(n_rows / batch_size)
    return min(n_rows, max(1, int(n_batches * fraction + 1e-9)) * batch_size)


@BALANCERS.register("pmr", doc="PMR: prototype cross-entropy for the weak modality (Fan et al. 2023).")
class PrototypicalRebalance(Balancer):
    """PMR (reference: fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py``, ``--modulation Proto``).

    * Prototypes c_m,k = mean z_m of class k, computed in eval mode without gradient before epoch 0 and
      after every epoch (here: at each epoch start) from ``fraction`` (0.1) of the training set, counted
      in batches as :func:`prototype_rows`, through the augmented training pipeline (``proto_augment``,
      as the reference's training loader; false: no augmentation). From epoch 2 on (the reference's
      ``epoch > 0`` after the second pass) c <- (1 - mu) c_new + mu c_old with mu = ``momentum`` (0.2).
    * Per step, prototype logits -||z_m - c_m,k||_2; s_m = sum_i softmax(-d_m)_i[y_i] (summed over
      ranks); loss = L + sum_m beta_m CE(-d_m, y) with beta from :func:`pmr_coefficients` (``alpha`` 1.0,
      ``scale`` constant), during epochs ``start`` (0) to ``end`` (100), both included; plain L outside.
    * The paper's prototypical entropy regulariser (PER) is not in the reference code and not here.
    * A class absent from the sample keeps its previous prototype (zero before the first one); the
      reference divides by a zero count and gets NaN.
    """

    @dataclass
    class Settings:
        alpha: float = spec(1.0, ge=0.0, le=1000.0, help="weight of the prototype losses", ref="Modal-Imbalance-PMR main_Prototype_grad.py")
        scale: str = spec("constant", choices=("constant", "ratio"), help="constant coefficient (reference code) or the imbalance ratio (paper)",
                          ref="PMR code (constant); paper alpha (rho - 1) (ratio)")
        fraction: float = spec(0.1, gt=0.0, le=1.0, help="fraction of the train set that estimates the prototypes",
                               ref="Modal-Imbalance-PMR main_Prototype_grad.py")
        momentum: float = spec(0.2, ge=0.0, le=1.0, help="momentum of the prototype update", ref="Modal-Imbalance-PMR main_Prototype_grad.py")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based)", ref="Modal-Imbalance-PMR main_Prototype_grad.py")
        end: int = spec(100, ge=0, le=1_000_000, help="last epoch (0-based, inclusive)", ref="Modal-Imbalance-PMR main_Prototype_grad.py")
        proto_augment: bool = spec(True, help="prototype-based entropy regularisation", ref="Modal-Imbalance-PMR main_Prototype_grad.py")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.alpha = self.settings.alpha
        self.scale = self.settings.scale
        self.fraction = self.settings.fraction
        self.momentum = self.settings.momentum
        self.start = self.settings.start
        self.end = self.settings.end
        self.proto_augment = self.settings.proto_augment
        if not 0 < self.fraction <= 1:
            raise MmvidError(f"balance.args.fraction={self.fraction} must be in (0, 1]")
        self.protos: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        net = unwrap(ctx.model)
        rows = ctx.splits.train
        n = prototype_rows(len(rows), ctx.cfg.data.batch_size, self.fraction)
        pick = torch.randperm(len(rows), generator=ctx.generator)[:n].numpy()
        sums = {m: 0.0 for m in self.modalities}
        counts = 0.0
        with eval_mode(net):
            for inputs, y in device_batches(ctx, np.sort(rows[pick]), train=self.proto_augment):
                feats = net.encode(inputs)
                for m in self.modalities:
                    s, c = class_prototypes(feats[m], y, ctx.num_classes)
                    sums[m] = sums[m] + s.cpu()
                counts = counts + c.cpu()
        counts = ctx.all_reduce(counts)
        # The reference's passes: before epoch 0 and after epoch 0 fresh, from after epoch 1 on averaged.
        ema = self.protos is not None and ctx.epoch >= 2
        new = {}
        for m in self.modalities:
            mean = ctx.all_reduce(sums[m]) / counts.clamp_min(1)[:, None]
            old = self.protos[m].double().cpu() if self.protos is not None else torch.zeros_like(mean)
            mean = torch.where((counts > 0)[:, None], mean, old)  # a class absent from the sample keeps its old prototype
            new[m] = ((1 - self.momentum) * mean + self.momentum * old if ema else mean).float().to(ctx.device)
        self.protos = new

    def loss(self, loss, out, inputs, y, ctx):
        logits = {m: prototype_logits(out.features[m], self.protos[m].to(out.features[m].device)) for m in self.modalities}
        mixes = {m: modality_mix(out.mix, m) for m in self.modalities}
        scores = modality_scores({m: v.detach() for m, v in logits.items()}, out, y, ctx)
        active = self.start <= ctx.epoch <= self.end  # the reference's modulation_starts..modulation_ends
        coeffs = pmr_coefficients(scores, self.alpha, self.scale) if active else dict.fromkeys(self.modalities, 0.0)
        self.stats.add({f"pmr_coeff_{m}": c for m, c in coeffs.items()})
        extra = [c * mixed_cross_entropy(logits[m], y, mixes[m]) for m, c in coeffs.items() if c > 0]
        return loss + sum(extra) if extra else loss


    def state_dict(self) -> dict[str, Any]:
        return {"protos": {m: p.cpu() for m, p in self.protos.items()} if self.protos else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.protos = state.get("protos")
