"""Balanced Multimodal Mixup, B-MM (paper Sec. 3.3, Eqs. 5-8; reconstructed as METHODS.md recommends)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mmvid.augment.base import Augmentation, Mix, random_perm
from mmvid.errors import MmvidError
from mmvid.measures import imbalance_factor, modality_ratios
from mmvid.registry import AUGMENTS
from mmvid.schema import spec


def imbalance(scores: dict[str, float], modalities: list[str]) -> tuple[float, dict[str, float]]:
    """Eq. 6: (rho, m -> rho_m) from the modalities' scores (summed true-class probabilities or accuracies):
    rho = s_a / s_v for two modalities (first over second), for N > 2 max_m s_m / min_m s_m
    (:func:`mmvid.measures.imbalance_factor`); rho_m = s_m / s_other for two, s_m / mean_k s_k for N > 2
    (:func:`mmvid.measures.modality_ratios`, METHODS.md)."""
    ordered = {m: scores[m] for m in modalities}
    return imbalance_factor(ordered), modality_ratios(ordered)


def weak_lambdas(scores: dict[str, float], modalities: list[str], beta: float, mapping: str = "scaled") -> dict[str, float]:
    """Eq. 7: the weak modality's mixing ratio; the strong modality gets 0.

    Two modalities: r = max(rho, 1/rho); lambda_weak = beta * tanh(r - 1) (``scaled``) or tanh(beta (r - 1))
    (``inside``). N > 2: every modality with rho_m < 1 is weak with r_m = 1 / rho_m.
    """
    ratios = modality_ratios({m: scores[m] for m in modalities})
    lams = {m: 0.0 for m in modalities}
    for m, r in ratios.items():
        if r < 1.0:
            excess = 1.0 / max(r, 1e-12) - 1.0
            lams[m] = beta * math.tanh(excess) if mapping == "scaled" else math.tanh(beta * excess)
    return lams


@AUGMENTS.register("bmm", doc="B-MM: after warm-up, mix only the weak modality by lambda = beta tanh(rho' - 1) (Eqs. 5-8).")
class BalancedMultimodalMixup(Augmentation):
    """B-MM: after ``warmup`` plain epochs, mix only the weak modality's feature (Eq. 8, paper Fig. 3):

        z~_w,i = (1 - lambda_w) z_w,i + lambda_w z_w,pi(i),   z~_s,i = z_s,i (strong modality untouched),
        loss  = (1 - lambda_y) CE(., y_i) + lambda_y CE(., y_pi(i)),  lambda_y = mean of the mixed lambda_w,

    with lambda_w from the imbalance factor rho measured over the whole training set after every epoch
    (eval mode, no augmentation, unimodal predictions by masking, Eq. 5). Settings (``augment.args``):
    ``warmup``, ``beta``, ``rho_stat`` (score | acc), ``lambda_map`` (scaled | inside),
    ``stage``: ``feature`` (Fig. 3) or ``input`` (the Sec. 3.3 text): mix the weak modality's raw
    input x_w (B, ...) instead of z_w, the strong input passes through unmixed, same lambda, pi and target;
    ``unimodal``: ``mask`` (Eq. 5) or ``head`` (decision fusion: rho from each modality's own
    classifier, softmax(W_m z_m + b_m); the model's ``unimodal_logits`` then use the heads everywhere);
    ``rho_split``: ``train`` as in the paper, or ``val`` (an mmvid option, not the paper's):
    rho over the held-out validation split, which follows what each modality has *generalised* rather
    than what it has memorised (on the demo, video memorises the training clips and drives the
    train-set rho below 1 while the test-set rho stays near 1.7).
    """

    @dataclass
    class Settings:
        warmup: int = spec(10, ge=0, le=1_000_000, help="epochs of plain training before mixing",
                           ref="paper Table 4 (CREMA-D: 10, recipes/cremad.yaml)")
        # lambda_weak = beta * tanh(r - 1). 0.2 is the CREMA-D recipe's (Table 5, column 2); every recipe uses
        # 0.2-0.4. At beta near 1 lambda_weak can approach 1: the weak modality's feature and the label would then
        # be almost wholly the partner's (the paper: a large beta mixes "overly aggressive[ly]").
        beta: float = spec(0.2, ge=0.0, le=1000.0, help="degree of mixup: lambda_weak = beta tanh(r - 1) (Eq. 7)",
                           ref="paper Table 5 (CREMA-D: 0.2, recipes/cremad.yaml)")
        rho_stat: str = spec("score", choices=("score", "acc"),
                             help="rho from summed true-class probabilities (Eq. 6) or from accuracies", ref="paper Eq. 6")
        lambda_map: str = spec("scaled", choices=("scaled", "inside"),
                               help="beta tanh(r - 1) (scaled) or tanh(beta (r - 1)) (inside)", ref="paper Eq. 7")
        rho_split: str = spec("train", choices=("train", "val"),
                              help="rho over the train split (the paper) or the held-out val split (mmvid's option)",
                              ref="paper Sec. 3.3 (train)")
        stage: str = spec("feature", choices=("feature", "input"),
                          help="mix the weak modality's feature (Fig. 3) or its input (Sec. 3.3 text)", ref="paper Fig. 3")
        unimodal: str = spec("mask", choices=("mask", "head"),
                             help="unimodal predictions by masking (Eq. 5) or each modality's own head", ref="paper Eq. 5")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        s = self.settings
        # rho over the whole train set each epoch (paper Eq. 6), so no subsampled monitor; on val (rho_split=val)
        # it steers on the validation split, which the engine then evaluates every epoch.
        self.needs_train_scores = "full" if s.rho_split == "train" else False
        self.needs_val_scores = s.rho_split == "val"
        self.stage = s.stage
        self.lambdas = {m: 0.0 for m in modalities}
        self.rho: float | None = None

    @classmethod
    def unimodal_prediction(cls, settings) -> str:
        """``unimodal: head`` gives each modality its own classifier (decision fusion); ``mask`` is Eq. 5."""
        return settings.unimodal

    def setup(self, model, ctx) -> None:
        if self.settings.rho_split == "val" and not len(ctx.splits.val):
            raise MmvidError("augment.args.rho_split=val needs a validation split: set data.val_fraction > 0")

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        # From the end of the previous epoch; None before the first.
        scores = ctx.val_scores if self.settings.rho_split == "val" else ctx.train_scores
        self.lambdas = {m: 0.0 for m in self.modalities}
        if scores is None:
            return
        stat = {m: scores[m]["score" if self.settings.rho_stat == "score" else "correct"] for m in self.modalities}
        self.rho, _ = imbalance(stat, self.modalities)
        if ctx.epoch >= self.settings.warmup:
            self.lambdas = weak_lambdas(stat, self.modalities, self.settings.beta, self.settings.lambda_map)

    def sample(self, y: torch.Tensor, ctx) -> Mix | None:
        mixed = {m: lam for m, lam in self.lambdas.items() if lam > 0}
        if not mixed:
            return None
        perm = random_perm(y.shape[0], y.device, ctx.generator)
        # Only the weak modality's key is in the weights: Mix.apply passes every other input/feature through.
        return Mix(self.stage, perm, mixed, sum(mixed.values()) / len(mixed))

    def log(self) -> dict[str, Any]:
        # Which stated choice the run made, as numbers (metrics.jsonl holds numbers only): 1 = the
        # alternative (input stage; rho from the per-modality heads), 0 = the default.
        return {"bmm_rho": self.rho, **{f"lambda_{m}": lam for m, lam in self.lambdas.items()},
                "bmm_stage_input": int(self.stage == "input"), "bmm_unimodal_head": int(self.settings.unimodal == "head")}

    @classmethod
    def never_acted(cls, settings, records: list[dict[str, Any]]) -> str | None:
        """B-MM mixed in an epoch where a logged ``lambda_<modality>`` was above 0; else it trained as its
        fusion alone (Eq. 7's lambda_weak stayed 0), most often because the warm-up outlasted the run."""
        if not records or any(v > 0 for r in records for k, v in r.items() if k.startswith("lambda_")):
            return None
        if settings.warmup >= len(records):
            return f"B-MM never mixed: warm-up {settings.warmup} >= {len(records)} epochs"
        return "B-MM never mixed: lambda stayed 0 in every epoch"

    def state_dict(self) -> dict[str, Any]:
        return {"lambdas": dict(self.lambdas), "rho": self.rho}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lambdas = dict(state["lambdas"])
        self.rho = state["rho"]
