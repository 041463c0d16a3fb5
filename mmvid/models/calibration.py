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

Under masking (a prediction from a subset of the modalities) only the *present* modalities take part:
an absent modality's feature (zeroed by the caller) passes through uncalibrated, and c_m is the mean
over the present k != m only; a modality present alone is compared with itself, c_m = p_m, as a
model with a single modality is. So a prediction from the present modalities never depends on an
absent one's input (:meth:`mmvid.models.classifier.MultimodalClassifier.masked_features`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmvid.registry import CALIBRATIONS
from mmvid.schema import spec


@CALIBRATIONS.register("prefusion", doc="Pre-fusion calibration (model.calibrate): z'_m = z_m (1 + g_m tanh(u_m)).")
class PreFusionCalibration(nn.Module):
    """``forward(feats) -> (calibrated feats, extras)``; extras hold ``gate_<m>`` (B, 1) per modality."""

    @dataclass
    class Settings:
        hidden: int = spec(64, ge=1, le=65536, help="h, the width of the projections P_m and of both MLPs",
                           ref="mmvid's reconstruction (seed paper 003 gives no width)")

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

    def _calibrate(self, m: str, z: torch.Tensor, p: torch.Tensor, c: torch.Tensor):
        """z'_m (B, d_m) and g_m (B, 1) from z_m (B, d_m), p_m (B, h) and the context c_m (B, h)."""
        cues = torch.cat([p, c, p * c, (p - c).abs()], dim=1)
        g = torch.sigmoid(self.gate[m](cues))
        return z * (1 + g * torch.tanh(self.modulate[m](cues))), g

    def forward(self, feats: dict[str, torch.Tensor], present=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """feats: m -> z_m (B, d_m). ``present``: which modalities take part, ``None`` (all of them), a
        collection of modality names (the same for every sample) or a (M, B) 0/1 or bool tensor in
        ``self.modalities`` order (per sample). Returns (m -> z'_m (B, d_m), ``gate_<m>`` -> g_m (B, 1)
        for each calibrated m); an absent z_m is returned as given, and never enters a context."""
        if isinstance(present, torch.Tensor):
            return self._per_sample(feats, present.bool())
        names = [m for m in self.modalities if present is None or m in present]
        p = {m: self.project[m](feats[m]) for m in names}
        out, extras = {}, {}
        for m in self.modalities:
            if m not in p:
                out[m] = feats[m]  # absent: no calibration, no part in any context
                continue
            others = [p[k] for k in names if k != m]
            # A single modality has no context: compare it with itself (no conflict cue).
            c = torch.stack(others).mean(0) if others else p[m]
            out[m], extras[f"gate_{m}"] = self._calibrate(m, feats[m], p[m], c)
        return out, extras

    def _per_sample(self, feats: dict[str, torch.Tensor], present: torch.Tensor):
        """``forward`` with a (M, B) bool ``present``: c_m,i = mean of p_k,i over the k != m present in
        sample i (p_m,i where none is); z'_m,i = z_m,i where m is absent from sample i."""
        p = {m: self.project[m](feats[m]) for m in self.modalities}
        row = {m: present[i] for i, m in enumerate(self.modalities)}  # m -> (B,) bool
        out, extras = {}, {}
        for m in self.modalities:
            others = [k for k in self.modalities if k != m]
            c = p[m]
            if others:
                w = torch.stack([row[k] for k in others]).to(p[m].dtype)[..., None]  # (K, B, 1)
                n = w.sum(0)  # (B, 1) present partners of each sample
                total = (torch.stack([p[k] for k in others]) * w).sum(0)
                c = torch.where(n > 0, total / n.clamp_min(1), p[m])
            z, g = self._calibrate(m, feats[m], p[m], c)
            out[m] = torch.where(row[m][:, None], z, feats[m])
            extras[f"gate_{m}"] = g
        return out, extras
