"""The one explicit training loop. Balancers and augmentations attach at named hook points
(see :mod:`mmvid.balance.base`); nothing else copies this loop.

Per epoch: augment/balancer ``on_epoch_start`` -> steps (data -> forward+loss -> backward ->
unscale -> ``after_backward`` -> clip -> step) -> evaluation (val, test, and the train-set
imbalance monitor of paper Fig. 1) -> ``on_epoch_end`` -> metrics.jsonl line -> checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmvid.augment.bmm import imbalance
from mmvid.config import CACHE_KEY, TrainConfig, config_from_dict, save_config
from mmvid.data.cache import CacheInfo, read_info
from mmvid.data.dataset import CacheDataset
from mmvid.data.sources import stratified_split
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier, build_model
from mmvid.registry import AUGMENTS, BALANCERS, load_plugins

CKPT_LAST, CKPT_BEST, METRICS = "checkpoint_last.pt", "checkpoint_best.pt", "metrics.jsonl"


# ----------------------------------------------------------------------------- devices, seeds


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MmvidError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------- data


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_splits(info: CacheInfo, val_fraction: float, seed: int) -> Splits:
    """Train/val/test rows. Val comes from the cache's val split, else is held out of train (stratified)."""
    train, val, test = info.indices("train"), info.indices("val"), info.indices("test")
    if len(train) == 0:
        raise MmvidError(f"cache {info.path} has no usable train clips")
    if len(val) == 0 and val_fraction > 0:
        parts = stratified_split(list(info.labels[train]), val_fraction, seed)
        is_val = np.asarray([p == "test" for p in parts])
        train, val = train[~is_val], train[is_val]
    return Splits(train, val, test)


def check_modalities(info: CacheInfo, modalities: list[str]) -> None:
    missing = [m for m in modalities if CACHE_KEY[m] not in info.modalities]
    if missing:
        raise MmvidError(f"cache {info.path.name} has no {', '.join(missing)} data (it holds {', '.join(info.modalities)}); "
                         f"set data.modalities or prepare the cache with that modality")


def make_loader(info: CacheInfo, rows: np.ndarray, cfg: TrainConfig, train: bool, shuffle: bool | None = None,
                sampler=None, batch_size: int | None = None) -> DataLoader:
    ds = CacheDataset(info.path, rows, cfg.data.modalities, train=train, crop_size=cfg.data.crop_size,
                      flip=cfg.data.flip, random_crop=cfg.data.random_crop,
                      flow_bound=float(info.params.get("flow_bound", 20.0)), in_memory=cfg.data.cache_in_memory)
    workers = cfg.data.workers
    return DataLoader(ds, batch_size=batch_size or cfg.data.batch_size,
                      shuffle=(train if shuffle is None else shuffle) and sampler is None, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=False,
                      persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None)


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


# ----------------------------------------------------------------------------- evaluation


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


@torch.no_grad()
def evaluate_model(model: MultimodalClassifier, loader: DataLoader, device: torch.device, amp: str = "off",
                   keep: bool = False, keep_features: bool = False, reduce=None,
                   transform=None) -> EvalResult:
    """Eval-mode pass: fused accuracy and loss, and per-modality accuracy and score by masking.

    ``transform(inputs, y) -> inputs`` perturbs the batch (robustness); ``reduce`` sums across ranks.
    """
    was_training = model.training
    model.eval()
    mods = model.modalities
    n = correct = 0
    loss_sum = 0.0
    mcorrect = {m: 0 for m in mods}
    mscore = {m: 0.0 for m in mods}
    preds, labels, mpreds, feats = [], [], {m: [] for m in mods}, {}
    for inputs, y in loader:
        inputs, y = to_device(inputs, device), y.to(device)
        if transform is not None:
            inputs = transform(inputs, y)
        with autocast(device, amp):
            out = model(inputs)
            uni = model.unimodal_logits(out.features)
        logits = out.logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
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
    model.train(was_training)
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
    return imbalance(res.modality_score, modalities)[0]


# ----------------------------------------------------------------------------- context


@dataclass
class TrainContext:
    """What hooks may read (and, for optimizer / scaler, act on)."""

    cfg: TrainConfig
    model: MultimodalClassifier
    optimizer: torch.optim.Optimizer
    scaler: Any
    device: torch.device
    generator: torch.Generator  # seeded; shared by all ranks so mixing decisions agree
    modalities: list[str]
    num_classes: int
    info: CacheInfo
    splits: Splits
    run_dir: Path
    epoch: int = 0
    step: int = 0
    train_scores: dict[str, dict[str, float]] | None = None  # per modality {"score", "correct", "n"} last epoch
    val_losses: dict[str, float] | None = None
    world_size: int = 1
    rank: int = 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum across ranks (identity in one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            t = t.to(self.device)
            dist.all_reduce(t)
            t = t.cpu()
        return t

    def loader(self, rows: np.ndarray, train: bool = False, shuffle: bool = False) -> DataLoader:
        return make_loader(self.info, rows, self.cfg, train=train, shuffle=shuffle)


# ----------------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise MmvidError(f"no checkpoint at {path}; train first or point to a run folder with {CKPT_LAST}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise MmvidError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def model_from_checkpoint(path: Path) -> tuple[MultimodalClassifier, TrainConfig, dict[str, Any]]:
    """Rebuild the model and its config from a checkpoint file or a run folder (best, else last)."""
    load_plugins()
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_BEST if (path / CKPT_BEST).exists() else path / CKPT_LAST
    ck = load_checkpoint(path)
    cfg = config_from_dict(ck["config"])
    model = build_model(cfg, len(ck["class_names"]))
    model.load_state_dict(ck["model"])
    return model, cfg, ck


# ----------------------------------------------------------------------------- training


def default_run_name(cfg: TrainConfig, dataset: str) -> str:
    parts = [dataset, cfg.model.fusion + ("+cal" if cfg.model.calibrate else ""), cfg.augment.name]
    if cfg.balance.name != "none":
        parts.append(cfg.balance.name)
    return "-".join(parts + [f"s{cfg.seed}", time.strftime("%Y%m%d-%H%M%S")])


def train(cfg: TrainConfig, cache: Path, run_dir: Path, resume: bool = False, progress: bool = True,
          rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train per ``cfg`` on ``cache``; writes config.yaml, metrics.jsonl and checkpoints into ``run_dir``."""
    load_plugins()
    info = read_info(cache)
    check_modalities(info, cfg.data.modalities)
    device = pick_device(cfg.device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise MmvidError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = rank == 0
    seed_everything(cfg.seed)
    splits = make_splits(info, cfg.data.val_fraction, cfg.seed)
    modalities = cfg.data.modalities

    augment = AUGMENTS.build(cfg.augment.name, cfg.augment, modalities)
    balancer = BALANCERS.build(cfg.balance.name, cfg.balance, modalities)
    balancer.check(cfg.model, cfg.augment.name)

    model = build_model(cfg, info.num_classes).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=(0.9, 0.999), weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.optim.step_size, cfg.optim.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    ctx = TrainContext(cfg, model, optimizer, scaler, device, gen, modalities, info.num_classes, info, splits, run_dir,
                       world_size=world_size, rank=rank)
    extra = balancer.setup(model, ctx)
    if extra is not None:
        extra.to(device)
        optimizer.add_param_group({"params": [p for p in extra.parameters() if p.requires_grad]})
    aug_extra = augment.setup(model, ctx)  # trainable parts of an augmentation (MS-Mix intensity heads)
    if aug_extra is not None:
        aug_extra.to(device)
        optimizer.add_param_group({"params": [p for p in aug_extra.parameters() if p.requires_grad]})

    train_loader = make_loader(info, splits.train, cfg, train=True)
    eval_loaders = {k: make_loader(info, rows, cfg, train=False) for k, rows in
                    (("val", splits.val), ("test", splits.test)) if len(rows)}
    monitor_loader = make_loader(info, splits.train, cfg, train=False)
    need_scores = cfg.monitor_train or augment.needs_train_scores or balancer.needs_train_scores

    start_epoch, best = 0, {"val_acc": -1.0, "epoch": -1}
    metrics_path = run_dir / METRICS
    if resume and (run_dir / CKPT_LAST).exists():
        ck = load_checkpoint(run_dir / CKPT_LAST)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        augment.load_state_dict(ck["augment"])
        balancer.load_state_dict(ck["balancer"])
        if extra is not None and ck.get("extra") is not None:
            extra.load_state_dict(ck["extra"])
        gen.set_state(ck["generator"])
        set_rng_state(ck["rng"])
        ctx.train_scores, ctx.step = ck.get("train_scores"), ck.get("step", 0)
        start_epoch, best = ck["epoch"] + 1, ck["best"]
        if metrics_path.exists():  # drop lines of an epoch that was interrupted after its checkpoint
            keep = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= ck["epoch"]]
            metrics_path.write_text("".join(k + "\n" for k in keep))
    elif is_main:
        metrics_path.unlink(missing_ok=True)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "augment": augment.state_dict(), "balancer": balancer.state_dict(),
                "extra": extra.state_dict() if extra is not None else None, "generator": gen.get_state(),
                "rng": rng_state(), "epoch": epoch, "step": ctx.step, "best": best, "train_scores": ctx.train_scores,
                "config": cfg.to_dict(), "class_names": info.class_names, "cache": str(info.path),
                "modalities": modalities, "splits": {"train": splits.train, "val": splits.val, "test": splits.test}}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    last: dict[str, Any] = {}
    with Progress(*columns, disable=not (progress and is_main)) as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, completed=start_epoch, info="")
        try:
            for epoch in range(start_epoch, cfg.epochs):
                ctx.epoch = epoch
                t0 = time.time()
                augment.on_epoch_start(ctx)
                balancer.on_epoch_start(ctx)
                if hasattr(train_loader.sampler, "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)
                model.train()
                step_task = bar.add_task(f"epoch {epoch + 1}", total=len(train_loader), info="")
                loss_sum, seen, hits = 0.0, 0, 0
                for inputs, y in train_loader:
                    inputs, y = to_device(inputs, device), y.to(device, non_blocking=True)
                    inputs, y = balancer.on_batch(inputs, y, ctx)  # data stage
                    with autocast(device, cfg.amp):
                        out, loss = augment.compute(model, inputs, y, ctx)  # forward + augmentation's loss
                        loss = balancer.loss(loss, out, inputs, y, ctx)  # loss stage
                    if not torch.isfinite(loss):
                        raise MmvidError(f"loss became {float(loss)} at epoch {epoch + 1}, step {ctx.step}; "
                                         f"lower optim.lr or try --amp off")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # gradients are true values from here on
                    balancer.after_backward(model, out, y, ctx)  # optimisation stage
                    if cfg.optim.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    ctx.step += 1
                    loss_sum += float(loss.detach()) * len(y)
                    hits += int((out.logits.argmax(1) == y).sum())
                    seen += len(y)
                    bar.update(step_task, advance=1, info=f"loss {loss_sum / seen:.3f}")
                bar.remove_task(step_task)
                scheduler.step()

                # Evaluation and the imbalance monitor (paper Fig. 1).
                rec: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                       "train_loss": loss_sum / max(seen, 1), "train_acc_batch": hits / max(seen, 1)}
                results = {k: evaluate_model(model, ld, device, cfg.amp, reduce=ctx.all_reduce) for k, ld in eval_loaders.items()}
                if need_scores:
                    tr = evaluate_model(model, monitor_loader, device, cfg.amp, reduce=ctx.all_reduce)
                    ctx.train_scores = {m: {"score": tr.modality_score[m], "correct": float(tr.modality_correct[m]), "n": float(tr.n)}
                                        for m in modalities}
                    results["train"] = tr
                ctx.val_losses = {"fused": results["val"].loss} if "val" in results else None
                for split, res in results.items():
                    rec[f"{split}_acc"] = res.acc
                    rec[f"{split}_loss"] = res.loss
                    for m in modalities:
                        rec[f"{split}_acc_{m}"] = res.modality_acc(m)
                    if len(modalities) >= 2:
                        rec[f"{split}_rho"] = rho_of(res, modalities)
                if "train" in results:
                    rec["rho"] = rec.get("train_rho")
                    for m in modalities:
                        rec[f"s_{m}"] = results["train"].modality_score[m]
                balancer.on_epoch_end(ctx)
                rec.update(augment.log())
                rec.update(balancer.log())
                rec["seconds"] = time.time() - t0
                select = rec.get("val_acc", rec.get("test_acc", 0.0))
                improved = select > best["val_acc"]
                if improved:
                    best = {"val_acc": select, "epoch": epoch, "test_acc": rec.get("test_acc")}
                if is_main:
                    ck = checkpoint(epoch)
                    atomic_save(ck, run_dir / CKPT_LAST)
                    if improved:
                        atomic_save(ck, run_dir / CKPT_BEST)
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                last = rec
                bar.update(ep_task, advance=1, info=f"val {rec.get('val_acc', float('nan')):.3f} test {rec.get('test_acc', float('nan')):.3f}")
        except KeyboardInterrupt:
            raise MmvidError(f"training interrupted; the last finished epoch is saved in {run_dir / CKPT_LAST}; "
                             f"continue with `mmvid train --resume {run_dir}`") from None
    summary = {"run_dir": str(run_dir), "epochs": cfg.epochs, "last": last, "best": best}
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


