"""MBSD (BalanceBenchmark's objective-level method): unimodal CE plus a sample-weighted distillation from the
more confident modality to the less confident one."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

from mmvid.augment.base import Mix, mixed_cross_entropy, modality_mix, target_probability
from mmvid.balance.base import Balancer, check_split_heads, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

HEADS = ("split", "mask")  # split: BalanceBenchmark's unimodal_result; mask: paper Eq. 5 (any fusion)
RS_SPACES = ("logits", "probabilities")  # what the RS term compares (the reference: logits for 2, else probabilities)


def hard_target(y: torch.Tensor, mix: Mix | None, num_classes: int) -> torch.Tensor:
    """(B,) the class a modality's prediction counts as right on: y, or the heavier class of a mixed target."""
    return y if mix is None else mix.soft_target(y, num_classes).argmax(1)


def pair_terms(logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor, mix_a: Mix | None,
               mix_b: Mix | None, rs: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w, kl, rs), each (B,), for one pair of modalities' logits (B, C), all differentiable:

        p_a, p_b = softmax probability of the (mixed) target;  s = max(p_a, p_b), u = min(p_a, p_b)
        w  = (s - u) where either modality predicts its target, else 0
        kl = u (log u - s)                 (the reference's F.kl_div(s, u): s taken as a log-probability)
        rs = (1/C) sum_c (a_c - b_c)^2     (a, b: the logits, or the softmax probabilities)
    """
    p_a, p_b = target_probability(logits_a, y, mix_a), target_probability(logits_b, y, mix_b)
    c = logits_a.shape[1]
    right = (logits_a.argmax(1) == hard_target(y, mix_a, c)) | (logits_b.argmax(1) == hard_target(y, mix_b, c))
    strong, weak = torch.maximum(p_a, p_b), torch.minimum(p_a, p_b)
    w = torch.where(right, strong - weak, torch.zeros_like(strong))
    kl = torch.xlogy(weak, weak) - weak * strong
    a, b = (logits_a.float(), logits_b.float()) if rs == "logits" else (logits_a.float().softmax(1), logits_b.float().softmax(1))
    return w, kl, (a - b).square().mean(1)


@BALANCERS.register("mbsd", doc="MBSD: unimodal CE + confidence-gap-weighted KL and logit-distance terms between modalities (BalanceBenchmark).")
class MBSD(Balancer):
    """MBSD as GeWu-Lab/BalanceBenchmark defines it (``balancemm/trainer/MBSD_trainer.py`` ``training_step``,
    HEAD 4c1482f, file last changed in 39ed569; its earlier two-modality form ``MSBD_trainer.py`` computes the
    same; ``configs/trainer_config.yaml``: ``modulation_starts`` 0, ``modulation_ends`` 80). No repository or
    paper of the method's own authors was found, so BalanceBenchmark is the reference and no paper equation
    numbers are cited. Per step, from the step's features z_m (B, d_m) and unimodal logits u_m (B, C):

        L = L_aug + sum_m CE(u_m) + mean_{(a,b)} (1/B) sum_i w_i kl_i + mean_{(a,b)} (1/B) sum_i w_i rs_i

    with (w, kl, rs) of :func:`pair_terms` for every pair of modalities (one pair for two). Everything is
    differentiated, the sample weights w included (the reference builds them from tensors that carry
    gradients). Outside the epoch window [start, end] the loss is the augmentation's alone (no unimodal CE).

    ``balance.args``: heads (``split``: modality m's columns of the fused head plus b / M, the reference's
    ``unimodal_result``; ``mask``: paper Eq. 5's masked forward, for any fusion), rs (``logits`` |
    ``probabilities``; default the reference's: logits for two modalities, probabilities for three or more),
    start (0) and end (80), 0-based and inclusive. For more than three modalities the pairs are all pairs (the
    reference stops at three).
    """

    @dataclass
    class Settings:
        heads: str = spec("split", choices=HEADS, help="unimodal logits from the split fusion head (BalanceBenchmark) or masking (Eq. 5)",
                          ref="BalanceBenchmark MBSD_trainer.py (split)")
        rs: str | None = spec(None, choices=RS_SPACES, help="RS compares logits or probabilities; none: logits for two modalities, "
                              "probabilities for more (the reference)", ref="BalanceBenchmark MBSD_trainer.py")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based)", ref="BalanceBenchmark MBSD_trainer.py")
        end: int | None = spec(80, ge=0, le=1_000_000, help="last epoch (0-based, inclusive); none: to the end",
                               ref="BalanceBenchmark MBSD_trainer.py")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.heads = self.settings.heads
        # the reference's: logits for two modalities, probabilities for three or more
        self.rs = self.settings.rs or ("logits" if len(self.modalities) == 2 else "probabilities")
        self.start = self.settings.start
        self.end = self.settings.end
        if self.end is not None and int(self.end) < self.start:
            raise MmvidError(f"balance.args.end={self.end} is before start={self.start}; set end >= start (the reference: 0 to 80)")

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if self.heads == "split":
            check_split_heads(model_cfg, value="split", other="mask")


    def unimodal(self, model, out) -> dict[str, torch.Tensor]:
        """m -> (B, C) float logits of modality m alone, with gradients to its encoder and the head."""
        net = unwrap(model)
        feats = {m: out.features[m] for m in net.modalities}
        logits = net.split_head_logits(feats) if self.heads == "split" else net.unimodal_logits(out.raw, out.mix)
        return {m: logits[m].float() for m in self.modalities}

    def loss(self, loss, out, inputs, y, ctx):
        if not self.active(ctx.epoch):
            return loss
        uni = self.unimodal(ctx.model, out)
        mixes = {m: modality_mix(out.mix, m) for m in self.modalities}
        ce = {m: mixed_cross_entropy(uni[m], y, mixes[m]) for m in self.modalities}
        kls, rss, ws = [], [], []
        for a, b in combinations(self.modalities, 2):
            w, kl, rs = pair_terms(uni[a], uni[b], y, mixes[a], mixes[b], self.rs)
            kls.append((w * kl).sum() / len(y))
            rss.append((w * rs).sum() / len(y))
            ws.append(w.detach().mean())
        kl, rs = torch.stack(kls).mean(), torch.stack(rss).mean()
        self.stats.add({"mbsd_kl": float(kl.detach()), "mbsd_rs": float(rs.detach()),
                        "mbsd_weight": float(torch.stack(ws).mean()),
                        **{f"mbsd_ce_{m}": float(v.detach()) for m, v in ce.items()}})
        return loss + sum(ce.values()) + rs + kl

