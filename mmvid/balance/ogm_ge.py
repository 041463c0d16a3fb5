"""OGM-GE (Peng et al. 2022): on-the-fly gradient modulation with generalisation enhancement."""

from __future__ import annotations

import math
from typing import Any

import torch

from mmvid.augment.base import EpochMeans
from mmvid.balance.base import Balancer, encoder_parameters, modality_scores, relative_to_others, unimodal_logits
from mmvid.registry import BALANCERS


def ogm_coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    """k_u = 1 - tanh(alpha * rho_u) if rho_u > 1 else 1, with rho_u = s_u / mean_{k != u} s_k
    (two modalities: rho_v = s_v / s_a, the reference code's form)."""
    return {m: (1 - math.tanh(alpha * r)) if r > 1 else 1.0 for m, r in relative_to_others(scores).items()}


@BALANCERS.register("ogm-ge", doc="OGM-GE: scale the strong encoder's gradients by 1 - tanh(alpha rho), plus GE noise.")
class OGMGE(Balancer):
    """OGM-GE, per step after backward (gradients unscaled, not yet clipped), for every parameter of
    encoder u: g <- k_u g (+ N(0, std(g)^2) with GE), k_u from the batch's unimodal scores (Eq. 5 masking,
    summed over ranks). ``balance.args``: alpha (0.8), start (0), end (last epoch), ge (true)."""

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.alpha = float(self.args.get("alpha", 0.8))
        self.start = int(self.args.get("start", 0))
        self.end = self.args.get("end")
        self.ge = bool(self.args.get("ge", True))
        self.gens: dict[str, torch.Generator] = {}
        self.seed = 0
        self.stats = EpochMeans()

    def setup(self, model, ctx):
        self.seed = int(ctx.cfg.seed) + 7919  # one seed for every rank: the noise is the same everywhere
        return None

    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.gens:
            self.gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.gens[key]

    def active(self, epoch: int) -> bool:
        return epoch >= self.start and (self.end is None or epoch <= int(self.end))

    def on_epoch_start(self, ctx) -> None:
        self.stats = EpochMeans()

    def after_backward(self, model, out, y, ctx) -> None:
        if not self.active(ctx.epoch):
            return
        scores = modality_scores(unimodal_logits(model, out), out, y, ctx)
        coeffs = ogm_coefficients(scores, self.alpha)
        for m, k in coeffs.items():
            for p in encoder_parameters(model, m):
                if p.grad is None:
                    continue
                p.grad.mul_(k)
                if self.ge and p.grad.numel() > 1:
                    std = float(p.grad.std())
                    p.grad.add_(torch.randn(p.grad.shape, generator=self._gen(p.grad.device), device=p.grad.device,
                                            dtype=p.grad.dtype) * std)
        self.stats.add({**{f"ogm_coeff_{m}": k for m, k in coeffs.items()},
                        **{f"ogm_rho_{m}": r for m, r in relative_to_others(scores).items()}})

    def log(self) -> dict[str, Any]:
        return self.stats.means()

    def state_dict(self) -> dict[str, Any]:
        return {"gens": {k: g.get_state() for k, g in self.gens.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, st in state.get("gens", {}).items():
            self._gen(torch.device(k)).set_state(st)
