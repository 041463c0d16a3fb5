"""MMPareto (Wei & Hu, ICML 2024, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, check_split_heads, encoder_parameters, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

HEADS = ("linear", "split")  # linear: head_audio / head_video of the reference; split: BalanceBenchmark's Uni_res
GRADS = ("separate", "accumulated")  # separate: the reference; accumulated: BalanceBenchmark's trainer


def min_norm_2(v11: float, v12: float, v22: float) -> float:
    """Weight c of x_1 in min_c ||c x_1 + (1 - c) x_2||^2, 0 <= c <= 1 (MGDA's two-task solver, as the
    reference's ``MinNormSolver._min_norm_element_from2``): from <x1,x1>, <x1,x2>, <x2,x2>; its end points
    are 0.999 and 0.001, not 1 and 0."""
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return (v22 - v12) / (v11 + v22 - 2 * v12)


def pareto_weights(g_mm: torch.Tensor, g_uni: torch.Tensor) -> tuple[float, float, bool]:
    """(alpha_mm, alpha_uni, conflict) for one encoder's flattened gradients (P,) of the multimodal and the
    unimodal loss: 1/2 each when cos(g_mm, g_uni) > 0, else the min-norm point of their convex hull."""
    dot = float(torch.dot(g_mm.double(), g_uni.double()))
    if dot > 0:  # the sign of the reference's cosine
        return 0.5, 0.5, False
    c = min_norm_2(float(g_mm.double().square().sum()), dot, float(g_uni.double().square().sum()))
    return c, 1 - c, True


def combine(g_mm: torch.Tensor, g_uni: torch.Tensor, total: torch.Tensor, a_mm: float, a_uni: float,
            gamma: float) -> torch.Tensor:
    """One parameter tensor's final gradient: h = 2 (alpha_mm g_mm + alpha_uni g_uni), raised to the norm of
    the plain gradient of the summed losses G when ||G|| > ||h|| (never shrunk), times ``gamma``. A zero h
    stays zero (the reference divides by its zero norm and writes NaN)."""
    h = 2 * a_mm * g_mm + 2 * a_uni * g_uni
    n_h, n_g = torch.linalg.vector_norm(h), torch.linalg.vector_norm(total)
    ratio = torch.where((n_h > 0) & (n_g > n_h), n_g / n_h.clamp_min(torch.finfo(h.dtype).tiny), torch.ones_like(n_h))
    return h * ratio * gamma


@BALANCERS.register("mmpareto", doc="MMPareto: per encoder, Pareto (min-norm) integration of the multimodal and unimodal-loss gradients (Wei & Hu 2024).")
class MMPareto(Balancer):
    """MMPareto (reference: GeWu-Lab/MMPareto_ICML2024 ``code/MMPareto.py`` ``train_epoch`` with
    ``code/min_norm_solvers.py``; BalanceBenchmark ``balancemm/trainer/MMPareto_trainer.py`` as options).

    Losses (paper Sec. 3): L = L_mm + sum_m L_m, L_m = CE(h_m(z_m), y) with one unimodal head h_m per
    modality (``heads: linear``, nn.Linear(d_m, C), the reference's ``head_audio`` / ``head_video``; ``split``:
    modality m's columns of the fusion head plus b / M, BalanceBenchmark's ``Uni_res``). Heads and fusion get
    the plain gradient of L. For each modality's encoder parameters theta_m (paper Algorithm 1):

    * g_mm = dL_mm/dtheta_m, g_m = dL_m/dtheta_m (``torch.autograd.grad`` in the loss stage, on the scaled loss
      under fp16, averaged over ranks);
    * cos(g_mm, g_m) > 0 (over all of theta_m): alpha = (1/2, 1/2); else alpha = argmin_{a in simplex}
      ||a_1 g_mm + a_2 g_m||^2 (MGDA, :func:`min_norm_2`);
    * per parameter tensor p: h_p = 2 (alpha_1 g_mm,p + alpha_2 g_m,p); grad_p = gamma * h_p * max(1,
      ||G_p|| / ||h_p||), G_p = dL/dp the plain gradient (``gamma`` 1.5, the reference's magnitude boost).

    ``grads: accumulated`` is BalanceBenchmark's trainer, which reads both per-loss gradients from ``.grad``
    after every loss has been back-propagated into it: both equal G, so cos = 1 and grad_p = 2 gamma G_p.
    Shapes: z_m (B, d_m), logits (B, C), g_* flattened (P_m,) over theta_m.
    """

    @dataclass
    class Settings:
        gamma: float = spec(1.5, ge=0.0, le=1000.0, help="magnitude rescaling of the Pareto direction", ref="MMPareto code/MMPareto.py (1.5)")
        heads: str = spec("linear", choices=HEADS, help="unimodal heads head_audio/head_video (reference) or the split fusion head",
                          ref="MMPareto code/MMPareto.py (linear); BalanceBenchmark split")
        grads: str = spec("separate", choices=GRADS, help="gradients computed separately (reference) or accumulated (BalanceBenchmark)",
                          ref="MMPareto code/MMPareto.py (separate); BalanceBenchmark accumulated")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.gamma = self.settings.gamma
        self.head_kind = self.settings.heads
        self.grad_kind = self.settings.grads
        if not self.gamma > 0:
            raise MmvidError(f"balance.args.gamma={self.gamma} must be > 0 (the reference uses 1.5)")
        self.heads: nn.ModuleDict | None = None
        self.local: dict[str, tuple[list, list]] | None = None  # m -> (g_mm, g_m) per encoder parameter, this step

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if self.head_kind == "split":
            check_split_heads(model_cfg)

    def setup(self, model, ctx) -> nn.Module | None:
        net = unwrap(model)
        if self.head_kind == "split":
            self.split = net.split_head_logits
            return None
        self.heads = nn.ModuleDict({m: nn.Linear(net.encoders[m].output_dim, ctx.num_classes) for m in self.modalities})
        return self.heads


    def unimodal_losses(self, out, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """m -> CE of modality m's own logits (B, C) against the target its features were mixed towards."""
        feats = {m: out.features[m] for m in self.modalities}
        logits = ({m: v.float() for m, v in self.split(feats).items()} if self.head_kind == "split"
                  else {m: self.heads[m](z.float()) for m, z in feats.items()})
        return {m: mixed_cross_entropy(logits[m], y, modality_mix(out.mix, m)) for m in self.modalities}

    def loss(self, loss, out, inputs, y, ctx):
        uni = self.unimodal_losses(out, y)
        self.local = None
        if self.grad_kind == "separate" and loss.requires_grad:
            scaler = getattr(ctx, "scaler", None)
            scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            params = {m: encoder_parameters(ctx.model, m) for m in self.modalities}
            flat = [p for m in self.modalities for p in params[m]]
            # on the scaled loss, as the engine's backward, so that fp16 gradients do not underflow
            g_mm = iter(self._grad(loss * scale, flat, scale))
            self.local = {m: ([next(g_mm) for _ in params[m]], self._grad(uni[m] * scale, params[m], scale))
                          for m in self.modalities}
        return loss + sum(uni.values())

    @staticmethod
    def _grad(loss: torch.Tensor, params: list[nn.Parameter], scale: float) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.float() / scale for p, g in zip(params, grads)]

    def _averaged(self, grads: list[torch.Tensor], ctx) -> torch.Tensor:
        """The flattened (P,) gradient, averaged over ranks like DDP's (computed locally, outside backward)."""
        flat = torch.cat([g.flatten() for g in grads])
        if getattr(ctx, "world_size", 1) > 1:
            flat = ctx.all_reduce(flat).to(grads[0].device) / ctx.world_size
        return flat

    @torch.no_grad()
    def after_backward(self, model, out, y, ctx) -> None:
        stats = {}
        for m in self.modalities:
            params = encoder_parameters(model, m)
            total = [torch.zeros_like(p) if p.grad is None else p.grad.float() for p in params]
            if self.local is None:  # accumulated: what BalanceBenchmark's trainer reads, G for both losses
                g_mm = g_uni = torch.cat([g.flatten() for g in total])
            else:
                g_mm, g_uni = (self._averaged(g, ctx) for g in self.local[m])
            a_mm, a_uni, conflict = pareto_weights(g_mm, g_uni)
            offset = 0
            for p, g in zip(params, total):
                n = p.numel()
                if p.grad is not None:
                    parts = (g_mm[offset:offset + n].view_as(p), g_uni[offset:offset + n].view_as(p))
                    p.grad.copy_(combine(*parts, g, a_mm, a_uni, self.gamma))
                offset += n
            stats.update({f"mmpareto_alpha_mm_{m}": a_mm, f"mmpareto_conflict_{m}": float(conflict)})
        self.stats.add(stats)
        self.local = None

