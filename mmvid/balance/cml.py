"""CML (Ma et al., ICML 2023): calibrate multimodal learning so that removing a modality never raises confidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmvid.augment.base import mixed_cross_entropy
from mmvid.balance.base import Balancer, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import spec

PENALTIES = ("sample", "batch")
ORDERS = ("sample", "epoch")


def removal_chain(model, out, orders: torch.Tensor) -> list[torch.Tensor]:
    """Predictions with 0, 1, ..., M-1 modalities removed: M logits (B, C), the first ``out.logits``.

    orders: (B, M) modality indices (in ``model.modalities`` order), row i = the order in which sample i loses
    its modalities; prediction j has the modalities orders[i, :j] absent (paper Eq. 5's masking, per sample:
    :meth:`~mmvid.models.classifier.MultimodalClassifier.masked_features` with a (M, B) mask, features multiplied
    by 0; for the concat head W [z_1; ...; z_M] + b the reference's out - (W_r z_r + b/M) + b/M). Fused-stage
    mixing is re-applied, as in the step's own forward.
    """
    net = unwrap(model)
    n_mod = len(net.modalities)
    keep = torch.ones(n_mod, orders.shape[0], device=orders.device)
    rows = torch.arange(orders.shape[0], device=orders.device)
    chain = [out.logits]
    for j in range(n_mod - 1):
        keep = keep.index_put((orders[:, j], rows), keep.new_zeros(()))  # a new mask: autograd keeps the old one
        fused = net.fusion(net.masked_features(out.raw, keep, out.mix))
        if out.mix is not None and out.mix.stage == "fused":
            fused = out.mix.apply({"fused": fused})["fused"]
        chain.append(net.head(fused))
    return chain


def confidence_penalty(more: torch.Tensor, fewer: torch.Tensor, y: torch.Tensor, penalty: str, eps: float = 0.0):
    """The calibration term between a prediction (B, C) and the one with a modality fewer (B, C); a scalar.

    ``sample`` (the authors' ``miwae/train.py`` rank loss: the paper's principle Conf(f(x^T')) <= Conf(f(x^T))
    for T' a subset of T, per sample): sum_i relu((c'_i - c_i) s_i - eps) + relu((c'_i - sg(c_i)) w_i - eps), c = max softmax, s_i = 1
    where the fuller prediction is right ("trick 1"), w_i = 1 where both are wrong ("trick 2", the fuller
    confidence detached). ``batch`` (BalanceBenchmark ``conf_loss``): max(0, sum_i (c'_i - c_i)), one hinge
    on the batch sum.
    """
    conf, pred = more.float().softmax(1).max(1)
    conf_x, pred_x = fewer.float().softmax(1).max(1)
    if penalty == "batch":
        return F.relu((conf_x - conf).sum())
    right = (pred == y).to(conf.dtype)
    both_wrong = ((pred_x != y) & (pred != y)).to(conf.dtype)
    return F.relu((conf_x - conf) * right - eps).sum() + F.relu((conf_x - conf.detach()) * both_wrong - eps).sum()


@BALANCERS.register("cml", doc="CML: penalise a prediction that gets more confident when a modality is removed (lam * ranking hinge).")
class CML(Balancer):
    """Calibrating Multimodal Learning (Ma, Zhang, Zhang, Wu, Fu, Zhou, Hu, ICML 2023, Sec. 4; the authors'
    repository QingyangZhang/CML ``miwae/train.py`` (stage 2: ``cls_loss``, ``rank_loss``; HEAD 85075b5),
    and GeWu-Lab/BalanceBenchmark ``balancemm/trainer/CML_trainer.py`` (``training_step``, ``conf_loss``;
    HEAD 4c1482f), the audio-visual form). Per training step, from the step's features z_m (B, d_m):

        f_0 = the fused logits, f_j = the logits with j modalities removed (features zeroed), j < M
        L = L_aug - CE(f_0) + (1/M) sum_{j<M} CE(f_j) + lam sum_{j<M-1} R(f_j, f_{j+1})

    R is :func:`confidence_penalty` (the CML regularisation, Sec. 4: a less complete input must not be more
    confident; the paper's text was not at hand, so no equation numbers are cited). The order in
    which modalities are removed is random: per sample (``order: sample``, the authors' ``get_multi_mask``)
    or one order for the whole epoch (``order: epoch``, BalanceBenchmark's ``random.shuffle`` per epoch).

    ``balance.args``: lam (0.1: the authors' ``--beta 10`` over 100, README; BalanceBenchmark ``lam`` 0.1),
    penalty (``sample``: the authors' per-sample hinge; ``batch``: BalanceBenchmark), order (``sample`` |
    ``epoch``), eps (0.0: the authors' margin ``--epsilon``; ``sample`` only), start (0) and end (none: the
    last epoch; BalanceBenchmark ``modulation_starts`` 0, ``modulation_ends`` 80), 0-based and inclusive;
    outside [start, end] the loss is the augmentation's. BalanceBenchmark is ``penalty: batch, order: epoch``.
    """

    @dataclass
    class Settings:
        lam: float = spec(0.1, ge=0.0, le=1000.0, help="weight of the calibration term", ref="CML miwae/train.py")
        eps: float = spec(0.0, ge=0.0, le=1000.0, help="margin of the confidence penalty", ref="CML miwae/train.py")
        penalty: str = spec("sample", choices=PENALTIES, help="penalty per sample (the authors' code) or per batch (BalanceBenchmark)",
                            ref="CML miwae/train.py (sample); BalanceBenchmark batch")
        order: str = spec("sample", choices=ORDERS, help="modality-removal order per sample (authors) or per epoch (BalanceBenchmark)",
                          ref="CML miwae/train.py (sample); BalanceBenchmark epoch")
        start: int = spec(0, ge=0, le=1_000_000, help="first epoch (0-based) of the term", ref="CML miwae/train.py")
        end: int | None = spec(None, ge=0, le=1_000_000, help="last epoch (0-based, inclusive); none: to the end", ref="CML miwae/train.py; BalanceBenchmark 80")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.lam = self.settings.lam
        self.eps = self.settings.eps
        self.penalty = self.settings.penalty
        self.order = self.settings.order
        self.start = self.settings.start
        self.end = self.settings.end
        if self.lam < 0 or self.eps < 0:
            raise MmvidError(f"balance.args.lam={self.lam} and eps={self.eps} must be >= 0 (the reference: 0.1 and 0)")
        self.gen: torch.Generator | None = None
        self.removal_order: list[int] = list(range(len(self.modalities)))  # removal order under ``order: epoch``
        self.orders: torch.Tensor | None = None  # (B, M) the last step's removal orders (read by the tests)

    def setup(self, model, ctx):
        # Per-sample orders differ between ranks (their own samples); the epoch order is drawn from the same
        # seed on every rank, so all ranks remove the same modality.
        rank = int(ctx.rank) if self.order == "sample" else 0
        self.gen = torch.Generator().manual_seed(int(ctx.cfg.seed) + 2038074743 + rank)
        return None

    def _generator(self) -> torch.Generator:
        if self.gen is None:
            raise MmvidError("balancer cml was used before setup(model, ctx); the engine calls it after building the model")
        return self.gen

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        if self.order == "epoch":
            self.removal_order = torch.randperm(len(self.modalities), generator=self._generator()).tolist()

    def draw_orders(self, batch: int) -> torch.Tensor:
        """(B, M) removal orders: one random permutation per sample, or the epoch's for every sample."""
        if self.order == "epoch":
            return torch.tensor(self.removal_order).expand(batch, -1)
        return torch.rand(batch, len(self.modalities), generator=self._generator()).argsort(1)

    def loss(self, loss, out, inputs, y, ctx):
        if not self.active(ctx.epoch):
            return loss
        self.orders = self.draw_orders(len(y)).to(y.device)
        chain = removal_chain(ctx.model, out, self.orders)
        ce = [mixed_cross_entropy(f, y, out.mix) for f in chain]
        reg = sum(confidence_penalty(chain[j], chain[j + 1], y, self.penalty, self.eps) for j in range(len(chain) - 1))
        with torch.no_grad():
            conf = [f.float().softmax(1).max(1).values for f in chain]
            rises = torch.stack([(conf[j + 1] > conf[j]).float().mean() for j in range(len(conf) - 1)]).mean()
        self.stats.add({"cml_penalty": float(reg.detach()), "cml_confidence_rises": float(rises)})
        return loss - ce[0] + torch.stack(ce).mean() + self.lam * reg


    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "removal_order": list(self.removal_order)} if self.gen is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "gen" in state and self.gen is not None:
            self.gen.set_state(state["gen"])
        if "removal_order" in state:
            self.removal_order = [int(k) for k in state["removal_order"]]
