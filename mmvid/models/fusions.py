"""Fusion strategies (paper Table 1). Every fusion takes ``dict[str, Tensor]`` of (B, d_m) features
in a fixed modality order and returns the fused feature h (B, output_dim); ``make_head`` gives the
classifier on h (a Linear, except decision fusion whose head is one Linear per modality).
"""

from __future__ import annotations

import torch
from torch import nn

from mmvid.registry import FUSIONS


class Fusion(nn.Module):
    """Interface: ``forward(feats) -> (B, output_dim)``; ``make_head(num_classes) -> nn.Module``."""

    output_dim: int

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)

    def make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.output_dim, num_classes)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """h = [z_a; z_v; ...] (B, sum d_m); logits = W h + b (paper Table 1, Concat)."""

    def __init__(self, dims: dict[str, int], **_) -> None:
        super().__init__(dims)
        self.output_dim = sum(dims.values())

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([feats[m] for m in self.modalities], dim=1)
