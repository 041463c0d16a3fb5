"""AMCo, Adaptive Mask Co-optimization (Zhou, Liang, Zheng, Xuan and Kumada, ICASSP 2023, "Adaptive Mask
Co-Optimization for Modal Dependence in Multimodal Learning"), as BalanceBenchmark implements it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmvid.augment.base import Mix, mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

TARGETS = ("logits", "features")  # logits: BalanceBenchmark HEAD; features: its first AMCo version
LOGIT_FUSIONS = ("concat", "sum")  # heads whose split-head logits sum to the fused logits


def mask_ratio(l_t: float, eps: float) -> float:
    """p_t = sin(pi/2 * min(eps, l_t) / eps): the share of units masked, rising from 0 to 1 as l_t reaches eps."""
    return math.sin(math.pi / 2 * (min(eps, l_t) / eps))


def random_mask(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """(n,) float mask with int(p n) zeros at a uniformly random subset of positions, ones elsewhere (the
    reference's ``np.pad(np.ones(n - N), (0, N))`` shuffled); one mask for the whole batch."""
    mask = torch.ones(n)
    mask[torch.randperm(n, generator=gen)[:int(p * n)]] = 0.0
    return mask


def dropout_scale(p: float) -> float:
    """The first version's rescaling of masked features: 1 / (1 - p), or 10 once |p - 1| <= 0.1."""
    return 1.0 / (1.0 - p) if abs(p - 1.0) > 0.1 else 10.0


def modality_shares(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """(M,) sums over the batch of each modality's block of softmax([u_1, ..., u_M]) over all M C columns
    (the reference's ``sft_out``); divided by the batch size, s_m is modality m's share of the mass."""
    p = torch.cat([u.detach().float() for u in logits.values()], dim=1).softmax(1)
    return torch.stack([blk.sum() for blk in p.split([u.shape[1] for u in logits.values()], dim=1)])


def head_input(out) -> dict[str, torch.Tensor]:
    """The features as the head saw them: under fused-stage mixing (MM) each z_m mixed as h was (the
    concat and sum fusions are linear, so mixing h equals mixing every z_m with the same weight)."""
    mix = out.mix
    if mix is None or mix.stage != "fused":
        return out.features
    w = mix.weights.get("fused", mix.weights.get("*"))
    return out.features if w is None else Mix(mix.stage, mix.perm, {"*": w}, mix.target_weight).apply(out.features)


@BALANCERS.register("amco", doc="AMCo: mask the dependent modality (unimodal softmax share > sigma) at a rising ratio; fused + unimodal CE.")
class AMCo(Balancer):
    """AMCo (reference: GeWu-Lab/BalanceBenchmark ``balancemm/trainer/AMCo_trainer.py`` and
    ``BaseClassifierAMCoModel`` in ``balancemm/models/avclassify_model.py``, HEAD c1ce5a8; the authors
    released no code). Per epoch, l_t = 0 and no modality is dependent; per batch t, in the window
    start <= epoch <= end (0-based):

        p_t = sin(pi/2 min(eps, l_t) / eps),   then l_t <- l_t + epoch / 10        (mask ratio, :func:`mask_ratio`)
        M_t in {0, 1}^n, int(p_t n) zeros at random, one per batch                 (:func:`random_mask`)
        u_m = W_m z_m + b / M                       split-head unimodal logits (B, C), concat or sum fusion
        u_m <- M_t * u_m  for every dependent m     (``target: logits``, n = C)
        logits = W* (sum_m u_m) + b*   (W* only with ``model.fusion_args.star``, the reference's linear_star)
        L = CE(logits, y) + sum_m CE(u_m, y)        (the reference's backward of each)
        s_m = (1/B) sum_i sum_{c in block m} softmax([u_1; ...; u_M])_i,c,  dependent_m <- s_m > sigma

    the dependence found on batch t masks batch t + 1. Outside the window: L = the augmentation's loss
    (plain CE). ``target: features`` is BalanceBenchmark's first AMCo (2603a98, 2024-05): the dependent
    modality's feature units are masked and rescaled instead, z_m <- M_t * z_m * :func:`dropout_scale` (n = d_m),
    for any split-head fusion (logits = the head on the masked features); on each batch the first modality (in
    data.modalities order) with s_m >= sigma becomes dependent for the rest of the epoch, and only the first
    dependent one is masked. ``balance.args``: sigma (0.5), eps (0.3), start (0), end (80), target (logits).
    Under a mixing augmentation the CE terms take the mixed targets. Shapes: z_m (B, d_m), u_m (B, C).
    """

    @dataclass
    class Settings:
        sigma: float = spec(0.5, ge=0.0, le=1.0, help="masking probability of a dependent modality", ref="BalanceBenchmark AMCo_trainer.py")
        eps: float = spec(0.3, ge=0.0, le=1000.0, help="dependence threshold", ref="BalanceBenchmark AMCo_trainer.py (0.3)")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based) of masking", ref="BalanceBenchmark AMCo_trainer.py")
        end: int | None = spec(80, ge=0, le=1_000_000, help="last epoch (0-based, inclusive); none: to the end",
                               ref="BalanceBenchmark AMCo_trainer.py")
        target: str = spec("logits", choices=TARGETS, help="mask the head's logits (BalanceBenchmark HEAD) or the features (its first version)",
                           ref="BalanceBenchmark AMCo_trainer.py (logits)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.sigma = self.settings.sigma
        self.eps = self.settings.eps
        self.start = self.settings.start
        self.end = self.settings.end
        self.target = self.settings.target
        if not self.eps > 0:
            raise MmvidError(f"balance.args.eps={self.eps} must be positive (the mask ratio's ramp length); the reference uses 0.3")
        self.dependent = {m: False for m in self.modalities}
        self.l_t = 0.0
        self.gen = torch.Generator()

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        fusions = LOGIT_FUSIONS if self.target == "logits" else ("concat", "sum", "decision")
        if model_cfg.fusion not in fusions:
            raise MmvidError(f"balance.args.target={self.target} reads the split fusion head and needs --fusion "
                             f"{' or '.join(fusions)} (got {model_cfg.fusion!r})")

    def setup(self, model, ctx):
        self.gen.manual_seed(int(ctx.cfg.seed) + 104729)  # the same masks on every rank
        return None

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        self.dependent = {m: False for m in self.modalities}
        self.l_t = 0.0

    def next_mask(self, n: int, epoch: int) -> tuple[float, torch.Tensor]:
        """This batch's (p_t, mask (n,)); advances l_t by epoch / 10."""
        p = mask_ratio(self.l_t, self.eps)
        self.l_t += epoch / 10
        return p, random_mask(n, p, self.gen)

    def masked_modalities(self) -> list[str]:
        """The modalities masked on this batch: every dependent one; the first version masks only the first."""
        on = [m for m in self.modalities if self.dependent[m]]
        return on if self.target == "logits" else on[:1]

    def loss(self, loss, out, inputs, y, ctx):
        if not self.active(ctx.epoch):
            return loss
        net, masked = unwrap(ctx.model), self.masked_modalities()
        if self.target == "logits":
            p, mask = self.next_mask(ctx.num_classes, ctx.epoch)
            apply = lambda logits: {m: u * mask.to(u.device, u.dtype) if m in masked else u for m, u in logits.items()}
            seen = head_input(out)
            uni = apply(net.split_head_logits(seen))
            if masked:
                fused = sum(uni.values())
                star = getattr(net.head, "star", None)
                loss = mixed_cross_entropy(star(fused) if star is not None else fused, y, out.mix)
            if seen is not out.features:  # unimodal terms on the unmixed features, as modality_mix's targets
                uni = apply(net.split_head_logits(out.features))
        else:
            feats = out.features
            p, mask = self.next_mask(feats[masked[0]].shape[1] if masked else 1, ctx.epoch)
            if masked:
                scale = dropout_scale(p)
                feats = {m: z * mask.to(z.device, z.dtype) * scale if m in masked else z for m, z in feats.items()}
                h = net.fusion(feats)
                if out.mix is not None and out.mix.stage == "fused":
                    h = out.mix.apply({"fused": h})["fused"]
                loss = mixed_cross_entropy(net.head(h), y, out.mix)
            uni = net.split_head_logits(feats)
        for m, u in uni.items():
            loss = loss + mixed_cross_entropy(u, y, modality_mix(out.mix, m))
        shares = self.update(uni, len(y), ctx)
        self.stats.add({"amco_p": p, **{f"amco_dependent_{m}": float(m in masked) for m in self.modalities},
                        **{f"amco_share_{m}": s for m, s in shares.items()}})
        return loss

    def update(self, uni: dict[str, torch.Tensor], batch: int, ctx) -> dict[str, float]:
        """Dependence for the next batch from this batch's (masked) unimodal logits, summed over ranks;
        returns the shares s_m."""
        local = torch.cat([modality_shares(uni).cpu().double(), torch.tensor([float(batch)], dtype=torch.float64)])
        total = ctx.all_reduce(local)
        shares = dict(zip(uni, (total[:-1] / total[-1]).tolist()))
        if self.target == "logits":
            self.dependent = {m: s > self.sigma for m, s in shares.items()}
        else:  # the first version: the first modality reaching sigma becomes dependent for the rest of the epoch
            first = next((m for m, s in shares.items() if s >= self.sigma), None)
            if first is not None:
                self.dependent[first] = True
        return shares


    def state_dict(self) -> dict[str, Any]:
        return {"dependent": dict(self.dependent), "l_t": self.l_t, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dependent = {m: bool(v) for m, v in state["dependent"].items()}
        self.l_t = float(state["l_t"])
        self.gen.set_state(state["gen"])
