"""The one explicit training loop (:func:`train`). Balancers and augmentations attach at named hook points
(see :mod:`mmvid.balance.base`); nothing else copies this loop.

Per epoch: ``augment.on_epoch_start`` and ``balancer.on_epoch_start`` -> steps (:func:`mmvid.engine.step.train_step`)
-> evaluation (val, test, and the train-set imbalance monitor of paper Fig. 1; :mod:`mmvid.engine.evaluation`)
-> ``balancer.on_epoch_end`` -> metrics.jsonl line -> checkpoint (:mod:`mmvid.engine.checkpoints`).

The same loop runs as one rank of a DDP group (:mod:`mmvid.distributed.launch` starts the ranks). Ctrl-C between
two steps saves the position inside the epoch (:mod:`mmvid.engine.progress`), and ``--resume`` continues from
there bit for bit on CPU.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from mmvid.config import TrainConfig, save_config
from mmvid.data.cache import CacheInfo, read_info
from mmvid.distributed.collectives import DDP, ResumableSampler, sync_buffers
from mmvid.engine.checkpoints import (
    atomic_save,
    checkpoint_file,
    model_from_checkpoint,
    restore_training,
    training_state,
)
from mmvid.engine.context import TrainContext, TrainingParts
from mmvid.engine.evaluation import evaluate_epoch, evaluates_at, monitor_plan, monitor_rows, selection_score
from mmvid.engine.loaders import check_modalities, make_loader, make_splits
from mmvid.engine.model import build_model
from mmvid.engine.optim import (
    accumulation_group,
    check_accumulation,
    make_optimizer,
    make_scheduler,
    own_groups,
    parameter_groups,
    plugin_group,
)
from mmvid.engine.progress import EpochTotals, ProgressBars, StopRequest
from mmvid.engine.provenance import record_session, session
from mmvid.engine.runtime import pick_device, seed_everything
from mmvid.engine.step import AuxiliaryLoss, train_step
from mmvid.engine.tracking import start_tracker, track_step
from mmvid.engine.weights import load_start_weights
from mmvid.errors import Interrupted, MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS
from mmvid.runfiles import METRICS, read_jsonl
from mmvid.workspace import CKPT_BEST, CKPT_LAST, check_run_folder, writable_dir, write_atomic


def train(cfg: TrainConfig, cache: Path, run_dir: Path, resume: bool = False, progress: bool = True,
          rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train per ``cfg`` on ``cache``; writes config.yaml, metrics.jsonl and checkpoints into ``run_dir``.

    With ``world_size > 1`` this is one rank of a process group already joined (:mod:`mmvid.distributed`):
    the model is wrapped in DDP, each rank reads its shard of every split, metrics and the statistics
    that steer methods are summed across ranks, and only rank 0 writes files.
    """
    # Inputs: the plug-ins registered, the run folder ours to write, the cache readable with these modalities.
    load_plugins()
    info = check_inputs(cfg, cache, run_dir, rank)
    # Build the model, optimizer, scheduler and plug-ins (same seed on every rank), then this rank's loaders.
    training = build_training(cfg, info, run_dir, rank, world_size)
    if rank == 0:
        print_notes(training.augment.notes)
    if rank:
        seed_everything(cfg.seed + rank)  # per-rank crops/flips; the model init above is shared
    loaders = RunLoaders.build(training)
    # Resume from checkpoint_last.pt (its epoch, best and position inside an epoch), or start afresh.
    start_epoch, best, totals = resume_or_start(training, loaders.sampler, resume)
    # The loggers (--logger; rank 0): the config now, then per step and per epoch (mmvid.engine.tracking).
    tracker = start_tracker(training, resumed=start_epoch > 0 or totals.batch > 0)
    last: dict[str, Any] = {}
    reduce = training.ctx.all_reduce if world_size > 1 else None
    with tracker, ProgressBars(cfg.epochs, start_epoch, progress and rank == 0) as bars, StopRequest() as stop:
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                # Epoch start: the plug-ins' hooks (a resumed half epoch has their state already), the order.
                begin_epoch(training, loaders.sampler, epoch, resumed=totals.batch > 0)
                # Steps, until the epoch ends or Ctrl-C asks to stop between two steps.
                if not train_steps(training, loaders.train, totals, bars, stop, reduce, tracker):
                    save_checkpoint(training, epoch - 1, best, totals)  # the position inside this epoch
                    raise KeyboardInterrupt
                # Epoch end: the learning-rate schedule, rank 0's BN statistics everywhere, a stop asked for now.
                training.scheduler.step()
                sync_buffers(training.ctx.model, world_size)  # BN statistics: every rank evaluates rank 0's model
                stop_after = stop.requested(reduce) and epoch + 1 < cfg.epochs
                # Evaluation, the imbalance monitor (paper Fig. 1), the plug-ins' epoch end and their logs.
                rec = end_epoch(training, loaders, totals, reduce)
                rec["seconds"] = time.time() - t0
                # The best epoch: the first of the highest among the epochs evaluated (strictly greater, as
                # OGM-GE's and Data Remixing's `if acc > best_acc`).
                improved = evaluates_at(cfg, epoch) and selected_accuracy(rec) > selection_score(best)
                best = best_epoch(rec) if improved else best
                # Save: the metrics line, then checkpoint_last.pt (and checkpoint_best.pt when it improved).
                save_checkpoint(training, epoch, best, rec=rec, improved=improved)
                tracker.epoch(rec, training.ctx.step)  # the loggers mirror the line metrics.jsonl now holds
                last, totals = rec, EpochTotals()
                bars.end_epoch(rec)
                if stop_after:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise Interrupted(f"training interrupted; its state is saved in {run_dir / CKPT_LAST}; "
                              f"continue with `mmvid train --resume {run_dir}`") from None
    # Summary: the last and the best epoch, in summary.json.
    return write_summary(training, last, best)


def check_inputs(cfg: TrainConfig, cache: Path, run_dir: Path, rank: int) -> CacheInfo:
    """The cache's description, after the checks that come before anything is built or deleted."""
    if rank == 0:  # the rank that writes; the others would race with its first files
        check_run_folder(run_dir)  # never into a folder of files mmvid did not write (a start deletes metrics.jsonl)
    info = read_info(cache)  # cheap damage checks: labels in range, shapes as the attributes say
    check_modalities(info, cfg.data.modalities)
    writable_dir(run_dir, "run folder")
    return info


@dataclass
class RunLoaders:
    """This rank's loaders: its share of the train rows (through ``sampler``) and of every held-out split, and of
    the train rows the imbalance monitor evaluates (:func:`mmvid.engine.evaluation.monitor_rows`)."""

    sampler: ResumableSampler
    train: Any
    held_out: dict[str, Any]  # "val" / "test" -> loader, for the splits that have rows
    monitor: Any | None  # None when the monitor is off
    steer_val: bool  # whether a plug-in steers on val statistics (val is then evaluated after every epoch)

    @classmethod
    def build(cls, training: TrainingParts) -> "RunLoaders":
        ctx, cfg = training.ctx, training.ctx.cfg
        info, splits, rank, world_size, device = ctx.info, ctx.splits, ctx.rank, ctx.world_size, ctx.device
        # Each rank trains on its DistributedSampler share and evaluates its slice of every split.
        sampler = ResumableSampler(len(splits.train), world_size, rank, cfg.seed,
                                   lambda order: training.balancer.epoch_order(order, ctx))
        train = make_loader(info, splits.train, cfg, train=True, sampler=sampler, device=device,
                            intensity=training.augment.needs_intensity)
        held_out = {k: make_loader(info, rows[rank::world_size], cfg, train=False, device=device) for k, rows in
                    (("val", splits.val), ("test", splits.test)) if len(rows)}
        fraction, _ = monitor_plan(cfg, training.augment, training.balancer)  # workflows.run_train prints its note
        monitor = (make_loader(info, monitor_rows(splits.train, fraction, cfg.seed)[rank::world_size], cfg,
                               train=False, device=device) if fraction > 0 else None)
        steer_val = training.augment.needs_val_scores or training.balancer.needs_val_scores
        return cls(sampler, train, held_out, monitor, steer_val)


def resume_or_start(training: TrainingParts, sampler: ResumableSampler,
                    resume: bool) -> tuple[int, dict[str, Any], EpochTotals]:
    """The first epoch to train, the best epoch so far, and the position inside that first epoch.

    With ``resume`` and a checkpoint_last.pt: its states restored into ``training``, ``sampler`` set to skip what
    an interrupted epoch did, and metrics.jsonl's lines of later epochs dropped. Otherwise a fresh start (no
    metrics.jsonl) with the encoders' weights files loaded (:func:`mmvid.engine.weights.load_start_weights`).
    Rank 0 then writes config.yaml and run.json (:mod:`mmvid.engine.provenance`)."""
    ctx = training.ctx
    cfg, run_dir, is_main = ctx.cfg, ctx.run_dir, ctx.rank == 0
    # The best epoch is chosen on val, or on test where no validation split exists (protocol reference, or
    # data.val_fraction 0 without a cache val split): summary.json and the checkpoint say which (selected_on).
    on = "val" if len(ctx.splits.val) else "test"
    start_epoch, best, totals = 0, {f"{on}_acc": -1.0, "epoch": -1, "selected_on": on}, EpochTotals()
    if resume and (run_dir / CKPT_LAST).exists():
        ck, position = restore_training(training, run_dir / CKPT_LAST)
        start_epoch, best = ck["epoch"] + 1, ck["best"]
        if position is not None:
            totals = EpochTotals(**position)
            sampler.skip = totals.batch * cfg.data.batch_size
        if is_main:
            drop_unsaved_epochs(run_dir / METRICS, ck["epoch"])
    else:  # a fresh start: the encoders' initial weights from files (the config records their hashes)
        notes = load_start_weights(ctx.model, cfg)
        if is_main:
            print_notes(notes)
            (run_dir / METRICS).unlink(missing_ok=True)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
        resumed = start_epoch > 0 or totals.batch > 0  # run.json: this session, appended on a resume
        record_session(run_dir, session(cfg, ctx.info, ctx.device, ctx.world_size, start_epoch, resumed), resumed)
    return start_epoch, best, totals


def drop_unsaved_epochs(metrics_path: Path, saved_epoch: int) -> None:
    """Drop metrics.jsonl's lines of the epochs after ``saved_epoch``, the checkpoint's (an epoch whose line was
    written but whose checkpoint was not); no file when none is left (Ctrl-C in the first epoch), as before it."""
    if not metrics_path.exists():
        return
    keep = [rec for rec in read_jsonl(metrics_path) if rec.get("epoch", 0) <= saved_epoch]
    if keep:
        write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
    else:
        metrics_path.unlink()


def begin_epoch(training: TrainingParts, sampler: ResumableSampler, epoch: int, resumed: bool) -> None:
    """The plug-ins' ``on_epoch_start`` (not for a resumed half epoch: the checkpoint holds their state), then
    the epoch's order, which ``balancer.epoch_order`` may have changed, and train mode."""
    ctx = training.ctx
    ctx.epoch = epoch
    if not resumed:
        training.augment.on_epoch_start(ctx)
        training.balancer.on_epoch_start(ctx)
    sampler.set_epoch(epoch)
    ctx.model.train()


def train_steps(training: TrainingParts, loader, totals: EpochTotals, bars: ProgressBars, stop: StopRequest,
                reduce=None, tracker=None) -> bool:
    """The epoch's steps from ``totals.batch`` on, counted into ``totals``. True at the epoch's end; False when
    Ctrl-C asked to stop before its last step (asked between two steps; every rank stops at the same one)."""
    total, k = len(loader) + totals.batch, training.ctx.cfg.optim.accumulate
    bars.start_epoch(training.ctx.epoch, total, totals.batch)
    for inputs, y in loader:
        out, loss, y = train_step(training, inputs, y, accumulation_group(totals.batch, total, k))
        totals.add(loss, out.logits, y)
        if tracker:
            track_step(tracker, training, loss)
        bars.step(totals)
        # A stop only between two optimizer steps (the checkpoint holds no half-accumulated gradients).
        if totals.batch % k == 0 and stop.requested(reduce) and totals.batch < total:
            return False
    bars.end_steps()
    return True


def end_epoch(training: TrainingParts, loaders: RunLoaders, totals: EpochTotals, reduce=None) -> dict[str, Any]:
    """The epoch's metrics.jsonl line but its seconds: train loss and accuracy over every rank's steps, the
    evaluation and monitor (:func:`mmvid.engine.evaluation.evaluate_epoch`), then ``balancer.on_epoch_end``
    and the logs of the augmentation, the balancer and the auxiliary heads."""
    ctx = training.ctx
    sums = ctx.all_reduce(torch.tensor([totals.loss_sum, totals.hits, totals.seen], dtype=torch.float64))
    loss_sum, hits, seen = sums.tolist()
    rec: dict[str, Any] = {"epoch": ctx.epoch, "lr": ctx.optimizer.param_groups[0]["lr"],
                           "train_loss": loss_sum / max(seen, 1), "train_acc_batch": hits / max(seen, 1)}
    held_out = evaluates_at(ctx.cfg, ctx.epoch)
    rec.update(evaluate_epoch(ctx, loaders.held_out, loaders.monitor, held_out, loaders.steer_val, reduce))
    training.balancer.on_epoch_end(ctx)
    rec.update(training.augment.log())
    rec.update(training.balancer.log())
    rec.update(training.aux.log(reduce) if training.aux is not None else {})
    return rec


def selected_accuracy(rec: dict[str, Any]) -> float:
    """The accuracy of metrics.jsonl line ``rec`` that the best epoch is chosen by: val's, else test's."""
    return rec.get("val_acc", rec.get("test_acc", 0.0))


def best_epoch(rec: dict[str, Any]) -> dict[str, Any]:
    """summary.json's ``best`` for the epoch of metrics.jsonl line ``rec``: chosen on val, else on test."""
    if "val_acc" in rec:
        return {"val_acc": rec["val_acc"], "epoch": rec["epoch"], "test_acc": rec.get("test_acc"), "selected_on": "val"}
    return {"test_acc": rec.get("test_acc"), "epoch": rec["epoch"], "selected_on": "test"}


def save_checkpoint(training: TrainingParts, epoch: int, best: dict[str, Any], totals: EpochTotals | None = None,
                    rec: dict[str, Any] | None = None, improved: bool = False) -> None:
    """Every rank calls it (the checkpoint gathers every rank's state); rank 0 writes. After epoch ``epoch``:
    its metrics.jsonl line ``rec`` first (a crash before the checkpoint is renamed redoes the epoch, and the
    resume drops the line), then checkpoint_last.pt, and checkpoint_best.pt when ``improved``. ``totals``: the
    position inside the next epoch, where Ctrl-C stopped it."""
    state = training_state(training, epoch, best, totals.to_dict() if totals is not None else None)
    if training.ctx.rank != 0:
        return
    run_dir = training.ctx.run_dir
    if rec is not None:
        with (run_dir / METRICS).open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
    atomic_save(state, run_dir / CKPT_LAST)
    if improved:
        atomic_save(state, run_dir / CKPT_BEST)


def write_summary(training: TrainingParts, last: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """summary.json (rank 0): the run's last epoch's metrics line and its best epoch."""
    ctx = training.ctx
    metrics_path = ctx.run_dir / METRICS
    if not last and ctx.rank == 0 and metrics_path.exists():  # resumed after its last epoch: nothing trained now
        recs = read_jsonl(metrics_path)
        last = recs[-1] if recs else {}
    summary = {"run_dir": str(ctx.run_dir), "epochs": ctx.cfg.epochs, "protocol": ctx.cfg.protocol, "last": last,
               "best": best}
    if ctx.rank == 0:
        write_atomic(ctx.run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def train_companion(cfg: TrainConfig, folder: Path, cache: Path) -> Path:
    """Train ``cfg`` on ``cache`` (the run's own) into ``folder`` (resuming what is there), quietly, in this
    process; the checkpoint to use (best, else last). :attr:`TrainContext.train_companion`."""
    train(cfg, cache, folder, resume=True, progress=False)
    return checkpoint_file(folder)


def build_training(cfg: TrainConfig, info: CacheInfo, run_dir: Path, rank: int = 0,
                   world_size: int = 1) -> TrainingParts:
    """Seeded model, optimizer, scheduler, scaler, augmentation and balancer on the rank's device.

    Every rank builds the same initial model (same seed); DDP then keeps the ranks equal.
    """
    device = pick_device(cfg.device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise MmvidError("--amp fp16 needs a CUDA device; use --amp bf16 on CPU")
    seed_everything(cfg.seed)
    splits = make_splits(info, cfg.data.val_fraction, cfg.seed, cfg.protocol)
    modalities = cfg.data.modalities
    augment = AUGMENTS.build(cfg.augment.name, cfg.augment, modalities)
    balancer = BALANCERS.build(cfg.balance.name, cfg.balance, modalities)
    balancer.check(cfg.model, cfg.augment.name)

    model = build_model(cfg, info.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(cfg.seed)  # same seed on every rank: mixing decisions agree
    check_accumulation(cfg, balancer)
    optimizer = make_optimizer(parameter_groups(model, cfg.optim), cfg.optim)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    ctx = TrainContext(cfg, model, optimizer, scaler, device, gen, modalities, info.num_classes, info, splits, run_dir,
                       world_size=world_size, rank=rank, train_companion=partial(train_companion, cache=Path(info.path)),
                       load_model=model_from_checkpoint)
    with own_groups(cfg):
        balancer_modules = balancer.setup(model, ctx)
        # Augmentations with trainable parts (e.g. intensity heads) define ``setup`` like balancers.
        augment_modules = augment.setup(model, ctx)
    for module in (balancer_modules, augment_modules):
        if module is not None:
            module.to(device)
            for group in plugin_group(module, cfg.optim):
                optimizer.add_param_group(group)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.epochs)  # after every group: each follows it
    net = wrap_model(model, device, world_size, cfg.compile)
    aux = AuxiliaryLoss(cfg.model.aux_loss) if cfg.model.aux_loss else None
    return TrainingParts(ctx, augment, balancer, balancer_modules, scheduler, net, augment_modules, aux)


def wrap_model(model: MultimodalClassifier, device: torch.device, world_size: int, compile_: bool):
    """The callable of the training step: DDP across ranks, optionally ``torch.compile``-d.

    Attribute access falls through to the bare model (``net.unimodal_logits``, ``net.modalities``).
    """
    net: torch.nn.Module = model
    if world_size > 1:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_:
        net = torch.compile(net)
    return net


def print_notes(notes) -> None:
    """A plug-in's one-line notes (e.g. a fallback), as the commands print theirs."""
    if notes:
        console = Console()
        for note in notes:
            console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True, highlight=False)


def default_run_name(cfg: TrainConfig, dataset: str) -> str:
    """``<cache>-<fusion>[_cal]-<augment>[-<balancer>]-s<seed>-<time>``: a plain name (mmvid.schema), as a
    --run-name must be; a character a plug-in's name may hold outside that set becomes ``_``."""
    fusion = cfg.model.fusion + ("_cal" if cfg.model.calibrate else "") + ("_aux" if cfg.model.aux_loss else "")
    words = [dataset, fusion, cfg.augment.name] + ([cfg.balance.name] if cfg.balance.name != "none" else [])
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(words + [f"s{cfg.seed}", time.strftime("%Y%m%d-%H%M%S")]))

