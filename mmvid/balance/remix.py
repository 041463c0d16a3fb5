"""Data Remixing (Ma, Chen and Deng, ICML 2025, "Improving Multimodal Learning Balance and Sufficiency
through Data Remixing", arXiv:2506.11550; by the seed paper's first author).

Reference: MatthewMaxy/Remix_ICML2025 (commit 6ff72b9), ``train.py`` (``kl_divergence``, ``remix``,
``train_epoch``, ``special_train_epoch``, defaults of ``get_arguments`` and ``scripts/run_train.sh``) and
``models/models.py`` (``AVClassifier``: concat head plus one linear head per modality; ``mode`` zeroes
the other modality's feature in place). BalanceBenchmark has no Remix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.balance.base import Balancer, per_sample_pass, unwrap
from mmvid.distributed.collectives import shard_order
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

REASSEMBLE = ("batch", "sample")


def kl_to_uniform(p: torch.Tensor) -> torch.Tensor:
    """KL(p_i || U) in bits per sample, (B, C) -> (B,) float64: sum_k p~_ik log2(C p~_ik) with
    p~ = clip(p, 1e-9, 1) (not renormalised), as the reference's ``kl_divergence``. Low KL = a flat,
    unconfident prediction: the sample is hard for that modality."""
    q = p.double().clamp(1e-9, 1.0)
    return (q * torch.log2(q * p.shape[1])).sum(1)


def assign_modalities(kl: torch.Tensor) -> torch.Tensor:
    """(N, M) KL per sample and modality -> (N,) index of the modality that trains the sample: the one
    whose prediction is least confident (smallest KL). Ties go to the later modality, as the reference's
    ``audio if KL_a < KL_v else video``."""
    m = kl.shape[1]
    return (m - 1) - kl.flip(1).argmin(1)


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, mix) -> torch.Tensor:
    """Sum over the rows ``idx`` of the batch of CE(logits, y_idx): logits (n, C) for those rows; with a mix,
    against the rows of its soft target (B, C) (the target modality m's features were mixed towards)."""
    if mix is None:
        return F.cross_entropy(logits.float(), y[idx], reduction="sum")
    target = mix.soft_target(y, logits.shape[1])[idx]
    return -(target * F.log_softmax(logits.float(), dim=1)).sum()


@BALANCERS.register("remix", doc="Data Remixing: after a warm-up, each sample trains only the modality least sure of it, in unimodal batches (Ma et al. 2025).")
class DataRemixing(Balancer):
    """Data Remixing. Per-modality linear heads h_m(z_m) (B, C) come from :meth:`setup`.

    * Warm-up, epochs < ``warmup`` (10): L = CE(f(z), y) + sum_m alpha_m CE(h_m(z_m), y), alpha_m =
      ``alpha`` (0.5; the reference's alpha for audio and beta for video).
    * Decoupling, at the start of every later epoch: one eval-mode pass without augmentation over the
      whole training split (the reference's ``mode='val'`` loader over train.csv) gives
      p_m,i = softmax(h_m(z_m,i)) and KL_m,i = KL(p_m,i || U) (:func:`kl_to_uniform`); sample i is
      assigned to m*(i) = argmin_m KL_m,i (:func:`assign_modalities`): the modality that finds it hardest.
    * Reassembling (``reassemble: batch``, the reference): the epoch's shuffled order is regrouped
      (:meth:`epoch_order`) into one subset per modality, in reverse ``data.modalities`` order (video,
      then audio, as ``special_train_epoch``), each keeping its shuffled order; cut into batches, every
      batch is unimodal except the one batch (per rank) that straddles two subsets. ``sample``: keep the
      plain shuffled order (mixed batches, each sample still trains its own modality).
    * Remixed loss on a batch of B samples, i in S_m when m*(i) = m:
      L = 1/B sum_m sum_{i in S_m} [CE(f(z_i with z_k,i * 0 for k != m), y_i) + gamma_m CE(h_m(z_m,i), y_i)],
      ``gamma`` (1.0; the reference's gamma1 for video, gamma2 for audio). On a unimodal batch this is
      the reference's mean CE of the masked fused logits plus gamma times the unimodal head's. The other
      modalities' features are multiplied by zero, not replaced, so that their encoders get zero
      gradients (the reference zeroes them in place): Adam then still moves them by momentum and weight
      decay, as in the reference. The plain fused loss is not used after the warm-up.

    The reference's epoch runs ceil(n_v / B) + ceil(n_a / B) steps; here the loop's ceil(N / B), the
    straddling batch holding both subsets. alpha and gamma take a number or a mapping modality -> number.
    With a mixing augmentation, the remixed loss replaces the augmentation's own loss and takes each
    modality's mixed target (:func:`mmvid.augment.base.modality_mix`); the reference has no augmentation.
    """

    min_modalities = 2

    @dataclass
    class Settings:
        warmup: int = spec(10, ge=0, le=1_000_000, help="epochs of plain training before reassembling", ref="Remix_ICML2025 train.py")
        alpha: float | dict[str, float] = spec(0.5, ge=0.0, le=1000.0, help="per-modality alpha, one number or one per modality",
                                               ref="Remix_ICML2025 train.py")
        gamma: float | dict[str, float] = spec(1.0, ge=0.0, le=1000.0, help="per-modality gamma, one number or one per modality",
                                               ref="Remix_ICML2025 train.py")
        reassemble: str = spec("batch", choices=REASSEMBLE, help="unimodal batches (reference) or mixed batches per sample",
                               ref="Remix_ICML2025 train.py (batch)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.warmup = self.settings.warmup
        self.alpha = self._per_modality("alpha", 0.5)
        self.gamma = self._per_modality("gamma", 1.0)
        self.reassemble = self.settings.reassemble
        if self.warmup < 0:
            raise MmvidError(f"balance.args.warmup={self.warmup} must be >= 0 (epochs of plain training)")
        self.heads: nn.ModuleDict | None = None
        self.assign: torch.Tensor | None = None  # (N_train,) modality index per position in splits.train
        self.plan: torch.Tensor | None = None  # this rank's epoch order (positions in splits.train)
        self.first_step = 0  # ctx.step at the epoch's start: batch k of the epoch is step first_step + k

    def _per_modality(self, key: str, default: float) -> dict[str, float]:
        value = getattr(self.settings, key)
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(self.modalities))
            if unknown:
                raise MmvidError(f"balance.args.{key} names {unknown}, not in data.modalities {self.modalities}")
            return {m: float(value.get(m, default)) for m in self.modalities}
        try:
            return dict.fromkeys(self.modalities, float(value))
        except (TypeError, ValueError):
            raise MmvidError(f"balance.args.{key}={value!r} must be a number or a mapping modality -> number") from None

    def setup(self, model, ctx) -> nn.Module:
        net = unwrap(model)
        self.heads = nn.ModuleDict({m: nn.Linear(net.encoders[m].output_dim, ctx.num_classes) for m in self.modalities})
        return self.heads

    def decouple(self, ctx) -> torch.Tensor:
        """(N_train, M) KL per training sample and modality; each rank scores its share
        (:func:`~mmvid.balance.base.per_sample_pass`, the heads in eval mode too)."""
        net = unwrap(ctx.model)

        def measure(inputs, y):
            feats = net.encode(inputs)
            return {"kl": torch.stack([kl_to_uniform(F.softmax(self.heads[m](feats[m].float()), dim=1))
                                       for m in self.modalities], 1)}

        widths = {"kl": (len(self.modalities),)}
        return per_sample_pass(ctx, ctx.splits.train, measure, widths, modules=(self.heads,))["kl"]

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        self.first_step = ctx.step
        self.assign = assign_modalities(self.decouple(ctx)) if ctx.epoch >= self.warmup else None

    def epoch_order(self, order: list[int], ctx) -> list[int]:
        if self.assign is not None and self.reassemble == "batch":
            owner = self.assign[torch.as_tensor(order)].tolist()
            order = [i for j in reversed(range(len(self.modalities))) for i, o in zip(order, owner) if o == j]
        self.plan = torch.as_tensor(shard_order(order, ctx.rank, ctx.world_size))
        return order

    def batch_assignment(self, n: int, ctx) -> torch.Tensor:
        """(n,) modality index of each sample of the step's batch, from the epoch's plan."""
        k = ctx.step - self.first_step
        size = ctx.cfg.data.batch_size
        rows = self.plan[k * size:k * size + n] if self.plan is not None else torch.zeros(0)
        if len(rows) != n:
            raise MmvidError(f"balancer remix lost track of the epoch's batches (step {ctx.step}); it needs the "
                             f"training loop's own sampler and data.batch_size per batch")
        return self.assign[rows]

    def loss(self, loss, out, inputs, y, ctx):
        feats = out.features
        if self.assign is None:  # warm-up: train_epoch
            extra = [self.alpha[m] * mixed_cross_entropy(self.heads[m](feats[m].float()), y, modality_mix(out.mix, m))
                     for m in self.modalities]
            return loss + sum(extra)
        owner = self.batch_assignment(len(y), ctx).to(y.device)
        net, total = unwrap(ctx.model), 0.0
        for j, m in enumerate(self.modalities):
            idx = (owner == j).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            mix = modality_mix(out.mix, m)
            alone = net.masked_logits(out.raw, {m}, out.mix, rows=idx, keep_graph=True)  # the others zeroed (x * 0)
            fused = summed_cross_entropy(alone, y, idx, mix)
            own = summed_cross_entropy(self.heads[m](feats[m][idx].float()), y, idx, mix)
            total = total + fused + self.gamma[m] * own
        return total / len(y)

    def log(self) -> dict[str, Any]:
        if self.assign is None:
            return {"remix_active": 0.0}
        share = torch.bincount(self.assign, minlength=len(self.modalities)).double() / max(len(self.assign), 1)
        return {"remix_active": 1.0, **{f"remix_share_{m}": float(share[j]) for j, m in enumerate(self.modalities)}}

    def state_dict(self) -> dict[str, Any]:
        return {"assign": self.assign, "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.assign, self.first_step = state.get("assign"), int(state.get("first_step", 0))
