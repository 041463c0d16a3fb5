"""Evaluate a trained run on its cache: accuracy, macro-F1, per-class accuracy, confusion matrix,
per-modality accuracy by masking (paper Eq. 5) and the imbalance factor rho (Eq. 6)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmvid.config import SELECTED_ON_TEST, TrainConfig
from mmvid.data.cache import CacheInfo
from mmvid.engine.checkpoints import checkpoint_file, model_from_checkpoint
from mmvid.engine.evaluation import evaluate_model, rho_of
from mmvid.engine.loaders import make_loader, make_splits
from mmvid.engine.runtime import pick_device
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.runfiles import RunCache, check_run, read_metrics, resolve_run_cache, run_setups
from mmvid.workspace import CKPT_BEST, CKPT_LAST, resolve_run, write_atomic


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def macro_f1(cm: np.ndarray) -> float:
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = cm.sum(1) > 0
    return float(f1[present].mean()) if present.any() else 0.0


def checkpoint_origin(path: Path, ck: dict[str, Any]) -> dict[str, Any]:
    """Which checkpoint a number comes from: ``checkpoint`` is ``best`` (checkpoint_best.pt, the
    best-validation epoch), ``last`` (checkpoint_last.pt) or ``given file`` (any other file);
    ``checkpoint_epoch`` is its 0-based epoch as in metrics.jsonl (printed 1-based)."""
    path = Path(path)
    kind = {CKPT_BEST: "best", CKPT_LAST: "last"}.get(path.name, "given file")
    part = int((ck.get("partial") or {}).get("batch", 0))
    val = ck.get("splits", {}).get("val")
    protocol = (ck.get("config") or {}).get("protocol", "clean")
    return {"checkpoint": kind, "checkpoint_epoch": int(ck.get("epoch", -1)), "checkpoint_path": str(path),
            "checkpoint_partial_steps": part, "checkpoint_selected_on": "val" if val is None or len(val) else "test",
            "checkpoint_protocol": protocol if protocol in SELECTED_ON_TEST else "clean"}


def checkpoint_note(r: dict[str, Any]) -> str:
    """``best-validation checkpoint (epoch 7)``, ``best-test checkpoint (epoch 7; selected on test, as the
    reference code does)`` (protocol reference) and the like, from :func:`checkpoint_origin`'s keys."""
    kind, epoch = r["checkpoint"], r["checkpoint_epoch"] + 1
    on_val = r.get("checkpoint_selected_on", "val") == "val"
    what = {"best": f"best-{'validation' if on_val else 'test'} checkpoint", "last": "last checkpoint"}.get(
        kind, f"given file {Path(r['checkpoint_path']).name}")
    if r.get("checkpoint_partial_steps"):
        return f"{what} (saved at step {r['checkpoint_partial_steps']} of epoch {epoch + 1}, interrupted)"
    why = SELECTED_ON_TEST.get(r.get("checkpoint_protocol", "clean"), SELECTED_ON_TEST["clean"])
    return f"{what} (epoch {epoch}{'' if on_val or kind != 'best' else '; ' + why})"


@dataclass
class LoadedRun:
    """A run's model (on its device, eval mode), config, checkpoint, cache and the rows of one split;
    ``origin`` says which checkpoint (:func:`checkpoint_origin`), ``cache`` which cache and why."""

    run: Path
    model: MultimodalClassifier
    cfg: TrainConfig
    ck: dict[str, Any]
    info: CacheInfo
    rows: np.ndarray
    device: torch.device
    split: str
    origin: dict[str, Any]
    cache: RunCache

    @property
    def label(self) -> str:
        return method_label(self.ck["config"])

    @property
    def note(self) -> str:
        return checkpoint_note(self.origin)

    def loader(self, rows: np.ndarray | None = None, batch_size: int | None = None):
        return make_loader(self.info, self.rows if rows is None else rows, self.cfg, train=False, batch_size=batch_size)

    def split_rows(self, split: str) -> np.ndarray:
        """The cache rows of ``split`` (:func:`split_rows`)."""
        return split_rows(self.ck, self.cfg, self.cache, split)


def split_rows(ck: dict[str, Any], cfg: TrainConfig, cache: RunCache, split: str) -> np.ndarray:
    """The cache rows of ``split`` as the run used them: the rows saved in its checkpoint, on the cache it
    was trained on; on another cache (``--cache``), that cache's own split, val held out of train as
    training would (mmvid.engine.loaders.make_splits)."""
    if split not in ("train", "val", "test"):
        raise MmvidError(f"--split {split!r} is not valid; choose test, val or train")
    rows = ck.get("splits", {}).get(split) if cache.same is not False else None
    if rows is None:
        rows = getattr(make_splits(cache.info, cfg.data.val_fraction, cfg.seed, cfg.protocol), split)
    return np.asarray(rows)


def method_label(config: dict[str, Any]) -> str:
    """``fusion[+cal][+aux]+augment[+balancer]`` from a saved config, e.g. ``concat+bmm``."""
    model, aug, bal = config["model"], config["augment"]["name"], config["balance"]["name"]
    parts = [model["fusion"] + ("+cal" if model.get("calibrate") else "") + ("+aux" if model.get("aux_loss") else ""), aug]
    return "+".join(parts + ([bal] if bal != "none" else []))


def resolve_target(ws: Path, run: str | Path | None) -> Path:
    """A checkpoint file as given, else the run folder named or the latest run (see ``resolve_run``)."""
    if run is not None and Path(run).is_file():
        return Path(run)
    return resolve_run(ws, run)


def load_run(run: str | Path, split: str = "test", device: str = "auto", cache: str | Path | None = None,
             checkpoint: str = "best") -> LoadedRun:
    """Rebuild a run's model from a run folder (its ``checkpoint``: best, else last; or last) or a checkpoint file.

    The run folder's own files are read first (:func:`mmvid.runfiles.check_run`: a damaged one is one line,
    before any model is built); its cache is ``cache`` or the one :func:`mmvid.runfiles.resolve_run_cache`
    finds (``.cache``; the commands print its :meth:`~mmvid.runfiles.RunCache.line` once their work is done).
    """
    run = Path(run)
    folder = run.parent if run.is_file() else run
    check_run(folder)
    if split not in ("train", "val", "test"):
        raise MmvidError(f"--split {split!r} is not valid; choose test, val or train")
    path = checkpoint_file(run, checkpoint)
    model, cfg, ck = model_from_checkpoint(path)
    rc = resolve_run_cache(folder, ck, cache)
    info = rc.info
    rows = split_rows(ck, cfg, rc, split)
    if len(rows) == 0:
        raise MmvidError(f"split {split!r} of {info.path.name} has no clips for run {folder.name}; choose another --split")
    dev = pick_device(device)
    model.to(dev).eval()
    return LoadedRun(folder, model, cfg, ck, info, rows, dev, split, checkpoint_origin(path, ck), rc)


def evaluate_run(run: Path, split: str = "test", device: str = "auto", cache: str | Path | None = None,
                 batch_size: int | None = None, checkpoint: str = "best", console=None) -> dict[str, Any]:
    """Metrics of one run's ``checkpoint`` (best, else last; or last), or of the checkpoint file given, on ``split``.

    Fused accuracy, macro-F1, per-class accuracy and the (C, C) confusion matrix; per-modality
    accuracy and confusion by masking (Eq. 5); rho (Eq. 6) from the summed true-class probabilities;
    which checkpoint (:func:`checkpoint_origin`); which cache (``cache``, ``cache_source``). Also written to
    ``<run>/eval_<split>.json``. ``console``: where to name the cache read, once done.
    """
    lr = load_run(run, split, device, cache, checkpoint)
    info, model = lr.info, lr.model
    res = evaluate_model(model, lr.loader(batch_size=batch_size), lr.device, keep=True)
    cm = confusion(res.labels, res.preds, info.num_classes)
    per_class = (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()
    out = {
        "run": str(lr.run), **lr.origin, "cache": str(lr.cache.path), "cache_source": lr.cache.how,
        "split": split, "n": res.n,
        "accuracy": res.acc, "macro_f1": macro_f1(cm), "loss": res.loss,
        "per_class_accuracy": dict(zip(info.class_names, per_class)),
        "modality_accuracy": {m: res.modality_acc(m) for m in model.modalities},
        "modality_score": dict(res.modality_score),
        "rho": rho_of(res, model.modalities), "confusion": cm.tolist(), "class_names": info.class_names,
        "modality_confusion": {m: confusion(res.labels, res.modality_preds[m], info.num_classes).tolist()
                               for m in model.modalities},
        "method": lr.label,
        "setup": run_setups(lr.run),  # what it was trained on (run.json; [] for a run from before it)
        "config": {"fusion": lr.cfg.model.fusion, "augment": lr.cfg.augment.name, "balance": lr.cfg.balance.name},
    }
    write_atomic(eval_path(out), json.dumps(out, indent=2))
    if console is not None:
        console.print(lr.cache.line(lr.run), soft_wrap=True, highlight=False)
    return out


def eval_path(r: dict[str, Any]) -> Path:
    """``<run>/eval_<split>.json`` for the best checkpoint, ``eval_<split>_last.json`` for the last one,
    ``eval_<split>_<file stem>.json`` for another file: evaluating one never overwrites another's."""
    kind = r["checkpoint"]
    tail = "" if kind == "best" else "_last" if kind == "last" else f"_{Path(r['checkpoint_path']).stem}"
    return Path(r["run"], f"eval_{r['split']}{tail}.json")


def render(results: list[dict[str, Any]], console) -> None:
    """One side-by-side Rich table for one or several runs."""
    from rich.table import Table

    table = Table(title=f"mmvid evaluate ({results[0]['split']})")
    table.add_column("metric")
    for r in results:
        table.add_column(Path(r["run"]).name, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("method", [r["method"] for r in results]),
        ("checkpoint", [checkpoint_note(r) for r in results]),
        ("clips", [str(r["n"]) for r in results]),
        ("trained on", ["; then ".join(r.get("setup") or ["(no run.json)"]) for r in results]),
        ("accuracy", [f"{100 * r['accuracy']:.2f}%" for r in results]),
        ("macro-F1", [f"{100 * r['macro_f1']:.2f}" for r in results]),
    ]
    mods = sorted({m for r in results for m in r["modality_accuracy"]})
    for m in mods:
        rows.append((f"{m} only (masking)", [f"{100 * r['modality_accuracy'][m]:.2f}%" if m in r["modality_accuracy"] else "-" for r in results]))
    rows.append(("rho (Eq. 6)", [f"{r['rho']:.3f}" if r["rho"] is not None else "-" for r in results]))
    classes = results[0]["class_names"]
    for c in classes:
        rows.append((f"  class {c}", [f"{100 * r['per_class_accuracy'].get(c, float('nan')):.1f}%" for r in results]))
    for name, vals in rows:
        table.add_row(name, *vals)
    console.print(table)
    if len(results) == 1:
        render_confusion(results[0], console)


def render_confusion(result: dict[str, Any], console) -> None:
    """The fused confusion matrix as a Rich table (rows = true class, columns = predicted)."""
    from rich.table import Table

    names = result["class_names"]
    table = Table(title=f"confusion matrix, {Path(result['run']).name} ({result['split']}, {checkpoint_note(result)}): "
                        f"rows true, columns predicted")
    table.add_column("true \\ pred")
    for c in names:
        table.add_column(c, justify="right")
    for c, row in zip(names, result["confusion"]):
        table.add_row(c, *[f"[bold]{v}" if i == names.index(c) else (str(v) if v else "[dim]0") for i, v in enumerate(row)])
    console.print(table)


# ----------------------------------------------------------------------------- the paper's Fig. 1 regime


@dataclass
class Regime:
    """Where a run stands against the paper's Fig. 1 regime, from its per-epoch monitor (metrics.jsonl).

    Accuracies are fractions at the last epoch; the modality ones are by masking (Eq. 5), on the train set
    (the monitor: all of it, or the rows monitor_train samples) and on test. ``rho_min`` and ``rho_last`` are
    the train-set imbalance factor s_strong / s_weak (Eq. 6) at its lowest over the epochs and at the last epoch.
    """

    strong: str
    weak: str
    epochs: int
    strong_train: float
    strong_test: float
    weak_train: float
    weak_test: float
    fused_test: float
    rho_min: float
    rho_last: float

    @property
    def strong_gap(self) -> float:
        """Train minus test accuracy of the strong modality: how much it memorised."""
        return self.strong_train - self.strong_test

    @property
    def weak_gap(self) -> float:
        return self.weak_train - self.weak_test

    @property
    def fused_gain(self) -> float:
        """Fused minus strong-modality-alone test accuracy: what the weak modality adds."""
        return self.fused_test - self.strong_test

    def holds(self, min_strong_gap: float = 0.30, max_weak_gap: float = 0.10) -> bool:
        """The regime: the strong modality memorises (gap >= ``min_strong_gap``), the weak one stays
        under-trained (gap <= ``max_weak_gap``), rho > 1 at every epoch, and the weak modality helps."""
        return (self.strong_gap >= min_strong_gap and self.weak_gap <= max_weak_gap and self.rho_min > 1.0
                and self.fused_gain > 0.0)

    def line(self) -> str:
        s, w = self.strong, self.weak
        return (f"{s} train {100 * self.strong_train:.1f} test {100 * self.strong_test:.1f} (gap {100 * self.strong_gap:+.1f}); "
                f"{w} train {100 * self.weak_train:.1f} test {100 * self.weak_test:.1f} (gap {100 * self.weak_gap:+.1f}); "
                f"fused test {100 * self.fused_test:.1f} ({100 * self.fused_gain:+.1f} over {s}); "
                f"train rho min {self.rho_min:.2f}, last {self.rho_last:.2f}; regime {'holds' if self.holds() else 'does not hold'}")


def regime(run: Path, strong: str = "audio", weak: str = "video") -> Regime:
    """The :class:`Regime` figures of a run folder (its metrics.jsonl, written with ``monitor_train``)."""
    recs = read_metrics(Path(run))
    # The monitor every epoch; test (logged every eval_every epochs) at the last one, which always has it.
    every = [f"train_acc_{m}" for m in (strong, weak)] + [f"s_{strong}", f"s_{weak}"]
    last_only = [f"test_acc_{m}" for m in (strong, weak)] + ["test_acc"]
    missing = [k for k in every if any(r.get(k) is None for r in recs)] + [k for k in last_only if recs and recs[-1].get(k) is None]
    if missing:
        raise MmvidError(f"{Path(run) / 'metrics.jsonl'} lacks {', '.join(missing)} in some epoch; the regime needs a "
                         f"run of modalities {strong} and {weak} trained with monitor_train > 0")
    rhos = [r[f"s_{strong}"] / r[f"s_{weak}"] if r[f"s_{weak}"] > 0 else float("inf") for r in recs]
    last = recs[-1]
    return Regime(strong, weak, len(recs), last[f"train_acc_{strong}"], last[f"test_acc_{strong}"],
                  last[f"train_acc_{weak}"], last[f"test_acc_{weak}"], last["test_acc"], min(rhos), rhos[-1])
