"""Evaluate a trained run on its cache: accuracy, macro-F1, per-class accuracy, confusion matrix,
per-modality accuracy by masking (paper Eq. 5) and the imbalance factor rho (Eq. 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmvid.data.cache import read_info
from mmvid.engine import evaluate_model, make_loader, model_from_checkpoint, pick_device, rho_of
from mmvid.errors import MmvidError


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


def cache_for_run(ck: dict[str, Any], cache: str | Path | None = None) -> Path:
    path = Path(cache or ck["cache"])
    if not path.exists():
        raise MmvidError(f"the run's cache {path} is missing; re-run `mmvid prepare` or pass --cache")
    return path


def evaluate_run(run: Path, split: str = "test", device: str = "auto", cache: str | Path | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Metrics of one run's best (else last) checkpoint on ``split``; also written to ``<run>/eval_<split>.json``."""
    model, cfg, ck = model_from_checkpoint(run)
    info = read_info(cache_for_run(ck, cache))
    rows = ck["splits"].get(split) if split in ck.get("splits", {}) else info.indices(split)
    if rows is None or len(rows) == 0:
        raise MmvidError(f"split {split!r} of {info.path.name} has no clips")
    dev = pick_device(device)
    model.to(dev)
    loader = make_loader(info, np.asarray(rows), cfg, train=False, batch_size=batch_size)
    res = evaluate_model(model, loader, dev, keep=True)
    cm = confusion(res.labels, res.preds, info.num_classes)
    per_class = (np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()
    out = {
        "run": str(run), "checkpoint_epoch": int(ck["epoch"]), "split": split, "n": res.n,
        "accuracy": res.acc, "macro_f1": macro_f1(cm), "loss": res.loss,
        "per_class_accuracy": dict(zip(info.class_names, per_class)),
        "modality_accuracy": {m: res.modality_acc(m) for m in model.modalities},
        "rho": rho_of(res, model.modalities), "confusion": cm.tolist(), "class_names": info.class_names,
        "config": {"fusion": cfg.model.fusion, "augment": cfg.augment.name, "balance": cfg.balance.name},
    }
    Path(run, f"eval_{split}.json").write_text(json.dumps(out, indent=2))
    return out


def render(results: list[dict[str, Any]], console) -> None:
    """One side-by-side Rich table for one or several runs."""
    from rich.table import Table

    table = Table(title=f"mmvid evaluate ({results[0]['split']})")
    table.add_column("metric")
    for r in results:
        table.add_column(Path(r["run"]).name, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("method", [f"{r['config']['fusion']}+{r['config']['augment']}" + (f"+{r['config']['balance']}" if r['config']['balance'] != 'none' else '') for r in results]),
        ("clips", [str(r["n"]) for r in results]),
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
