"""OGM-GE (Peng et al. 2022): on-the-fly gradient modulation with generalisation enhancement."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmvid.balance.base import Balancer, encoder_parameters, modality_scores, scored_logits
from mmvid.measures import modality_ratios
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def ogm_coefficients(scores: dict[str, float], alpha: float) -> dict[str, float]:
    """k_u = 1 - tanh(alpha * rho_u) if rho_u > 1 else 1, with rho_u = s_u / mean_{k != u} s_k
    (:func:`mmvid.measures.modality_ratios` with ``baseline="others"``; two modalities: rho_v = s_v / s_a, the
    reference code's form)."""
    ratios = modality_ratios(scores, baseline="others")
    return {m: (1 - math.tanh(alpha * r)) if r > 1 else 1.0 for m, r in ratios.items()}


PARAMS = {  # which encoder parameters are modulated: balance.args.params
    "conv": lambda p: p.dim() == 4,  # OGM-GE main.py: len(grad.size()) == 4, the 2-D conv kernels
    "nd": lambda p: p.dim() > 1,  # BalanceBenchmark: every parameter that is not a vector
    "all": lambda p: True,  # mmvid before issue 11: BatchNorm and bias vectors too
}
SCORES = ("mask", "split-head")


@BALANCERS.register("ogm-ge", doc="OGM-GE: scale the strong encoder's gradients by 1 - tanh(alpha rho), plus GE noise.")
class OGMGE(Balancer):
    """OGM-GE (Peng et al. 2022, Eq. 10), as GeWu-Lab/OGM-GE_CVPR2022 main.py does it: per step after
    backward (here: gradients unscaled, not yet clipped) and before the optimizer step, while
    start <= epoch <= end (0-based, both inclusive), for every chosen parameter of encoder u:

        g <- k_u g + N(0, (std(g) + 1e-8)^2)   (GE; std of the unmodulated g)   or   g <- k_u g   (ge: false)

    with k_u from the batch's unimodal scores (:func:`ogm_coefficients`, summed over ranks).
    ``balance.args``: alpha (0.8); start (0); end (50, the reference's default); ge (true: OGM_GE,
    false: OGM); params (``conv``: 4-D conv kernels only, the reference; ``nd``: every parameter with
    more than one dimension, BalanceBenchmark; ``all``); score (``mask``: paper Eq. 5; ``split-head``:
    the reference's slices of the head, :meth:`MultimodalClassifier.split_head_logits`).
    """

    @dataclass
    class Settings:
        alpha: float = spec(0.8, ge=0.0, le=1000.0, help="modulation strength: k_u = 1 - tanh(alpha rho_u)",
                            ref="OGM-GE main.py train_epoch")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based) of modulation", ref="OGM-GE main.py train_epoch")
        end: int | None = spec(50, ge=0, le=1_000_000, help="last epoch (0-based, inclusive); none: to the end",
                               ref="OGM-GE main.py (its default 50)")
        ge: bool = spec(True, help="add the generalisation-enhancement noise (OGM_GE) or not (OGM)",
                        ref="OGM-GE main.py (OGM_GE)")
        params: str = spec("conv", choices=tuple(PARAMS), help="modulated parameters: 4-D conv kernels (reference), every n-D one "
                           "(BalanceBenchmark) or all", ref="OGM-GE main.py (4-D grads: conv); BalanceBenchmark nd")
        score: str = spec("mask", choices=SCORES, help="unimodal scores by masking (paper Eq. 5) or the head's slices (reference code)",
                          ref="OGM-GE main.py (split head); paper Eq. 5 (mask)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.alpha = self.settings.alpha
        self.start = self.settings.start
        self.end = self.settings.end
        self.ge = self.settings.ge
        self.params = self.settings.params
        self.score = self.settings.score
        self.gens: dict[str, torch.Generator] = {}
        self.seed = 0

    def setup(self, model, ctx):
        self.seed = int(ctx.cfg.seed) + 7919  # one seed for every rank: the noise is the same everywhere
        return None

    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.gens:
            self.gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.gens[key]


    def unimodal_logits(self, model, out) -> dict[str, torch.Tensor]:
        return scored_logits(model, out, self.score)

    def modulate(self, grad: torch.Tensor, k: float) -> torch.Tensor:
        """k g (+ GE noise whose std is that of the unmodulated g, as the reference), in place."""
        std = float(grad.std()) + 1e-8 if self.ge and grad.numel() > 1 else 0.0
        grad.mul_(k)
        if std:
            grad.add_(torch.randn(grad.shape, generator=self._gen(grad.device), device=grad.device,
                                  dtype=grad.dtype) * std)
        return grad

    def after_backward(self, model, out, y, ctx) -> None:
        if not self.active(ctx.epoch):
            return
        scores = modality_scores(self.unimodal_logits(model, out), out, y, ctx)
        coeffs = ogm_coefficients(scores, self.alpha)
        chosen = PARAMS[self.params]
        for m, k in coeffs.items():
            for p in encoder_parameters(model, m):
                if p.grad is not None and chosen(p):
                    self.modulate(p.grad, k)
        self.stats.add({**{f"ogm_coeff_{m}": k for m, k in coeffs.items()},
                        **{f"ogm_rho_{m}": r for m, r in modality_ratios(scores, baseline="others").items()}})


    def state_dict(self) -> dict[str, Any]:
        return {"gens": {k: g.get_state() for k, g in self.gens.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, st in state.get("gens", {}).items():
            self._gen(torch.device(k)).set_state(st)
