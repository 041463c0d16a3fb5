"""AGM, adaptive gradient modulation (Li et al., ICCV 2023, "Boosting Multi-modal Model Performance with
Adaptive Gradient Modulation").

Reference: lihong2303/AGM_ICCV2023 (HEAD 5a65542), ``run/CREMAD_main.py`` (``train``) and
``model/CREMAD_net.py`` (``GradMod``); three modalities as ``run/MOSEI_main.py`` and BalanceBenchmark's
``GradMod`` (GeWu-Lab/BalanceBenchmark ``balancemm/trainer/AGM_trainer.py``, HEAD 4c1482f).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmvid.augment.base import modality_mix, target_probability
from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.measures import coalitions, eval_mode, shapley_matrix
from mmvid.registry import BALANCERS
from mmvid.schema import spec

NLL_FLOOR = 1e-8  # the reference scores a true-class probability below 1e-8 as -log(1e-8)


def agm_coefficients(scores: dict[str, float], running: dict[str, float], alpha: float,
                     cap: float = 10.0) -> dict[str, float]:
    """k_m = exp(alpha * min(eta_m - r_m, cap)) (paper Eqs. 8-10, as the reference codes them), with
    r_m = exp(M/(M-1) (mean_k s_k - s_m)) from this batch's mono-modal losses s_m and
    eta_m = exp(M/(M-1) (mean_k s^_k - s^_m)) from their running means s^ (two modalities:
    r_a = exp(s_v - s_a), eta_a = exp(s^_v - s^_a))."""
    n = len(scores)
    f = n / (n - 1)
    mean_s, mean_r = sum(scores.values()) / n, sum(running.values()) / n
    return {m: math.exp(alpha * min(math.exp(f * (mean_r - running[m])) - math.exp(f * (mean_s - scores[m])), cap))
            for m in scores}


def coalition_gradient_weights(coeffs: dict[str, float], modalities: list[str]) -> dict[tuple[str, ...], float]:
    """c_S = sum_m k_m a[m][S]: the factor on dL/dlogits that reaches f(S) when the output is
    sum_m phi_m with phi_m's gradient scaled by k_m (the reference's backward hooks on ``m_a_o`` and
    ``m_v_o``). Two modalities: c_all = (k_a + k_v) / 2, c_{a} = (k_a - k_v) / 2, c_{v} = (k_v - k_a) / 2;
    all k = 1 gives c_all = 1 and every other c_S = 0 (plain training)."""
    a = shapley_matrix(modalities)
    return {s: sum(coeffs[m] * a[m][s] for m in modalities) for s in coalitions(modalities)}


@BALANCERS.register("agm", doc="AGM: Shapley mono-modal responses; scale each modality's gradient by exp(alpha (eta - r)).")
class AdaptiveGradientModulation(Balancer):
    """AGM (reference: lihong2303/AGM_ICCV2023 ``run/CREMAD_main.py`` + ``model/CREMAD_net.py``).

    Per step (``loss`` hook; shapes: logits (B, C), M modalities):

    * f(S) (B, C): the model's logits with every modality outside S zeroed. f(all) is the step's training
      forward; the others are extra forwards in eval mode *with* gradient (``pad: input``, the reference's
      ``pad_audio``/``pad_visual``: zero input tensors, BatchNorm on running statistics), or the head on
      the step's features with the others' features zeroed (``pad: feature``, paper Eq. 5's masking, cheaper).
    * phi_m = sum_S a[m][S] f(S) (:func:`mmvid.measures.shapley_matrix`, Eq. 4); s_m = mean_i -log p(phi_m)_i[y_i]
      (below 1e-8 counted as 1e-8; summed over ranks), the mono-modal loss.
    * k_m from :func:`agm_coefficients` (Eqs. 8-10) with the running means s^ *before* this batch; then
      s^_m <- s^_m (t-1)/t + s_m / t with t the step count since the start of training (every step).
    * Gradient: the reference returns sum_m phi_m (= f(all)) and scales dL/dphi_m by k_m in a backward
      hook; here the same gradient reaches each f(S) as c_S dL/dlogits (:func:`coalition_gradient_weights`):
      a hook on the logits scales them by c_all, and a zero-valued surrogate term carries c_S dL/dlogits
      into each f(S). The loss value is unchanged.
    * While ``start`` <= epoch <= ``end`` (0-based; the reference's 1-based ``modulation_starts`` 0 ..
      ``modulation_ends`` 20 are epochs 0-19 here) the coefficients are the step's; outside, the reference's
      hooks keep the last coefficients set (``hold: true``, 1 before the first) or, ``hold: false``, 1.
    * ``after_backward``: when a head weight gradient leaves [-``clip``, ``clip``] (the reference's check on
      ``fc_out.weight``), every model gradient is clipped to total norm ``clip`` (1.0; 0: off).

    ``balance.args``: alpha (1.0), cap (10: the reference's ``min(eta - r, 10)``; BalanceBenchmark 7),
    start (0), end (19), hold (true), clip (1.0; BalanceBenchmark 5.0), pad (input | feature).
    """

    @dataclass
    class Settings:
        alpha: float = spec(1.0, ge=0.0, le=1000.0, help="strength of the gradient-magnitude modulation",
                            ref="AGM run/CREMAD_main.py")
        cap: float = spec(10.0, gt=0.0, le=1e6, help="upper bound of each modality's coefficient",
                          ref="AGM run/CREMAD_main.py (BalanceBenchmark: 7)")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based) of modulation", ref="AGM run/CREMAD_main.py")
        end: int | None = spec(19, ge=0, le=1_000_000, help="last epoch (0-based, inclusive) of modulation; none: to the end",
                               ref="AGM run/CREMAD_main.py (BalanceBenchmark: none)")
        hold: bool = spec(True, help="keep the last coefficients outside the window (true) or reset them to 1",
                          ref="AGM run/CREMAD_main.py")
        clip: float = spec(1.0, gt=0.0, le=1e9, help="gradient-norm clip of the reference's step", ref="AGM run/CREMAD_main.py (BalanceBenchmark: 5)")
        pad: str = spec("input", choices=("input", "feature"), help="absent modalities zeroed at the input (reference) or the feature",
                        ref="AGM model/CREMAD_net.py (input)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.alpha = self.settings.alpha
        self.cap = self.settings.cap
        self.start = self.settings.start
        self.end = self.settings.end
        self.hold = self.settings.hold
        self.clip = self.settings.clip
        self.pad = self.settings.pad
        if self.clip < 0:
            raise MmvidError(f"balance.args.clip={self.clip} must be >= 0 (0 turns the reference's clipping off)")
        self.running = dict.fromkeys(self.modalities, 0.0)  # s^_m, the running mean of the mono-modal losses
        self.iteration = 0
        self.coeffs = dict.fromkeys(self.modalities, 1.0)  # what the reference's hooks hold


    def coalition_logits(self, net, out, inputs, subset: tuple[str, ...]) -> torch.Tensor:
        """f(S) (B, C), differentiable: modalities outside ``subset`` zeroed at the input or the feature."""
        if self.pad == "feature":
            return net.masked_logits(out.raw, subset, out.mix)
        padded = {m: (x if m in subset else torch.zeros_like(x)) for m, x in inputs.items()}
        with eval_mode(net):  # the reference pads in eval mode: BatchNorm on running statistics, no dropout
            return net(padded, mix=out.mix).logits

    def mono_losses(self, phi: dict[str, torch.Tensor], out, y, ctx) -> dict[str, float]:
        """s_m = mean over the batch (all ranks) of -log p(phi_m)[y~], floored at 1e-8."""
        local = []
        for m in self.modalities:
            p = target_probability(phi[m], y, modality_mix(out.mix, m)).double()
            nll = -torch.log(p.clamp_min(NLL_FLOOR))
            local.append(nll.sum().cpu())
        vec = ctx.all_reduce(torch.stack(local + [torch.tensor(float(len(y)), dtype=torch.float64)]))
        n = float(vec[-1])
        return {m: float(vec[i]) / n for i, m in enumerate(self.modalities)}

    def loss(self, loss, out, inputs, y, ctx):
        net = unwrap(ctx.model)
        subsets = coalitions(self.modalities)
        full = subsets[-1]
        f = {s: (out.logits if s == full else self.coalition_logits(net, out, inputs, s)) for s in subsets}
        a = shapley_matrix(self.modalities)
        with torch.no_grad():
            phi = {m: sum(a[m][s] * f[s].detach().float() for s in subsets) for m in self.modalities}
        scores = self.mono_losses(phi, out, y, ctx)
        coeffs = agm_coefficients(scores, self.running, self.alpha, self.cap)
        self.iteration += 1
        t = self.iteration
        self.running = {m: self.running[m] * (t - 1) / t + scores[m] / t for m in self.modalities}
        if self.active(ctx.epoch):
            self.coeffs = coeffs
        elif not self.hold:
            self.coeffs = dict.fromkeys(self.modalities, 1.0)
        self.stats.add({**{f"agm_coeff_{m}": k for m, k in self.coeffs.items()},
                        **{f"agm_mono_loss_{m}": s for m, s in scores.items()}})
        return self.modulate(loss, out.logits, f, full)

    def modulate(self, loss, logits, f, full):
        """The loss whose gradient is the reference's: c_all on the logits' path, c_S dL/dlogits into f(S)."""
        if all(k == 1.0 for k in self.coeffs.values()):
            return loss  # c_all = 1, every other c_S = 0: plain back-propagation
        if not logits.requires_grad:
            return loss
        (g,) = torch.autograd.grad(loss, logits, retain_graph=True, allow_unused=True)
        if g is None:
            return loss
        c = coalition_gradient_weights(self.coeffs, self.modalities)
        logits.register_hook(lambda grad: grad * c[full])
        surrogate = sum((f[s].float() * (c[s] * g.float()).detach()).sum() for s in f if s != full)
        return loss + (surrogate - surrogate.detach())

    @torch.no_grad()
    def after_backward(self, model, out, y, ctx) -> None:
        if not self.clip:
            return
        head = [p.grad for p in unwrap(model).head.parameters() if p.grad is not None and p.dim() > 1]
        if head and (max(float(g.max()) for g in head) > self.clip or min(float(g.min()) for g in head) < -self.clip):
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=self.clip)


    def state_dict(self) -> dict[str, Any]:
        return {"running": dict(self.running), "iteration": self.iteration, "coeffs": dict(self.coeffs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running = {m: float(v) for m, v in state.get("running", self.running).items()}
        self.iteration = int(state.get("iteration", self.iteration))
        self.coeffs = {m: float(v) for m, v in state.get("coeffs", self.coeffs).items()}
