"""Sample-level modality valuation (Wei, Feng, Sun and Hu, CVPR 2024, "Enhancing Multimodal Cooperation
via Sample-level Modality Valuation", the Valuate-and-Enhance method).

Reference: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py`` (commit 01f7e56:
``execute_modulation``, ``train_epoch``, defaults of ``get_arguments``), ``code/modality_level.py`` and
``code/datasets/dataloader.py`` (``AV_KS_Dataset_sample_level``, ``AV_KS_Dataset_modality_level``: which
samples are copied, how often, and which modality each copy drops), ``code/models/models.py``
(``AVClassifier.forward(drop)``, ``exec_drop``: the dropped modality's pooled feature is set to zero before
the concat head). BalanceBenchmark's version (GeWu-Lab/BalanceBenchmark ``balancemm/trainer/Sample_trainer.py``,
``evaluation/modalitys.py: Calculate_Shapley_Sample``, ``datasets/__init__.py: create_dataset_sample_level``)
is ``valuation: balancebenchmark``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmvid.augment.base import modality_mix
from mmvid.balance.base import Balancer, per_sample_pass, unwrap
from mmvid.balance.remix import summed_cross_entropy
from mmvid.distributed.collectives import shard_order
from mmvid.errors import MmvidError
from mmvid.measures import coalitions, shapley_values
from mmvid.registry import BALANCERS
from mmvid.schema import spec

LEVELS = ("sample", "modality")
VALUATIONS = ("original", "balancebenchmark")
FUNCS = ("linear", "tanh", "square")
CROPS = ("train", "eval")
# Resampling bins of AV_KS_Dataset_sample_level (lo < phi < hi -> copies); BalanceBenchmark's top bin ends at 1.
BINS = {"original": ((0.4, 0.9, 1), (-0.1, 0.4, 2), (-math.inf, -0.1, 3)),
        "balancebenchmark": ((0.4, 1.0, 1), (-0.1, 0.4, 2), (-math.inf, -0.1, 3))}


def coalition_logits(net, raw: dict[str, torch.Tensor]) -> dict[tuple[str, ...], torch.Tensor]:
    """S -> (B, C) logits of the fused model with every modality outside S absent (``exec_drop``: its feature
    zeroed, :meth:`~mmvid.models.classifier.MultimodalClassifier.masked_logits` on the encoder features ``raw``
    m -> (B, d_m); the whole set is the plain fused prediction)."""
    return {S: net.masked_logits(raw, S) for S in coalitions(list(raw))}


def shapley(correct: dict[tuple[str, ...], torch.Tensor], modalities: list[str], valuation: str = "original") -> torch.Tensor:
    """Per-sample Shapley value of every modality (paper Eq. 3-4), (N, M) float64, from ``correct``:
    S -> (N,) bool, whether the prediction from coalition S alone is right.

    phi_m = sum_{S subset of M \\ {m}} |S|! (|M| - |S| - 1)! / |M|! (v(S + m) - v(S)), v(empty) = 0
    (:func:`mmvid.measures.shapley_values`).
    ``original``: v(S) = |S| if S predicts right, else 0 (sample_level.py: value_all = 2, value_a = value_v = 1,
    so phi_a = (v_a + v_av - v_v) / 2). ``balancebenchmark``: v(S) = 1[S predicts right] and the sum runs
    over non-empty S only (Calculate_Shapley_Sample; its ``generate_all_combinations(include_empty=True)``
    leaves the empty set out).
    """
    values = {S: hit.double() * (len(S) if valuation == "original" else 1) for S, hit in correct.items()}
    phi = shapley_values(values, modalities, include_empty=valuation == "original")
    return torch.stack([phi[m] for m in modalities], 1)


def copies(phi: torch.Tensor, valuation: str = "original") -> torch.Tensor:
    """(N, M) Shapley values -> (N, M) extra copies of sample i that train modality m alone: 1 when
    0.4 < phi < 0.9 (1.0 for balancebenchmark), 2 when -0.1 < phi < 0.4, 3 when phi < -0.1, else 0
    (the bounds are strict, as in the reference)."""
    out = torch.zeros(phi.shape, dtype=torch.long)
    for lo, hi, k in BINS[valuation]:
        out[(phi > lo) & (phi < hi)] = k
    return out


def sample_level_entries(phi: torch.Tensor, valuation: str = "original") -> list[tuple[int, int]]:
    """The epoch's training set as (sample position, focus) entries, in the order AV_KS_Dataset_sample_level
    builds it: every sample once with focus -1 (all modalities), then for each sample i and modality m
    (``data.modalities`` order) its copies with focus m (every other modality's feature zeroed)."""
    n, n_mod = phi.shape
    k = copies(phi, valuation).tolist()
    return [(i, -1) for i in range(n)] + [(i, j) for i in range(n) for j in range(n_mod) for _ in range(k[i][j])]


def modality_level_entries(phi: torch.Tensor, part_ratio: float, alpha: float, func: str,
                           rng: np.random.RandomState) -> tuple[list[tuple[int, int]], float]:
    """modality_level.py: the mean phi over a random subset Z of ``int(N * part_ratio)`` samples (drawn with
    replacement, ``rng.choice``) gives gap_m = 1 - mean_Z phi_m; d = |gap_a - gap_v| * 2 / 3 (for more
    modalities max_m gap_m - min_m gap_m); ``linear``: p = alpha d, ``tanh``: tanh(alpha d), ``square``:
    alpha d^1.5; then ``int(p N)`` samples (with replacement) get one copy training the modality with the
    largest gap alone (audio when gap_a > gap_v, else video, as the reference). Returns (entries, p)."""
    n, n_mod = phi.shape
    num = max(int(n * part_ratio), 1)  # the reference divides by zero below one sample
    choice = rng.choice(n, num)
    mean = phi[torch.as_tensor(choice, dtype=torch.long)].sum(0) / num
    gap = (1.0 - mean).tolist()
    d = (max(gap) - min(gap)) / 3 * 2
    p = {"linear": d * alpha, "tanh": math.tanh(d * alpha), "square": d ** 1.5 * alpha}[func]
    picks = rng.choice(n, int(p * n))
    weak = max(range(n_mod), key=lambda j: (gap[j], j))  # a tie goes to the later modality (video), as the reference
    return [(i, -1) for i in range(n)] + [(int(i), weak) for i in picks], p


@BALANCERS.register("valuate", doc="Sample-level modality valuation: per-sample Shapley contributions; low-contribution modalities are re-trained alone on resampled copies (Wei et al. 2024).")
class SampleValuation(Balancer):
    """Valuate-and-Enhance.

    * Warm-up, epochs < ``warmup`` (5): plain training.
    * Valuation, at the start of every later epoch (the reference: after each epoch >= warmup - 1, for the
      next): one eval-mode, no-gradient pass over the whole training split (with training crops/flips as the
      reference's ``train_val_dataset``, ``valuation_crops: train``; ``eval`` without them) gives, per sample
      and non-empty coalition S, whether argmax classify(z with z_k = 0 for k not in S) = y; from these the
      per-sample Shapley values phi_i,m (:func:`shapley`, paper Eq. 3-4).
    * Enhancement, ``level: sample`` (sample_level.py): every sample once, plus copies of sample i that train
      modality m alone, 1/2/3 copies for phi_i,m in (0.4, 0.9) / (-0.1, 0.4) / below -0.1
      (:func:`copies`); ``level: modality`` (modality_level.py, ``part_ratio`` 0.2, ``alpha`` 1, ``func``
      linear): :func:`modality_level_entries`. The extended set is shuffled (:meth:`epoch_order`, a
      permutation seeded by seed + epoch, as the sampler's), so the epoch grows by the number of copies.
    * Loss on a batch of B entries (``train_epoch``): L = 1/B sum_i CE(f(z_i masked), y_i), where an entry
      with focus m has every other modality's feature multiplied by zero before the fusion (the reference sets
      it to zero in place: the other encoders get zero gradient from that entry), focus -1 the plain fused
      logits. With a mixing augmentation the plain entries take the mix's target and the augmentation's own
      loss is replaced on batches holding copies; the focus-m entries take m's mixed target
      (:func:`mmvid.augment.base.modality_mix`); the reference has no augmentation.
    """

    min_modalities = 2

    @dataclass
    class Settings:
        warmup: int = spec(5, ge=0, le=1_000_000, help="epochs before the first valuation", ref="Valuate-and-Enhance sample_level.py")
        level: str = spec("sample", choices=LEVELS, help="sample-level (sample_level.py) or modality-level (modality_level.py)",
                          ref="Valuate-and-Enhance sample_level.py / modality_level.py")
        valuation: str = spec("original", choices=VALUATIONS, help="the authors' valuation bins or BalanceBenchmark's",
                              ref="Valuate-and-Enhance sample_level.py (original)")
        func: str = spec("linear", choices=FUNCS, help="resampling function of the modality level",
                         ref="AV_KS_Dataset_modality_level func")
        valuation_crops: str = spec("train", choices=CROPS, help="valuation inputs with train-time crops (reference) or eval crops",
                                    ref="Valuate-and-Enhance (train)")
        part_ratio: float = spec(0.2, ge=0.0, le=1.0, help="fraction of the samples re-valued", ref="Valuate-and-Enhance")
        alpha: float = spec(1.0, ge=0.0, le=1000.0, help="strength of the resampling", ref="Valuate-and-Enhance")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.warmup = self.settings.warmup
        self.level = self.settings.level
        self.valuation = self.settings.valuation
        self.func = self.settings.func
        self.crops = self.settings.valuation_crops
        self.part_ratio = self.settings.part_ratio
        self.alpha = self.settings.alpha
        if self.warmup < 0:
            raise MmvidError(f"balance.args.warmup={self.warmup} must be >= 0 (epochs of plain training)")
        if not 0 < self.part_ratio <= 1:
            raise MmvidError(f"balance.args.part_ratio={self.part_ratio} must be in (0, 1] (the share of samples Z)")
        self.phi: torch.Tensor | None = None  # (N_train, M) Shapley values of the epoch's valuation
        self.prob = 0.0  # modality level: the share p of resampled samples
        self.plan: torch.Tensor | None = None  # (n_rank, 2) this rank's epoch: (position in splits.train, focus)
        self.first_step = 0

    def valuate(self, ctx) -> torch.Tensor:
        """(N_train, M) per-sample Shapley values; each rank scores its share
        (:func:`~mmvid.balance.base.per_sample_pass`)."""
        net = unwrap(ctx.model)

        def measure(inputs, y):
            logits = coalition_logits(net, net.encode(inputs, calibrate=False))
            return {S: lg.float().argmax(1) == y for S, lg in logits.items()}

        hits = per_sample_pass(ctx, ctx.splits.train, measure, dict.fromkeys(coalitions(self.modalities), ()),
                               train=self.crops == "train")
        return shapley({S: hit > 0.5 for S, hit in hits.items()}, self.modalities, self.valuation)

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        self.first_step = ctx.step
        self.phi = self.valuate(ctx) if ctx.epoch >= self.warmup else None

    def entries(self, ctx) -> list[tuple[int, int]]:
        """The epoch's (position, focus) entries before shuffling (same on every rank)."""
        if self.level == "sample":
            return sample_level_entries(self.phi, self.valuation)
        rng = np.random.RandomState((int(ctx.cfg.seed) + ctx.epoch) % 2**32)  # the same draws on every rank
        out, self.prob = modality_level_entries(self.phi, self.part_ratio, self.alpha, self.func, rng)
        return out

    def epoch_order(self, order: list[int], ctx) -> list[int]:
        if self.phi is None:
            self.plan = None
            return order
        entries = torch.as_tensor(self.entries(ctx), dtype=torch.long).reshape(-1, 2)
        g = torch.Generator().manual_seed(int(ctx.cfg.seed) + ctx.epoch)
        entries = entries[torch.randperm(len(entries), generator=g)]
        self.plan = entries[torch.as_tensor(shard_order(list(range(len(entries))), ctx.rank, ctx.world_size))]
        return entries[:, 0].tolist()

    def batch_focus(self, y: torch.Tensor, ctx) -> torch.Tensor:
        """(B,) focus of each entry of the step's batch (-1: all modalities), from the epoch's plan."""
        k, size, n = ctx.step - self.first_step, ctx.cfg.data.batch_size, len(y)
        plan = self.plan[k * size:k * size + n] if self.plan is not None else torch.zeros(0, 2, dtype=torch.long)
        if len(plan) != n:
            raise MmvidError(f"balancer valuate lost track of the epoch's batches (step {ctx.step}); it needs the "
                             f"training loop's own sampler and data.batch_size per batch")
        return plan[:, 1].to(y.device)

    def loss(self, loss, out, inputs, y, ctx):
        if self.phi is None:
            return loss
        focus = self.batch_focus(y, ctx)
        if not (focus >= 0).any():
            return loss
        net, total = unwrap(ctx.model), 0.0
        plain = (focus < 0).nonzero().squeeze(1)
        if len(plain):
            total = total + summed_cross_entropy(out.logits[plain], y, plain, out.mix)
        for j, m in enumerate(self.modalities):
            idx = (focus == j).nonzero().squeeze(1)
            if len(idx):
                alone = net.masked_logits(out.raw, {m}, out.mix, rows=idx, keep_graph=True)
                total = total + summed_cross_entropy(alone, y, idx, modality_mix(out.mix, m))
        return total / len(y)

    def log(self) -> dict[str, Any]:
        if self.phi is None:
            return {"valuate_active": 0.0}
        rec = {"valuate_active": 1.0}
        k = copies(self.phi, self.valuation)
        for j, m in enumerate(self.modalities):
            rec[f"valuate_phi_{m}"] = float(self.phi[:, j].mean())
            if self.level == "sample":
                rec[f"valuate_copies_{m}"] = float(k[:, j].sum())
        if self.level == "modality":
            rec["valuate_p"] = float(self.prob)
        return rec

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi, "first_step": self.first_step, "prob": float(self.prob)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi, self.first_step = state.get("phi"), int(state.get("first_step", 0))
        self.prob = float(state.get("prob", 0.0))
