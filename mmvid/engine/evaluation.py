"""Evaluation after an epoch, and the train-set imbalance monitor (paper Fig. 1).

:func:`evaluate_model` is one eval-mode pass over a split: fused accuracy and loss, and each modality's
accuracy and score by masking (Eq. 5). :func:`evaluate_epoch` runs it on val, test and the monitor's train rows
after an epoch and sets what steers methods (``ctx.train_scores`` / ``val_scores``). How the best epoch is
chosen (:func:`selection_score`) is here too, beside what it is chosen on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmvid.config import TrainConfig
from mmvid.data.torch_dataset import check_finite_inputs
from mmvid.engine.context import TrainContext
from mmvid.engine.loaders import to_device
from mmvid.engine.runtime import autocast
from mmvid.measures import eval_mode, imbalance_factor
from mmvid.models.classifier import MultimodalClassifier


@dataclass
class EvalResult:
    """Fused and per-modality (Eq. 5 masking) results over one split."""

    n: int
    loss: float
    correct: int
    modality_correct: dict[str, int]
    modality_score: dict[str, float]  # s_m = sum_i p_m,i[y_i]
    preds: np.ndarray | None = None
    labels: np.ndarray | None = None
    modality_preds: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def acc(self) -> float:
        return self.correct / max(self.n, 1)

    def modality_acc(self, m: str) -> float:
        return self.modality_correct[m] / max(self.n, 1)

    def scores(self) -> dict[str, dict[str, float]]:
        """What steers methods (``ctx.train_scores``/``val_scores``): per modality {"score": s_m (Eq. 5),
        "correct", "n"}."""
        return {m: {"score": s, "correct": float(self.modality_correct[m]), "n": float(self.n)}
                for m, s in self.modality_score.items()}


@torch.no_grad()
def evaluate_model(model: MultimodalClassifier, loader: DataLoader, device: torch.device, amp: str = "off",
                   keep: bool = False, keep_features: bool = False, reduce=None,
                   transform=None) -> EvalResult:
    """Eval-mode pass: fused accuracy and loss, and per-modality accuracy and score by masking.

    ``transform(inputs, y) -> inputs`` perturbs the batch (robustness); ``reduce`` sums across ranks.
    """
    mods = model.modalities
    n = correct = 0
    loss_sum = 0.0
    mcorrect = {m: 0 for m in mods}
    mscore = {m: 0.0 for m in mods}
    preds, labels, mpreds, feats = [], [], {m: [] for m in mods}, {}
    cache_path = getattr(getattr(loader, "dataset", None), "path", None)
    with eval_mode(model):  # the model's own mode again afterwards, also on an error
        for inputs, y in loader:
            inputs, y = to_device(inputs, device), y.to(device)
            clean = inputs
            if transform is not None:
                inputs = transform(inputs, y)
            with autocast(device, amp):
                out = model(inputs)
                uni = model.unimodal_logits(out.raw)
            logits = out.logits.float()
            batch_loss = float(F.cross_entropy(logits, y, reduction="sum"))
            if not np.isfinite(batch_loss):  # a damaged cache must not pass as a poor model
                check_finite_inputs(clean, cache_path, " in evaluation")
            loss_sum += batch_loss
            p = logits.argmax(1)
            correct += int((p == y).sum())
            n += len(y)
            for m in mods:
                lm = uni[m].float()
                mcorrect[m] += int((lm.argmax(1) == y).sum())
                mscore[m] += float(lm.softmax(1).gather(1, y[:, None]).sum())
                if keep:
                    mpreds[m].append(lm.argmax(1).cpu())
            if keep:
                preds.append(p.cpu())
                labels.append(y.cpu())
            if keep_features:
                for k, v in {**out.features, "fused": out.fused}.items():
                    feats.setdefault(k, []).append(v.float().cpu())
    if reduce is not None:
        vec = torch.tensor([n, correct, loss_sum] + [mcorrect[m] for m in mods] + [mscore[m] for m in mods], dtype=torch.float64)
        vec = reduce(vec)
        n, correct, loss_sum = int(vec[0]), int(vec[1]), float(vec[2])
        mcorrect = {m: int(vec[3 + i]) for i, m in enumerate(mods)}
        mscore = {m: float(vec[3 + len(mods) + i]) for i, m in enumerate(mods)}
    res = EvalResult(n, loss_sum / max(n, 1), correct, mcorrect, mscore)
    if keep:
        res.preds, res.labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
        res.modality_preds = {m: torch.cat(v).numpy() for m, v in mpreds.items()}
    if keep_features:
        res.features = {k: torch.cat(v).numpy() for k, v in feats.items()}
    return res


def rho_of(res: EvalResult, modalities: list[str]) -> float | None:
    """Eq. 6 on an evaluation pass (summed true-class probabilities)."""
    if len(modalities) < 2:
        return None
    return imbalance_factor({m: res.modality_score[m] for m in modalities})


def train_scores_need(plugin: Any) -> str | None:
    """What a plug-in's ``needs_train_scores`` asks of the monitor: None, "any" or "full" (True = "full")."""
    need = getattr(plugin, "needs_train_scores", False)
    return "full" if need is True else (need or None)


def monitor_plan(cfg: TrainConfig, augment: Any, balancer: Any) -> tuple[float, str | None]:
    """The fraction of the train rows the monitor evaluates after every epoch, and a note when a plug-in
    needs more than ``monitor_train`` asks for (it then gets what it needs, e.g. the whole train set)."""
    needs = {f"augment.name={cfg.augment.name}": train_scores_need(augment),
             f"balance.name={cfg.balance.name}": train_scores_need(balancer)}
    full = [name for name, need in needs.items() if need == "full"]
    want = float(cfg.monitor_train)
    if full and want < 1.0:
        return 1.0, (f"monitor_train={want:g} raised to 1: {', '.join(full)} steers on statistics over the whole "
                     f"train set each epoch")
    if want == 0.0 and any(needs.values()):
        some = [name for name, need in needs.items() if need]
        return 1.0, (f"monitor_train=0 raised to 1: {', '.join(some)} steers on train-set statistics each epoch; "
                     f"set monitor_train to a fraction in (0, 1) to measure them on a subsample")
    return want, None


def monitor_rows(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The train rows the monitor evaluates: all of them (``fraction`` 1), none (0), or round(fraction * N)
    (at least 1) drawn without replacement by a generator of its own seeded with (seed, "monitor"), in
    cache order. The same rows every epoch (curves stay comparable) and after a resume; each rank of
    DDP then evaluates every world_size-th of them."""
    if fraction >= 1.0 or not len(rows):
        return rows
    if fraction <= 0.0:
        return rows[:0]
    n = max(1, round(fraction * len(rows)))
    rng = np.random.default_rng([seed, int.from_bytes(b"monitor", "little")])
    return rows[np.sort(rng.choice(len(rows), size=n, replace=False))]


def evaluates_at(cfg: TrainConfig, epoch: int) -> bool:
    """Whether val and test are evaluated (and logged) after ``epoch`` (0-based): every ``eval_every``-th
    epoch and always the last."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch + 1 >= cfg.epochs


def evaluate_epoch(ctx: TrainContext, loaders: dict[str, Any], monitor: Any | None, held_out: bool,
                   steer_val: bool = False, reduce=None) -> dict[str, Any]:
    """The evaluation after an epoch: val and test (``loaders``) when ``held_out``, else val alone when a
    plug-in steers on it (``steer_val``; not logged then), and the train-set monitor when ``monitor`` is a
    loader. Sets ctx.train_scores / val_scores / val_losses; returns the epoch's metrics keys
    ({split}_acc, _loss, _acc_<m>, _rho; rho and s_<m> from the monitor; eval_seconds).

    It runs on a copy of the CPU random state (a DataLoader draws its base seed from it), so whether
    and how much is evaluated never changes the training that follows.
    """
    t0 = time.time()
    names = [k for k in loaders if held_out or (k == "val" and steer_val)]
    with torch.random.fork_rng(devices=[]):
        results = {k: evaluate_model(ctx.model, loaders[k], ctx.device, ctx.cfg.amp, reduce=reduce) for k in names}
        if monitor is not None:
            results["train"] = evaluate_model(ctx.model, monitor, ctx.device, ctx.cfg.amp, reduce=reduce)
            ctx.train_scores = results["train"].scores()
    if "val" in results:
        ctx.val_scores = results["val"].scores()
        ctx.val_losses = {"fused": results["val"].loss}
        if not held_out:
            del results["val"]
    rec: dict[str, Any] = {}
    mods = ctx.modalities
    for split, res in results.items():
        rec[f"{split}_acc"] = res.acc
        rec[f"{split}_loss"] = res.loss
        for m in mods:
            rec[f"{split}_acc_{m}"] = res.modality_acc(m)
        if len(mods) >= 2:
            rec[f"{split}_rho"] = rho_of(res, mods)
    if "train" in results:
        rec["rho"] = rec.get("train_rho")
        for m in mods:
            rec[f"s_{m}"] = results["train"].modality_score[m]
    rec["eval_seconds"] = time.time() - t0
    return rec


def selection_score(best: dict[str, Any]) -> float:
    """The accuracy a run's best epoch was chosen by: val, or test where it was selected on test. A best
    saved before ``selected_on`` existed kept the chosen accuracy under ``val_acc`` (test without val)."""
    score = best["val_acc"] if "val_acc" in best else best.get("test_acc")
    return -1.0 if score is None else float(score)


def best_selected_on(summary: dict[str, Any]) -> str:
    """``val`` or ``test``: what a run's best epoch (summary.json ``best``) was chosen on. A summary written
    before ``selected_on`` existed chose on val exactly when its epochs logged val_acc."""
    best = summary.get("best", {})
    return best.get("selected_on") or ("val" if "val_acc" in summary.get("last", {}) else "test")
