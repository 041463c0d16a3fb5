"""Prototypical Modal Rebalance, PMR (Fan et al. 2023)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmvid.augment.base import EpochMeans, mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, modality_scores, unwrap
from mmvid.registry import BALANCERS


def class_prototypes(feats: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (C, d) and counts (C,): prototype c_k = sums[k] / counts[k] = mean z of class k."""
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, y, feats.double())
    return sums, torch.bincount(y, minlength=num_classes).double()


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, C) = -||z_i - c_k||_2: the prototypical classifier of modality m."""
    return -torch.cdist(z.float(), protos.float())


def pmr_coefficients(scores: dict[str, float], alpha: float, scale: str = "ratio") -> dict[str, float]:
    """Coefficient of L_PCE,m: 0 for the strong modalities; for a weak one (rho_m < 1, rho_m = s_m / mean_k s_k
    of the prototype scores) alpha * (1 / rho_m - 1) (``scale: ratio``, scaled by the imbalance) or alpha
    (``scale: constant``, as the reference code)."""
    mean = sum(scores.values()) / len(scores)
    out = {}
    for m, s in scores.items():
        rho = s / max(mean, 1e-12)
        out[m] = 0.0 if rho >= 1 else (alpha * (1 / max(rho, 1e-12) - 1) if scale == "ratio" else alpha)
    return out


@BALANCERS.register("pmr", doc="PMR: prototype cross-entropy for the weak modality, scaled by the imbalance.")
class PrototypicalRebalance(Balancer):
    """PMR: class prototypes c_m,k (mean z_m of class k) recomputed at each epoch start from ``fraction``
    (0.2) of the training set (EMA ``momentum``, default 0); L_PCE,m = CE(-||z_m - C_m||, y); per step
    rho from the prototype scores sum_i softmax(-d_m)_i[y_i] (summed over ranks);
    loss = L + sum_m beta_m L_PCE,m with beta from :func:`pmr_coefficients` (``alpha`` 1.0, ``scale``).
    The paper's optional entropy regulariser is not included."""

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.alpha = float(self.args.get("alpha", 1.0))
        self.scale = str(self.args.get("scale", "ratio"))
        self.fraction = float(self.args.get("fraction", 0.2))
        self.momentum = float(self.args.get("momentum", 0.0))
        self.protos: dict[str, torch.Tensor] | None = None
        self.stats = EpochMeans()

    @torch.no_grad()
    def on_epoch_start(self, ctx) -> None:
        from mmvid.engine import to_device

        self.stats = EpochMeans()
        net = unwrap(ctx.model)
        rows = ctx.splits.train
        n = max(1, int(round(self.fraction * len(rows))))
        pick = torch.randperm(len(rows), generator=ctx.generator)[:n].numpy()
        was = net.training
        net.eval()
        sums = {m: 0.0 for m in self.modalities}
        counts = 0.0
        for inputs, y in ctx.loader(np.sort(rows[pick])):
            inputs, y = to_device(inputs, ctx.device), y.to(ctx.device)
            feats = net.encode(inputs)
            for m in self.modalities:
                s, c = class_prototypes(feats[m], y, ctx.num_classes)
                sums[m] = sums[m] + s.cpu()
            counts = counts + c.cpu()
        net.train(was)
        counts = ctx.all_reduce(counts)
        new = {}
        for m in self.modalities:
            mean = ctx.all_reduce(sums[m]) / counts.clamp_min(1)[:, None]
            old = self.protos[m].double() if self.protos is not None else mean
            seen = (counts > 0)[:, None]  # a class absent from the sample keeps its old prototype
            mean = torch.where(seen, mean, old)
            new[m] = (self.momentum * old + (1 - self.momentum) * mean).float().to(ctx.device)
        self.protos = new

    def loss(self, loss, out, inputs, y, ctx):
        logits = {m: prototype_logits(out.features[m], self.protos[m].to(out.features[m].device)) for m in self.modalities}
        mixes = {m: modality_mix(out.mix, m) for m in self.modalities}
        scores = modality_scores({m: v.detach() for m, v in logits.items()}, out, y, ctx)
        coeffs = pmr_coefficients(scores, self.alpha, self.scale)
        self.stats.add({f"pmr_coeff_{m}": c for m, c in coeffs.items()})
        extra = [c * mixed_cross_entropy(logits[m], y, mixes[m]) for m, c in coeffs.items() if c > 0]
        return loss + sum(extra) if extra else loss

    def log(self) -> dict[str, Any]:
        return self.stats.means()

    def state_dict(self) -> dict[str, Any]:
        return {"protos": {m: p.cpu() for m, p in self.protos.items()} if self.protos else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.protos = state.get("protos")
