"""ReconBoost (Hua, Xu, Bao, Wang, Yang and Huang, ICML 2024, "ReconBoost: Boosting Can Achieve Modality
Reconcilement"): modality-alternating boosting with a reconcilement term and a global rectification of the
ensemble."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS, FUSIONS, check_plugin_settings
from mmvid.schema import spec

ENSEMBLES = ("grown", "full")
OPTIMIZER_STATES = ("fresh", "kept")


def boosting_loss(logits: torch.Tensor, target: torch.Tensor, ensemble: torch.Tensor | None,
                  weight1: float, weight2: float) -> torch.Tensor:
    """Paper Eq. 6-7 as the authors' ``train.py`` computes it, per clip (B,):

        l_i = -(w1 / C) sum_c t_ic log p_ic + (w2 / C) sum_c t_ic q_ic log p_ic
            = (1 / C) (w1 - w2 q_i,y) CE_i            (one-hot t)

    p = softmax(logits) (B, C) of the learner being trained; q = softmax(ensemble) (B, C) of the other
    modalities' ensemble, detached (``None``: an empty ensemble, the authors' constant c0, whose softmax
    over one column is 1); t (B, C) the one-hot (or mixed) target. Clips the others already get right weigh
    less: the reconcilement (``mean(-1)`` over classes gives the 1 / C)."""
    logp = F.log_softmax(logits.float(), dim=1)
    q = torch.ones_like(logp) if ensemble is None else F.softmax(ensemble.detach().float(), dim=1)
    return (-weight1 * target * logp).mean(1) + (weight2 * target * q * logp).mean(1)


@BALANCERS.register("reconboost", doc="ReconBoost: one modality per stage (boosting loss vs the others' ensemble), then ensemble rectification.")
class ReconBoost(Balancer):
    """ReconBoost (reference: huacong/ReconBoost ``train.py``, ``models/dynamic_net.py`` ``DynamicNet``,
    ``schedule.py`` (``fixed_mode``) at 441eb51; BalanceBenchmark ``balancemm/trainer/ReconBoost_trainer.py``
    and ``BaseClassifierReconBoostModel`` in ``balancemm/models/avclassify_model.py``). Needs ``--fusion shared``
    with ``fusion_args.combine: boost``: one head f shared by every modality and the ensemble
    F(x) = beta sum_m f(z_m) (B, C), beta a trained scalar (``DynamicNet.boost_rate``), which is also the
    test-time output.

    Training runs in stages of ``epochs_per_stage`` + ``correct_epochs`` epochs (one mmvid epoch each);
    stage s trains modality m = data.modalities[s mod M] (``schedule_model``, fixed mode):

    * phase 1 (``epochs_per_stage`` epochs), the boosting step (paper Eq. 6-7, :func:`boosting_loss`):
      L = mean_i l_i + alpha * MSE(softmax(f(z_m)), softmax(f(z_pre))) on the learner f(z_m) against the
      detached ensemble of the *other* modalities, beta sum_{k != m} f(z_k); pre = the modality before m
      (cyclically). The MSE (the paper's memory consolidation) is on detached predictions in both
      references, so it changes the reported loss and no gradient; it is left out before stage
      ``ga_from`` (the authors: 1; BalanceBenchmark: its epoch 0, i.e. M with 1 + 1 epochs per stage). Only
      encoder m and the head receive gradients;
    * phase 2 (``correct_epochs`` epochs), global rectification: CE(beta sum_k f(z_k), y) over the
      ensemble's modalities; every encoder in it, the head and beta receive gradients.

    ``balance.args``: ``weight1`` 5, ``weight2`` 1, ``alpha`` 0.5, ``epochs_per_stage`` 4,
    ``correct_epochs`` 4, ``ga_from`` 1 (the authors' defaults; BalanceBenchmark: 1, 1 and M); ``ensemble``: ``grown``
    (the authors: a modality joins the ensemble after its first phase 1, so stage 0's learner faces the
    empty ensemble and phase 2 of stage 0 trains audio alone) or ``full`` (BalanceBenchmark: every
    modality from the start); ``optimizer``: ``fresh`` (the authors build a new SGD at each phase:
    momentum restarts) or ``kept`` (BalanceBenchmark: one optimizer throughout). The phase follows from
    the epoch number, so a resume needs no state.

    One process only: a phase-1 step leaves the other encoders and beta without gradients, which DDP's
    reducer refuses.
    """

    @dataclass
    class Settings:
        weight1: float = spec(5.0, ge=0.0, le=1000.0, help="weight of the boosting loss", ref="ReconBoost train.py")
        weight2: float = spec(1.0, ge=0.0, le=1000.0, help="weight of the reconcilement term", ref="ReconBoost train.py")
        alpha: float = spec(0.5, ge=0.0, le=1000.0, help="weight of the gradient-ascent correction", ref="ReconBoost train.py")
        epochs_per_stage: int = spec(4, ge=1, le=1_000_000, help="epochs of each modality's stage", ref="ReconBoost train.py")
        correct_epochs: int = spec(4, ge=0, le=1_000_000, help="epochs of the global correction", ref="ReconBoost train.py")
        ga_from: int = spec(1, ge=0, le=1_000_000, help="first stage with the gradient-ascent term", ref="ReconBoost train.py; BalanceBenchmark M")
        ensemble: str = spec("grown", choices=ENSEMBLES, help="the grown ensemble (authors' DynamicNet) or every modality (BalanceBenchmark)",
                             ref="ReconBoost dynamic_net.py (grown); BalanceBenchmark full")
        optimizer: str = spec("fresh", choices=OPTIMIZER_STATES, help="a new SGD per phase (authors) or one kept (BalanceBenchmark)",
                              ref="ReconBoost train.py (fresh); BalanceBenchmark kept")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.weight1 = self.settings.weight1
        self.weight2 = self.settings.weight2
        self.alpha = self.settings.alpha
        self.e1 = self.settings.epochs_per_stage
        self.e2 = self.settings.correct_epochs
        self.ga_from = self.settings.ga_from
        if self.e1 < 1 or self.e2 < 0:
            raise MmvidError(f"balance.args.epochs_per_stage={self.e1} and correct_epochs={self.e2}: give "
                             f"epochs_per_stage >= 1 and correct_epochs >= 0 (the authors' 4 and 4)")
        self.ensemble = self.settings.ensemble
        self.optimizer = self.settings.optimizer

    def check(self, model_cfg, augment_name: str) -> None:
        super().check(model_cfg, augment_name)
        if model_cfg.fusion != "shared" or check_plugin_settings(FUSIONS, "shared", model_cfg.fusion_args).combine != "boost":
            raise MmvidError(f"balancer 'reconboost' boosts one head shared by every modality: use --fusion shared "
                             f"with model.fusion_args.combine: boost (got fusion {model_cfg.fusion!r}, fusion_args "
                             f"{dict(model_cfg.fusion_args)}; recipes/methods/reconboost.yaml sets them)")

    def setup(self, model, ctx):
        if ctx.world_size > 1:
            raise MmvidError("balancer 'reconboost' trains one modality's encoder per phase-1 step, which DDP refuses; "
                             "train it in one process (no --gpus / torchrun)")
        return None

    # ------------------------------------------------------------------ schedule

    def schedule(self, epoch: int) -> tuple[int, int, str]:
        """(stage, phase 1 or 2, the stage's modality) of a 0-based epoch."""
        stage, pos = divmod(epoch, self.e1 + self.e2)
        return stage, 1 if pos < self.e1 else 2, self.modalities[stage % len(self.modalities)]

    def members(self, stage: int, phase: int) -> list[str]:
        """The ensemble's modalities (data.modalities order): ``grown``, those trained in an earlier phase 1
        (``DynamicNet.add`` after each phase 1); ``full``, all."""
        if self.ensemble == "full":
            return list(self.modalities)
        done = {self.modalities[t % len(self.modalities)] for t in range(stage + (phase == 2))}
        return [m for m in self.modalities if m in done]

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        first = ctx.epoch % (self.e1 + self.e2) in (0, self.e1)
        if self.optimizer == "fresh" and first:  # a new optimizer per phase: momentum (Adam moments) restart
            ctx.optimizer.state.clear()

    # ------------------------------------------------------------------ loss

    def loss(self, loss, out, inputs, y, ctx):
        head = unwrap(ctx.model).head
        stage, phase, m = self.schedule(ctx.epoch)
        members = self.members(stage, phase)
        # f(z_k) from each feature, not from slices of h: a slice's backward would hand every other encoder a
        # zero gradient, which momentum and weight decay turn into a step (the reference leaves them alone).
        logits = {k: head.classifier(z) for k, z in out.features.items()}  # k -> (B, C)
        beta = head.boost_rate
        if phase == 2:
            if len(members) == len(self.modalities):
                value = loss  # the fused output is the whole ensemble: the augmentation's own loss
            else:
                mix = None if out.mix is None or out.mix.stage == "fused" else out.mix  # f(z_k) sees no fused mix
                value = mixed_cross_entropy(beta * sum(logits[k] for k in members), y, mix)
            self.stats.add({"reconboost_ensemble_loss": float(value.detach()), "reconboost_beta": float(beta.detach()),
                            "reconboost_stage": float(stage), "reconboost_phase": 2.0})
            return value
        others = [k for k in members if k != m]
        with torch.no_grad():
            ensemble = beta * sum(logits[k] for k in others) if others else None
        mix = modality_mix(out.mix, m)
        target = F.one_hot(y, logits[m].shape[1]).float() if mix is None else mix.soft_target(y, logits[m].shape[1])
        boost = boosting_loss(logits[m], target, ensemble, self.weight1, self.weight2).mean()
        value, stats = boost, {"reconboost_boost_loss": float(boost.detach()), "reconboost_stage": float(stage),
                        "reconboost_phase": 1.0}
        if stage >= self.ga_from and self.alpha:
            pre = self.modalities[(self.modalities.index(m) - 1) % len(self.modalities)]
            ga = F.mse_loss(F.softmax(logits[m].detach().float(), 1), F.softmax(logits[pre].detach().float(), 1))
            value = value + self.alpha * ga
            stats["reconboost_ga_loss"] = float(ga)
        self.stats.add(stats)
        return value

