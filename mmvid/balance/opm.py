"""OPM (Wei, Hu et al., TPAMI 2024): on-the-fly prediction modulation, the forward-stage sibling of OGM-GE."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmvid.augment.base import mixed_cross_entropy
from mmvid.balance.base import Balancer, modality_scores, scored_logits, unwrap
from mmvid.balance.ogm_ge import SCORES
from mmvid.errors import MmvidError
from mmvid.measures import modality_ratios
from mmvid.registry import BALANCERS
from mmvid.schema import spec


def opm_drop_probabilities(scores: dict[str, float], q_base: float, lam: float) -> dict[str, float]:
    """q_m = clip(q_base (1 + lam tanh(relu(rho_m - 1))), 0, 1) where rho_m > 1, else 0 (``calcu_q``);
    rho_m = s_m / mean_{k != m} s_k (two modalities: s_a / s_v, the reference's ratio)."""
    out = {}
    for m, rho in modality_ratios(scores, baseline="others").items():
        r = math.tanh(max(rho - 1.0, 0.0))
        out[m] = min(max(q_base * (1 + lam * r), 0.0), 1.0) if r > 0 else 0.0
    return out


def opm_drop(model, raw: dict[str, torch.Tensor], q: dict[str, float], keep: torch.Tensor, mix=None):
    """Drop and rescale features (``Modality_drop.execute_drop`` once it decided to drop).

    raw: m -> (B, d_m) encoder features (``ModelOutput.raw``); keep: (M, B) 0/1 in ``model.modalities`` order,
    keep[m, i] ~ Bernoulli(1 - q_m). A dropped modality is absent for the whole model (its feature zeroed before
    the calibration, :meth:`~mmvid.models.classifier.MultimodalClassifier.masked_features`, which also applies
    the step's feature-stage ``mix``); without calibration this is the reference's keep[m, i] z_m,i.
    Returns (m -> keep[m, i] z_m,i / (1 - theta) (B, d_m), (B,) bool: some modality of sample i kept),
    theta = sum_m d_m q_m / sum_m d_m, the expected dropped share of the concatenated feature.
    """
    dims = {m: z.shape[1] for m, z in raw.items()}
    theta = sum(dims[m] * q[m] for m in raw) / sum(dims.values())
    masked = model.masked_features(raw, keep, mix)
    return {m: z / (1 - theta) for m, z in masked.items()}, keep.bool().any(0)


@BALANCERS.register("opm", doc="OPM: drop the dominant modality's feature with probability q_base(1 + lam tanh(rho - 1)).")
class OPM(Balancer):
    """On-the-fly Prediction Modulation (Wei, Hu et al., "On-the-fly Modulation for Balanced Multimodal
    Learning", TPAMI 2024, Sec. 4; reference GeWu-Lab/BML_TPAMI2024 ``code/models/Classifier.py``
    (``calcu_q``, ``Modality_drop``) and ``code/main.py`` (``train``, ``--use_adam_drop``); also
    GeWu-Lab/BalanceBenchmark ``balancemm/trainer/OPM_trainer.py``). Per training step, from the step's
    own (undropped) features z_m (B, d_m):

        s_m = sum_i softmax(out_m)_i[y_i]          out_m: the unimodal prediction (``score``)
        q_m = q_base (1 + lam tanh(relu(s_m / s_other - 1)))  if s_m > s_other else 0, clipped to [0, 1]

    then, with probability p_exe: keep_m,i ~ Bernoulli(1 - q_m) per sample and modality,
    z~_m,i = keep_m,i z_m,i / (1 - theta), theta = sum_m d_m q_m / sum_m d_m; the fused prediction is
    recomputed from z~ (fusion + head; mixing at the fused stage re-applied) and its cross-entropy over
    the samples with some modality kept replaces the fused cross-entropy of the augmentation's loss:
    loss <- loss - CE(logits) + CE(logits~). With no drop drawn the loss is unchanged (the reference's
    undropped forward). Only the dominant modality has q > 0, so for two modalities no sample is lost.

    ``balance.args``: q_base (0.5: ``train_opm.sh`` and ``--q_base``; BalanceBenchmark 0.4), lam (0.5:
    ``--lam``; BalanceBenchmark's ``alpha``), p_exe (0.7), start (6: the reference's warm-up is
    epochs 0-5, ``warm_up=1 if epoch<=5``; BalanceBenchmark 0), end (none: to the last epoch;
    BalanceBenchmark 80), both 0-based and inclusive; score (``split-head``: the reference's slices of
    the concat head with b / 2; ``mask``: paper Eq. 5 of mmvid's paper, as OGM-GE's default).
    """

    @dataclass
    class Settings:
        q_base: float = spec(0.5, ge=0.0, le=1.0, help="base drop probability", ref="BML_TPAMI2024 code/main.py; BalanceBenchmark 0.4")
        lam: float = spec(0.5, ge=0.0, le=1000.0, help="sensitivity of the drop probability to the imbalance", ref="BML_TPAMI2024 code/main.py")
        p_exe: float = spec(0.7, ge=0.0, le=1.0, help="probability that a step drops at all", ref="BML_TPAMI2024 code/main.py")
        start: int = spec(6, ge=0, le=1_000_000, help="first epoch (0-based) of dropping", ref="BML_TPAMI2024 code/main.py; BalanceBenchmark 0")
        end: int | None = spec(None, ge=0, le=1_000_000, help="last epoch (0-based, inclusive); none: to the end", ref="BML_TPAMI2024 code/main.py; BalanceBenchmark 80")
        score: str = spec("split-head", choices=SCORES, help="unimodal scores from the head's slices (reference) or masking (Eq. 5)",
                          ref="BML_TPAMI2024 code/models/Classifier.py (split-head)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.q_base = self.settings.q_base
        self.lam = self.settings.lam
        self.p_exe = self.settings.p_exe
        self.start = self.settings.start
        self.end = self.settings.end
        self.score = self.settings.score
        for key, value in (("q_base", self.q_base), ("p_exe", self.p_exe)):
            if not 0.0 <= value <= 1.0:
                raise MmvidError(f"balance.args.{key}={value} must be a probability in [0, 1]; the reference uses "
                                 f"{dict(q_base=0.5, p_exe=0.7)[key]}")
        if self.lam < 0:
            raise MmvidError(f"balance.args.lam={self.lam} must be >= 0 (the reference's 0.5)")
        self.gen: torch.Generator | None = None

    def setup(self, model, ctx):
        # Each rank drops features of its own samples: its own stream (seed + rank), resumable.
        self.gen = torch.Generator().manual_seed(int(ctx.cfg.seed) + 15485863 + int(ctx.rank))
        return None


    def unimodal_logits(self, model, out) -> dict[str, torch.Tensor]:
        return scored_logits(model, out, self.score)

    def draw(self, q: dict[str, float], batch: int) -> torch.Tensor | None:
        """None (no drop this step, probability 1 - p_exe) or keep (M, B), keep[m, i] ~ Bernoulli(1 - q_m)."""
        if self.gen is None:
            raise MmvidError("balancer opm was used before setup(model, ctx); the engine calls it after building the model")
        if float(torch.rand((), generator=self.gen)) < 1 - self.p_exe:  # the reference: drop iff u >= 1 - p_exe
            return None
        p_keep = torch.tensor([1 - q[m] for m in self.modalities], dtype=torch.float64)
        return torch.bernoulli(p_keep[:, None].expand(-1, batch), generator=self.gen).float()

    def loss(self, loss, out, inputs, y, ctx):
        q = opm_drop_probabilities(modality_scores(self.unimodal_logits(ctx.model, out), out, y, ctx),
                                   self.q_base, self.lam)
        keep = self.draw(q, len(y)) if self.active(ctx.epoch) else None
        self.stats.add({**{f"opm_q_{m}": v for m, v in q.items()},
                        **{f"opm_dropped_{m}": 0.0 if keep is None else float(1 - keep[i].mean())
                           for i, m in enumerate(self.modalities)}})
        if keep is None:
            return loss
        model = unwrap(ctx.model)
        feats, kept = opm_drop(model, out.raw, q, keep.to(y.device), out.mix)
        fused = model.fusion(feats)
        if out.mix is not None and out.mix.stage == "fused":
            fused = out.mix.apply({"fused": fused})["fused"]
        logits = model.head(fused).float()
        target = (out.mix.soft_target(y, logits.shape[1]) if out.mix is not None
                  else F.one_hot(y, logits.shape[1]).float())
        per_sample = -(target * F.log_softmax(logits, 1)).sum(1)
        # Samples with every modality dropped leave the loss (the reference removes them from the batch).
        dropped_ce = per_sample[kept].mean() if bool(kept.any()) else per_sample.sum() * 0
        return loss - mixed_cross_entropy(out.logits, y, out.mix) + dropped_ce


    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()} if self.gen is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state and self.gen is not None:
            self.gen.set_state(state["gen"])
