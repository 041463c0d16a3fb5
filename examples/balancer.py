"""Score-power balancing: slow down the dominant modality's encoder by a power of its score ratio.

    mmvid train --recipe demo --plugin examples/balancer.py --balance score-power
    mmvid train --recipe demo --plugin examples/balancer.py --balance score-power --set balance.args.gamma=2
    mmvid evaluate RUN --plugin examples/balancer.py

After every backward pass (gradients unscaled, not yet clipped), for each modality m:

    s_m     = sum_i softmax(l_m)_i[y_i]        the batch's score of m alone: l_m (B, C) are the logits with every
                                               other modality masked (paper Eq. 5); summed over ranks
    s~_m   <- momentum * s~_m + (1 - momentum) * s_m          (an exponential average: one batch is noisy)
    rho_m   = s~_m / mean_{k != m} s~_k
    k_m     = min(1, rho_m ** -gamma)                           (1 for every modality that is not ahead)
    g      <- k_m * g   for every gradient g of encoder m

so the modality that is ahead learns more slowly in proportion to how far ahead it is, and the others are
left alone. The per-epoch means of k_m and rho_m go to metrics.jsonl (``power_coeff_<m>``, ``power_rho_<m>``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmvid.balance.base import Balancer, encoder_parameters, modality_scores, unimodal_logits
from mmvid.measures import modality_ratios
from mmvid.registry import BALANCERS
from mmvid.schema import spec


@BALANCERS.register("score-power", doc="Scale the dominant encoder's gradients by min(1, rho^-gamma) (example plug-in).")
class ScorePower(Balancer):
    @dataclass
    class Settings:
        gamma: float = spec(1.0, ge=0.0, le=10.0, help="exponent: k_m = min(1, rho_m^-gamma); 0 turns balancing off")
        momentum: float = spec(0.9, ge=0.0, lt=1.0, help="weight of the past in the running per-modality scores")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.running: dict[str, float] = {}  # s~_m, kept across epochs and resumes

    def after_backward(self, model, out, y, ctx) -> None:
        scores = modality_scores(unimodal_logits(model, out), out, y, ctx)
        mu = self.settings.momentum
        self.running = {m: mu * self.running.get(m, s) + (1 - mu) * s for m, s in scores.items()}
        rho = modality_ratios(self.running, baseline="others")
        coeffs = {m: min(1.0, max(r, 1e-12) ** -self.settings.gamma) for m, r in rho.items()}
        for m, k in coeffs.items():
            if k < 1.0:
                for p in encoder_parameters(model, m):
                    if p.grad is not None:
                        p.grad.mul_(k)
        self.stats.add({**{f"power_coeff_{m}": k for m, k in coeffs.items()},
                        **{f"power_rho_{m}": r for m, r in rho.items()}})  # averaged per epoch by log()

    def state_dict(self) -> dict:
        return {"running": dict(self.running)}

    def load_state_dict(self, state: dict) -> None:
        self.running = dict(state.get("running", {}))
