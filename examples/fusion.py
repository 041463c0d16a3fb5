"""Attention-weighted sum fusion: each clip weighs its modalities by a learned, input-dependent score.

    mmvid train --recipe demo --plugin examples/fusion.py --fusion attention
    mmvid train --recipe demo --plugin examples/fusion.py --fusion attention --set model.fusion_args.dim=128
    mmvid evaluate RUN --plugin examples/fusion.py

With z_m (B, d_m) the features of modality m:

    u_m = W_m z_m + b_m                       (B, D)   projection to a common width D (``dim``)
    e_m = v^T tanh(u_m) / T                   (B,)     a score per clip and modality, shared v (D,)
    a   = softmax over m of e_m               (B, M)   attention weights, sum_m a_m = 1 for each clip
    h   = sum_m a_m u_m                       (B, D)   the fused feature; logits = W h + b (B, C)

A masked modality (z_m = 0, paper Eq. 5) still takes part through its bias b_m, as it does in concat fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmvid.models.fusions import Fusion
from mmvid.registry import FUSIONS
from mmvid.schema import spec


@FUSIONS.register("attention", doc="Attention-weighted sum of projected features, h = sum_m a_m W_m z_m (example plug-in).")
class AttentionSum(Fusion):
    @dataclass
    class Settings:
        dim: int = spec(64, ge=1, le=8192, help="common width D of the projected features and of h")
        temperature: float = spec(1.0, gt=0.0, le=100.0, help="T: softmax(e / T); larger spreads the weights")

    def __init__(self, dims: dict[str, int], dim: int = 64, temperature: float = 1.0) -> None:
        super().__init__(dims)
        self.output_dim = int(dim)
        self.temperature = float(temperature)
        self.project = nn.ModuleDict({m: nn.Linear(d, self.output_dim) for m, d in dims.items()})
        self.score = nn.Linear(self.output_dim, 1, bias=False)

    def weights(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a (B, M) attention weights in ``self.modalities`` order, u (B, M, D) projected features)."""
        u = torch.stack([self.project[m](feats[m]) for m in self.modalities], dim=1)
        e = self.score(torch.tanh(u)).squeeze(-1) / self.temperature
        return e.softmax(dim=1), u

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        a, u = self.weights(feats)
        return (a.unsqueeze(-1) * u).sum(dim=1)
