"""MLA, Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal and Yao, CVPR 2024,
"Multimodal Representation Learning by Alternating Unimodal Adaptation")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

PROJECTIONS = ("replace", "add", "off")
IDLE = ("step", "skip")


def gs_alpha(batch: int, n_batches: int) -> float:
    """The projector's regulariser on batch ``batch`` (0-based) of ``n_batches``: 0.1 ** (batch / n_batches + 1)."""
    return 0.1 ** (batch / max(n_batches, 1) + 1)


@torch.no_grad()
def update_projector(P: torch.Tensor, feats: torch.Tensor, alpha: float) -> torch.Tensor:
    """Gradient modification of the shared head (the paper's orthogonal weight modification; the authors'
    ``GSPlugin.before_update``): with
    r = mean_i z_i (1, d) of the modality just trained and k = P r^T (d, 1),

        P <- P - (k k^T) / (alpha + k r)   (element-wise division by the (d, d) matrix alpha + k r),
        P <- P / ||P||_F.   (d, d)

    Both reference codes divide by ``torch.mm(k, r)``, an outer product, where OWM's recursive least
    squares has the scalar alpha + r k; mmvid follows the code."""
    r = feats.detach().float().mean(0, keepdim=True)
    k = P @ r.T
    P = P - (k @ k.T) / (alpha + k @ r)  # element-wise by the (d, d) outer product k r, as both references
    return P / torch.linalg.matrix_norm(P)


@BALANCERS.register("mla", doc="MLA: alternating unimodal passes through a shared head, OWM-projected head gradient.")
class AlternatingUnimodal(Balancer):
    """MLA (reference: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, ``main.py``
    ``train_epoch`` with ``--gs_flag`` and ``utils/utils.py`` ``GSPlugin``; BalanceBenchmark
    ``balancemm/trainer/MLA_trainer.py``). Needs ``--fusion shared`` (:class:`mmvid.balance.shared_head.SharedFusion`:
    one head W z + b shared by every modality; at test time the entropy-weighted sum of the unimodal
    predictions, the paper's test-time uncertainty-based fusion).

    Per batch, one forward of every encoder, then one optimisation pass per modality m in data.modalities
    order (the ``passes`` hook; the reference's audio, then visual):

        L_m = CE(W z_m + b, y)   (mixed targets under a mixing augmentation)
        backward -> P <- OWM update with z_m (:func:`update_projector`, alpha = :func:`gs_alpha`)
        -> grad_W <- grad_W P^T -> optimizer step

    only encoder m and the shared head receive gradients in pass m. ``balance.args.idle``: ``step`` (the
    reference as it ran, under torch 1.8.1 whose ``optimizer.zero_grad()`` zeroes gradients instead of
    dropping them: the encoders trained in earlier passes of the batch get a zero gradient in the later
    passes, so SGD's momentum and weight decay move them again) or ``skip`` (torch >= 2.0's default: they
    are left alone until the next batch). The projection is skipped on the
    very first pass of training (the reference's ``exp_count != 0``); P starts as I (d, d) and is never
    reset. The bias gradient is not projected. ``balance.args.projection``: ``replace`` (grad_W P^T: the
    authors' GSPlugin before their last commit, 4735bbc), ``add`` (grad_W + grad_W P^T:
    BalanceBenchmark) or ``off`` (the authors' last commit 11ae1ee literally: its name test ``n == "module.weight"``
    never matches the head's ``weight``, so the head gradient is left as it is).

    The epoch's train loss is the mean of the passes' losses (the reference's 0.5 L_a + 0.5 L_v).
    One process only: the passes run several backward passes on one forward, which DDP's reducer refuses.
    """

    @dataclass
    class Settings:
        projection: str = spec("replace", choices=PROJECTIONS, help="gradient projection of the shared head: replace, add or off",
                               ref="MLA main.py GSPlugin before 11ae1ee (replace); BalanceBenchmark add")
        idle: str = spec("step", choices=IDLE, help="an idle modality's optimizer still steps (reference, torch 1.8) or skips (torch >= 2.0)",
                         ref="MLA main.py under torch 1.8 (step)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.projection = self.settings.projection
        self.idle = self.settings.idle
        self.P: torch.Tensor | None = None
        self.touched: set[int] = set()  # parameters with a gradient in an earlier pass of this batch
        self.count = 0  # passes since training began (the reference's exp_count)
        self.batch = 0  # batch index within the epoch
        self.n_batches = 1

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if model_cfg.fusion != "shared":
            raise MmvidError(f"balancer 'mla' trains one head shared by every modality: use --fusion shared "
                             f"(got {model_cfg.fusion!r}; recipes/methods/mla.yaml sets it)")

    def setup(self, model, ctx):
        if ctx.world_size > 1:
            raise MmvidError("balancer 'mla' runs one backward pass per modality on one forward, which DDP refuses; "
                             "train it in one process (no --gpus / torchrun)")
        d = unwrap(model).head.linear.in_features
        if self.P is None:
            self.P = torch.eye(d)
        rows = len(ctx.splits.train)
        self.n_batches = math.ceil(rows / ctx.cfg.data.batch_size)  # len(train_loader): drop_last is off
        return None

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        self.batch = 0

    def passes(self, ctx) -> list:
        return list(self.modalities)

    def loss(self, loss, out, inputs, y, ctx):
        m = ctx.focus
        if m is None:
            raise MmvidError("balancer 'mla' needs the training loop's passes hook (ctx.focus names the modality)")
        logits = unwrap(ctx.model).head.linear(out.features[m])
        value = mixed_cross_entropy(logits, y, modality_mix(out.mix, m))
        self.stats.add({f"mla_loss_{m}": float(value.detach())})
        return value

    def after_backward(self, model, out, y, ctx) -> None:
        m = ctx.focus
        net = unwrap(model)
        if self.idle == "step":  # torch 1.x zero_grad(): zeros, not None, so momentum and decay still step them
            for p in net.parameters():
                if p.grad is None and id(p) in self.touched:
                    p.grad = torch.zeros_like(p)
            self.touched |= {id(p) for p in net.parameters() if p.grad is not None}
        weight = net.head.linear.weight
        if self.count != 0 and self.projection != "off" and weight.grad is not None:
            self.P = update_projector(self.P.to(weight.device), out.features[m], gs_alpha(self.batch, self.n_batches))
            projected = weight.grad @ self.P.T.to(weight.grad.dtype)
            weight.grad.copy_(projected if self.projection == "replace" else weight.grad + projected)
        self.count += 1
        if m == self.modalities[-1]:
            self.batch += 1
            self.touched = set()


    def state_dict(self) -> dict[str, Any]:
        return {"P": None if self.P is None else self.P.cpu(), "count": self.count, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.P, self.count, self.batch = state.get("P"), int(state["count"]), int(state["batch"])
