"""InfoReg (Huang, Wei, Yang and Hu, CVPR 2025, "Adaptive Unimodal Regulation for Balanced Multimodal
Information Acquisition"; arXiv 2503.18595): slow the information-sufficient modality down during the
"prime learning window" with a proximal pull towards its encoder's weights at the start of the epoch.

Reference: GeWu-Lab/InfoReg_CVPR2025 ``main.py`` (``train_epoch``, commit ea7b9d5), the authors' code
(BalanceBenchmark has no InfoReg trainer). The paper's equation numbers could not be checked against our
copy of the text; the equations below are those the reference computes, in the paper's notation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, encoder_parameters, modality_scores, scored_logits, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

SCORES = ("split-head", "mask")
ALPHA = {"audio": 0.95, "video": 0.1}  # main.py: beta = 0.95 exp(gap) for audio, beta2 = 0.1 exp(gap) for visual


def window_ratio(traces: list[float], window: int = 10) -> float:
    """The prime-learning-window statistic k before epoch e from the Fisher traces T_0 .. T_{e-1} of the
    epochs so far, as main.py: the list starts with ``window`` zeros, then

        k = (mean(T[-w:]) - mean(T[-w-1:-1])) / mean(T[-w:])     (w = window = 10)

    i.e. the relative growth of the trace's moving average; k = 1 before any trace (epoch 0). A zero
    average (no gradient at all) gives 0, where the reference divides by zero."""
    if not traces:
        return 1.0
    padded = [0.0] * window + [float(t) for t in traces]
    new = sum(padded[-window:]) / window
    old = sum(padded[-window - 1:-1]) / window
    return (new - old) / new if new > 0 else 0.0


def regulation_coefficients(scores: dict[str, float], alpha: dict[str, float], open_: dict[str, bool]) -> dict[str, float]:
    """beta_m = alpha_m exp(tanh(s_m - max_{k != m} s_k)) for the modality whose batch score s_m is strictly
    the largest, while its window is open; 0 for every other modality (and for all on a tie). Two
    modalities: main.py's ``beta = 0.95 exp(tanh(s_a - s_v))`` if s_a > s_v, else ``beta2 = 0.1 exp(tanh(s_v
    - s_a))`` if s_a < s_v, both 0 on equality or when k <= threshold."""
    out = dict.fromkeys(scores, 0.0)
    for m, s in scores.items():
        gap = s - max(v for k, v in scores.items() if k != m)
        if gap > 0 and open_[m]:
            out[m] = alpha[m] * math.exp(math.tanh(gap))
    return out


def fisher_modules(encoder: nn.Module) -> dict[str, nn.Module]:
    """The layers whose weights enter the Fisher trace: every Conv2d and Linear with a trainable weight
    (main.py's ``isinstance(module, (nn.Conv2d, nn.Linear))``; BatchNorm and biases are left out)."""
    return {n: mod for n, mod in encoder.named_modules()
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.weight.requires_grad}


@BALANCERS.register("inforeg", doc="InfoReg: proximal pull of the leading encoder while its Fisher trace grows (Huang et al. 2025).")
class InfoReg(Balancer):
    """InfoReg as GeWu-Lab/InfoReg_CVPR2025 ``main.py`` trains it (``--modulation Ours``):

    * Loss stage (``uni_loss``, default true): L = CE(f(x), y) + sum_m CE(g_m(z_m), y), g_m the unimodal
      logits (``score: split-head``, the reference: W[:, cols_m] z_m + b / M from the fusion head;
      ``mask``: paper Eq. 5 of mmvid's paper); with mixing, each CE against modality m's (mixed) target.
    * Scores (after backward): s_m = sum_i softmax(g_m(z_m))_i[y_i] over the batch (summed over ranks).
    * Prime learning window: k from :func:`window_ratio` of the per-epoch Fisher traces of the ``trace``
      modality's encoder (default ``audio``, the reference: its one k gates both modalities; ``own``: each
      modality's own trace gates its own regulation); open while k > ``threshold`` (0.05).
    * Regulation (optimisation stage, gradients unscaled and not yet clipped): for every trainable parameter
      w of encoder m, g <- g + beta_m (w - w_0), w_0 = w at the start of the epoch (the reference's
      ``deepcopy(model)`` per epoch), beta_m from :func:`regulation_coefficients` with ``alpha``
      ({audio: 0.95, video: 0.1}, the reference; a number applies to every modality). This is the gradient
      of the proximal term beta_m / 2 ||w - w_0||^2.
    * Fisher trace of epoch e, after the regulation: T_m = sum_layers mean_elements(sum_steps g^2) over
      :func:`fisher_modules` of encoder m (the empirical FIM diagonal, accumulated but not averaged over steps,
      as main.py); appended at the epoch's end.

    Shapes: logits (B, C); features z_m (B, d_m); w, w_0, g any parameter shape. Under DDP the gradients
    are already averaged when the trace and the pull use them, so every rank keeps the same state.
    """

    @dataclass
    class Settings:
        score: str = spec("split-head", choices=SCORES, help="unimodal scores from the head's slices (reference) or masking (Eq. 5)",
                          ref="InfoReg main.py (split-head)")
        uni_loss: bool = spec(True, help="add the unimodal losses", ref="InfoReg main.py")
        window: int = spec(10, ge=1, le=1_000_000, help="epochs of the Fisher-trace window", ref="InfoReg main.py")
        threshold: float = spec(0.05, ge=0.0, le=1000.0, help="relative Fisher-trace change that opens the window",
                                ref="InfoReg main.py")
        trace: str = spec("audio", help="the modality whose Fisher trace opens the window, or own", ref="InfoReg main.py (audio)")
        alpha: float | dict[str, float] = spec(factory=lambda: dict(ALPHA), ge=0.0, le=1000.0,
                                               help="regularisation coefficient, one number or one per modality",
                                               ref="InfoReg main.py beta 0.95 (audio), beta2 0.1 (visual)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.score = self.settings.score
        self.uni_loss = self.settings.uni_loss
        self.window = self.settings.window
        self.threshold = self.settings.threshold
        self.trace = self.settings.trace
        self.alpha = self._alpha(self.settings.alpha)
        if self.window < 1:
            raise MmvidError(f"balance.args.window={self.window} must be a positive number of epochs (reference: 10)")
        self.traces: dict[str, list[float]] = {m: [] for m in self.modalities}
        self.anchor: dict[str, list[torch.Tensor]] = {}
        self.fim: dict[str, dict[str, torch.Tensor]] = {}
        self.k: dict[str, float] = {}
        self.pending: dict[str, Any] | None = None

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if self.trace != "own" and self.trace not in self.modalities:
            raise MmvidError(f"balance.args.trace={self.trace!r} is not one of data.modalities {self.modalities}; "
                             f"name the modality whose Fisher trace opens the window, or use 'own'")

    def _alpha(self, raw) -> dict[str, float]:
        if isinstance(raw, (int, float)):
            return dict.fromkeys(self.modalities, float(raw))
        missing = [m for m in self.modalities if m not in (raw or {})]
        if not isinstance(raw, dict) or missing:
            raise MmvidError(f"balance.args.alpha={raw!r} gives no coefficient for {missing or self.modalities}; "
                             f"give a number or one per modality, e.g. {{audio: 0.95, video: 0.1}}")
        return {m: float(raw[m]) for m in self.modalities}

    def _logits(self, model, out) -> dict[str, torch.Tensor]:
        """m -> (B, C) from the step's ModelOutput, differentiable: the head's slices or masking (Eq. 5)."""
        net = unwrap(model)
        return net.split_head_logits(out.features) if self.score == "split-head" else net.unimodal_logits(out.raw, out.mix)

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        net = unwrap(ctx.model)
        self.pending = None
        self.anchor = {m: [p.detach().clone() for p in encoder_parameters(net, m)] for m in self.modalities}
        self.fim = {m: {n: torch.zeros_like(mod.weight, dtype=torch.float32)
                        for n, mod in fisher_modules(net.encoders[m]).items()} for m in self.modalities}
        self.k = {m: window_ratio(self.traces[m if self.trace == "own" else self.trace], self.window)
                  for m in self.modalities}

    def loss(self, loss, out, inputs, y, ctx):
        if not self.uni_loss:
            return loss
        logits = self._logits(ctx.model, out)
        return loss + sum(mixed_cross_entropy(logits[m], y, modality_mix(out.mix, m)) for m in self.modalities)

    def after_backward(self, model, out, y, ctx) -> None:
        net = unwrap(model)
        if self.pending is not None:
            self._restore(next(net.parameters()).device)
        with torch.no_grad():
            scores = modality_scores(scored_logits(net, out, self.score), out, y, ctx)
            betas = regulation_coefficients(scores, self.alpha, {m: k > self.threshold for m, k in self.k.items()})
            for m, beta in betas.items():
                if beta:
                    for p, p0 in zip(encoder_parameters(net, m), self.anchor[m]):
                        if p.grad is not None:
                            p.grad.add_(p.detach() - p0, alpha=beta)
            for m, acc in self.fim.items():
                layers = fisher_modules(net.encoders[m])
                for n, f in acc.items():
                    g = layers[n].weight.grad
                    if g is not None:
                        f.add_(g.float() ** 2)
        self.stats.add({**{f"inforeg_beta_{m}": b for m, b in betas.items()},
                        **{f"inforeg_s_{m}": s for m, s in scores.items()}})

    def on_epoch_end(self, ctx) -> None:
        for m, acc in self.fim.items():
            self.traces[m].append(float(sum(f.mean() for f in acc.values())) if acc else 0.0)

    def log(self) -> dict[str, Any]:
        rec = super().log()
        rec.update({f"inforeg_k_{m}": float(k) for m, k in self.k.items()})
        rec.update({f"inforeg_trace_{m}": t[-1] for m, t in self.traces.items() if t})
        return rec

    def state_dict(self) -> dict[str, Any]:
        # The anchor and the partial FIM sums let a run resumed inside an epoch continue it exactly.
        return {"traces": {m: list(t) for m, t in self.traces.items()}, "k": dict(self.k),
                "anchor": {m: [p.cpu() for p in ps] for m, ps in self.anchor.items()},
                "fim": {m: {n: f.cpu() for n, f in acc.items()} for m, acc in self.fim.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.traces = {m: [float(v) for v in state.get("traces", {}).get(m, [])] for m in self.modalities}
        self.k = {m: float(v) for m, v in state.get("k", {}).items()}
        self.pending = state  # a half epoch's anchor and FIM sums: moved to the model's device at the next step

    def _restore(self, device: torch.device) -> None:
        state, self.pending = self.pending, None
        self.anchor = {m: [p.to(device) for p in ps] for m, ps in state.get("anchor", {}).items()}
        self.fim = {m: {n: f.to(device) for n, f in acc.items()} for m, acc in state.get("fim", {}).items()}
