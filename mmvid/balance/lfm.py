"""LFM (Yang, Wan, Jiang, Xu, NeurIPS 2024, "Facilitating Multimodal Classification via Dynamically Learning
Modality Gap"): a supervised loss and an unsupervised alignment of the unimodal predictions, integrated with a
weight learnt once per epoch by a hypergradient step on held-out samples."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F

from mmvid.balance.base import Balancer, device_batches, unwrap
from mmvid.errors import MmvidError
from mmvid.measures import training_mode
from mmvid.registry import BALANCERS
from mmvid.schema import spec

SCHEDULES = ("learnable", "fitted")  # learnable: Crema_epoch_learnable.py and BalanceBenchmark; fitted: Crema_epoch.py
MODES = ("eval", "train")
SCORES = ("split-head", "mask")
ALIGN_RANGE = (0.05, 0.95)  # the reference clamps the alignment weight to this range after every update
# Crema_epoch.py getAlpha_Learnable_Fitted: the classification weight as a polynomial of the epoch (coefficient
# of epoch**i), fitted by the authors to the learnt weights of a CREMA-D run; the alignment weight is 1 minus it.
FITTED_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)


def alignment(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The reference's ``Alignment(p, q)`` on two logits (B, C): with P = softmax(p), Q = softmax(q) and
    M = (P + Q) / 2, 0.5 (KL(M || P) + KL(M || Q)), each KL summed over classes and averaged over the batch
    (``F.kl_div(P.log(), M, reduction='batchmean')``: the KL *from* M, not the Jensen-Shannon divergence's
    KL(P || M), though the reference calls it ``js_score``). log_softmax instead of log(softmax): equal
    wherever the reference is finite (it is +inf once a probability underflows to 0)."""
    lp, lq = F.log_softmax(p.float(), dim=1), F.log_softmax(q.float(), dim=1)
    m = 0.5 * (lp.exp() + lq.exp())
    return 0.5 * (F.kl_div(lp, m, reduction="batchmean") + F.kl_div(lq, m, reduction="batchmean"))


def pair_alignment(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean of :func:`alignment` over the modality pairs (i < j, in ``logits`` order; one pair for audio-video),
    as BalanceBenchmark's ``loss_alignment / len(combinations)``."""
    pairs = list(combinations(logits.values(), 2))
    return torch.stack([alignment(p, q) for p, q in pairs]).mean()


def fitted_alignment_weight(epoch: int) -> float:
    """Crema_epoch.py's weight of the alignment loss at 0-based ``epoch``: 1 - sum_i c_i epoch**i."""
    return 1.0 - sum(c * epoch ** i for i, c in enumerate(FITTED_CLS))


def hypergradient(model, inputs: dict[str, torch.Tensor], y: torch.Tensor, a_cls: float, a_align: float,
                  unimodal) -> float:
    """d alpha of the reference's ``getAlpha_Learnable``: on one held-out batch, L_cls = CE(fused logits, y),
    L_total = a_cls L_cls + a_align L_align; the Hessian-vector product H v = d/dtheta <dL_total/dtheta, v> with
    v = dL_cls/dtheta (v held constant), and the mean of its entries in the model's FIRST parameter tensor (the
    reference reads ``hessian_vector_prod[0].mean()``: for audio first, the audio encoder's first convolution).
    Only that tensor's product is formed (the other entries are never read). ``unimodal``: (model, ModelOutput)
    -> m -> (B, C) logits. Parameters that the losses do not reach are left out (the reference's model has none)."""
    out = model(inputs)
    l_cls = F.cross_entropy(out.logits.float(), y)
    l_total = a_cls * l_cls + a_align * pair_alignment(unimodal(model, out))
    params = [p for p in model.parameters() if p.requires_grad]
    g_total = torch.autograd.grad(l_total, params, create_graph=True, allow_unused=True)
    g_cls = torch.autograd.grad(l_cls, params, retain_graph=True, allow_unused=True)
    pairs = [(gt, torch.zeros_like(gt) if gc is None else gc) for gt, gc in zip(g_total, g_cls)
             if gt is not None and gt.requires_grad]
    if not pairs:
        return 0.0
    (hvp,) = torch.autograd.grad([gt for gt, _ in pairs], params[:1], grad_outputs=[gc for _, gc in pairs],
                                 allow_unused=True)
    return 0.0 if hvp is None else float(hvp.float().mean())


@BALANCERS.register("lfm", doc="LFM: 2 (a_cls CE + a_align alignment of the unimodal predictions to their mean), a_align learnt each epoch by a hypergradient step (Yang et al. 2024).")
class LFM(Balancer):
    """Learning the modality gap (reference: the authors' njustkmg/NeurIPS24-LFM ``Crema_epoch_learnable.py``
    (``Alignment``, ``getAlpha_Learnable``, ``train_audio_video``; HEAD ad44fa0) and ``Crema_epoch.py``
    (``getAlpha_Learnable_Fitted``); GeWu-Lab/BalanceBenchmark ``balancemm/trainer/LFM_trainer.py`` (HEAD
    4c1482f) as options). The paper's text was not at hand: no equation numbers are cited.

    Per training step, with z_m (B, d_m) the step's features, f_m = modality m's logits (B, C) and f the
    fused logits (the augmentation's loss L_aug = CE(f, y) without mixing):

        L = 2 (a_cls L_aug + a_align L_align),  L_align = mean over pairs (m, n) of Align(f_m, f_n)

    with :func:`alignment` (0.5 (KL(M||P_m) + KL(M||P_n)), M the mean prediction) and a_cls = 1 - a_align. f_m
    are the slices of the fusion head (``score: split-head``: with ``--fusion decision`` the reference's model,
    one linear head per modality and f = (f_a + f_v) / 2; with concat BalanceBenchmark's ``unimodal_result``)
    or paper Eq. 5's masking (``score: mask``, any fusion).

    The weight (``schedule: learnable``), once at the start of every epoch e, before its training:
    g = :func:`hypergradient` on the first ``hyper_samples`` clips of the validation split (the reference
    holds out 16 training clips and uses half of them; BalanceBenchmark a quarter of its first validation
    batch: 8 either way) at the current weights; a_align <- clip(a_align - lr_e g, 0.05, 0.95), lr_e =
    lr_alpha / 2^floor(e / halve_every) (the reference halves it at every epoch e > 0 divisible by 20).
    ``schedule: fitted`` (Crema_epoch.py, the README's command) sets a_align = :func:`fitted_alignment_weight`
    (e) instead, a polynomial the authors fitted to a CREMA-D run.

    ``balance.args``: schedule (``learnable``), align_init (0.95: the authors' ``cls_k = [0.05, 0.95]``;
    BalanceBenchmark starts from 0.05), lr_alpha (1e-4, both), halve_every (20, both), hyper_samples (8),
    hyper_mode (``eval``: BatchNorm on its running statistics, as the authors' code from the second epoch on,
    when the weight is learnt after ``val()`` left the model in eval mode; ``train``: BalanceBenchmark, which
    also moves the running statistics), score (``split-head`` | ``mask``). BalanceBenchmark's
    ``modulation_starts`` / ``ends`` and ``alpha`` are read but unused by its trainer: no window here.
    Under DDP every rank computes g on the same clips; the ranks' values are averaged.
    """

    @dataclass
    class Settings:
        schedule: str = spec("learnable", choices=SCHEDULES, help="learnable alignment weight or the fitted polynomial",
                             ref="LFM Crema_epoch_learnable.py (learnable), Crema_epoch.py (fitted)")
        hyper_mode: str = spec("eval", choices=MODES, help="hypergradient in eval mode (authors) or train mode (BalanceBenchmark)",
                               ref="LFM authors' code (eval); BalanceBenchmark train")
        score: str = spec("split-head", choices=SCORES, help="unimodal logits from the head's slices (reference) or masking (Eq. 5)",
                          ref="LFM authors' code (split-head)")
        align_init: float = spec(0.95, ge=ALIGN_RANGE[0], le=ALIGN_RANGE[1], help="initial alignment weight",
                                 ref="LFM authors 0.95; BalanceBenchmark 0.05")
        lr_alpha: float = spec(1e-4, gt=0.0, le=1e6, help="learning rate of the alignment weight", ref="LFM Crema_epoch_learnable.py")
        halve_every: int = spec(20, ge=1, le=1_000_000, help="epochs between halvings of lr_alpha", ref="LFM Crema_epoch_learnable.py")
        hyper_samples: int = spec(8, ge=1, le=1_000_000, help="validation clips of the hypergradient", ref="LFM Crema_epoch_learnable.py")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.schedule = self.settings.schedule
        self.needs_val_split = self.schedule == "learnable"  # its hypergradient is taken on validation clips
        self.hyper_mode = self.settings.hyper_mode
        self.score = self.settings.score
        self.align = self.settings.align_init
        self.lr_alpha = self.settings.lr_alpha
        self.halve_every = self.settings.halve_every
        self.hyper_samples = self.settings.hyper_samples
        lo, hi = ALIGN_RANGE
        if not lo <= self.align <= hi:
            raise MmvidError(f"balance.args.align_init={self.align} must lie in [{lo}, {hi}] (the authors: 0.95, "
                             f"BalanceBenchmark: 0.05)")
        for key, value, low in (("lr_alpha", self.lr_alpha, 0), ("halve_every", self.halve_every, 1),
                                ("hyper_samples", self.hyper_samples, 1)):
            if value < low:
                raise MmvidError(f"balance.args.{key}={value} must be >= {low} (the reference: lr_alpha 1e-4, "
                                 f"halve_every 20, hyper_samples 8)")
        self.last_grad = 0.0

    def setup(self, model, ctx):
        if self.schedule == "learnable" and len(ctx.splits.val) == 0:
            raise MmvidError(f"balancer lfm learns its weight on validation clips, but the validation split is empty "
                             f"(data.val_fraction={ctx.cfg.data.val_fraction}); raise data.val_fraction (e.g. --set "
                             f"data.val_fraction=0.1) or use balance.args.schedule=fitted")
        return None

    def unimodal(self, model, out) -> dict[str, torch.Tensor]:
        """m -> (B, C) logits of modality m from the step's ModelOutput, differentiable (unlike
        :func:`mmvid.balance.base.scored_logits`): the head's slices of the features, or masking (Eq. 5)."""
        net = unwrap(model)
        logits = (net.split_head_logits(out.features) if self.score == "split-head"
                  else net.unimodal_logits(out.raw, out.mix))
        return {m: logits[m] for m in self.modalities}

    def hyper_batch(self, ctx) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The first ``hyper_samples`` validation clips (unaugmented; the same every epoch, as the reference's)."""
        rows = ctx.splits.val[:self.hyper_samples]
        parts = list(device_batches(ctx, rows))
        inputs = {m: torch.cat([p[0][m] for p in parts])[:self.hyper_samples] for m in parts[0][0]}
        return inputs, torch.cat([p[1] for p in parts])[:self.hyper_samples]

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        if self.schedule == "fitted":
            self.align = fitted_alignment_weight(ctx.epoch)
            return
        net = ctx.model
        with training_mode(self.hyper_mode == "train", net):
            inputs, y = self.hyper_batch(ctx)
            g = hypergradient(net, inputs, y, 1.0 - self.align, self.align, self.unimodal)
        g = float(ctx.all_reduce(torch.tensor([g], dtype=torch.float64))[0]) / max(int(getattr(ctx, "world_size", 1)), 1)
        lr = self.lr_alpha * 0.5 ** (ctx.epoch // self.halve_every)
        lo, hi = ALIGN_RANGE
        self.align = max(lo, min(hi, self.align - lr * g))
        self.last_grad = g

    def loss(self, loss, out, inputs, y, ctx):
        l_align = pair_alignment(self.unimodal(ctx.model, out))
        self.stats.add({"lfm_align_loss": float(l_align.detach())})
        return 2 * ((1.0 - self.align) * loss + self.align * l_align)

    def log(self) -> dict[str, Any]:
        return {"lfm_alpha_align": self.align, "lfm_hypergrad": self.last_grad, **super().log()}

    def state_dict(self) -> dict[str, Any]:
        return {"align": self.align, "last_grad": self.last_grad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.align = float(state.get("align", self.align))
        self.last_grad = float(state.get("last_grad", self.last_grad))
