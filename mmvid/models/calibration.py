"""Pre-fusion calibration (seed paper 003, reconstructed from its abstract as METHODS.md recommends).

Each modality's summary is compared with the multimodal context before fusion; support/conflict cues
become an instance-wise gate and a dimension-wise modulation of the *original* modality feature:

    p_m = P_m z_m                         (B, h)    projected summary of modality m
    c_m = mean_{k != m} p_k               (B, h)    context from the other modalities
    q_m = [p_m, c_m, p_m * c_m, |p_m - c_m|]        support / conflict cues (B, 4h)
    g_m = sigmoid(MLP_g(q_m))             (B, 1)    instance-wise gate
    u_m = MLP_u(q_m)                      (B, d_m)  dimension-wise modulation
    z'_m = z_m * (1 + g_m * tanh(u_m))    (B, d_m)

The last layer of MLP_u starts at zero, so the module is the identity at initialisation and the
unchanged fusion and head see the plain features until calibration has learned something.
"""

from __future__ import annotations

import torch
from torch import nn


class PreFusionCalibration(nn.Module):
    """``forward(feats) -> (calibrated feats, extras)``; extras hold ``gate_<m>`` (B, 1) per modality."""

    def __init__(self, dims: dict[str, int], hidden: int = 64) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
                                   for m in dims})
        self.modulate = nn.ModuleDict({m: nn.Sequential(nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, d))
                                       for m, d in dims.items()})
        for m in dims:
            nn.init.zeros_(self.modulate[m][-1].weight)
            nn.init.zeros_(self.modulate[m][-1].bias)

    def forward(self, feats: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        p = {m: self.project[m](feats[m]) for m in self.modalities}
        out, extras = {}, {}
        for m in self.modalities:
            others = [p[k] for k in self.modalities if k != m]
            # A single modality has no context: compare it with itself (no conflict cue).
            c = torch.stack(others).mean(0) if others else p[m]
            cues = torch.cat([p[m], c, p[m] * c, (p[m] - c).abs()], dim=1)
            g = torch.sigmoid(self.gate[m](cues))
            out[m] = feats[m] * (1 + g * torch.tanh(self.modulate[m](cues)))
            extras[f"gate_{m}"] = g
        return out, extras
